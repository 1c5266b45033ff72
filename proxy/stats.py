"""Counters behind /stats (JSON) and /metrics (Prometheus text), plus a ring buffer of recent requests."""

from __future__ import annotations

import time
from collections import Counter, deque

from llamafleet.proxy.speculation import RequestReport


class Stats:
    def __init__(self, history_size: int):
        self.started = time.time()
        self.history: deque[dict] = deque(maxlen=history_size)
        self.requests: Counter[str] = Counter()  # by path
        self.errors: Counter[str] = Counter()  # by error code
        self.tokens: Counter[str] = Counter()  # generated, by path
        self.drafted = 0
        self.accepted = 0
        self.rounds = 0
        self.target_tokens_evaluated = 0
        self.draft_ms = 0.0
        self.verify_ms = 0.0
        self.seconds: Counter[str] = Counter()  # wall time generating, by path
        self.active = 0

    def record(self, report: RequestReport, *, endpoint: str, prompt_tokens: int, completion_tokens: int,
               seconds: float, finish: str) -> None:
        path = report.path
        self.requests[path] += 1
        self.tokens[path] += completion_tokens
        self.seconds[path] += seconds
        self.drafted += report.drafted
        self.accepted += report.accepted
        self.rounds += report.rounds
        self.target_tokens_evaluated += report.target_tokens_evaluated
        self.draft_ms += report.draft_ms
        self.verify_ms += report.verify_ms
        self.history.append({
            "time": round(time.time(), 3), "endpoint": endpoint, "mode": report.mode, "path": path,
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "finish_reason": finish,
            "seconds": round(seconds, 4), "tokens_per_second": round(completion_tokens / seconds, 2) if seconds > 0 else None,
            "rounds": report.rounds, "drafted": report.drafted, "accepted": report.accepted,
            "acceptance_rate": report.acceptance_rate, "target_tokens_evaluated": report.target_tokens_evaluated,
            "draft_ms": round(report.draft_ms, 3), "verify_ms": round(report.verify_ms, 3),
            "segments": report.segments, "fallbacks": report.fallbacks, "sampling_method": report.sampling_method,
        })

    def record_error(self, code: str) -> None:
        self.errors[code] += 1

    def snapshot(self) -> dict:
        generated = sum(self.tokens.values())
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "active_requests": self.active,
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "tokens": dict(self.tokens),
            "tokens_per_second": {p: round(self.tokens[p] / s, 2) for p, s in self.seconds.items() if s > 0},
            "acceptance_rate": self.accepted / self.drafted if self.drafted else None,
            "tokens_per_round": (self.accepted + self.rounds) / self.rounds if self.rounds else None,
            "target_tokens_evaluated_per_token": self.target_tokens_evaluated / generated if generated else None,
            "rounds": self.rounds, "drafted": self.drafted, "accepted": self.accepted,
            "draft_ms": round(self.draft_ms, 3), "verify_ms": round(self.verify_ms, 3),
            "history": list(self.history),
        }

    def prometheus(self, gauges: dict[str, tuple[str, list[tuple[dict, float]]]]) -> str:
        """The counters, then ``gauges``: name -> (help, [(labels, value)])."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[dict, float]]) -> None:
            lines.append(f"# HELP llamafleet_{name} {help_}")
            lines.append(f"# TYPE llamafleet_{name} {kind}")
            for labels, value in samples:
                label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                lines.append(f"llamafleet_{name}{{{label_text}}} {value}" if label_text else f"llamafleet_{name} {value}")

        metric("requests_total", "counter", "Completed requests by path.", [({"path": p}, n) for p, n in self.requests.items()])
        metric("errors_total", "counter", "Error responses by code.", [({"code": c}, n) for c, n in self.errors.items()])
        metric("generated_tokens_total", "counter", "Tokens returned to clients by path.", [({"path": p}, n) for p, n in self.tokens.items()])
        metric("drafted_tokens_total", "counter", "Draft tokens proposed.", [({}, self.drafted)])
        metric("accepted_tokens_total", "counter", "Draft tokens accepted by the target.", [({}, self.accepted)])
        metric("rounds_total", "counter", "Speculation rounds.", [({}, self.rounds)])
        metric("target_tokens_evaluated_total", "counter", "Tokens the target evaluated.", [({}, self.target_tokens_evaluated)])
        metric("draft_seconds_total", "counter", "Time spent drafting.", [({}, self.draft_ms / 1000)])
        metric("verify_seconds_total", "counter", "Time spent in target calls.", [({}, self.verify_ms / 1000)])
        metric("active_requests", "gauge", "Requests generating now.", [({}, self.active)])
        for name, (help_, samples) in gauges.items():
            metric(name, "gauge", help_, samples)
        return "\n".join(lines) + "\n"


def controller_gauges(controller: dict) -> dict[str, tuple[str, list[tuple[dict, float]]]]:
    """Gauges from the controller's snapshot (the one /stats serves), so /metrics and /stats agree.

    ``speed_vs_plain`` is a speculating path's measured speed over the plain path's; ``slower_than_plain``
    is 1 where that is below 1, whatever the acceptance rate (0 otherwise). Only paths measured
    together with the plain path have a sample."""
    slower = {(s["path"], s["sampling"]) for s in controller["slower_than_plain"]}
    ratios = [({"path": path, "sampling": kind}, ratio)
              for kind, by_path in controller["speed_vs_plain"].items() for path, ratio in sorted(by_path.items())]
    return {
        "probe_time_fraction": ("Fraction of generation time the auto controller spent probing.",
                                [({}, controller["probe_time_fraction"])]),
        "speed_vs_plain": ("Measured speed of a speculating path over the plain (no speculation) path's.", ratios),
        "slower_than_plain": ("1 where a speculating path is measured slower than the plain path.",
                              [(labels, int((labels["path"], labels["sampling"]) in slower)) for labels, _ in ratios]),
    }


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
