"""Several models and replicas behind one proxy, against real b11434 llama-servers with the real openai
client: each model's requests reach that model's servers (same text as the server's own endpoint), and
a replica killed mid-run loses only the requests in flight on it (each ends with a clean error) while
the others carry on, until a probe puts the restarted server back in service."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from llamafleet.proxy.background import BackgroundProxy
from llamafleet.proxy.config import ProxyConfig
from llamafleet.rig import servers

SLOTS = 2
SERVER_ARGS = ["-c", str(512 * SLOTS), "-np", str(SLOTS)]
CLEAN_CODES = {"upstream_unavailable", "upstream_failed"}


def replica(name: str, server, slots: int = SLOTS) -> dict:
    return {"service": name, "target": {"name": name, "url": server.url, "slots": slots}}


def proxy_for(models: list[dict]) -> BackgroundProxy:
    return BackgroundProxy(ProxyConfig.model_validate({"listen": {"host": "127.0.0.1", "port": 0}, "models": models}))


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


def routed(proxy: BackgroundProxy, model: str) -> list[dict]:
    return proxy.state.models[model].router.status()


def test_two_models_each_served_by_its_own_server(smollm2_server, partial_target_server):
    with proxy_for([{"name": "small", "replicas": [replica("small", smollm2_server, 1)]},
                    {"name": "partial", "replicas": [replica("partial", partial_target_server, 5)]}]) as proxy:
        api = client(proxy.url)
        assert [m.id for m in api.models.list().data] == ["small", "partial"]
        health = httpx.get(proxy.url + "/health", timeout=30)
        assert health.status_code == 200 and health.json()["models"] == {"small": {"small": True},
                                                                          "partial": {"partial": True}}
        own = {"small": client(smollm2_server.url), "partial": client(partial_target_server.url)}
        prompts = ["The capital of France is", "List three prime numbers:", "def fibonacci(n):"]
        texts: dict[str, list[str]] = {}
        # Every prompt evaluated whole: a reused prompt cache changes the batch shapes, and so (on a
        # server without -nr) the last bits of the logits, which can flip a greedy token.
        whole = {"temperature": 0, "extra_body": {"cache_prompt": False}}
        for model in ("small", "partial"):
            for prompt in prompts:
                got = api.completions.create(model=model, prompt=prompt, max_tokens=24, **whole)
                want = own[model].completions.create(model="x", prompt=prompt, max_tokens=24, **whole)
                assert got.model == model and got.choices[0].text == want.choices[0].text, (model, prompt)
                texts.setdefault(model, []).append(got.choices[0].text)
            chat = api.chat.completions.create(model=model, max_tokens=16, **whole,
                                               messages=[{"role": "user", "content": "Name a colour."}])
            want = own[model].chat.completions.create(model="x", max_tokens=16, **whole,
                                                      messages=[{"role": "user", "content": "Name a colour."}])
            assert chat.choices[0].message.content == want.choices[0].message.content
            streamed = "".join(c.choices[0].text for c in api.completions.create(
                model=model, prompt=prompts[0], max_tokens=24, stream=True, **whole) if c.choices)
            assert streamed == texts[model][0]
            assert routed(proxy, model)[0]["served"] == len(prompts) + 2
        # The two models really differ (the partial target perturbs SmolLM2), so the routing is visible.
        assert texts["small"] != texts["partial"]
        with pytest.raises(openai.NotFoundError) as err:
            api.completions.create(model="nosuch", prompt="hi", max_tokens=4)
        assert err.value.body["code"] == "model_not_found" and '"small", "partial"' in err.value.body["message"]
        with pytest.raises(openai.BadRequestError) as err:
            client(proxy.url).post("/completions", body={"prompt": "hi", "max_tokens": 4}, cast_to=object)
        assert err.value.body["code"] == "model_required"


def _one(api: openai.OpenAI, index: int, max_tokens: int):
    """One request: ("ok", text) or ("error", error body). Streamed for index 0 and 3 of every 4: the least
    busy pick alternates replicas, so each replica gets a streamed and a non-streamed one."""
    try:
        if index % 4 in (0, 3):
            text = "".join(c.choices[0].text for c in api.completions.create(
                model="small", prompt=f"Story {index}: once upon a time", max_tokens=max_tokens, temperature=0,
                stream=True, extra_body={"ignore_eos": True}) if c.choices)
        else:
            text = api.completions.create(model="small", prompt=f"Story {index}: once upon a time",
                                          max_tokens=max_tokens, temperature=0,
                                          extra_body={"ignore_eos": True}).choices[0].text
        return "ok", text
    except openai.APIStatusError as err:
        return "error", {"status": err.status_code, **(err.body if isinstance(err.body, dict) else {})}
    except openai.APIError as err:  # an error event inside a stream whose headers were already sent
        return "error", err.body if isinstance(err.body, dict) else {"message": str(err)}


def _wait(condition, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_killed_replica_loses_only_its_requests_in_flight(llama_build, smollm2, log_dir):
    with servers.running(servers.start_llama_server(llama_build, smollm2, log_dir=log_dir, args=SERVER_ARGS,
                                                    name="replica-a")) as a, \
         servers.running(servers.start_llama_server(llama_build, smollm2, log_dir=log_dir, args=SERVER_ARGS,
                                                    name="replica-b")) as b, \
         proxy_for([{"name": "small", "replicas": [replica("a", a), replica("b", b)]}]) as proxy, \
         ThreadPoolExecutor(8) as pool:
        api = client(proxy.url)
        # Four long requests fill both replicas' slots; then a is killed (by its PID) under them.
        first = [pool.submit(_one, api, i, 400) for i in range(2 * SLOTS)]
        _wait(lambda: [r["in_flight"] for r in routed(proxy, "small")] == [SLOTS, SLOTS], 60, "slots not filled")
        time.sleep(0.5)
        a.process.kill()
        a.stop()  # reaps it
        results = [f.result(timeout=300) for f in first]
        errors = [body for kind, body in results if kind == "error"]
        assert len(errors) == SLOTS, results  # exactly those on a
        for body in errors:
            assert body.get("code") in CLEAN_CODES and "a: " in body.get("message", ""), body
        assert all(len(text) > 200 for kind, text in results if kind == "ok")  # b's finished whole
        status = routed(proxy, "small")
        assert not status[0]["in_service"] and status[1]["in_service"] and status[0]["failures"] >= 1
        health = httpx.get(proxy.url + "/health", timeout=30)
        assert health.status_code == 200 and health.json()["models"] == {"small": {"a": False, "b": True}}
        assert httpx.get(proxy.url + "/stats", timeout=30).json()["models"]["small"]["replicas"][0]["in_service"] is False

        # New requests all go to b while a is out (its probes find nothing listening).
        served_b = status[1]["served"]
        later = [f.result(timeout=300) for f in [pool.submit(_one, api, i, 16) for i in range(6)]]
        assert [kind for kind, _ in later] == ["ok"] * 6, later
        status = routed(proxy, "small")
        assert status[1]["served"] == served_b + 6 and status[0]["served"] == SLOTS

        # a comes back on its port: a probe after the back-off puts it back, and it serves again.
        with servers.running(servers.start_llama_server(llama_build, smollm2, log_dir=log_dir, port=a.port,
                                                        args=SERVER_ARGS, name="replica-a-again")):
            def back() -> bool:
                assert _one(api, 1, 4)[0] == "ok"
                return routed(proxy, "small")[0]["in_service"]
            _wait(back, 90, "replica a never came back into service")
            before = routed(proxy, "small")[0]["served"]
            again = [f.result(timeout=300) for f in [pool.submit(_one, api, i, 16) for i in range(4)]]
            assert [kind for kind, _ in again] == ["ok"] * 4, again
            assert routed(proxy, "small")[0]["served"] > before


def test_every_replica_down_is_a_clean_503():
    # Nothing listens on these loopback ports: each replica fails on connect and is taken out.
    down = [type("Closed", (), {"url": f"http://127.0.0.1:{servers.free_port()}"})() for _ in range(2)]
    with proxy_for([{"name": "small", "replicas": [replica("a", down[0]), replica("b", down[1])]}]) as proxy:
        api = client(proxy.url)
        answers = []
        for _ in range(3):
            with pytest.raises(openai.APIStatusError) as err:
                api.completions.create(model="small", prompt="hi", max_tokens=4)
            answers.append((err.value.status_code, err.value.body["code"], err.value.body["message"]))
        assert [a[:2] for a in answers] == [(503, "upstream_unavailable")] * 3
        assert "unreachable" in answers[0][2] and 'no replica of model "small"' in answers[2][2]
        assert [r["in_service"] for r in routed(proxy, "small")] == [False, False]
        health = httpx.get(proxy.url + "/health", timeout=30)
        assert health.status_code == 503 and health.json()["models"] == {"small": {"a": False, "b": False}}
