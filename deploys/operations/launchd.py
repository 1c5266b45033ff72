"""Services as launchd daemons (macOS): plists in /Library/LaunchDaemons, managed with launchctl. A plist
is XML: every value goes through :func:`..common.xml_text`."""

from __future__ import annotations

import shlex


from llamafleet.config.models import OS, ServiceManager
from llamafleet.deploys.operations.common import deploy_operation, xml_text
from llamafleet.deploys.operations.manager import ServiceManagerModule


@deploy_operation
def services(plists: dict, changed: list[str], restart: list[str], state: dict):
    """``plists``: label -> plist path; ``state``: HostState ``services.launchd`` (label -> state)."""
    for label, path in sorted(plists.items()):
        if label in changed:
            # bootout fails when the job is not loaded yet; that is the expected first-run case.
            yield f"launchctl bootout {shlex.quote('system/' + label)} 2>/dev/null || true"
            yield f"launchctl bootstrap system {shlex.quote(path)}"
        elif label in restart:
            yield f"launchctl kickstart -k {shlex.quote('system/' + label)}"
        elif state.get(label) == "not-loaded":
            yield f"launchctl bootstrap system {shlex.quote(path)}"
        elif state.get(label) != "running":
            yield f"launchctl kickstart {shlex.quote('system/' + label)}"


@deploy_operation
def stop(labels: list[str]):
    """Stop ``labels`` (a rollout stops RPC clients before their workers switch builds)."""
    for label in labels:
        # Unloaded rather than killed: KeepAlive would start a killed job again. The switch that
        # follows rewrites its plist, which bootstraps it.
        yield f"launchctl bootout {shlex.quote('system/' + label)} 2>/dev/null || true"


class Launchd(ServiceManagerModule):
    kind = ServiceManager.launchd
    systems = frozenset({OS.macos})
    template = "launchd.plist.j2"
    filters = {"xml": xml_text}
    unit_prefix = "org.llamafleet."

    def unit_path(self, plan, unit_name: str) -> str:
        return f"/Library/LaunchDaemons/{unit_name}.plist"

    def value_writers(self):
        return xml_text, lambda key, value: xml_text(value), xml_text

    def state_spec(self, plan, units: list[str]) -> dict:
        return {"launchd": units}

    def service_states(self, services: dict, units: list[str]) -> dict[str, str]:
        raw = services.get("launchd", {})
        return {u: "running" if raw.get(u) == "running" else raw.get(u, "absent") for u in units}

    def with_running(self, services: dict, units: list[str]) -> dict:
        return {**services, "launchd": {**services.get("launchd", {}), **{u: "running" for u in units}}}

    def services_call(self, plan, services_state: dict, changes, restart: list[str]):
        return ("launchd daemons", services, {
            "plists": {s.unit_name: plan.unit_path(s) for s in plan.services}, "changed": changes.units,
            "restart": restart, "state": services_state.get("launchd", {})})

    def stop_call(self, plan, units: list[str]):
        return stop, {"labels": units}


MANAGER = Launchd()
