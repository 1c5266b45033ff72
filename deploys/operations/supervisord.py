"""Services under llamafleet's own supervisord (hosts without an init system: containers, CI, tests).

One supervisord per install_dir, started by the deploy with ``supervisord -c <conf>``; programs live
in ``conf.d/``. ``supervisorctl update`` restarts exactly the programs whose config changed.
"""

from __future__ import annotations

import posixpath
import re
import shlex


from llamafleet.config.models import OS, ServiceManager
from llamafleet.deploys.operations.manager import ServiceManagerModule
from llamafleet.deploys.operations.common import deploy_operation

# supervisord's config format (supervisor.options.UnhosedConfigParser, a configparser.RawConfigParser):
# - every value is expanded with Python %-formatting (``%(here)s``, ``%(ENV_X)s``): ``%%`` is a ``%``;
# - ``;`` or ``#`` after whitespace starts an inline comment, anywhere in the line;
# - a value is trimmed, and a line break ends it (a newline cannot be written at all);
# - command= is split by ``shlex.split`` (POSIX rules); environment= by a non-POSIX ``shlex.shlex``
#   (one quoted word per value, no escapes inside quotes) that then strips quote characters off both
#   ends of each value.
_COMMENT = re.compile(r"(\s)([;#])")


def _refuse_controls(text: str) -> None:
    if any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise ValueError(f"{text!r}: a supervisord config line cannot hold a control character")


def _word(arg: str) -> str:
    """One POSIX shell word (``shlex.quote``); a ``;`` or ``#`` after whitespace gets an empty ``''``
    between them, which shlex joins away and the config parser does not read as a comment."""
    return _COMMENT.sub(r"\1''\2", shlex.quote(arg))


def command(argv: list[str] | tuple[str, ...]) -> str:
    """The value of command= that supervisord splits back into exactly ``argv``."""
    for arg in argv:
        _refuse_controls(arg)
    return " ".join(_word(arg) for arg in argv).replace("%", "%%")


def environment(pairs: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str:
    """The value of environment=: ``KEY="value",...``. A value that supervisord cannot carry is refused:
    one holding both kinds of quote, starting or ending with one (they are stripped), or holding a
    ``;``/``#`` after whitespace (a comment, even inside quotes)."""
    items = []
    for key, value in pairs:
        _refuse_controls(value)
        quote = '"' if '"' not in value else "'" if "'" not in value else None
        ends = value[:1] + value[-1:]
        if quote is None or any(c in "'\"" for c in ends) or _COMMENT.search(value):
            raise ValueError(f"supervisord's environment= cannot carry {key}={value!r} unchanged (quotes at its ends "
                             "or of both kinds, or a ';'/'#' after a space); use a systemd host, or change the value")
        items.append(f"{key}={quote}{value}{quote}")
    return ",".join(items).replace("%", "%%")


def setting(text: str) -> str:
    """A plain value (directory=, user=, a log file): ``%`` doubled; refused when the parser would
    trim it or read a comment in it."""
    _refuse_controls(text)
    if text != text.strip() or _COMMENT.search(text):
        raise ValueError(f"{text!r} cannot be written as a supervisord setting (a space at an end, or a ';'/'#' "
                         "after a space)")
    return text.replace("%", "%%")


def stale_programs(state: dict, programs) -> list[str]:
    """Programs no longer in the inventory: loaded ones, and configs left in conf.d (``state``:
    HostState ``services.supervisord``)."""
    return sorted((set(state.get("programs") or {}) | set(state.get("configs") or [])) - set(programs))


@deploy_operation
def services(conf: str, programs: list[str], changed: list[str], restart: list[str], conf_changed: bool,
             state: dict):
    """``state`` is HostState ``services.supervisord``; ``changed`` programs had their config rewritten;
    ``restart`` programs had their binary reinstalled under an unchanged config."""
    ctl = f"supervisorctl -c {shlex.quote(conf)}"
    running = state.get("programs", {})
    stale = stale_programs(state, programs)
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
        yield f"{ctl} restart {' '.join(map(shlex.quote, to_restart))}"
    stopped = [p for p in programs if p not in changed and p not in to_restart and running.get(p) != "RUNNING"]
    if stopped:
        yield f"{ctl} start {' '.join(map(shlex.quote, stopped))}"


@deploy_operation
def stop(conf: str, programs: list[str]):
    """Stop ``programs`` (a rollout stops RPC clients before their workers switch builds)."""
    if programs:
        yield f"supervisorctl -c {shlex.quote(conf)} stop {' '.join(map(shlex.quote, programs))}"


class Supervisord(ServiceManagerModule):
    kind = ServiceManager.supervisord
    systems = frozenset({OS.linux})
    template = "supervisord-program.conf.j2"
    filters = {"supervisor_command": command, "supervisor_env": environment, "supervisor": setting}

    def unit_path(self, plan, unit_name: str) -> str:
        return plan.path("supervisor", "conf.d", f"{unit_name}.conf")

    def log_dir(self, plan) -> str:
        return plan.path("supervisor", "logs")

    def host_files(self, plan) -> dict[str, str]:
        from llamafleet.deploys.render import render_supervisord_conf

        return {plan.supervisor_conf: render_supervisord_conf(plan)}

    def value_writers(self):
        return setting, lambda key, value: environment([(key, value)]), lambda arg: command([arg])

    def state_spec(self, plan, units: list[str]) -> dict:
        return {"supervisor_conf": plan.supervisor_conf}

    def service_states(self, services: dict, units: list[str]) -> dict[str, str]:
        raw = services.get("supervisord", {}).get("programs", {})
        return {u: "running" if raw.get(u) == "RUNNING" else raw.get(u, "absent") for u in units}

    def with_running(self, services: dict, units: list[str]) -> dict:
        now = services.get("supervisord", {})
        return {**services, "supervisord": {**now, "running": True,
                                            "programs": {**now.get("programs", {}), **{u: "RUNNING" for u in units}},
                                            "configs": sorted({*now.get("configs", []), *units})}}

    def down(self, services: dict) -> str | None:
        return None if (services.get("supervisord") or {}).get("running") else "supervisord itself is not running"

    def stale(self, services: dict, units: list[str]) -> dict[str, str]:
        state = services.get("supervisord") or {}
        programs = state.get("programs") or {}
        return {name: programs.get(name, "configured") for name in stale_programs(state, units)}

    def services_call(self, plan, services_state: dict, changes, restart: list[str]):
        return ("supervisord programs", services, {
            "conf": plan.supervisor_conf, "programs": [s.unit_name for s in plan.services], "changed": changes.units,
            "restart": restart, "conf_changed": plan.supervisor_conf in changes.files,
            "state": services_state.get("supervisord", {})})

    def stop_call(self, plan, units: list[str]):
        return stop, {"conf": plan.supervisor_conf, "programs": units}

    def wait_spec(self, plan, units: list[str]) -> dict:
        # A program answers before supervisord counts it RUNNING (startsecs); the deploy ends only
        # once it does, so what it leaves behind is what drift and the next deploy read as running.
        return {"supervisord": {"conf": plan.supervisor_conf, "programs": units}}


MANAGER = Supervisord()
