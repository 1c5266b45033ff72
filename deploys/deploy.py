"""Make one host match the inventory: the body of ``deploys/cluster.py``, run by pyinfra per host.

Order: gather state (one fact) -> plan (pure) -> changes (pure) -> operations that yield only what
differs. :func:`host_changes` is also what ``drift`` reports, so both agree by construction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

from llamafleet.config.models import Inventory, ServiceManager
from llamafleet.deploys.facts.host_state import HostState, WindowsHostState, helper_source, state_spec
from llamafleet.deploys.operations import drivers as driver_ops
from llamafleet.deploys.operations import files as file_ops
from llamafleet.deploys.operations import launchd, llama_cpp, models, readiness, secrets, supervisord, systemd, winsw
from llamafleet.deploys.operations.common import file_matches
from llamafleet.deploys.plan import HostPlan, plan_host
from llamafleet.deploys.render import rendered_files
from llamafleet.errors import UserError

INVENTORY_ENV = "LLAMAFLEET_INVENTORY"


@lru_cache(maxsize=4)
def load(path: str) -> Inventory:
    from llamafleet.config import load_inventory

    return load_inventory(path)


def inventory_for(host) -> Inventory:
    """The inventory this host came from (``inventory/cluster.py`` puts its path in the host data)."""
    path = host.data.get("llamafleet_inventory") or os.environ.get(INVENTORY_ENV)
    if not path:
        raise UserError(f"no inventory: run with inventory/cluster.py, or set {INVENTORY_ENV}")
    return load(path)


@dataclass
class HostChanges:
    """Everything that differs between the plan and the gathered state (empty = host matches)."""

    build: str | None = None
    models: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.build or self.models or self.files or self.units or self.stopped or self.secrets)


def build_spec(plan: HostPlan) -> dict:
    b = plan.build
    return {"install_dir": plan.host.install_dir, "build": b.build, "build_id": b.build_id, "backend": b.backend,
            "method": b.method, "binaries": list(b.binaries), "cmake_options": list(b.cmake_options),
            "artifacts": [{"file": a.file, "url": a.url, "sha256": a.sha256, "size": a.size} for a in b.artifacts]}


def model_specs(plan: HostPlan) -> list[dict]:
    return [{"dest": m.path, "url": m.url, "sha256": m.sha256, "size": m.size} for m in plan.models]


def service_states(plan: HostPlan, state: dict) -> dict[str, str]:
    """unit name -> running state, normalised across service managers ("running" or anything else)."""
    services = state.get("services", {})
    manager = plan.host.service_manager
    if manager is ServiceManager.supervisord:
        raw = services.get("supervisord", {}).get("programs", {})
        return {u: "running" if raw.get(u) == "RUNNING" else raw.get(u, "absent") for u in unit_names(plan)}
    if manager is ServiceManager.systemd:
        raw = services.get("systemd", {})
        return {u: "running" if raw.get(f"{u}.service") == "active" else raw.get(f"{u}.service", "absent")
                for u in unit_names(plan)}
    raw = services.get("launchd" if manager is ServiceManager.launchd else "winsw", {})
    # launchd reports "running"; Windows service states are "Running", "Stopped", ...
    return {u: "running" if raw.get(u) in ("running", "Running") else raw.get(u, "absent") for u in unit_names(plan)}


def unit_names(plan: HostPlan) -> list[str]:
    return [svc.unit_name for svc in plan.services]


def host_changes(plan: HostPlan, state: dict) -> HostChanges:
    files = rendered_files(plan)
    seen = state.get("files", {})
    mode_matters = not plan.windows
    changes = HostChanges(build=llama_cpp.install_reason(build_spec(plan), state.get("install", {})))
    changes.models = [f["dest"] for f in models.missing_files(model_specs(plan), state.get("models", {}))]
    changes.files = sorted(p for p, (content, mode) in files.items()
                           if not file_matches(seen, p, content, mode if mode_matters else None))
    if not file_matches(seen, plan.helper_path, helper_source(_helper_name(plan))):
        changes.files.append(plan.helper_path)
    unit_paths = {plan.unit_path(svc): svc.unit_name for svc in plan.services}
    changes.units = sorted(unit_paths[p] for p in changes.files if p in unit_paths)
    changes.stopped = sorted(u for u, s in service_states(plan, state).items() if s != "running")
    changes.secrets = [s.path for s in plan.secrets
                       if (seen.get(s.path) or {}).get("mode") != "0600" or seen[s.path].get("owner") != s.user]
    return changes


def _helper_name(plan: HostPlan) -> str:
    return "lf_host.ps1" if plan.windows else "lf_host.py"


def wait_spec(plan: HostPlan) -> dict:
    def probe(bind: str) -> str:  # a wildcard bind is reachable on loopback
        return "127.0.0.1" if bind in ("0.0.0.0", "::", "") else (f"[{bind}]" if ":" in bind else bind)

    http = [f"http://{probe(s.bind)}:{s.port}/health" for s in plan.services if s.http_health]
    tcp = [f"{probe(s.bind)}:{s.port}" for s in plan.services if not s.http_health]
    spec = {"http": http, "tcp": tcp, "timeout": 300, "logs": plan.path("supervisor", "logs")}
    if plan.host.service_manager is ServiceManager.supervisord:
        # A program answers before supervisord counts it RUNNING (startsecs); the deploy ends only
        # once it does, so what it leaves behind is what drift and the next deploy read as running.
        spec["supervisord"] = {"conf": plan.supervisor_conf, "programs": unit_names(plan)}
    return spec


# The deploy's steps, in order. pyinfra identifies an operation by its call site, and every planned
# operation is called from the same line, so each step's fixed position here is what tells pyinfra
# that calls on different hosts (with different sets of steps) are the same operation.
STEPS = ("helper", "driver", "build", "models", "secrets", "proxy", "units", "services", "wait")


@dataclass(frozen=True)
class PlannedOperation:
    """One pyinfra operation call: the deploy runs them in order; tests and drift can inspect them."""

    step: str
    name: str
    operation: object  # a pyinfra @operation; ``operation._inner(**kwargs)`` yields its commands
    kwargs: dict


def planned_operations(plan: HostPlan, state: dict) -> list[PlannedOperation]:
    """The operations (with their arguments) that bring the host from ``state`` to ``plan``."""
    changes = host_changes(plan, state)
    windows = plan.windows
    seen = state.get("files", {})
    helper = plan.helper_path
    ops = [PlannedOperation("helper", "llamafleet helper script", file_ops.text_files, {
        "files": {helper: (helper_source(_helper_name(plan)), "0755")}, "state_files": seen, "windows": windows})]
    ops += [PlannedOperation("driver", name, op, kwargs) for name, op, kwargs in driver_ops.planned(plan, state)]
    ops.append(PlannedOperation("build", f"llama.cpp {plan.build.build_id} ({plan.build.method})", llama_cpp.build, {
        "helper": helper, "spec": build_spec(plan), "installed": state.get("install", {}), "windows": windows}))
    ops.append(PlannedOperation("models", "model files", models.model_files, {
        "helper": helper, "files": model_specs(plan), "models_state": state.get("models", {}),
        "disk_free": state.get("disk_free", 0), "windows": windows}))
    if plan.secrets and not windows:
        ops.append(PlannedOperation("secrets", "secret files", secrets.token_files, {
            "helper": helper, "secrets": [vars(s) for s in plan.secrets], "state_files": seen}))
    if plan.proxy_services:
        from llamafleet.deploys.operations import proxy

        ops.append(PlannedOperation("proxy", "llamafleet proxy (wheel)", proxy.project, proxy.project_kwargs(plan, state)))
    ops.append(PlannedOperation("units", "service units and configs", file_ops.text_files, {
        "files": rendered_files(plan), "state_files": seen, "windows": windows}))
    restart = unit_names(plan) if changes.build and changes.build.startswith("reinstall") else []
    ops.append(_services(plan, state, changes, restart))
    if changes.build or changes.units or changes.stopped or changes.models:
        ops.append(PlannedOperation("wait", "services answer", readiness.wait_for_services, {
            "helper": helper, "spec": wait_spec(plan), "windows": windows}))
    return ops


def deploy_host(host) -> HostChanges:
    """Queue the operations for ``host`` (the pyinfra host object of the running deploy)."""
    inventory = inventory_for(host)
    plan = plan_host(inventory, host.data.get("llamafleet_host") or host.name)
    fact = WindowsHostState if plan.windows else HostState
    state = host.get_fact(fact, spec=state_spec(plan))
    if state is None:
        raise UserError(f"hosts.{plan.name}: could not read the host's state "
                        f"({'PowerShell' if plan.windows else 'python3'} is required on the host)")
    for planned in planned_operations(plan, state):
        host.loop_position.append(STEPS.index(planned.step))
        try:
            planned.operation(name=planned.name, **planned.kwargs)
        finally:
            host.loop_position.pop()
    return host_changes(plan, state)


def _services(plan: HostPlan, state: dict, changes: HostChanges, restart: list[str]) -> PlannedOperation:
    manager = plan.host.service_manager
    services = state.get("services", {})
    units = unit_names(plan)
    if manager is ServiceManager.supervisord:
        return PlannedOperation("services", "supervisord programs", supervisord.services, {
            "conf": plan.supervisor_conf, "programs": units, "changed": changes.units, "restart": restart,
            "conf_changed": plan.supervisor_conf in changes.files, "state": services.get("supervisord", {})})
    if manager is ServiceManager.systemd:
        return PlannedOperation("services", "systemd units", systemd.services, {
            "units": [f"{u}.service" for u in units], "changed": [f"{u}.service" for u in changes.units],
            "restart": [f"{u}.service" for u in restart], "state": services.get("systemd", {})})
    if manager is ServiceManager.launchd:
        return PlannedOperation("services", "launchd daemons", launchd.services, {
            "plists": {s.unit_name: plan.unit_path(s) for s in plan.services}, "changed": changes.units,
            "restart": restart, "state": services.get("launchd", {})})
    return PlannedOperation("services", "Windows services (WinSW)", winsw.services, {
        "install_dir": plan.host.install_dir, "xml": {s.unit_name: plan.unit_path(s) for s in plan.services},
        "changed": changes.units, "restart": restart, "state": services.get("winsw", {})})
