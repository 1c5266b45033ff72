"""The OpenAI surface, recorded: each request feature sent to the target's own endpoint, to this proxy
and to Tightwad 0.5.4's proxy on the same servers, in one run. For each system and feature: the HTTP
status, and whether the answer is the target's own (same choices: text, tool calls, logprobs, finish,
and the same number of choices; for embeddings the same vectors; for a refusal the same status).

The target is SmolLM2 with ``--jinja`` and a template from the pinned source that renders tools
(tests/proxy/test_openai_surface.py uses the same), started with ``--no-cache-prompt`` so every
request evaluates its prompt whole and answers do not depend on which request came first. A SmolLM2
drafter serves both proxies. The bodies are the same for all three systems.

Run: .venv/bin/python benchmarks/openai_surface.py  (about a minute on 2 cores)
Writes docs/benchmarks/openai-surface.json and docs/benchmarks/openai-surface.md.
"""

from __future__ import annotations

import json
import platform
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from proxy_common import ROOT, log_dir, start, start_llamafleet
from llamafleet.bench.tightwad import running_tightwad, tightwad_python, tightwad_version
from llamafleet.rig import cache

OUT = ROOT / "docs" / "benchmarks"
TOOL_TEMPLATE = "models/templates/Qwen-Qwen2.5-7B-Instruct.jinja"
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = {"id": "call-1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "sunny": {"type": "boolean"}},
          "required": ["city", "sunny"], "additionalProperties": False}
CHAT, TEXT, EMBED = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"

# (feature, endpoint, body): the rows of docs/proxy.md's "The OpenAI surface, side by side".
CASES = [
    ("completions, text prompt, max_tokens", TEXT, {"prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}),
    ("chat, text messages", CHAT, {"messages": WEATHER, "max_tokens": 16, "temperature": 0}),
    ("stop", TEXT, {"prompt": "List of fruits: apple, banana,", "max_tokens": 16, "temperature": 0, "stop": [","]}),
    ("stream + include_usage (chat)", CHAT, {"messages": WEATHER, "max_tokens": 12, "temperature": 0, "stream": True,
                                            "stream_options": {"include_usage": True}}),
    ("tools", CHAT, {"messages": WEATHER, "tools": TOOLS, "max_tokens": 24, "temperature": 0}),
    ("tool role (second leg)", CHAT, {"messages": WEATHER + [
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call-1", "content": '{"sky": "sunny"}'}], "tools": TOOLS, "max_tokens": 24,
        "temperature": 0}),
    ("response_format json_schema", CHAT, {"messages": WEATHER, "max_tokens": 48, "temperature": 0, "response_format": {
        "type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}}),
    ("logprobs (chat, top_logprobs 3)", CHAT, {"messages": WEATHER, "max_tokens": 4, "temperature": 0, "logprobs": True,
                                               "top_logprobs": 3}),
    ("logprobs (completions, 2)", TEXT, {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0,
                                         "logprobs": 2}),
    ("n = 2", CHAT, {"messages": WEATHER, "max_tokens": 6, "temperature": 0, "n": 2}),
    ("presence/frequency penalty", TEXT, {"prompt": "List of fruits: apple, banana,", "max_tokens": 12, "temperature": 0,
                                          "presence_penalty": 1.5, "frequency_penalty": 0.7}),
    ("logit_bias", TEXT, {"prompt": "List of fruits: apple, banana,", "max_tokens": 12, "temperature": 0,
                          "logit_bias": {"28": -100}}),
    ("unknown field", TEXT, {"prompt": "List of fruits: apple, banana,", "max_tokens": 12, "temperature": 0,
                             "frobnicate": 1}),
    ("refused: response_format type xml", CHAT, {"messages": WEATHER, "response_format": {"type": "xml"}}),
    ("embeddings (target without --embeddings)", EMBED, {"input": "The sky is blue."}),
]


def call(client: httpx.Client, url: str, path: str, body: dict, headers: dict) -> dict:
    """Status plus what the answer carries (streams are collected into the same shape)."""
    started = time.perf_counter()
    if body.get("stream"):
        with client.stream("POST", url + path, json=body, headers=headers) as r:
            if r.status_code != 200:
                r.read()
                return {"status": r.status_code, "error": _message(r), "seconds": time.perf_counter() - started}
            chunks = [json.loads(line[6:]) for line in r.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
        text = "".join((c.get("delta") or {}).get("content") or "" for ch in chunks for c in ch.get("choices", []))
        finish = [c["finish_reason"] for ch in chunks for c in ch.get("choices", []) if c.get("finish_reason")]
        usage = [ch["usage"].get("completion_tokens") for ch in chunks if ch.get("usage") and not ch.get("choices")]
        return {"status": 200, "answer": {"text": text, "finish": finish, "usage_chunk": usage},
                "seconds": time.perf_counter() - started}
    r = client.post(url + path, json=body, headers=headers)
    if r.status_code != 200:
        return {"status": r.status_code, "error": _message(r), "seconds": time.perf_counter() - started}
    data = r.json()
    if path == EMBED:
        answer = {"embeddings": [d.get("embedding") for d in data.get("data", [])]}
    else:
        answer = {"choices": [_choice(c) for c in data.get("choices", [])]}
    return {"status": 200, "answer": answer, "seconds": time.perf_counter() - started}


def _choice(c: dict) -> dict:
    message = c.get("message") or {}
    return {"text": message.get("content") if "message" in c else c.get("text"), "tool_calls": message.get("tool_calls"),
            "logprobs": c.get("logprobs"), "finish": c.get("finish_reason")}


def _message(r: httpx.Response) -> str:
    try:
        error = r.json().get("error")
        return str(error.get("message") if isinstance(error, dict) else error or r.json().get("detail") or r.text)[:200]
    except ValueError:
        return r.text[:200]


def verdict(own: dict, other: dict) -> str:
    if other["status"] != own["status"]:
        if other["status"] == 200:
            return "answered 200 where the target refuses"
        return f"status {other['status']}: {other.get('error', '')}".strip()
    if own["status"] != 200:
        return "same refusal" if other.get("error") == own.get("error") else f"same status, other message: {other.get('error')}"
    if other["answer"] == own["answer"]:
        return "same"
    return "differs: " + "; ".join(_differences(own["answer"], other["answer"]) or ["other fields"])


def _differences(own: dict, other: dict) -> list[str]:
    notes = []
    if "choices" in own:
        if len(other.get("choices", [])) != len(own["choices"]):
            notes.append(f"{len(other.get('choices', []))} choice(s), not {len(own['choices'])}")
        if not other.get("choices"):
            return notes
        a, b = own["choices"][0], other["choices"][0]
        notes += _text(a["text"] or "", b["text"] or "")
        if a["logprobs"] and not b["logprobs"]:
            notes.append("no logprobs")
        if a["finish"] != b["finish"]:
            notes.append(f"finish {b['finish']}, not {a['finish']}")
    elif "text" in own:
        notes += _text(own["text"], other.get("text", ""))
        if own["usage_chunk"] != other.get("usage_chunk"):
            notes.append(f"usage chunk {other.get('usage_chunk')}, not {own['usage_chunk']}")
    return notes


def _text(own: str, other: str) -> list[str]:
    if other == own:
        return []
    if other.startswith(own):
        return [f"the target's text, then {len(other) - len(own)} more characters"]
    if own.startswith(other):
        return ["a prefix of the target's text"]
    return ["other text"]


def main() -> None:
    python = tightwad_python()
    if python is None:
        raise SystemExit("tightwad 0.5.4 is not installed (pip install tightwad==0.5.4)")
    build = cache.ensure_llama_cpp()
    smol = cache.ensure_smollm2()
    template = build.root / "src" / TOOL_TEMPLATE
    rows = []
    with ExitStack() as stack:
        args = ["--jinja", "--chat-template-file", str(template), "-c", "4096", "-np", "4", "-nr", "--no-cache-prompt"]
        target = start(stack, smol, "surface-target", args)
        drafter = start(stack, smol, "surface-drafter", ["-c", "2048"])
        proxy, auth = start_llamafleet(stack, target, slots=4, drafters=[drafter], draft_max=3)
        tightwad = stack.enter_context(running_tightwad(python, target.url, drafter.url, Path(log_dir())))
        with httpx.Client(timeout=300) as client:
            for feature, path, body in CASES:
                own = call(client, target.url, path, body, {})
                ours = call(client, proxy.url, path, body, auth)
                theirs = call(client, tightwad.url, path, body, {})
                rows.append({"feature": feature, "endpoint": path, "body": body, "target": own, "llamafleet": ours,
                             "tightwad": theirs, "llamafleet_verdict": verdict(own, ours),
                             "tightwad_verdict": verdict(own, theirs)})
                print(f"{feature:45} target {own['status']}  llamafleet: {rows[-1]['llamafleet_verdict']:12}  "
                      f"tightwad: {rows[-1]['tightwad_verdict']}", flush=True)
            props = client.get(target.url + "/props").json()
    record = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"platform": platform.platform(), "python": platform.python_version()},
              "target": {"build_info": props.get("build_info"), "model": Path(props.get("model_path", "")).name,
                         "chat_template": TOOL_TEMPLATE,
                         "args": [a if a != str(template) else TOOL_TEMPLATE for a in args]},
              "tightwad": tightwad_version(python), "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "openai-surface.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# The OpenAI surface: llama-server {props.get('build_info')}, this proxy, Tightwad {record['tightwad']}",
             "", f"Recorded {record['started_utc']} by `benchmarks/openai_surface.py` (raw: openai-surface.json). "
             "\"same\": the answer is the target's own (choices, tool calls, logprobs, finish; vectors; or the same "
             "refusal).", "", "| feature | target's own endpoint | llamafleet | Tightwad |", "|---|---|---|---|"]
    for row in rows:
        own = row["target"]
        own_cell = "200" if own["status"] == 200 else f"{own['status']}: {own.get('error', '')}"
        lines.append(f"| {row['feature']} | {own_cell} | {row['llamafleet_verdict']} | {row['tightwad_verdict']} |")
    (OUT / "openai-surface.md").write_text("\n".join(lines).replace("\n\n\n", "\n\n") + "\n")


if __name__ == "__main__":
    main()
