"""The benchmark's prompts: five categories (factual, code, creative, reasoning, list), several
prompts each, or a user file.

A prompt file is YAML or JSON: either a mapping ``{category: [prompt, ...]}`` or a list of
``{category: ..., prompt: ...}`` items. Every problem is reported with the file and the item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from llamafleet.errors import UserError

CATEGORIES = ("factual", "code", "creative", "reasoning", "list")


@dataclass(frozen=True)
class Prompt:
    category: str
    text: str
    index: int  # position within its category, so repeats of one prompt can be matched up

    @property
    def key(self) -> str:
        return f"{self.category}-{self.index}"


BUILT_IN: dict[str, tuple[str, ...]] = {
    "factual": (
        "What is the capital of France, and what river flows through it?",
        "Explain how photosynthesis works in plants.",
        "Who wrote the novel Pride and Prejudice, and when was it published?",
        "What causes the seasons on Earth?",
    ),
    "code": (
        "Write a Python function that checks whether a string is a palindrome.",
        "Write a Python function that returns the n-th Fibonacci number.",
        "Write a JavaScript function that removes duplicates from an array.",
        "Write a SQL query that counts the orders per customer.",
    ),
    "creative": (
        "Write a short poem about the sea at night.",
        "Write the opening paragraph of a story about a lost robot.",
        "Describe a sunrise over the mountains in three sentences.",
        "Write a haiku about autumn leaves.",
    ),
    "reasoning": (
        "If a train travels 60 km in 40 minutes, what is its average speed in km/h? Explain.",
        "Tom is taller than Ann, and Ann is taller than Bob. Who is the shortest? Explain.",
        "A shop sells pens at 3 for 2 dollars. How much do 12 pens cost? Show your steps.",
        "Why does ice float on water? Reason step by step.",
    ),
    "list": (
        "List five fruits that are rich in vitamin C.",
        "List the planets of the solar system in order from the Sun.",
        "List five tips for writing clear emails.",
        "List four common sorting algorithms.",
    ),
}


def built_in_prompts(per_category: int | None = None) -> list[Prompt]:
    """The built-in set, optionally cut to the first ``per_category`` prompts of each category."""
    return [
        Prompt(category, text, i)
        for category in CATEGORIES
        for i, text in enumerate(BUILT_IN[category][:per_category])
    ]


def load_prompts(path: Path) -> list[Prompt]:
    """Read a YAML/JSON prompt file; raise UserError naming the file and item on any problem."""
    data = _parse(path)
    pairs = _pairs_from_mapping(data, path) if isinstance(data, dict) else _pairs_from_list(data, path)
    if not pairs:
        raise UserError(f"{path}: no prompts found")
    counters: dict[str, int] = {}
    prompts = []
    for category, text in pairs:
        prompts.append(Prompt(category, text, counters.get(category, 0)))
        counters[category] = counters.get(category, 0) + 1
    return prompts


def _parse(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot read prompt file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return YAML(typ="safe").load(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {getattr(err, 'problem', None) or err}") from None


def _pairs_from_mapping(data: dict, path: Path) -> list[tuple[str, str]]:
    pairs = []
    for category, texts in data.items():
        where = f"{path}: category {category!r}"
        if not isinstance(texts, list):
            raise UserError(f"{where}: expected a list of prompt strings, got {type(texts).__name__}")
        for i, text in enumerate(texts):
            pairs.append((_category(category, where), _text(text, f"{where} item {i}")))
    return pairs


def _pairs_from_list(data: object, path: Path) -> list[tuple[str, str]]:
    if not isinstance(data, list):
        raise UserError(
            f"{path}: expected a mapping {{category: [prompts]}} or a list of {{category, prompt}} items, "
            f"got {type(data).__name__}"
        )
    pairs = []
    for i, item in enumerate(data):
        where = f"{path}: item {i}"
        if not isinstance(item, dict) or set(item) != {"category", "prompt"}:
            raise UserError(f"{where}: expected exactly the keys 'category' and 'prompt', got {item!r}")
        pairs.append((_category(item["category"], where), _text(item["prompt"], where)))
    return pairs


def _category(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: category must be a non-empty string, got {value!r}")
    return value.strip()


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: prompt must be a non-empty string, got {value!r}")
    return value
