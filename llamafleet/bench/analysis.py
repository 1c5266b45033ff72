"""From raw samples to the figures in the tables: per-category speed, paired speedups over
repeats, the speculation statistics, and how close each path comes to the analytic bound."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Iterable, Sequence

from llamafleet.bench.bound import alpha_from_tokens_per_round, speedup_bound
from llamafleet.bench.runner import Sample

ALL = "all"  # the pooled row, the tables' "Average"


def summarize(samples: Sequence[Sample], conditions: Sequence[str], *, max_tokens: int,
              draft_ms_per_token: float | None, prompt_eval: dict[str, dict] | None = None) -> dict:
    """``prompt_eval`` maps a prompt key to the target's timings for evaluating that prompt from an
    empty cache: the baseline's prompt tok/s (timed requests mostly find the prompt cached, because
    the conditions take turns on one prompt)."""
    baseline = [s for s in samples if s.condition == "baseline"]
    target_ms = ms_per_token([s.timings for s in baseline if s.timings])
    cost_ratio = draft_ms_per_token / target_ms if draft_ms_per_token and target_ms else None
    categories = list(dict.fromkeys(s.category for s in samples))
    summary = {
        "target_ms_per_token": target_ms,
        "draft_ms_per_token": draft_ms_per_token,
        "cost_ratio": cost_ratio,
        "categories": categories,
        "conditions": {},
    }
    for name in conditions:
        mine = [s for s in samples if s.condition == name]
        evals = prompt_eval if name == "baseline" else None
        rows = {cat: speed_row([s for s in mine if s.category == cat], baseline, evals) for cat in categories}
        rows[ALL] = speed_row(mine, baseline, evals)
        summary["conditions"][name] = {
            "rows": rows,
            "outputs": output_checks(mine, max_tokens),
            "speculation": None if name == "baseline" else speculation_stats(mine, rows[ALL]["speedup"], cost_ratio),
        }
    return summary


def speed_row(samples: Sequence[Sample], baseline: Sequence[Sample], prompt_eval: dict[str, dict] | None = None) -> dict:
    """One table row: mean time and tokens per request, tok/s, and the paired speedup."""
    timings = [s.timings for s in samples if s.timings]
    evals = [prompt_eval[k] for k in dict.fromkeys(s.prompt for s in samples) if k in prompt_eval] if prompt_eval else []
    return {
        "requests": len(samples),
        "time_s": statistics.fmean(s.wall_s for s in samples),
        "tokens": statistics.fmean(s.text_tokens for s in samples),
        "effective_tps": _rate(sum(s.text_tokens for s in samples), sum(s.wall_s for s in samples)),
        # The server's own decode rate, where the answer carries llama-server timings.
        "generation_tps": _timing_rate(timings, "predicted_n", "predicted_ms"),
        "prompt_tps": _timing_rate(evals, "prompt_n", "prompt_ms"),
        "speedup": None if samples and samples[0].condition == "baseline" else paired_speedup(samples, baseline),
        "identical": sum(1 for s in samples if s.identical),
        "compared": sum(1 for s in samples if s.identical is not None),
    }


def paired_speedup(samples: Sequence[Sample], baseline: Sequence[Sample]) -> dict | None:
    """Baseline wall time / this condition's wall time over the same prompts, once per repeat;
    min/median/max over repeats. (With identical outputs this is also the tok/s ratio.)"""
    base_wall = {(s.prompt, s.repeat): s.wall_s for s in baseline}
    ratios = []
    for repeat in sorted({s.repeat for s in samples}):
        pairs = [(base_wall[(s.prompt, s.repeat)], s.wall_s) for s in samples
                 if s.repeat == repeat and (s.prompt, s.repeat) in base_wall]
        if pairs:
            ratios.append(sum(b for b, _ in pairs) / sum(w for _, w in pairs))
    if not ratios:
        return None
    return {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios), "per_repeat": ratios}


def output_checks(samples: Sequence[Sample], max_tokens: int) -> dict:
    """Tokens requested against tokens returned (counted in the text) and tokens the server claimed."""
    reported = [s.reported_tokens for s in samples]
    return {
        "requests": len(samples),
        "identical": sum(1 for s in samples if s.identical),
        "compared": sum(1 for s in samples if s.identical is not None),
        "agree": sum(1 for s in samples if s.agrees),
        "tokens_requested": max_tokens * len(samples),
        "tokens_returned": sum(s.text_tokens for s in samples),
        "tokens_reported": None if None in reported else sum(reported),
        "over_max_tokens": sum(1 for s in samples if s.text_tokens > max_tokens),
    }


def speculation_stats(samples: Sequence[Sample], speedup: dict | None, cost_ratio: float | None) -> dict:
    """The proxy statistics (rounds, drafted, accepted, tokens per round), pooled over a condition's
    requests, plus the bound."""
    specs = [s.spec for s in samples if s.spec]
    totals = {k: _total(spec.get(k) for spec in specs) for k in
              ("rounds", "drafted", "accepted", "target_tokens_evaluated", "draft_ms", "verify_ms")}
    rounds, drafted, accepted = totals["rounds"], totals["drafted"], totals["accepted"]
    tokens_per_round = 1 + accepted / rounds if rounds and accepted is not None else None
    draft_length = drafted / rounds if rounds and drafted else None
    alpha = alpha_from_tokens_per_round(tokens_per_round, draft_length) if tokens_per_round and draft_length else None
    bound = speedup_bound(alpha, draft_length, cost_ratio) if alpha is not None and cost_ratio is not None else None
    evaluated = totals["target_tokens_evaluated"]
    return {
        **totals,
        "paths": dict(Counter(str(spec.get("path")) for spec in specs)),
        "acceptance_rate": accepted / drafted if drafted and accepted is not None else None,
        "tokens_per_round": tokens_per_round,
        "draft_length": draft_length,
        "alpha": alpha,
        "target_tokens_per_accepted": evaluated / accepted if evaluated is not None and accepted else None,
        "cost_ratio": cost_ratio,
        "bound": bound,
        "percent_of_bound": 100 * speedup["median"] / bound if bound and speedup else None,
    }


def ms_per_token(timings: Sequence[dict]) -> float | None:
    """Decode cost per generated token from llama-server timings."""
    rate = _timing_rate(timings, "predicted_n", "predicted_ms")
    return 1000 / rate if rate else None


def _timing_rate(timings: Sequence[dict], count_key: str, ms_key: str) -> float | None:
    count = sum(t.get(count_key) or 0 for t in timings)
    ms = sum(t.get(ms_key) or 0 for t in timings)
    return count / ms * 1000 if count and ms else None


def _rate(count: float, seconds: float) -> float | None:
    return count / seconds if seconds else None


def _total(values: Iterable[float | None]) -> float | None:
    """A sum that is unknown (None) when any part is unknown, rather than silently too small."""
    values = list(values)
    return None if not values or None in values else sum(values)
