"""Services on Windows through WinSW (a single-exe service wrapper configured by an XML file).

Per WinSW's convention each service is ``<id>.exe`` next to ``<id>.xml``: the deploy copies the
wrapper that the bootstrap script placed at ``<install_dir>\\bin\\winsw.exe``. WinSW v2 reads
install-time settings (name, start mode) only at ``install``, so a changed XML is applied by
reinstalling the service; a binary change only restarts it.
"""

from __future__ import annotations

import re
import subprocess


from llamafleet.config.models import OS, ServiceManager
from llamafleet.deploys.operations.common import deploy_operation, ps_quote, xml_text
from llamafleet.deploys.operations.manager import ServiceManagerModule

# WinSW expands %NAME% (Environment.ExpandEnvironmentVariables) in the executable, the arguments, env
# values and paths, and there is no escape for it; a value holding one is refused rather than changed.
_EXPANDED = re.compile(r"%[A-Za-z_][A-Za-z0-9_()]*%")
# The account the services run as, by its SID: LocalSystem, as winsw.xml.j2 names no <serviceaccount>.
SERVICE_ACCOUNT_SID = "S-1-5-18"


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


@deploy_operation
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


@deploy_operation
def stop(xml: dict):
    """Stop the services in ``xml`` (service id -> XML path): a rollout stops RPC clients before their
    workers switch builds. The switch that follows rewrites their XML, which reinstalls and starts them."""
    for sid, path in sorted(xml.items()):
        yield f"& {ps_quote(_exe(path))} stop"


@deploy_operation
def remove(xml: dict):
    """Stop and uninstall the services in ``xml`` (a rollback removes the services its switch added,
    before their XML, which WinSW needs to uninstall, is deleted)."""
    for sid, path in sorted(xml.items()):
        exe = ps_quote(_exe(path))
        yield f"& {exe} stop"
        yield f"& {exe} uninstall"


class WinSW(ServiceManagerModule):
    kind = ServiceManager.windows_service
    systems = frozenset({OS.windows})
    template = "winsw.xml.j2"
    filters = {"winsw": text, "winsw_args": arguments}

    def unit_path(self, plan, unit_name: str) -> str:
        return plan.path("services", unit_name, f"{unit_name}.xml")

    def value_writers(self):
        return text, lambda key, value: text(value), lambda arg: arguments([arg])

    def state_spec(self, plan, units: list[str]) -> dict:
        return {"winsw": units}

    def service_states(self, services: dict, units: list[str]) -> dict[str, str]:
        raw = services.get("winsw", {})  # Windows service states: "Running", "Stopped", ...
        return {u: "running" if raw.get(u) == "Running" else raw.get(u, "absent") for u in units}

    def with_running(self, services: dict, units: list[str]) -> dict:
        return {**services, "winsw": {**services.get("winsw", {}), **{u: "Running" for u in units}}}

    def services_call(self, plan, services_state: dict, changes, restart: list[str]):
        return ("Windows services (WinSW)", services, {
            "install_dir": plan.host.install_dir, "xml": _xml(plan, plan.services), "changed": changes.units,
            "restart": restart, "state": services_state.get("winsw", {})})

    def stop_call(self, plan, units: list[str]):
        return stop, {"xml": _xml(plan, [s for s in plan.services if s.unit_name in units])}

    def remove_call(self, plan, added):
        # WinSW uninstalls a service through its XML, which the rollback then deletes.
        return remove, {"xml": _xml(plan, added)}


def _xml(plan, services) -> dict[str, str]:
    return {s.unit_name: plan.unit_path(s) for s in services}


MANAGER = WinSW()
