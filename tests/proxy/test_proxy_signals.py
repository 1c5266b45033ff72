"""Honest speculation signals, pure: the auto controller says when a speculating path (native, proxy)
is slower than the plain path (direct) on the traffic it measured, whatever the acceptance rate, and
/metrics carries the same figures as /stats. Fakes only (no HTTP); the served endpoints are checked
against real servers in test_proxy_api.py."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llamafleet.proxy.backend import Piece
from llamafleet.proxy.controller import Controller
from llamafleet.proxy.engine import Engine
from llamafleet.proxy.speculation import Job, RequestReport
from llamafleet.proxy.stats import Stats, controller_gauges

from fakes import FakeModel

GREEDY, SAMPLED = True, False


def measured(paths, segments=(), rounds=()):
    """A controller fed ``segments`` (path, greedy, tokens, seconds) and proxy ``rounds``
    (greedy, draft_len, seconds, accepted, rejected). Drafts of at most 4, so a proxy path measured
    at 4 is predicted at exactly its measured round time over the tokens a round yields."""
    c = Controller(list(paths), draft_max=4)
    for path, greedy, tokens, seconds in segments:
        c.observe_segment(path, greedy, tokens, seconds)
    for greedy, n, seconds, accepted, rejected in rounds:
        c.observe_round(greedy, n, seconds, accepted, rejected)
    return c


# (name, paths, segments, rounds, expected speed_vs_plain by kind, expected slower_than_plain)
CASES = [
    ("native slower, 100 ms vs 40 ms a token", ["direct", "native"],
     [("direct", GREEDY, 50, 2.0), ("native", GREEDY, 50, 5.0)], [],
     {"greedy": {"native": 0.4}, "sampled": {}},
     [{"path": "native", "sampling": "greedy", "speed_vs_plain": 0.4}]),
    ("native faster", ["direct", "native"],
     [("direct", GREEDY, 50, 2.0), ("native", GREEDY, 50, 1.0)], [],
     {"greedy": {"native": 2.0}, "sampled": {}}, []),
    ("as fast is not slower", ["direct", "native"],
     [("direct", GREEDY, 40, 1.0), ("native", GREEDY, 40, 1.0)], [],
     {"greedy": {"native": 1.0}, "sampled": {}}, []),
    # Every draft token accepted (5 tokens a round) and still 20 ms a token against 10 ms plain.
    ("proxy accepts everything and is still slower", ["direct", "proxy"],
     [("direct", GREEDY, 100, 1.0)], [(GREEDY, 4, 0.1, 4, False)] * 6,
     {"greedy": {"proxy": 0.5}, "sampled": {}},
     [{"path": "proxy", "sampling": "greedy", "speed_vs_plain": 0.5}]),
    ("plain not measured yet: no ratio, no verdict", ["direct", "native", "proxy"],
     [("native", GREEDY, 50, 5.0)], [(GREEDY, 4, 0.1, 4, False)],
     {"greedy": {}, "sampled": {}}, []),
    ("speculating path not measured yet", ["direct", "native"],
     [("direct", GREEDY, 50, 2.0)], [],
     {"greedy": {}, "sampled": {}}, []),
    ("greedy and sampled are judged apart", ["direct", "native"],
     [("direct", GREEDY, 50, 2.0), ("native", GREEDY, 50, 1.0),
      ("direct", SAMPLED, 50, 2.0), ("native", SAMPLED, 50, 4.0)], [],
     {"greedy": {"native": 2.0}, "sampled": {"native": 0.5}},
     [{"path": "native", "sampling": "sampled", "speed_vs_plain": 0.5}]),
    ("both speculating paths slower", ["direct", "native", "proxy"],
     [("direct", GREEDY, 100, 1.0), ("native", GREEDY, 100, 1.25)], [(GREEDY, 4, 0.1, 4, False)] * 4,
     {"greedy": {"native": 0.8, "proxy": 0.5}, "sampled": {}},
     [{"path": "native", "sampling": "greedy", "speed_vs_plain": 0.8},
      {"path": "proxy", "sampling": "greedy", "speed_vs_plain": 0.5}]),
    # A target that always speculates and no plain path beside it: nothing to compare with.
    ("no plain path", ["native", "proxy"],
     [("native", GREEDY, 50, 5.0)], [(GREEDY, 4, 0.1, 4, False)],
     {"greedy": {}, "sampled": {}}, []),
]


@pytest.mark.parametrize("paths, segments, rounds, ratios, slower", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_controller_reports_speculation_slower_than_plain(paths, segments, rounds, ratios, slower):
    snapshot = measured(paths, segments, rounds).snapshot(max_width=8)
    assert snapshot["speed_vs_plain"] == ratios
    assert snapshot["slower_than_plain"] == slower
    assert snapshot["plain_path"] == ("direct" if "direct" in paths else None)


@pytest.mark.parametrize("paths, segments, rounds, ratios, slower", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_metrics_carry_the_same_ratios_as_stats(paths, segments, rounds, ratios, slower):
    snapshot = measured(paths, segments, rounds).snapshot(max_width=8)
    text = Stats(history_size=4).prometheus(controller_gauges(snapshot))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    got = {(s.labels["sampling"], s.labels["path"]): s.value for s in families["llamafleet_speed_vs_plain"].samples}
    assert got == {(kind, p): r for kind, by_path in ratios.items() for p, r in by_path.items()}
    flags = {(s.labels["sampling"], s.labels["path"]): s.value for s in families["llamafleet_slower_than_plain"].samples}
    assert flags == {key: float(key in {(s["sampling"], s["path"]) for s in slower}) for key in got}
    assert families["llamafleet_speed_vs_plain"].type == "gauge"


class TimedModel(FakeModel):
    """The fake model, reporting a decode time of ``ms_per_token`` and (for a native server) a draft
    that every token of was accepted."""

    def __init__(self, name: str, ms_per_token: float, drafts: bool = False):
        super().__init__(name)
        self.ms_per_token, self.drafts = ms_per_token, drafts

    def _generate(self, tokens: list[int], n: int) -> Piece:
        piece = super()._generate(tokens, n)
        produced = piece.timings["predicted_n"]
        piece.timings["predicted_ms"] = self.ms_per_token * produced
        if self.drafts:
            piece.timings.update(draft_n=produced - 1, draft_n_accepted=produced - 1)
        return piece


def test_engine_flags_a_native_path_with_full_acceptance_that_decodes_slower():
    """Through the engine: forced direct and native requests feed the controller from the servers'
    own timings; native accepts every draft token yet decodes at 25 ms a token against 10 ms."""
    target, native = TimedModel("target", 10.0), TimedModel("native", 25.0, drafts=True)
    engine = Engine(target, [], native, modes=["auto", "direct", "native"], default_mode="auto", draft_max=8,
                    target_slots=1, drafter_timeout=1.0)
    reports = []
    for mode in ("direct", "native", "direct", "native"):
        report = RequestReport(path=mode)

        async def run():
            async for _ in engine.generate(Job(prompt=[5, 17, 42, 8], max_tokens=20), mode, report):
                pass

        asyncio.run(run())
        reports.append(report)
    assert reports[1].accepted == reports[1].drafted > 0  # every draft token accepted
    snapshot = engine.stats()["controller"]
    assert snapshot["speed_vs_plain"]["greedy"] == {"native": pytest.approx(0.4)}
    assert snapshot["slower_than_plain"] == [{"path": "native", "sampling": "greedy", "speed_vs_plain": 0.4}]
    # auto now routes to the plain path.
    assert engine.controller.plan(True, engine.max_width).path == "direct"
