"""Which replica of a model serves the next request. Pure Python: the app feeds it events and a clock.

The proxy counts its own requests in flight on each replica. A request goes to the least busy replica
(in flight over slots) that still has a free slot; when every replica is full, to the least busy one
(the server queues it). A replica whose server failed (no connection, or a 5xx) is taken out: requests
already on it end with their error, new ones go to the others. After a back-off, which doubles while
its /health keeps failing, the app probes it, and a healthy answer puts it back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

BACKOFF_S = 1.0
BACKOFF_MAX_S = 30.0


@dataclass
class _Replica:
    slots: int
    in_flight: int = 0
    down_until: float | None = None  # None: in service
    backoff_s: float = BACKOFF_S
    probing: bool = False
    failures: int = 0
    served: int = 0  # requests routed to it, ever


class Router:
    """Least-busy choice among the replicas in service, and their take-out and return."""

    def __init__(self, slots: list[int], *, backoff_s: float = BACKOFF_S, backoff_max_s: float = BACKOFF_MAX_S,
                 clock: Callable[[], float] = time.monotonic):
        if not slots or any(n < 1 for n in slots):
            raise ValueError("a router needs at least one replica, each with at least one slot")
        self.replicas = [_Replica(n, backoff_s=backoff_s) for n in slots]
        self.backoff_s, self.backoff_max_s, self.clock = backoff_s, backoff_max_s, clock

    def pick(self) -> int | None:
        """The replica for the next request (not yet counted: call :meth:`start`); None when all are out."""
        live = [i for i, r in enumerate(self.replicas) if r.down_until is None]
        if not live:
            return None
        return min(live, key=lambda i: (self.replicas[i].in_flight >= self.replicas[i].slots,
                                        self.replicas[i].in_flight / self.replicas[i].slots, i))

    def start(self, index: int) -> None:
        self.replicas[index].in_flight += 1
        self.replicas[index].served += 1

    def finish(self, index: int) -> None:
        self.replicas[index].in_flight -= 1

    def failed(self, index: int) -> None:
        """Its server failed: out of service until a probe after the back-off finds it healthy."""
        replica = self.replicas[index]
        replica.failures += 1
        if replica.down_until is None:
            replica.down_until = self.clock() + replica.backoff_s

    def due(self) -> list[int]:
        """Replicas out of service whose back-off is over and that no probe is checking: probe them now."""
        now = self.clock()
        due = [i for i, r in enumerate(self.replicas) if r.down_until is not None and not r.probing
               and now >= r.down_until]
        for i in due:
            self.replicas[i].probing = True
        return due

    def probed(self, index: int, healthy: bool) -> None:
        """A probe's answer: back in service, or out for twice as long."""
        replica = self.replicas[index]
        replica.probing = False
        if healthy:
            replica.down_until, replica.backoff_s = None, self.backoff_s
        else:
            replica.backoff_s = min(replica.backoff_s * 2, self.backoff_max_s)
            replica.down_until = self.clock() + replica.backoff_s

    def status(self) -> list[dict]:
        return [{"in_flight": r.in_flight, "slots": r.slots, "in_service": r.down_until is None,
                 "failures": r.failures, "served": r.served} for r in self.replicas]
