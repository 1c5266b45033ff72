"""The app against the interfaces of ``proxy/backend.py`` only: a fake target (``Backend``,
``OpenAIBackend``, ``TargetText``, health) and a fake drafter, made by a fake ``Servers``. No
llama-server runs here: this checks that the app's request paths use nothing but those interfaces
(prompt tokens from the target's tokeniser and chat template, text from its detokeniser, the
template check from its /props, the token-id range from its vocabulary). The same paths against real
llama-servers are in test_proxy_api.py and test_openai_surface.py.
"""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import TestClient, TestServer
from fakes import FakeModel, greedy_reference
from proxy_testlib import DRAFT_MAX, SLOTS

from llamafleet.proxy.app import MODE_HEADER, create_app
from llamafleet.proxy.backend import BackendError, Server, Servers
from llamafleet.proxy.config import ProxyConfig

N_VOCAB = 97  # the fake model's token ids are 0..96 (fakes.rule)
ALPHABET = [chr(0x4E00 + i) for i in range(N_VOCAB)]  # one printable character per token id
TEMPLATE_CAPS = "chat template parsed by the server (supports_tool_calls)"


class FakeTarget(FakeModel):
    """A target whose text handling is a fixed, invertible character code."""

    def __init__(self, name: str, parsing: str | None = None, healthy: bool = True):
        super().__init__(name)
        self.parsing, self.healthy = parsing, healthy

    async def tokenize(self, text: str) -> list[int]:
        self.calls.append(("tokenize", text))
        return [ord(c) % N_VOCAB for c in text]

    async def detokenize(self, tokens: list[int]) -> str:
        self.calls.append(("detokenize", len(tokens)))
        return "".join(ALPHABET[t] for t in tokens)

    async def apply_template(self, body: dict) -> str:
        self.calls.append(("apply_template", json.dumps(body["messages"])))
        return "".join(f"<{m['role']}>{m['content']}" for m in body["messages"]) + "<assistant>"

    async def chat_parsing(self) -> str | None:
        self.calls.append(("chat_parsing",))
        return self.parsing

    async def n_vocab(self) -> int:
        self.calls.append(("n_vocab",))
        return N_VOCAB

    async def health(self, timeout: float = 2.0) -> bool:
        return self.healthy


class FakeServers:
    """Hands out the prepared fakes by the config's server names; remembers what it was asked."""

    def __init__(self, *fakes: FakeModel):
        self.fakes = {f.name: f for f in fakes}
        self.made: list[tuple[str, str, dict | None]] = []
        self.closed = False

    def server(self, name, url, timeout, request_fields=None, on_fault=None):
        self.made.append((name, url, request_fields))
        return self.fakes[name]

    async def close(self) -> None:
        self.closed = True


def _config() -> ProxyConfig:
    # Addresses no test connects to: the fakes stand in for them.
    return ProxyConfig.model_validate({
        "listen": {"host": "127.0.0.1", "port": 0},
        "model_name": "fake",
        "target": {"name": "target", "url": "http://127.0.0.1:9", "slots": SLOTS},
        "drafters": [{"name": "drafter0", "url": "http://127.0.0.1:10"}],
        "draft_max": DRAFT_MAX,
    })


def _text(tokens: list[int]) -> str:
    return "".join(ALPHABET[t] for t in tokens)  # no end of generation within these few tokens


def _kinds(fake: FakeModel) -> set[str]:
    return {call[0] for call in fake.calls}


@pytest.fixture
def fakes():
    # The drafter disagrees with the target at every third position: rounds reject, the text stays the target's.
    return FakeTarget("target"), FakeModel("drafter0", salt_every=3)


async def _client(servers: FakeServers) -> TestClient:
    client = TestClient(TestServer(create_app(_config(), servers=lambda: servers)))
    await client.start_server()
    return client


def test_the_fakes_have_the_interfaces():
    """What the app is given is checked against the protocols here, so a fake that drifts from them fails."""
    for protocol, cls in ((Server, FakeTarget), (Servers, FakeServers)):
        wanted = {n for n in dir(protocol) if not n.startswith("_")}
        assert wanted <= set(dir(cls)), wanted - set(dir(cls))


async def _sse_text(response) -> tuple[str, dict]:
    text, last = "", {}
    async for line in response.content:
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line.removeprefix("data: "))
        for choice in event.get("choices") or []:
            text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
        last = event
    return text, last


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("chat", [False, True])
async def test_proxy_path_makes_prompt_and_text_through_the_targets_text_interface(fakes, chat, stream):
    target, drafter = fakes
    servers = FakeServers(target, drafter)
    client = await _client(servers)
    try:
        max_tokens = 13
        if chat:
            messages = [{"role": "user", "content": "say something"}]
            body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
            prompt_text = await target.apply_template({"messages": messages})
        else:
            body = {"prompt": "hello there", "max_tokens": max_tokens, "temperature": 0, "stream": stream}
            prompt_text = body["prompt"]
        expected = _text(greedy_reference(target, await target.tokenize(prompt_text), max_tokens))
        target.calls.clear()
        route = "/v1/chat/completions" if chat else "/v1/completions"
        response = await client.post(route, json=body, headers={MODE_HEADER: "proxy"})
        assert response.status == 200, await response.text()
        if stream:
            text, last = await _sse_text(response)
        else:
            last = await response.json()
            choice = last["choices"][0]
            text = choice["message"]["content"] if chat else choice["text"]
        assert text == expected
        assert last["llamafleet"]["path"] == "proxy" and last["llamafleet"]["drafted"] > last["llamafleet"]["accepted"]
        assert {"tokenize", "detokenize", "next_tokens"} <= _kinds(target)
        assert ("apply_template" in _kinds(target)) is chat and ("chat_parsing" in _kinds(target)) is chat
        assert "openai" not in _kinds(target) and "openai_stream" not in _kinds(target)
        assert [name for name, _, _ in servers.made] == ["target", "drafter0"]
    finally:
        await client.close()
    assert servers.closed  # the app's cleanup closed what its servers share


async def test_a_chat_template_the_server_parses_sends_the_request_whole(fakes):
    target, drafter = fakes
    target.parsing = TEMPLATE_CAPS
    client = await _client(FakeServers(target, drafter))
    try:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0}
        response = await client.post("/v1/chat/completions", json=body, headers={MODE_HEADER: "proxy"})
        assert response.status == 200, await response.text()
        report = (await response.json())["llamafleet"]
        assert report["reason"] == TEMPLATE_CAPS and report["path"] == "direct"
        relayed = [c for c in target.calls if c[0] == "openai"]
        assert [(route, sent["messages"]) for _, route, sent in relayed] == [("/v1/chat/completions", body["messages"])]
        assert "next_tokens" not in _kinds(target) and "next_tokens" not in _kinds(drafter)
        # The prompt-length limit was counted through the target's own template and tokeniser.
        assert {"apply_template", "tokenize"} <= _kinds(target)
    finally:
        await client.close()


@pytest.mark.parametrize("prompt, ok", [([0, 5, N_VOCAB - 1], True), ([5, N_VOCAB], False), ([-1], False)])
async def test_token_id_prompts_are_checked_against_the_targets_vocabulary(fakes, prompt, ok):
    target, drafter = fakes
    client = await _client(FakeServers(target, drafter))
    try:
        body = {"prompt": prompt, "max_tokens": 4, "temperature": 0}
        response = await client.post("/v1/completions", json=body, headers={MODE_HEADER: "proxy"})
        data = await response.json()
        if ok:
            assert response.status == 200, data
            assert data["choices"][0]["text"] == _text(greedy_reference(target, prompt, 4))
        else:
            assert response.status == 400 and f"[0, {N_VOCAB})" in data["error"]["message"]
        assert "tokenize" not in _kinds(target) and ("n_vocab",) in target.calls
    finally:
        await client.close()


@pytest.mark.parametrize("healthy", [True, False])
async def test_health_is_the_targets(fakes, healthy):
    target, drafter = fakes
    target.healthy = healthy
    client = await _client(FakeServers(target, drafter))
    try:
        response = await client.get("/health")
        assert response.status == (200 if healthy else 503)
        assert (await response.json())["target"] is healthy
    finally:
        await client.close()


async def test_a_failing_tokeniser_is_an_openai_error_naming_the_target(fakes):
    target, drafter = fakes

    async def refuse(text: str) -> list[int]:
        raise BackendError("target", "/tokenize answered HTTP 500", status=500)

    target.tokenize = refuse
    client = await _client(FakeServers(target, drafter))
    try:
        response = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "temperature": 0},
                                     headers={MODE_HEADER: "proxy"})
        data = await response.json()
        assert response.status >= 500 and "target" in data["error"]["message"], data
    finally:
        await client.close()
