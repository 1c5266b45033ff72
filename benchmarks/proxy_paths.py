"""Each path's figures on both rig pairs: tok/s relative to llama-server direct (interleaved),
acceptance rate, tokens per round, and target tokens evaluated per generated token.

Pairs: "agreeing" (the 230-block slow target, SmolLM2 drafting, identical greedy outputs) and
"partial" (SmolLM2 plus a perturbing block, SmolLM2 drafting).
Run: .venv/bin/python benchmarks/proxy_paths.py  (about 4 minutes on 2 cores)
"""

from __future__ import annotations

from contextlib import ExitStack

import httpx

from proxy_common import PROMPTS, dump, rate, start, start_llamafleet, start_native, timed, wait_idle, write_section
from llamafleet.config.models import SpeculationMode
from llamafleet.rig import cache, models

MAX_TOKENS = 48
DRAFT_MAX = 8
MODES = [mode.value for mode in SpeculationMode]  # every mode the proxy has


def measure(pair: str, target_model, smol) -> dict:
    with ExitStack() as stack:
        slots = DRAFT_MAX + 1
        target = start(stack, target_model, f"{pair}-target", ["-c", str(1024 * slots), "-np", str(slots)])
        drafter = start(stack, smol, f"{pair}-drafter", ["-c", "2048"])
        native = start_native(stack, target_model, smol, DRAFT_MAX, f"{pair}-native")
        proxy, auth = start_llamafleet(stack, target, slots=slots, drafters=[drafter], native=native, draft_max=DRAFT_MAX)
        body = lambda p: {"prompt": p, "max_tokens": MAX_TOKENS, "temperature": 0}  # noqa: E731
        runs: dict[str, list[dict]] = {m: [] for m in ["llama-server", *MODES]}
        with httpx.Client(timeout=600) as client:
            for p in PROMPTS:
                timed(client, target.url, body(p))
                timed(client, native.url, body(p))
            for p in PROMPTS:  # interleaved per prompt
                wait_idle(client, target.url, native.url)
                runs["llama-server"].append(timed(client, target.url, body(p)))
                for mode in MODES:
                    wait_idle(client, target.url, native.url)
                    runs[mode].append(timed(client, proxy.url, body(p), {**auth, "X-Llamafleet-Mode": mode}))
    base = rate(runs["llama-server"])
    out = {}
    for mode in MODES:
        reports = [r["report"] for r in runs[mode]]
        tokens = sum(r["tokens"] for r in runs[mode])
        drafted, accepted, rounds = (sum(r[k] for r in reports) for k in ("drafted", "accepted", "rounds"))
        out[mode] = {
            "ratio": rate(runs[mode]) / base,
            "identical": sum(a["text"] == b["text"] for a, b in zip(runs[mode], runs["llama-server"])),
            "acceptance": accepted / drafted if drafted else None,
            "tokens_per_round": tokens / rounds if rounds else None,
            "target_evaluated_per_token": sum(r["target_tokens_evaluated"] for r in reports) / tokens,
            "paths": sorted({r["path"] for r in reports}),
        }
    out["direct_tok_s"] = base
    return out


def fmt(v, spec=".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def main() -> None:
    smol = cache.ensure_smollm2()
    results = {"agreeing": measure("agreeing", models.ensure_slow_target(), smol),
               "partial": measure("partial", models.ensure_partial_target(), smol)}
    print(dump(results))
    rows = []
    for pair, figures in results.items():
        for mode in MODES:
            f = figures[mode]
            rows.append(f"| {pair} | {mode} | {f['ratio']:.3f}x | {fmt(f['acceptance'])} | {fmt(f['tokens_per_round'])} | "
                        f"{fmt(f['target_evaluated_per_token'])} | {f['identical']}/{len(PROMPTS)} | {', '.join(f['paths'])} |")
    write_section("proxy_paths", "python benchmarks/proxy_paths.py", f"""
{len(PROMPTS)} prompts, {MAX_TOKENS} tokens, temperature 0, draft_max {DRAFT_MAX}; each mode forced with `X-Llamafleet-Mode`, interleaved
per prompt with llama-server alone (agreeing target direct: {results['agreeing']['direct_tok_s']:.1f} tok/s; partial target direct:
{results['partial']['direct_tok_s']:.1f} tok/s). Target tokens evaluated per generated token include the prompt.

| pair | mode | tok/s vs direct | acceptance | tokens/round | target tokens evaluated / token | identical | path taken |
|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + """

On this 2-core CPU every server shares the same two cores, so a draft costs the target time; the
proxy path's verification batch is no cheaper per token than decoding (each prefix is re-evaluated,
and here a prompt token costs about as much as a generated one). `auto` therefore
routes to the fastest measured path, which here is the plain target or native speculation. In this
table `auto` serves only 6 requests from a cold start, so its first probes of each path weigh
heavily; `proxy_fast_target` measures it over 24 requests. The proxy path starts with 2-token drafts
and lengthens them one step per request while that is predicted to help.
""")


if __name__ == "__main__":
    main()
