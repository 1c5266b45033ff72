"""Secret files on the hosts, readable only by the service user: the proxy's bearer token and the
cluster's llama-server API key.

The proxy's token is generated on the host itself, so it never passes through the controller, the
pyinfra output or a world-readable file. The server key is one per cluster (every llama-server and
the proxy must hold the same one), so it is copied from the controller's 0600 file
(``llamafleet/server_key.py``): uploaded into a 0700 folder, then moved into place by the helper,
which writes it through an ``O_NOFOLLOW`` descriptor as it writes tokens. Only paths appear in the
commands, never the key.
"""

from __future__ import annotations

import shlex

from pyinfra.api import FileUploadCommand, operation

from llamafleet.server_key import host_key_path, key_digest

UPLOADS = "uploads"  # the 0700 folder under the install dir that a key passes through
KEY_ROLES = ("target", "target-plain", "drafter", "proxy")  # the services that read the server key


def differs(secret: dict, seen: dict | None) -> bool:
    """Whether the host's file at ``secret["path"]`` is not what the plan wants: missing, not 0600, not
    the service user's, or (for a copied secret) not the local file's bytes (compared by sha256). A
    deploy always has the local file (it checks or generates it first); ``drift`` run where the
    cluster's key is not (a CI runner without it) checks the host's copy by mode and owner only."""
    if seen is None or seen.get("mode") != "0600" or seen.get("owner") != secret["user"]:
        return True
    if secret.get("source"):
        try:
            return seen.get("sha256") != key_digest(secret["source"])
        except OSError:
            return False
    return False


@operation()
def token_files(helper: str, secrets: list[dict], state_files: dict, install_dir: str = ""):
    """``secrets``: [{path, user, source}]. A token (no source) is created by the helper if missing,
    and a wrong mode or owner repaired, through an O_NOFOLLOW descriptor: a token path that is a link
    is refused, never chmod'ed or chown'ed through (the state reads the path itself, so a link shows
    as mode 0777). A secret with a source is uploaded to ``install_dir``/uploads (0700) and put in place
    by the helper's ``secret`` verb, which refuses a link the same way and removes the upload."""
    for secret in secrets:
        if not differs(secret, state_files.get(secret["path"])):
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


def key_users(plan, changed_secrets: list[str]) -> list[str]:
    """The units to restart because the server key they read changed on the host (its llama-servers
    and proxy read it only when they start); none when the key is unchanged."""
    if host_key_path(plan.host) not in changed_secrets:
        return []
    return [svc.unit_name for svc in plan.services if svc.role in KEY_ROLES]
