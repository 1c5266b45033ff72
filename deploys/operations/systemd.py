"""Services as systemd units (Linux)."""

from __future__ import annotations

from pyinfra.api import operation


@operation()
def services(units: list[str], changed: list[str], restart: list[str], state: dict):
    """``units``: unit names (``llamafleet-x.service``); ``state``: HostState ``services.systemd``."""
    if changed:
        yield "systemctl daemon-reload"
        yield f"systemctl enable {' '.join(changed)}"
    bounce = [u for u in units if u in changed or u in restart]
    if bounce:
        yield f"systemctl restart {' '.join(bounce)}"
    stopped = [u for u in units if u not in bounce and state.get(u) != "active"]
    if stopped:
        yield f"systemctl start {' '.join(stopped)}"


@operation()
def stop(units: list[str]):
    """Stop ``units`` (a rollout stops RPC clients before their workers switch builds)."""
    if units:
        yield f"systemctl stop {' '.join(units)}"
