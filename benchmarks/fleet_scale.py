"""Time ``llamafleet drift`` and ``llamafleet doctor`` over 1, 5 and 20 hosts, and with one dead host.

    .venv/bin/python benchmarks/fleet_scale.py [--runs 3] [--write docs/benchmarks-drift.md]

The hosts are stand-ins on this machine: one real sshd (tests/deploys/sshd_rig.py) gives each its
own loopback address 127.0.0.x and port, and each runs a real llama-server (the pinned build on
SmolLM2) bound to its own address, declared as that host's target. Nothing is deployed: drift reads
each host's full state over SSH and finds every difference from the plan, which is the same reading
(one state command per host) as on a deployed host, minus the hashing of installed binaries; doctor
asks each llama-server for /health and /props.

Each figure is the wall time of the command as a user runs it (``llamafleet drift|doctor INVENTORY
--json`` in a fresh process, startup included), and the time of the run itself as the command
reports it or as measured around ``run_drift``/``Doctor.run`` in this process. ``--parallel 1``
rows show what the same run costs one host after another. The dead-host rows replace one host's SSH
port (drift) or server port (doctor) with a listener that accepts and never answers, with
``--timeout 3``: the run should take about the timeout, not the timeout plus the other hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "deploys"))

from sshd_rig import start_sshd  # noqa: E402

from llamafleet.config import load_inventory  # noqa: E402
from llamafleet.doctor import Doctor, expectation  # noqa: E402
from llamafleet.drift import run_drift  # noqa: E402
from llamafleet.llama_client import LlamaClient  # noqa: E402
from llamafleet.rig import cache, servers  # noqa: E402
from llamafleet.server_key import server_key  # noqa: E402

SIZES = (1, 5, 20)
DEAD_TIMEOUT = 3.0
LLAMAFLEET = str(Path(sys.executable).with_name("llamafleet"))


def inventory(base: Path, sshd, ports: list[int], model: Path, count: int, *, dead_ssh: int | None = None,
              dead_port: int | None = None) -> Path:
    """``count`` hosts h01.., each with its target; host 1 gets the dead port when one is asked for."""
    hosts, services = {}, {}
    for i in range(count):
        name, address = f"h{i + 1:02d}", sshd.addresses[i]
        ssh_port = dead_ssh if (dead_ssh and i == 0) else sshd.ports[i]
        hosts[name] = {"connection": {"type": "ssh", "address": address, "port": ssh_port, "user": sshd.user,
                                      "key_file": str(sshd.key_file)},
                       "os": "linux", "arch": "x86_64", "backend": "cpu", "install_dir": str(base / "hosts" / name),
                       "models_dir": str(base / "hosts" / name / "models"), "service_manager": "supervisord",
                       "models": ["smollm2"]}
        port = dead_port if (dead_port and i == 0) else ports[i]
        services[f"target-{name}"] = {"role": "target", "host": name, "bind": address, "port": port,
                                      "model": "smollm2", "ctx_size": 256, "parallel": 1}
    data = {
        "version": 1, "cluster": f"scale-{count}",
        "llama_cpp": {"build": "b11434", "mirror": "http://127.0.0.1:1",
                      "releases": [{"file": "llama-b11434-bin-ubuntu-x64.tar.gz", "os": "linux", "arch": "x86_64",
                                    "backend": "cpu", "sha256": "0" * 64}]},
        "hosts": hosts,
        "models": {"smollm2": {"files": [{"name": model.name, "sha256": "0" * 64, "size": model.stat().st_size}],
                               "quant": "Q4_1", "tokenizer": "smollm2",
                               "architecture": {"family": "llama", "layers": 30, "n_embd": 576, "kv_dim": 192}}},
        "services": services,
    }
    suffix = "-dead-ssh" if dead_ssh else "-dead-server" if dead_port else ""
    path = base / f"scale-{count}{suffix}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def command(argv: list[str]) -> tuple[float, dict]:
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    if proc.returncode not in (0, 1, 2) or not proc.stdout.startswith("{"):
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds, json.loads(proc.stdout)


def measure(kind: str, path: Path, known_hosts: Path, runs: int, extra: list[str], expect_hosts: int) -> dict:
    argv = [LLAMAFLEET, kind, str(path), "--json", *extra]
    if kind == "drift":
        argv += ["--data", f"ssh_known_hosts_file={known_hosts}"]
    walls, inner = [], []
    for _ in range(runs):
        wall, report = command(argv)
        if len({f["host"] for f in report["findings"]} - {"cluster"}) != expect_hosts:
            raise SystemExit(f"{kind} {path.name}: expected findings for {expect_hosts} hosts:\n{report['summary']}")
        walls.append(wall)
        inner.append(in_process(kind, path, known_hosts, extra))
    return {"wall": statistics.median(walls), "inner": statistics.median(inner), "summary": report["summary"]}


def in_process(kind: str, path: Path, known_hosts: Path, extra: list[str]) -> float:
    """The run alone: inventory loaded, no interpreter startup."""
    inv = load_inventory(path)
    options = dict(zip(extra[::2], extra[1::2]))
    parallel = int(options["--parallel"]) if "--parallel" in options else None
    timeout = float(options.get("--timeout", 10))
    started = time.monotonic()
    if kind == "drift":
        run_drift(inv, path, list(inv.hosts), deep=False, override={"ssh_known_hosts_file": str(known_hosts)},
                  parallel=parallel, timeout=timeout)
    else:
        Doctor(inv, http=LlamaClient(timeout), expect=expectation(inv, None), proxy_token=None,
               server_key=server_key(inv)).run(inv.hosts, parallel)  # as `llamafleet doctor` reads it
    return time.monotonic() - started


def silent_listener(address: str) -> socket.socket:
    """Accepts TCP connections (the kernel completes them) and never says a word."""
    sock = socket.socket()
    sock.bind((address, 0))
    sock.listen(64)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", type=Path, help="also write the table into this markdown file")
    parser.add_argument("--startup-files", action="store_true",
                        help="let the stand-in hosts' SSH sessions run root's shell startup files (see sshd_rig)")
    args = parser.parse_args()
    build, model = cache.ensure_llama_cpp(), cache.ensure_smollm2()
    rows: list[tuple[str, str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="fleet-scale-") as tmp:
        base = Path(tmp)
        sshd = start_sshd(base / "sshd", hosts=max(SIZES), startup_files=args.startup_files)
        started: list[servers.RunningProcess] = []
        dead = silent_listener(sshd.addresses[0])  # host h01's address: its SSH port or its server's
        try:
            for address in sshd.addresses:  # each on its host's address; they load side by side
                port = servers.free_port()
                started.append(replace(servers._spawn(f"llama-server-{address}", [
                    str(build.server), "-m", str(model), "--host", address, "--port", str(port), "-c", "256",
                    "-np", "1", "-t", "1", "--no-webui"], port, base / "logs", None), host=address))
            for server in started:
                servers.wait_for_health(server)
            ports = [s.port for s in started]
            dead_port = dead.getsockname()[1]
            for kind in ("drift", "doctor"):
                for count in SIZES:
                    path = inventory(base, sshd, ports, model, count)
                    rows.append((kind, f"{count} host(s)", measure(kind, path, sshd.known_hosts, args.runs, [], count)))
                for count in SIZES[1:]:
                    path = inventory(base, sshd, ports, model, count)
                    rows.append((kind, f"{count} host(s), --parallel 1",
                                 measure(kind, path, sshd.known_hosts, args.runs, ["--parallel", "1"], count)))
                dead_inv = (inventory(base, sshd, ports, model, max(SIZES), dead_ssh=dead_port) if kind == "drift"
                            else inventory(base, sshd, ports, model, max(SIZES), dead_port=dead_port))
                rows.append((kind, f"{max(SIZES)} host(s), one dead, --timeout {DEAD_TIMEOUT:g}",
                             measure(kind, dead_inv, sshd.known_hosts, args.runs, ["--timeout", str(DEAD_TIMEOUT)],
                                     max(SIZES))))
        finally:
            dead.close()
            for server in started:
                server.stop()
            sshd.stop()
    table = markdown(rows, args)
    print(table)
    if args.write:  # between its own two markers, so the file's other sections stay as they are
        text = args.write.read_text() if args.write.exists() else ""
        begin, end = "<!-- fleet_scale results -->", "<!-- /fleet_scale results -->"
        block = f"{begin}\n{table}{end}"
        if begin in text and end in text:
            text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
        else:
            text = text.rstrip("\n") + f"\n\n{block}\n"
        args.write.write_text(text)


def markdown(rows: list[tuple[str, str, dict]], args) -> str:
    lines = ["| command | hosts | median s, command | vs 1 host | median s, run only | vs 1 host | result |",
             "|---|---|---:|---:|---:|---:|---|"]
    one = {kind: r for kind, label, r in rows if label == "1 host(s)"}
    for kind, label, r in rows:
        # A dead host's row is measured against its timeout, not against one live host.
        ratios = ("", "") if "dead" in label else (f"{r['wall'] / one[kind]['wall']:.1f}x",
                                                   f"{r['inner'] / one[kind]['inner']:.1f}x")
        lines.append(f"| {kind} | {label} | {r['wall']:.2f} | {ratios[0]} | {r['inner']:.3f} | {ratios[1]} | "
                     f"{r['summary'].split(': ', 1)[1]} |")
    lines.append(f"\n{args.runs} runs each (median); stand-in hosts' shell startup files "
                 f"{'run' if args.startup_files else 'skipped'}; machine: {platform.machine()}, "
                 f"{os.cpu_count()} cores, Python {platform.python_version()}, "
                 f"load average {open('/proc/loadavg').read().split()[0]} at the end.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
