"""The analytic speedup bound for speculative decoding (Leviathan, Kalman, Matias 2023, "Fast
Inference from Transformers via Speculative Decoding", section 3).

With per-token acceptance probability ``alpha`` (independent per position) and draft length
``gamma``, one round yields on average

    E = (1 - alpha**(gamma + 1)) / (1 - alpha)

target tokens (the accepted prefix plus the target's own next token). A round costs ``gamma`` draft
steps plus one target step, so with ``c`` = draft cost per token / target cost per token the
wall-clock speedup over the target alone is at most

    speedup = E / (gamma * c + 1).

It assumes verifying ``gamma + 1`` positions costs one target step, which a native verifier nearly
achieves; a path that pays more per round falls below the bound, and "% of bound" shows by how much.
"""

from __future__ import annotations

import math


def expected_tokens_per_round(alpha: float, gamma: float) -> float:
    """E = (1 - alpha^(gamma+1)) / (1 - alpha); gamma may be a mean (non-integer) draft length."""
    _check_unit("alpha", alpha)
    if gamma < 0:
        raise ValueError(f"gamma (draft length) must be >= 0, got {gamma}")
    if alpha == 1.0:
        # The limit of the geometric sum: every drafted token is accepted, plus the bonus token.
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1.0)) / (1.0 - alpha)


def speedup_bound(alpha: float, gamma: float, cost_ratio: float) -> float:
    """Upper bound on wall-clock speedup for acceptance alpha, draft length gamma, cost ratio c."""
    if cost_ratio < 0 or math.isnan(cost_ratio):
        raise ValueError(f"cost ratio c must be >= 0, got {cost_ratio}")
    return expected_tokens_per_round(alpha, gamma) / (gamma * cost_ratio + 1.0)


def alpha_from_tokens_per_round(tokens_per_round: float, gamma: float) -> float:
    """The alpha at which E(alpha, gamma) equals a measured tokens-per-round figure.

    Why not accepted/drafted: under the model a round stops at its first rejection, so the plain
    acceptance rate understates alpha (alpha 0.8 with gamma 8 accepts only 42% of drafted tokens).
    E is increasing in alpha, so bisection finds the unique solution.
    """
    if gamma <= 0:
        raise ValueError(f"gamma (draft length) must be > 0, got {gamma}")
    if not 1.0 <= tokens_per_round <= gamma + 1.0 + 1e-9:
        raise ValueError(f"tokens per round must lie in [1, gamma+1] = [1, {gamma + 1:g}], got {tokens_per_round}")
    if tokens_per_round >= gamma + 1.0:
        return 1.0  # E is flat near alpha = 1, so bisection would stop just short of it
    low, high = 0.0, 1.0
    for _ in range(60):  # 2^-60: far below any figure we print
        mid = (low + high) / 2
        if expected_tokens_per_round(mid, gamma) < tokens_per_round:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
