"""Secret files (the proxy's bearer token): created on the host, readable only by the service user.

The token is generated on the host itself, so it never passes through the controller, the pyinfra
output or a world-readable file.
"""

from __future__ import annotations

import shlex

from pyinfra.api import operation


@operation()
def token_files(helper: str, secrets: list[dict], state_files: dict):
    """``secrets``: [{path, user}]. Creates missing tokens; repairs a wrong mode or owner."""
    for secret in secrets:
        seen = state_files.get(secret["path"])
        path = shlex.quote(secret["path"])
        if seen is None:
            yield f"python3 {shlex.quote(helper)} token {path} {shlex.quote(secret['user'])}"
            continue
        if seen.get("mode") != "0600":
            yield f"chmod 0600 {path}"
        if seen.get("owner") != secret["user"]:
            yield f"chown {shlex.quote(secret['user'])} {path}"
