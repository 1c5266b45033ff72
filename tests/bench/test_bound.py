"""The speedup bound against values worked by hand from Leviathan et al. (2023), section 3."""

import pytest

from llamafleet.bench.bound import alpha_from_tokens_per_round, expected_tokens_per_round, speedup_bound


@pytest.mark.parametrize(
    ("alpha", "gamma", "expected"),
    [
        (0.8, 4, 3.3616),  # (1 - 0.8^5) / 0.2 = (1 - 0.32768) / 0.2
        (0.6, 3, 2.176),  # (1 - 0.6^4) / 0.4 = (1 - 0.1296) / 0.4
        (0.5, 1, 1.5),  # one draft token: accepted half the time, plus the bonus token
        (0.0, 8, 1.0),  # nothing accepted: only the target's own token per round
        (1.0, 8, 9.0),  # the alpha -> 1 limit: all 8 accepted plus the bonus token
        (0.9, 0, 1.0),  # no drafting at all
    ],
)
def test_expected_tokens_per_round(alpha, gamma, expected):
    assert expected_tokens_per_round(alpha, gamma) == pytest.approx(expected, rel=1e-12)


def test_expected_tokens_is_continuous_at_alpha_one():
    assert expected_tokens_per_round(1 - 1e-9, 5) == pytest.approx(6.0, rel=1e-6)


@pytest.mark.parametrize(
    ("alpha", "gamma", "c", "expected"),
    [
        (0.8, 4, 0.1, 3.3616 / 1.4),  # 2.4011...
        (1.0, 8, 0.0, 9.0),  # a free, perfect draft: gamma+1 tokens per target step
        (1.0, 8, 1.0, 1.0),  # a draft as slow as the target gains nothing even at 100%
        (0.0, 4, 0.05, 1 / 1.2),  # a useless draft only costs: 0.833x
    ],
)
def test_speedup_bound(alpha, gamma, c, expected):
    assert speedup_bound(alpha, gamma, c) == pytest.approx(expected, rel=1e-12)


def test_gpt_oss_pair_could_not_beat_0_39x_by_much_if_draft_was_slow():
    # The GPT-OSS 120B/20B run in docs/benchmarks.md: 100% acceptance, 32-token drafts; a draft at 40% of the target's cost per
    # token bounds the speedup at 33 / (32 * 0.4 + 1) = 2.39x: the 0.39x it measured was overhead.
    assert speedup_bound(1.0, 32, 0.4) == pytest.approx(33 / 13.8)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.8, 0.95, 1.0])
def test_alpha_round_trips_through_tokens_per_round(alpha):
    tokens = expected_tokens_per_round(alpha, 6)
    assert alpha_from_tokens_per_round(tokens, 6) == pytest.approx(alpha, abs=1e-9)


def test_plain_acceptance_rate_understates_alpha():
    # alpha 0.8, gamma 8: E = 4.33 tokens per round, i.e. 3.33 of 8 drafted accepted (42%).
    tokens = expected_tokens_per_round(0.8, 8)
    assert (tokens - 1) / 8 == pytest.approx(0.4161, abs=1e-4)
    assert alpha_from_tokens_per_round(tokens, 8) == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: expected_tokens_per_round(1.2, 4), "alpha must lie in"),
        (lambda: expected_tokens_per_round(0.5, -1), "gamma"),
        (lambda: speedup_bound(0.5, 4, -0.1), "cost ratio"),
        (lambda: alpha_from_tokens_per_round(7.0, 4), "tokens per round must lie"),
        (lambda: alpha_from_tokens_per_round(0.5, 4), "tokens per round must lie"),
    ],
)
def test_out_of_range_inputs_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()
