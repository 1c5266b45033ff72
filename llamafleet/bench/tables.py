"""The benchmark's tables, as Markdown pipe tables (they read on a terminal and paste into docs):
one per-category table per condition (time, tokens, tok/s per prompt category, and their average),
then the proxy statistics side by side (rounds, drafted, accepted, acceptance, tokens per round)."""

from __future__ import annotations

from typing import Callable, Sequence

from llamafleet.bench.analysis import ALL

TITLES = {
    "baseline": "Baseline (direct to the target, no speculation)",
    "direct": "llamafleet proxy, path `direct` (pass-through)",
    "native": "llamafleet proxy, path `native` (llama.cpp speculation, draft over RPC)",
    "proxy": "llamafleet proxy, path `proxy` (drafter server + batched verification)",
    "auto": "llamafleet proxy, path `auto` (the controller chooses)",
    "tightwad": "Tightwad proxy, same servers",
}
DASH = "—"


def render(summary: dict, conditions: Sequence[str]) -> str:
    parts = [condition_table(name, summary) for name in conditions]
    spec_names = [n for n in conditions if summary["conditions"][n]["speculation"] is not None]
    if spec_names:
        parts.append(statistics_table(summary, spec_names))
        parts.append(verdict(summary, spec_names))
    return "\n\n".join(parts) + "\n"


def verdict(summary: dict, names: Sequence[str]) -> str:
    """One line to quote: each condition's median speedup and how many answers were exact."""
    cells = []
    for name in names:
        data = summary["conditions"][name]
        speedup = data["rows"][ALL]["speedup"]
        ratio = f"{speedup['median']:.2f}x" if speedup else DASH
        cells.append(f"{name} {ratio} ({data['outputs']['identical']}/{data['outputs']['compared']} identical)")
    return "Speedup over baseline (median): " + ", ".join(cells)


def comparison_table(summary: dict, names: Sequence[str]) -> str:
    """One row per condition: what a user gets (tok/s), the ratio to the plain target on the same
    prompts, exactness, acceptance and, for auto, which paths the controller took."""
    header = ["condition", "effective tok/s", "vs plain target", "identical", "acceptance", "paths taken"]
    lines = [_row(header), _rule(header, first_left=True)]
    for name in names:
        data = summary["conditions"][name]
        row, spec = data["rows"][ALL], data["speculation"] or {}
        paths = ", ".join(f"{p} {n}" for p, n in sorted((spec.get("paths") or {}).items()))
        lines.append(_row([
            "plain target" if name == "baseline" else name,
            _num(row["effective_tps"], "{:.1f}"),
            "1 (reference)" if name == "baseline" else speedup_text(row["speedup"]),
            DASH if name == "baseline" else f"{row['identical']}/{row['compared']}",
            _num(_pct(spec.get("acceptance_rate")), "{:.0f}%"),
            paths or DASH,
        ]))
    return "\n".join(lines)


def condition_table(name: str, summary: dict) -> str:
    data = summary["conditions"][name]
    header = ["Prompt", "Time", "Tokens", "Generation tok/s", "Prompt tok/s", "Effective tok/s",
              "Speedup (median [min–max])", "Identical to baseline"]
    lines = [f"### {TITLES.get(name, name)}", "", _row(header), _rule(header, first_left=True)]
    for category in [*summary["categories"], ALL]:
        row = data["rows"][category]
        label = "**Average**" if category == ALL else category.capitalize()
        lines.append(_row([
            label,
            _num(row["time_s"], "{:.2f}s"),
            _num(row["tokens"], "{:.0f}"),
            _num(row["generation_tps"], "{:.1f}"),
            _num(row["prompt_tps"], "{:.1f}"),
            _num(row["effective_tps"], "{:.1f}"),
            speedup_text(row["speedup"]),
            DASH if name == "baseline" else f"{row['identical']}/{row['compared']}",
        ]))
    return "\n".join(lines)


def statistics_table(summary: dict, names: Sequence[str]) -> str:
    c = summary["cost_ratio"]
    header = ["Metric", *names]
    rows: list[tuple[str, Callable[[dict, dict], str]]] = [
        ("Requests", lambda s, o: str(o["requests"])),
        ("Paths taken", lambda s, o: ", ".join(f"{p} {n}" for p, n in sorted(s["paths"].items())) or DASH),
        ("Total rounds", lambda s, o: _num(s["rounds"], "{:,.0f}")),
        ("Tokens drafted", lambda s, o: _num(s["drafted"], "{:,.0f}")),
        ("Tokens accepted", lambda s, o: _num(s["accepted"], "{:,.0f}")),
        ("Acceptance rate", lambda s, o: _num(_pct(s["acceptance_rate"]), "**{:.1f}%**")),
        ("Tokens per round", lambda s, o: _num(s["tokens_per_round"], "{:.2f}")),
        ("Mean draft length γ", lambda s, o: _num(s["draft_length"], "{:.2f}")),
        ("Per-token acceptance α (fitted)", lambda s, o: _num(s["alpha"], "{:.3f}")),
        ("Target tokens evaluated per accepted token", lambda s, o: _num(s["target_tokens_per_accepted"], "{:.2f}")),
        ("Draft / verify time", lambda s, o: f"{_num(_s(s['draft_ms']), '{:.1f}s')} / {_num(_s(s['verify_ms']), '{:.1f}s')}"),
        ("Draft + verify ms per round", lambda s, o: _num(_per_round(s), "{:.1f}")),
        ("Outputs identical to baseline", lambda s, o: f"{o['identical']}/{o['compared']}"),
        ("Same text as baseline up to the shorter one", lambda s, o: f"{o['agree']}/{o['compared']}"),
        ("Tokens returned / requested", lambda s, o: f"{o['tokens_returned']:,} / {o['tokens_requested']:,}"),
        ("Tokens the server reported", lambda s, o: _num(o["tokens_reported"], "{:,.0f}")),
        ("Answers longer than max_tokens", lambda s, o: str(o["over_max_tokens"])),
        ("Wall-clock speedup", lambda s, o: speedup_text(o["speedup"])),
        ("Analytic bound E/(γc+1)", lambda s, o: _num(s["bound"], "{:.2f}x")),
        ("Speedup as % of bound", lambda s, o: _num(s["percent_of_bound"], "{:.0f}%")),
    ]
    lines = [
        "### Proxy statistics",
        "",
        f"Cost ratio c = draft ms/token ÷ target ms/token = {_num(summary['draft_ms_per_token'], '{:.1f}')} ÷ "
        f"{_num(summary['target_ms_per_token'], '{:.1f}')} = {_num(c, '{:.3f}')}",
        "",
        _row(header),
        _rule(header, first_left=True),
    ]
    for label, cell in rows:
        cells = []
        for name in names:
            data = summary["conditions"][name]
            outputs = {**data["outputs"], "speedup": data["rows"][ALL]["speedup"]}
            cells.append(cell(data["speculation"], outputs))
        lines.append(_row([label, *cells]))
    return "\n".join(lines)


def speedup_text(speedup: dict | None) -> str:
    if not speedup:
        return DASH
    if len(speedup["per_repeat"]) == 1:
        return f"**{speedup['median']:.2f}x**"
    return f"**{speedup['median']:.2f}x** [{speedup['min']:.2f}–{speedup['max']:.2f}]"


def _num(value: float | None, fmt: str) -> str:
    return DASH if value is None else fmt.format(value)


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _s(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def _per_round(stats: dict) -> float | None:
    if not stats["rounds"] or stats["draft_ms"] is None or stats["verify_ms"] is None:
        return None
    return (stats["draft_ms"] + stats["verify_ms"]) / stats["rounds"]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _rule(cells: Sequence[str], first_left: bool) -> str:
    return "|" + "|".join("---" if first_left and i == 0 else ":---:" for i in range(len(cells))) + "|"
