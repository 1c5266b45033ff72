"""The cluster's file cache (inventory ``cache:``), planned from the inventory alone (pure).

One host, the cache host, fetches every file the cluster needs (each model file any host places, each
llama.cpp archive any host installs) from its upstream URL once, verifies its sha256, and serves it
read-only from ``<folder>/<sha256>/<name>`` through the host helper's ``serve`` verb, run as one more
service (:func:`cache_services`) and rendered like every other. Every host then fetches each file from
the cache first and from upstream only when the cache cannot give the right bytes (:func:`sources`):
the helper verifies what arrives before it replaces anything, so a cache that serves bad bytes is
skipped, never installed.

The deploy fetches the cache's files and starts its server in its own step, before any host installs
a build or a model (``deploy.py``, step "cache", ending in a barrier every host shares).
"""

from __future__ import annotations

import posixpath
from urllib.parse import quote

from llamafleet.config.models import Inventory
from llamafleet.errors import UserError

SERVICE = "file-cache"  # the service's name in the plan (unit llamafleet-file-cache)
ROLE = "cache"


def cache_host(inventory: Inventory) -> str | None:
    return inventory.cache.host if inventory.cache is not None else None


def cache_bind(inventory: Inventory) -> str:
    """The address the cache's server listens on: ``cache.bind``, else the host's ssh address."""
    cache = inventory.cache
    if cache.bind is not None:
        return cache.bind
    connection = inventory.hosts[cache.host].connection
    return getattr(connection, "address", None) or "127.0.0.1"


def cache_folder(inventory: Inventory) -> str:
    cache = inventory.cache
    return cache.folder or posixpath.join(inventory.hosts[cache.host].install_dir, "cache")


def cache_base_url(inventory: Inventory) -> str | None:
    if inventory.cache is None:
        return None
    bind = cache_bind(inventory)
    return f"http://{f'[{bind}]' if ':' in bind else bind}:{inventory.cache.port}"


def cached_path(folder: str, sha256: str, name: str) -> str:
    """Where the cache host keeps a file: content-addressed, so two files of one name never collide."""
    return posixpath.join(folder, sha256, name)


def source_fields(plan, upstream: str, sha256: str, name: str) -> dict:
    """The helper's ``sources`` for one file of ``plan``'s host: the cluster's cache, then upstream.
    Nothing without a cache, and nothing on Windows (its helper, ``lf_host.ps1``, fetches ``url`` only):
    the helper then fetches ``url``, from upstream."""
    base = cache_base_url(plan.inventory)
    if base is None or plan.windows:
        return {}
    return {"sources": [f"{base}/{sha256}/{quote(name)}", upstream]}


def cluster_files(inventory: Inventory) -> list[dict]:
    """Every file some host of the cluster fetches through the cache: {name, sha256, size (None:
    unknown), url}, each once. Windows hosts fetch from upstream (:func:`source_fields`): their files
    are not cached for them."""
    from llamafleet.deploys.plan import plan_host

    files: dict[tuple[str, str], dict] = {}
    for name in sorted(inventory.hosts):
        try:
            plan = plan_host(inventory, name)
        except UserError:
            continue  # that host's own deploy reports why it cannot be planned
        if plan.windows:
            continue
        for a in plan.build.artifacts:
            files.setdefault((a.sha256, a.file), {"name": a.file, "sha256": a.sha256, "size": a.size, "url": a.url})
        for m in plan.models:
            files.setdefault((m.sha256, m.name), {"name": m.name, "sha256": m.sha256, "size": m.size, "url": m.url})
    return [files[key] for key in sorted(files)]


def cache_fetch_specs(inventory: Inventory) -> list[dict]:
    """The helper's ``fetch`` specs that fill the cache from upstream (the cache host's own step)."""
    folder = cache_folder(inventory)
    return [{"dest": cached_path(folder, f["sha256"], f["name"]), "url": f["url"], "sources": [f["url"]],
             "sha256": f["sha256"], "size": f["size"]} for f in cluster_files(inventory)]


def cache_services(inventory: Inventory, host_name: str, helper: str, user: str, unit_prefix: str) -> list:
    """The cache's file server, on the cache host only: one more :class:`ServicePlan`."""
    from llamafleet.deploys.plan import ServicePlan

    if cache_host(inventory) != host_name:
        return []
    bind, port = cache_bind(inventory), inventory.cache.port
    argv = ("/usr/bin/env", "python3", helper, "serve", cache_folder(inventory), bind, str(port))
    return [ServicePlan(SERVICE, ROLE, unit_prefix + SERVICE, argv, (), user, port, bind, True)]
