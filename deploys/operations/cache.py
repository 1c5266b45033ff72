"""The cluster's file cache in the deploy (see :mod:`llamafleet.deploys.cache` for the plan).

Step "cache" of the deploy, before any host installs a build or a model: on the cache host, fetch
every cluster file from upstream into the cache (resumable, verified), or, with ``host: deployer``,
fill and serve the deploying machine's cache (:mod:`..deployer_cache`); on the cache host and on every
peer, write the file server's unit and start it (the host's own service manager, rendered like every
other unit) and wait until it answers; then a barrier that every host shares, so pyinfra starts no
host's downloads before the cache is up.
"""

from __future__ import annotations

from dataclasses import replace

from pyinfra.api import FunctionCommand

from llamafleet.deploys.cache import ROLE, cache_bind, cache_fetch_specs, cache_folder, cache_host, on_deployer
from llamafleet.deploys.operations import files as file_ops
from llamafleet.deploys.operations import readiness
from llamafleet.deploys.operations.common import deploy_operation, helper_command, sha256_text
from llamafleet.deploys.operations.models import missing_files


@deploy_operation
def deployer_cache(specs: list[dict], bind: str, port: int, folder: str):
    """``cache: {host: deployer}``: on the machine that runs the deploy, fill the local cache and start
    its server, once per deploy (:func:`llamafleet.deploys.deployer_cache.ready`)."""
    from llamafleet.deploys.deployer_cache import ready

    yield FunctionCommand(ready, (specs, bind, port, folder), {})


@deploy_operation
def cache_files(helper: str, files: list[dict], cache_state: dict):
    """``files``: the helper's fetch specs into the cache folder; ``cache_state``: HostState ``cache``."""
    for spec in missing_files(files, cache_state):
        yield helper_command(helper, "fetch", spec)


def cache_state_spec(plan) -> list[dict]:
    """What the state fact reads on the cache host: each cached file's verified stamp."""
    if plan.name != cache_host(plan.inventory):
        return []
    return [{"path": f["dest"], "sha256": f["sha256"]} for f in cache_fetch_specs(plan.inventory)]


def planned(plan, state: dict) -> tuple[list[tuple], dict]:
    """(name, operation, kwargs, position) of the cache step for this host, and the host's state as
    the later steps should see it: with the cache's unit written and its server running (so the
    rollout neither rewrites nor restarts it)."""
    from llamafleet.deploys.deploy import host_changes, wait_spec

    if plan.inventory.cache is None:
        return [], state
    barrier = ("file cache: filled and serving", readiness.barrier, {}, (99,))
    inventory, first = plan.inventory, []
    if on_deployer(inventory):
        needs = host_changes(plan, state)
        if needs.build or needs.models:  # this host downloads: the deploying machine's cache must serve
            first.append(("file cache on the deploying machine: filled and serving", deployer_cache, {
                "specs": cache_fetch_specs(inventory), "bind": cache_bind(inventory), "port": inventory.cache.port,
                "folder": cache_folder(inventory)}, (0,)))
    server = [s for s in plan.services if s.role == ROLE]
    if not server:
        return first + [barrier], state
    only = replace(plan, services=server, proxy_services=[], secrets=[])
    owned = {plan.unit_path(server[0]), *plan.manager.host_files(plan)}  # supervisord: its main config too
    files = {path: text for path, text in plan.files.items() if path in owned}
    changes = host_changes(only, state)
    service_name, service_op, service_kwargs = only.manager.services_call(only, state.get("services", {}), changes, [])
    ops = first if plan.name != cache_host(plan.inventory) else [  # a peer serves what it holds itself
        ("file cache: fetch each file from upstream once", cache_files, {
            "helper": plan.helper_path, "files": cache_fetch_specs(plan.inventory),
            "cache_state": state.get("cache", {})}, (0,))]
    ops += [
        ("file cache: its server's unit", file_ops.text_files, {
            "files": files, "state_files": state.get("files", {})}, (1,)),
        (f"file cache: {service_name}", service_op, service_kwargs, (2,)),
    ]
    if changes.stopped or set(files) & set(changes.files):  # written, or not running: wait until it answers
        ops.append(("file cache: serving", readiness.wait_for_services, {
            "helper": plan.helper_path, "spec": {**wait_spec(only), "timeout": 60}}, (3,)))
    return ops + [barrier], _after(plan, state, files, server[0].unit_name)


def _after(plan, state: dict, files: dict, unit: str) -> dict:
    """``state`` once the cache step has run: its files written, its server running."""
    seen = dict(state.get("files", {}))
    for path, (content, mode) in files.items():
        seen[path] = {**(seen.get(path) or {}), "sha256": sha256_text(content), "mode": mode}
    return {**state, "files": seen, "services": plan.manager.with_running(state.get("services", {}), [unit])}
