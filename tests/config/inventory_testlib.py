"""Helpers for the inventory tests: the committed examples, variants of them with one edit, and the
real ``llamafleet`` CLI run as a subprocess. (A uniquely named module: ``conftest`` is ambiguous.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "inventory" / "examples"


def edit(text: str, old: str, new: str) -> str:
    """Replace one exact, unique snippet (so a test breaks loudly if the example changes under it)."""
    assert text.count(old) == 1, f"snippet occurs {text.count(old)} times: {old!r}"
    return text.replace(old, new)


def line_of(text: str, snippet: str) -> int:
    """1-based line where ``snippet`` starts in ``text``."""
    assert text.count(snippet) == 1, f"snippet occurs {text.count(snippet)} times: {snippet!r}"
    return text[: text.index(snippet)].count("\n") + 1


def run_cli(*args: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamafleet.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=120)
