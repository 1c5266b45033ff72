"""The interleaved benchmark loop: conditions take turns on each prompt, after a warm-up.

Why interleave: on a shared machine speed drifts (other load, thermal state, caches). Running all
of A and then all of B would fold that drift into the A/B ratio; taking turns spreads it evenly.
The order rotates from prompt to prompt so no condition always goes first (the first request on a
prompt pays the target's prompt evaluation; later ones may reuse its cached prefix).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from tqdm import tqdm

from llamafleet.bench.conditions import Condition
from llamafleet.bench.prompts import Prompt


@dataclass
class Sample:
    """One measured request: every raw figure the summary and the JSON file are built from."""

    condition: str
    prompt: str  # Prompt.key
    category: str
    repeat: int
    wall_s: float
    text_tokens: int  # tokens in the returned text, counted by the target's tokenizer
    reported_tokens: int | None
    finish_reason: str | None
    identical: bool | None  # same text as the baseline's answer to this prompt in this repeat
    agrees: bool | None  # one text starts with the other: same tokens, only the length differs
    timings: dict | None
    spec: dict | None
    text: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Step:
    condition: Condition
    prompt: Prompt
    repeat: int  # -1 for warm-up requests, which are sent but not recorded


def schedule(conditions: Sequence[Condition], prompts: Sequence[Prompt], repeats: int, warmup: int) -> list[Step]:
    """Warm-up rounds first (every condition, the first prompts), then repeats x prompts, rotating."""
    steps = [Step(c, prompts[i % len(prompts)], -1) for i in range(warmup) for c in conditions]
    turn = 0
    for repeat in range(repeats):
        for prompt in prompts:
            order = list(conditions[turn % len(conditions):]) + list(conditions[:turn % len(conditions)])
            steps.extend(Step(c, prompt, repeat) for c in order)
            turn += 1
    return steps


def run(
    conditions: Sequence[Condition],
    prompts: Sequence[Prompt],
    rendered: dict[str, str],
    *,
    max_tokens: int,
    repeats: int,
    warmup: int,
    count_tokens: Callable[[str], int],
    progress: bool | None = None,
) -> list[Sample]:
    """Send every step; ``rendered`` maps a prompt key to the raw prompt text the servers get.

    ``progress=None`` shows the bar only when stderr is a terminal.
    """
    samples: list[Sample] = []
    steps = schedule(conditions, prompts, repeats, warmup)
    for step in tqdm(steps, desc="bench", unit="req", file=sys.stderr, disable=_hide(progress)):
        outcome = step.condition.complete(rendered[step.prompt.key], max_tokens)
        if step.repeat < 0:
            continue
        samples.append(Sample(
            condition=step.condition.name,
            prompt=step.prompt.key,
            category=step.prompt.category,
            repeat=step.repeat,
            wall_s=outcome.wall_s,
            text_tokens=count_tokens(outcome.text),
            reported_tokens=outcome.reported_tokens,
            finish_reason=outcome.finish_reason,
            identical=None,
            agrees=None,
            timings=outcome.timings,
            spec=outcome.spec,
            text=outcome.text,
        ))
    mark_identical(samples)
    return samples


def mark_identical(samples: list[Sample]) -> None:
    """Compare every answer with the baseline's answer to the same prompt in the same repeat.

    ``agrees`` tells an answer that only runs longer or stops sooner (a max_tokens bug) from one
    whose tokens differ (a verification bug)."""
    reference = {(s.prompt, s.repeat): s.text for s in samples if s.condition == "baseline"}
    for s in samples:
        base = reference.get((s.prompt, s.repeat))
        s.identical = None if base is None else s.text == base
        s.agrees = None if base is None else s.text.startswith(base) or base.startswith(s.text)


def _hide(progress: bool | None) -> bool | None:
    # tqdm's own convention: None hides the bar when the stream is not a terminal.
    return None if progress is None else not progress
