"""Turn a validated inventory into pyinfra inventory groups (used by ``inventory/cluster.py``).

pyinfra reads every module-level list of an inventory module as a group of hosts, each host a name
or a ``(name, data)`` tuple. Hosts are named after the inventory, except that a local host is
``@local`` (pyinfra's local connector); ``llamafleet_host`` always carries the inventory name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamafleet.config.models import OS, Backend, Host, Inventory

ROLE_GROUPS = {"target": "targets", "drafter": "drafters", "rpc-worker": "rpc_workers", "proxy": "proxies"}

HostEntry = tuple[str, dict[str, Any]]


def pyinfra_name(name: str, host: Host) -> str:
    return "@local" if host.connection.type == "local" else name


def host_data(inventory: Inventory, inventory_path: Path, name: str) -> dict[str, Any]:
    """What a deploy needs to know about one host; the rest it reads by reloading the inventory
    from ``llamafleet_inventory`` and looking up ``llamafleet_host``."""
    host = inventory.hosts[name]
    data: dict[str, Any] = {
        "llamafleet_host": name,
        "llamafleet_inventory": str(inventory_path.absolute()),
        "llamafleet_cluster": inventory.cluster,
        "llamafleet_build": inventory.llama_cpp.build,
        "llamafleet_os": host.os.value,
        "llamafleet_backend": host.backend.value,
        "llamafleet_services": sorted(inventory.services_on(name)),
    }
    if host.connection.type == "ssh":
        data.update(ssh_hostname=host.connection.address, ssh_port=host.connection.port,
                    ssh_user=host.connection.user)
        if host.connection.key_file is not None:
            data["ssh_key"] = host.connection.key_file
    if host.os is OS.windows:
        # pyinfra 3 has no Windows support: OpenSSH's default shell there is PowerShell, so commands
        # must not be wrapped in sh -c (pyinfra 3.0 removed its winrm connector and Windows
        # operations; docs/deploys.md, "Windows over OpenSSH").
        data["_shell_executable"] = None
    return data


def groups(inventory: Inventory, inventory_path: Path) -> dict[str, list[HostEntry]]:
    """Groups by role (targets, drafters, rpc_workers, proxies), OS (linux, windows, macos) and
    backend (cuda, rocm, vulkan, metal, cpu); every group exists, possibly empty."""
    names = list(ROLE_GROUPS.values()) + [o.value for o in OS] + [b.value for b in Backend]
    out: dict[str, list[HostEntry]] = {group: [] for group in names}
    for name, host in inventory.hosts.items():
        entry = (pyinfra_name(name, host), host_data(inventory, inventory_path, name))
        member_of = {host.os.value, host.backend.value}
        member_of |= {ROLE_GROUPS[s.role] for s in inventory.services_on(name).values()}
        for group in names:
            if group in member_of:
                out[group].append(entry)
    return out
