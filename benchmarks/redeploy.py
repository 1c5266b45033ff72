"""No-op re-deploy cost vs model size: the local example (without its proxy, see measure()) deployed to this machine with the real pyinfra
CLI, once with the ~100 MB SmolLM2 file and once with a 1 GiB file (SmolLM2 padded with zeros, cached),
then re-deployed with nothing to change. Prints wall time and remote commands per host for each, and
the 1 GiB / 100 MB ratio of the no-op wall time (target: <= 1.1, i.e. it does not grow with size).

    .venv/bin/python benchmarks/redeploy.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from llamafleet.rig import cache, mirror
from llamafleet.rig.example import example_inventory

PROJECT = Path(__file__).resolve().parents[1]
PAD_TO = 1 << 30
COMMAND_LINE = re.compile(r"Running command on (\S+?):")


def padded_model(model: Path) -> Path:
    """SmolLM2 followed by zeros up to 1 GiB (llama.cpp ignores bytes after the last tensor)."""
    out = cache.cache_root() / "models" / "padded-1g" / model.name.replace(".gguf", ".padded-1g.gguf")
    if out.exists() and out.stat().st_size == PAD_TO:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    shutil.copyfile(model, tmp)
    with tmp.open("r+b") as f:
        f.truncate(PAD_TO)  # sparse zeros: cheap to create, still 1 GiB to read and hash
    os.replace(tmp, out)
    return out


def pyinfra(inventory_file: Path, mirror_url: str) -> tuple[float, dict[str, int], str]:
    env = {**os.environ, "LLAMAFLEET_INVENTORY": str(inventory_file),
           "LLAMAFLEET_PIP_FIND_LINKS": f"{mirror_url}/wheels/"}
    cmd = [str(Path(sys.executable).with_name("pyinfra")), "inventory/cluster.py", "deploys/cluster.py", "-y", "--debug"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"deploy failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    output = proc.stdout + proc.stderr
    commands: dict[str, int] = {}
    for host in COMMAND_LINE.findall(output):
        commands[host] = commands.get(host, 0) + 1
    return wall, commands, output


def prepare(label: str, model_file: Path, content, server) -> dict:
    """Write the inventory for one model size and run the first (changing) deploy."""
    root = cache.cache_root() / "bench-redeploy" / label
    served = content.root / model_file.name
    if not served.exists():
        os.link(model_file, served)
    data = example_inventory(content, server.url, str(root), free_ports=True)
    data["models"]["smollm2"]["files"] = [{"name": model_file.name, "sha256": mirror.sha256_of(served),
                                           "size": served.stat().st_size}]
    # The proxy's wheel is keyed by a hash of the package sources, which other engineers edit
    # concurrently in this shared tree; it does not depend on the model size, so it is left out here.
    data["services"] = {n: s for n, s in data["services"].items() if s["role"] != "proxy"}
    inventory_file = root.with_suffix(".yaml")
    root.parent.mkdir(parents=True, exist_ok=True)
    inventory_file.write_text(yaml.safe_dump(data, sort_keys=False))
    first, first_cmds, _ = pyinfra(inventory_file, server.url)
    return {"label": label, "size": served.stat().st_size, "first": first, "first_cmds": first_cmds,
            "walls": [], "cmds": {}, "inventory": inventory_file, "root": root}


def state_command_seconds(result: dict) -> float:
    """Time of the one remote command a no-op run sends (the HostState fact), run directly."""
    from llamafleet.config import load_inventory
    from llamafleet.deploys.facts.host_state import HostState, state_spec
    from llamafleet.deploys.plan import plan_host

    command = HostState().command(state_spec(plan_host(load_inventory(result["inventory"]), "local")))
    start = time.perf_counter()
    subprocess.run(["sh", "-c", command], check=True, capture_output=True)
    return time.perf_counter() - start


def no_op(result: dict, server) -> None:
    wall, cmds, output = pyinfra(result["inventory"], server.url)
    if "] Success" in output:
        raise SystemExit(f"{result['label']}: the re-deploy changed something:\n{output[-3000:]}")
    result["walls"].append(wall)
    result["cmds"] = cmds
    result.setdefault("state", []).append(state_command_seconds(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="no-op re-deploys per model size")
    args = parser.parse_args()
    build, model = cache.ensure_llama_cpp(), cache.ensure_smollm2()
    content = mirror.prepare_mirror(build, model)
    mirror.prepare_wheelhouse(content.root, PROJECT)
    big = padded_model(model)
    server = mirror.MirrorServer(content.root).start()
    results = []
    try:
        results = [prepare("100MB", model, content, server), prepare("1GiB", big, content, server)]
        for _ in range(args.runs):  # interleaved, so load from other processes hits both alike
            for result in results:
                no_op(result, server)
    finally:
        for result in results:
            subprocess.run(["supervisorctl", "-c", str(result["root"] / "supervisor" / "supervisord.conf"),
                            "shutdown"], capture_output=True)
        server.stop()
    print(f"no-op re-deploy of the local example (@local, {os.cpu_count()} cores), {args.runs} interleaved runs each")
    print(f"{'model':6} {'bytes':>11} {'first s':>8} {'no-op median s':>15} {'min s':>6} {'max s':>6} "
          f"{'state cmd median ms':>20} {'remote cmds/host no-op':>23} {'first':>6}")
    for r in results:
        print(f"{r['label']:6} {r['size']:>11} {r['first']:>8.2f} {statistics.median(r['walls']):>15.2f} "
              f"{min(r['walls']):>6.2f} {max(r['walls']):>6.2f} {1000 * statistics.median(r['state']):>20.0f} "
              f"{sum(r['cmds'].values()):>23} {sum(r['first_cmds'].values()):>6}")
    small, big = results
    for what, pick in (("median", statistics.median), ("min", min)):
        print(f"ratio 1GiB/100MB no-op wall time ({what}): {pick(big['walls']) / pick(small['walls']):.3f} (target <= 1.1)")
    print(f"ratio 1GiB/100MB state command (median): "
          f"{statistics.median(big['state']) / statistics.median(small['state']):.3f}")

if __name__ == "__main__":
    main()
