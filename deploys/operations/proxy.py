"""The proxy host: this project, as a wheel built on the controller, installed into a venv under
install_dir. The wheel is identified by a hash of the package sources, so an unchanged project is
neither rebuilt nor reinstalled; its dependencies come from the host's configured package index."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from importlib import metadata
import shlex
import shutil
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pyinfra.api import FileUploadCommand

from llamafleet.deploys.operations.common import deploy_operation, file_matches
from llamafleet.errors import UserError
from llamafleet.rig.cache import cache_root

PACKAGES = ("llamafleet", "llamafleet.proxy", "llamafleet.deploys", "llamafleet.templates", "llamafleet.schemas")


@lru_cache(maxsize=1)
def source_hash() -> str:
    """sha256 over every file of the packages the wheel carries (names and contents)."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        folder = Path(importlib.util.find_spec(package).origin).parent
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def record_text() -> str:
    return json.dumps({"project": "llamafleet", "version": metadata.version("llamafleet"), "source_sha256": source_hash()},
                      sort_keys=True) + "\n"


@lru_cache(maxsize=1)
def build_wheel() -> Path:
    """Build (once per source hash) the project's wheel from the checkout the deploy runs from."""
    root = Path(importlib.util.find_spec("llamafleet").origin).parent.parent
    if not (root / "pyproject.toml").exists():
        raise UserError("the proxy host needs llamafleet's wheel: run the deploy from a source checkout "
                        f"(no pyproject.toml above {root})")
    out = cache_root() / "wheels" / source_hash()[:16]
    wheels = sorted(out.glob("llamafleet-*.whl"))
    if not wheels:
        # Keep the cache from growing by one wheel per edit; an hour's grace for concurrent deploys.
        for old in out.parent.glob("*") if out.parent.exists() else []:
            if time.time() - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(root)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise UserError(f"building llamafleet's wheel from {root} failed:\n{proc.stdout[-2000:]}")
        wheels = sorted(out.glob("llamafleet-*.whl"))
    return wheels[-1]


FIND_LINKS_ENV = "LLAMAFLEET_PIP_FIND_LINKS"


def pip_source() -> str:
    """Where the host's pip gets dependencies: its own index, or only a wheelhouse URL (air-gapped
    sites, the demo and the tests) when ``LLAMAFLEET_PIP_FIND_LINKS`` is set on the controller."""
    find_links = os.environ.get(FIND_LINKS_ENV)
    if find_links and urlsplit(find_links).netloc.rpartition("@")[1]:
        # it would be on the host's pip command line (ps) and in pyinfra's output
        raise UserError(f"{FIND_LINKS_ENV}: a URL with a user name or password would land on the proxy host's "
                        "command line; serve the wheelhouse without credentials (or give the host's pip a netrc)")
    return f"--no-index --find-links {shlex.quote(find_links)} " if find_links else ""


@deploy_operation
def project(venv: str, downloads: str, record_path: str, state_files: dict):
    """Install the project's wheel into ``venv`` unless the venv's record names the same sources."""
    record = record_text()
    if file_matches(state_files, record_path, record):
        return
    wheel = build_wheel()
    remote = f"{downloads}/{wheel.name}"
    yield f"mkdir -p {shlex.quote(downloads)}"
    yield f"test -x {shlex.quote(venv)}/bin/pip || python3 -m venv {shlex.quote(venv)}"
    yield FileUploadCommand(str(wheel), remote)
    yield f"{shlex.quote(venv)}/bin/pip install -q --force-reinstall --no-deps {shlex.quote(remote)}"
    yield f"{shlex.quote(venv)}/bin/pip install -q {pip_source()}{shlex.quote(remote)}"  # its dependencies
    yield f"printf %s {shlex.quote(record)} > {shlex.quote(record_path)}"


def restarts(plan, changes) -> list[str]:
    """The proxy units to restart for these changes: a proxy reads its config, certificate and key only
    when it starts."""
    from llamafleet.tls import host_paths

    changed = set(changes.files) | set(changes.secrets)
    return [svc.unit_name for svc in plan.services if svc.role == "proxy"
            and changed & {plan.proxy_config_path(svc.service), *host_paths(plan.host.install_dir, svc.service)}]


def served_certificate(plan, svc) -> str | None:
    """The certificate file a proxy unit serves on its host; None for plain HTTP (and other services)."""
    from llamafleet.tls import host_paths

    cert = host_paths(plan.host.install_dir, svc.service)[0] if svc.role == "proxy" else None
    return cert if cert in plan.certificates else None


def project_kwargs(plan, state: dict) -> dict:
    # A proxy on a windows host is refused by validate (LF194), so the plan is always a POSIX host's.
    return {"venv": plan.venv, "downloads": plan.path("downloads"),
            "record_path": plan.project_record_path, "state_files": state.get("files", {})}
