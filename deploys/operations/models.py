"""Verified model files: resumable download, free-disk check, sha256 before an atomic rename."""

from __future__ import annotations

from pyinfra.api import OperationError

from llamafleet.deploys.operations.common import deploy_operation, helper_command, ps_helper_command


def missing_files(files: list[dict], models_state: dict) -> list[dict]:
    """The planned files whose verified stamp is absent or stale (HostState ``models`` section)."""
    return [f for f in files if not (models_state.get(f["dest"]) or {}).get("verified")]


@deploy_operation
def model_files(helper: str, files: list[dict], models_state: dict, disk_free: int, windows: bool = False):
    """``files``: [{dest, url, sha256, size}]. Fails before downloading anything that cannot fit."""
    todo = missing_files(files, models_state)
    needed = sum(f["size"] - (models_state.get(f["dest"]) or {}).get("partial_size", 0) for f in todo)
    if needed > disk_free:
        raise OperationError(f"not enough free disk for {len(todo)} model file(s): need {needed} bytes, "
                             f"{disk_free} free")
    command = ps_helper_command if windows else helper_command
    for f in todo:
        yield command(helper, "fetch", f)
