"""Runs one job along the path its mode asks for, switching paths on token ids when needed. Pure Python.

``auto`` asks the controller for a plan (maybe a short probe of another path, then the fastest one);
a proxy segment that loses every drafter hands the rest of the job to the target, so a drafter fault
never changes the output. Every switch is on token ids: the next path continues from exactly the
tokens emitted so far.
"""

from __future__ import annotations

import contextlib
import time
from typing import AsyncIterator, Callable

from llamafleet.proxy.backend import Backend, Piece
from llamafleet.proxy.controller import Controller
from llamafleet.proxy.speculation import DrafterPool, Job, Paths, Report


class ModeUnavailable(ValueError):
    pass


class Engine:
    def __init__(self, target: Backend, drafters: list[Backend], native: Backend | None, *, modes: list[str],
                 default_mode: str, draft_max: int, target_slots: int, drafter_timeout: float,
                 native_is_target: bool = False, clock: Callable[[], float] = time.perf_counter):
        self.modes = list(modes)
        self.default_mode = default_mode
        self.native_is_target = native_is_target
        self.clock = clock
        self.pool = DrafterPool(drafters)
        self.paths = Paths(target, self.pool, native, target_slots=target_slots,
                           drafter_timeout=drafter_timeout, clock=clock)
        # A target that runs its own draft speculates on every request, so there "direct" is "native".
        measurable = ["native"] if native_is_target else ["direct"] + (["native"] if "native" in modes else [])
        if "proxy" in modes:
            measurable.append("proxy")
        self.controller = Controller(measurable, draft_max)
        self.max_width = self.paths.max_verify_width

    def resolve_mode(self, requested: str | None) -> str:
        mode = requested or self.default_mode
        if mode not in self.modes:
            raise ModeUnavailable(f"mode {mode!r} is not available here; available: {', '.join(self.modes)}")
        return mode

    def _segments(self, mode: str, greedy: bool) -> list[tuple[str, int | None, bool]]:
        """(path, token limit or None for the rest, is_probe) in order."""
        if mode == "auto":
            plan = self.controller.plan(greedy, self.max_width)
            probe = [(plan.probe, plan.probe_tokens, True)] if plan.probe else []
            return probe + [(plan.path, None, False)]
        if mode == "direct" and self.native_is_target:
            return [("native", None, False)]
        return [(mode, None, False)]

    async def generate(self, job: Job, mode: str, report: Report) -> AsyncIterator[Piece]:
        greedy = job.sampling.greedy
        context, remaining = list(job.prompt), job.max_tokens
        report.mode = mode
        segments = self._segments(mode, greedy)
        report.path = segments[-1][0]
        for path, limit, probe in segments:
            budget = remaining if limit is None else min(limit, remaining)
            started, produced, finished = self.clock(), 0, False
            try:
                async with contextlib.aclosing(self._run(path, job, context, budget, report, greedy)) as pieces:
                    async for piece in pieces:
                        context += piece.tokens
                        produced += len(piece.tokens)
                        remaining -= len(piece.tokens)
                        finished = piece.finish in ("eos", "stop") or remaining <= 0
                        piece.finish = piece.finish if finished else None  # a probe's budget is not the job's
                        yield piece
                        if finished:
                            break
            finally:
                # Also when the consumer stops early (a stop sequence, a client gone): the time still counts.
                self._observe(path, greedy, produced, self.clock() - started, probe, report)
            if finished or remaining <= 0:
                return
        # A proxy segment stops early only when no drafter is left: the target finishes the job.
        report.fallbacks.append("no healthy drafter: continued on the target")
        async with contextlib.aclosing(self._run("direct", job, context, remaining, report, greedy)) as pieces:
            async for piece in pieces:
                yield piece

    def _observe(self, path: str, greedy: bool, tokens: int, seconds: float, probe: bool, report: Report) -> None:
        last = report.segments[-1] if report.segments else {}
        decode = last.get("decode_seconds") if last.get("path") == path else None
        self.controller.observe_segment(path, greedy, tokens, seconds, probe, decode_seconds=decode)
        if probe:
            self.controller.probe_finished(path, greedy, self.max_width)

    def _run(self, path: str, job: Job, context: list[int], budget: int, report: Report, greedy: bool) -> AsyncIterator[Piece]:
        if path == "proxy":
            def on_round(n: int, seconds: float, accepted: int, rejected: bool) -> None:
                self.controller.observe_round(greedy, n, seconds, accepted, rejected)
            draft_len = self.controller.draft_len(greedy, self.max_width)
            return self.paths.speculate(job, context, budget, draft_len, report, on_round)
        backend = self.paths.native if path == "native" else self.paths.target
        return self.paths.passthrough(path, backend, job, context, budget, report)

    def stats(self) -> dict:
        return {"controller": self.controller.snapshot(self.max_width), "drafters": self.pool.status()}
