"""Shared pieces of the proxy benchmarks: servers on loopback, the proxy as its own process, timed
requests, and writing one section of docs/benchmarks-proxy.md. Ratios are always measured side by
side, interleaved in one run, never against numbers from another run."""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from llamafleet.bench.rig import start_proxy
from llamafleet.rig import cache, models, servers

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks-proxy.md"
PROMPTS = [
    "The capital of France is",
    "Write a Python function that reverses a string.",
    "Once upon a time, in a quiet village,",
    "List five fruits:",
    "Explain why the sky is blue.",
    "The three laws of motion are",
]


def log_dir() -> Path:
    path = Path(os.environ.get("LLAMAFLEET_BENCH_LOGS", "/tmp/llamafleet-bench-proxy"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def start(stack: ExitStack, model: Path, name: str, args: list[str]) -> servers.RunningProcess:
    server = servers.start_llama_server(cache.ensure_llama_cpp(), model, log_dir=log_dir(), args=args, name=name)
    return stack.enter_context(servers.running(server))


def start_native(stack: ExitStack, model: Path, draft: Path, n_max: int, name: str) -> servers.RunningProcess:
    rpc = stack.enter_context(servers.running(servers.start_rpc_server(cache.ensure_llama_cpp(), log_dir=log_dir())))
    return start(stack, model, name, ["-c", "2048", *models.native_target_args(draft, f"127.0.0.1:{rpc.port}", n_max)])


def start_llamafleet(stack: ExitStack, target, slots: int, drafters=(), native=None, draft_max: int = 8,
                     **extra) -> tuple[servers.RunningProcess, dict]:
    """The proxy as a deployment runs it (`llamafleet proxy --config`), with a token; returns its auth header."""
    token = secrets.token_urlsafe(16)
    os.environ["LLAMAFLEET_BENCH_TOKEN"] = token
    config = {
        "listen": {"host": "127.0.0.1", "port": servers.free_port()},
        "target": {"name": "target", "url": target.url, "slots": slots},
        "drafters": [{"name": f"drafter{i}", "url": d.url} for i, d in enumerate(drafters)],
        "native": {"name": "native", "url": native.url} if native else None,
        "draft_max": draft_max,
        "auth": {"token_env": "LLAMAFLEET_BENCH_TOKEN"},
        **extra,
    }
    proxy = stack.enter_context(servers.running(start_proxy(config, log_dir())))
    return proxy, {"Authorization": f"Bearer {token}"}


def timed(client: httpx.Client, url: str, body: dict, headers: dict | None = None) -> dict:
    """One non-streaming /v1/completions call: seconds, completion tokens, text, llamafleet object."""
    t0 = time.perf_counter()
    r = client.post(url + "/v1/completions", json=body, headers=headers or {})
    seconds = time.perf_counter() - t0
    r.raise_for_status()
    data = r.json()
    return {"seconds": seconds, "tokens": data["usage"]["completion_tokens"], "text": data["choices"][0]["text"],
            "report": data.get("llamafleet")}


def wait_idle(client: httpx.Client, *urls: str, timeout: float = 10.0) -> None:
    """Wait until no slot of these llama-servers is busy, so one system's leftover work (Tightwad
    keeps generating past max_tokens) is never billed to the next measurement."""
    deadline = time.monotonic() + timeout
    for url in urls:
        while time.monotonic() < deadline:
            if not any(slot.get("is_processing") for slot in client.get(url + "/slots").json()):
                break
            time.sleep(0.05)


def rate(results: list[dict]) -> float:
    return sum(r["tokens"] for r in results) / sum(r["seconds"] for r in results)


def p50(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    # The load average says how much else shared the cores: absolute tok/s move with it, ratios much less.
    load = os.getloadavg()[0]
    return (f"{platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the end, "
            f"llama.cpp {cache.LLAMA_CPP_BUILD} CPU, every server -t 1")


def write_section(name: str, command: str, body: str) -> None:
    """Replace (or append) this benchmark's section of docs/benchmarks-proxy.md."""
    text = RESULTS.read_text() if RESULTS.exists() else (
        "# Proxy benchmarks\n\nEach section is written by its script (docs/proxy.md explains the paths). Ratios are\n"
        "measured side by side, interleaved in one run; absolute tok/s depend on what else shares the cores.\n")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = (f"<!-- {name} -->\n## {name}\n\nCommand: `{command}` ({stamp}; {machine()})\n\n{body.strip()}\n"
               f"<!-- /{name} -->")
    pattern = re.compile(rf"<!-- {name} -->.*?<!-- /{name} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)


def dump(obj) -> str:
    return json.dumps(obj, indent=1)
