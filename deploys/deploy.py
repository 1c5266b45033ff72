"""Make one host match the inventory: the body of ``deploys/cluster.py``, run by pyinfra per host.

Order: gather state (one fact) -> plan (pure) -> changes (pure) -> operations that yield only what
differs. :func:`host_changes` is also what ``drift`` reports, so both agree by construction.

A build change is a rolling, health-gated switch (:mod:`llamafleet.deploys.rollout`): hosts switch
group by group and host by host, each must pass readiness, and a failed group goes back to its
previous build. The gates between hosts are decided while the run executes (``readiness.gated``), from
the results of the operations before them (:class:`Rollout`).
"""

from __future__ import annotations

import os
import sys
import weakref
from dataclasses import dataclass, field, replace
from functools import lru_cache

from llamafleet.config.models import Inventory
from llamafleet.deploys import cache as file_cache
from llamafleet.deploys import rollout
from llamafleet.deploys.facts.host_state import helper_source, host_state_fact, state_spec
from llamafleet.deploys.facts.firewall import with_live_rules
from llamafleet.deploys.operations import cache as file_cache_ops
from llamafleet.deploys.operations import drivers as driver_ops
from llamafleet.deploys.operations import proxy as proxy_ops
from llamafleet.deploys.operations import firewall as firewall_ops
from llamafleet.deploys.operations import files as file_ops
from llamafleet.deploys.operations import folders, llama_cpp, models, readiness, secrets
from llamafleet.deploys.operations.common import file_matches
from llamafleet.deploys.plan import HostPlan, plan_host
from llamafleet import tls
from llamafleet.errors import UserError
from llamafleet.server_key import ensure_server_key, host_key_path

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

    build: llama_cpp.BuildChange | None = None
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
            "artifacts": [{"file": a.file, "url": a.url, "sha256": a.sha256, "size": a.size,
                           **file_cache.source_fields(plan, a.url, a.sha256, a.file)} for a in b.artifacts]}


def model_specs(plan: HostPlan) -> list[dict]:
    return [{"dest": m.path, "url": m.url, "sha256": m.sha256, "size": m.size,
             **file_cache.source_fields(plan, m.url, m.sha256, m.name)} for m in plan.models]


def service_states(plan: HostPlan, state: dict) -> dict[str, str]:
    """unit name -> running state, normalised across service managers ("running" or anything else)."""
    return plan.manager.service_states(state.get("services", {}), unit_names(plan))


def unit_names(plan: HostPlan) -> list[str]:
    return [svc.unit_name for svc in plan.services]


def host_changes(plan: HostPlan, state: dict) -> HostChanges:
    files = plan.files
    seen = state.get("files", {})
    mode_matters = not plan.windows
    changes = HostChanges(build=llama_cpp.install_reason(build_spec(plan), state.get("install", {})))
    changes.models = [f["dest"] for f in models.missing_files(model_specs(plan), state.get("models", {}))]
    changes.files = sorted(p for p, (content, mode) in files.items()
                           if not file_matches(seen, p, content, mode if mode_matters else None))
    if not file_matches(seen, plan.helper_path, helper_source(plan.helper_name)):
        changes.files.append(plan.helper_path)
    unit_paths = {plan.unit_path(svc): svc.unit_name for svc in plan.services}
    changes.units = sorted(unit_paths[p] for p in changes.files if p in unit_paths)
    changes.stopped = sorted(u for u, s in service_states(plan, state).items() if s != "running")
    changes.secrets = [s.path for s in plan.secrets if secrets.differs(vars(s), seen.get(s.path))]
    return changes


LLAMA_SERVER_ROLES = ("target", "target-plain", "drafter")


def wait_spec(plan: HostPlan, build: str | None = None) -> dict:
    """Readiness: every service answers, and each llama-server reports ``build`` (default: the pin;
    "" for no build check) in /props and answers one short completion (a target with a native draft:
    over its RPC worker)."""
    def probe(bind: str) -> str:  # a wildcard bind is reachable on loopback
        return "127.0.0.1" if bind in ("0.0.0.0", "::", "") else (f"[{bind}]" if ":" in bind else bind)

    http, cafiles = [], {}
    for s in plan.services:
        if s.http_health:
            cert = proxy_ops.served_certificate(plan, s)  # a TLS proxy: probed over HTTPS, trusting its certificate
            http.append(f"{'https' if cert else 'http'}://{probe(s.bind)}:{s.port}/health")
            cafiles.update({http[-1]: cert} if cert else {})
    tcp = [f"{probe(s.bind)}:{s.port}" for s in plan.services if not s.http_health]
    spec = {"http": http, "tcp": tcp, "timeout": 300, "logs": plan.path("supervisor", "logs")}
    if cafiles:
        spec["cafiles"] = cafiles
    servers = [f"http://{probe(s.bind)}:{s.port}" for s in plan.services if s.role in LLAMA_SERVER_ROLES]
    number = (plan.build.build if build is None else build).lstrip("b")
    if servers and number.isdigit():
        spec["props"] = {base: int(number) for base in servers}
        spec["completion"] = servers
        spec["key_file"] = host_key_path(plan.host)  # /props and /completion need the servers' key
    return spec | plan.manager.wait_spec(plan, unit_names(plan))


# The deploy's steps, in order. pyinfra identifies an operation by its call site, and every planned
# operation is called from the same line, so each step's fixed position here is what tells pyinfra
# that calls on different hosts (with different sets of steps) are the same operation. Inside
# "rollout" an operation's position also carries (group, phase, host position, index), and barriers
# that every host shares (_between_barriers) make pyinfra run the groups one after another and,
# within a group, the hosts one after another.
STEPS = ("helper", "cache", "driver", "build", "check", "models", "secrets", "folders", "proxy", "firewall", "rollout")
STOP, SWITCH, ROLLBACK = 0, 1, 2  # rollout phases


@dataclass(frozen=True)
class PlannedOperation:
    """One pyinfra operation call: the deploy runs them in order; tests and drift can inspect them.

    ``when``: "always"; "healthy" (rollout: only while this host's group and every group before it
    are healthy); "failed" (only after this host's group failed: rollback and report). ``tag`` names
    the operation for those gates."""

    step: str
    name: str
    operation: object  # a llamafleet operation (``common.deploy_operation``); ``.commands(**kwargs)`` yields its commands
    kwargs: dict
    position: tuple[int, ...] = ()
    when: str = "always"
    tag: str = ""


def rpc_clients(plan: HostPlan) -> list[str]:
    """Units on this host that talk to RPC workers (their command line has the build's --rpc)."""
    rpc = plan.caps.flag("rpc") if plan.caps else None
    return [svc.unit_name for svc in plan.services if rpc and rpc in svc.argv]


def planned_operations(plan: HostPlan, state: dict) -> list[PlannedOperation]:
    """The operations (with their arguments) that bring the host from ``state`` to ``plan``."""
    # The cluster's file cache comes first; the steps after it see its unit written and running.
    cache_ops, state = file_cache_ops.planned(plan, state)
    changes = host_changes(plan, state)
    windows = plan.windows
    seen = state.get("files", {})
    helper = plan.helper_path
    installed = state.get("install", {})
    current = installed.get("current")
    # An upgrade (or downgrade): install beside, switch in the rollout, roll back on failure.
    upgrade = current is not None and current != plan.build.build_id
    slot = rollout.slot(plan.inventory, plan.name)

    def at(phase: int, index: int) -> tuple[int, ...]:
        return (slot.group, phase, slot.position if phase == SWITCH else 0, index)

    ops = [PlannedOperation("helper", "llamafleet helper script", file_ops.text_files, {
        "files": {helper: (helper_source(plan.helper_name), "0755")}, "state_files": seen, "windows": windows})]
    ops += [PlannedOperation("cache", name, op, kwargs, position) for name, op, kwargs, position in cache_ops]
    ops += [PlannedOperation("driver", name, op, kwargs) for name, op, kwargs in driver_ops.planned(plan, state)]
    ops.append(PlannedOperation("build", f"llama.cpp {plan.build.build_id} ({plan.build.method})", llama_cpp.build, {
        "helper": helper, "spec": {**build_spec(plan), "switch": not upgrade}, "installed": installed,
        "windows": windows}))
    if changes.build or changes.units:
        ops.append(PlannedOperation("check", "command lines against the installed binaries", llama_cpp.check_flags, {
            "host_name": plan.name, "bin_dir": plan.path("builds", plan.build.build_id), "build": plan.build.build,
            "services": [{"service": s.service, "role": s.role, "argv": list(s.argv)} for s in plan.services],
            "rendered_with": plan.caps.build, "windows": windows}))
    ops.append(PlannedOperation("models", "model files", models.model_files, {
        "helper": helper, "files": model_specs(plan), "models_state": state.get("models", {}),
        "disk_free": state.get("disk_free", 0), "windows": windows}))
    if plan.secrets:
        ops.append(PlannedOperation("secrets", "secret files", secrets.token_files, {
            "helper": helper, "secrets": [vars(s) for s in plan.secrets], "state_files": seen,
            "install_dir": plan.host.install_dir, "windows": windows}))
    ops += [PlannedOperation("folders", name, op, kwargs) for name, op, kwargs in folders.planned(plan, state)]
    if plan.proxy_services:
        from llamafleet.deploys.operations import proxy

        ops.append(PlannedOperation("proxy", "llamafleet proxy (wheel)", proxy.project, proxy.project_kwargs(plan, state)))
    ops += [PlannedOperation("firewall", name, op, kwargs) for name, op, kwargs in firewall_ops.planned(plan, state)]
    files = plan.files
    clients = rpc_clients(plan)
    steps: list[PlannedOperation] = []  # the rollout's, placed between barriers below
    if upgrade and clients:
        steps.append(_stop(plan, clients, at(STOP, 0)))
    if upgrade:
        steps.append(PlannedOperation("rollout", f"switch {current} -> {plan.build.build_id}", llama_cpp.switch, {
            "helper": helper, "install_dir": plan.host.install_dir, "build_id": plan.build.build_id,
            "files": sorted(files), "current": current, "windows": windows}, at(SWITCH, 0), "healthy", "switch"))
    steps.append(PlannedOperation("rollout", "service units and configs", file_ops.text_files, {
        "files": files, "state_files": seen, "windows": windows}, at(SWITCH, 1), "healthy", "units"))
    restart = unit_names(plan) if changes.build and changes.build.reason is llama_cpp.BuildReason.reinstall else []
    restart += [u for u in proxy_ops.restarts(plan, changes) if u not in restart]  # its config or TLS pair
    restart += [u for u in secrets.key_users(plan, changes.secrets) if u not in restart]  # a new server key
    restart += [u for u in folders.restarts(plan, state) if u not in restart]  # a worker's cache folder made
    steps.append(_services(plan, state, changes, restart, at(SWITCH, 2)))
    if changes.build or changes.units or changes.stopped or changes.models or restart:
        steps.append(PlannedOperation("rollout", "services ready", readiness.wait_for_services, {
            "helper": helper, "spec": wait_spec(plan), "windows": windows}, at(SWITCH, 3), "healthy", "wait"))
        if upgrade:
            # What ran before: the services whose unit was on the host (a unit the new build added,
            # e.g. a plain sidecar, is removed by the rollback), on the build the install record names.
            before = replace(plan, services=[s for s in plan.services if seen.get(plan.unit_path(s))])
            previous = (installed.get("record") or {}).get("build") or ""
            everything = HostChanges(units=unit_names(before), files=sorted(before.files))
            added = [s for s in plan.services if s not in before.services]
            removal = plan.manager.remove_call(plan, added) if added else None
            if removal:
                # The services the switch installed are removed while their units (which the rollback
                # deletes) are still there (WinSW); supervisord drops removed programs at its reload.
                steps.append(PlannedOperation("rollout", "remove the services the switch added", *removal,
                                              at(ROLLBACK, 0), "failed"))
            steps += [
                PlannedOperation("rollout", f"roll back to {current}", llama_cpp.rollback, {
                    "helper": helper, "install_dir": plan.host.install_dir, "windows": windows},
                    at(ROLLBACK, 1), "failed", "rollback"),
                _services(before, _after_switch(before), everything, unit_names(before), at(ROLLBACK, 2), "failed"),
                PlannedOperation("rollout", f"services ready on {current}", readiness.wait_for_services, {
                    "helper": helper, "spec": wait_spec(before, previous) | _without_completion(), "windows": windows},
                    at(ROLLBACK, 3), "failed", "rolled back"),
            ]
        what = f"rolled back to {current} after a failed switch to {plan.build.build_id}" if upgrade \
            else "services not ready after the change"
        steps.append(PlannedOperation("rollout", "report", readiness.report_failure, {
            "message": f"hosts.{plan.name}: {what}"}, at(ROLLBACK, 4), "failed", "report"))
    return ops + _between_barriers(plan, steps)


def _between_barriers(plan: HostPlan, steps: list[PlannedOperation]) -> list[PlannedOperation]:
    """This host's rollout operations in the cluster-wide order, with a barrier after every slot
    (a group's stop phase, each of its hosts' switch, its rollback) that every host runs: pyinfra
    orders operations as a graph of each host's own sequence, so only operations that all hosts share
    keep one host's switch after another's readiness, and the next group after this one's rollback."""
    # First, every host has installed and checked its build: a refusal anywhere is known before any stop.
    out = [PlannedOperation("rollout", "rollout: every host installed and checked", readiness.barrier, {}, (-1, 0, 0, 99))]
    for g, hosts in enumerate(rollout.groups(plan.inventory)):
        label = f"rollout {'+'.join(hosts)}"
        for phase, slots, what in ((STOP, [0], lambda p: "RPC clients stopped"),
                                   (SWITCH, range(len(hosts)), lambda p: f"{hosts[p]} switched"),
                                   (ROLLBACK, [0], lambda p: "done")):
            for p in slots:
                out += [op for op in steps if op.position[:3] == (g, phase, p)]
                out.append(PlannedOperation("rollout", f"{label}: {what(p)}", readiness.barrier, {}, (g, phase, p, 99)))
    return out


def _after_switch(plan: HostPlan) -> dict:
    """The service state a rollback starts from: the switch left the services installed and running,
    so the restored units are all reapplied (supervisord: reload every program; WinSW, which reads its
    XML only at install: stop, uninstall, install and start each service)."""
    return {"services": plan.manager.with_running({}, unit_names(plan))}


def _without_completion() -> dict:
    # The build being restored served before this run; its /health, processes and /props build are
    # what the rollback waits for (its units are the ones that were running).
    return {"completion": []}


def _stop(plan: HostPlan, units: list[str], position: tuple[int, ...]) -> PlannedOperation:
    return PlannedOperation("rollout", "stop RPC clients while their workers switch builds",
                            *plan.manager.stop_call(plan, units), position, "healthy", "stop")


class Rollout:
    """One pyinfra run's rollout, shared by every host's deploy code: the operations' results by host
    and tag, read by the gates (``readiness.gated``) while the run executes."""

    def __init__(self, pyinfra_state, inventory: Inventory):
        self.state = pyinfra_state
        self.groups = rollout.groups(inventory)
        self.results: dict[str, dict[str, object]] = {}

    def _name(self, host) -> str:
        return host.data.get("llamafleet_host") or host.name

    def record(self, host_name: str, tag: str, meta) -> None:
        if tag:
            self.results.setdefault(host_name, {})[tag] = meta

    def _done(self, host_name: str, tag: str, test) -> bool:
        meta = self.results.get(host_name, {}).get(tag)
        return meta is not None and meta.is_complete() and test(meta)

    def group_failed(self, group: int) -> bool:
        hosts = self.groups[group]
        if {self._name(h) for h in self.state.failed_hosts} & set(hosts):
            return True
        return any(self._done(h, "wait", lambda m: m.did_error()) for h in hosts)

    def healthy(self, group: int) -> bool:
        return not any(self.group_failed(g) for g in range(group + 1))

    def touched(self, host_name: str) -> bool:
        return any(self._done(host_name, tag, lambda m: m.did_change() or m.did_error())
                   for tag in ("stop", "switch", "units", "services", "wait"))

    def switched(self, host_name: str) -> bool:
        return self._done(host_name, "switch", lambda m: m.did_change())

    def failure_detail(self, group: int) -> str:
        lines = []
        for h in self.groups[group]:
            meta = self.results.get(h, {}).get("wait")
            if meta is not None and meta.is_complete() and meta.did_error():
                said = [line for line in meta.stderr_lines if line.startswith("llamafleet:")]
                lines.append(f"{h}: " + (said[-1].removeprefix("llamafleet: ") if said else "not ready"))
        failed = sorted({self._name(x) for x in self.state.failed_hosts} & set(self.groups[group]))
        lines += [f"{h}: failed before its switch" for h in failed]
        return "; ".join(lines) or "a host of the group failed"

    def gate(self, planned: PlannedOperation, host_name: str):
        group = next(g for g, hosts in enumerate(self.groups) if host_name in hosts)
        if planned.when == "healthy":
            return lambda: self.healthy(group)
        if planned.tag == "rollback":
            return lambda: self.group_failed(group) and self.switched(host_name)
        return lambda: self.group_failed(group) and self.touched(host_name)


_ROLLOUTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _rollout_for(pyinfra_state, inventory: Inventory) -> Rollout:
    if pyinfra_state not in _ROLLOUTS:
        _ROLLOUTS[pyinfra_state] = Rollout(pyinfra_state, inventory)
    return _ROLLOUTS[pyinfra_state]


def _check_limit(plan: HostPlan, state: dict, pyinfra_state) -> None:
    """A target and its RPC workers switch builds together: a ``--limit`` that splits them is refused."""
    limit = getattr(pyinfra_state, "limit_hosts", None)
    current = (state.get("install") or {}).get("current")
    if limit is None or current in (None, plan.build.build_id):
        return
    in_run = {h.data.get("llamafleet_host") or h.name for h in limit}
    group = rollout.slot(plan.inventory, plan.name).hosts
    missing = [h for h in group if h not in in_run]
    if missing:
        raise UserError(f"hosts.{plan.name}: switching {current} -> {plan.build.build_id} needs "
                        f"{', '.join(missing)} in the same run: a target and its RPC workers switch builds together "
                        f"(never a target on one build over RPC to a worker on another); add "
                        f"{', '.join(missing)} to --limit (this RPC group: {', '.join(group)})")


def _learn_installed(host, plan: HostPlan, state: dict) -> HostPlan:
    """A pin with no capability data here whose build folder is already on the host (an earlier run
    installed it): read its binaries' --help now and plan with what they say."""
    from llamafleet.config.builds import save_learned
    from llamafleet.deploys.facts.build_help import build_help_fact, complete, learned_caps

    if plan.caps_note is None or plan.build.build_id not in (state.get("install") or {}).get("builds", []):
        return plan
    fact = host.get_fact(build_help_fact(plan.windows), bin_dir=plan.path("builds", plan.build.build_id))
    if fact is None:
        return plan
    caps = learned_caps(plan.build.build, fact, any(s.role == "rpc-worker" for s in plan.services))
    if complete(caps):
        save_learned(caps)
    return plan_host(plan.inventory, plan.name, caps)


def _call_at(host, position: tuple[int, ...], call):
    """``call()`` (one operation call) at ``position`` in pyinfra's operation order.

    pyinfra orders operations by their call site followed by the index of every ``host.loop`` they
    are called inside (its public way to tell apart operations called from one line). Each level of
    ``position`` is one ``host.loop`` level, entered at that index plus one: the first barrier's
    level is -1, and shifting every level by one keeps the order, as pyinfra compares them as tuples."""
    if not position:
        return call()
    meta = None
    for index in host.loop(range(position[0] + 2)):
        if index == position[0] + 1:
            meta = _call_at(host, position[1:], call)
    return meta


def deploy_host(host) -> HostChanges:
    """Queue the operations for ``host`` (the pyinfra host object of the running deploy)."""
    inventory = inventory_for(host)
    ensure_server_key(inventory)  # the cluster's llama-server key: checked, or generated on first use
    tls.ensure_pairs(inventory)  # a self-signed proxy's pair: generated once, then reused (llamafleet/tls.py)
    plan = plan_host(inventory, host.data.get("llamafleet_host") or host.name)
    state = host.get_fact(host_state_fact(plan.windows), spec=state_spec(plan))
    if state is None:
        raise UserError(f"hosts.{plan.name}: could not read the host's state "
                        f"({'PowerShell' if plan.windows else 'python3'} is required on the host)")
    plan = _learn_installed(host, plan, state)
    state = with_live_rules(host, plan, state)  # firewall rules, where managed
    if plan.caps_note:
        print(f"llamafleet deploy: hosts.{plan.name}: {plan.caps_note}", file=sys.stderr)
    _check_limit(plan, state, host.state)
    run = _rollout_for(host.state, inventory)
    group = rollout.slot(inventory, plan.name).group
    for planned in planned_operations(plan, state):
        operation, kwargs = planned.operation, dict(planned.kwargs)
        if planned.tag == "report":
            kwargs["detail"] = lambda: run.failure_detail(group)
        if planned.when != "always":
            operation, kwargs = readiness.gated, {"gate": run.gate(planned, plan.name), "operation": operation,
                                                  "kwargs": kwargs}
        if planned.tag == "wait":
            kwargs["_ignore_errors"] = True  # a failed readiness is answered by the rollback and report below
        meta = _call_at(host, (STEPS.index(planned.step), *planned.position),
                        lambda: operation(name=planned.name, **kwargs))
        run.record(plan.name, planned.tag, meta)
    return host_changes(plan, state)


def _services(plan: HostPlan, state: dict, changes: HostChanges, restart: list[str], position: tuple[int, ...] = (),
              when: str = "healthy") -> PlannedOperation:
    tag = "services" if when == "healthy" else "restart"
    call = plan.manager.services_call(plan, state.get("services", {}), changes, restart)
    return PlannedOperation("rollout", *call, position, when, tag)
