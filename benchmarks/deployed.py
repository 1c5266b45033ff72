"""The paths of the cluster the deploy actually builds, side by side: plain target, native, proxy, auto.

For each pair it deploys the local example with the real pyinfra CLI (`llamafleet demo --check
--no-compare --pair P`: target with a native draft on the RPC worker, the plain sidecar that
`native_draft.plain: auto` renders for b11434 on a CPU host, a drafter, the proxy), then runs
`llamafleet bench` against that inventory. The baseline is the plain sidecar: a plain llama-server on
the same model file with the target's own flags minus the draft. Conditions take turns on every
prompt (interleaved), so the ratios come from one run on this noisy shared machine.

- `fast`: SmolLM2 is the target and the draft (speculation cannot pay; auto must settle on plain);
- `slow`: the 230-block padded target with SmolLM2 drafting (the case speculation is for).

Run: .venv/bin/python benchmarks/deployed.py [--pairs fast,slow] [--repeats 3] [--max-tokens 48]
Writes docs/benchmarks/deployed-<pair>.{md,json}. About 4 minutes (fast) and 12 minutes (slow) on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"
LLAMAFLEET = Path(sys.executable).with_name("llamafleet")


def run_pair(pair: str, repeats: int, max_tokens: int, warmup: int) -> None:
    from llamafleet.rig.cache import cache_root

    deploy = subprocess.run([str(LLAMAFLEET), "demo", "--check", "--no-compare", "--pair", pair], cwd=ROOT,
                            capture_output=True, text=True)
    if deploy.returncode != 0:
        raise SystemExit(f"deploy of the {pair} pair failed:\n{deploy.stdout[-3000:]}\n{deploy.stderr[-3000:]}")
    inventory = cache_root() / "demo" / "cluster.yaml"
    json_file = OUT / f"deployed-{pair}.json"
    command = [str(LLAMAFLEET), "bench", str(inventory), "--per-category", "1", "--repeats", str(repeats),
               "--warmup", str(warmup), "--max-tokens", str(max_tokens), "--no-tightwad", "--json", str(json_file)]
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    bench = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if bench.returncode != 0:
        raise SystemExit(f"bench of the {pair} pair failed:\n{bench.stderr[-3000:]}")
    shown = " ".join(["llamafleet bench", "~/.cache/llamafleet/demo/cluster.yaml", *command[3:-1],
                      f"docs/benchmarks/{json_file.name}"])
    text = (f"# Deployed cluster, {pair} pair\n\nStarted {started} UTC. Deployed with "
            f"`llamafleet demo --check --no-compare --pair {pair}`, then:\n\n```\n{shown}\n```\n\n"
            "The baseline is the plain sidecar (the same model file, the target's flags minus the draft).\n\n"
            + bench.stdout)
    (OUT / f"deployed-{pair}.md").write_text(text)
    print(text, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="fast,slow")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--warmup", type=int, default=2,
                        help="unrecorded rounds first: auto's first probe of each path falls there, as it does "
                        "once in the life of a deployed proxy")
    args = parser.parse_args()
    for pair in args.pairs.split(","):
        if pair not in ("fast", "slow"):
            parser.error(f"unknown pair {pair!r} (fast, slow)")
        run_pair(pair, args.repeats, args.max_tokens, args.warmup)


if __name__ == "__main__":
    main()
