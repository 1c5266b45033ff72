"""doctor over several hosts side by side: two hosts whose server accepts connections and never
answers time out together, not one after the other, and the findings keep the inventory's order.

The live hosts' targets are the shared real llama-server (SmolLM2); each host declares it on its own
loopback (127.0.0.1 of a host that is this machine), so doctor dials the same server for both."""

from __future__ import annotations

import json
import socket
import time

import pytest

from llamafleet.cli import main

from .conftest import write_inventory

pytestmark = pytest.mark.slow

TIMEOUT = 3.0


@pytest.fixture
def silent_ports():
    """Two sockets that accept connections (the kernel completes them) and never send a byte."""
    sockets = []
    try:
        for _ in range(2):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(8)
            sockets.append(sock)
        yield [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize("parallel, together", [(None, True), ("4", True), ("2", True), ("1", False)])
def test_silent_hosts_time_out_together_and_order_stays(smollm2_server, silent_ports, tmp_path, capsys,
                                                       parallel, together):
    ports = {"dead1": silent_ports[0], "live1": smollm2_server.port, "dead2": silent_ports[1],
             "live2": smollm2_server.port}
    hosts = {name: {"connection": {"type": "ssh", "address": f"127.0.0.{i + 2}"}, "os": "linux",
                    "install_dir": str(tmp_path / name), "models_dir": str(tmp_path / name / "models"),
                    "service_manager": "supervisord", "models": ["smollm2"]} for i, name in enumerate(ports)}
    services = {f"target-{name}": {"role": "target", "host": name, "model": "smollm2", "bind": "127.0.0.1",
                                   "port": port, "parallel": 1} for name, port in ports.items()}
    inventory = write_inventory(tmp_path, services, hosts=hosts)
    extra = [] if parallel is None else ["--parallel", parallel]

    started = time.monotonic()
    code = main(["doctor", str(inventory), "--json", "--timeout", str(TIMEOUT), *extra])
    elapsed = time.monotonic() - started
    report = json.loads(capsys.readouterr().out)

    assert code == 1
    assert [f["host"] for f in report["findings"] if f["check"].startswith("health")] == list(ports)
    health = {f["host"]: f for f in report["findings"] if f["check"].startswith("health")}
    for name in ("dead1", "dead2"):
        assert health[name]["severity"] == "error" and "timed out" in health[name]["actual"]
    for name in ("live1", "live2"):
        assert health[name]["severity"] == "ok"
    # Each silent host costs one timeout: side by side the run lasts about one, in turn at least two.
    assert (elapsed < 1.8 * TIMEOUT) is together, elapsed
    assert elapsed >= TIMEOUT * 0.95
