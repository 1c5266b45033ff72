"""A short real `llamafleet bench --rig` run: the whole rig (target, SmolLM2 drafter, native target
with the draft over ggml-rpc-server, the proxy with auth, Tightwad) on loopback.

It uses the partly-agreeing pair: its target is fast, which keeps the run short on 2 cores, and its
draft is rejected part of the time, so exactness is checked where it can actually fail. Few prompts,
few tokens, one repeat: every figure filled in, outputs identical to the baseline on all of
llamafleet's paths, a real PNG chart. (docs/benchmarks.md has the full runs, slow pair included.)"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from llamafleet.bench.analysis import ALL
from llamafleet.bench.conditions import SPEC_FIELDS
from llamafleet.cli import main

pytestmark = pytest.mark.slow

OURS = ("native", "proxy", "auto")
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def run(tmp_path_factory, llama_build, smollm2):
    """(printed tables, the JSON record, output folder) of one short real run."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--rig", "--rig-pair", "partial", "--per-category", "1", "--max-tokens", str(MAX_TOKENS), "--repeats", "1",
            "--warmup", "1", "--json", str(out / "bench.json"), "--chart", str(out / "bench.png"),
            "--log-dir", str(out / "logs"), "--no-progress"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    print(printed.getvalue())  # shown with -s, and in the report of a failing test
    return printed.getvalue(), json.loads((out / "bench.json").read_text()), out


def test_tables_have_every_condition_category_and_the_statistics(run):
    printed, _, _ = run
    for heading in ("### Baseline (direct to the target, no speculation)", "path `native`", "path `proxy`",
                    "path `auto`", "### Tightwad proxy, same servers", "### Proxy statistics"):
        assert heading in printed
    for category in ("Factual", "Code", "Creative", "Reasoning", "List", "**Average**"):
        assert f"| {category} |" in printed
    assert "| Acceptance rate |" in printed and "| Speedup as % of bound |" in printed


def test_json_has_every_figure(run):
    check_every_figure(run[1])


def test_outputs_identical_to_the_target_on_every_llamafleet_path(run):
    check_outputs_identical(run[1])


def test_chart_is_a_valid_png(run):
    check_chart(run[2] / "bench.png")


def test_tightwad_ran_side_by_side(run):
    check_tightwad_side_by_side(run[1])


def check_every_figure(record: dict) -> None:
    assert record["target"]["build_info"] and record["settings"]["max_tokens"] == MAX_TOKENS
    assert set(record["conditions"]) == {"baseline", *OURS, "tightwad"}
    assert len(record["samples"]) == 5 * 5  # five categories x five conditions, one repeat
    for s in record["samples"]:
        assert s["wall_s"] > 0 and s["text_tokens"] > 0 and s["text"], s
        assert isinstance(s["identical"], bool) and isinstance(s["agrees"], bool)
        if s["condition"] in OURS:
            missing = [k for k in ("path", *SPEC_FIELDS) if s["spec"].get(k) is None]
            assert not missing, f"{s['condition']} {s['prompt']}: no {missing} in the llamafleet object"
    summary = record["summary"]
    assert summary["target_ms_per_token"] > 0 and summary["draft_ms_per_token"] > 0 and summary["cost_ratio"] > 0
    for name, data in summary["conditions"].items():
        for category, row in data["rows"].items():
            assert row["time_s"] > 0 and row["tokens"] > 0 and row["effective_tps"] > 0, (name, category)
            assert (row["speedup"] is None) == (name == "baseline"), (name, category)
    base = summary["conditions"]["baseline"]["rows"][ALL]
    assert base["generation_tps"] > 0 and base["prompt_tps"] > 0
    for name in ("native", "proxy"):  # the paths that always speculate
        stats = summary["conditions"][name]["speculation"]
        empty = [k for k, v in stats.items() if v is None]
        assert not empty, f"{name}: no figure for {empty}"
        assert 0 < stats["acceptance_rate"] <= 1 and stats["bound"] > 0 and stats["percent_of_bound"] > 0


def check_outputs_identical(record: dict) -> None:
    for name in OURS:
        rows = [s for s in record["samples"] if s["condition"] == name]
        different = [s["prompt"] for s in rows if not s["identical"]]
        assert not different, f"{name} differs from the target alone on {different}"


def check_chart(path) -> None:
    from PIL import Image  # matplotlib's own dependency

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size == (1000, 800)


def check_tightwad_side_by_side(record: dict) -> None:
    tightwad = record["summary"]["conditions"]["tightwad"]
    assert tightwad["outputs"]["requests"] == 5
    assert tightwad["speculation"]["rounds"] > 0  # read from Tightwad's own request history
    print("tightwad outputs:", tightwad["outputs"])
