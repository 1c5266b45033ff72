"""Proxy overhead: `direct` through the proxy against llama-server alone (tok/s ratio, interleaved),
the proxy's own time per speculation round (p50), and 64 concurrent streams (errors counted).

Run: .venv/bin/python benchmarks/proxy_overhead.py  (about 2 minutes on 2 cores)
"""

from __future__ import annotations

import asyncio
from contextlib import ExitStack

import aiohttp
import httpx

from proxy_common import PROMPTS, dump, p50, rate, start, start_llamafleet, timed, write_section
from llamafleet.rig import cache

REPS = 3
MAX_TOKENS = 64
STREAMS = 64


async def concurrent_streams(url: str, headers: dict, n: int) -> dict:
    """n streaming requests at once; an error is a non-200, an error event, or a stream without [DONE]."""
    async def one(session: aiohttp.ClientSession, i: int) -> str | None:
        body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 16, "temperature": 0, "stream": True}
        async with session.post(url + "/v1/completions", json=body, headers={**headers, "X-Llamafleet-Mode": "direct"}) as r:
            if r.status != 200:
                return f"status {r.status}"
            done = False
            async for line in r.content:
                if line.startswith(b"data: [DONE]"):
                    done = True
                elif b'"error"' in line:
                    return line.decode()[:200]
            return None if done else "no [DONE]"

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        results = await asyncio.gather(*(one(session, i) for i in range(n)), return_exceptions=True)
    errors = [str(r) for r in results if r is not None]
    return {"streams": n, "errors": len(errors), "examples": errors[:3]}


def main() -> None:
    smol = cache.ensure_smollm2()
    with ExitStack() as stack:
        target = start(stack, smol, "target", ["-c", "4096", "-np", "5"])
        drafter = start(stack, smol, "drafter", ["-c", "2048"])
        proxy, auth = start_llamafleet(stack, target, slots=5, drafters=[drafter], draft_max=4)
        with httpx.Client(timeout=600) as client:
            body = lambda p: {"prompt": p, "max_tokens": MAX_TOKENS, "temperature": 0}  # noqa: E731
            for p in PROMPTS:  # warm both caches and the proxy's connection pool
                timed(client, target.url, body(p))
                timed(client, proxy.url, body(p), {**auth, "X-Llamafleet-Mode": "direct"})
            alone, through = [], []
            for _ in range(REPS):
                for p in PROMPTS:  # interleaved, so drift hits both sides alike
                    alone.append(timed(client, target.url, body(p)))
                    through.append(timed(client, proxy.url, body(p), {**auth, "X-Llamafleet-Mode": "direct"}))
            assert [r["text"] for r in alone] == [r["text"] for r in through], "direct through the proxy changed the output"
            per_request_ms = sorted((b["seconds"] - a["seconds"]) * 1000 for a, b in zip(alone, through))
            rounds = [timed(client, proxy.url, body(p), {**auth, "X-Llamafleet-Mode": "proxy"})["report"]
                      for _ in range(REPS) for p in PROMPTS]
        own_per_round = [r["own_ms_per_round"] for r in rounds if r["own_ms_per_round"] is not None]
        detok_per_round = [r["detokenize_ms"] / r["rounds"] for r in rounds if r["rounds"]]
        streams = asyncio.run(concurrent_streams(proxy.url, auth, STREAMS))
    figures = {
        "direct_ratio": rate(through) / rate(alone),
        "llama_server_tok_s": rate(alone), "proxy_direct_tok_s": rate(through),
        "added_ms_per_request_p50": p50(per_request_ms),
        "own_ms_per_round_p50": p50(own_per_round), "own_ms_per_round_max": max(own_per_round),
        "rounds_measured": sum(r["rounds"] for r in rounds),
        "detokenize_ms_per_round_p50": p50(detok_per_round),
        "concurrent_streams": streams,
    }
    print(dump(figures))
    write_section("proxy_overhead", "python benchmarks/proxy_overhead.py", f"""
Target: SmolLM2-135M Q4_1 (`-np 5`), the fast case where overhead shows most. {len(PROMPTS)} prompts x {REPS},
{MAX_TOKENS} tokens, temperature 0, interleaved (llama-server alone, then through the proxy).

| figure | value | goal |
|---|---|---|
| direct through the proxy / llama-server alone (tok/s) | **{figures['direct_ratio']:.3f}x** ({figures['proxy_direct_tok_s']:.1f} vs {figures['llama_server_tok_s']:.1f} tok/s) | >= 0.98x |
| added wall time per request, p50 | {figures['added_ms_per_request_p50']:.2f} ms | |
| proxy's own time per speculation round, p50 (max) | **{figures['own_ms_per_round_p50']:.3f} ms** ({figures['own_ms_per_round_max']:.3f}) over {figures['rounds_measured']} rounds | < 1 ms |
| the target's `/detokenize` call per round (proxy path text), p50 | {figures['detokenize_ms_per_round_p50']:.3f} ms | |
| {STREAMS} concurrent streams through the proxy | **{streams['errors']} errors** | 0 |

"Own time" is measured inside the proxy on real servers: per round, the time its own code runs
between upstream calls (building the verification batch, accepting, text assembly), summed per
request and divided by its rounds (`own_ms_per_round` in the `llamafleet` object). The `/detokenize`
round trip to the target is an upstream call and is shown on its own line.
""")


if __name__ == "__main__":
    main()
