"""The speculation core: draft, verify, accept, and the paths a request can take. Pure Python.

No aiohttp here: backends are reached only through :class:`llamafleet.proxy.backend.Backend`, so tests
can drive this with a recording fake. Every path produces token ids; the app turns them into text.

Exactness: in the ``proxy`` path the target's own token at every position decides what is emitted
(accept the longest agreeing draft prefix, then the target's token at the first disagreement). At
temperature > 0 the target *samples* each position independently and the draft is accepted while it
equals those samples, so each emitted token is a draw from the target's conditional distribution given
the tokens before it: the output distribution is the target's, by construction.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import AsyncIterator, Callable

from llamafleet.proxy.backend import GREEDY, Backend, BackendError, Piece, Sampling

PROXY_SAMPLING_METHOD = "per-position target sampling, accept while equal (exact)"


@dataclass(frozen=True)
class Job:
    """One generation: prompt token ids and how many tokens may follow."""

    prompt: list[int]
    max_tokens: int
    sampling: Sampling = GREEDY
    stop: tuple[str, ...] = ()
    stream: bool = False


@dataclass
class RequestReport:
    """What happened while generating; returned to the client as the ``llamafleet`` object."""

    path: str
    mode: str = ""
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    target_tokens_evaluated: int = 0
    draft_ms: float = 0.0
    verify_ms: float = 0.0
    own_ms: float = 0.0  # the proxy's own code between upstream calls (round bookkeeping, text assembly)
    detokenize_ms: float = 0.0  # the target's /detokenize calls for proxy-path text
    draft_lengths: list[int] = field(default_factory=list)
    drafter: str | None = None
    segments: list[dict] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    sampling_method: str = "target"
    # Why a request went pass-through instead of the token-level paths (the feature that needs the
    # server's own endpoint, e.g. "tools"); None when it did not need to.
    reason: str | None = None

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["acceptance_rate"] = self.acceptance_rate
        out["draft_ms"] = round(self.draft_ms, 3)
        out["verify_ms"] = round(self.verify_ms, 3)
        out["own_ms"] = round(self.own_ms, 3)
        out["own_ms_per_round"] = round(self.own_ms / self.rounds, 4) if self.rounds else None
        out["detokenize_ms"] = round(self.detokenize_ms, 3)
        return out


@dataclass
class RoundResult:
    """One proxy-path round: the tokens it emits and whether generation ended (EOS)."""

    emitted: list[int]
    drafted: int
    accepted: int
    ended: bool


def accept(draft: list[int], target_tokens: list[int], eos: list[bool] | None = None) -> RoundResult:
    """The longest prefix of ``draft`` the target agrees with, then the target's own next token.

    ``target_tokens[i]`` is the target's token after the context plus ``draft[:i]``; ``eos[i]`` marks
    an end-of-generation token there, which is emitted (llama-server counts it too) and ends the job.
    """
    emitted: list[int] = []
    for i, target_token in enumerate(target_tokens):
        emitted.append(target_token)
        if eos is not None and eos[i]:
            return RoundResult(emitted, len(draft), i, ended=True)
        if i >= len(draft) or draft[i] != target_token:
            return RoundResult(emitted, len(draft), i, ended=False)
    # The target's list is one longer than the draft, so the loop always returns.
    raise ValueError("target_tokens must have len(draft) + 1 entries")


def position_seed(seed: int | None, position: int) -> int | None:
    """A distinct, reproducible seed per output position, so seeded positions are independent draws."""
    if seed is None:
        return None
    return (seed * 1_000_003 + position * 7919 + 1) % (2**32 - 1)


class DrafterPool:
    """The declared drafters, ranked by measured speed; a failing one sits out for a growing pause."""

    def __init__(self, drafters: list[Backend], clock: Callable[[], float] = time.monotonic):
        self.drafters = list(drafters)
        self.clock = clock
        self.ms_per_token: dict[str, float] = {d.name: 0.0 for d in drafters}
        self.down_until: dict[str, float] = {d.name: 0.0 for d in drafters}
        self.failures: dict[str, int] = {d.name: 0 for d in drafters}

    def healthy(self) -> list[Backend]:
        now = self.clock()
        alive = [d for d in self.drafters if self.down_until[d.name] <= now]
        return sorted(alive, key=lambda d: self.ms_per_token[d.name])

    def record_success(self, drafter: Backend, ms: float, tokens: int) -> None:
        per_token = ms / max(tokens, 1)
        old = self.ms_per_token[drafter.name]
        self.ms_per_token[drafter.name] = per_token if old == 0.0 else 0.8 * old + 0.2 * per_token
        self.failures[drafter.name] = 0

    def record_failure(self, drafter: Backend) -> None:
        self.failures[drafter.name] += 1
        pause = min(2.0 ** self.failures[drafter.name], 60.0)
        self.down_until[drafter.name] = self.clock() + pause

    def status(self) -> list[dict]:
        now = self.clock()
        return [
            {"name": d.name, "healthy": self.down_until[d.name] <= now,
             "ms_per_token": round(self.ms_per_token[d.name], 3), "failures": self.failures[d.name]}
            for d in self.drafters
        ]


class Paths:
    """The ways to produce tokens for a job, each an async generator of :class:`Piece`."""

    def __init__(self, target: Backend, drafters: DrafterPool, native: Backend | None, *,
                 target_slots: int, drafter_timeout: float, clock: Callable[[], float] = time.perf_counter):
        self.target = target
        self.drafters = drafters
        self.native = native
        self.max_verify_width = max(target_slots - 1, 0)
        self.drafter_timeout = drafter_timeout
        self.clock = clock

    async def passthrough(self, label: str, backend: Backend, job: Job, context: list[int], budget: int,
                          report: RequestReport) -> AsyncIterator[Piece]:
        """direct and native: the backend generates; the proxy only relays its tokens."""
        started = self.clock()
        produced = 0
        segment: dict = {"path": label}
        report.segments.append(segment)
        pieces = [await backend.complete(context, budget, job.sampling, list(job.stop))] if not job.stream else None
        source = _iterate(pieces) if pieces is not None else backend.stream(context, budget, job.sampling, list(job.stop))
        async with contextlib.aclosing(source):  # a client that stops reading ends the upstream call now
            async for piece in source:
                produced += len(piece.tokens)
                if piece.finish:
                    account_timings(report, piece.timings)
                    if piece.timings.get("predicted_ms"):
                        # The server's own decode time: what the controller compares (prompt time excluded).
                        segment["decode_seconds"] = float(piece.timings["predicted_ms"]) / 1000
                segment.update(tokens=produced, seconds=self.clock() - started)
                yield piece

    async def speculate(self, job: Job, context: list[int], budget: int, draft_len: int, report: RequestReport,
                        on_round: Callable[[int, float, int, bool], None] | None = None) -> AsyncIterator[Piece]:
        """proxy: drafters draft, the target verifies every position in one call, we keep what it agrees with.

        Ends after ``budget`` tokens, at EOS, or when no drafter is left; the caller continues from
        ``context`` plus what was yielded in that last case. ``on_round(draft_len, seconds, accepted,
        rejected)`` reports each round after the first (which also fills the caches with the prompt).
        """
        report.sampling_method = PROXY_SAMPLING_METHOD if not job.sampling.greedy else "greedy verification"
        produced, rounds = 0, 0
        started = self.clock()
        while produced < budget:
            round_started = self.clock()
            n = min(draft_len, self.max_verify_width, budget - produced - 1)
            draft = await self._draft(context, n, report) if n > 0 else []
            if draft is None:
                break  # no healthy drafter: the caller continues on the target
            t_build = self.clock()
            contexts = [context + draft[:i] for i in range(len(draft) + 1)]
            seeds = [position_seed(job.sampling.seed, len(context) - len(job.prompt) + i) for i in range(len(contexts))]
            report.own_ms += (self.clock() - t_build) * 1000
            t0 = self.clock()
            verification = await self.target.next_tokens(contexts, job.sampling, seeds)
            t1 = self.clock()
            report.verify_ms += (t1 - t0) * 1000
            result = accept(draft, verification.tokens, verification.eos)
            report.rounds += 1
            rounds += 1
            report.drafted += result.drafted
            report.accepted += result.accepted
            report.target_tokens_evaluated += verification.evaluated
            report.draft_lengths.append(len(draft))
            if on_round is not None and rounds > 1 and n == draft_len:
                on_round(len(draft), self.clock() - round_started, result.accepted, result.accepted < result.drafted)
            emitted = result.emitted[: budget - produced]
            context = context + emitted
            produced += len(emitted)
            finish = "eos" if result.ended else ("limit" if produced >= budget else None)
            report.own_ms += (self.clock() - t1) * 1000
            yield Piece(tokens=emitted, finish=finish)
            if finish:
                break
        report.segments.append({"path": "proxy", "tokens": produced, "seconds": self.clock() - started, "rounds": rounds})

    async def _draft(self, context: list[int], n: int, report: RequestReport) -> list[int] | None:
        """Draft ``n`` greedy tokens on the fastest healthy drafter; a failing drafter is skipped."""
        for drafter in self.drafters.healthy():
            t0 = self.clock()
            try:
                piece = await drafter.complete(context, n, GREEDY, timeout=self.drafter_timeout)
            except BackendError as err:
                self.drafters.record_failure(drafter)
                report.fallbacks.append(f"drafter {drafter.name} failed: {err}")
                continue
            ms = (self.clock() - t0) * 1000
            self.drafters.record_success(drafter, ms, len(piece.tokens))
            report.draft_ms += ms
            report.drafter = drafter.name
            return piece.tokens[:n]
        return None


async def _iterate(pieces: list[Piece]) -> AsyncIterator[Piece]:
    for piece in pieces:
        yield piece


def account_timings(report: RequestReport, timings: dict) -> None:
    """Target work in a pass-through call: prompt tokens it processed, plus one per round it decoded.

    With native speculation each round evaluates the sampled token plus that round's draft, so the
    total is rounds + drafted; ``draft_n``/``draft_n_accepted`` come from the server's timings.
    """
    predicted = int(timings.get("predicted_n", 0))
    drafted = int(timings.get("draft_n", 0))
    accepted = int(timings.get("draft_n_accepted", 0))
    rounds = predicted - accepted
    report.rounds += rounds
    report.drafted += drafted
    report.accepted += accepted
    report.target_tokens_evaluated += int(timings.get("prompt_n", 0)) + rounds + drafted
    report.verify_ms += float(timings.get("predicted_ms", 0.0)) + float(timings.get("prompt_ms", 0.0))
