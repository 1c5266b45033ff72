"""``--chart FILE.png``: effective tok/s and speedup per prompt category and condition."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from llamafleet.bench.analysis import ALL
from llamafleet.errors import UserError


def write_chart(summary: dict, conditions: Sequence[str], path: Path, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise UserError("--chart needs matplotlib: pip install 'llamafleet[bench]'") from None
    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    groups = [*summary["categories"], ALL]
    labels = ["average" if g == ALL else g for g in groups]
    speculative = [c for c in conditions if c != "baseline"]
    fig, (tps_ax, speedup_ax) = plt.subplots(2, 1, figsize=(10, 8), constrained_layout=True)
    _bars(tps_ax, labels, {c: [summary["conditions"][c]["rows"][g]["effective_tps"] for g in groups]
                           for c in conditions})
    tps_ax.set_ylabel("effective tok/s")
    tps_ax.set_title(title)
    _bars(speedup_ax, labels, {c: [_median(summary["conditions"][c]["rows"][g]["speedup"]) for g in groups]
                               for c in speculative})
    speedup_ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    speedup_ax.set_ylabel("speedup vs baseline (median over repeats)")
    try:
        fig.savefig(path, dpi=100)
    except OSError as err:
        raise UserError(f"cannot write chart {path}: {err.strerror or err}") from None
    finally:
        plt.close(fig)


# One colour per condition in both panels (the speedup panel has no baseline bar).
COLOURS = {"baseline": "#6b7280", "direct": "#9ca3af", "native": "#2563eb", "proxy": "#d97706",
           "auto": "#059669", "tightwad": "#9333ea"}


def _bars(ax, labels: Sequence[str], series: dict[str, list[float | None]]) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [v or 0.0 for v in values], width, label=name, color=COLOURS.get(name))
    ax.set_xticks(range(len(labels)), labels)
    ax.legend(fontsize="small", ncols=min(len(series), 5))


def _median(speedup: dict | None) -> float | None:
    return speedup["median"] if speedup else None
