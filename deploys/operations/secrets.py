"""Secret files on the hosts, readable only by the service user: the proxy's bearer token and the
cluster's llama-server API key.

The proxy's token is generated on the host itself, so it never passes through the controller, the
pyinfra output or a world-readable file. The server key is one per cluster (every llama-server and
the proxy must hold the same one), so it is copied from the controller's 0600 file
(``llamafleet/server_key.py``): uploaded into a 0700 folder, then moved into place by the helper,
which writes it through an ``O_NOFOLLOW`` descriptor as it writes tokens. Only paths appear in the
commands, never the key.

On Windows (where only the server key is a secret: a proxy does not run there) mode and owner are an
access list: the key file, its folder and the upload folder grant SYSTEM, Administrators and the
services' account (:data:`winsw.SERVICE_ACCOUNT_SID`) and nothing else, with inheritance removed.
``lf_host.ps1``'s ``private`` verb makes the upload folder so before the upload, and its ``secret`` verb
refuses a reparse point (symbolic link, junction) in the key's or its folder's place, writes the key,
sets the access list and removes the upload. The state reads each secret's access list as SIDs
(``acl``: ``protected`` and the ``rules``), and :func:`acl_problem` says whether it is the expected one.
"""

from __future__ import annotations

import ntpath
import shlex

from pyinfra.api import FileUploadCommand

from llamafleet.deploys.operations.common import deploy_operation, ps_helper_command
from llamafleet.deploys.operations.winsw import SERVICE_ACCOUNT_SID
from llamafleet.server_key import host_key_path, key_digest

UPLOADS = "uploads"  # the 0700 folder under the install dir that a key passes through
KEY_ROLES = ("target", "target-plain", "drafter", "proxy")  # the services that read the server key


# Who may use a secret on Windows, by SID (names are translated on non-English Windows): SYSTEM,
# Administrators (the deploy's own account, over OpenSSH), the services' account.
WINDOWS_SIDS = tuple(dict.fromkeys(("S-1-5-18", "S-1-5-32-544", SERVICE_ACCOUNT_SID)))
_SID_NAMES = {"S-1-5-18": "SYSTEM", "S-1-5-32-544": "Administrators", "S-1-5-32-545": "Users",
              "S-1-1-0": "Everyone", "S-1-5-11": "Authenticated Users", "S-1-3-0": "CREATOR OWNER"}


def _sid_name(sid: str) -> str:
    return _SID_NAMES.get(sid, sid)


def acl_problem(seen: dict) -> str | None:
    """What is wrong with a Windows secret as the state reports it (``reparse_point``; ``acl``:
    ``protected``, whether inheritance is removed, and ``rules``: [{sid, type, rights}]), or None when
    it is a file whose access list grants exactly :data:`WINDOWS_SIDS`, full control, and nothing else."""
    if seen.get("reparse_point"):
        return "a reparse point (a symbolic link or junction), not the secret file"
    acl = seen.get("acl")
    if not isinstance(acl, dict):
        return "no access list read"
    rules = acl.get("rules") or []
    problems = [] if acl.get("protected") else ["inherits its folder's access rules"]
    others = sorted({r.get("sid") for r in rules if r.get("type") == "Allow"} - set(WINDOWS_SIDS))
    if others:
        problems.append("also grants " + ", ".join(_sid_name(s) for s in others))
    lacking = [s for s in WINDOWS_SIDS if not any(r.get("sid") == s and r.get("type") == "Allow" and
                                                  "FullControl" in str(r.get("rights")) for r in rules)]
    if lacking:
        problems.append("no full control for " + ", ".join(_sid_name(s) for s in lacking))
    return "; ".join(problems) or None


def access(windows: bool, user: str) -> str:
    """Who may use a secret file, in words: its mode and owner, or its Windows access list."""
    if windows:
        return "access only " + ", ".join(_sid_name(s) for s in WINDOWS_SIDS) + " (inheritance removed)"
    return f"mode 0600, owner {user}"


def seen_access(windows: bool, seen: dict | None) -> str:
    """What the state shows of a secret file's access ("missing" when it has no file there)."""
    if not seen:
        return "missing"
    if windows:
        return acl_problem(seen) or access(True, "")
    return f"mode {seen.get('mode')}, owner {seen.get('owner')}"


def differs(secret: dict, seen: dict | None) -> bool:
    """Whether the host's file at ``secret["path"]`` is not what the plan wants: missing, not 0600, not
    the service user's (on Windows, whose state reads each secret's ``acl``: not the expected access list,
    :func:`acl_problem`), or (for a copied secret) not the local file's bytes (compared by sha256). A
    deploy always has the local file (it checks or generates it first); ``drift`` run where the
    cluster's key is not (a CI runner without it) checks the host's copy by mode and owner only."""
    if seen is None:
        return True
    if "acl" in seen:
        if acl_problem(seen):
            return True
    elif seen.get("mode") != "0600" or seen.get("owner") != secret["user"]:
        return True
    digest = local_digest(secret.get("source"))
    return digest is not None and seen.get("sha256") != digest


def local_digest(source: str | None) -> str | None:
    """sha256 of a copied secret's local file; None for a secret made on the host, or where this
    machine cannot read the file (drift on a CI runner without the cluster's key)."""
    if not source:
        return None
    try:
        return key_digest(source)
    except OSError:
        return None


@deploy_operation
def token_files(helper: str, secrets: list[dict], state_files: dict, install_dir: str = "", windows: bool = False):
    """``secrets``: [{path, user, source}]. A token (no source) is created by the helper if missing,
    and a wrong mode or owner repaired, through an O_NOFOLLOW descriptor: a token path that is a link
    is refused, never chmod'ed or chown'ed through (the state reads the path itself, so a link shows
    as mode 0777). A secret with a source is uploaded to ``install_dir``/uploads (0700) and put in place
    by the helper's ``secret`` verb, which refuses a link the same way and removes the upload. On
    Windows see :func:`windows_secret`."""
    for secret in secrets:
        if not differs(secret, state_files.get(secret["path"])):
            continue
        if windows:
            yield from windows_secret(helper, secret, install_dir)
            continue
        path, user = shlex.quote(secret["path"]), shlex.quote(secret["user"])
        if not secret.get("source"):
            yield f"python3 {shlex.quote(helper)} token {path} {user}"
            continue
        folder = f"{install_dir.rstrip('/')}/{UPLOADS}"
        upload = f"{folder}/{secret['path'].rsplit('/', 1)[-1]}"
        yield f"install -d -m 0700 {shlex.quote(folder)}"
        yield FileUploadCommand(secret["source"], upload)
        yield f"python3 {shlex.quote(helper)} secret {path} {user} {shlex.quote(upload)}"


def windows_secret(helper: str, secret: dict, install_dir: str):
    """A copied secret on Windows: the upload folder made private first (``private``: access only
    :data:`WINDOWS_SIDS`, inheritance removed, a reparse point refused), so the uploaded bytes are
    never readable by others, then the helper's ``secret`` verb. A secret generated on the host (a
    proxy's token) has no Windows writer: a proxy does not run on Windows (``validate``, LF194)."""
    if not secret.get("source"):
        raise ValueError(f"{secret['path']}: a secret generated on the host (a proxy's token) has no writer on Windows")
    folder = ntpath.join(install_dir, UPLOADS)
    upload = ntpath.join(folder, ntpath.basename(secret["path"]))
    sids = list(WINDOWS_SIDS)
    yield ps_helper_command(helper, "private", {"path": folder, "sids": sids})
    yield FileUploadCommand(secret["source"], upload.replace("\\", "/"))
    yield ps_helper_command(helper, "secret", {"path": secret["path"], "upload": upload, "sids": sids})


def key_users(plan, changed_secrets: list[str]) -> list[str]:
    """The units to restart because the server key they read changed on the host (its llama-servers
    and proxy read it only when they start); none when the key is unchanged."""
    if host_key_path(plan.host) not in changed_secrets:
        return []
    return [svc.unit_name for svc in plan.services if svc.role in KEY_ROLES]
