"""The cluster's file cache (``cache:``): LF160 for a host that does not exist, LF210 for a cache host
that cannot run the cache's server (Windows: its helper has no ``serve``), LF130 for a port another
service of that host (or, with ``peers``, of a peer) listens on, LF211 for an address that is not the
host's, LF212 for a loopback address while other hosts must reach it; with ``host: deployer``, LF213
for a host of that name and LF214 for a missing ``bind``. Each at the inventory line of the field.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator

from llamafleet.config.models import OS, Inventory
from llamafleet.findings import Finding, problem

DEPLOYER = "deployer"  # cache.host: the machine that runs the deploy


def check_cache(inventory: Inventory) -> Iterator[Finding]:
    from llamafleet.config.checks import LOOPBACK, _listeners, declared_addresses

    cache = inventory.cache
    if cache is None:
        return
    if cache.host == DEPLOYER:
        yield from _check_deployer(inventory)
        return
    if cache.host not in inventory.hosts:
        close = difflib.get_close_matches(cache.host, list(inventory.hosts), n=1)
        yield problem("LF160", f"no host named {cache.host!r}",
                      f"did you mean {close[0]!r}?" if close else "name one of the hosts under hosts:",
                      ("cache", "host"))
        return
    host = inventory.hosts[cache.host]
    if host.os is OS.windows:
        yield problem("LF210", f"the file cache cannot run on {cache.host!r}, a Windows host: its server is the "
                      "POSIX helper's serve verb", "name a Linux or macOS host as cache.host", ("cache", "host"))
    from llamafleet.deploys.cache import peer_hosts

    serving = [cache.host, *peer_hosts(inventory)]  # cache.peers: every peer listens on cache.port too
    for name, on_host, port, _path in _listeners(inventory):
        if on_host in serving and port == cache.port:
            yield problem("LF130", f"port {port} on host {on_host!r} is already used by {name!r}"
                          + ("" if on_host == cache.host else " (with cache.peers, every peer serves on cache.port)"),
                          "give the file cache its own port (cache.port)", ("cache", "port"))
            break
    declared = declared_addresses(inventory, cache.host)
    bind_path = ("cache", "bind") if cache.bind is not None else ("cache", "host")
    bind = cache.bind if cache.bind is not None else getattr(host.connection, "address", "127.0.0.1")
    if bind not in declared:
        yield problem("LF211", f"the file cache would listen on {bind}, which is not an address of host "
                      f"{cache.host!r}", f"bind one of: {', '.join(sorted(declared))}, or add it to "
                      f"hosts.{cache.host}.addresses", bind_path)
    elif bind in LOOPBACK and len(inventory.hosts) > 1:
        others = sorted(set(inventory.hosts) - {cache.host})
        yield problem("LF212", f"the file cache would listen on loopback ({bind}) of {cache.host!r}, so "
                      f"{', '.join(others)} cannot reach it", f"set cache.bind to an address of {cache.host} "
                      "the other hosts reach", bind_path)


def _check_deployer(inventory: Inventory) -> Iterator[Finding]:
    """``host: deployer``: no host may be named so (LF213); ``bind`` is required (LF214), and not
    loopback when a host is reached at an address off this machine (LF212)."""
    import ipaddress

    cache = inventory.cache
    if DEPLOYER in inventory.hosts:
        yield problem("LF213", "cache.host: deployer names the machine that runs the deploy, and a host of the "
                      "inventory is also called deployer", "rename that host, or name the cache host otherwise",
                      ("cache", "host"))
    if cache.bind is None:
        yield problem("LF214", "the deploying machine's file cache needs the address it listens on",
                      "set cache.bind to an address of this machine that every host reaches", ("cache", "host"))
        return

    def loopback(address: str) -> bool:
        try:
            return ipaddress.ip_address(address).is_loopback
        except ValueError:
            return address == "localhost"

    remote = sorted(name for name, host in inventory.hosts.items()
                    if host.connection.type == "ssh" and not loopback(host.connection.address))
    if loopback(cache.bind) and remote:
        yield problem("LF212", f"the deploying machine's file cache would listen on loopback ({cache.bind}), so "
                      f"{', '.join(remote)} cannot reach it", "set cache.bind to an address of this machine that "
                      "the hosts reach", ("cache", "bind"))
