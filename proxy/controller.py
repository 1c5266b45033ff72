"""The auto controller: measures each path on live traffic and routes to the fastest. Pure Python.

Speeds are seconds per generated token, kept separately for greedy and sampled requests. The proxy
path is modelled per round: measured acceptance ``a`` per draft position and round time ``T(N)`` give
an expected ``(1 - a^(N+1)) / (1 - a)`` tokens per round, so the draft length ``N`` that maximises
tokens per second is chosen from measurements rather than a fixed threshold.

Exploration is bounded: each path is probed once when first seen (a few tokens inside a request);
after that a path that is not the best is re-probed only after an interval of generation time that
doubles each time the probe loses, and only while probing has used at most ``PROBE_BUDGET`` of the
generation time (``probe_cost_bound`` reports the fraction).
"""

from __future__ import annotations

from dataclasses import dataclass, field

EWMA = 0.2
PROBE_TOKENS = 6
PROBE_INTERVAL_S = 20.0
PROBE_INTERVAL_MAX_S = 3600.0
PROBE_BUDGET = 0.03  # re-probes stop while probing has used more than this fraction of generation time
FIRST_DRAFT_LEN = 2  # short first drafts: a cold proxy round pays the prompt once per verification slot
PLAIN = "direct"  # the path that decodes without speculation; the others are measured against it


@dataclass
class Plan:
    """What one request does: optionally probe ``probe`` for a few tokens, then run ``path``."""

    path: str
    draft_len: int
    probe: str | None = None
    probe_tokens: int = PROBE_TOKENS


@dataclass
class _Speed:
    seconds_per_token: float | None = None
    samples: int = 0

    def add(self, seconds: float, tokens: int) -> None:
        # The mean of the first samples, then a moving average: a first sample that came out unlucky
        # weighs as much as the second, not four times as much.
        self.samples += 1
        weight = max(EWMA, 1 / self.samples)
        value = seconds / tokens
        self.seconds_per_token = value if self.seconds_per_token is None else (1 - weight) * self.seconds_per_token + weight * value


@dataclass
class _RoundModel:
    """Proxy-path rounds: acceptance per draft position and round time per draft length."""

    accepted: float = 0.0
    tried: float = 0.0
    round_seconds: dict[int, float] = field(default_factory=dict)

    def add(self, draft_len: int, seconds: float, accepted: int, rejected: bool) -> None:
        # Decay old evidence so a change in traffic shows up.
        self.accepted = 0.98 * self.accepted + accepted
        self.tried = 0.98 * self.tried + accepted + (1 if rejected else 0)
        old = self.round_seconds.get(draft_len)
        self.round_seconds[draft_len] = seconds if old is None else (1 - EWMA) * old + EWMA * seconds

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.tried if self.tried > 0 else None

    def round_time(self, n: int) -> float | None:
        """Measured time for draft length n, else a line through the measured ones (cost grows with n)."""
        if n in self.round_seconds:
            return self.round_seconds[n]
        if not self.round_seconds:
            return None
        points = sorted(self.round_seconds.items())
        if len(points) == 1:
            # One measurement: assume half the round is fixed cost (HTTP, scheduling), half per token.
            n0, t0 = points[0]
            return t0 * (0.5 + 0.5 * (n + 1) / (n0 + 1))
        (n0, t0), (n1, t1) = points[0], points[-1]
        slope = max((t1 - t0) / (n1 - n0), 0.0)
        return max(t0 + slope * (n - n0), 1e-6)

    def tokens_per_round(self, n: int) -> float | None:
        a = self.acceptance
        if a is None:
            return None
        if a >= 0.999:
            return n + 1.0
        return (1 - a ** (n + 1)) / (1 - a)

    def best(self, max_len: int) -> tuple[int, float | None]:
        """(draft length, seconds per token) with the best predicted speed."""
        best_n, best_spt = max(1, min(FIRST_DRAFT_LEN, max_len)), None
        for n in range(1, max_len + 1):
            t, e = self.round_time(n), self.tokens_per_round(n)
            if t is None or e is None:
                continue
            spt = t / e
            if best_spt is None or spt < best_spt:
                best_n, best_spt = n, spt
        return best_n, best_spt


class Controller:
    """Chooses a path per request for ``auto`` and the draft length for the proxy path."""

    def __init__(self, paths: list[str], draft_max: int):
        self.paths = list(paths)  # measurable paths, the safe one ("direct" or native-only) first
        self.draft_max = max(draft_max, 1)
        self.speeds: dict[tuple[str, bool], _Speed] = {}
        self.rounds: dict[bool, _RoundModel] = {True: _RoundModel(), False: _RoundModel()}
        self.generation_seconds = 0.0
        self.probe_interval: dict[str, float] = {p: PROBE_INTERVAL_S for p in self.paths}
        self.last_probe_at: dict[str, float] = {p: 0.0 for p in self.paths}
        self.probe_seconds = 0.0
        self.decisions: dict[str, int] = {}

    # --- observations -----------------------------------------------------------------------------

    def observe_segment(self, path: str, greedy: bool, tokens: int, seconds: float, probe: bool = False,
                        decode_seconds: float | None = None) -> None:
        """``seconds`` is wall time; ``decode_seconds`` the server's own decode time, used for the speed
        when known (prompt processing differs by where the prompt is cached, not by path)."""
        if tokens <= 0 or seconds <= 0:
            return
        if path != "proxy":  # the proxy path's speed comes from its round model
            self.speeds.setdefault((path, greedy), _Speed()).add(decode_seconds or seconds, tokens)
        self.generation_seconds += seconds
        if probe:
            self.probe_seconds += seconds

    def observe_round(self, greedy: bool, draft_len: int, seconds: float, accepted: int, rejected: bool) -> None:
        self.rounds[greedy].add(draft_len, seconds, accepted, rejected)

    # --- decisions --------------------------------------------------------------------------------

    def draft_len(self, greedy: bool, max_width: int) -> int:
        """The best predicted length; an unmeasured neighbour of it is tried first (local search)."""
        limit = max(1, min(self.draft_max, max_width))
        model = self.rounds[greedy]
        best = model.best(limit)[0]
        if model.round_seconds:
            for neighbour in (best + 1, best - 1):
                if 1 <= neighbour <= limit and neighbour not in model.round_seconds:
                    return neighbour
        return best

    def estimates(self, greedy: bool, max_width: int) -> dict[str, float | None]:
        """Predicted seconds per token for each path (None: not measured yet)."""
        out: dict[str, float | None] = {}
        for path in self.paths:
            if path == "proxy":
                out[path] = self.rounds[greedy].best(max(1, min(self.draft_max, max_width)))[1]
            else:
                speed = self.speeds.get((path, greedy))
                out[path] = speed.seconds_per_token if speed else None
        return out

    def plan(self, greedy: bool, max_width: int) -> Plan:
        estimates = self.estimates(greedy, max_width)
        measured = {p: s for p, s in estimates.items() if s is not None}
        best = min(measured, key=measured.get) if measured else self.paths[0]
        probe = self._due_probe(estimates, best)
        self.decisions[best] = self.decisions.get(best, 0) + 1
        return Plan(path=best, draft_len=self.draft_len(greedy, max_width), probe=probe)

    def plan_whole(self, greedy: bool, candidates: list[str]) -> tuple[str, bool]:
        """(path, is_probe) for a request that runs whole on one path, through the server's own endpoint
        (it cannot switch paths on token ids): the fastest measured candidate; a candidate never measured
        nor probed runs the whole request once first, so later requests can compare it, and a losing one
        runs a whole request again once its back-off has passed (within the probe budget)."""
        estimates = {p: s for p, s in self.estimates(greedy, 1).items() if p in candidates}
        measured = {p: s for p, s in estimates.items() if s is not None}
        best = min(measured, key=measured.get) if measured else candidates[0]
        # A losing path is run whole again on the same back-off and budget as the in-request probes,
        # so one unlucky first measurement does not decide for the proxy's whole life.
        probe = self._due_probe(estimates, best, candidates) if measured else None
        if probe is not None:
            return probe, True
        self.decisions[best] = self.decisions.get(best, 0) + 1
        return best, False

    def _due_probe(self, estimates: dict[str, float | None], best: str, paths: list[str] | None = None) -> str | None:
        for path in paths or self.paths:
            if path == best:
                continue
            unmeasured = estimates[path] is None and self.last_probe_at[path] == 0.0
            waited = self.generation_seconds - self.last_probe_at[path]
            within_budget = self.probe_seconds <= PROBE_BUDGET * self.generation_seconds
            if unmeasured or (waited >= self.probe_interval[path] and within_budget):
                self.last_probe_at[path] = max(self.generation_seconds, 1e-9)
                return path
        return None

    def probe_finished(self, path: str, greedy: bool, max_width: int) -> None:
        """Back off a losing path's probes; a winning path is probed at the base rate again."""
        estimates = {p: s for p, s in self.estimates(greedy, max_width).items() if s is not None}
        if estimates and min(estimates, key=estimates.get) == path:
            self.probe_interval[path] = PROBE_INTERVAL_S
        else:
            self.probe_interval[path] = min(self.probe_interval[path] * 2, PROBE_INTERVAL_MAX_S)

    def speed_vs_plain(self, greedy: bool, max_width: int) -> dict[str, float]:
        """Each measured speculating path's speed as a multiple of the plain path's (tokens per second
        over plain tokens per second: 0.5 is half as fast). Empty until the plain path is measured, or
        where there is no plain path. Acceptance plays no part: a path that accepts every draft token
        can still be slower than decoding without drafts."""
        estimates = self.estimates(greedy, max_width)
        plain = estimates.get(PLAIN)
        if plain is None:
            return {}
        return {p: plain / s for p, s in estimates.items() if p != PLAIN and s is not None}

    def slower_than_plain(self, max_width: int) -> list[dict]:
        """The speculating paths measured slower than the plain path on live traffic, per kind of request."""
        return [{"path": path, "sampling": kind, "speed_vs_plain": round(ratio, 4)}
                for kind, greedy in (("greedy", True), ("sampled", False))
                for path, ratio in sorted(self.speed_vs_plain(greedy, max_width).items()) if ratio < 1.0]

    def probe_cost_bound(self) -> float:
        """Fraction of generation time spent probing so far (the bench reports it)."""
        return self.probe_seconds / self.generation_seconds if self.generation_seconds else 0.0

    def snapshot(self, max_width: int) -> dict:
        def rounded(v):
            return None if v is None else round(v, 6)
        return {
            "paths": self.paths,
            "seconds_per_token": {
                "greedy": {p: rounded(v) for p, v in self.estimates(True, max_width).items()},
                "sampled": {p: rounded(v) for p, v in self.estimates(False, max_width).items()},
            },
            "draft_len": {"greedy": self.rounds[True].best(max(1, min(self.draft_max, max_width)))[0],
                          "sampled": self.rounds[False].best(max(1, min(self.draft_max, max_width)))[0]},
            "proxy_acceptance": {"greedy": rounded(self.rounds[True].acceptance), "sampled": rounded(self.rounds[False].acceptance)},
            "plain_path": PLAIN if PLAIN in self.paths else None,
            "speed_vs_plain": {kind: {p: round(r, 4) for p, r in self.speed_vs_plain(greedy, max_width).items()}
                               for kind, greedy in (("greedy", True), ("sampled", False))},
            "slower_than_plain": self.slower_than_plain(max_width),
            "probe_interval_s": dict(self.probe_interval),
            "probe_time_fraction": round(self.probe_cost_bound(), 4),
            "decisions": dict(self.decisions),
        }
