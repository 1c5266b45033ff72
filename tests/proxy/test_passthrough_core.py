"""Which requests run on token ids and which go whole to a server's own OpenAI endpoint, pure: the
feature that rules the token-level paths out is named, every mode routes such a request to a path
that can serve it, and relayed requests feed the auto controller from the server's own timings.
Fakes only; the real servers and the real openai client are in test_openai_surface.py."""

from __future__ import annotations

import asyncio

import pytest

from llamafleet.proxy import api
from llamafleet.proxy.engine import Engine
from llamafleet.proxy.speculation import RequestReport

from fakes import FakeModel

CHAT = [{"role": "user", "content": "Hi"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]

# (request body, chat, the feature named). Every OpenAI feature the token-level paths cannot serve exactly.
NOT_EXACT = [
    ({"messages": CHAT, "tools": TOOLS}, True, "tools"),
    ({"messages": CHAT, "tool_choice": "auto"}, True, "tool_choice"),
    ({"messages": CHAT + [{"role": "tool", "tool_call_id": "c1", "content": "sunny"}]}, True, "messages[1].tool_call_id"),
    ({"messages": CHAT + [{"role": "tool", "content": "sunny"}]}, True, 'messages[1].role="tool"'),
    ({"messages": CHAT + [{"role": "assistant", "content": None, "tool_calls": []}]}, True, "messages[1].tool_calls"),
    ({"messages": CHAT, "response_format": {"type": "json_object"}}, True, "response_format"),
    ({"messages": CHAT, "logprobs": True}, True, "logprobs=true"),
    ({"prompt": "x", "logprobs": 2}, False, "logprobs=2"),
    ({"messages": CHAT, "n": 2}, True, "n=2"),
    ({"prompt": "x", "presence_penalty": 0.5}, False, "presence_penalty=0.5"),
    ({"prompt": "x", "frequency_penalty": 1}, False, "frequency_penalty=1"),
    ({"prompt": "x", "logit_bias": {"42": -100}}, False, "logit_bias"),
    ({"prompt": "x", "echo": True}, False, "echo=true"),
    ({"prompt": ["a", "b"]}, False, "prompt"),
    ({"prompt": "x", "mirostat": 2}, False, "mirostat"),
    ({"messages": CHAT, "chat_template_kwargs": {"enable_thinking": False}}, True, "chat_template_kwargs"),
    ({"messages": CHAT, "stream": True, "stream_options": {"include_obfuscation": True}}, True, "stream_options"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, True,
     "messages[0].content"),
    ({"prompt": "x", "max_tokens": "many"}, False, 'max_tokens="many"'),
    ({"prompt": "x", "max_tokens": 0}, False, "max_tokens=0"),  # llama-server generates one token for 0
    ({"messages": CHAT, "max_completion_tokens": 0}, True, "max_completion_tokens=0"),
    ({}, True, "messages (missing)"),
]
EXACT = [
    ({"messages": CHAT, "temperature": 0, "top_p": 0.9, "top_k": 4, "min_p": 0.1, "seed": 3, "stop": ["\n"],
      "max_tokens": 8, "stream": True, "stream_options": {"include_usage": True}, "model": "m", "user": "u"}, True),
    ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                   {"role": "assistant", "content": "Hello", "name": "bot"}], "max_completion_tokens": 4}, True),
    ({"prompt": [1, 2, 3], "n": 1, "logprobs": None, "presence_penalty": 0, "logit_bias": {}}, False),
    ({"prompt": ["one prompt"], "echo": False, "best_of": 1, "stop": "x"}, False),
]


@pytest.mark.parametrize("data, chat, feature", NOT_EXACT, ids=[f[2] for f in NOT_EXACT])
def test_the_feature_that_rules_out_token_paths_is_named(data, chat, feature):
    body, reason = api.token_path_body(data, chat)
    assert body is None and reason == feature


@pytest.mark.parametrize("data, chat", EXACT)
def test_plain_requests_qualify_for_token_paths(data, chat):
    body, reason = api.token_path_body(data, chat)
    assert reason is None and body is not None


def engine(native=False, native_is_target=False, drafters=True):
    target = FakeModel("target")
    modes = ["auto", "direct"] + (["native"] if native else []) + (["proxy"] if drafters else [])
    return Engine(target, [FakeModel("drafter")] if drafters else [], FakeModel("native") if native else None,
                  modes=modes, default_mode="auto", draft_max=4, target_slots=5, drafter_timeout=1.0,
                  native_is_target=native_is_target)


@pytest.mark.parametrize("mode", ["direct", "native", "proxy", "auto"])
@pytest.mark.parametrize("native_is_target", [False, True])
def test_every_mode_routes_a_not_exact_request_whole(mode, native_is_target):
    e = engine(native=True, native_is_target=native_is_target)
    route = e.route(mode, greedy=True, reason="tools")
    assert route.whole and route.reason == "tools" and not route.segments
    plain = "native" if native_is_target else "direct"
    assert route.path == {"direct": plain, "native": "native", "proxy": plain, "auto": plain}[mode]


def test_direct_and_native_are_whole_and_the_proxy_path_is_on_token_ids():
    e = engine(native=True)
    assert e.route("direct", True).whole and e.route("direct", True).path == "direct"
    assert e.route("native", True).whole and e.route("native", True).path == "native"
    proxy = e.route("proxy", True)
    assert not proxy.whole and proxy.segments == [("proxy", None, False)]
    first = e.route("auto", True)  # nothing measured: auto probes another path inside the request
    assert not first.whole and first.segments[0][2] is True


def relay(e: Engine, route, body: dict, stream: bool) -> tuple[object, RequestReport]:
    report = RequestReport(path=route.path, mode="auto")

    async def run():
        if not stream:
            return await e.relay(route, "/v1/completions", body, report, greedy=True)
        return [event async for event in e.relay_stream(route, "/v1/completions", body, report, greedy=True)]

    return asyncio.run(run()), report


@pytest.mark.parametrize("stream", [False, True])
def test_relayed_requests_feed_the_controller_from_the_servers_timings(stream):
    e = engine(native=True, drafters=False)
    route = e.route("native", greedy=True, reason="logprobs=true")
    answer, report = relay(e, route, {"prompt": "x", "max_tokens": 10, "logprobs": True}, stream)
    assert e.paths.native.calls[-1][0] == ("openai_stream" if stream else "openai")
    assert e.paths.native.calls[-1][2]["logprobs"] is True  # the body as the client sent it
    assert report.path == "native" and report.reason == "logprobs=true"
    assert report.segments == [{"path": "native", "tokens": 10, "seconds": pytest.approx(report.segments[0]["seconds"]),
                                "decode_seconds": 0.01}]
    speed = e.controller.speeds[("native", True)]
    assert speed.samples == 1 and speed.seconds_per_token == pytest.approx(0.001)  # 10 ms for 10 tokens


def test_several_choices_are_not_a_decode_speed():
    e = engine(drafters=False)
    answer, _ = relay(e, e.route("direct", True, reason="n=2"), {"prompt": "x", "max_tokens": 6, "n": 2}, False)
    assert len(answer["choices"]) == 2
    assert ("direct", True) not in e.controller.speeds


def test_auto_measures_an_unmeasured_path_with_a_whole_request_then_picks_the_faster():
    e = engine(native=True, drafters=False)
    paths = []
    for _ in range(4):
        route = e.route("auto", greedy=True, reason="tools")
        paths.append((route.path, route.probe))
        relay(e, route, {"prompt": "x", "max_tokens": 8}, False)
    # direct first (nothing measured), then native once as a probe, then the faster (equal: the first).
    assert paths[:2] == [("direct", False), ("native", True)]
    assert all(not probe for _, probe in paths[2:])
    assert e.controller.estimates(True, 4)["native"] is not None
