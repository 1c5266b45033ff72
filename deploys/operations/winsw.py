"""Services on Windows through WinSW (a single-exe service wrapper configured by an XML file).

Per WinSW's convention each service is ``<id>.exe`` next to ``<id>.xml``: the deploy copies the
wrapper that the bootstrap script placed at ``<install_dir>\\bin\\winsw.exe``. WinSW v2 reads
install-time settings (name, start mode) only at ``install``, so a changed XML is applied by
reinstalling the service; a binary change only restarts it.
"""

from __future__ import annotations

import re
import subprocess

from pyinfra.api import operation

from llamafleet.deploys.operations.common import ps_quote, xml_text

# WinSW expands %NAME% (Environment.ExpandEnvironmentVariables) in the executable, the arguments, env
# values and paths, and there is no escape for it; a value holding one is refused rather than changed.
_EXPANDED = re.compile(r"%[A-Za-z_][A-Za-z0-9_()]*%")


def text(value: str) -> str:
    """A value for WinSW's XML: XML-escaped, and refused if WinSW would expand part of it."""
    if _EXPANDED.search(value):
        raise ValueError(f"{value!r}: WinSW would expand {_EXPANDED.search(value).group()} in it (no escape exists)")
    return xml_text(value)


def arguments(argv: list[str] | tuple[str, ...]) -> str:
    """<arguments>: one command line, quoted by the Microsoft C runtime's rules (what a Windows
    program's argv is parsed with), then escaped for XML."""
    return text(subprocess.list2cmdline(list(argv)))


def _exe(xml_path: str) -> str:
    return xml_path[: -len(".xml")] + ".exe"


@operation()
def services(install_dir: str, xml: dict, changed: list[str], restart: list[str], state: dict):
    """``xml``: service id -> XML path; ``state``: HostState ``services.winsw`` (id -> Running/Stopped/absent)."""
    wrapper = install_dir + "\\bin\\winsw.exe"
    for sid, path in sorted(xml.items()):
        exe = ps_quote(_exe(path))
        status = state.get(sid, "absent")
        if status == "absent":
            yield f"Copy-Item -Force {ps_quote(wrapper)} {exe}"
            yield f"& {exe} install"
            yield f"& {exe} start"
        elif sid in changed:
            yield f"& {exe} stop"
            yield f"& {exe} uninstall"
            yield f"& {exe} install"
            yield f"& {exe} start"
        elif sid in restart:
            yield f"& {exe} restart"
        elif status != "Running":
            yield f"& {exe} start"


@operation()
def stop(xml: dict):
    """Stop the services in ``xml`` (service id -> XML path): a rollout stops RPC clients before their
    workers switch builds. The switch that follows rewrites their XML, which reinstalls and starts them."""
    for sid, path in sorted(xml.items()):
        yield f"& {ps_quote(_exe(path))} stop"


@operation()
def remove(xml: dict):
    """Stop and uninstall the services in ``xml`` (a rollback removes the services its switch added,
    before their XML, which WinSW needs to uninstall, is deleted)."""
    for sid, path in sorted(xml.items()):
        exe = ps_quote(_exe(path))
        yield f"& {exe} stop"
        yield f"& {exe} uninstall"
