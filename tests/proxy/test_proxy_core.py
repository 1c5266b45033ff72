"""The pure speculation core against a recording fake backend: acceptance rule, exactness of the
proxy path, drafter faults, the auto controller's choices and the text assembler. No HTTP here;
the real-server tests are in test_proxy_exactness.py and friends."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from llamafleet.proxy.backend import Piece, Sampling
from llamafleet.proxy.controller import Controller
from llamafleet.proxy.engine import Engine, ModeUnavailable
from llamafleet.proxy.speculation import Job, RequestReport, accept, position_seed
from llamafleet.proxy.text import TextAssembler

from fakes import FakeModel, greedy_reference

PROMPT = [5, 17, 42, 8]


def collect(engine: Engine, job: Job, mode: str) -> tuple[list[int], RequestReport, str | None]:
    report = RequestReport(path=mode)

    async def run():
        tokens, finish = [], None
        async for piece in engine.generate(job, mode, report):
            tokens += piece.tokens
            finish = piece.finish or finish
        return tokens, finish

    tokens, finish = asyncio.run(run())
    return tokens, report, finish


def make_engine(target, drafters, slots=9, draft_max=8, native=None):
    modes = ["auto", "direct"] + (["native"] if native else []) + (["proxy"] if drafters else [])
    return Engine(target, drafters, native, modes=modes, default_mode="auto", draft_max=draft_max,
                  target_slots=slots, drafter_timeout=1.0)


def test_accept_takes_agreeing_prefix_then_the_targets_token():
    assert accept([1, 2, 3], [1, 2, 9, 7]).emitted == [1, 2, 9]
    assert accept([1, 2, 3], [1, 2, 3, 4]).emitted == [1, 2, 3, 4]
    assert accept([1, 2, 3], [8, 2, 3, 4]).emitted == [8]
    assert accept([], [6]).emitted == [6]
    ended = accept([1, 2], [1, 2, 5], eos=[False, True, False])
    assert ended.emitted == [1, 2] and ended.ended and ended.accepted == 1


@pytest.mark.parametrize("salt_every", [0, 5, 2])
def test_proxy_path_equals_target_and_verifies_once_per_round(salt_every):
    target, drafter = FakeModel("target"), FakeModel("drafter", salt_every=salt_every)
    engine = make_engine(target, [drafter])
    tokens, report, finish = collect(engine, Job(prompt=PROMPT, max_tokens=40), "proxy")
    assert tokens == greedy_reference(target, PROMPT, 40)
    assert finish == "limit"
    verify_calls = [c for c in target.calls if c[0] == "next_tokens"]
    assert len(verify_calls) == report.rounds  # one target round trip per round
    if salt_every:
        assert report.accepted < report.drafted  # rejections happened
    else:
        assert report.accepted == report.drafted


def test_max_tokens_exact_and_eos_ends_generation():
    target, drafter = FakeModel("target", eos_at=len(PROMPT) + 7), FakeModel("drafter")
    tokens, _, finish = collect(make_engine(target, [drafter]), Job(prompt=PROMPT, max_tokens=40), "proxy")
    assert tokens == greedy_reference(target, PROMPT, 40) and len(tokens) == 8 and finish == "eos"  # 7 + EOS
    for n in (1, 2, 9, 10, 17):
        tokens, _, _ = collect(make_engine(FakeModel("t"), [FakeModel("d")]), Job(prompt=PROMPT, max_tokens=n), "proxy")
        assert len(tokens) == n


def test_failing_drafter_falls_back_to_next_then_to_target_with_same_output():
    target = FakeModel("target")
    broken, spare = FakeModel("broken", fail_after=1), FakeModel("spare", fail_after=3)
    engine = make_engine(target, [broken, spare], draft_max=2)
    tokens, report, _ = collect(engine, Job(prompt=PROMPT, max_tokens=30), "proxy")
    assert tokens == greedy_reference(target, PROMPT, 30)
    assert any("broken" in f for f in report.fallbacks) and any("spare" in f for f in report.fallbacks)
    assert "no healthy drafter: continued on the target" in report.fallbacks
    assert [s["path"] for s in report.segments][-1] == "direct"


def test_unavailable_mode_is_refused():
    engine = make_engine(FakeModel("t"), [])
    with pytest.raises(ModeUnavailable):
        engine.resolve_mode("proxy")
    assert engine.resolve_mode(None) == "auto"


def test_auto_is_exact_while_probing_and_switching():
    target, drafter = FakeModel("target"), FakeModel("drafter", salt_every=4)
    engine = make_engine(target, [drafter])
    for _ in range(4):
        tokens, report, _ = collect(engine, Job(prompt=PROMPT, max_tokens=30), "auto")
        assert tokens == greedy_reference(target, PROMPT, 30)
    assert engine.controller.estimates(True, 8)["direct"] is not None
    assert engine.controller.estimates(True, 8)["proxy"] is not None


def test_controller_routes_to_the_faster_path_and_backs_off_probes():
    c = Controller(["direct", "proxy"], draft_max=8)
    c.observe_segment("direct", True, 100, 1.0)  # 10 ms/token
    for _ in range(5):  # rounds of 40 ms with 1 accepted of 4: 20 ms/token at best
        c.observe_round(True, 4, 0.040, 1, True)
    plan = c.plan(True, 8)
    assert plan.path == "direct"
    c.probe_finished("proxy", True, 8)
    assert c.probe_interval["proxy"] > 20.0
    # Proxy rounds get cheap and accurate: it wins, with a draft length the model prefers.
    for _ in range(40):
        c.observe_round(True, 4, 0.012, 4, False)
    plan = c.plan(True, 8)
    assert plan.path == "proxy" and plan.draft_len >= 4


def test_whole_requests_re_probe_a_path_that_lost_one_unlucky_measurement():
    """Auto on whole requests (the server's own endpoint): native's one probe came out slower by chance;
    after the back-off it is run whole again, wins, and takes the traffic. The probes stay within
    their budget of generation time."""
    c = Controller(["direct", "native"], draft_max=8)
    assert c.plan_whole(True, ["direct", "native"]) == ("direct", False)
    c.observe_segment("direct", True, 32, 3.2)  # 100 ms/token
    path, probe = c.plan_whole(True, ["direct", "native"])
    assert (path, probe) == ("native", True)
    c.observe_segment("native", True, 32, 4.0, probe=True)  # an unlucky 125 ms/token
    c.probe_finished("native", True, 8)
    seen = []
    for _ in range(200):  # direct keeps serving: 3.2 s a request
        path, probe = c.plan_whole(True, ["direct", "native"])
        seen.append((path, probe))
        if probe:
            c.observe_segment("native", True, 32, 1.92, probe=True)  # its real speed: 60 ms/token
            c.probe_finished("native", True, 8)
            break
        c.observe_segment(path, True, 32, 3.2)
    assert seen[-1] == ("native", True) and all(p == ("direct", False) for p in seen[:-1])
    assert len(seen) > 10  # not at once: the back-off, and the budget of generation time for probes
    assert c.plan_whole(True, ["direct", "native"]) == ("native", False)


def test_position_seeds_are_distinct_and_reproducible():
    seeds = [position_seed(7, i) for i in range(50)]
    assert len(set(seeds)) == 50 and seeds == [position_seed(7, i) for i in range(50)]
    assert position_seed(None, 3) is None


def test_text_assembler_stops_holds_back_and_counts_tokens():
    table = {1: "Hel", 2: "lo", 3: " wor", 4: "ld", 5: "!"}

    async def detok(tokens):
        return "".join(table[t] for t in tokens)

    async def run(pieces, stops):
        a = TextAssembler(stops, detok)
        out = []
        for i, p in enumerate(pieces):
            out.append(await a.add(Piece(tokens=p), final=i == len(pieces) - 1))
            if a.stopped:
                break
        return out, a

    out, a = asyncio.run(run([[1], [2, 3], [4, 5]], ["wo"]))
    assert "".join(out) == "Hello " and a.stopped and a.completion_tokens == 3
    out, a = asyncio.run(run([[1], [2], [3]], ["lo w", "xyz"]))
    assert out[:2] == ["He", "l"] and "".join(out) == "Hel"  # "l", then "lo", held back; then cut


def test_text_assembler_emits_only_whole_characters():
    table = {1: "a", 2: "\ufffd", 3: "é"}  # 2 then 3: a two-byte character split across tokens

    async def detok(tokens):
        text = "".join(table[t] for t in tokens)
        return text.replace("\ufffdé", "é") if tokens[-1] == 3 else text

    async def run():
        a = TextAssembler([], detok)
        return [await a.add(Piece(tokens=[1, 2]), False), await a.add(Piece(tokens=[3]), True)]

    assert asyncio.run(run()) == ["a", "é"]


def test_sampled_requests_report_the_exact_method():
    target, drafter = FakeModel("target"), FakeModel("drafter")
    _, report, _ = collect(make_engine(target, [drafter]), Job(prompt=PROMPT, max_tokens=8,
                           sampling=Sampling(temperature=0.7, seed=3)), "proxy")
    assert "exact" in report.sampling_method


def test_controller_learns_from_requests_the_consumer_stops_early():
    """A client that stops reading (stop sequence, disconnect) still leaves its timing with the controller."""
    target, drafter = FakeModel("target"), FakeModel("drafter")
    engine = make_engine(target, [drafter])

    async def first_piece_only():
        async with contextlib.aclosing(engine.generate(Job(prompt=PROMPT, max_tokens=30, stream=True), "direct",
                                                       RequestReport(path="direct"))) as pieces:
            async for _ in pieces:
                return

    asyncio.run(first_piece_only())
    assert engine.controller.generation_seconds > 0
    assert engine.controller.speeds[("direct", True)].samples == 1


class TailDroppingNative(FakeModel):
    """A native server whose build ends a speculating reply short at its limit while counting the missing
    tokens, as llama.cpp b8942 does (measured: 14-15 of 16 tokens, predicted_n 16)."""

    def _generate(self, tokens, n):
        piece = super()._generate(tokens, n)
        if piece.finish == "limit" and len(piece.tokens) > 2:
            return Piece(tokens=piece.tokens[:-2], finish="limit", timings={**piece.timings, "predicted_n": n})
        return piece


@pytest.mark.parametrize("keeps_length", [True, False])
def test_a_native_reply_short_of_its_limit_is_continued_on_token_ids(keeps_length):
    target, native = FakeModel("target"), TailDroppingNative("native")
    engine = Engine(target, [], native, modes=["auto", "direct", "native"], default_mode="native", draft_max=8,
                    target_slots=1, drafter_timeout=1.0, native_keeps_length=keeps_length)
    route = engine.route("native", greedy=True)
    # A build that keeps length is relayed whole (its own OpenAI endpoint); one that does not runs on
    # token ids, where the short reply shows and is continued.
    assert route.whole is keeps_length
    tokens, report, finish = collect(engine, Job(prompt=PROMPT, max_tokens=30), "native")
    assert tokens == greedy_reference(target, PROMPT, 30) and finish == "limit"
    assert report.path == "native" and any("short of its limit" in f for f in report.fallbacks)
    assert all(call[0] == "complete" for call in native.calls) and len(native.calls) >= 2
    assert target.calls == []  # continued on native itself, not handed to the target


def test_auto_never_relays_whole_to_a_native_build_that_drops_tokens():
    target, native = FakeModel("target"), TailDroppingNative("native")
    engine = Engine(target, [], native, modes=["auto", "direct", "native"], default_mode="auto", draft_max=8,
                    target_slots=1, drafter_timeout=1.0, native_keeps_length=False)
    # Native measured much faster than direct: auto picks it, on token ids.
    engine.controller.observe_segment("direct", True, 10, 1.0)
    engine.controller.observe_segment("native", True, 10, 0.1)
    route = engine.route("auto", greedy=True)
    assert (route.path, route.whole) == ("native", False)
    # A request the token-level paths cannot serve (tools, ...) goes whole, to the plain path only.
    route = engine.route("auto", greedy=True, reason="tools")
    assert (route.path, route.whole) == ("direct", True)
    for _ in range(3):
        tokens, _, _ = collect(engine, Job(prompt=PROMPT, max_tokens=25), "auto")
        assert tokens == greedy_reference(target, PROMPT, 25)
