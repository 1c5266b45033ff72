"""Folders the deploy makes for its services: an rpc-worker's tensor cache (``plan.folders``).

ggml-rpc-server with ``-c`` keeps its cache in ``$LLAMA_CACHE/rpc``, or else under the service user's
home folder, which a service user may not have (supervisord sets no HOME; a system user's home may
not exist), and then the worker does not start. So the plan sets ``LLAMA_CACHE=<install_dir>/rpc-cache``
in the worker's unit, and this step makes that folder: 0700, owned by the service user, through the
helper's ``folder`` verb (which refuses a link in its place). On Windows it is created by PowerShell;
there the folder inherits the install folder's access rules, so only its presence is checked.
"""

from __future__ import annotations

import shlex


from llamafleet.deploys.operations.common import deploy_operation, ps_quote
from llamafleet.findings import Finding, Severity


def differs(folder: dict, seen: dict | None, windows: bool) -> bool:
    """Whether the host's ``folder["path"]`` is not what the plan wants: missing or not a folder, and
    on POSIX also not mode ``folder["mode"]`` or not the service user's."""
    if not seen or seen.get("kind") != "folder":
        return True
    return not windows and (seen.get("mode") != folder["mode"] or seen.get("owner") != folder["user"])


@deploy_operation
def service_folders(helper: str, folders: list[dict], state_folders: dict, windows: bool = False):
    """``folders``: [{path, user, mode}]; ``state_folders``: the HostState ``folders`` section."""
    for folder in folders:
        if not differs(folder, state_folders.get(folder["path"]), windows):
            continue
        if windows:
            yield f"New-Item -ItemType Directory -Force -Path {ps_quote(folder['path'])} | Out-Null"
        else:
            yield f"python3 {shlex.quote(helper)} folder {shlex.quote(folder['path'])} {shlex.quote(folder['user'])}"


def planned(plan, state: dict) -> list[tuple[str, object, dict]]:
    """(name, operation, kwargs) for the host's service folders: none when the plan has none."""
    if not plan.folders:
        return []
    return [("service folders (rpc-worker cache)", service_folders, {
        "helper": plan.helper_path, "folders": [vars(f) for f in plan.folders],
        "state_folders": state.get("folders") or {}, "windows": plan.windows})]


def _differing(plan, state: dict) -> list:
    seen = state.get("folders") or {}
    return [f for f in plan.folders if differs(vars(f), seen.get(f.path), plan.windows)]


def restarts(plan, state: dict) -> list[str]:
    """The units to restart because the folder they keep their cache in was made or repaired: a worker
    started without it did not start at all, or cannot write its cache."""
    paths = {f.path for f in _differing(plan, state)}
    return [svc.unit_name for svc in plan.services if any(k == "LLAMA_CACHE" and v in paths for k, v in svc.env)]


def folder_findings(plan, state: dict) -> list[Finding]:
    """Drift: each folder the deploy makes, there as a folder with its mode and owner (POSIX)."""
    seen = state.get("folders") or {}
    findings = []
    for folder in plan.folders:
        found = seen.get(folder.path)
        expected = "folder" if plan.windows else f"folder, mode {folder.mode}, owner {folder.user}"
        if not found:
            actual = "missing"
        elif plan.windows:
            actual = found.get("kind", "?")
        else:
            actual = f"{found.get('kind')}, mode {found.get('mode')}, owner {found.get('owner')}"
        if differs(vars(folder), found, plan.windows):
            findings.append(Finding(plan.name, f"folder {folder.path}", Severity.fail, expected, actual,
                                    hint="a deploy would make the folder (or fix its mode and owner) and restart "
                                         "the rpc-worker that keeps its tensor cache there"))
        else:
            findings.append(Finding(plan.name, f"folder {folder.path}", Severity.ok, expected, expected))
    return findings
