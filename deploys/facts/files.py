"""One file's text or sha256, for what the state fact does not carry: drift reads an owned file that
differs (for its diff) and, with ``--deep``, re-hashes model files.

POSIX hosts use pyinfra's own ``FileContents`` and ``Sha256File``; Windows hosts (OpenSSH into
PowerShell) use the two facts below, which answer the same way: None when the file does not exist.
"""

from __future__ import annotations

from pyinfra.api import FactBase
from pyinfra.facts.files import FileContents, Sha256File

from llamafleet.deploys.operations.common import ps_quote

MISSING = "llamafleet-missing-file"  # what the Windows facts print for a file that does not exist


class WindowsFileText(FactBase):
    """A file's lines on a Windows host (None when it does not exist)."""

    shell_executable = None  # run by PowerShell itself, not wrapped in sh -c

    def command(self, path: str) -> str:
        quoted = ps_quote(path)
        return f"if (Test-Path -LiteralPath {quoted}) {{ Get-Content -LiteralPath {quoted} }} else {{ '{MISSING}' }}"

    def process(self, output):
        return None if list(output) == [MISSING] else list(output)


class WindowsSha256File(FactBase):
    """A file's sha256 (lower-case hex) on a Windows host, or None when it does not exist."""

    shell_executable = None

    def command(self, path: str) -> str:
        quoted = ps_quote(path)
        return (f"if (Test-Path -LiteralPath {quoted}) {{ (Get-FileHash -Algorithm SHA256 -LiteralPath {quoted}).Hash.ToLower() }}"
                f" else {{ '{MISSING}' }}")

    def process(self, output):
        value = "".join(output).strip()
        return None if value == MISSING else value


def file_text_fact(windows: bool) -> type[FactBase]:
    """The fact whose value is a file's lines (None: no such file)."""
    return WindowsFileText if windows else FileContents


def sha256_fact(windows: bool) -> type[FactBase]:
    """The fact whose value is a file's sha256 (None: no such file)."""
    return WindowsSha256File if windows else Sha256File
