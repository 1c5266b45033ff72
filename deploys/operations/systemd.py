r"""Services as systemd units (Linux), and systemd's own quoting for the units.

systemd.syntax(7) and systemd.service(5): a quoted word takes C escapes (``\\``, ``\"``, ``\xNN``);
``%`` starts a specifier in ExecStart=, Environment=, User=, WorkingDirectory= and Description= (``%%``
is a literal ``%``); ExecStart= also substitutes ``$NAME`` and ``${NAME}`` (``$$`` is a literal ``$``).
``shlex`` quoting is not systemd quoting: ``'a\'`` or ``'blk\.'`` in single quotes are escape
errors there.
"""

from __future__ import annotations

import re
import shlex


from llamafleet.config.models import OS, ServiceManager
from llamafleet.deploys.operations.manager import ServiceManagerModule
from llamafleet.deploys.operations.common import deploy_operation


def _quoted(text: str, dollar: bool) -> str:
    out = []
    for char in text:
        if char == "\0":
            raise ValueError(f"{text!r}: a systemd unit cannot pass a NUL character")
        if char in '\\"':
            out.append("\\" + char)
        elif char == "%":
            out.append("%%")
        elif char == "$" and dollar:
            out.append("$$")
        elif ord(char) < 0x20 or char == "\x7f":
            out.append(f"\\x{ord(char):02x}")  # a newline never reaches the file as a newline
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


_PLAIN = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")  # a word systemd reads as it is written


def exec_line(argv: list[str] | tuple[str, ...]) -> str:
    """The value of ExecStart= that systemd splits back into exactly ``argv`` (plain words stay plain)."""
    if not argv or not argv[0].startswith("/"):
        raise ValueError(f"ExecStart= needs an absolute program path, got {argv[:1]!r}")
    if any(c in argv[0] for c in "'\"\\"):  # systemd's string_is_safe() on the program path
        raise ValueError(f"systemd refuses a program path with a quote or a backslash: {argv[0]!r} (install_dir)")
    return " ".join(arg if _PLAIN.match(arg) else _quoted(arg, dollar=True) for arg in argv)


def environment_line(key: str, value: str) -> str:
    """The value of one Environment= assignment (quoted as one word, so spaces and quotes stay)."""
    return _quoted(f"{key}={value}", dollar=False)


def setting(text: str) -> str:
    """An unquoted setting (User=, WorkingDirectory=, Description=): specifiers escaped. Such a value
    cannot start or end with a space (trimmed), end in a backslash (a line continuation) or hold a
    control character, and is refused if it does."""
    if text != text.strip() or text.endswith("\\") or any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise ValueError(f"{text!r} cannot be written as an unquoted systemd setting")
    return text.replace("%", "%%")


@deploy_operation
def services(units: list[str], changed: list[str], restart: list[str], state: dict):
    """``units``: unit names (``llamafleet-x.service``); ``state``: HostState ``services.systemd``."""
    if changed:
        yield "systemctl daemon-reload"
        yield f"systemctl enable {' '.join(map(shlex.quote, changed))}"
    bounce = [u for u in units if u in changed or u in restart]
    if bounce:
        yield f"systemctl restart {' '.join(map(shlex.quote, bounce))}"
    stopped = [u for u in units if u not in bounce and state.get(u) != "active"]
    if stopped:
        yield f"systemctl start {' '.join(map(shlex.quote, stopped))}"


@deploy_operation
def stop(units: list[str]):
    """Stop ``units`` (a rollout stops RPC clients before their workers switch builds)."""
    if units:
        yield f"systemctl stop {' '.join(map(shlex.quote, units))}"


class Systemd(ServiceManagerModule):
    kind = ServiceManager.systemd
    systems = frozenset({OS.linux})
    template = "systemd.service.j2"
    filters = {"systemd_exec": exec_line, "systemd_env": environment_line, "systemd": setting}

    def unit_path(self, plan, unit_name: str) -> str:
        return f"/etc/systemd/system/{unit_name}.service"

    def value_writers(self):
        return ((lambda d: (setting(d), exec_line([d + "/llama-server"]))), environment_line,
                lambda a: exec_line(["/llama-server", a]))

    def state_spec(self, plan, units: list[str]) -> dict:
        return {"systemd": _units(units)}

    def service_states(self, services: dict, units: list[str]) -> dict[str, str]:
        raw = services.get("systemd", {})
        return {u: "running" if raw.get(f"{u}.service") == "active" else raw.get(f"{u}.service", "absent") for u in units}

    def with_running(self, services: dict, units: list[str]) -> dict:
        return {**services, "systemd": {**services.get("systemd", {}), **{u: "active" for u in _units(units)}}}

    def services_call(self, plan, services_state: dict, changes, restart: list[str]):
        return ("systemd units", services, {
            "units": _units(s.unit_name for s in plan.services), "changed": _units(changes.units),
            "restart": _units(restart), "state": services_state.get("systemd", {})})

    def stop_call(self, plan, units: list[str]):
        return stop, {"units": _units(units)}


def _units(names) -> list[str]:
    return [f"{name}.service" for name in names]


MANAGER = Systemd()
