"""Load an inventory file: YAML with positions, the committed JSON schema, the pydantic models, then
the semantic checks. Every problem found along the way becomes a :class:`Finding` with a code,
``file:line:col``, the dotted data path and a fix hint; all of them are reported in one run.

Stages stop early only where later stages cannot run: a file that cannot be parsed has no data to
validate, and data that fails the schema has no :class:`Inventory` to check semantically.
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import stat
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from llamafleet.config import models
from llamafleet.config.models import Inventory
from llamafleet.errors import UserError, validation_problems
from llamafleet.findings import DataPath, Finding, Severity, problem

DEFAULT_INVENTORY = Path("inventory/cluster.yaml")
INVENTORY_ENV = "LLAMAFLEET_INVENTORY"

# An alias bomb is a tiny file whose aliases expand to billions of nodes. Real inventories have a
# few thousand nodes, so anything past this (counting every alias expansion) is refused.
MAX_EXPANDED_NODES = 100_000
MAX_FILE_BYTES = 4 * 1024 * 1024

KEY_CODES = ("LF010", "LF015")  # findings about a mapping key point at the key, not its value


def default_inventory_path() -> Path:
    return Path(os.environ.get(INVENTORY_ENV) or DEFAULT_INVENTORY)


@dataclass(frozen=True)
class LoadedInventory:
    """A valid inventory plus what the loader learned on the way (warnings, where it came from)."""

    inventory: Inventory
    path: Path
    warnings: list[Finding]


class InventoryError(UserError):
    """The inventory has errors; ``findings`` holds every one of them (and any warnings)."""

    def __init__(self, findings: list[Finding]):
        self.findings = findings
        errors = [f for f in findings if f.severity is Severity.error]
        lines = [f"{len(errors)} error(s) in the inventory:"] + [str(f) for f in findings]
        super().__init__("\n".join(lines))


# --- positions -----------------------------------------------------------------------------------


class Positions:
    """1-based (line, col) of every value and mapping key, by data path, as ruamel.yaml parsed them."""

    def __init__(self) -> None:
        self.values: dict[DataPath, tuple[int, int]] = {}
        self.keys: dict[DataPath, tuple[int, int]] = {}

    def record(self, node: Any, path: DataPath) -> None:
        if isinstance(node, CommentedMap):
            for key in node:
                self._remember(self.keys, path + (str(key),), _safe_lc(node.lc.key, key))
                self._remember(self.values, path + (str(key),), _safe_lc(node.lc.value, key))
        elif isinstance(node, CommentedSeq):
            for index in range(len(node)):
                self._remember(self.values, path + (index,), _safe_lc(node.lc.item, index))

    @staticmethod
    def _remember(table: dict, path: DataPath, lc: tuple[int, int] | None) -> None:
        if lc is not None:
            table[path] = (lc[0] + 1, lc[1] + 1)

    def locate(self, path: DataPath, *, key: bool = False) -> tuple[int, int]:
        """Position of ``path``; falls back to the nearest ancestor that has one (merged keys,
        missing fields), and to the top of the file."""
        if key and path in self.keys:
            return self.keys[path]
        while path:
            if path in self.values:
                return self.values[path]
            if path in self.keys:
                return self.keys[path]
            path = path[:-1]
        return (1, 1)


def _safe_lc(getter, key) -> tuple[int, int] | None:
    # Keys that arrive through a YAML merge (<<: *base) have no position of their own.
    try:
        return getter(key)
    except (KeyError, IndexError, TypeError):
        return None


# --- reading and parsing -------------------------------------------------------------------------


class NotRegularFile(ValueError):
    """A directory, socket, FIFO or device where a file was expected."""


class TooLarge(ValueError):
    """A file larger than the limit for its kind."""


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def read_limited(path: str | os.PathLike, limit: int) -> bytes:
    """At most ``limit`` bytes of the regular file at ``path``. What it is and how large it says it
    is are checked before anything is read, so a socket, a FIFO or ``/dev/zero`` is refused rather
    than read forever. Raises :class:`NotRegularFile`, :class:`TooLarge` or ``OSError``."""
    def refuse_kind(mode: int) -> None:
        for test, kind in _KINDS:
            if test(mode):
                raise NotRegularFile(f"is {kind}, not a regular file")
        if not stat.S_ISREG(mode):
            raise NotRegularFile("is not a regular file")

    refuse_kind(os.stat(path).st_mode)
    # O_NONBLOCK: a FIFO swapped in after the stat must not block the open.
    with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as handle:
        info = os.fstat(handle.fileno())
        refuse_kind(info.st_mode)
        if info.st_size > limit:
            raise TooLarge(f"is {info.st_size} bytes; the limit is {limit}")
        raw = handle.read(limit + 1)  # the size can change after fstat (and /proc files say 0)
    if len(raw) > limit:
        raise TooLarge(f"is more than {limit} bytes")
    return raw


def _read_text(path: Path, findings: list[Finding]) -> str | None:
    name = str(path)
    try:
        raw = read_limited(path, MAX_FILE_BYTES)
    except NotRegularFile as err:
        findings.append(problem("LF002", f"{err}", "pass the YAML file itself, e.g. inventory/cluster.yaml", file=name))
        return None
    except TooLarge as err:
        findings.append(problem("LF003", f"file {err}: an inventory is at most {MAX_FILE_BYTES} bytes",
                             "is this really an inventory file?", file=name))
        return None
    except FileNotFoundError:
        findings.append(problem("LF001", "no such file",
                             f"check the path, or set {INVENTORY_ENV} to your inventory file", file=name))
        return None
    except OSError as err:
        findings.append(problem("LF009", f"cannot be read: {err.strerror or err}",
                             "check the file's permissions and that it is a readable file", file=name))
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        col = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        findings.append(problem("LF004", f"not UTF-8: byte 0x{raw[err.start]:02x} cannot be decoded",
                             "save the file as UTF-8", file=name, line=line, col=col))
        return None
    if not text.strip() or all(ln.lstrip().startswith("#") or not ln.strip() for ln in text.splitlines()):
        findings.append(problem("LF003", "file is empty",
                             "start from inventory/examples/local.yaml", file=name, line=1, col=1))
        return None
    return text


def _parse(text: str, name: str, findings: list[Finding]) -> Any:
    yaml = YAML(typ="rt")  # round-trip mode keeps line/col; duplicate keys raise
    try:
        return yaml.load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = (err.problem or err.context or "YAML error").strip()
        duplicate = "duplicate key" in what
        findings.append(problem(
            "LF006" if duplicate else "LF005",
            what,
            "each key may appear once per mapping; merge the two entries" if duplicate
            else "fix the YAML syntax at this position (indentation, quotes, brackets)",
            file=name, line=line, col=col))
    except YAMLError as err:
        findings.append(problem("LF005", str(err).strip().splitlines()[-1], "fix the YAML syntax", file=name))
    except RecursionError:
        findings.append(problem("LF007", "nested too deeply to parse", "an inventory nests a few levels, not hundreds",
                             file=name, line=1, col=1))
    return None


class AliasCycle(Exception):
    """An alias refers to a node that contains it."""


def _expanded_size(node: Any, sizes: dict[int, int], stack: set[int]) -> int:
    """Node count with every alias expanded, computed once per shared object (so a bomb is
    measured without being expanded). Raises AliasCycle on a self-referencing alias."""
    if not isinstance(node, (dict, list)):
        return 1
    ident = id(node)
    if ident in sizes:
        return sizes[ident]
    if ident in stack:
        raise AliasCycle
    stack.add(ident)
    children = node.values() if isinstance(node, dict) else node
    total = 1 + sum(_expanded_size(child, sizes, stack) for child in children)
    stack.discard(ident)
    sizes[ident] = total
    return total


def _check_size(data: Any, name: str, findings: list[Finding]) -> bool:
    try:
        size = _expanded_size(data, {}, set())
    except AliasCycle:
        findings.append(problem("LF007", "an alias refers to a node that contains it (a cycle)",
                             "remove the self-referencing anchor/alias", file=name, line=1, col=1))
        return False
    if size > MAX_EXPANDED_NODES:
        findings.append(problem("LF007", f"aliases expand to {size:,} nodes (limit {MAX_EXPANDED_NODES:,}): an alias bomb?",
                             "write the data out, or use fewer nested aliases", file=name, line=1, col=1))
        return False
    return True


def _plain(node: Any, path: DataPath, positions: Positions, tags: list[DataPath]) -> Any:
    """ruamel's round-trip types -> plain JSON-like data, recording positions on the way."""
    positions.record(node, path)
    if isinstance(node, (CommentedMap, CommentedSeq)) and getattr(node.tag, "value", None):
        tags.append(path)  # a tag on a mapping or list (``!foo {...}``) asks for a type, like one on a scalar
    if isinstance(node, dict):
        return {str(k): _plain(v, path + (str(k),), positions, tags) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v, path + (i,), positions, tags) for i, v in enumerate(node)]
    if isinstance(node, TaggedScalar):
        tags.append(path)
        return str(node.value)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, (datetime.date, datetime.datetime)):
        return node.isoformat()  # a date typed where a string belongs; the schema reports it if wrong
    return str(node)


# --- schema and model validation -----------------------------------------------------------------


@lru_cache(maxsize=1)
def committed_schema() -> dict:
    return json.loads(resources.files("llamafleet.schemas").joinpath("inventory.schema.json").read_text())


_TYPE_NAMES = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
               "object": "a mapping", "array": "a list", "null": "null"}


def _describe_type(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "nothing (null)"}.get(type(value), type(value).__name__)


def _branches(error: jsonschema.ValidationError) -> list[list[jsonschema.ValidationError]]:
    by_branch: dict[int, list[jsonschema.ValidationError]] = {}
    for sub in error.context or []:
        by_branch.setdefault(sub.schema_path[0], []).append(sub)
    return list(by_branch.values())


def _matching_branch(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError] | None:
    """The one alternative of a oneOf/anyOf that the data was evidently meant to be: for tagged
    variants (services by ``role``, connections by ``type``) the variant its tag names; otherwise the
    only alternative of the right kind (a number for ``int | None``). None when that is unclear."""
    tag = (error.schema.get("discriminator") or {}).get("propertyName")
    if tag:
        if not isinstance(error.instance, dict):
            return None
        wrong_tag = lambda e: tuple(e.relative_path) == (tag,) or (e.validator == "required" and f"'{tag}'" in e.message)
        candidates = [b for b in _branches(error) if not any(wrong_tag(e) for e in b)]
    else:
        wrong_kind = lambda e: not e.relative_path and e.validator in ("type", "const")
        candidates = [b for b in _branches(error) if not any(wrong_kind(e) for e in b)]
    return candidates[0] if len(candidates) == 1 else None


def _union_findings(error: jsonschema.ValidationError, path: DataPath) -> list[Finding]:
    branch = _matching_branch(error)
    if branch is not None:
        return [f for sub in branch for f in _schema_findings(sub, path)]
    tag = (error.schema.get("discriminator") or {}).get("propertyName")
    if tag:
        allowed = sorted(error.schema["discriminator"].get("mapping", {}))
        got = error.instance.get(tag) if isinstance(error.instance, dict) else None
        if not isinstance(error.instance, dict):
            return [problem("LF012", f"must be a mapping with '{tag}:', got {_describe_type(error.instance)}", "", path)]
        what = f"unknown {tag} {got!r}" if got is not None else f"missing '{tag}'"
        hint = _suggest(str(got), allowed) if got is not None else f"set {tag} to one of those"
        return [problem("LF013", f"{what}; must be one of: {', '.join(allowed)}", hint,
                        path + (tag,) if got is not None else path)]
    options = " or ".join(_describe_schema(sub) for sub in error.validator_value)
    return [problem("LF012", f"must be {options}, got {_describe_type(error.instance)} {error.instance!r}", "", path)]


def _describe_schema(schema: dict) -> str:
    if "const" in schema:
        return repr(schema["const"])
    if "$ref" in schema:
        return "a mapping"
    return _TYPE_NAMES.get(schema.get("type", ""), "a value")


def _schema_findings(error: jsonschema.ValidationError, base: DataPath) -> list[Finding]:
    path = base + tuple(error.relative_path)
    kind = error.validator
    if kind in ("oneOf", "anyOf"):
        return _union_findings(error, path)
    if "propertyNames" in error.schema_path:
        return [problem("LF015", f"name {error.instance!r} is not allowed", _value_hint(error), path + (error.instance,))]
    if kind == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extras = sorted(set(error.instance) - set(allowed))
        return [problem("LF010", f"unknown key '{key}'", _suggest(key, allowed), path + (key,)) for key in extras]
    if kind == "required":
        missing = error.message.split("'")[1]
        return [problem("LF011", f"missing required field '{missing}'", f"add '{missing}:' here", path + (missing,))]
    if kind == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        names = " or ".join(_TYPE_NAMES.get(t, t) for t in wanted)
        # YAML reads 0123 or 1e5 as numbers: a string field holding one needs quotes.
        hint = 'quote it: "..."' if "string" in wanted and isinstance(error.instance, (int, float)) else ""
        return [problem("LF012", f"must be {names}, got {_describe_type(error.instance)} {error.instance!r}", hint, path)]
    return [problem("LF013", _value_message(error), _value_hint(error), path)]


def _value_message(error: jsonschema.ValidationError) -> str:
    value, limit = error.instance, error.validator_value
    plural = "y" if limit == 1 else "ies"
    messages = {  # built lazily: each text only makes sense for its own validator's limit
        "exclusiveMinimum": lambda: f"must be greater than {limit} (got {value!r})",
        "minimum": lambda: f"must be at least {limit} (got {value!r})",
        "exclusiveMaximum": lambda: f"must be less than {limit} (got {value!r})",
        "maximum": lambda: f"must be at most {limit} (got {value!r})",
        "enum": lambda: f"{value!r} is not one of: {', '.join(map(str, limit))}",
        "const": lambda: f"must be {limit!r} (got {value!r})",
        "pattern": lambda: f"{value!r} {_PATTERNS[limit][0]}" if limit in _PATTERNS else f"{value!r} does not match {limit}",
        "minLength": lambda: "must not be empty" if limit == 1 else f"must be at least {limit} characters",
        "maxLength": lambda: f"must be at most {limit} characters",
        "minItems": lambda: f"needs at least {limit} entr{plural}",
        "minProperties": lambda: f"needs at least {limit} entr{plural}",
    }
    return messages[error.validator]() if error.validator in messages else error.message


# What each of the models' patterns means, in words: (what is wrong, how to fix it).
_PATTERNS = {
    models.NAME_PATTERN: ("is not a valid name", "names use lower-case letters, digits and '-'"),
    models.SHA256_PATTERN: ("is not a sha256", "a sha256 is 64 lower-case hex digits (sha256sum FILE)"),
    models.BUILD_PATTERN: ("is not a llama.cpp build tag", "a llama.cpp build tag looks like b8111"),
    models.TEXT_PATTERN: ("holds a control character (newline, tab, NUL, ...)",
                          "write it on one line, without control characters"),
    models.FILE_NAME_PATTERN: ("is not a single file name",
                               "a file name only (no '/', '\\', '..', control characters or <>:\"|?*): "
                               "the path comes from the host's models_dir or install_dir"),
    models.ABS_PATH_PATTERN: ("is not an absolute path",
                              "an absolute path of the host's os: /opt/llamafleet, or C:\\llamafleet on windows"),
    models.POSIX_PATH_PATTERN: ("is not an absolute POSIX path", "an absolute path such as /etc/llamafleet/proxy.token"),
    models.ADDRESS_PATTERN: ("is not an address", "an IP address (192.168.1.10, ::1) or a host name (gpu-1.lan)"),
    models.NETWORK_PATTERN: ("is not an IP network or address", "e.g. 192.168.1.0/24, 10.0.0.5 or fd00::/64 (a host "
                             "name is not resolved when firewall rules are planned)"),
    models.URL_PATTERN: ("is not an http(s) URL with a host and no credentials",
                         "http:// or https:// only; no user:password@ (they end up in process lists and logs), "
                         "no spaces (percent-encode them)"),
    models.ENV_KEY_PATTERN: ("is not an environment variable name", "letters, digits and '_', not starting with a digit"),
    models.USER_PATTERN: ("is not a user name", "letters, digits, '_', '.', '@' and '-'"),
    models.DEVICE_PATTERN: ("is not a device name", "a backend device such as CUDA0, ROCm1, Vulkan0, MTL0 or none"),
    models.MACOS_VERSION_PATTERN: ("is not a macOS version", "the product version, e.g. 14.4.1 (sw_vers -productVersion)"),
    models.NVIDIA_DRIVER_PATTERN: ("is not an NVIDIA driver version", "e.g. 550.120 or 576.88 (nvidia-smi)"),
    models.ROCM_VERSION_PATTERN: ("is not a ROCm release", "e.g. 6.3.1 (/opt/rocm/.info/version)"),
}


def _value_hint(error: jsonschema.ValidationError) -> str:
    if error.validator == "pattern":
        return _PATTERNS.get(error.validator_value, ("", ""))[1]
    if error.validator == "enum":
        return _suggest(str(error.instance), [str(v) for v in error.validator_value])
    return ""


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"allowed: {', '.join(choices)}" if choices else ""


def _validate_schema(data: Any) -> list[Finding]:
    validator = jsonschema.Draft202012Validator(committed_schema())
    findings = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        findings.extend(_schema_findings(error, ()))
    return findings


def _pydantic_path(loc: tuple, data: Any) -> DataPath:
    """pydantic puts union tags into ``loc`` (('services', 'x', 'target', 'port')); keep only the parts
    that exist in the data, plus a final missing field name."""
    path: list = []
    node = data
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if part == "[key]":  # pydantic's marker for a bad mapping key
            continue
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif not last or not isinstance(node, dict):
            continue
        path.append(part)
    return tuple(path)


# Hints for the few rules only the pydantic models can say (validators the JSON schema cannot express).
_MODEL_HINTS = {"bind": "bind an address of the host: its LAN address, or 127.0.0.1",
                "install_dir": "an absolute, normalised path in the host os's own style",
                "models_dir": "an absolute, normalised path in the host os's own style",
                "token_file": "an absolute, normalised path",
                "usable_gb": "usable_gb is at most vram_gb",
                "active_experts": "read experts and active_experts from the GGUF header (llamafleet model add)",
                "n_min": "n_min is at most n_max",
                "macos_version": "upgrade macOS to 13.3 or later, or use backend: cpu",
                "url": "http:// or https:// with an IP address or host name",
                "mirror": "http:// or https:// with an IP address or host name",
                "address": "an IP address or a DNS host name",
                "addresses": "IP addresses or DNS host names"}


def _validate_models(data: Any) -> tuple[Inventory | None, list[Finding]]:
    try:
        return Inventory.model_validate(data), []
    except ValidationError as err:
        findings = []
        for loc, message in validation_problems(err):
            path = _pydantic_path(loc, data)
            field = next((part for part in reversed(path) if isinstance(part, str)), "")
            findings.append(problem("LF014", message, _MODEL_HINTS.get(field, ""), path))
        return None, findings


# --- the whole load ------------------------------------------------------------------------------


def _locate(finding: Finding, name: str, positions: Positions) -> Finding:
    if finding.line is not None:
        return replace(finding, file=finding.file or name)
    on_key = finding.code in KEY_CODES
    line, col = positions.locate(finding.path, key=on_key)
    return replace(finding, file=name, line=line, col=col)


def check_inventory(path: str | os.PathLike) -> tuple[Inventory | None, list[Finding]]:
    """Every finding for the file at ``path`` (errors and warnings), and the inventory if it parsed
    and matched the schema."""
    # Imported here: checks -> llamafleet.config (the package) -> this module would be an import cycle.
    from llamafleet.config.checks import run_checks

    path = Path(path)
    name = str(path)
    findings: list[Finding] = []
    text = _read_text(path, findings)
    raw = _parse(text, name, findings) if text is not None else None
    if findings or not _check_size(raw, name, findings):
        return None, findings

    positions = Positions()
    tags: list[DataPath] = []
    data = _plain(raw, (), positions, tags)
    for tagged in tags:
        findings.append(problem("LF008", "YAML tags (!...) are not allowed in an inventory", "remove the tag", tagged))
    found = _validate_schema(data)
    inventory = None
    if not found:
        inventory, found = _validate_models(data)
    found += [] if inventory is None else run_checks(inventory)
    located = [_locate(f, name, positions) for f in findings + found]
    located.sort(key=lambda f: (f.line or 0, f.col or 0, f.code))
    has_errors = any(f.severity is Severity.error for f in located)
    return (None if has_errors else inventory), located


def load_inventory(path: str | os.PathLike | None = None) -> Inventory:
    """The validated inventory at ``path`` (default: ``$LLAMAFLEET_INVENTORY`` or
    ``inventory/cluster.yaml``). Raises :class:`InventoryError` listing every error."""
    return load_inventory_with_warnings(path).inventory


def load_inventory_with_warnings(path: str | os.PathLike | None = None) -> LoadedInventory:
    path = Path(path) if path is not None else default_inventory_path()
    inventory, findings = check_inventory(path)
    if inventory is None:
        raise InventoryError(findings)
    return LoadedInventory(inventory, path, findings)

