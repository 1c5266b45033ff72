"""The order in which a deploy switches hosts to a new build (pure: the inventory alone).

A target that uses RPC workers (layer split or a native draft) must never talk to a worker of
another build: ggml's RPC protocol changes between builds. So hosts linked by RPC (a target's host
and its workers' hosts, transitively) form one **group** that switches together:

1. every RPC client (a llama-server started with ``--rpc``) in the group that is about to change
   build is stopped;
2. the group's hosts switch one at a time, RPC workers' hosts first, each passing readiness before
   the next starts;
3. if any host of the group fails, every host of the group goes back to its previous build.

Groups go one after another in inventory order, and a failed group stops the rollout: the groups
after it keep serving their old build (``drift`` and ``doctor`` then report mixed builds).
"""

from __future__ import annotations

from dataclasses import dataclass

from llamafleet.config.models import Inventory, RpcWorkerService, TargetService


@dataclass(frozen=True)
class Slot:
    """Where one host switches: its group's rank, its place in the group, and the group's hosts."""

    group: int
    position: int
    hosts: tuple[str, ...]


def rpc_links(inventory: Inventory) -> list[tuple[str, str]]:
    """(client host, worker host) for every target -> RPC worker use (layer split or native draft)."""
    links = []
    for svc in inventory.services.values():
        if isinstance(svc, TargetService):
            workers = list(svc.rpc_workers) + ([svc.native_draft.rpc_worker] if svc.native_draft else [])
            links += [(svc.host, inventory.services[w].host) for w in workers]
    return links


def groups(inventory: Inventory) -> list[tuple[str, ...]]:
    """Hosts linked by RPC, each group ordered RPC workers' hosts first (then inventory order);
    groups in the inventory order of their first host."""
    order = list(inventory.hosts)
    parent = {h: h for h in order}

    def root(h: str) -> str:
        while parent[h] != h:
            parent[h] = parent[parent[h]]
            h = parent[h]
        return h

    for client, worker in rpc_links(inventory):
        a, b = root(client), root(worker)
        if a != b:
            parent[max(a, b, key=order.index)] = min(a, b, key=order.index)
    serves = {svc.host for svc in inventory.services.values() if isinstance(svc, RpcWorkerService)}
    members: dict[str, list[str]] = {}
    for h in order:
        members.setdefault(root(h), []).append(h)
    return [tuple(sorted(hosts, key=lambda h: (h not in serves, order.index(h)))) for hosts in members.values()]


def slot(inventory: Inventory, host: str) -> Slot:
    for rank, hosts in enumerate(groups(inventory)):
        if host in hosts:
            return Slot(rank, hosts.index(host), hosts)
    raise KeyError(host)
