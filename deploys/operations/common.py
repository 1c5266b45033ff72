"""The helper every OS and service-manager module shares: decide from the gathered state, yield commands.

It also owns the quoting of the formats that are not one service manager's: POSIX shell (``shlex.quote``
on every interpolated value), PowerShell (:func:`ps_quote`) and XML (:func:`xml_text`). Each service
manager's own format is quoted by its module (``systemd``, ``supervisord``, ``winsw``).

Operations never read the host themselves: they get the slice of the one :mod:`HostState
<llamafleet.deploys.facts.host_state>` fact they need, so a no-op deploy costs one remote command.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ntpath
import posixpath
import re
import shlex
from io import BytesIO
from xml.sax.saxutils import escape as xml_escape

from pyinfra.api import FileUploadCommand, operation


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def file_matches(files: dict, path: str, content: str, mode: str | None = None) -> bool:
    """True when the state shows ``path`` with exactly ``content`` (and ``mode``, when given)."""
    seen = files.get(path)
    if not seen or seen.get("sha256") != sha256_text(content):
        return False
    return mode is None or seen.get("mode") in (None, mode)


def ps_quote(text: str) -> str:
    """A PowerShell single-quoted literal: nothing inside is expanded; a quote is doubled. PowerShell
    also reads the typographic quotes (U+2018, U+2019, U+201A, U+201B) as single quotes, so they are
    doubled as well."""
    return "'" + re.sub("(['\u2018\u2019\u201a\u201b])", r"\1\1", text) + "'"


# Characters XML 1.0 cannot hold at all, not even as a character reference.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """Text for an XML element or a double- or single-quoted attribute (WinSW's XML, launchd's plist).
    Tab, newline and carriage return become character references, so a parser's attribute and line-end
    normalisation gives them back unchanged; characters XML cannot carry are refused."""
    bad = _XML_ILLEGAL.search(text)
    if bad:
        raise ValueError(f"{text!r}: XML cannot hold the character {bad.group()!r}")
    return xml_escape(text, {'"': "&quot;", "'": "&apos;", "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})


def upload_posix(path: str, content: str, mode: str):
    """mkdir, upload over SFTP (or a local copy), chmod: three commands, only when the file differs."""
    yield f"mkdir -p {shlex.quote(posixpath.dirname(path))}"
    yield FileUploadCommand(BytesIO(content.encode()), path)
    yield f"chmod {mode} {shlex.quote(path)}"


def upload_windows(path: str, content: str):
    yield f"New-Item -ItemType Directory -Force -Path {ps_quote(ntpath.dirname(path))} | Out-Null"
    yield FileUploadCommand(BytesIO(content.encode()), path.replace("\\", "/"))


def deploy_operation(body):
    """pyinfra's ``@operation()``, with the body kept where llamafleet can call it by a public name.

    Every llamafleet operation is a generator of commands. Deploys call the decorated operation as
    pyinfra intends; ``.commands(**kwargs)`` calls ``body`` itself, which yields the same commands
    without adding an operation to a deploy (a gated operation inside another one; drift's dry run).
    """
    decorated = operation()(body)
    decorated.commands = body
    return decorated


def helper_command(helper: str, verb: str, spec: dict) -> str:
    """Run one verb of the uploaded POSIX helper with a JSON argument."""
    return f"python3 {shlex.quote(helper)} {verb} {shlex.quote(json.dumps(spec, sort_keys=True))}"


def ps_b64(spec: dict) -> str:
    """JSON as base64: Windows OpenSSH hands the command to ``powershell -c``, whose command-line
    parsing strips double quotes, so Windows commands carry no double quotes at all."""
    return base64.b64encode(json.dumps(spec, sort_keys=True).encode()).decode()


def ps_helper_command(helper: str, verb: str, spec: dict) -> str:
    return f"& {ps_quote(helper)} {verb} {ps_b64(spec)}"
