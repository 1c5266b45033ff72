"""The one interface every service manager implements, and the registry that picks one.

Each service manager is one module of this package (:mod:`.systemd`, :mod:`.launchd`, :mod:`.winsw`,
:mod:`.supervisord`) that owns everything the kind decides: its slice of the plan (unit path and
name prefix, log folder, files of its own such as supervisord's main config), its unit template and
the escaping functions of its format, what the state fact reads about its services and how that
reads back, and its pyinfra operations (install and enable, restart, stop, remove). Each module
exports ``MANAGER``, an instance of :class:`ServiceManagerModule`; callers ask :func:`manager_for`
(or ``HostPlan.manager``) and never branch on the kind themselves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

from llamafleet.config.models import OS, ServiceManager

if TYPE_CHECKING:
    from llamafleet.deploys.deploy import HostChanges
    from llamafleet.deploys.plan import HostPlan, ServicePlan

# (name, pyinfra operation, kwargs): one operation call, as the deploy plans it.
Call = tuple[str, object, dict]


class ServiceManagerModule(ABC):
    kind: ServiceManager
    systems: frozenset[OS]  # the OSes it manages services on (validate's LF141)
    template: str  # the unit template in templates/
    filters: dict[str, Callable]  # Jinja filters of its format: its escaping functions
    unit_prefix: str = "llamafleet-"

    # --- its slice of the plan --------------------------------------------------------------------
    @abstractmethod
    def unit_path(self, plan: HostPlan, unit_name: str) -> str:
        """Where the unit of ``unit_name`` lives on the host."""

    def log_dir(self, plan: HostPlan) -> str:
        return plan.path("logs")

    def host_files(self, plan: HostPlan) -> dict[str, str]:
        """Files of its own besides the units (path -> content, mode 0644)."""
        return {}

    @abstractmethod
    def value_writers(self) -> tuple[Callable, Callable, Callable]:
        """(install_dir, env key and value, one argument) writers of its format: the render's own
        escaping, each raising ValueError for a value it cannot carry unchanged (validate's LF195)."""

    # --- what the state fact reads, and how it reads back -------------------------------------------
    @abstractmethod
    def state_spec(self, plan: HostPlan, units: list[str]) -> dict:
        """The state script's arguments for this manager (merged into ``state_spec``)."""

    @abstractmethod
    def service_states(self, services: dict, units: list[str]) -> dict[str, str]:
        """unit -> "running", or what the manager says instead ("absent": not known to it);
        ``services`` is the state fact's ``services`` section."""

    @abstractmethod
    def with_running(self, services: dict, units: list[str]) -> dict:
        """The ``services`` section as it reads once ``units`` are installed and running, the others
        as they were (what a rollback starts from: the switch left them so; what the steps after the
        file cache see)."""

    def down(self, services: dict) -> str | None:
        """Why no unit can run, when the manager itself is not running (None: it is, or it always is)."""
        return None

    def stale(self, services: dict, units: list[str]) -> dict[str, str]:
        """Services it runs or has a config for that the plan no longer names -> their state (these
        its :meth:`services_call` operation removes)."""
        return {}

    # --- operations ------------------------------------------------------------------------------------
    @abstractmethod
    def services_call(self, plan: HostPlan, services: dict, changes: HostChanges, restart: list[str]) -> Call:
        """Install, enable and start the units; reapply ``changes.units``; restart ``restart``
        (``services``: the state fact's ``services`` section)."""

    @abstractmethod
    def stop_call(self, plan: HostPlan, units: list[str]) -> tuple[object, dict]:
        """Stop ``units`` (a rollout stops RPC clients before their workers switch builds)."""

    def remove_call(self, plan: HostPlan, added: list[ServicePlan]) -> tuple[object, dict] | None:
        """Remove services a failed switch added, before the rollback deletes their units (None: the
        manager drops them by itself)."""
        return None

    def wait_spec(self, plan: HostPlan, units: list[str]) -> dict:
        """What readiness also waits for, besides every service answering."""
        return {}


def all_managers() -> tuple[ServiceManagerModule, ...]:
    from llamafleet.deploys.operations import launchd, supervisord, systemd, winsw

    return systemd.MANAGER, launchd.MANAGER, winsw.MANAGER, supervisord.MANAGER


def manager_for(kind: ServiceManager) -> ServiceManagerModule:
    """The module of the service manager ``kind``."""
    return next(m for m in all_managers() if m.kind is kind)
