"""The aiohttp application: HTTP in, one engine call, HTTP out.

Layers: handler (parse, auth, limits, text) → :class:`Engine` (which path, speculation loop) →
a :class:`~llamafleet.proxy.backend.Server` (one upstream call at a time). The app knows its servers
only by the interfaces in ``backend.py``: the engine's token ids and OpenAI relays, and the target's
own text handling (:class:`~llamafleet.proxy.backend.TargetText`: tokenise, detokenise, chat template,
/props). They come from a :class:`~llamafleet.proxy.backend.Servers`, by default ``upstream.Upstream``. A request runs whole on a server's own OpenAI
endpoint (:class:`_Relay`: direct and native, and every request the token-level paths cannot serve
exactly) or on token ids (:class:`_Run`: the proxy path, auto's probes). Errors from any layer are
turned into the OpenAI error envelope by one middleware.

A handler reads the proxy's state with ``request.app[STATE]`` (``.stats_snapshot()`` is what /stats
serves); the pages are listed once, in :func:`create_app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from typing import Awaitable, Callable

import aiohttp
from aiohttp import web

from llamafleet.proxy import api
from llamafleet.proxy.backend import BackendError, Server, Servers
from llamafleet.proxy.config import ProxyConfig
from llamafleet.proxy.dashboard import handle_dashboard
from llamafleet.proxy.engine import Engine, ModeUnavailable, Route
from llamafleet.proxy.replicas import Router
from llamafleet.proxy.errors import ApiError, from_backend, internal, invalid
from llamafleet.proxy.speculation import PROXY_SAMPLING_METHOD, Job, RequestReport
from llamafleet.proxy.stats import Stats, controller_gauges
from llamafleet.proxy.text import TextAssembler
from llamafleet.proxy.upstream import Upstream

MODE_HEADER = "X-Llamafleet-Mode"
PUBLIC_PATHS = frozenset({"/health", "/dashboard"})  # /dashboard: static page, its data comes from /stats (bench engineer)
SAMPLING_METHODS = {
    "direct": "the target samples (pass-through)",
    "native": "llama.cpp speculative sampling on the target (rejection sampling at temperature > 0)",
    "proxy": PROXY_SAMPLING_METHOD,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ReplicaState:
    """One replica of one model: what a request runs on once routed. ``config`` is that one server's
    config (its target, native and drafters); the stats are the whole proxy's."""

    def __init__(self, config: ProxyConfig, service: str, stats: Stats):
        self.config, self.service, self.stats = config, service, stats
        self.target: Server | None = None
        self.engine: Engine | None = None
        self.n_vocab: int | None = None
        self._chat_parsing: tuple[str | None] | None = None  # read once from the target's /props

    async def chat_parsing(self) -> str | None:
        if self._chat_parsing is None:
            self._chat_parsing = (await self.target.chat_parsing(),)
        return self._chat_parsing[0]

    def start(self, servers: Servers, on_fault: Callable[[BackendError], None] | None) -> None:
        cfg = self.config
        self.target = servers.server(cfg.target.name, cfg.target.url, cfg.timeouts.target_s,
                                     cfg.target.request_fields, on_fault=on_fault)
        drafters = [servers.server(d.name, d.url, cfg.timeouts.drafter_s) for d in cfg.drafters]
        native = None
        if cfg.native is not None:
            # With request_fields the same server is both paths: plain with them, speculating without.
            native = self.target if cfg.native_is_target else servers.server(
                cfg.native.name, cfg.native.url, cfg.timeouts.target_s, on_fault=on_fault)
        self.engine = Engine(
            self.target, drafters, native, modes=[m.value for m in cfg.available_modes()],
            default_mode=cfg.mode.value, draft_max=cfg.draft_max, target_slots=cfg.target.slots,
            drafter_timeout=cfg.timeouts.drafter_s, native_is_target=native is self.target,
            native_keeps_length=cfg.native is None or cfg.native.keeps_length,
        )


class ModelGroup:
    """One model the proxy serves: its replicas, a :class:`Router` among them, and their probes."""

    def __init__(self, name: str, replicas: list[ReplicaState]):
        self.name, self.replicas = name, replicas
        self.router = Router([r.config.target.slots for r in replicas])
        self._probes: set[asyncio.Task] = set()

    def start(self, servers: Servers) -> None:
        several = len(self.replicas) > 1  # one replica has nowhere else to send requests: never taken out
        for index, replica in enumerate(self.replicas):
            replica.start(servers, (lambda err, i=index: self._fault(i, err)) if several else None)

    def _fault(self, index: int, err: BackendError) -> None:
        unreachable = err.status is None and not err.timeout and not err.upstream  # connection refused or cut
        if unreachable or (err.status or 0) >= 500:
            self.router.failed(index)

    async def _probe(self, index: int) -> None:
        replica = self.replicas[index]
        self.router.probed(index, await replica.target.health(timeout=replica.config.timeouts.connect_s + 1))

    async def _probe_due(self, wait: bool) -> None:
        tasks = [asyncio.ensure_future(self._probe(i)) for i in self.router.due()]
        self._probes.update(tasks)
        for task in tasks:
            task.add_done_callback(self._probes.discard)
        if wait and self._probes:  # those just started and any still running from an earlier request
            await asyncio.gather(*list(self._probes))

    @contextlib.asynccontextmanager
    async def replica(self):
        """The replica for one request, counted in flight while the block runs."""
        await self._probe_due(wait=False)
        index = self.router.pick()
        if index is None:  # every replica is out: probe the due ones now rather than refuse at once
            await self._probe_due(wait=True)
            index = self.router.pick()
        if index is None:
            raise ApiError(503, f"no replica of model {json.dumps(self.name)} is available; retry shortly",
                           "upstream_error", "upstream_unavailable", headers={"Retry-After": "1"})
        self.router.start(index)
        try:
            yield self.replicas[index]
        finally:
            self.router.finish(index)

    def status(self) -> dict:
        return {"replicas": [{"service": r.service, **routed, "controller": r.engine.stats()["controller"]}
                             for r, routed in zip(self.replicas, self.router.status())]}


class ProxyState:
    """Everything a request needs: config, models and their replicas, stats."""

    def __init__(self, config: ProxyConfig, token: str | None, servers: Callable[[], Servers] | None = None):
        self.config = config
        self.token = token.encode() if token else None
        self.server_key = config.server_key()  # the llama-servers' API key, sent on every upstream call
        self.stats = Stats(config.history_size)
        self._open_servers = servers or (lambda: Upstream(config.timeouts.connect_s, self.server_key))
        self.servers: Servers | None = None
        self.models = {model.name: ModelGroup(model.name, [
            ReplicaState(config.replica_config(model, replica), replica.service, self.stats)
            for replica in model.replicas]) for model in config.served()}
        self.first = next(iter(self.models.values())).replicas[0]  # a one-server proxy's only replica

    @property
    def target(self) -> Server | None:
        return self.first.target

    @property
    def engine(self) -> Engine | None:
        return self.first.engine

    async def start(self) -> None:
        # Backends are only those in the config.
        self.servers = self._open_servers()
        for group in self.models.values():
            group.start(self.servers)

    async def stop(self) -> None:
        if self.servers is not None:
            await self.servers.close()

    def group(self, data: dict) -> ModelGroup:
        """The model a request's ``model`` names (or the only one, when it names none)."""
        model = data.get("model")
        if model is None and len(self.models) == 1:
            return self.first_group
        group = self.models.get(model) if isinstance(model, str) else None
        if group is None:
            if model is None:
                raise invalid("model is required: this proxy serves several models (GET /v1/models)", param="model",
                              code="model_required")
            raise ApiError(404, f"model {json.dumps(model)} is not served here; this proxy serves "
                           f"{', '.join(json.dumps(n) for n in self.models)} (GET /v1/models)",
                           "invalid_request_error", "model_not_found", param="model")
        return group

    @property
    def first_group(self) -> ModelGroup:
        return next(iter(self.models.values()))

    def stats_snapshot(self) -> dict:
        snapshot = self.stats.snapshot()
        snapshot.update(self.engine.stats() if self.engine else {})
        snapshot["modes"] = [m.value for m in self.first.config.available_modes()]
        snapshot["default_mode"] = self.config.mode.value
        snapshot["sampling_methods"] = SAMPLING_METHODS
        if self.config.models is not None:  # several models or replicas: each one's routing and controller
            snapshot["models"] = {name: group.status() for name, group in self.models.items()} if self.engine else {}
        return snapshot


STATE = web.AppKey("llamafleet_proxy_state", ProxyState)


# --- middlewares ---------------------------------------------------------------------------------


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        return await handler(request)
    except ApiError as err:
        error = err
    except BackendError as err:
        error = from_backend(err, state.config.target.name if state.config.target else err.backend)
    except web.HTTPRequestEntityTooLarge:
        error = ApiError(413, f"request body larger than {state.config.limits.max_body_bytes} bytes",
                         "invalid_request_error", "body_too_large")
    except web.HTTPException as err:
        if err.status < 400:
            raise
        error = ApiError(err.status, err.reason, "invalid_request_error", f"http_{err.status}")
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        raise  # the client went away; nothing to answer
    except Exception as err:  # noqa: BLE001 - the last line of defence: an envelope, not a traceback
        error = internal(err)
    state.stats.record_error(error.code)
    return web.json_response(error.envelope(), status=error.status, headers=error.headers)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[STATE].token
    if token is None or request.path in PUBLIC_PATHS:
        return await handler(request)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # compare_digest on bytes: constant time in the token's content.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
        raise ApiError(401, "missing or invalid bearer token", "authentication_error", "invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


# --- helpers -------------------------------------------------------------------------------------


async def _read_json(request: web.Request) -> dict:
    limit = request.app[STATE].config.limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body larger than {limit} bytes", "invalid_request_error", "body_too_large")
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise invalid(f"the body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise invalid("the body must be a JSON object", code="invalid_json")
    return data


def _check_max_tokens(data: dict, cap: int) -> None:
    """The proxy's cap on the token limit, whichever field carries it (a non-number is the serving
    path's to refuse). A negative n_predict means no limit on llama-server."""
    requested = api.requested_max_tokens(data)
    if requested is None:
        return
    name, value = requested
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 <= value <= cap:
        raise invalid(f"{name} {value} is above this proxy's limit of {cap}", param=name)


def _greedy(data: dict) -> bool:
    temperature = data.get("temperature")
    return isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature <= 0


async def _vocab_size(state: ReplicaState) -> int:
    if state.n_vocab is None:
        state.n_vocab = await state.target.n_vocab()
    return state.n_vocab


async def _tokens_of(state: ReplicaState, text: str) -> list[int]:
    """The target's tokens for a prompt text, as it tokenises its own /v1 prompts."""
    limit = state.config.limits.max_prompt_tokens
    # A cheap bound before asking the target to tokenise: no token is shorter than one character.
    if len(text) > limit * 32:
        raise invalid(f"prompt longer than {limit} tokens", param="prompt", code="prompt_too_long")
    return await state.target.tokenize(text)


def _check_prompt_length(state: ReplicaState, n_tokens: int) -> None:
    limit = state.config.limits.max_prompt_tokens
    if n_tokens > limit:
        raise invalid(f"prompt is {n_tokens} tokens; the limit is {limit}", param="prompt", code="prompt_too_long")


async def _prompt_tokens(state: ReplicaState, body: api._Body, data: dict, chat: bool) -> list[int]:
    """Token ids of the prompt, made exactly as the target makes them for its own /v1 endpoints."""
    if chat:
        tokens = await _tokens_of(state, await state.target.apply_template({"messages": data["messages"]}))
    elif isinstance(body.prompt, list):
        n_vocab = await _vocab_size(state)
        if any(not 0 <= t < n_vocab for t in body.prompt):
            raise invalid(f"prompt token ids must be in [0, {n_vocab})", param="prompt")
        tokens = list(body.prompt)
    else:
        tokens = await _tokens_of(state, body.prompt)
    if not tokens:
        raise invalid("the prompt is empty", param="prompt")
    _check_prompt_length(state, len(tokens))
    return tokens


async def _check_relayed_prompt(state: ReplicaState, data: dict, chat: bool) -> None:
    """The prompt-length limit on a relayed request, counted by the target the way its endpoint will
    count it (a chat body through the same template parser). A prompt the target cannot read is left
    for its endpoint to refuse."""
    if chat:
        _check_prompt_length(state, len(await _tokens_of(state, await state.target.apply_template(data))))
        return
    prompt = data.get("prompt")
    prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
    for one in prompts:
        if isinstance(one, str):
            _check_prompt_length(state, len(await _tokens_of(state, one)))
        elif isinstance(one, list):
            _check_prompt_length(state, len(one))


@contextlib.contextmanager
def _concurrency_slot(state: ReplicaState):
    if state.stats.active >= state.config.limits.max_concurrency:
        raise ApiError(429, f"more than {state.config.limits.max_concurrency} requests at once; retry shortly",
                       "rate_limit_error", "too_many_requests", headers={"Retry-After": "1"})
    state.stats.active += 1
    try:
        yield
    finally:
        state.stats.active -= 1


def _sse(data: dict | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


# --- generation ----------------------------------------------------------------------------------


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    data = await _read_json(request)
    async with request.app[STATE].group(data).replica() as replica:
        return await _generate_on(replica, request, data, chat)


async def _generate_on(state: ReplicaState, request: web.Request, data: dict, chat: bool) -> web.StreamResponse:
    try:
        mode = state.engine.resolve_mode(request.headers.get(MODE_HEADER))
    except ModeUnavailable as err:
        raise invalid(str(err), param=MODE_HEADER, code="mode_unavailable") from None
    cap = state.config.limits.max_tokens
    _check_max_tokens(data, cap)
    body, reason = api.token_path_body(data, chat)
    if chat and reason is None:
        reason = await state.chat_parsing()
        body = None if reason else body
    with _concurrency_slot(state):
        route = state.engine.route(mode, body.sampling().greedy if body else _greedy(data), reason)
        if route.whole:
            # Without a token limit llama-server generates until the end: the proxy's cap is the limit.
            forwarded = data if api.requested_max_tokens(data) else {**data, "max_tokens": cap}
            relay = _Relay(state, route, mode, chat, forwarded)
            try:
                await _check_relayed_prompt(state, data, chat)
            except BackendError as err:  # the target's parser refused the body: its own words
                raise _relayed_error(state, err) from None
            return await (relay.stream(request) if data.get("stream") is True else relay.complete())
        prompt = await _prompt_tokens(state, body, data, chat)
        job = Job(prompt=prompt, max_tokens=api.max_tokens_of(body, cap), sampling=body.sampling(),
                  stop=tuple(body.stop_list()), stream=body.stream)
        run = _Run(state, job, mode, chat, body, route)
        if body.stream:
            return await run.stream(request)
        return web.json_response(await run.complete())


def _relayed_error(state: ReplicaState, err: BackendError) -> ApiError:
    return from_backend(err, state.config.target.name, relayed=True)


def _may_end(event: dict) -> bool:
    """An event that can be a stream's last one: a finish, usage or the server's timings."""
    choices = event.get("choices")
    finished = isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason") for c in choices)
    return finished or choices == [] or "usage" in event or "timings" in event


class _Relay:
    """One request relayed whole to a server's own OpenAI endpoint: its answer (or stream) as it is,
    with this proxy's ``model`` and the ``llamafleet`` object added."""

    def __init__(self, state: ReplicaState, route: Route, mode: str, chat: bool, body: dict):
        self.state, self.route, self.chat, self.body = state, route, chat, body
        self.endpoint = "/v1/chat/completions" if chat else "/v1/completions"
        self.report = RequestReport(path=route.path, mode=mode, reason=route.reason)
        self.greedy = _greedy(body)
        self.model = state.config.model_name
        self.usage: dict = {}
        self.finish = "length"
        self.started = time.perf_counter()

    def _note(self, answer: dict) -> None:
        """Rename the model to this proxy's; remember usage and the finish for the stats."""
        if "model" in answer:
            answer["model"] = self.model
        if isinstance(answer.get("usage"), dict):
            self.usage = answer["usage"]
        for choice in answer.get("choices") or []:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finish = choice["finish_reason"]

    def _finished(self) -> dict:
        def count(key: str) -> int:
            value = self.usage.get(key)
            return value if isinstance(value, int) else 0
        self.state.stats.record(self.report, endpoint="chat" if self.chat else "completions",
                                prompt_tokens=count("prompt_tokens"), completion_tokens=count("completion_tokens"),
                                seconds=time.perf_counter() - self.started, finish=self.finish)
        return self.report.as_dict()

    async def complete(self) -> web.StreamResponse:
        try:
            answer = await self.state.engine.relay(self.route, self.endpoint, self.body, self.report, self.greedy)
        except BackendError as err:
            raise _relayed_error(self.state, err) from None
        self._note(answer)
        answer["llamafleet"] = self._finished()
        return web.json_response(answer, dumps=lambda d: json.dumps(d, ensure_ascii=False))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        events = self.state.engine.relay_stream(self.route, self.endpoint, self.body, self.report, self.greedy)
        held: dict | None = None  # an event that may be the last one: it gets the llamafleet object
        async with contextlib.aclosing(events):
            try:  # the first event comes before the headers, so an early failure is still a proper status
                event = await anext(events, None)
            except BackendError as err:
                raise _relayed_error(self.state, err) from None
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(request)
            while event is not None:
                if isinstance(event, dict):
                    self._note(event)
                if held is not None:
                    await response.write(_sse(held))
                    held = None
                if isinstance(event, dict) and _may_end(event):
                    held = event
                else:
                    await response.write(_sse(event))
                try:
                    event = await anext(events, None)
                except BackendError as err:
                    # Headers are gone: report the failure as one error event, then end the stream.
                    error = _relayed_error(self.state, err)
                    self.state.stats.record_error(error.code)
                    if held is not None:
                        await response.write(_sse(held))
                    await response.write(_sse(error.envelope()))
                    return response
        report = self._finished()  # the server's timings arrived with its last event
        if held is not None:
            held["llamafleet"] = report
            await response.write(_sse(held))
        await response.write(_sse("[DONE]"))
        await response.write_eof()
        return response


class _Run:
    """One generation request: drives the engine, assembles text, records stats."""

    def __init__(self, state: ReplicaState, job: Job, mode: str, chat: bool, body: api._Body, route: Route):
        self.state, self.job, self.mode, self.chat, self.body = state, job, mode, chat, body
        self.segments = route.segments
        self.report = RequestReport(path=mode)
        self.text = TextAssembler(list(job.stop), self._detokenize)
        self.rid = api.new_id("chatcmpl" if chat else "cmpl")
        self.model = state.config.model_name
        self.finish = "length"
        self.started = time.perf_counter()

    async def _detokenize(self, tokens: list[int]) -> str:
        t0 = time.perf_counter()
        try:
            return await self.state.target.detokenize(tokens)
        finally:
            self.report.detokenize_ms += (time.perf_counter() - t0) * 1000

    async def _pieces(self):
        """(text to send, done) per engine piece; stops the engine as soon as the text is finished."""
        async with contextlib.aclosing(self.state.engine.generate(self.job, self.mode, self.report, self.segments)) as pieces:
            async for piece in pieces:
                final = piece.finish is not None
                t0, detokenizing = time.perf_counter(), self.report.detokenize_ms
                new = await self.text.add(piece, final)
                spent = (time.perf_counter() - t0) * 1000 - (self.report.detokenize_ms - detokenizing)
                self.report.own_ms += spent
                if self.text.stopped or piece.finish in ("eos", "stop"):
                    self.finish = "stop"
                yield new
                if final or self.text.stopped:
                    return

    def _finished(self) -> dict:
        seconds = time.perf_counter() - self.started
        completion = self.text.completion_tokens
        self.state.stats.record(self.report, endpoint="chat" if self.chat else "completions",
                                prompt_tokens=len(self.job.prompt), completion_tokens=completion,
                                seconds=seconds, finish=self.finish)
        return api.usage(len(self.job.prompt), completion)

    async def complete(self) -> dict:
        parts = [new async for new in self._pieces()]
        usage = self._finished()
        return api.completion_response(chat=self.chat, rid=self.rid, model=self.model, text="".join(parts),
                                       finish=self.finish, usage_=usage, report=self.report.as_dict())

    async def stream(self, request: web.Request) -> web.StreamResponse:
        pieces = self._pieces()
        async with contextlib.aclosing(pieces):
            # The first piece comes before the headers, so an early failure is still a proper status.
            first = await anext(pieces, None)
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(request)
            if self.chat:
                await response.write(_sse(api.chunk(chat=True, rid=self.rid, model=self.model, text=None, finish=None, first=True)))
            new = first
            while new is not None:
                if new:
                    await response.write(_sse(api.chunk(chat=self.chat, rid=self.rid, model=self.model, text=new, finish=None)))
                try:
                    new = await anext(pieces, None)
                except BackendError as err:
                    # Headers are gone: report the failure as one error event, then end the stream.
                    error = from_backend(err, self.state.config.target.name)
                    self.state.stats.record_error(error.code)
                    await response.write(_sse(error.envelope()))
                    return response
        usage = self._finished()
        # As llama-server's own stream: a completion's last chunk always carries the usage; a chat
        # stream sends it in a chunk of its own, after the finish, only when include_usage asks.
        # The llamafleet object rides on the last chunk.
        last = api.chunk(chat=self.chat, rid=self.rid, model=self.model, text=None if self.chat else "", finish=self.finish)
        if not self.chat:
            last["usage"] = usage
        elif self.body.include_usage:
            await response.write(_sse(last))
            last = {"id": self.rid, "object": last["object"], "created": last["created"], "model": self.model,
                    "choices": [], "usage": usage}
        last["llamafleet"] = self.report.as_dict()
        await response.write(_sse(last))
        await response.write(_sse("[DONE]"))
        await response.write_eof()
        return response


# --- handlers ------------------------------------------------------------------------------------


async def handle_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def handle_chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def handle_embeddings(request: web.Request) -> web.StreamResponse:
    """Relayed whole to the target's own /v1/embeddings (a target started with --embeddings serves it;
    one without answers its own error)."""
    data = await _read_json(request)
    async with request.app[STATE].group(data).replica() as state:
        return await _embed(state, data)


async def _embed(state: ReplicaState, data: dict) -> web.StreamResponse:
    with _concurrency_slot(state):
        started = time.perf_counter()
        try:
            answer = await state.target.openai("/v1/embeddings", data)
        except BackendError as err:
            raise _relayed_error(state, err) from None
        report = RequestReport(path="direct", mode="direct", reason="embeddings")
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
        prompt_tokens = usage.get("prompt_tokens")
        state.stats.record(report, endpoint="embeddings", completion_tokens=0, finish="embedding",
                           prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else 0,
                           seconds=time.perf_counter() - started)
        if "model" in answer:
            answer["model"] = state.config.model_name
        answer["llamafleet"] = report.as_dict()
        return web.json_response(answer)


async def handle_models(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    return web.json_response({"object": "list", "data": [
        {"id": name, "object": "model", "created": int(state.stats.started), "owned_by": "llamafleet"}
        for name in state.models
    ]})


async def handle_health(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    timeout = min(2.0, state.config.timeouts.connect_s + 1)
    if state.config.models is None:
        target_ok = await state.target.health(timeout=timeout)
        answer = {"target": target_ok, "drafters": state.engine.pool.status()}
    else:  # several: each replica's own health; the proxy is up while every model has one
        groups = list(state.models.values())
        healths = await asyncio.gather(*(r.target.health(timeout=timeout) for g in groups for r in g.replicas))
        answer, at = {"models": {}}, iter(healths)
        for group in groups:
            answer["models"][group.name] = {r.service: next(at) for r in group.replicas}
        target_ok = all(any(replicas.values()) for replicas in answer["models"].values())
        answer["target"] = target_ok
    status = "ok" if target_ok else "target_unavailable"
    return web.json_response({"status": status, **answer}, status=200 if target_ok else 503)


async def handle_stats(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[STATE].stats_snapshot())


async def handle_metrics(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    snapshot = state.stats_snapshot()
    gauges = {"acceptance_rate": ("Accepted over drafted tokens, all requests.", [({}, snapshot["acceptance_rate"] or 0.0)]),
              **controller_gauges(snapshot["controller"])}
    return web.Response(text=state.stats.prometheus(gauges), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def create_app(config: ProxyConfig, token: str | None = None,
               servers: Callable[[], Servers] | None = None) -> web.Application:
    """The proxy application. ``token`` defaults to the one the config's auth section points at;
    ``servers`` makes the servers' clients when the app starts (default: ``upstream.Upstream``)."""
    if token is None and config.auth is not None:
        token = config.auth.read_token()
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=config.limits.max_body_bytes)
    state = ProxyState(config, token, servers)
    app[STATE] = state

    async def start(_app: web.Application) -> None:
        await state.start()

    async def stop(_app: web.Application) -> None:
        await state.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_routes([
        web.route("POST", "/v1/completions", handle_completions),
        web.route("POST", "/v1/chat/completions", handle_chat),
        web.route("POST", "/v1/embeddings", handle_embeddings),
        web.route("GET", "/v1/models", handle_models),
        web.route("GET", "/health", handle_health),
        web.route("GET", "/metrics", handle_metrics),
        web.route("GET", "/stats", handle_stats),
        web.route("GET", "/dashboard", handle_dashboard),  # proxy/dashboard.py
    ])
    return app
