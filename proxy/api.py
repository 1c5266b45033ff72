"""Which OpenAI requests the token-level paths serve exactly, and their response shapes.

:class:`CompletionBody` and :class:`ChatBody` describe exactly the requests the proxy can run on token
ids (the proxy path, auto's probes): plain text or chat, ``temperature``/``top_p``/``top_k``/``min_p``/
``seed``, ``stop``, ``max_tokens``, ``stream`` and ``stream_options.include_usage``. Any other field or
value (tools, the ``tool`` role, ``response_format``, ``logprobs``, ``n`` > 1, penalties, ``logit_bias``,
fields this proxy does not know) is not refused: :func:`token_path_body` names it, and the request goes
whole to the server's own endpoint (pass-through), which answers it or refuses it itself.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llamafleet.proxy.backend import Sampling

# llama-server's own default temperature: a request without one behaves as it would on the target.
DEFAULT_TEMPERATURE = 0.8
# The fields llama-server reads as the token limit (n_predict first, then its aliases).
MAX_TOKENS_FIELDS = ("n_predict", "max_completion_tokens", "max_tokens")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    model: str | None = None
    # llama-server generates one token for max_tokens 0: such a request is its to answer (pass-through).
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, lt=2**32 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    n: Literal[1] = 1
    logprobs: Literal[False, None, 0] = None
    presence_penalty: Literal[0, 0.0] = 0
    frequency_penalty: Literal[0, 0.0] = 0
    logit_bias: dict | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v):
        if v:
            raise ValueError("logit_bias is not supported")
        return v

    @field_validator("stream_options")
    @classmethod
    def _stream_options(cls, v):
        if v is not None and set(v) - {"include_usage"}:
            raise ValueError("only include_usage is supported in stream_options")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling(self) -> Sampling:
        temperature = DEFAULT_TEMPERATURE if self.temperature is None else self.temperature
        return Sampling(temperature=temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p, seed=self.seed)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class CompletionBody(_Body):
    prompt: str | list[int] | list[str] = Field(description="One prompt: text, or token ids.")
    echo: Literal[False] = False
    best_of: Literal[1, None] = None
    suffix: Literal[None] = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], str):
            if len(v) != 1:
                raise ValueError("only one prompt per request is supported")
            return v[0]
        if isinstance(v, list) and not v:
            raise ValueError("the prompt is empty")
        return v


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None


class ChatBody(_Body):
    """The messages reach the target's template as the client sent them (``/apply-template`` parses
    them exactly as the target's own ``/v1/chat/completions`` does)."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


def max_tokens_of(body: _Body, cap: int) -> int:
    """The request's token limit; without one llama-server generates until the end (here: the cap)."""
    value = body.max_tokens
    if isinstance(body, ChatBody) and body.max_completion_tokens is not None:
        value = body.max_completion_tokens
    return cap if value is None else value


def token_path_body(data: dict, chat: bool) -> tuple[_Body | None, str | None]:
    """(body, None) when the token-level paths serve this request exactly; else (None, the feature that
    rules them out, e.g. ``tools`` or ``messages[2].role="tool"``)."""
    try:
        return (ChatBody if chat else CompletionBody).model_validate(data), None
    except ValidationError as err:
        # The first field in the request's own order; within it an unknown field names the feature best.
        order = {key: i for i, key in enumerate(data)}
        first = min(err.errors(), key=lambda e: (order.get(e["loc"][0] if e["loc"] else None, len(order)),
                                                 e["type"] != "extra_forbidden"))
        return None, _feature(data, first["loc"], with_value=first["type"] != "extra_forbidden")


def _feature(data: dict, loc: tuple, with_value: bool) -> str:
    """Where in the request ``loc`` points (pydantic's union tags dropped); for a value the token-level
    paths cannot serve (not an unknown field), the value too when it is a short scalar."""
    where, node = "", data
    for part in loc:
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            where, node = f"{where}[{part}]", node[part]
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            where, node = f"{where}.{part}" if where else part, node[part]
        else:
            break
    if not where:
        return f"{'.'.join(str(p) for p in loc)} (missing)"
    if with_value and (isinstance(node, (bool, int, float, str)) or node is None):
        value = json.dumps(node, ensure_ascii=False)
        if len(value) <= 40:
            return f"{where}={value}"
    return where


def requested_max_tokens(data: dict) -> tuple[str, Any] | None:
    """The (field, value) llama-server takes as the token limit of a request, or None when it has none."""
    for name in MAX_TOKENS_FIELDS:
        if data.get(name) is not None:
            return name, data[name]
    return None


# --- responses -----------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_response(*, chat: bool, rid: str, model: str, text: str, finish: str, usage_: dict, report: dict) -> dict:
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": usage_, "llamafleet": report}


def chunk(*, chat: bool, rid: str, model: str, text: str | None, finish: str | None, first: bool = False) -> dict:
    if chat:
        delta: dict = {}
        if first:
            delta["role"] = "assistant"  # with "content": null, as llama-server's first chunk
        if text is not None or first:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice]}
