"""The HTTP surface against real servers: the openai client, auth, limits, malformed bodies (a
property-based fuzz finds no 5xx), /metrics in Prometheus format, /stats, and sampling at
temperature > 0 (a chi-square test against the target's own sampling)."""

from __future__ import annotations

import concurrent.futures
import json
import math
from collections import Counter

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from proxy_testlib import TOKEN, proxy_config
from llamafleet.proxy.background import BackgroundProxy

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def limited_proxy(partial_target_server, smollm2_server):
    """A proxy with small limits, so limit checks and the fuzz stay fast."""
    config = proxy_config(partial_target_server, [smollm2_server], None,
                          limits={"max_body_bytes": 4096, "max_tokens": 8, "max_concurrency": 1, "max_prompt_tokens": 64})
    with BackgroundProxy(config, token=TOKEN) as proxy:
        yield proxy


def test_openai_client_streaming_and_not(partial_rig):
    client = openai.OpenAI(base_url=partial_rig.proxy.url + "/v1", api_key=TOKEN, max_retries=0)
    direct = openai.OpenAI(base_url=partial_rig.target.url + "/v1", api_key="none", max_retries=0)
    messages = [{"role": "user", "content": "Name three animals."}]
    want = direct.chat.completions.create(model="rig", messages=messages, max_tokens=20, temperature=0)
    got = client.chat.completions.create(model="rig", messages=messages, max_tokens=20, temperature=0,
                                         extra_headers={"X-Llamafleet-Mode": "proxy"})
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.choices[0].finish_reason == want.choices[0].finish_reason
    assert got.usage.completion_tokens == want.usage.completion_tokens
    assert got.model_extra["llamafleet"]["path"] == "proxy"
    stream = client.chat.completions.create(model="rig", messages=messages, max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == want.usage.completion_tokens
    completion = client.completions.create(model="rig", prompt="The sky is", max_tokens=12, temperature=0)
    reference = direct.completions.create(model="rig", prompt="The sky is", max_tokens=12, temperature=0)
    assert completion.choices[0].text == reference.choices[0].text
    assert [m.id for m in client.models.list()] == ["rig"]


def test_auth_on_every_endpoint_but_health(partial_rig):
    url = partial_rig.proxy.url
    body = {"prompt": "Hi", "max_tokens": 2}
    for method, path in [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                         ("GET", "/stats"), ("GET", "/metrics")]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = httpx.request(method, url + path, json=body if method == "POST" else None, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(url + "/health").status_code == 200


# The proxy's own refusals: what is not JSON, its limits (on every path, relayed requests included:
# logprobs and tools go to the target's own endpoint) and the model it does not serve. A feature the
# proxy path cannot serve is no refusal: test_openai_surface.py relays those.
@pytest.mark.parametrize("path, body, status, needle", [
    ("/v1/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/completions", b"[1, 2]", 400, "JSON object"),
    ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": 9}).encode(), 400, "limit of 8"),
    ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": 9, "logprobs": 2}).encode(), 400, "limit of 8"),
    ("/v1/completions", json.dumps({"prompt": "x", "n_predict": -1}).encode(), 400, "n_predict -1 is above"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 99,
                                         "tools": []}).encode(), 400, "max_completion_tokens 99"),
    ("/v1/completions", json.dumps({"prompt": "word " * 200, "max_tokens": 2}).encode(), 400, "limit is 64"),
    ("/v1/completions", json.dumps({"prompt": "word " * 200, "max_tokens": 2, "logprobs": 1}).encode(), 400, "limit is 64"),
    ("/v1/completions", json.dumps({"prompt": ["x", "word " * 200], "max_tokens": 2}).encode(), 400, "limit is 64"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "word " * 200}], "max_tokens": 2,
                                         "tools": []}).encode(), 400, "limit is 64"),
    ("/v1/completions", json.dumps({"prompt": "x", "model": "gpt-4"}).encode(), 404, "not served here"),
    ("/v1/embeddings", json.dumps({"input": "x", "model": "gpt-4"}).encode(), 404, "not served here"),
    ("/v1/completions", json.dumps({"prompt": "x" * 5000}).encode(), 413, "larger than 4096"),
])
def test_bad_bodies_get_a_clear_4xx(limited_proxy, path, body, status, needle):
    r = httpx.post(limited_proxy.url + path, content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


@pytest.mark.parametrize("mode, needle", [("proxy", "token ids must be in"), ("direct", "invalid tokens")])
def test_token_ids_outside_the_vocabulary(limited_proxy, mode, needle):
    """On token ids the proxy checks them itself; relayed, the target refuses them in its own words."""
    r = httpx.post(limited_proxy.url + "/v1/completions", json={"prompt": [99999999], "max_tokens": 2},
                   headers={**AUTH, "X-Llamafleet-Mode": mode})
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text


def test_unavailable_mode_header_is_a_400(limited_proxy):
    r = httpx.post(limited_proxy.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1},
                   headers={**AUTH, "X-Llamafleet-Mode": "native"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-Llamafleet-Mode"


def test_concurrency_limit_answers_429(limited_proxy):
    body = {"prompt": "Tell me a story.", "max_tokens": 8, "temperature": 0}

    def post(_):
        return httpx.post(limited_proxy.url + "/v1/completions", json=body, headers=AUTH, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = Counter(pool.map(post, range(6)))
    assert codes[200] >= 1 and codes[429] >= 1 and set(codes) <= {200, 429}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
FIELDS = ["model", "prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream",
          "n", "logprobs", "echo", "stream_options", "max_completion_tokens", "min_p", "logit_bias", "user"]
bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, chat=st.booleans())
def test_fuzzed_bodies_never_get_a_5xx_of_the_proxys_own(limited_proxy, partial_target_server, body, chat):
    """Every answer is a proper one; a 5xx only where the target's own endpoint answers the same body
    (as relayed: with the proxy's token cap) with that status, since relayed requests get its verdict."""
    path = "/v1/chat/completions" if chat else "/v1/completions"
    r = httpx.post(limited_proxy.url + path, json=body, headers=AUTH, timeout=60)
    if r.status_code >= 500:
        relayed = body if any(body.get(k) is not None for k in ("n_predict", "max_completion_tokens", "max_tokens")) \
            else {**body, "max_tokens": 8}
        own = httpx.post(partial_target_server.url + path, json=relayed, timeout=60)
        assert own.status_code == r.status_code, (body, r.status_code, r.text, own.status_code, own.text)
        assert r.json()["error"]["message"] == own.json()["error"]["message"]
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_metrics_parse_and_stats_shape(partial_rig):
    httpx.post(partial_rig.proxy.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 4, "temperature": 0},
               headers={**AUTH, "X-Llamafleet-Mode": "proxy"}, timeout=60)
    text = httpx.get(partial_rig.proxy.url + "/metrics", headers=AUTH).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "llamafleet_drafted_tokens" in families and "llamafleet_requests" in families
    assert any(s.value > 0 for s in families["llamafleet_drafted_tokens"].samples)
    stats = httpx.get(partial_rig.proxy.url + "/stats", headers=AUTH).json()
    for key in ("acceptance_rate", "tokens_per_round", "draft_ms", "verify_ms", "history", "controller",
                "drafters", "modes", "sampling_methods"):
        assert key in stats
    last = stats["history"][-1]
    assert last["path"] == "proxy" and last["rounds"] >= 1


def test_speed_against_plain_is_served_alike_by_stats_and_metrics(partial_rig):
    """Real traffic on every path: /stats names each speculating path slower than plain (direct), and
    /metrics carries the same ratios and flags, whichever way this machine measures them."""
    for mode in ("direct", "native", "proxy"):
        r = httpx.post(partial_rig.proxy.url + "/v1/completions", json={"prompt": "One, two,", "max_tokens": 16,
                       "temperature": 0}, headers={**AUTH, "X-Llamafleet-Mode": mode}, timeout=120)
        assert r.json()["llamafleet"]["path"] == mode
    controller = httpx.get(partial_rig.proxy.url + "/stats", headers=AUTH).json()["controller"]
    text = httpx.get(partial_rig.proxy.url + "/metrics", headers=AUTH).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    plain = controller["seconds_per_token"]["greedy"]["direct"]
    ratios = controller["speed_vs_plain"]["greedy"]
    assert controller["plain_path"] == "direct" and set(ratios) == {"native", "proxy"}
    for path, ratio in ratios.items():
        assert ratio == pytest.approx(plain / controller["seconds_per_token"]["greedy"][path], rel=1e-3)
    slower = {s["path"] for s in controller["slower_than_plain"] if s["sampling"] == "greedy"}
    assert slower == {p for p, r in ratios.items() if r < 1}
    gauges = {s.labels["path"]: s.value for s in families["llamafleet_speed_vs_plain"].samples
              if s.labels["sampling"] == "greedy"}
    flags = {s.labels["path"]: s.value for s in families["llamafleet_slower_than_plain"].samples
             if s.labels["sampling"] == "greedy"}
    # /stats and /metrics were read one after the other; no request ran in between.
    assert gauges == pytest.approx(ratios) and flags == {p: float(p in slower) for p in ratios}


# --- temperature > 0 -----------------------------------------------------------------------------

SAMPLES = 100
ALPHA_Z = 3.09  # one-sided normal quantile for alpha = 0.001: about one false failure in 1000 runs


def chi2_critical(df: int, z: float = ALPHA_Z) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (accurate to ~1% for df >= 1)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def two_sample_chi2(a: Counter, b: Counter) -> tuple[float, int]:
    """Chi-square statistic of a 2 x k contingency table; categories with few counts are pooled."""
    total_a, total_b = sum(a.values()), sum(b.values())
    pooled: Counter = Counter()
    cats = []
    for key in set(a) | set(b):
        if a[key] + b[key] >= 10:
            cats.append(key)
        else:
            pooled["a"] += a[key]
            pooled["b"] += b[key]
    rows = [(a[k], b[k]) for k in cats] + ([(pooled["a"], pooled["b"])] if pooled["a"] + pooled["b"] else [])
    n = total_a + total_b
    stat = 0.0
    for ca, cb in rows:
        col = ca + cb
        for observed, total in ((ca, total_a), (cb, total_b)):
            expected = col * total / n
            stat += (observed - expected) ** 2 / expected
    return stat, max(len(rows) - 1, 1)


def test_sampled_distribution_matches_the_targets(partial_rig):
    """Two tokens at temperature 1 (top_k 4): the joint distribution through the proxy path equals the
    target's own sampling (two-sample chi-square, alpha 0.001, 100 samples each)."""
    body = {"prompt": "My favourite animal is the", "max_tokens": 2, "temperature": 1.0, "top_k": 4}

    def sample(url, headers):
        return httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=60).json()["choices"][0]["text"]

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        proxied = Counter(pool.map(lambda _: sample(partial_rig.proxy.url, {**AUTH, "X-Llamafleet-Mode": "proxy"}), range(SAMPLES)))
        direct = Counter(pool.map(lambda _: sample(partial_rig.target.url, {}), range(SAMPLES)))
    stat, df = two_sample_chi2(proxied, direct)
    assert len(direct) > 1, "the prompt must give a real distribution to compare"
    assert stat < chi2_critical(df), (stat, df, proxied.most_common(8), direct.most_common(8))


def test_seed_makes_sampling_reproducible(partial_rig):
    body = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 1.0, "seed": 1234}
    headers = {**AUTH, "X-Llamafleet-Mode": "proxy"}
    texts = {httpx.post(partial_rig.proxy.url + "/v1/completions", json=body, headers=headers, timeout=60)
             .json()["choices"][0]["text"] for _ in range(3)}
    assert len(texts) == 1
