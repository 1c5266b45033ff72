"""llama.cpp at the pinned build, on POSIX and Windows hosts, through the host helper script."""

from __future__ import annotations

from pyinfra.api import operation

from llamafleet.deploys.operations.common import helper_command, ps_helper_command


def install_reason(spec: dict, installed: dict) -> str | None:
    """Why the pinned build must be (re)installed or switched to, or None when the host matches.

    ``installed`` is the HostState ``install`` section. The record written at install time is the
    reference: the binary's own ``--version`` and hashes must still agree with it.
    """
    record = installed.get("record") or {}
    if installed.get("current") != spec["build_id"]:
        return f"switch {installed.get('current') or 'nothing'} -> {spec['build_id']}"
    wanted = [a["sha256"] for a in spec["artifacts"]]
    if record.get("artifacts_sha256") != wanted:
        return f"install {', '.join(a['file'] for a in spec['artifacts'])} (record has {record.get('artifacts') or 'none'})"
    if installed.get("version") != record.get("version"):
        return f"reinstall: llama-server reports {installed.get('version')!r}, record says {record.get('version')!r}"
    if installed.get("binaries") != record.get("binaries"):
        return "reinstall: binary hashes differ from the install record"
    missing = [b for b in spec["binaries"] if b not in record.get("binaries", {})]
    if missing:
        return f"reinstall: {', '.join(missing)} missing"
    return None


def _force(reason: str) -> bool:
    return reason.startswith("reinstall")


@operation()
def build(helper: str, spec: dict, installed: dict, windows: bool = False):
    """Install ``spec`` (a release archive or a source build) into its own folder and switch to it."""
    reason = install_reason(spec, installed)
    if reason is None:
        return
    command = ps_helper_command if windows else helper_command
    yield command(helper, "install", {**spec, "force": _force(reason)})
