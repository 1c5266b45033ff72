"""The one narrow interface between the speculation core and the llama-servers behind it.

The core (``speculation.py``, ``controller.py``, ``engine.py``) only sees :class:`Backend` and
:class:`OpenAIBackend`; the app (``app.py``) also sees :class:`TargetText`, and makes its servers
through :class:`Servers`. The aiohttp client in ``upstream.py`` implements all of them for real
servers; tests can pass fakes. :class:`Backend` is token ids: text never crosses it except for the
target's own pieces in pass-through paths. :class:`OpenAIBackend` relays a client's OpenAI request
whole to the server's own ``/v1`` endpoint (the default shape of the direct and native paths).
:class:`TargetText` is the target's own text handling (tokenise, detokenise, chat template), so the
token ids the proxy sends and the text it returns are the ones the target's own endpoints would use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Protocol


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


class TargetText(Protocol):
    """The target's own text handling: what the app needs beyond token ids (target only)."""

    name: str

    async def tokenize(self, text: str) -> list[int]:
        """The token ids of a prompt text, exactly as the server tokenises its own /v1 prompts."""

    async def detokenize(self, tokens: list[int]) -> str:
        """The text of some token ids."""

    async def apply_template(self, body: dict) -> str:
        """The prompt the server's own /v1/chat/completions makes of this chat body."""

    async def chat_parsing(self) -> str | None:
        """Why the server's chat answers are not its generated text as such (its chat template has
        tool calls or reasoning, read from ``/props``), or None when they are."""

    async def n_vocab(self) -> int:
        """The size of the target's vocabulary (token ids a prompt may hold are below it)."""


class Server(Backend, OpenAIBackend, TargetText, Protocol):
    """One llama-server as the app holds it: every interface above, plus its health."""

    async def health(self, timeout: float = 2.0) -> bool:
        """Whether the server answers its /health as ready."""


class Servers(Protocol):
    """Where the app's servers come from: the client of each configured llama-server, and what those
    clients share (for real servers, one connection pool). Opened when the app starts, closed at its end."""

    def server(self, name: str, url: str, timeout: float, request_fields: dict | None = None,
               on_fault: Callable[[BackendError], None] | None = None) -> Server:
        """The client of one server. ``request_fields`` go into its generation bodies (a plain path);
        ``on_fault`` is told of each failed call."""

    async def close(self) -> None:
        """Release what the servers share."""
