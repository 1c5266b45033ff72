"""Services on Windows through WinSW (a single-exe service wrapper configured by an XML file).

Per WinSW's convention each service is ``<id>.exe`` next to ``<id>.xml``: the deploy copies the
wrapper that the bootstrap script placed at ``<install_dir>\\bin\\winsw.exe``. WinSW v2 reads
install-time settings (name, start mode) only at ``install``, so a changed XML is applied by
reinstalling the service; a binary change only restarts it.
"""

from __future__ import annotations

from pyinfra.api import operation

from llamafleet.deploys.operations.common import ps_quote


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
