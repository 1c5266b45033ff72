"""The one narrow interface between the speculation core and the llama-servers behind it.

The core (``speculation.py``, ``controller.py``, ``engine.py``) only sees :class:`Backend` and
:class:`OpenAIBackend`; the aiohttp client in ``upstream.py`` implements both for real servers and
tests can pass a recording fake. :class:`Backend` is token ids: text never crosses it except for the
target's own pieces in pass-through paths. :class:`OpenAIBackend` relays a client's OpenAI request
whole to the server's own ``/v1`` endpoint (the default shape of the direct and native paths).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol


class BackendError(Exception):
    """A backend could not be reached or answered with an error. ``status`` is its HTTP status, if any."""

    def __init__(self, backend: str, message: str, status: int | None = None, timeout: bool = False,
                 upstream: dict | None = None):
        super().__init__(f"{backend}: {message}")
        self.backend = backend
        self.status = status
        self.timeout = timeout
        # The server's own error object ({"message", "type", ...}) when it answered with one.
        self.upstream = upstream or {}


@dataclass(frozen=True)
class Sampling:
    """The sampling fields the proxy passes to the target unchanged. temperature 0 is greedy."""

    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def fields(self, seed: int | None = None) -> dict:
        """llama-server /completion fields; ``seed`` overrides the request's seed (per-position seeds)."""
        out: dict = {"temperature": self.temperature}
        for name in ("top_p", "top_k", "min_p"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        chosen = self.seed if seed is None else seed
        if chosen is not None:
            out["seed"] = chosen
        return out


GREEDY = Sampling()


@dataclass
class Piece:
    """Some generated tokens, with the target's own text for them when it sent it.

    ``finish`` is set on the last piece: "eos" (end of generation token), "limit" (n_predict reached)
    or "stop" (the upstream matched a stop string).
    """

    tokens: list[int]
    text: str | None = None
    finish: str | None = None
    timings: dict = field(default_factory=dict)


@dataclass
class Verification:
    """The target's own next token after each of several contexts (one forward pass per context)."""

    tokens: list[int]
    eos: list[bool]  # True where the token is end-of-generation (it is counted, never shown as text)
    evaluated: int  # prompt tokens the target actually processed for this round (after cache reuse)


class Backend(Protocol):
    name: str

    async def complete(self, tokens: list[int], n_predict: int, sampling: Sampling, stop: list[str] = ..., timeout: float | None = None) -> Piece:
        """Generate up to ``n_predict`` tokens after ``tokens`` in one call."""

    def stream(self, tokens: list[int], n_predict: int, sampling: Sampling, stop: list[str] = ...) -> AsyncIterator[Piece]:
        """Generate, yielding pieces as the server sends them."""

    async def next_tokens(self, contexts: list[list[int]], sampling: Sampling, seeds: list[int | None]) -> Verification:
        """The next token after each context, all in one round trip."""


class OpenAIBackend(Protocol):
    """A server's own OpenAI endpoints (``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``).

    The body goes as the client sent it (a plain path adds its request fields); an error answer is a
    :class:`BackendError` carrying the server's status and its own error object.
    """

    name: str

    async def openai(self, route: str, body: dict) -> dict:
        """One non-streaming call; the server's JSON answer."""

    def openai_stream(self, route: str, body: dict) -> AsyncIterator[dict]:
        """One streaming call: each server-sent event's JSON, in order, until ``[DONE]``."""
