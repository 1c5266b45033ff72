"""Runs one request along the path its mode asks for. Pure Python.

A request runs one of two ways (:meth:`Engine.route` decides):

- **whole**: relayed unchanged to the chosen server's own OpenAI endpoint (direct or native), through
  :class:`OpenAIBackend`. The default shape of the direct and native paths, and the only one for a
  request the token-level paths cannot serve exactly (tools, response_format, logprobs, ...). The
  server's ``timings`` still feed the controller, so ``auto`` stays informed.
- **on token ids** (:meth:`Engine.generate`): the proxy path, and ``auto`` while it probes another
  path inside a request. ``auto`` asks the controller for a plan (maybe a short probe of another path,
  then the fastest one); a proxy segment that loses every drafter hands the rest of the job to the
  target, so a drafter fault never changes the output. Every switch is on token ids: the next path
  continues from exactly the tokens emitted so far.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from llamafleet.proxy.backend import Backend, OpenAIBackend, Piece
from llamafleet.proxy.controller import Controller
from llamafleet.proxy.speculation import DrafterPool, Job, Paths, RequestReport, account_timings


class ModeUnavailable(ValueError):
    pass


@dataclass
class Route:
    """How one request runs: ``whole`` through ``path``'s own OpenAI endpoint, or on token ids along
    ``segments`` ((path, token limit or None for the rest, is_probe) in order)."""

    path: str
    whole: bool
    probe: bool = False  # a whole request sent to a path auto has not measured yet
    segments: list[tuple[str, int | None, bool]] = field(default_factory=list)
    reason: str | None = None  # the feature that ruled out the token-level paths


class Engine:
    def __init__(self, target: Backend, drafters: list[Backend], native: Backend | None, *, modes: list[str],
                 default_mode: str, draft_max: int, target_slots: int, drafter_timeout: float,
                 native_is_target: bool = False, native_keeps_length: bool = True,
                 clock: Callable[[], float] = time.perf_counter):
        self.modes = list(modes)
        self.default_mode = default_mode
        self.native_is_target = native_is_target
        # False where the native server's build may end a speculating reply short of max_tokens while
        # counting the missing tokens (b8942: BuildCaps.speculation_keeps_length). Then native runs on
        # token ids, where a short reply is seen and continued, and is never relayed whole by auto.
        self.native_keeps_length = native_keeps_length
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

    def route(self, mode: str, greedy: bool, reason: str | None = None) -> Route:
        """Whole (pass-through) unless the request runs on the proxy path or auto probes inside it.
        ``reason``: why this request cannot run on token ids (then it runs whole whatever the mode)."""
        if reason is None and mode == "native" and not self.native_keeps_length:
            return Route("native", whole=False, segments=[("native", None, False)])
        if reason is not None or mode in ("direct", "native"):
            path, probe = self._whole_path(mode, greedy)
            return Route(path, whole=True, probe=probe, reason=reason)
        if mode == "auto":
            plan = self.controller.plan(greedy, self.max_width)
            if plan.probe is None and plan.path != "proxy" and (plan.path != "native" or self.native_keeps_length):
                return Route(plan.path, whole=True)
            probe = [(plan.probe, plan.probe_tokens, True)] if plan.probe else []
            return Route(plan.path, whole=False, segments=probe + [(plan.path, None, False)])
        return Route(mode, whole=False, segments=[(mode, None, False)])

    def _whole_path(self, mode: str, greedy: bool) -> tuple[str, bool]:
        if mode == "native":
            return "native", False
        if mode == "auto":
            whole = [p for p in self.controller.paths
                     if p != "proxy" and (p != "native" or self.native_keeps_length or self.native_is_target)]
            return self.controller.plan_whole(greedy, whole)
        # direct, or a forced proxy request the proxy path cannot serve exactly: the plain path.
        return ("native" if self.native_is_target else "direct"), False

    def _segments(self, mode: str, greedy: bool) -> list[tuple[str, int | None, bool]]:
        """(path, token limit or None for the rest, is_probe) in order."""
        if mode == "auto":
            plan = self.controller.plan(greedy, self.max_width)
            probe = [(plan.probe, plan.probe_tokens, True)] if plan.probe else []
            return probe + [(plan.path, None, False)]
        if mode == "direct" and self.native_is_target:
            return [("native", None, False)]
        return [(mode, None, False)]

    async def generate(self, job: Job, mode: str, report: RequestReport,
                       segments: list[tuple[str, int | None, bool]] | None = None) -> AsyncIterator[Piece]:
        """The job on token ids, along ``segments`` (a token-level :class:`Route`'s; default: the mode's)."""
        greedy = job.sampling.greedy
        context, remaining = list(job.prompt), job.max_tokens
        report.mode = mode
        segments = segments or self._segments(mode, greedy)
        report.path = segments[-1][0]
        for path, limit, probe in segments:
            want = remaining if limit is None else min(limit, remaining)
            while True:
                started, produced, finished = self.clock(), 0, False
                try:
                    async with contextlib.aclosing(self._run(path, job, context, want, report, greedy)) as pieces:
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
                want -= produced
                if path == "proxy" or want <= 0 or produced == 0:
                    break
                # A server answered fewer tokens than asked without an end: continue it from the tokens
                # emitted so far (b8942's speculation drops its last round's tail at n_predict).
                report.fallbacks.append(f"{path} ended {want} token(s) short of its limit: continued on {path}")
        # A proxy segment stops early only when no drafter is left: the target finishes the job.
        report.fallbacks.append("no healthy drafter: continued on the target")
        async with contextlib.aclosing(self._run("direct", job, context, remaining, report, greedy)) as pieces:
            async for piece in pieces:
                yield piece

    # --- whole requests (pass-through) ---------------------------------------------------------------

    def _server(self, path: str) -> OpenAIBackend:
        return self.paths.native if path == "native" else self.paths.target

    async def relay(self, route: Route, endpoint: str, body: dict, report: RequestReport, greedy: bool) -> dict:
        """The server's own answer to ``body`` on ``endpoint`` (e.g. ``/v1/chat/completions``)."""
        report.path, report.reason = route.path, route.reason
        started = self.clock()
        answer = await self._server(route.path).openai(endpoint, body)
        self._relayed(route, body, answer.get("timings"), self.clock() - started, report, greedy)
        return answer

    async def relay_stream(self, route: Route, endpoint: str, body: dict, report: RequestReport,
                           greedy: bool) -> AsyncIterator[dict]:
        """The server's own stream of events for ``body``, as they arrive."""
        report.path, report.reason = route.path, route.reason
        started, timings = self.clock(), None
        try:
            async with contextlib.aclosing(self._server(route.path).openai_stream(endpoint, body)) as events:
                async for event in events:
                    if isinstance(event, dict) and isinstance(event.get("timings"), dict):
                        timings = event["timings"]  # llama-server sends them with its last event
                    yield event
        finally:
            self._relayed(route, body, timings, self.clock() - started, report, greedy)

    def _relayed(self, route: Route, body: dict, timings: dict | None, seconds: float, report: RequestReport,
                 greedy: bool) -> None:
        """Account the server's own timings; its decode speed feeds the controller (one choice only:
        with ``n`` > 1 the server decodes several sequences at once)."""
        timings = timings or {}
        account_timings(report, timings)
        tokens = int(timings.get("predicted_n", 0) or 0)
        decode = float(timings.get("predicted_ms", 0.0) or 0.0) / 1000 or None
        segment = {"path": route.path, "tokens": tokens, "seconds": seconds}
        if decode:
            segment["decode_seconds"] = decode
        report.segments.append(segment)
        if tokens > 0 and body.get("n") in (None, 1):
            self.controller.observe_segment(route.path, greedy, tokens, seconds, route.probe, decode_seconds=decode)
            if route.probe:
                self.controller.probe_finished(route.path, greedy, self.max_width)

    def _observe(self, path: str, greedy: bool, tokens: int, seconds: float, probe: bool, report: RequestReport) -> None:
        last = report.segments[-1] if report.segments else {}
        decode = last.get("decode_seconds") if last.get("path") == path else None
        self.controller.observe_segment(path, greedy, tokens, seconds, probe, decode_seconds=decode)
        if probe:
            self.controller.probe_finished(path, greedy, self.max_width)

    def _run(self, path: str, job: Job, context: list[int], budget: int, report: RequestReport, greedy: bool) -> AsyncIterator[Piece]:
        if path == "proxy":
            def on_round(n: int, seconds: float, accepted: int, rejected: bool) -> None:
                self.controller.observe_round(greedy, n, seconds, accepted, rejected)
            draft_len = self.controller.draft_len(greedy, self.max_width)
            return self.paths.speculate(job, context, budget, draft_len, report, on_round)
        backend = self.paths.native if path == "native" else self.paths.target
        return self.paths.passthrough(path, backend, job, context, budget, report)

    def stats(self) -> dict:
        return {"controller": self.controller.snapshot(self.max_width), "drafters": self.pool.status()}
