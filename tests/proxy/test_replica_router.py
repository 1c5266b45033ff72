"""The replica router on its own: least-busy choice, take-out on failure, probes with back-off.
Pure: a fake clock, no servers."""

from __future__ import annotations

import itertools
import random

import pytest

from llamafleet.proxy.replicas import Router


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_least_busy_with_a_free_slot_first():
    router = Router([2, 4, 1])
    order = []
    for _ in range(7):
        i = router.pick()
        router.start(i)
        order.append(i)
    # Each pick keeps the busy fraction lowest; ties go to the earlier replica. 7 = 2 + 4 + 1 slots.
    assert sorted(order) == [0, 0, 1, 1, 1, 1, 2]
    assert [r["in_flight"] for r in router.status()] == [2, 4, 1]
    # All full: the least busy fraction still gets the request (the server queues it).
    assert router.pick() == 0
    router.finish(1)
    assert router.pick() == 1  # the only free slot


@pytest.mark.parametrize("seed", range(20))
def test_picks_never_overfill_while_a_slot_is_free(seed):
    rng = random.Random(seed)
    slots = [rng.randint(1, 5) for _ in range(rng.randint(1, 5))]
    router = Router(slots)
    active = []
    for _ in range(200):
        if active and rng.random() < 0.45:
            router.finish(active.pop(rng.randrange(len(active))))
            continue
        free = [i for i, r in enumerate(router.status()) if r["in_flight"] < r["slots"]]
        i = router.pick()
        assert (i in free) if free else i is not None
        router.start(i)
        active.append(i)
        counts = [r["in_flight"] for r in router.status()]
        assert counts == [active.count(j) for j in range(len(slots))]


def test_a_failed_replica_is_out_until_a_probe_after_the_backoff():
    clock = Clock()
    router = Router([1, 1], backoff_s=1.0, backoff_max_s=4.0, clock=clock)
    router.start(0)
    router.failed(0)
    router.finish(0)  # the request in flight on it ended (with its error)
    assert [router.pick() for _ in range(3)] == [1, 1, 1]
    assert router.due() == []
    clock.now += 1.0
    assert router.due() == [0]
    assert router.due() == []  # one probe at a time
    assert router.pick() == 1  # still out while probing
    router.probed(0, healthy=False)  # back-off doubles: 2 s
    clock.now += 1.9
    assert router.due() == []
    clock.now += 0.1
    assert router.due() == [0]
    router.probed(0, healthy=False)  # 4 s, the cap
    clock.now += 4.0
    assert router.due() == [0]
    router.probed(0, healthy=False)  # still 4 s
    clock.now += 4.0
    assert router.due() == [0]
    router.probed(0, healthy=True)
    assert router.pick() == 0 and router.status()[0]["in_service"]
    # Back in service the back-off starts over.
    router.failed(0)
    clock.now += 1.0
    assert router.due() == [0]


def test_all_out_picks_none_and_repeated_failures_do_not_extend_the_wait():
    clock = Clock()
    router = Router([3, 3], backoff_s=2.0, clock=clock)
    router.failed(0)
    clock.now += 1.5
    router.failed(0)  # a second request failing on the same outage
    router.failed(1)
    assert router.pick() is None
    clock.now += 0.5
    assert router.due() == [0]
    assert router.status()[0]["failures"] == 2


@pytest.mark.parametrize("slots", [[], [0], [2, -1]])
def test_rejects_a_router_without_slots(slots):
    with pytest.raises(ValueError):
        Router(slots)


def test_spreads_evenly_over_equal_replicas():
    router = Router([4, 4, 4])
    picks = []
    for _ in itertools.repeat(None, 12):
        i = router.pick()
        router.start(i)
        picks.append(i)
    assert [picks.count(i) for i in range(3)] == [4, 4, 4]
