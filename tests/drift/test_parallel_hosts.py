"""Hosts side by side: the bounded pool drift and doctor share (``report.by_host``), the ``--parallel``
option, and drift over a real sshd standing in for four hosts, one of which accepts connections and
never answers."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
import yaml

from llamafleet.cli import main
from llamafleet.config import load_inventory
from llamafleet.errors import UserError
from llamafleet.report import DEFAULT_PARALLEL, by_host, parallel_count
from sshd_rig import start_sshd, unavailable_reason


@pytest.mark.parametrize("value, hosts, expected", [
    (None, 0, 1),  # nothing to read still makes a valid pool
    (None, 1, 1),
    (None, 5, 5),
    (None, DEFAULT_PARALLEL, DEFAULT_PARALLEL),
    (None, 50, DEFAULT_PARALLEL),  # the default stays bounded
    ("1", 50, 1),
    (" 4 ", 50, 4),
    ("64", 3, 64),  # more than the hosts is allowed; the pool never starts more threads than hosts
])
def test_parallel_count(value, hosts, expected):
    assert parallel_count(value, hosts) == expected


@pytest.mark.parametrize("value", ["0", "-1", "-16", "abc", "1.5", "", "2x", "+"])
def test_parallel_count_refuses(value):
    with pytest.raises(UserError, match=r"^--parallel .*: expected a whole number of hosts, 1 or more$"):
        parallel_count(value, 3)


@pytest.mark.parametrize("command", ["drift", "doctor"])
@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_bad_parallel_is_one_line_and_exit_1(tmp_path, capsys, command, value):
    inventory = _write(tmp_path, _inventory({"node": ("127.0.0.1", 1)}, tmp_path))
    assert main([command, str(inventory), f"--parallel={value}"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"llamafleet {command}: --parallel {value}: expected a whole number of hosts, 1 or more\n"


@pytest.mark.parametrize("hosts, parallel", [
    (["a"], 1),
    (["a", "b", "c"], 1),
    (["a", "b", "c"], 3),
    (["a", "b", "c", "d", "e"], 2),
    (["a", "a", "b", "a", "c", "b"], 2),  # several tasks of one host stay one after another
    ([f"h{i}" for i in range(12)], 5),
    ([f"h{i}" for i in range(4)], 16),  # more threads allowed than hosts
])
def test_by_host_keeps_order_bounds_threads_and_runs_one_hosts_tasks_in_turn(hosts, parallel):
    """The first min(parallel, distinct hosts) hosts must all be running at once (they meet at a
    barrier, which times out otherwise); no more than ``parallel`` ever run together; one host never
    runs two tasks at once; results come back in task order although later tasks finish first."""
    distinct = list(dict.fromkeys(hosts))
    first_wave = set(distinct[:min(parallel, len(distinct))])
    barrier = threading.Barrier(len(first_wave), timeout=10)
    lock = threading.Lock()
    running: dict[str, int] = {}
    peak = {"hosts": 0}
    met: set[str] = set()

    def task(index: int, host: str):
        with lock:
            running[host] = running.get(host, 0) + 1
            assert running[host] == 1, f"two tasks of {host} at once"
            peak["hosts"] = max(peak["hosts"], sum(1 for n in running.values() if n))
        try:
            if host in first_wave and host not in met:
                met.add(host)
                barrier.wait()
            return (index, host)
        finally:
            with lock:
                running[host] -= 1

    results = by_host([(host, lambda i=i, h=host: task(i, h)) for i, host in enumerate(hosts)], parallel)
    assert results == [(i, h) for i, h in enumerate(hosts)]
    assert peak["hosts"] == len(first_wave)


def test_by_host_reraises_a_tasks_exception():
    def boom():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        by_host([("a", lambda: 1), ("b", boom)], 2)


# --- drift over a real sshd: one silent host does not hold up the others --------------------------


def _inventory(hosts: dict[str, tuple[str, int]], base: Path, sshd=None) -> dict:
    def connection(address, port):
        conn = {"type": "ssh", "address": address, "port": port}
        if sshd is not None:
            conn.update(user=sshd.user, key_file=str(sshd.key_file))
        return conn

    return {
        "version": 1, "cluster": "parallel",
        "llama_cpp": {"build": "b11434", "mirror": "http://127.0.0.1:1",
                      "releases": [{"file": "llama-b11434-bin-ubuntu-x64.tar.gz", "os": "linux", "arch": "x86_64",
                                    "backend": "cpu", "sha256": "0" * 64}]},
        "hosts": {name: {"connection": connection(address, port), "os": "linux", "arch": "x86_64", "backend": "cpu",
                         "install_dir": str(base / name), "models_dir": str(base / name / "models"),
                         "service_manager": "supervisord"} for name, (address, port) in hosts.items()},
        "services": {f"rpc-{name}": {"role": "rpc-worker", "host": name, "bind": address, "port": 50052}
                     for name, (address, _) in hosts.items()},
    }


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def four_hosts(tmp_path_factory):
    """A real sshd on 127.0.0.3-5 for hosts b, c, d; host a is 127.0.0.2, where a socket accepts
    connections and never sends the SSH banner (a hung machine)."""
    if reason := unavailable_reason():
        pytest.skip(reason)
    sshd = start_sshd(tmp_path_factory.mktemp("sshd"), hosts=4)
    silent = socket.socket()
    silent.bind((sshd.addresses[0], 0))
    silent.listen(8)
    try:
        yield sshd, silent.getsockname()[1]
    finally:
        silent.close()
        sshd.stop()


TIMEOUT = 5.0


def test_a_silent_host_delays_only_itself_and_the_order_stays(four_hosts, tmp_path):
    from llamafleet.drift import run_drift

    sshd, silent_port = four_hosts
    hosts = {"a": (sshd.addresses[0], silent_port),
             **{name: (sshd.addresses[i], sshd.ports[i]) for i, name in enumerate("bcd", start=1)}}
    path = _write(tmp_path, _inventory(hosts, tmp_path / "roots", sshd))
    report = run_drift(load_inventory(path), path, list(hosts), deep=False, timeout=TIMEOUT,
                       override={"ssh_known_hosts_file": str(sshd.known_hosts)})

    # The inventory's order, although "a" answers last.
    assert report.hosts == ["a", "b", "c", "d"]
    first = report.findings[0]
    assert (first.host, first.check, first.severity.value) == ("a", "connect", "error")
    for name in "bcd":  # each really read over SSH: an empty install root, nothing installed
        build = next(f for f in report.findings if f.host == name and f.check == "llama.cpp build")
        assert build.actual == "nothing installed"
    seconds = report.stats["host_seconds"]
    assert seconds["a"] >= TIMEOUT * 0.9  # it waited for its own timeout ...
    live = [seconds[name] for name in "bcd"]
    # ... while the others were read meanwhile: the run outlasts the silent host by less than one
    # live host's reading (one after another, it would outlast it by all three of them).
    assert report.stats["seconds"] - seconds["a"] < min(live), report.stats
    assert max(live) < seconds["a"]
    assert report.stats["parallel"] == 4
