"""Services under llamafleet's own supervisord (hosts without an init system: containers, CI, tests).

One supervisord per install_dir, started by the deploy with ``supervisord -c <conf>``; programs live
in ``conf.d/``. ``supervisorctl update`` restarts exactly the programs whose config changed.
"""

from __future__ import annotations

import posixpath
import shlex

from pyinfra.api import operation


@operation()
def services(conf: str, programs: list[str], changed: list[str], restart: list[str], conf_changed: bool,
             state: dict):
    """``state`` is HostState ``services.supervisord``; ``changed`` programs had their config rewritten;
    ``restart`` programs had their binary reinstalled under an unchanged config."""
    ctl = f"supervisorctl -c {shlex.quote(conf)}"
    running = state.get("programs", {})
    # Programs no longer in the inventory: loaded ones, and configs left in conf.d.
    stale = sorted((set(running) | set(state.get("configs", []))) - set(programs))
    for name in stale:
        yield f"rm -f {shlex.quote(posixpath.join(posixpath.dirname(conf), 'conf.d', name + '.conf'))}"
    if not state.get("running"):
        yield f"mkdir -p {shlex.quote(posixpath.join(posixpath.dirname(conf), 'logs'))}"
        yield f"supervisord -c {shlex.quote(conf)}"  # starts every program (autostart)
        return
    if conf_changed:
        yield f"{ctl} reload"
        return
    if changed or stale:
        yield f"{ctl} update"
    to_restart = [p for p in restart if p not in changed]
    if to_restart:
        yield f"{ctl} restart {' '.join(to_restart)}"
    stopped = [p for p in programs if p not in changed and p not in to_restart and running.get(p) != "RUNNING"]
    if stopped:
        yield f"{ctl} start {' '.join(stopped)}"


@operation()
def stop(conf: str, programs: list[str]):
    """Stop ``programs`` (a rollout stops RPC clients before their workers switch builds)."""
    if programs:
        yield f"supervisorctl -c {shlex.quote(conf)} stop {' '.join(programs)}"
