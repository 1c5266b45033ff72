"""The fast-target case: speculation cannot win on this 2-core CPU, because the drafter is as slow
per token as the target. `auto` must stay within 5% of direct; a proxy that keeps speculating there
serves well below it (Tightwad 0.3 reached 0.39x of a GPT-OSS 120B target at 100% acceptance). Tightwad 0.5.4's proxy runs on the same servers and prompts in the same
run (interleaved), so both ratios come from one measurement.

Run: .venv/bin/python benchmarks/proxy_fast_target.py  (about 3 minutes on 2 cores)
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import httpx

from proxy_common import PROMPTS, dump, log_dir, rate, start, start_llamafleet, start_native, timed, wait_idle, write_section
from llamafleet.bench.tightwad import running_tightwad, tightwad_python, tightwad_version
from llamafleet.rig import cache

REPS = 4
MAX_TOKENS = 64
DRAFT_MAX = 8


def main() -> None:
    smol = cache.ensure_smollm2()
    python = tightwad_python()
    if python is None:
        raise SystemExit("tightwad 0.5.4 is not installed (pip install tightwad==0.5.4)")
    with ExitStack() as stack:
        target = start(stack, smol, "target", ["-c", str(1024 * (DRAFT_MAX + 1)), "-np", str(DRAFT_MAX + 1)])
        drafter = start(stack, smol, "drafter", ["-c", "2048"])
        native = start_native(stack, smol, smol, DRAFT_MAX, "native")
        # The requests name the model; the proxy answers only for the one it serves.
        proxy, auth = start_llamafleet(stack, target, slots=DRAFT_MAX + 1, drafters=[drafter], native=native,
                                       draft_max=DRAFT_MAX, model_name="smollm2")
        tightwad = stack.enter_context(running_tightwad(python, target.url, drafter.url, Path(log_dir())))
        body = lambda p: {"prompt": p, "max_tokens": MAX_TOKENS, "temperature": 0, "model": "smollm2"}  # noqa: E731
        runs: dict[str, list[dict]] = {"direct": [], "auto": [], "tightwad": []}
        over_limit = 0
        with httpx.Client(timeout=600) as client:
            for p in PROMPTS:  # warm the target's cache for every prompt (auto's own learning is NOT pre-warmed)
                timed(client, target.url, body(p))
            idle = lambda: wait_idle(client, target.url, native.url)  # noqa: E731
            for _ in range(REPS):
                for p in PROMPTS:
                    idle()
                    runs["direct"].append(timed(client, target.url, body(p)))
                    idle()
                    runs["auto"].append(timed(client, proxy.url, body(p), auth))
                    idle()
                    t = timed(client, tightwad.url, body(p))
                    # Tightwad reports completion_tokens as asked; count what it really returned.
                    real = len(client.post(target.url + "/tokenize", json={"content": t["text"]}).json()["tokens"])
                    over_limit += real > MAX_TOKENS
                    runs["tightwad"].append({**t, "tokens": min(real, MAX_TOKENS) if real else t["tokens"]})
            stats = client.get(proxy.url + "/stats", headers=auth).json()
        version = tightwad_version(python)
    exact = sum(a["text"] == d["text"] for a, d in zip(runs["auto"], runs["direct"]))
    tw_exact = sum(t["text"] == d["text"] for t, d in zip(runs["tightwad"], runs["direct"]))
    tw_prefix = sum(t["text"].startswith(d["text"]) for t, d in zip(runs["tightwad"], runs["direct"]))
    figures = {
        "auto_ratio": rate(runs["auto"]) / rate(runs["direct"]),
        "tightwad_ratio": rate(runs["tightwad"]) / rate(runs["direct"]),
        "direct_tok_s": rate(runs["direct"]), "auto_tok_s": rate(runs["auto"]), "tightwad_tok_s": rate(runs["tightwad"]),
        "auto_identical": f"{exact}/{len(runs['auto'])}", "tightwad_identical": f"{tw_exact}/{len(runs['tightwad'])}",
        "tightwad_over_max_tokens": over_limit, "tightwad_starts_with_direct": f"{tw_prefix}/{len(runs['tightwad'])}", "tightwad_version": version,
        "auto_paths": stats["requests"], "controller": stats["controller"],
    }
    print(dump(figures))
    write_section("proxy_fast_target", "python benchmarks/proxy_fast_target.py", f"""
Target and drafter: SmolLM2-135M Q4_1, one thread each (target `-np {DRAFT_MAX + 1}`); native: the same target
with the draft on a ggml-rpc-server. {len(PROMPTS)} prompts x {REPS}, {MAX_TOKENS} tokens, temperature 0, interleaved
direct / llamafleet auto / Tightwad {version} (`max_draft_tokens` {DRAFT_MAX}), each request started only when every
server's slots are idle. auto starts cold: its probes of native and proxy are inside the measurement.

| | tok/s | ratio to direct | output identical to direct |
|---|---|---|---|
| llama-server direct | {figures['direct_tok_s']:.1f} | 1.00x | |
| llamafleet `auto` | {figures['auto_tok_s']:.1f} | **{figures['auto_ratio']:.3f}x** (goal >= 0.95x) | {figures['auto_identical']} |
| Tightwad {version} proxy | {figures['tightwad_tok_s']:.1f} | **{figures['tightwad_ratio']:.3f}x** | {figures['tightwad_identical']} |

Tightwad returned more than `max_tokens` on {over_limit} of {len(runs['tightwad'])} requests (only the `max_tokens` the client
asked for are counted; the text beyond them is a bug, not output); its text began with direct's on
{figures['tightwad_starts_with_direct']}. auto's paths: `{stats['requests']}`; probe time fraction
{stats['controller']['probe_time_fraction']}; measured seconds per token:
`{stats['controller']['seconds_per_token']['greedy']}`.
""")


if __name__ == "__main__":
    main()
