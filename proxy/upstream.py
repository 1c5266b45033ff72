"""The aiohttp client for llama-server: the only module that makes upstream HTTP calls.

:class:`LlamaServer` implements :class:`proxy.backend.Backend` (token ids),
:class:`proxy.backend.OpenAIBackend` (the server's own /v1 endpoints, for pass-through) and
:class:`proxy.backend.TargetText` (tokenise, detokenise, chat template, /props); :class:`Upstream`
makes them on one shared session (:class:`proxy.backend.Servers`). Every failure becomes a
:class:`BackendError`, so the app translates errors in one place.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Callable

import aiohttp

from llamafleet.proxy.backend import BackendError, Piece, Sampling, Verification

# Template capabilities (llama-server /props chat_template_caps) under which the server parses a chat
# reply (tool calls, reasoning) instead of returning its text as generated.
PARSED_CHAT_CAPS = ("supports_tool_calls", "supports_tools", "supports_preserve_reasoning", "supports_reasoning_effort")
THINKING_MARKERS = ("<think>", "reasoning_content", "<|channel|>")

_FINISH = {"eos": "eos", "limit": "limit", "word": "stop"}
# The OpenAI routes that generate: a plain path's request fields go into their bodies.
GENERATION_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})


def key_headers(api_key: str | None) -> dict[str, str]:
    """What every call to a llama-server carries: the servers' API key as a bearer token, where they
    require one (a deployed cluster's do: ``--api-key-file``). The proxy's session sends it on every
    request, so no call of this module goes out without it."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Upstream:
    """The proxy's llama-servers: one aiohttp session whose connection pool their clients share. Made
    when the app starts (inside its event loop), closed when it stops."""

    def __init__(self, connect_s: float, api_key: str | None):
        # llama-server (cpp-httplib) drops idle keep-alive connections after 5 s: give ours up sooner.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=3.0)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(sock_connect=connect_s),
            auto_decompress=False, headers=key_headers(api_key),
        )

    def server(self, name: str, url: str, timeout: float, request_fields: dict | None = None,
               on_fault: Callable[[BackendError], None] | None = None) -> LlamaServer:
        return LlamaServer(name, url, self.session, timeout, request_fields, on_fault=on_fault)

    async def close(self) -> None:
        await self.session.close()


class LlamaServer:
    """One llama-server, reached at ``url`` through a shared session."""

    def __init__(self, name: str, url: str, session: aiohttp.ClientSession, timeout: float,
                 request_fields: dict | None = None, on_fault: Callable[[BackendError], None] | None = None):
        self.name = name
        self.url = url
        self.session = session
        self.timeout = timeout
        # Added to every generation request: {"speculative.n_max": 0} makes a natively speculating
        # target decode plainly, on builds that read it per request.
        self.request_fields = dict(request_fields or {})
        # Told of every failed call (the replica router takes a failing server out of service).
        self.on_fault = on_fault

    def _failed(self, err: BackendError) -> BackendError:
        if self.on_fault is not None:
            self.on_fault(err)
        return err

    # --- plumbing ---------------------------------------------------------------------------------

    async def _open(self, path: str, body: dict | None, timeout: float) -> aiohttp.ClientResponse:
        """Send the request and return the response once its headers arrived (GET when body is None).

        A pooled keep-alive connection the server had already closed fails before any answer; every
        call here is idempotent, so it is retried once on a fresh connection.
        """
        method = "GET" if body is None else "POST"

        def send():
            return self.session.request(method, self.url + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout))

        try:
            return await send()
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            return await send()

    async def _post(self, path: str, body: dict | None, timeout: float | None = None) -> Any:
        """POST ``body`` (GET when None) and return the decoded JSON answer."""
        timeout = timeout or self.timeout
        try:
            resp = await self._open(path, body, timeout)
            async with resp:
                payload = await resp.read()
            if resp.status != 200:
                raise self._failed(_answered(self.name, path, resp.status, payload))
            return json.loads(payload)
        except asyncio.TimeoutError:
            raise self._failed(BackendError(self.name, f"{path} timed out after {timeout:.1f}s", timeout=True)) from None
        except (aiohttp.ClientError, ValueError) as err:
            raise self._failed(BackendError(self.name, f"{path} failed: {err or type(err).__name__}")) from None

    async def health(self, timeout: float = 2.0) -> bool:
        try:
            async with self.session.get(self.url + "/health", timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    # --- Backend ----------------------------------------------------------------------------------

    def _generation_body(self, tokens: list[int], n_predict: int, sampling: Sampling, stop: list[str]) -> dict:
        body = {"prompt": tokens, "n_predict": n_predict, "return_tokens": True, "cache_prompt": True,
                **sampling.fields(), **self.request_fields}
        if stop:
            body["stop"] = stop
        return body

    async def complete(self, tokens: list[int], n_predict: int, sampling: Sampling, stop: list[str] = (), timeout: float | None = None) -> Piece:
        data = await self._post("/completion", self._generation_body(tokens, n_predict, sampling, list(stop)), timeout)
        return _piece(data, final=True)

    async def stream(self, tokens: list[int], n_predict: int, sampling: Sampling, stop: list[str] = ()) -> AsyncIterator[Piece]:
        body = {**self._generation_body(tokens, n_predict, sampling, list(stop)), "stream": True}
        try:
            resp = await self._open("/completion", body, self.timeout)
            async with resp:
                if resp.status != 200:
                    raise self._failed(_answered(self.name, "/completion", resp.status, await resp.read()))
                held: Piece | None = None
                async for line in resp.content:
                    if not line.startswith(b"data: "):
                        continue
                    data = json.loads(line[6:])
                    if "error" in data:
                        raise BackendError(self.name, f"/completion stream error: {_error_text(line[6:])}")
                    piece = _piece(data, final=bool(data.get("stop")))
                    if held is not None:  # join a held textless chunk to the next one
                        piece = Piece(held.tokens + piece.tokens, held.text + piece.text, piece.finish, piece.timings)
                        held = None
                    if piece.finish is None and piece.tokens and not piece.text:
                        # No text yet: an end-of-generation token (the final chunk follows) or bytes of
                        # a character still incomplete. Held, so the EOS token arrives with "eos".
                        held = piece
                        continue
                    yield piece
                if held is not None:
                    yield held
        except asyncio.TimeoutError:
            raise self._failed(BackendError(self.name, f"/completion timed out after {self.timeout:.1f}s",
                                            timeout=True)) from None
        except (aiohttp.ClientError, ValueError) as err:
            raise self._failed(BackendError(self.name, f"/completion stream failed: {err or type(err).__name__}")) from None

    async def next_tokens(self, contexts: list[list[int]], sampling: Sampling, seeds: list[int | None]) -> Verification:
        """One multi-prompt /completion: each context gets its own slot and one generated token.

        Slots keep their KV cache (cache_prompt), and llama-server gives each prompt the slot whose cache
        shares the longest prefix, so a slot mostly evaluates only the tokens new since the last round.
        Per-position seeds need one prompt per request, so seeded sampling sends them concurrently instead.
        """
        if any(seed is not None for seed in seeds):
            results = await asyncio.gather(*(
                self._post("/completion", self._one_token_body(ctx, sampling, seed)) for ctx, seed in zip(contexts, seeds)
            ))
        else:
            data = await self._post("/completion", self._one_token_body(contexts, sampling, None))
            results = data if isinstance(data, list) else [data]
            results = sorted(results, key=lambda r: r.get("index", 0))
        if len(results) != len(contexts):
            raise BackendError(self.name, f"asked for {len(contexts)} verifications, got {len(results)}")
        tokens, eos = [], []
        for result in results:
            got = result.get("tokens") or []
            if not got:
                raise BackendError(self.name, "a verification result carried no token (is return_tokens supported?)")
            tokens.append(got[0])
            eos.append(result.get("stop_type") == "eos")
        evaluated = sum(int(r.get("timings", {}).get("prompt_n", 0)) + 1 for r in results)
        return Verification(tokens=tokens, eos=eos, evaluated=evaluated)

    def _one_token_body(self, prompt: Any, sampling: Sampling, seed: int | None) -> dict:
        return {"prompt": prompt, "n_predict": 1, "return_tokens": True, "cache_prompt": True, **sampling.fields(seed),
                **self.request_fields}

    # --- OpenAIBackend --------------------------------------------------------------------------------

    def _openai_body(self, route: str, body: dict) -> dict:
        return {**body, **self.request_fields} if route in GENERATION_ROUTES else body

    async def openai(self, route: str, body: dict) -> dict:
        return await self._post(route, self._openai_body(route, body))

    async def openai_stream(self, route: str, body: dict) -> AsyncIterator[dict]:
        try:
            resp = await self._open(route, self._openai_body(route, body), self.timeout)
            async with resp:
                if resp.status != 200:
                    raise self._failed(_answered(self.name, route, resp.status, await resp.read()))
                async for line in resp.content:
                    if not line.startswith(b"data: "):
                        continue  # blank separators, SSE comments (pings)
                    payload = line[6:].strip()
                    if payload == b"[DONE]":
                        return
                    data = json.loads(payload)
                    if isinstance(data, dict) and "error" in data:
                        raise BackendError(self.name, f"{route} stream error: {_error_text(payload)}",
                                           upstream=_error_object(payload))
                    yield data
        except asyncio.TimeoutError:
            raise self._failed(BackendError(self.name, f"{route} timed out after {self.timeout:.1f}s",
                                            timeout=True)) from None
        except (aiohttp.ClientError, ValueError) as err:
            raise self._failed(BackendError(self.name, f"{route} stream failed: {err or type(err).__name__}")) from None

    # --- text helpers (target only) ---------------------------------------------------------------

    async def tokenize(self, text: str) -> list[int]:
        # add_special + parse_special: exactly how llama-server tokenises its own /v1 prompts.
        data = await self._post("/tokenize", {"content": text, "add_special": True, "parse_special": True})
        return list(data["tokens"])

    async def detokenize(self, tokens: list[int]) -> str:
        data = await self._post("/detokenize", {"tokens": tokens})
        return data["content"]

    async def chat_parsing(self) -> str | None:
        """Why the server's chat answers are not its generated text as such, or None when they are.

        llama-server parses a chat reply with the model's template where that template has tool calls
        or reasoning (``message.tool_calls``, ``reasoning_content``); the token-level paths return the
        generated text unparsed, so such chat requests must go whole to the server's own endpoint.
        Read from ``/props``: its ``chat_template_caps`` and the template text itself.
        """
        props = await self._post("/props", None)
        caps = props.get("chat_template_caps") or {}
        parsed = sorted(k for k in PARSED_CHAT_CAPS if caps.get(k))
        template = str(props.get("chat_template") or "")
        parsed += [f"template mentions {m}" for m in THINKING_MARKERS if m in template]
        return f"chat template parsed by the server ({', '.join(parsed)})" if parsed else None

    async def n_vocab(self) -> int:
        data = await self._post("/v1/models", None)
        try:
            return int(data["data"][0]["meta"]["n_vocab"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise BackendError(self.name, "/v1/models did not report n_vocab") from None

    async def apply_template(self, body: dict) -> str:
        """The prompt the server's own /v1/chat/completions makes of this chat body (same parser)."""
        data = await self._post("/apply-template", body)
        return data["prompt"]


def _piece(data: dict, final: bool) -> Piece:
    finish = None
    if final:
        finish = _FINISH.get(data.get("stop_type", ""), "eos" if data.get("stopped_eos") else "limit")
    return Piece(tokens=list(data.get("tokens") or []), text=data.get("content", ""), finish=finish,
                 timings=data.get("timings") or {})


def _error_object(payload: bytes) -> dict:
    """The upstream's own error object ({"message", "type", ...}); {} when it sent none."""
    try:
        err = json.loads(payload).get("error", {})
    except (ValueError, AttributeError):
        return {}
    return err if isinstance(err, dict) else {"message": str(err)}


def _error_text(payload: bytes) -> str:
    """The upstream's own error message, shortened; never the whole body."""
    message = _error_object(payload).get("message") or payload.decode(errors="replace")
    return str(message or "no message")[:300]


def _answered(name: str, path: str, status: int, payload: bytes) -> BackendError:
    return BackendError(name, f"{path} answered {status}: {_error_text(payload)}", status, upstream=_error_object(payload))
