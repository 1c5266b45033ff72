"""A recording fake backend for the pure speculation core (no HTTP, no llama.cpp): token ids
(``Backend``) and whole OpenAI requests (``OpenAIBackend``).

Its "model" is a fixed function of the context, so the exact greedy continuation is known; a drafter
fake can be told to disagree at chosen positions or to fail after some calls (fault injection).
"""

from __future__ import annotations

from llamafleet.proxy.backend import BackendError, Piece, Sampling, Verification

EOS_AFTER = 10_000
EOS = 2


def rule(context: list[int], salt: int = 0) -> int | None:
    """The fake model's greedy next token (None: end of generation)."""
    if len(context) >= EOS_AFTER:
        return None
    return (sum(context[-3:]) * 31 + len(context) + salt) % 97


class FakeModel:
    def __init__(self, name: str, salt_every: int = 0, fail_after: int | None = None, eos_at: int | None = None):
        self.name = name
        self.salt_every = salt_every  # disagree with the target at every n-th position (0: never)
        self.fail_after = fail_after
        self.eos_at = eos_at
        self.calls: list[tuple] = []

    def next(self, context: list[int]) -> int | None:
        if self.eos_at is not None and len(context) >= self.eos_at:
            return None
        salt = 1 if self.salt_every and len(context) % self.salt_every == 0 else 0
        return rule(context, salt)

    def _check(self) -> None:
        if self.fail_after is not None and len(self.calls) > self.fail_after:
            raise BackendError(self.name, "connection refused (injected)")

    def _generate(self, tokens: list[int], n: int) -> Piece:
        out, context = [], list(tokens)
        for _ in range(n):
            token = self.next(context)
            if token is None:
                return Piece(tokens=out + [EOS], finish="eos", timings={"predicted_n": len(out), "prompt_n": len(tokens)})
            out.append(token)
            context.append(token)
        return Piece(tokens=out, finish="limit", timings={"predicted_n": len(out), "prompt_n": len(tokens)})

    async def complete(self, tokens, n_predict, sampling: Sampling, stop=(), timeout=None) -> Piece:
        self.calls.append(("complete", len(tokens), n_predict))
        self._check()
        return self._generate(tokens, n_predict)

    async def stream(self, tokens, n_predict, sampling: Sampling, stop=()):
        self.calls.append(("stream", len(tokens), n_predict))
        self._check()
        piece = self._generate(tokens, n_predict)
        for i, token in enumerate(piece.tokens):
            last = i == len(piece.tokens) - 1
            yield Piece(tokens=[token], finish=piece.finish if last else None, timings=piece.timings if last else {})
        if not piece.tokens:
            yield piece

    async def next_tokens(self, contexts, sampling: Sampling, seeds) -> Verification:
        self.calls.append(("next_tokens", len(contexts)))
        self._check()
        nexts = [self.next(c) for c in contexts]
        return Verification(tokens=[EOS if t is None else t for t in nexts], eos=[t is None for t in nexts],
                            evaluated=sum(len(c) for c in contexts))

    # --- OpenAIBackend: the fake's own /v1 endpoints, answering with its greedy continuation ----------

    def _answer(self, route: str, body: dict) -> tuple[list[int], dict]:
        prompt = [ord(c) % 97 for c in str(body.get("prompt") or body.get("messages"))]
        piece = self._generate(prompt, int(body.get("max_tokens") or 16))
        return piece.tokens, {"predicted_ms": 1.0 * len(piece.tokens), **piece.timings}  # 1 ms a token unless timed

    async def openai(self, route: str, body: dict) -> dict:
        self.calls.append(("openai", route, dict(body)))
        self._check()
        tokens, timings = self._answer(route, body)
        n = body.get("n") or 1
        return {"choices": [{"index": i, "text": " ".join(map(str, tokens)), "finish_reason": "length"} for i in range(n)],
                "usage": {"prompt_tokens": timings["prompt_n"], "completion_tokens": len(tokens)}, "timings": timings}

    async def openai_stream(self, route: str, body: dict):
        self.calls.append(("openai_stream", route, dict(body)))
        self._check()
        tokens, timings = self._answer(route, body)
        for token in tokens:
            yield {"choices": [{"index": 0, "text": f" {token}", "finish_reason": None}]}
        yield {"choices": [{"index": 0, "text": "", "finish_reason": "length"}], "timings": timings}


def greedy_reference(target: FakeModel, prompt: list[int], n: int) -> list[int]:
    return target._generate(prompt, n).tokens
