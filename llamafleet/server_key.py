"""Secrets read from files, and the cluster's llama-server API key.

Every secret llamafleet reads (the cluster's server key, the proxy's bearer token, a token file given
to ``bench``) comes from a file that only its owner can read: :func:`read_secret` refuses a file that
its group or other users can read, one owned by someone else, or one that is not a regular file, so
a secret never comes from a place another user could have read or written.

**The server key.** Every llama-server the deploy starts requires an API key (``--api-key-file``), so
nothing on the LAN reaches a model past the proxy's bearer token. The key is one per cluster:

- on the machine running the deploy it is read from ``security.server_key_file`` (a 0600 file the user
  keeps), or, when the inventory names none, from ``$LLAMAFLEET_STATE/clusters/<cluster>/server.key``,
  which the first deploy generates (``$LLAMAFLEET_STATE`` defaults to ``$XDG_STATE_HOME/llamafleet``,
  that is ``~/.local/state/llamafleet``);
- on each host it lives at ``<install_dir>/secrets/llama-server.key`` (:func:`host_key_path`), 0600 and
  owned by the service user (on Windows: an access list of SYSTEM, Administrators and the services'
  account only), copied there by the deploy (``deploys/operations/secrets.py``); the
  llama-servers read it with ``--api-key-file`` and the proxy with its config's ``server_key_file``.

The key is never written into a unit, a command line, a config, a log or pyinfra's output: only the
paths of its files are.
"""

from __future__ import annotations

import hashlib
import ntpath
import os
import posixpath
import re
import secrets
import stat
from pathlib import Path

from llamafleet.config.models import OS, Host, Inventory
from llamafleet.errors import UserError

STATE_ENV = "LLAMAFLEET_STATE"
HOST_KEY_NAME = "llama-server.key"
MAX_SECRET_BYTES = 4096
# What a key may be: printable ASCII without spaces, at least 16 characters (llama-server reads each
# line of the file as a key, whitespace included, and compares it with the bearer token as it is), not
# starting with '#' (b11434 reads such a line as a comment).
KEY_PATTERN = re.compile(r"(?!#)[\x21-\x7e]{16,1024}")


def read_secret(path: str | os.PathLike, what: str) -> str:
    """The secret in ``path`` (surrounding whitespace stripped), or one :class:`UserError` naming
    ``what`` and the path: the file must be a regular file of this user (or root) that no one else may
    read or write (mode 0600 or 0400), and hold a non-empty secret."""
    secret = _read_text(path, what).strip()
    if not secret:
        raise UserError(f"{what} {path}: the file is empty")
    return secret


def _read_text(path: str | os.PathLike, what: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise UserError(f"{what} {path}: {err.strerror or err}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{what} {path}: not a regular file")
        if st.st_mode & 0o077:
            raise UserError(f"{what} {path}: mode {stat.S_IMODE(st.st_mode):04o} lets other users read or change "
                            f"it; a secret must be in a file only its owner can read (chmod 600 {path})")
        if st.st_uid not in (os.geteuid(), 0):
            raise UserError(f"{what} {path}: owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})")
        if st.st_size > MAX_SECRET_BYTES:
            raise UserError(f"{what} {path}: {st.st_size} bytes; a secret file holds one line")
        raw = os.read(fd, MAX_SECRET_BYTES + 1)
    finally:
        os.close(fd)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path}: not UTF-8 text") from None


# --- the cluster's server key ---------------------------------------------------------------------


def state_root() -> Path:
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "llamafleet"


def key_source(inventory: Inventory) -> Path:
    """Where the machine running the deploy (or doctor, or bench) keeps the cluster's server key."""
    if inventory.security.server_key_file:
        return Path(inventory.security.server_key_file)
    return state_root() / "clusters" / inventory.cluster / "server.key"


def _what(inventory: Inventory) -> str:
    return "security.server_key_file" if inventory.security.server_key_file else "the cluster's server key"


def _checked_key(inventory: Inventory, path: Path) -> str:
    """The key in ``path``: the file is copied to the hosts byte for byte and llama-server reads each of
    its lines as a key as it stands, so it must be exactly one key line (a final newline or none)."""
    text = _read_text(path, _what(inventory))
    key = text[:-1] if text.endswith("\n") else text
    if not KEY_PATTERN.fullmatch(key):
        raise UserError(f"{_what(inventory)} {path}: the file must hold one line of 16 to 1024 printable "
                        "characters without spaces or tabs, not starting with '#' (llama-server reads every line "
                        "of it as a key, and a line starting with '#' as a comment)")
    return key


def ensure_server_key(inventory: Inventory) -> Path:
    """The local file holding the cluster's server key, checked; for a cluster without
    ``security.server_key_file``, generated on first use (a random 256-bit key, 0600, in a 0700 folder)."""
    path = key_source(inventory)
    if not inventory.security.server_key_file and not os.path.lexists(path):
        _generate(path)
    _checked_key(inventory, path)
    return path


def _generate(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)  # complete or absent: another deploy may have made it first
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)


def server_key(inventory: Inventory) -> str:
    """The cluster's server key, for the tools that call the deployed llama-servers directly."""
    path = key_source(inventory)
    if not inventory.security.server_key_file and not os.path.lexists(path):
        raise UserError(f"the cluster's server key is not on this machine ({path}): the deploy generates it there; "
                        f"copy it from the machine that deployed {inventory.cluster!r} (0600), set {STATE_ENV}, or "
                        "name the file in security.server_key_file")
    return _checked_key(inventory, path)


def key_digest(path: str | os.PathLike) -> str:
    """sha256 of the local key file, compared with the host state's sha256 of the host's copy."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def host_key_path(host: Host) -> str:
    """Where the server key lives on ``host``: ``<install_dir>/secrets/llama-server.key`` (on Windows
    ``<install_dir>\\secrets\\llama-server.key``, readable only by SYSTEM, Administrators and the
    services' account: ``deploys/operations/secrets.py``)."""
    join = ntpath.join if host.os is OS.windows else posixpath.join
    # Not etc/: a proxy's TLS key is etc/<service>.key, and a service may be named llama-server.
    return join(host.install_dir, "secrets", HOST_KEY_NAME)
