"""Secret files (the proxy's bearer token): created on the host, readable only by the service user.

The token is generated on the host itself, so it never passes through the controller, the pyinfra
output or a world-readable file.
"""

from __future__ import annotations

import shlex

from pyinfra.api import operation


@operation()
def token_files(helper: str, secrets: list[dict], state_files: dict):
    """``secrets``: [{path, user}]. The helper creates a missing token and repairs a wrong mode or
    owner through an O_NOFOLLOW descriptor: a token path that is a link is refused, never chmod'ed
    or chown'ed through (the state reads the path itself, so a link shows as mode 0777)."""
    for secret in secrets:
        seen = state_files.get(secret["path"])
        if seen is None or seen.get("mode") != "0600" or seen.get("owner") != secret["user"]:
            yield f"python3 {shlex.quote(helper)} token {shlex.quote(secret['path'])} {shlex.quote(secret['user'])}"
