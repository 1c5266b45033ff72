"""The one vocabulary of everything llamafleet checks: :class:`Severity` and :class:`Finding`.

``validate`` checks an inventory file; ``drift``, ``doctor`` and ``model verify`` check hosts and
files against it. Each check yields findings of the one type below, and each output shape has one
formatter: ``str(finding)`` is the one-line form (``validate``, ``plan``, an invalid inventory's
error), :meth:`Finding.to_json` the JSON form of every command, and ``llamafleet.report`` renders a
whole run as a table or JUnit XML.

A finding fills the fields its check knows:

* a **host check** names the ``host`` and the ``check`` and compares ``expected`` with ``actual``
  (``detail`` holds multi-line evidence, e.g. a unified diff of a rendered unit);
* an **inventory check** has an error ``code`` (LFxxx) and a ``message``, and its place: the data
  ``path`` inside the inventory (``("hosts", "desktop", "gpus", 1)``) and ``file:line:col``, which
  the loader fills from the positions ruamel.yaml kept while parsing.

Both may carry a ``hint``: how to fix it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import Enum

PathPart = str | int
DataPath = tuple[PathPart, ...]

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class Severity(str, Enum):
    ok = "ok"  # checked and as it should be
    skipped = "skipped"  # not checkable from here; always says why, never counts as a pass
    warning = "warning"  # worth reading, does not change the exit code
    fail = "fail"  # a host differs from the inventory
    error = "error"  # the check could not run, or the inventory is invalid


def dotted(path: DataPath) -> str:
    """``("hosts", "desktop", "gpus", 1, "vram_gb")`` -> ``hosts.desktop.gpus[1].vram_gb``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out or "(document)"


@dataclass(frozen=True)
class Finding:
    """One outcome of one check; the fields are described at the top of this module."""

    host: str = ""
    check: str = ""
    severity: Severity = Severity.error
    expected: str = ""
    actual: str = ""
    hint: str = ""
    detail: str = ""
    code: str = ""
    message: str = ""
    path: DataPath = ()
    file: str = ""
    line: int | None = None  # 1-based
    col: int | None = None  # 1-based

    def __post_init__(self) -> None:
        if not isinstance(self.severity, Severity):
            raise TypeError(f"a finding's severity is a Severity, not {self.severity!r}")
        if not (self.check or self.code):
            raise TypeError("a finding names its check or its code")

    @property
    def is_problem(self) -> bool:
        """A difference or an error: what makes a run's exit code non-zero."""
        return self.severity in (Severity.fail, Severity.error)

    @property
    def where(self) -> str:
        """``file:line:col`` (or the file alone) for an inventory finding, else the host."""
        if self.line is not None:
            return f"{self.file}:{self.line}:{self.col}"
        return self.file or self.host

    @property
    def text(self) -> str:
        """What was found, in words: the message, or expected against actual."""
        if self.message:
            return self.message
        if self.expected or self.actual:
            return f"expected {self.expected}, actual {self.actual}"
        return ""

    def __str__(self) -> str:
        level = "" if self.severity is Severity.error else f"{self.severity.value} "
        subject = f" {dotted(self.path)}:" if self.path else ":"
        body = " ".join(part for part in (self.text, f"(hint: {self.hint})" if self.hint else "") if part)
        return f"{self.where} {level}{self.code or self.check}{subject} {body}".rstrip()

    def to_json(self) -> dict:
        data = asdict(self)
        data["severity"] = self.severity.value
        data["path"] = dotted(self.path) if self.path else ""
        return data


def problem(code: str, message: str, hint: str = "", path: DataPath = (),
            severity: Severity = Severity.error, **place) -> Finding:
    """An inventory finding: its code, message, fix hint and data path (``place``: file, line, col)."""
    return Finding(code=code, message=message, hint=hint, path=path, severity=severity, **place)
