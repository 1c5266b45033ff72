"""Exactness against real llama-servers: through every path, the proxy's output equals the target's
own /v1 output at temperature 0, for completions and chat, streaming or not, with and without stop
sequences; with the fully agreeing pair and with the partly agreeing one (where rejections must occur).
"""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.slow

MAX_TOKENS = 16

COMPLETIONS = [
    ("The capital of France is", None),
    ("Once upon a time,", None),
    ("def fibonacci(n):", "\n\n"),
    ("The three primary colors are", None),
    ("In 1492, Columbus", "."),
    ("Water boils at", None),
    ("The quick brown fox", [" the", "."]),
    ("To make a cup of tea,", None),
    ("The largest planet in our solar system is", ","),
    ("A haiku about autumn:\n", None),
    ("List of fruits: apple, banana,", [","]),
    ("The meaning of life is", None),
]
CHATS = [
    ("What is 2+2?", None),
    ("Name a color.", None),
    ("Write a short greeting.", "!"),
    ("What is the capital of Italy?", None),
    ("Give me one word that rhymes with cat.", None),
    ("Describe the sun in one sentence.", [" the", "sun"]),
    ("What do bees make?", None),
    ("Say hello in French.", None),
    ("Count from 1 to 5.", ","),
    ("What is Python?", None),
]
CASES = [("completions", p, s) for p, s in COMPLETIONS] + [("chat", p, s) for p, s in CHATS]


def body_for(kind: str, prompt: str, stop, stream: bool) -> dict:
    body = {"model": "rig", "temperature": 0, "max_tokens": MAX_TOKENS, "stream": stream}
    if stop is not None:
        body["stop"] = stop
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def run(client: httpx.Client, url: str, kind: str, body: dict, headers: dict) -> dict:
    """(text, finish_reason, completion_tokens, llamafleet report) for one request, streaming or not."""
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    if not body["stream"]:
        r = client.post(url + path, json=body, headers=headers)
        assert r.status_code == 200, r.text
        data = r.json()
        choice = data["choices"][0]
        text = choice["message"]["content"] if kind == "chat" else choice["text"]
        return {"text": text, "finish": choice["finish_reason"], "tokens": data["usage"]["completion_tokens"],
                "report": data.get("llamafleet")}
    text, finish, report = "", None, None
    with client.stream("POST", url + path, json=body, headers=headers) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            choice = chunk["choices"][0]
            text += (choice["delta"].get("content") or "") if kind == "chat" else choice["text"]
            finish = choice["finish_reason"] or finish
            report = chunk.get("llamafleet", report)
    return {"text": text, "finish": finish, "tokens": None, "report": report}


@pytest.fixture(scope="module")
def references(request):
    """The targets' own answers (non-streaming, straight to llama-server), per rig."""
    cache: dict[str, list[dict]] = {}

    def get(rig) -> list[dict]:
        if rig.name not in cache:
            with httpx.Client(timeout=120) as client:
                cache[rig.name] = [run(client, rig.target.url, kind, body_for(kind, p, s, False), {})
                                   for kind, p, s in CASES]
        return cache[rig.name]

    return get


@pytest.mark.parametrize("mode", ["direct", "native", "proxy", "auto"])
def test_output_equals_target(rig, mode, references):
    expected = references(rig)
    mismatches, drafted, accepted, paths = [], 0, 0, set()
    headers = {**rig.headers, "X-Llamafleet-Mode": mode}
    with httpx.Client(timeout=120) as client:
        for i, (kind, prompt, stop) in enumerate(CASES):
            got = run(client, rig.proxy.url, kind, body_for(kind, prompt, stop, stream=i % 2 == 1), headers)
            want = expected[i]
            if (got["text"], got["finish"]) != (want["text"], want["finish"]):
                mismatches.append(f"{kind} {prompt!r} stop={stop!r}: got {got['text']!r}/{got['finish']} "
                                  f"want {want['text']!r}/{want['finish']}")
            if got["tokens"] is not None and stop is None and got["tokens"] != want["tokens"]:
                mismatches.append(f"{kind} {prompt!r}: usage {got['tokens']} != {want['tokens']}")
            report = got["report"]
            assert report is not None and report["mode"] == mode
            paths.add(report["path"])
            drafted += report["drafted"]
            accepted += report["accepted"]
    assert not mismatches, "\n".join(mismatches)
    if mode in ("direct", "native", "proxy"):
        assert paths == {mode}
    if mode in ("native", "proxy"):
        assert drafted > 0
        if rig.name == "partial":
            assert accepted < drafted, "the partly agreeing pair must produce rejections"
    print(f"{rig.name}/{mode}: drafted {drafted}, accepted {accepted}, paths {sorted(paths)}")
