"""Faults with real processes: a drafter killed mid-stream, a dead drafter among several, a stopped
target. The output never changes; a dead target gets one clean error envelope within the timeout."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from proxy_testlib import TOKEN, proxy_config
from llamafleet.proxy.background import BackgroundProxy
from llamafleet.rig import servers

pytestmark = pytest.mark.slow
HEADERS = {"Authorization": f"Bearer {TOKEN}", "X-Llamafleet-Mode": "proxy"}
BODY = {"prompt": "Once upon a time, in a small village,", "max_tokens": 24, "temperature": 0}


def reference(target) -> str:
    r = httpx.post(target.url + "/v1/completions", json=BODY, timeout=120)
    return r.json()["choices"][0]["text"]


def test_drafter_killed_mid_stream_output_unchanged(llama_build, smollm2, log_dir, agreeing_target_server):
    drafter = servers.start_llama_server(llama_build, smollm2, log_dir=log_dir, args=["-c", "1024"], name="doomed-drafter")
    try:
        config = proxy_config(agreeing_target_server, [drafter], None, timeouts={"drafter_s": 2.0})
        with BackgroundProxy(config, token=TOKEN) as proxy:
            text, report, killed = "", None, False
            with httpx.stream("POST", proxy.url + "/v1/completions", json={**BODY, "stream": True},
                              headers=HEADERS, timeout=120) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    text += chunk["choices"][0]["text"]
                    report = chunk.get("llamafleet", report)
                    if text and not killed:
                        drafter.process.kill()  # abrupt: connections reset, no goodbye
                        killed = True
            assert killed
            assert text == reference(agreeing_target_server)
            assert any(f.startswith("drafter drafter0 failed") for f in report["fallbacks"]), report
            assert "no healthy drafter: continued on the target" in report["fallbacks"]
    finally:
        drafter.stop()


def test_dead_drafter_among_several_is_skipped(agreeing_target_server, smollm2_server):
    dead = servers.RunningProcess("dead", process=None, port=servers.free_port(), log_path=None)  # nothing listens
    config = proxy_config(agreeing_target_server, [dead, smollm2_server], None)
    with BackgroundProxy(config, token=TOKEN) as proxy:
        r = httpx.post(proxy.url + "/v1/completions", json=BODY, headers=HEADERS, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == reference(agreeing_target_server)
        report = r.json()["llamafleet"]
        assert report["drafter"] == "drafter1" and report["drafted"] > 0
        drafters = httpx.get(proxy.url + "/stats", headers=HEADERS).json()["drafters"]
        # Health itself comes back after a 2 s pause (the dead one is retried later), so assert on
        # what does not depend on how long the request took: the dead drafter's recorded failure.
        assert [d["failures"] > 0 for d in drafters] == [True, False]


def test_stopped_target_gives_an_envelope_within_the_timeout(llama_build, smollm2, log_dir):
    target = servers.start_llama_server(llama_build, smollm2, log_dir=log_dir, args=["-c", "512"], name="doomed-target")
    config = proxy_config(target, [], None, timeouts={"connect_s": 1.0, "target_s": 5.0})
    with BackgroundProxy(config, token=TOKEN) as proxy:
        assert httpx.get(proxy.url + "/health").status_code == 200
        target.stop()
        for stream in (False, True):
            started = time.monotonic()
            r = httpx.post(proxy.url + "/v1/completions", json={**BODY, "stream": stream},
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            assert time.monotonic() - started < 6.0
            assert r.status_code in (502, 503), r.text
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert "target" in error["message"]
        health = httpx.get(proxy.url + "/health")
        assert health.status_code == 503 and health.json()["target"] is False
