"""Reading hosts for ``llamafleet drift`` through pyinfra's API: connect, gather the deploy's own state
fact, dry-run the deploy's operation list on it, and fetch what the findings need besides (the text
of an owned file that differs, for its diff; with ``--deep``, each model file's sha256).

Remote commands per host: one (the state fact), one more where the firewall is managed or was switched
off (its live rules); one per owned file that differs; with ``--deep``, one per model file. The comparisons
themselves are :mod:`llamafleet.drift`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pyinfra.api import Config, OperationError, State
from pyinfra.api import Inventory as PyinfraInventory
from pyinfra.api.state import BaseStateCallback

from llamafleet.config.models import Inventory
from llamafleet.config.pyinfra_groups import groups
from llamafleet.deploys.deploy import planned_operations
from llamafleet.deploys.facts.files import file_text_fact, sha256_fact
from llamafleet.deploys.facts.firewall import with_live_rules
from llamafleet.deploys.facts.host_state import helper_source, host_state_fact, state_spec
from llamafleet.deploys.operations.common import sha256_text
from llamafleet.deploys.operations.proxy import record_text
from llamafleet.deploys.plan import HostPlan
from llamafleet.errors import UserError

CONNECT_TIMEOUT = 10.0  # seconds, pyinfra's default for the TCP connect


@dataclass
class HostReading:
    """What was read from one host: the state fact, plus the extra reads drift asked for."""

    state: dict
    contents: dict[str, str | None] = field(default_factory=dict)  # owned files that differ -> their text
    hashes: dict[str, str | None] | None = None  # --deep: model path -> sha256 (None: unreadable)
    would_change: list[str] = field(default_factory=list)  # the deploy's dry run: operations with changes


def owned_files(plan: HostPlan) -> dict[str, tuple[str, str | None]]:
    """path -> (expected content, expected mode or None): the files the deploy writes and compares
    with ``file_matches``: units and configs, the helper script, the proxy's project record."""
    mode_matters = not plan.windows
    files = {p: (content, mode if mode_matters else None) for p, (content, mode) in plan.files.items()}
    files[plan.helper_path] = (helper_source(plan.helper_name), None)
    if plan.proxy_services:
        files[plan.project_record_path] = (record_text(), None)
    return files



@dataclass
class Unreadable:
    """A host drift could not read: no connection, or its state fact failed."""

    reason: str


class ConnectErrors(BaseStateCallback):
    """pyinfra reports a failed connection through callbacks only; keep its message per host."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def host_connect_error(self, state, host, error) -> None:  # noqa: ARG002 - pyinfra's signature
        self.errors[host.name] = str(error.args[0] if getattr(error, "args", None) else error)


def pyinfra_state(inventory: Inventory, path: Path, hosts: list[str], override: dict[str, str],
                  timeout: float = CONNECT_TIMEOUT) -> tuple[State, ConnectErrors]:
    """A pyinfra State over ``hosts`` with the same names and host data as inventory/cluster.py
    (``override`` as pyinfra's ``--data``: e.g. ssh_known_hosts_file). ``timeout`` bounds each part of
    connecting: the TCP connect (pyinfra's CONNECT_TIMEOUT), then paramiko's wait for the SSH banner
    and for authentication, so a host that accepts connections but never speaks SSH ends in time."""
    entries: dict[str, tuple[str, dict]] = {}
    member: dict[str, list[str]] = {}
    for group, group_entries in groups(inventory, path).items():
        for name, data in group_entries:
            if data["llamafleet_host"] in hosts:
                entries[data["llamafleet_host"]] = (name, data)
                member.setdefault(group, []).append(name)
    override = {**override, "ssh_paramiko_connect_kwargs": {"banner_timeout": timeout, "auth_timeout": timeout}}
    py_inventory = PyinfraInventory(([entries[h] for h in hosts], {}), override_data=override,
                                    **{g: (names, {}) for g, names in member.items()})
    state = State(py_inventory, Config(CONNECT_TIMEOUT=timeout))
    errors = ConnectErrors()
    state.add_callback_handler(errors)
    return state, errors


def operations_with_changes(plan: HostPlan, state: dict) -> list[str]:
    """The deploy's dry run: the names of its planned operations that would run a command, decided
    the way pyinfra decides it (an operation changes the host when its generator yields anything)."""
    return [op.name for op in planned_operations(plan, state)
            if op.when != "failed"  # rollback and report run only after a failed readiness
            and next(iter(op.operation.commands(**op.kwargs)), None) is not None]


def read_host(host, plan: HostPlan, deep: bool) -> tuple[HostReading | Unreadable, int]:
    """Read one connected host (the deploy's state fact, then what the findings need) and dry-run the
    deploy's plan on it; returns the reading and how many remote commands it took."""
    host_state = host.get_fact(host_state_fact(plan.windows), spec=state_spec(plan))
    commands = 1
    if not isinstance(host_state, dict):
        needs = "PowerShell" if plan.windows else "python3"
        return Unreadable(f"the state fact returned nothing ({needs} is required on the host)"), commands
    with_rules = with_live_rules(host, plan, host_state)  # the firewall's rules: one more command where managed or switched off
    commands, host_state = commands + (with_rules is not host_state), with_rules
    try:
        would_change = operations_with_changes(plan, host_state)
    except (UserError, OperationError) as err:
        return Unreadable(f"the deploy's dry run failed: {err}"), commands
    reading = HostReading(host_state, would_change=would_change)
    seen = host_state.get("files") or {}
    for path, (content, mode) in owned_files(plan).items():
        if (seen.get(path) or {}).get("sha256") not in (None, sha256_text(content)):
            reading.contents[path] = _file_text(host, plan, path)
            commands += 1
    if deep:
        reading.hashes = {}
        for m in plan.models:
            reading.hashes[m.path] = _file_sha256(host, plan, m.path)
            commands += 1
    return reading, commands


def _file_text(host, plan: HostPlan, path: str) -> str | None:
    lines = host.get_fact(file_text_fact(plan.windows), path=path)
    return None if lines is None else "\n".join(lines) + "\n"


def _file_sha256(host, plan: HostPlan, path: str) -> str | None:
    return host.get_fact(sha256_fact(plan.windows), path=path)
