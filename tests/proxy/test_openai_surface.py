"""The OpenAI surface through the proxy against real b11434 llama-servers, with the real openai client:
each request goes to the proxy and to the target's own endpoint, and the answers must be the same.

Tools with the ``tool`` role (a target started with ``--jinja``), ``response_format`` with a JSON schema,
``logprobs``, ``n`` > 1, penalties, ``logit_bias``, fields only llama.cpp knows, embeddings (a target
started with ``--embeddings``), ``stream_options.include_usage`` on the relayed paths and on the proxy
path, the target's own refusals, and the request's ``model``. docs/proxy.md's table "The OpenAI
surface, side by side" is made from these tests.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from proxy_testlib import TOKEN
from llamafleet.proxy.background import BackgroundProxy
from llamafleet.proxy.config import ProxyConfig
from llamafleet.rig import servers

pytestmark = pytest.mark.slow
MODEL = "surface"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "sunny": {"type": "boolean"}},
          "required": ["city", "sunny"], "additionalProperties": False}


# SmolLM2's own template has no tool support (its /props chat_template_caps say so) and would leave
# tools out of the prompt. A template from the pinned source that renders tools, tool calls and the
# tool role, in SmolLM2's own ChatML tokens, makes the round trip real.
TOOL_TEMPLATE = "models/templates/Qwen-Qwen2.5-7B-Instruct.jinja"


@pytest.fixture(scope="module")
def jinja_target(llama_build, smollm2, log_dir):
    template = llama_build.root / "src" / TOOL_TEMPLATE
    assert template.is_file(), f"the pinned llama.cpp source has no {TOOL_TEMPLATE}"
    args = ["--jinja", "--chat-template-file", str(template), "-c", "2048", "-np", "2", "-nr"]
    with servers.running(servers.start_llama_server(llama_build, smollm2, log_dir=log_dir, name="jinja-target",
                                                    args=args)) as s:
        caps = httpx.get(s.url + "/props", timeout=30).json()["chat_template_caps"]
        assert caps["supports_tools"] and caps["supports_tool_calls"], caps
        yield s


@pytest.fixture(scope="module")
def embedding_target(llama_build, smollm2, log_dir):
    with servers.running(servers.start_llama_server(llama_build, smollm2, log_dir=log_dir, name="embedding-target",
                                                    args=["--embeddings", "--pooling", "mean", "-c", "512"])) as s:
        yield s


def proxy_for(target) -> BackgroundProxy:
    return BackgroundProxy(ProxyConfig.model_validate({
        "listen": {"host": "127.0.0.1", "port": 0}, "model_name": MODEL,
        "target": {"name": "target", "url": target.url, "slots": 2}}), token=TOKEN)


@pytest.fixture(scope="module")
def surface(jinja_target):
    with proxy_for(jinja_target) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def embedding_proxy(embedding_target):
    with proxy_for(embedding_target) as proxy:
        yield proxy


# llama-server's answer to a long prompt can depend on its prompt cache: a prompt evaluated whole and
# one evaluated from a cached prefix go through different batch sizes, and a near-tie can flip (seen
# here with a 270-token tool prompt). Comparisons therefore ask both sides to evaluate the prompt whole
# (llama.cpp's own cache_prompt field, which the relay passes on like any other).
WHOLE_PROMPT = {"cache_prompt": False}


def clients(proxy_url: str, target_url: str) -> tuple[openai.OpenAI, openai.OpenAI]:
    return (openai.OpenAI(base_url=proxy_url + "/v1", api_key=TOKEN, max_retries=0, timeout=120,
                          default_headers={}, ),
            openai.OpenAI(base_url=target_url + "/v1", api_key="unused", max_retries=0, timeout=120))


def same_answer(got, want) -> dict:
    """The proxy's answer has the target's choices and token counts; returns its llamafleet object."""
    assert [c.model_dump() for c in got.choices] == [c.model_dump() for c in want.choices]
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (want.usage.prompt_tokens, want.usage.completion_tokens)
    assert got.model == MODEL
    return got.model_extra["llamafleet"]


def test_tools_and_the_tool_role_round_trip(surface, jinja_target):
    proxy, target = clients(surface.url, jinja_target.url)
    ask = {"model": MODEL, "messages": WEATHER, "tools": TOOLS, "max_tokens": 40, "temperature": 0,
           "extra_body": WHOLE_PROMPT}
    first = proxy.chat.completions.create(**ask)
    report = same_answer(first, target.chat.completions.create(**ask))
    assert report["path"] == "direct" and report["reason"] == "tools"
    without = proxy.chat.completions.create(**{k: v for k, v in ask.items() if k != "tools"})
    assert first.usage.prompt_tokens > without.usage.prompt_tokens + 50  # the tools reached the template
    # The second leg carries the call and the tool's answer: the model's own call if it made one.
    calls = first.choices[0].message.tool_calls or []
    call = calls[0].model_dump() if calls else {"id": "call-1", "type": "function",
                                                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = WEATHER + [{"role": "assistant", "content": first.choices[0].message.content, "tool_calls": [call]},
                          {"role": "tool", "tool_call_id": call["id"], "content": '{"sky": "sunny", "celsius": 21}'}]
    second = {**ask, "messages": messages}
    report = same_answer(proxy.chat.completions.create(**second), target.chat.completions.create(**second))
    assert report["path"] == "direct" and report["reason"].startswith("messages[1].")


def test_response_format_with_a_json_schema(surface, jinja_target):
    proxy, target = clients(surface.url, jinja_target.url)
    ask = {"model": MODEL, "messages": WEATHER, "max_tokens": 48, "temperature": 0, "extra_body": WHOLE_PROMPT,
           "response_format": {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}}
    got = proxy.chat.completions.create(**ask)
    report = same_answer(got, target.chat.completions.create(**ask))
    assert report["reason"] == "response_format"
    if got.choices[0].finish_reason == "stop":  # the schema's grammar held: the whole answer is the object
        assert set(json.loads(got.choices[0].message.content)) == {"city", "sunny"}


def test_logprobs_chat_and_completions(surface, jinja_target):
    proxy, target = clients(surface.url, jinja_target.url)
    chat = {"model": MODEL, "messages": WEATHER, "max_tokens": 4, "temperature": 0, "logprobs": True, "top_logprobs": 3,
            "extra_body": WHOLE_PROMPT}
    got = proxy.chat.completions.create(**chat)
    same_answer(got, target.chat.completions.create(**chat))
    assert len(got.choices[0].logprobs.content) == 4 and len(got.choices[0].logprobs.content[0].top_logprobs) == 3
    text = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "logprobs": 2,
            "extra_body": WHOLE_PROMPT}
    got = proxy.completions.create(**text)
    assert same_answer(got, target.completions.create(**text))["reason"] == "logprobs=2"
    assert got.choices[0].logprobs is not None


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_several_choices_or_the_targets_own_refusal(surface, jinja_target, kind):
    """n = 2: the same choices as the target where the build serves it, else the same refusal."""
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    body = {"max_tokens": 6, "temperature": 0, "n": 2, **WHOLE_PROMPT,
            **({"messages": WEATHER} if kind == "chat" else {"prompt": "Once upon a time"})}
    want = httpx.post(jinja_target.url + path, json=body, timeout=120)
    got = httpx.post(surface.url + path, json=body, headers=AUTH, timeout=120)
    assert got.status_code == want.status_code
    if want.status_code != 200:
        assert got.json()["error"]["message"] == want.json()["error"]["message"]
        return
    assert got.json()["choices"] == want.json()["choices"] and len(got.json()["choices"]) == 2
    assert got.json()["llamafleet"]["reason"] == "n=2"


@pytest.mark.parametrize("extra, reason", [
    ({"presence_penalty": 1.5, "frequency_penalty": 0.7}, "presence_penalty=1.5"),
    ({"logit_bias": {"28": -100, "260": 5}}, "logit_bias"),
    ({"repeat_penalty": 1.3, "repeat_last_n": 16}, "repeat_penalty"),  # llama.cpp's own sampling fields
    ({"mirostat": 2, "mirostat_tau": 4.0}, "mirostat"),
    ({"frobnicate": {"level": 3}}, "frobnicate"),  # a field nobody knows: the target ignores it
])
def test_sampling_features_and_fields_only_llama_cpp_knows(surface, jinja_target, extra, reason):
    proxy, target = clients(surface.url, jinja_target.url)
    ask = {"model": MODEL, "prompt": "List of fruits: apple, banana,", "max_tokens": 12, "temperature": 0}
    got = proxy.completions.create(**ask, extra_body={**extra, **WHOLE_PROMPT})
    assert same_answer(got, target.completions.create(**ask, extra_body={**extra, **WHOLE_PROMPT}))["reason"] == reason


def test_max_tokens_zero_is_the_targets_to_answer(surface, jinja_target):
    """llama-server b11434 generates one token for max_tokens 0; the proxy relays such a request."""
    proxy, target = clients(surface.url, jinja_target.url)
    ask = {"model": MODEL, "prompt": "Hi", "max_tokens": 0, "temperature": 0, "extra_body": WHOLE_PROMPT}
    got = proxy.completions.create(**ask)
    assert same_answer(got, target.completions.create(**ask))["reason"] == "max_tokens=0"
    assert got.usage.completion_tokens == 1 and got.choices[0].finish_reason == "length"


@pytest.mark.parametrize("body", [
    {"messages": WEATHER, "response_format": {"type": "xml"}},
    {"messages": WEATHER, "tools": TOOLS, "logprobs": True, "stream": True},
    {"messages": WEATHER, "top_logprobs": 2},
    {"messages": "hello"},
    {"messages": WEATHER, "max_tokens": "many"},
], ids=["response_format type", "logprobs with tools and stream", "top_logprobs alone", "messages not a list",
        "max_tokens not a number"])
def test_what_the_target_refuses_it_refuses_in_its_own_words(surface, jinja_target, body):
    want = httpx.post(jinja_target.url + "/v1/chat/completions", json=body, timeout=120)
    got = httpx.post(surface.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=120)
    assert want.status_code >= 400
    assert got.status_code == want.status_code
    error = got.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] == want.json()["error"]["message"] and error["type"] == want.json()["error"]["type"]


def test_embeddings(embedding_proxy, embedding_target, surface, jinja_target):
    proxy, target = clients(embedding_proxy.url, embedding_target.url)
    for given in ("The sky is blue.", ["first text", "a second, longer text"]):
        got = proxy.embeddings.create(model=MODEL, input=given)
        want = target.embeddings.create(model=MODEL, input=given)
        assert [d.embedding for d in got.data] == [d.embedding for d in want.data]
        assert len(got.data) == (1 if isinstance(given, str) else 2) and len(got.data[0].embedding) > 100
        assert got.model == MODEL and got.model_extra["llamafleet"]["reason"] == "embeddings"
    # A target started without --embeddings refuses, in its own words and status.
    want = httpx.post(jinja_target.url + "/v1/embeddings", json={"input": "x"}, timeout=60)
    got = httpx.post(surface.url + "/v1/embeddings", json={"input": "x"}, headers=AUTH, timeout=60)
    assert want.status_code >= 400 and got.status_code == want.status_code
    assert got.json()["error"]["message"] == want.json()["error"]["message"]


def stream_summary(url: str, path: str, body: dict, headers: dict) -> dict:
    """What a client reads from a stream: the text, the finish, the token counts and where they came."""
    text, finish, usage, usage_in, report, chunks = "", None, None, None, None, 0
    with httpx.stream("POST", url + path, json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200, r.read()
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        chunk = json.loads(line[6:])
        chunks += 1
        for choice in chunk["choices"]:
            text += (choice["delta"].get("content") or "") if "delta" in choice else choice["text"]
            finish = choice["finish_reason"] or finish
        if chunk.get("usage"):
            usage = {k: chunk["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
            usage_in = "own chunk" if not chunk["choices"] else "finish chunk"
        report = chunk.get("llamafleet", report)
    return {"text": text, "finish": finish, "usage": usage, "usage_in": usage_in, "report": report, "chunks": chunks}


def _usage_cases():
    for kind, path, base in (("chat", "/v1/chat/completions", {"messages": WEATHER}),
                             ("completions", "/v1/completions", {"prompt": "The three primary colors are"})):
        for options in (None, {"include_usage": True}, {"include_usage": False}):
            body = {**base, "max_tokens": 12, "temperature": 0, "stream": True}
            if options is not None:
                body["stream_options"] = options
            yield pytest.param(path, body, id=f"{kind}-{options}")


@pytest.mark.parametrize("path, body", list(_usage_cases()))
def test_include_usage_relayed(surface, jinja_target, path, body):
    got = stream_summary(surface.url, path, {**body, **WHOLE_PROMPT}, AUTH)
    want = stream_summary(jinja_target.url, path, {**body, **WHOLE_PROMPT}, {})
    assert {k: got[k] for k in ("text", "finish", "usage", "usage_in", "chunks")} == \
           {k: want[k] for k in ("text", "finish", "usage", "usage_in", "chunks")}
    assert got["report"]["path"] == "direct" and got["report"]["reason"] == "cache_prompt"


@pytest.mark.parametrize("path, body", list(_usage_cases()))
def test_include_usage_on_the_proxy_path(partial_rig, path, body):
    """Token-level speculation streams other chunks, but what they carry is the target's own stream's."""
    got = stream_summary(partial_rig.proxy.url, path, body, {**AUTH, "X-Llamafleet-Mode": "proxy"})
    want = stream_summary(partial_rig.target.url, path, body, {})
    assert {k: got[k] for k in ("text", "finish", "usage", "usage_in")} == \
           {k: want[k] for k in ("text", "finish", "usage", "usage_in")}
    assert got["report"]["path"] == "proxy" and got["report"]["drafted"] > 0


def test_a_native_path_relays_to_the_native_server(partial_rig):
    """A request only the server's own endpoint can serve, forced onto native: the native server
    answers it (its drafting shows in the timings) and the answer is its own."""
    proxy, native = clients(partial_rig.proxy.url, partial_rig.native.url)
    ask = {"model": "rig", "messages": WEATHER, "tools": TOOLS, "max_tokens": 24, "temperature": 0,
           "extra_body": WHOLE_PROMPT}
    got = proxy.chat.completions.create(**ask, extra_headers={"X-Llamafleet-Mode": "native"})
    want = native.chat.completions.create(**ask)
    assert [c.model_dump() for c in got.choices] == [c.model_dump() for c in want.choices]
    report = got.model_extra["llamafleet"]
    assert report["path"] == "native" and report["reason"] == "tools" and report["drafted"] > 0


def test_the_requests_model_is_one_the_proxy_lists(surface):
    proxy, _ = clients(surface.url, surface.url)
    assert [m.id for m in proxy.models.list()] == [MODEL]
    assert proxy.completions.create(model=MODEL, prompt="Hi", max_tokens=2, temperature=0).choices
    r = httpx.post(surface.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, headers=AUTH, timeout=60)
    assert r.status_code == 200  # no model: the one this proxy serves
    with pytest.raises(openai.NotFoundError) as err:
        proxy.chat.completions.create(model="gpt-4o", messages=WEATHER, max_tokens=2)
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


def test_relayed_requests_keep_auto_informed(surface):
    """Requests relayed whole still give auto the target's decode speed (its own timings)."""
    proxy, _ = clients(surface.url, surface.url)
    proxy.chat.completions.create(model=MODEL, messages=WEATHER, tools=TOOLS, max_tokens=8, temperature=0)
    controller = httpx.get(surface.url + "/stats", headers=AUTH, timeout=30).json()["controller"]
    assert controller["seconds_per_token"]["greedy"]["direct"] > 0


@pytest.fixture(scope="module")
def drafting_surface(jinja_target, smollm2_server):
    """The tool-template target with a drafter, so the proxy path is on offer."""
    with BackgroundProxy(ProxyConfig.model_validate({
            "listen": {"host": "127.0.0.1", "port": 0}, "model_name": MODEL,
            "target": {"name": "target", "url": jinja_target.url, "slots": 2},
            "drafters": [{"name": "drafter", "url": smollm2_server.url}]}), token=TOKEN) as proxy:
        yield proxy


@pytest.mark.parametrize("mode", ["proxy", "auto"])
def test_plain_chat_to_a_template_the_server_parses_goes_whole(drafting_surface, jinja_target, mode):
    """A template with tool calls (its /props chat_template_caps say so) makes the server parse chat
    replies; the token-level paths would return the raw text. So even a chat request with no tools
    goes whole to the server's own endpoint, and ``reason`` says why."""
    proxy, target = clients(drafting_surface.url, jinja_target.url)
    body = dict(model=MODEL, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12, temperature=0)
    report = same_answer(proxy.chat.completions.create(**body, extra_headers={"X-Llamafleet-Mode": mode}),
                         target.chat.completions.create(**body))
    assert report["path"] == "direct" and report["reason"].startswith("chat template parsed by the server")
    assert "supports_tool_calls" in report["reason"]
    # A completion (no chat template) still runs on the token-level path asked for.
    got = proxy.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0,
                                   extra_headers={"X-Llamafleet-Mode": "proxy"})
    assert got.model_extra["llamafleet"]["path"] == "proxy"
