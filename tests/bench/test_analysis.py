"""Summary arithmetic (pairing, pooling, bound) and the table/chart renderers, on hand-made samples
whose figures were worked out by hand. The live end-to-end run is in test_bench_rig.py."""

import struct

import pytest

from llamafleet.bench.analysis import ALL, summarize
from llamafleet.bench.runner import Sample, mark_identical, schedule
from llamafleet.bench.conditions import Condition
from llamafleet.bench.prompts import Prompt
from llamafleet.bench.tables import render
from llamafleet.bench.chart import write_chart


def sample(condition, prompt, repeat, wall, *, tokens=10, text="same", spec=None, timings=None, category=None):
    return Sample(condition=condition, prompt=prompt, category=category or prompt.split("-")[0], repeat=repeat,
                  wall_s=wall, text_tokens=tokens, reported_tokens=tokens, finish_reason="length",
                  identical=None, agrees=None, timings=timings, spec=spec, text=text)


def spec(rounds, drafted, accepted, evaluated):
    return {"path": "proxy", "rounds": rounds, "drafted": drafted, "accepted": accepted,
            "target_tokens_evaluated": evaluated, "draft_ms": 100.0, "verify_ms": 400.0}


# Prompt evaluation from an empty cache, measured once per prompt: the baseline's prompt tok/s.
PROMPT_EVAL = {"code-0": {"prompt_n": 20, "prompt_ms": 50.0}, "list-0": {"prompt_n": 30, "prompt_ms": 100.0}}


def summary_of(samples, draft_ms_per_token=1.0):
    return summarize(samples, ["baseline", "proxy"], max_tokens=10, draft_ms_per_token=draft_ms_per_token,
                     prompt_eval=PROMPT_EVAL)


@pytest.fixture
def samples():
    base_timing = {"predicted_n": 10, "predicted_ms": 100.0, "prompt_n": 20, "prompt_ms": 50.0}
    out = [
        sample("baseline", "code-0", 0, 1.0, timings=base_timing),
        sample("baseline", "list-0", 0, 2.0, timings=base_timing),
        sample("baseline", "code-0", 1, 1.0, timings=base_timing),
        sample("baseline", "list-0", 1, 2.0, timings=base_timing),
        sample("proxy", "code-0", 0, 0.5, spec=spec(2, 8, 6, 20)),
        sample("proxy", "list-0", 0, 1.0, spec=spec(2, 8, 6, 20)),
        sample("proxy", "code-0", 1, 1.0, spec=spec(2, 8, 6, 20)),
        sample("proxy", "list-0", 1, 2.0, spec=spec(2, 8, 6, 20), text="same and more", tokens=12),
    ]
    mark_identical(out)
    return out


def test_speedup_is_paired_per_repeat_and_summarised_over_repeats(samples):
    summary = summary_of(samples)
    overall = summary["conditions"]["proxy"]["rows"][ALL]["speedup"]
    # repeat 0: (1 + 2) / (0.5 + 1) = 2.0; repeat 1: (1 + 2) / (1 + 2) = 1.0
    assert overall["per_repeat"] == [2.0, 1.0]
    assert (overall["min"], overall["median"], overall["max"]) == (1.0, 1.5, 2.0)
    assert summary["conditions"]["proxy"]["rows"]["code"]["speedup"]["per_repeat"] == [2.0, 1.0]
    assert summary["conditions"]["baseline"]["rows"][ALL]["speedup"] is None


def test_rows_pool_rates_and_count_identical_outputs(samples):
    summary = summary_of(samples)
    base = summary["conditions"]["baseline"]["rows"][ALL]
    assert base["generation_tps"] == pytest.approx(100.0)  # 40 tokens in 400 ms
    assert base["prompt_tps"] == pytest.approx(50 / 0.150)  # each prompt once: 50 tokens in 150 ms
    assert summary["conditions"]["baseline"]["rows"]["code"]["prompt_tps"] == pytest.approx(400.0)
    assert base["effective_tps"] == pytest.approx(40 / 6)
    proxy = summary["conditions"]["proxy"]
    assert (proxy["rows"][ALL]["identical"], proxy["rows"][ALL]["compared"]) == (3, 4)
    assert proxy["rows"]["list"]["generation_tps"] is None  # the proxy's answers carried no timings
    assert proxy["outputs"]["over_max_tokens"] == 1
    assert proxy["outputs"]["tokens_returned"] == 42


def test_speculation_statistics_and_bound(samples):
    summary = summary_of(samples)
    assert summary["cost_ratio"] == pytest.approx(0.1)  # 1 ms draft / 10 ms target per token
    stats = summary["conditions"]["proxy"]["speculation"]
    assert (stats["rounds"], stats["drafted"], stats["accepted"]) == (8, 32, 24)
    assert stats["acceptance_rate"] == 0.75
    assert stats["tokens_per_round"] == 4.0  # 24 accepted / 8 rounds + the target's token
    assert stats["draft_length"] == 4.0
    assert stats["target_tokens_per_accepted"] == pytest.approx(80 / 24)
    # tokens per round 4 with gamma 4 means E(alpha, 4) = 4; the bound is then 4 / (4 * 0.1 + 1)
    assert stats["bound"] == pytest.approx(4 / 1.4)
    assert stats["percent_of_bound"] == pytest.approx(100 * 1.5 / (4 / 1.4))


def test_unknown_parts_make_totals_unknown_not_small(samples):
    samples[-1].spec["target_tokens_evaluated"] = None
    summary = summary_of(samples, draft_ms_per_token=None)
    stats = summary["conditions"]["proxy"]["speculation"]
    assert stats["target_tokens_evaluated"] is None and stats["target_tokens_per_accepted"] is None
    assert stats["bound"] is None  # no drafter measured, so no cost ratio


def test_tables_follow_the_seed_layout(samples):
    summary = summary_of(samples)
    text = render(summary, ["baseline", "proxy"])
    assert "| Prompt | Time | Tokens | Generation tok/s | Prompt tok/s |" in text
    assert "| Code | 1.00s | 10 | 100.0 | 400.0 | 10.0 | — | — |" in text
    assert "| **Average** | 1.50s | 10 | 100.0 | 333.3 | 6.7 | — | — |" in text  # baseline: mean of 1, 2, 1, 2 s
    assert "| Acceptance rate | **75.0%** |" in text
    assert "| Wall-clock speedup | **1.50x** [1.00–2.00] |" in text
    assert "| Outputs identical to baseline | 3/4 |" in text
    assert "| Same text as baseline up to the shorter one | 4/4 |" in text  # the 4th only runs longer
    assert "| Draft + verify ms per round | 250.0 |" in text  # (4 x 100 + 4 x 400) ms / 8 rounds
    assert "Speedup over baseline (median): proxy 1.50x (3/4 identical)" in text


def test_chart_is_a_png(samples, tmp_path):
    summary = summary_of(samples)
    path = tmp_path / "chart.png"
    write_chart(summary, ["baseline", "proxy"], path, "test")
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert (width, height) == (1000, 800)  # 10x8 inches at 100 dpi


def test_schedule_interleaves_and_rotates():
    a, b, c = Condition("a", ""), Condition("b", ""), Condition("c", "")
    prompts = [Prompt("x", "1", 0), Prompt("y", "2", 0)]
    steps = schedule([a, b, c], prompts, repeats=2, warmup=1)
    names = [(s.condition.name, s.prompt.key, s.repeat) for s in steps]
    assert names[:3] == [("a", "x-0", -1), ("b", "x-0", -1), ("c", "x-0", -1)]
    assert [n for n, _, _ in names[3:]] == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert [r for _, _, r in names[3:]] == [0] * 6 + [1] * 6
