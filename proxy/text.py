"""Token ids to text for the client: stop sequences, held-back partial matches, whole UTF-8 characters.

Pass-through pieces carry the target's own text, which is used as is. Once a piece arrives without
text (the proxy path), the whole generated id list is detokenised by the target instead, so text is
never assembled from separately decoded fragments and never re-tokenised.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from llamafleet.proxy.backend import Piece

REPLACEMENT = "\ufffd"  # what the target's detokeniser shows for a character still missing bytes


class TextAssembler:
    def __init__(self, stops: list[str], detokenize: Callable[[list[int]], Awaitable[str]]):
        self.stops = [s for s in stops if s]
        self.detokenize = detokenize
        self.tokens: list[int] = []
        self.text = ""
        self.emitted = 0
        self.own_text = False  # True once we detokenise ourselves
        self.stopped = False
        self.completion_tokens = 0

    async def add(self, piece: Piece, final: bool) -> str:
        """Take a piece; return the text that is now safe to send (never part of a stop sequence)."""
        self.tokens += piece.tokens
        self.completion_tokens = len(self.tokens)
        if not self.own_text and piece.text is not None:
            self.text += piece.text
        else:
            self.own_text = True
            # An end-of-generation token ends the list; the target never shows it as text.
            shown = self.tokens[:-1] if piece.finish == "eos" else self.tokens
            self.text = await self.detokenize(shown) if shown else ""
        cut = self._earliest_stop(self.text)
        if cut is not None:
            self.text = self.text[:cut]
            self.stopped = True
            if self.own_text:
                self.completion_tokens = await self._tokens_through_stop()
            final = True
        safe = self.text if final else self._hold_back(self.text)
        new = safe[self.emitted:]
        self.emitted = max(self.emitted, len(safe))
        return new

    def _earliest_stop(self, text: str) -> int | None:
        """Where to cut for the stop that completes first (smallest end); ties go to the earliest start."""
        best: tuple[int, int] | None = None
        for stop in self.stops:
            at = text.find(stop)
            if at >= 0 and (best is None or (at + len(stop), at) < best):
                best = (at + len(stop), at)
        return None if best is None else best[1]

    def _hold_back(self, text: str) -> str:
        """Drop a trailing incomplete character and any tail that could still grow into a stop."""
        text = text.rstrip(REPLACEMENT)
        keep = len(text)
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    keep = min(keep, len(text) - n)
                    break
        return text[:keep]

    async def _tokens_through_stop(self) -> int:
        """The fewest generated tokens whose text already contains a stop (what usage counts)."""
        lo, hi = 1, len(self.tokens)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._earliest_stop(await self.detokenize(self.tokens[:mid])) is not None:
                hi = mid
            else:
                lo = mid + 1
        return lo
