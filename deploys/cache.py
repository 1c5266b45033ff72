"""The cluster's file cache (inventory ``cache:``), planned from the inventory alone (pure).

One host, the cache host (or, with ``host: deployer``, the machine that runs the deploy:
:mod:`.deployer_cache`), fetches every file the cluster needs (each model file a host places, each
llama.cpp archive one installs, Windows hosts' included) from its upstream URL once, verifies its sha256, and
serves it read-only as ``/<sha256>/<name>`` through the host helper's ``serve`` verb, run as one more
service (:func:`cache_services`) and rendered like every other. With ``cache.peers``, every other Linux or
macOS host reached over ssh (a Windows host's helper has no ``serve``) serves the verified files it holds itself (its ``models_dir`` and downloaded
archives) the same way. A host fetches each file from the cache first, then from the peers whose plan
places that file, then from upstream (:func:`source_fields`): the helper verifies what arrives before
it replaces anything, so a source that serves bad bytes is skipped, never installed, and the servers
only ever send files whose verified stamp still matches.

The deploy fills the cache and starts the servers in its own step, before any host installs a build
or a model (``deploy.py``, step "cache", ending in a barrier every host shares).
"""

from __future__ import annotations

import posixpath
from urllib.parse import quote

from llamafleet.config.cache_checks import DEPLOYER  # cache.host: the deploying machine (:mod:`.deployer_cache`)
from llamafleet.config.checks import LOOPBACK
from llamafleet.config.models import OS, Inventory
from llamafleet.errors import UserError

SERVICE = "file-cache"  # the service's name in the plan (unit llamafleet-file-cache)
ROLE = "cache"


def cache_host(inventory: Inventory) -> str | None:
    """The cache host's name (``deployer``: no host of the inventory; the deploy's own machine)."""
    return inventory.cache.host if inventory.cache is not None else None


def on_deployer(inventory: Inventory) -> bool:
    return cache_host(inventory) == DEPLOYER


def cache_bind(inventory: Inventory) -> str:
    """The address the cache's server listens on: ``cache.bind``, else the host's ssh address."""
    cache = inventory.cache
    if cache.bind is not None or on_deployer(inventory):  # validate requires it for the deployer (LF214)
        return cache.bind
    connection = inventory.hosts[cache.host].connection
    return getattr(connection, "address", None) or "127.0.0.1"


def cache_folder(inventory: Inventory) -> str:
    cache = inventory.cache
    if cache.folder:
        return cache.folder
    if on_deployer(inventory):
        from llamafleet.rig.cache import cache_root  # $LLAMAFLEET_CACHE, the project's one local cache

        return str(cache_root() / "files")
    return posixpath.join(inventory.hosts[cache.host].install_dir, "cache")


def peer_hosts(inventory: Inventory) -> list[str]:
    """With ``cache.peers``: every other Linux or macOS host reached over ssh at an address the others
    can reach (not loopback). Each serves what it holds on ``cache.port`` at its ssh address."""
    cache = inventory.cache
    if cache is None or not cache.peers:
        return []
    return [name for name, host in sorted(inventory.hosts.items())
            if name != cache.host and host.os is not OS.windows and host.connection.type == "ssh"
            and host.connection.address not in LOOPBACK]


def _base_url(address: str, port: int) -> str:
    return f"http://{f'[{address}]' if ':' in address else address}:{port}"


def cache_base_url(inventory: Inventory) -> str | None:
    if inventory.cache is None:
        return None
    return _base_url(cache_bind(inventory), inventory.cache.port)


def cached_path(folder: str, sha256: str, name: str) -> str:
    """Where the cache host keeps a file: content-addressed, so two files of one name never collide."""
    return posixpath.join(folder, sha256, name)


def _held(inventory: Inventory) -> dict[str, tuple]:
    """host -> (the (sha256, name) of every file its plan places, its archives, its model files)."""
    from llamafleet.deploys.plan import plan_host

    if _HELD.get("inventory") is inventory:
        return _HELD["held"]
    held = {}
    for name in sorted(inventory.hosts):
        try:
            plan = plan_host(inventory, name)
        except UserError:
            continue  # that host's own deploy reports why it cannot be planned
        held[name] = ({(a.sha256, a.file) for a in plan.build.artifacts} | {(m.sha256, m.name) for m in plan.models},
                      plan.build.artifacts, plan.models)
    _HELD.update(inventory=inventory, held=held)
    return held


_HELD: dict = {}  # the last inventory's holdings: every host's deploy asks, the plan is the same


def source_fields(plan, upstream: str, sha256: str, name: str) -> dict:
    """The helper's ``sources`` for one file of ``plan``'s host: the cluster's cache, the peers whose
    plan places the file, then upstream (both helpers, ``lf_host.py`` and ``lf_host.ps1``, try them in
    order). Nothing without a cache: the helper then fetches ``url``, from upstream."""
    inventory = plan.inventory
    base = cache_base_url(inventory)
    if base is None:
        return {}
    held = _held(inventory)
    peers = [peer for peer in peer_hosts(inventory)
             if peer != plan.name and (sha256, name) in held.get(peer, (set(),))[0]]
    path = f"/{sha256}/{quote(name)}"
    return {"sources": [base + path]
            + [_base_url(inventory.hosts[p].connection.address, inventory.cache.port) + path for p in peers]
            + [upstream]}


def cluster_files(inventory: Inventory) -> list[dict]:
    """Every file some host of the cluster fetches through the cache: {name, sha256, size (None:
    unknown), url}, each once, Windows hosts' included."""
    files: dict[tuple[str, str], dict] = {}
    for _files, artifacts, models in _held(inventory).values():
        for a in artifacts:
            files.setdefault((a.sha256, a.file), {"name": a.file, "sha256": a.sha256, "size": a.size, "url": a.url})
        for m in models:
            files.setdefault((m.sha256, m.name), {"name": m.name, "sha256": m.sha256, "size": m.size, "url": m.url})
    return [files[key] for key in sorted(files)]


def cache_fetch_specs(inventory: Inventory) -> list[dict]:
    """The helper's ``fetch`` specs that fill the cache from upstream (the cache host's own step)."""
    folder = cache_folder(inventory)
    return [{"dest": cached_path(folder, f["sha256"], f["name"]), "url": f["url"], "sources": [f["url"]],
             "sha256": f["sha256"], "size": f["size"]} for f in cluster_files(inventory)]


def cache_services(inventory: Inventory, host_name: str, helper: str, user: str, unit_prefix: str) -> list:
    """The file server of the cache host (its cache folder) or of a peer (its ``models_dir`` and
    downloaded archives): one more :class:`ServicePlan`; none on any other host."""
    from llamafleet.deploys.plan import ServicePlan

    if cache_host(inventory) == host_name:
        bind, folders = cache_bind(inventory), [cache_folder(inventory)]
    elif host_name in peer_hosts(inventory):
        host = inventory.hosts[host_name]
        bind, folders = host.connection.address, [host.models_dir, posixpath.join(host.install_dir, "downloads")]
    else:
        return []
    port = inventory.cache.port
    argv = ("/usr/bin/env", "python3", helper, "serve", bind, str(port), *folders)
    return [ServicePlan(SERVICE, ROLE, unit_prefix + SERVICE, argv, (), user, port, bind, True)]
