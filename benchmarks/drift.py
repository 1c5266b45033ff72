"""Time ``llamafleet drift`` on the three loopback hosts of the deploy tests, with and without --deep,
and count the remote commands it runs per host.

    .venv/bin/python benchmarks/drift.py [--runs 5] [--write docs/benchmarks-drift.md]

It stands up the same rig as tests/deploys/test_deploy_e2e.py (a real sshd standing in for alpha,
beta and gamma, the local mirror, one real ``pyinfra inventory/cluster.py deploys/cluster.py``
deploy), then runs drift in-process. Remote commands are counted twice: by drift itself
(``stats.remote_commands``) and independently, by counting every ``Host.run_shell_command`` call.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "deploys"))

from pyinfra.api.host import Host  # noqa: E402

from llamafleet.config import load_inventory  # noqa: E402
from llamafleet.deploys.operations.proxy import source_hash  # noqa: E402
from llamafleet.drift import run_drift  # noqa: E402
from llamafleet.rig import cache  # noqa: E402
from llamafleet.rig import mirror as mirror_mod  # noqa: E402

HOSTS = ["alpha", "beta", "gamma"]


class CommandCounter:
    """Counts remote commands per host by wrapping pyinfra's one entry point for them."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._original = Host.run_shell_command

    def __enter__(self) -> "CommandCounter":
        counts, original = self.counts, self._original

        def counted(host, *args, **kwargs):
            counts[host.data.get("llamafleet_host") or host.name] += 1
            return original(host, *args, **kwargs)

        Host.run_shell_command = counted
        return self

    def __exit__(self, *exc) -> None:
        Host.run_shell_command = self._original


def stand_up(base: Path):
    """The deploy tests' rig: sshd for three hosts, the mirror, one real deploy."""
    from sshd_rig import start_sshd
    from test_deploy_e2e import cluster_inventory, run_pyinfra

    build, model = cache.ensure_llama_cpp(), cache.ensure_smollm2()
    sshd = start_sshd(base / "sshd", hosts=3)
    root = base / "mirror"
    content = mirror_mod.prepare_mirror(build, model, root)
    (root / "wheels").symlink_to(mirror_mod.prepare_wheelhouse(mirror_mod.default_mirror_root(), ROOT))
    server = mirror_mod.MirrorServer(root)
    server.start()
    roots = {name: base / "hosts" / name for name in HOSTS}
    inventory_file = base / "cluster.yaml"
    inventory_file.write_text(yaml.safe_dump(cluster_inventory(sshd, server.url, content, roots), sort_keys=False))
    for attempt in range(3):
        started = time.monotonic()
        result = run_pyinfra(inventory_file, sshd, server.url)
        if result.returncode != 0:
            raise SystemExit(f"the deploy failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        print(f"deployed the three hosts in {time.monotonic() - started:.1f} s", file=sys.stderr)
        source_hash.cache_clear()
        report = run_drift(load_inventory(inventory_file), inventory_file, HOSTS, deep=False,
                           override={"ssh_known_hosts_file": str(sshd.known_hosts)})
        if report.exit_code() == 0:
            break
        # The proxy host carries a wheel of this checkout; when the working tree changes during the
        # deploy (others editing it), deploy again so the measured cluster is drift-free.
        print(f"not clean yet ({report.summary()}); deploying again", file=sys.stderr)
    return sshd, server, roots, inventory_file


def measure(inventory_file: Path, known_hosts: Path, deep: bool, runs: int) -> dict:
    inventory = load_inventory(inventory_file)
    times, drift_counts, counted, per_host = [], [], [], []
    for _ in range(runs):
        with CommandCounter() as counter:
            started = time.monotonic()
            report = run_drift(inventory, inventory_file, HOSTS, deep=deep,
                               override={"ssh_known_hosts_file": str(known_hosts)})
            times.append(time.monotonic() - started)
        if report.exit_code() != 0:
            found = [str(f) for f in report.findings if f.is_problem]
            raise SystemExit(f"drift found differences on a fresh deploy: {report.summary()}\n" + "\n".join(found))
        drift_counts.append(dict(report.stats["remote_commands"]))
        per_host.append(report.stats["host_seconds"])
        counted.append(dict(counter.counts))
    return {"deep": deep, "times": times, "drift_counts": drift_counts[-1], "counted": counted[-1],
            "host_seconds": {h: statistics.median(run[h] for run in per_host) for h in HOSTS},
            "stable": all(c == counted[0] for c in counted)}


def markdown(results: list[dict], runs: int) -> str:
    lines = [
        "| mode | median s | min s | max s | median s per host | remote commands per host (drift's count) "
        "| counted independently |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for r in results:
        per_host = ", ".join(f"{h} {r['drift_counts'].get(h, 0)}" for h in HOSTS)
        counted = ", ".join(f"{h} {r['counted'].get(h, 0)}" for h in HOSTS)
        host_seconds = ", ".join(f"{h} {r['host_seconds'][h]:.2f}" for h in HOSTS)
        lines.append(f"| {'--deep' if r['deep'] else 'default'} | {statistics.median(r['times']):.2f} | "
                     f"{min(r['times']):.2f} | {max(r['times']):.2f} | {host_seconds} | {per_host} | {counted} |")
    lines.append(f"\n{runs} runs each; machine: {platform.machine()}, {platform.python_version()}, "
                 f"load average {open('/proc/loadavg').read().split()[0]} at the end.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", type=Path, help="also write the table into this markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        base = Path(tmp)
        sshd, server, roots, inventory_file = stand_up(base)
        try:
            results = [measure(inventory_file, sshd.known_hosts, deep, args.runs) for deep in (False, True)]
        finally:
            for root in roots.values():
                conf = root / "supervisor" / "supervisord.conf"
                if conf.exists():
                    subprocess.run(["supervisorctl", "-c", str(conf), "shutdown"], capture_output=True, timeout=60)
            server.stop()
            sshd.stop()
    table = markdown(results, args.runs)
    print(table)
    if args.write:
        text = args.write.read_text() if args.write.exists() else ""
        marker = "<!-- results -->"
        head = text.split(marker)[0] if marker in text else text
        args.write.write_text(head.rstrip("\n") + f"\n\n{marker}\n{table}")


if __name__ == "__main__":
    main()
