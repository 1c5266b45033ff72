"""What the benchmark sends and how it reads the answers.

Every condition gets the same OpenAI ``/v1/completions`` request (raw prompt, temperature 0), so
the only difference between conditions is who serves it: the target llama-server itself
(baseline), llamafleet's proxy with ``X-Llamafleet-Mode`` forcing a path, or Tightwad's proxy.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from functools import cached_property

from llamafleet import tls
from llamafleet.errors import UserError
from llamafleet.llama_client import LlamaClient

MODE_HEADER = "X-Llamafleet-Mode"
SPEC_FIELDS = ("rounds", "drafted", "accepted", "target_tokens_evaluated", "draft_ms", "verify_ms")


@dataclass
class Outcome:
    """One request's answer and the raw figures it carried."""

    text: str
    wall_s: float
    reported_tokens: int | None  # usage.completion_tokens as the server claims it
    finish_reason: str | None
    timings: dict | None  # llama-server's own timings, where the server passes them on
    spec: dict | None  # path and round figures (llamafleet object, or Tightwad's history record)


@dataclass
class Condition:
    """One way of serving the benchmark's requests."""

    name: str
    url: str  # base URL of the server that answers /v1/completions
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 600.0
    fields: dict = field(default_factory=dict)  # added to every body (a plain request to a speculating target)
    cert: str | None = None  # a TLS proxy's certificate, the only one trusted (llamafleet.tls.pinned_context)

    def complete(self, prompt: str, max_tokens: int) -> Outcome:
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **self.fields}
        started = time.perf_counter()
        answer = self.client().json(f"{self.url}/v1/completions", data=body)
        wall_s = time.perf_counter() - started
        try:
            choice = answer["choices"][0]
            text = choice["text"]
        except (KeyError, IndexError, TypeError):
            raise UserError(f"{self.name}: {self.url}/v1/completions answered without choices[0].text") from None
        return Outcome(
            text=text,
            wall_s=wall_s,
            reported_tokens=(answer.get("usage") or {}).get("completion_tokens"),
            finish_reason=choice.get("finish_reason"),
            timings=answer.get("timings"),
            spec=self.spec_figures(answer),
        )

    def client(self) -> LlamaClient:
        return LlamaClient(self.timeout, headers=self.headers, context=self._context)

    @cached_property
    def _context(self) -> ssl.SSLContext | None:  # read once, not inside a timed request
        return tls.pinned_context(self.cert) if self.cert else None

    def spec_figures(self, answer: dict) -> dict | None:
        figures = answer.get("llamafleet")
        return {k: figures.get(k) for k in ("path", *SPEC_FIELDS)} if isinstance(figures, dict) else None


def server_headers(key: str | None) -> dict[str, str]:
    """What a call to a deployed llama-server carries: the cluster's API key (llamafleet/server_key.py)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def baseline(target_url: str, fields: dict | None = None, key: str | None = None) -> Condition:
    """The target decoding plainly: the server itself, with ``fields`` (``speculative.n_max: 0``) where
    the same server also speculates and its build reads that per request; ``key``: the servers' API key."""
    return Condition("baseline", target_url, server_headers(key), fields=dict(fields or {}))


def llamafleet_path(mode: str, proxy_url: str, token: str | None, cert: str | None = None) -> Condition:
    headers = {MODE_HEADER: mode}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return Condition(mode, proxy_url, headers, cert=cert)


class TightwadCondition(Condition):
    """Tightwad's proxy. Its responses carry no per-request figures (and its usage counts words),
    so the round figures come from the last record of its own ``/v1/tightwad/history``."""

    def spec_figures(self, answer: dict) -> dict | None:
        history = LlamaClient(30.0, headers=self.headers).json(f"{self.url}/v1/tightwad/history")
        if not isinstance(history, list) or not history:
            return None
        last = history[-1]
        figures = {k: last.get(k) for k in ("rounds", "drafted", "accepted", "draft_ms", "verify_ms")}
        # Tightwad verifies by letting the target generate token by token; it does not count them.
        return {"path": "tightwad", **figures, "target_tokens_evaluated": None}


def count_tokens(target_url: str, text: str, key: str | None = None) -> int:
    """Tokens in a returned text, counted by the target's own tokenizer (no special tokens added)."""
    answer = LlamaClient(60.0, token=key).json(f"{target_url}/tokenize", data={"content": text, "add_special": False})
    return len(answer["tokens"])


def render_chat_prompt(target_url: str, user_text: str, key: str | None = None) -> str:
    """The raw prompt the target's own chat template makes of one user message."""
    answer = LlamaClient(60.0, token=key).json(f"{target_url}/apply-template",
                                    data={"messages": [{"role": "user", "content": user_text}]})
    return answer["prompt"]


def prompt_eval(target_url: str, prompt: str, key: str | None = None) -> dict:
    """The target's timings for evaluating ``prompt`` from an empty cache (no generation)."""
    answer = LlamaClient(300.0, token=key).json(f"{target_url}/completion",
                                     data={"prompt": prompt, "n_predict": 0, "cache_prompt": False})
    return answer["timings"]
