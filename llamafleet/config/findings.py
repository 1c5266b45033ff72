"""What the loader and the checks report: findings with a code, a place and a fix hint.

A finding's ``path`` is the data path inside the inventory (``("hosts", "desktop", "gpus", 1)``);
the loader turns it into ``file:line:col`` using the positions ruamel.yaml kept while parsing.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import Enum

from llamafleet.errors import UserError

PathPart = str | int
DataPath = tuple[PathPart, ...]

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class Severity(str, Enum):
    error = "error"
    warning = "warning"


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
    code: str
    message: str
    hint: str = ""
    path: DataPath = ()
    severity: Severity = Severity.error
    file: str = ""
    line: int | None = None  # 1-based
    col: int | None = None  # 1-based

    @property
    def where(self) -> str:
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.col}"

    def __str__(self) -> str:
        level = "" if self.severity is Severity.error else "warning "
        subject = f" {dotted(self.path)}:" if self.path else ":"
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{self.where} {level}{self.code}{subject} {self.message}{hint}"

    def to_json(self) -> dict:
        data = asdict(self)
        data["severity"] = self.severity.value
        data["path"] = dotted(self.path) if self.path else ""
        return data


class InventoryError(UserError):
    """The inventory has errors; ``findings`` holds every one of them (and any warnings)."""

    def __init__(self, findings: list[Finding]):
        self.findings = findings
        errors = [f for f in findings if f.severity is Severity.error]
        lines = [f"{len(errors)} error(s) in the inventory:"] + [str(f) for f in findings]
        super().__init__("\n".join(lines))
