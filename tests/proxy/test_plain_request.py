"""The per-request plain path on a real build that reads it: llama.cpp b8942 (the rig's second build).

One b8942 llama-server runs the padded target with SmolLM2 drafting on a b8942 ``rpc-server``. With
``"speculative.n_max": 0`` in a request it decodes plainly; without, it speculates. The proxy,
configured the way ``ProxyConfig.from_inventory`` renders ``native_draft.plain: request``, reaches
both paths on that one server, and every path gives the same text (real openai client, real HTTP).
"""

from __future__ import annotations

import httpx
import openai
import pytest

from llamafleet.config.models import SpeculationMode
from llamafleet.proxy.background import BackgroundProxy
from llamafleet.proxy.config import ProxyConfig
from llamafleet.rig import cache, models, servers

pytestmark = pytest.mark.slow

TOKEN = "plain-request-token-0123"
SLOTS = 5
PROMPTS = ["The capital of France is", "def fibonacci(n):", "List of fruits: apple, banana,", "Water boils at"]


@pytest.fixture(scope="module")
def b8942():
    return cache.ensure_build("b8942")


@pytest.fixture(scope="module")
def speculating_target(b8942, rig_agreeing_target, smollm2, log_dir):
    with servers.running(servers.start_rpc_server(b8942, log_dir=log_dir)) as rpc:
        args = ["-c", str(512 * SLOTS), "-np", str(SLOTS), "-nr",
                *models.native_target_args(smollm2, f"127.0.0.1:{rpc.port}", SLOTS - 1, build="b8942")]
        with servers.running(servers.start_llama_server(b8942, rig_agreeing_target, log_dir=log_dir, args=args,
                                                        name="b8942-native")) as server:
            yield server


@pytest.fixture(scope="module")
def proxy(speculating_target, smollm2_server):
    config = ProxyConfig.model_validate({
        "listen": {"host": "127.0.0.1", "port": 0}, "model_name": "rig", "draft_max": SLOTS - 1,
        "target": {"name": "target", "url": speculating_target.url, "slots": SLOTS,
                   "request_fields": {"speculative.n_max": 0}},
        # As ProxyConfig.from_inventory renders b8942, whose capability data says its speculation may
        # end a reply short of max_tokens (speculation_keeps_length false).
        "native": {"name": "target", "url": speculating_target.url, "keeps_length": False},
        "drafters": [{"name": "drafter", "url": smollm2_server.url}],
    })
    assert not config.native_is_target
    assert config.available_modes() == [SpeculationMode.auto, SpeculationMode.direct, SpeculationMode.native, SpeculationMode.proxy]
    with BackgroundProxy(config, token=TOKEN) as running:
        yield running


def test_the_build_drops_the_tail_of_a_speculating_reply(speculating_target):
    """Why native runs on token ids at b8942: a speculating reply counts n_predict tokens in its
    timings but returns fewer when the limit falls inside a draft round; plain decoding returns all."""
    short = 0
    with httpx.Client(timeout=300) as client:
        for prompt in PROMPTS:
            for fields in ({}, {"speculative.n_max": 0}):
                body = {"prompt": prompt, "n_predict": 16, "temperature": 0, "return_tokens": True,
                        "cache_prompt": False, **fields}
                answer = client.post(f"{speculating_target.url}/completion", json=body).json()
                assert answer["timings"]["predicted_n"] == 16
                if fields:
                    assert len(answer["tokens"]) == 16
                short += len(answer["tokens"]) < 16
    assert short > 0


def test_the_build_reads_the_per_request_switch(speculating_target):
    """The capability the plain path relies on, checked on the real server: drafting on by default, off
    with speculative.n_max 0, and the same greedy text either way."""
    texts = {}
    with httpx.Client(timeout=300) as client:
        for fields in ({}, {"speculative.n_max": 0}):
            body = {"prompt": PROMPTS[0], "n_predict": 24, "temperature": 0, "cache_prompt": False, **fields}
            answer = client.post(f"{speculating_target.url}/completion", json=body).json()
            drafted = int(answer["timings"].get("draft_n", 0))
            assert (drafted > 0) == (not fields), answer["timings"]
            texts[bool(fields)] = answer["content"]
    assert texts[True] == texts[False]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_every_path_on_one_server_gives_the_same_text(proxy, prompt):
    """Every path gives the plain path's text, except where b8942's own native speculation does not.

    The native path relays the request to the server's own /v1/completions, so its answer is b8942's
    own. Measured here (b8942, SmolLM2 drafting, max_tokens 16): that answer often ends early, e.g.
    14 tokens of text while ``usage.completion_tokens`` and ``timings.predicted_n`` say 16 (draft
    tokens accepted past the limit are counted and dropped); with ``speculative.n_max: 0`` never. So a
    relayed native answer must be the plain text or a prefix of it, with the full token count. b11434,
    the pinned build, gives the full text (test_proxy_exactness.py, native mode)."""
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=TOKEN, max_retries=0, timeout=300)
    answers = {}
    for mode in ("direct", "native", "proxy", "auto"):
        reply = client.completions.create(model="rig", prompt=prompt, max_tokens=16, temperature=0,
                                          extra_headers={"X-Llamafleet-Mode": mode})
        report = reply.model_extra["llamafleet"]
        answers[mode] = (report["path"], reply.choices[0].text, reply.usage.completion_tokens)
        if mode == "direct":
            assert report["path"] == "direct" and report["drafted"] == 0, report  # plain: nothing drafted
        if mode == "native":
            assert report["path"] == "native" and report["drafted"] > 0, report
        assert reply.usage.completion_tokens == 16, (mode, report)
    plain = answers["direct"][1]
    for mode, (path, text, tokens) in answers.items():
        if path == "native":
            assert plain.startswith(text) and tokens == 16, answers
        else:
            assert text == plain, answers
