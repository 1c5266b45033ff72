"""llama.cpp at the pinned build, on POSIX and Windows hosts, through the host helper script."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pyinfra.api import FunctionCommand

from llamafleet.deploys.operations.common import deploy_operation, helper_command, ps_helper_command


class BuildReason(Enum):
    """Why the pinned build must be installed; the kind decides how (a reinstall forces the helper
    over the existing folder and restarts the services, a switch goes through the rollout)."""

    switch = "switch"  # another build, or none, is current
    install = "install"  # the current folder was installed from other artifacts
    reinstall = "reinstall"  # the installed binaries no longer agree with their install record


@dataclass(frozen=True)
class BuildChange:
    reason: BuildReason
    detail: str  # in words, e.g. "switch b8942-cpu -> b11434-cpu"

    def __str__(self) -> str:
        return self.detail


def install_reason(spec: dict, installed: dict) -> BuildChange | None:
    """Why the pinned build must be (re)installed or switched to, or None when the host matches.

    ``installed`` is the HostState ``install`` section. The record written at install time is the
    reference: the binary's own ``--version`` and hashes must still agree with it.
    """
    record = installed.get("record") or {}
    if installed.get("current") != spec["build_id"]:
        return BuildChange(BuildReason.switch, f"switch {installed.get('current') or 'nothing'} -> {spec['build_id']}")
    wanted = [a["sha256"] for a in spec["artifacts"]]
    if record.get("artifacts_sha256") != wanted:
        return BuildChange(BuildReason.install, f"install {', '.join(a['file'] for a in spec['artifacts'])} "
                                                f"(record has {record.get('artifacts') or 'none'})")
    if installed.get("version") != record.get("version"):
        return BuildChange(BuildReason.reinstall, f"reinstall: llama-server reports {installed.get('version')!r}, "
                                                  f"record says {record.get('version')!r}")
    if installed.get("binaries") != record.get("binaries"):
        return BuildChange(BuildReason.reinstall, "reinstall: binary hashes differ from the install record")
    missing = [b for b in spec["binaries"] if b not in record.get("binaries", {})]
    if missing:
        return BuildChange(BuildReason.reinstall, f"reinstall: {', '.join(missing)} missing")
    return None


def on_disk(spec: dict, installed: dict) -> bool:
    """The pinned build's folder is on the host, installed from exactly the pinned artifacts."""
    return (installed.get("installed") or {}).get(spec["build_id"]) == [a["sha256"] for a in spec["artifacts"]]


@deploy_operation
def build(helper: str, spec: dict, installed: dict, windows: bool = False):
    """Install ``spec`` (a release archive or a source build) into its own folder. ``spec["switch"]``
    false (an upgrade) leaves ``current`` alone: the rollout's :func:`switch` moves it."""
    reason = install_reason(spec, installed)
    if reason is None:
        return
    if not spec.get("switch", True) and on_disk(spec, installed):
        return  # already beside the build in use (e.g. after a rollback): only the switch is left
    command = ps_helper_command if windows else helper_command
    yield command(helper, "install", {**spec, "force": reason.reason is BuildReason.reinstall})


@deploy_operation
def switch(helper: str, install_dir: str, build_id: str, files: list[str], current: str | None,
           windows: bool = False):
    """Point ``current`` at ``build_id``, first saving the build in use and the present content of
    ``files`` (the units and configs about to be rewritten) for :func:`rollback`."""
    if current != build_id:
        yield (ps_helper_command if windows else helper_command)(
            helper, "switch", {"install_dir": install_dir, "build_id": build_id, "files": files})


@deploy_operation
def rollback(helper: str, install_dir: str, windows: bool = False):
    """Undo this run's :func:`switch`: the saved units and configs come back, ``current`` points at
    the previous build again."""
    yield (ps_helper_command if windows else helper_command)(helper, "rollback", {"install_dir": install_dir})


def verify_flags(state, host, host_name: str, bin_dir: str, build: str, services: list[dict],
                 rendered_with: str, windows: bool = False) -> bool:
    """Read the installed build's ``--help`` (the BuildHelp fact of the host's OS, now, after the
    install) and refuse any command line it does not accept. What was learned is saved for ``validate``."""
    import ntpath
    import posixpath

    from pyinfra import logger

    from llamafleet.config.builds import SERVER_BINARY, caps_for, save_learned
    from llamafleet.deploys.facts.build_help import build_help_fact, complete, learned_caps, runs_rpc_worker
    from llamafleet.deploys.flagcheck import command_line_problems
    from llamafleet.errors import UserError

    def refuse(message: str) -> bool:
        host.log_styled(f"llamafleet: {message}", fg="red", log_func=logger.error)
        return False

    fact = host.get_fact(build_help_fact(windows), bin_dir=bin_dir)
    if fact is None:
        server = (ntpath if windows else posixpath).join(bin_dir, SERVER_BINARY + (".exe" if windows else ""))
        return refuse(f"hosts.{host_name}: {server} did not print its --help")
    try:
        caps = learned_caps(build, fact, runs_rpc_worker(services))
    except UserError as err:
        return refuse(f"hosts.{host_name}: {err}")
    known = caps_for(build)
    if (known is None or known.origin == "learned") and complete(caps):
        save_learned(caps)
    problems = command_line_problems(host_name, services, caps, windows)
    for problem in problems:
        refuse(problem)
    if problems and rendered_with != build:
        refuse(f"hosts.{host_name}: these command lines were rendered with {rendered_with}'s flags; {build}'s own "
               f"were read from the installed binaries and saved: run the deploy again to render with them")
    return not problems


@deploy_operation
def check_flags(host_name: str, bin_dir: str, build: str, services: list[dict], rendered_with: str,
                windows: bool = False):
    """Before any unit is written or service restarted: every command line against the flags the
    installed binaries list (read as a fact when this runs, i.e. after the install)."""
    yield FunctionCommand(verify_flags, (host_name, bin_dir, build, services, rendered_with, windows), {})
