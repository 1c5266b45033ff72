"""Services as launchd daemons (macOS): plists in /Library/LaunchDaemons, managed with launchctl."""

from __future__ import annotations

import shlex

from pyinfra.api import operation


@operation()
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


@operation()
def stop(labels: list[str]):
    """Stop ``labels`` (a rollout stops RPC clients before their workers switch builds)."""
    for label in labels:
        # Unloaded rather than killed: KeepAlive would start a killed job again. The switch that
        # follows rewrites its plist, which bootstraps it.
        yield f"launchctl bootout {shlex.quote('system/' + label)} 2>/dev/null || true"
