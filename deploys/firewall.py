"""Host firewall rules: which ports of a host accept connections from which addresses (pure).

Derived from the inventory and the host's plan alone, nothing resolved or contacted:

- an RPC worker's port accepts only the hosts of the targets that use it (``rpc_workers`` and
  ``native_draft.rpc_worker``): whoever reaches ggml-rpc-server can run code on its device;
- a llama-server's port (a target, its plain sidecar, a drafter) accepts only the hosts of the
  proxies that use it, so the proxy's auth cannot be walked around;
- the proxy's port is open: it is the door, with its own auth;
- a service of any other role (the cluster's file cache) accepts every host of the cluster;
- every restricted port also accepts loopback (127.0.0.1 and ::1, where a host's own connections to a
  loopback address come from), the host's own addresses (where its connections to its own LAN address
  come from: the deploy's readiness probes) and ``firewall.allow`` (the cluster's, then the host's).

A host's addresses are the IP literals the inventory gives for it: its ssh address, its ``addresses``
and the addresses its services bind. A DNS name is never resolved here (a plan must not depend on
what a resolver answers today): a peer known only by name cannot be named in a rule, and ``validate``
says so (LF172) rather than deploy a rule that would shut it out.

The rules are rendered as an nftables file for Linux (``templates/nftables.nft.j2``: its own
``table inet llamafleet`` only, replaced as one transaction by ``nft -f``) and as Windows Firewall
commands (``New-NetFirewallRule``/``Set-NetFirewallRule``/``Remove-NetFirewallRule`` on rules named
``llamafleet-<service>``). macOS hosts get none (see docs/hardening.md). A host whose ``firewall.manage``
is set to false loses what an earlier deploy left there: the table, its rules file and boot unit, or the
``llamafleet-*`` rules (:func:`cleans_up`). Every value that lands in
either is typed here: ports are ints, addresses ``ipaddress`` networks, names the inventory's name
pattern; the nft filter refuses anything else, and PowerShell strings go through ``ps_quote``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import jinja2

from llamafleet.config.models import OS, Inventory, ProxyService, ServiceManager, TargetService
from llamafleet.config.topology import plain_route
from llamafleet.errors import UserError

TABLE = "llamafleet"  # nft: table inet llamafleet
BOOT_UNIT = "llamafleet-firewall.service"  # systemd hosts: loads the table at boot
NFT = "/usr/sbin/nft"
WINDOWS_PREFIX = "llamafleet-"  # Windows Firewall rule names: llamafleet-<service>
LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
ANY = "any"  # a port open to every address
CACHE_NAME = "the file cache"  # how validate names the cluster's file cache (it is not an inventory service)

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class PortRule:
    """One service port: who may connect (``sources``: collapsed networks, or None for everyone)."""

    service: str
    role: str
    port: int
    sources: tuple[Net, ...] | None
    peers: tuple[str, ...] = ()  # the hosts whose addresses are in sources because they use the service

    @property
    def v4(self) -> list[Net]:
        return [n for n in self.sources or () if n.version == 4]

    @property
    def v6(self) -> list[Net]:
        return [n for n in self.sources or () if n.version == 6]


@dataclass(frozen=True)
class HostFirewall:
    host: str
    manage: bool
    why: str  # why the firewall is (not) managed, in words
    kind: str | None  # "nftables", "windows", or None (macOS: nothing to render)
    rules: tuple[PortRule, ...] = ()
    clean: bool = False  # not managed, but an earlier deploy's rules are read and removed (cleans_up)

    def expected(self) -> dict[int, object]:
        """port -> ANY or the sorted networks that may connect: what a live reading is compared with."""
        return {r.port: ANY if r.sources is None else [net_text(n) for n in r.sources] for r in self.rules}


# --- addresses -------------------------------------------------------------------------------------


def _literal(value: str) -> Net | None:
    """An IP literal as a one-address network (IPv4-mapped IPv6 as IPv4); None for a DNS name or a wildcard."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    address = mapped or address
    return None if address.is_unspecified else ipaddress.ip_network(address)


def host_addresses(inventory: Inventory, host_name: str) -> list[Net]:
    """The IP literals the inventory gives for a host: its ssh address and ``addresses``, and the
    addresses its services bind unless loopback (a service on 127.0.0.1 says nothing about where the
    host's connections come from on the network)."""
    host = inventory.hosts[host_name]
    declared = [_literal(a) for a in [getattr(host.connection, "address", ""), *host.addresses] if a]
    binds = [_literal(s.bind) for s in inventory.services_on(host_name).values()]
    binds = [n for n in binds if n is not None and not n.network_address.is_loopback]
    return sorted({n for n in declared + binds if n is not None}, key=lambda n: (n.version, n))


def on_loopback(inventory: Inventory, host_name: str) -> bool:
    """A host reached on this machine (a local connection or a loopback address) shares its kernel."""
    connection = inventory.hosts[host_name].connection
    if connection.type == "local":
        return True
    literal = _literal(connection.address)
    return connection.address == "localhost" or (literal is not None and literal.network_address.is_loopback)


def managed(inventory: Inventory, host_name: str) -> tuple[bool, str]:
    """Whether the deploy manages this host's firewall, and why (the ``firewall.manage`` default)."""
    host = inventory.hosts[host_name]
    own = host.firewall.manage if host.firewall is not None else None
    setting = own if own is not None else inventory.firewall.manage
    if setting is not None:
        where = f"hosts.{host_name}.firewall.manage" if own is not None else "firewall.manage"
        return setting, f"{where} is {str(setting).lower()}"
    if host.os is OS.macos:
        return False, "macOS: llamafleet manages no firewall there (pf is left as it is)"
    if on_loopback(inventory, host_name):
        return False, ("reached on loopback, so it shares this machine's kernel (and firewall) with every other "
                       "such host: set firewall.manage to manage it anyway")
    return True, f"default for {host.os.value} hosts reached over SSH"


def cleans_up(inventory: Inventory, host_name: str) -> bool:
    """Whether the deploy reads and removes the rules an earlier deploy left on a host whose firewall it
    does not manage: where ``firewall.manage`` says false (the host's or the cluster's), on Linux and
    Windows. A host unmanaged by default (macOS, loopback) is not read, and neither is a loopback host
    while another loopback host's firewall is managed: they share this machine's kernel, so the table
    is that host's."""
    host = inventory.hosts[host_name]
    own = host.firewall.manage if host.firewall is not None else None
    if (own if own is not None else inventory.firewall.manage) is not False or host.os is OS.macos:
        return False
    return not (on_loopback(inventory, host_name) and any(
        other != host_name and on_loopback(inventory, other) and managed(inventory, other)[0]
        for other in inventory.hosts))


def allowed(inventory: Inventory, host_name: str) -> list[Net]:
    """``firewall.allow`` of the cluster and of the host."""
    host = inventory.hosts[host_name]
    extra = [*inventory.firewall.allow, *(host.firewall.allow if host.firewall is not None else [])]
    return [ipaddress.ip_network(n) for n in extra]


# --- who uses what -----------------------------------------------------------------------------------


def _sidecar_targets(inventory: Inventory) -> dict[str, str]:
    """plain sidecar service name -> its target."""
    out = {}
    for name, svc in inventory.services.items():
        if isinstance(svc, TargetService) and svc.native_draft is not None and svc.native_draft.rpc_worker in \
                inventory.services and svc.host in inventory.hosts:
            route = plain_route(inventory, name)
            if route is not None and route.sidecar:
                out[route.sidecar] = name
    return out


def peer_hosts(inventory: Inventory, service: str, role: str) -> tuple[str, ...] | None:
    """The hosts whose services use ``service`` (None: it is open to every address)."""
    if role == "proxy":
        return None
    users: set[str] = set()
    if role == "rpc-worker":
        for svc in inventory.services.values():
            if isinstance(svc, TargetService) and (service in svc.rpc_workers or (
                    svc.native_draft is not None and svc.native_draft.rpc_worker == service)):
                users.add(svc.host)
    elif role in ("target", "target-plain", "drafter"):
        target = _sidecar_targets(inventory).get(service, service) if role == "target-plain" else service
        for svc in inventory.services.values():
            if isinstance(svc, ProxyService) and (target in svc.target_names if role != "drafter"
                                                  else service in svc.drafters):
                users.add(svc.host)
    else:  # a cluster-wide service (the file cache): every host of the cluster fetches from it
        users = set(inventory.hosts)
    return tuple(sorted(h for h in users if h in inventory.hosts))


def unaddressed_peers(inventory: Inventory, host_name: str, services) -> list[tuple[str, str]]:
    """(service, peer host) pairs where the peer is another host with no IP literal in the inventory."""
    out = []
    for service, role in services:
        for peer in peer_hosts(inventory, service, role) or ():
            if peer != host_name and not host_addresses(inventory, peer):
                out.append((service, peer))
    return out


def host_firewall(plan) -> HostFirewall:
    """The firewall of one host's plan (``deploys/plan.py``'s HostPlan)."""
    inventory, name = plan.inventory, plan.name
    manage, why = managed(inventory, name)
    kind = {OS.linux: "nftables", OS.windows: "windows"}.get(plan.host.os)
    if not manage or kind is None:
        return HostFirewall(name, False, why, kind, clean=kind is not None and cleans_up(inventory, name))
    services = [(s.service, s.role) for s in plan.services]
    missing = unaddressed_peers(inventory, name, services)
    if missing:
        service, peer = missing[0]
        raise UserError(f"hosts.{name}: the firewall rule for {service} must name host {peer!r}, which has no IP "
                        f"address in the inventory (LF172): add it under hosts.{peer}.addresses, or set "
                        f"hosts.{name}.firewall.manage: false")
    base = [*LOOPBACK, *host_addresses(inventory, name), *allowed(inventory, name)]
    rules = []
    for svc in sorted(plan.services, key=lambda s: s.port):
        peers = peer_hosts(inventory, svc.service, svc.role)
        if peers is None:
            rules.append(PortRule(svc.service, svc.role, svc.port, None))
            continue
        nets = base + [n for peer in peers for n in host_addresses(inventory, peer)]
        rules.append(PortRule(svc.service, svc.role, svc.port, collapse(nets), peers))
    return HostFirewall(name, True, why, kind, tuple(rules))


def net_text(net: Net) -> str:
    """A network as text: a single address without its /32 or /128."""
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def collapse(nets) -> tuple[Net, ...]:
    """Networks merged where they touch or overlap, IPv4 first: one canonical form for plan and host."""
    v4 = ipaddress.collapse_addresses(n for n in nets if n.version == 4)
    v6 = ipaddress.collapse_addresses(n for n in nets if n.version == 6)
    return (*v4, *v6)


# --- nftables ------------------------------------------------------------------------------------------

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def nft_value(value) -> str:
    """The one way a value lands in the nft file: a port, a network or a service name; nothing free-form."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return str(value)
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return net_text(value)
    if isinstance(value, str) and _NAME.match(value):
        return value
    raise ValueError(f"refusing {value!r} in an nftables file: only ports, IP networks and service names go there")


def nft_set(nets) -> str:
    return ", ".join(nft_value(n) for n in nets)


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    folder = resources.files("llamafleet.templates")
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), undefined=jinja2.StrictUndefined,
                                     keep_trailing_newline=True, autoescape=False, trim_blocks=True,
                                     lstrip_blocks=True)
    environment.filters.update({"nft": nft_value, "nft_set": nft_set})
    return environment


def render_nftables(firewall: HostFirewall) -> str:
    try:
        return _templates().get_template("nftables.nft.j2").render(
            host=firewall.host, table=TABLE, rules=firewall.rules)
    except ValueError as err:
        raise UserError(f"hosts.{firewall.host}: firewall: {err}") from None


def nftables_path(plan) -> str:
    return plan.path("etc", "firewall.nft")


def boot_unit_path(plan) -> str | None:
    """Where the unit that loads the rules at boot goes: systemd hosts only. (A supervisord host's
    services do not start at boot either: the deploy starts its supervisord.)"""
    return f"/etc/systemd/system/{BOOT_UNIT}" if plan.host.service_manager is ServiceManager.systemd else None


def render_boot_unit(plan) -> str:
    from llamafleet.deploys.operations import systemd

    try:
        return _templates().get_template("nftables-boot.service.j2").render(
            host=nft_value(plan.name), exec_start=systemd.exec_line([NFT, "-f", nftables_path(plan)]))
    except ValueError as err:
        raise UserError(f"hosts.{plan.name}: firewall: {err}") from None


def boot_files(plan, firewall: HostFirewall) -> dict[str, dict]:
    """The files that keep the rules: "nft" (the rules) and, on systemd hosts, "unit" (loads them at
    boot), each {path, content}."""
    files = {"nft": {"path": nftables_path(plan), "content": render_nftables(firewall)}}
    if boot_unit_path(plan):
        files["unit"] = {"path": boot_unit_path(plan), "content": render_boot_unit(plan)}
    return files


def file_differences(files: dict, live: dict) -> list[tuple[str, str, str]]:
    """(what, expected, actual) for the rules file and the boot unit on the host. ``files``: as
    :func:`boot_files`; ``live["files"]``: their sha256 and the unit's enablement, as the fact read them."""
    from llamafleet.deploys.operations.common import sha256_text
    seen = live.get("files") or {}
    out = []
    for key, file in files.items():
        sha = sha256_text(file["content"])
        if seen.get(key) != sha:
            out.append((f"file {file['path']}", f"sha256 {sha[:12]}…",
                        f"sha256 {seen[key][:12]}…" if seen.get(key) else "missing"))
    if "unit" in files and seen.get("enabled") != "enabled":
        out.append((f"boot unit {BOOT_UNIT}", "enabled", seen.get("enabled") or "unknown"))
    return out


# --- Windows Firewall -------------------------------------------------------------------------------


def windows_rule_name(service: str) -> str:
    return WINDOWS_PREFIX + service


def windows_remote(rule: PortRule) -> list[str]:
    """RemoteAddress values: Windows Firewall leaves loopback alone, so the loopback networks are left out."""
    if rule.sources is None:
        return [ANY]
    return [net_text(n) for n in rule.sources if n not in LOOPBACK]


def windows_expected(firewall: HostFirewall) -> dict[str, dict]:
    """rule name -> {port, remote}: what the live rules are compared with. A port only loopback may reach
    needs no rule (Windows Firewall blocks other inbound connections by default)."""
    return {windows_rule_name(r.service): {"port": r.port, "remote": windows_remote(r)}
            for r in firewall.rules if windows_remote(r)}


def windows_differences(expected: dict, live: dict) -> list[tuple[str, str, str]]:
    """(rule name, expected, actual) for every llamafleet rule that differs. ``expected``: name ->
    {port, remote} (:func:`windows_expected`); ``live``: ``parse_windows_rules``."""
    rules = live.get("rules", {})
    out = []
    for name, want in expected.items():
        remote = list(want["remote"])
        have = rules.get(name)
        text = f"inbound TCP {want['port']} allowed from {', '.join(remote)}"
        if have is None:
            out.append((name, text, "no such rule"))
            continue
        if (have["ports"], have["remote"], have["direction"], have["action"], have["protocol"], have["enabled"]) != \
                ([want["port"]], remote, "Inbound", "Allow", "TCP", True):
            out.append((name, text, f"{have['direction'].lower()} {have['protocol']} "
                                    f"{','.join(map(str, have['ports']))} {have['action'].lower()} from "
                                    f"{', '.join(have['remote']) or 'nowhere'}"
                                    + ("" if have["enabled"] else " (disabled)")))
    for name in sorted(set(rules) - set(expected)):
        out.append((name, "no such rule", f"a rule for port(s) {','.join(map(str, rules[name]['ports']))}"))
    return out


# --- nftables: comparing a live table with the plan ---------------------------------------------------


def nft_differences(expected: dict, live: dict) -> list[tuple[str, str, str]]:
    """(what, expected, actual) for every port whose live rules differ. ``expected``: port -> ANY or
    networks (:meth:`HostFirewall.expected`); ``live``: ``parse_nft``."""
    if live.get("status") != "ok":
        return [(f"table inet {TABLE}", "present", live.get("detail") or live.get("status", "unreadable"))]
    out = []
    if live.get("chain") != "ok":
        out.append(("chain input", "type filter hook input policy accept", live.get("chain") or "missing"))
    ports = live.get("ports", {})
    want = {port: ANY if value == ANY else list(value) for port, value in expected.items()}
    for port, value in want.items():
        have = ports.get(port, ANY)
        if have != value:
            out.append((f"port {port}", describe(value), describe(have)))
    for port in sorted(set(ports) - set(want)):
        out.append((f"port {port}", "no rule", describe(ports[port])))
    out += [("rule", "only llamafleet's rules", other) for other in live.get("other", [])]
    return out


def describe(sources) -> str:
    return "open to every address" if sources == ANY else f"only from {', '.join(sources)}"


def differences(firewall: HostFirewall, live: dict | None, files: dict | None = None) -> list[tuple[str, str, str]]:
    """What differs between the planned rules and the host's (nothing when the firewall is not managed)."""
    if not firewall.manage or firewall.kind is None:
        return []
    if live is None:
        return [("rules", "read from the host", "not read")]
    if firewall.kind == "nftables":
        return nft_differences(firewall.expected(), live) + (file_differences(files, live) if files else [])
    return windows_differences(windows_expected(firewall), live)


def leftovers(firewall: HostFirewall, live: dict | None, paths: dict) -> list[tuple[str, str, str]]:
    """(what, expected, actual) for each thing an earlier deploy left on a host whose firewall is no longer
    managed (:func:`cleans_up`); nothing where the rules could not be read. ``paths``: "nft" and "unit"
    as :func:`removal_paths`."""
    if not firewall.clean or live is None or live.get("status") not in ("ok", "absent"):
        return []
    gone = f"absent ({firewall.why})"
    if firewall.kind == "windows":
        return [(name, gone, actual) for name, _, actual in windows_differences({}, live)]
    out = []
    if live["status"] == "ok":
        ports = live.get("ports", {})
        out.append((f"table inet {TABLE}", gone, "present" + (": " + "; ".join(
            f"port {port} {describe(sources)}" for port, sources in ports.items()) if ports else "")))
    seen = live.get("files") or {}
    if seen.get("unit") and paths.get("unit"):
        out.append((f"boot unit {BOOT_UNIT}", gone, f"{paths['unit']} ({seen.get('enabled') or 'unknown'})"))
    if seen.get("nft"):
        out.append((f"file {paths['nft']}", gone, "present"))
    return out


def removal_paths(plan) -> dict:
    """The rules file and (systemd hosts) the boot unit an earlier deploy may have left."""
    return {"nft": nftables_path(plan), "unit": boot_unit_path(plan)}


# --- validate: firewalls the deploy could not write, or that would not hold ---------------------------


def firewall_problems(inventory: Inventory):
    """(code, message, hint, data path, warning?) for ``llamafleet validate`` (LF172-LF175)."""
    cluster_manage = inventory.firewall.manage
    shared_kernel = []
    for name, host in inventory.hosts.items():
        manage, _ = managed(inventory, name)
        own = host.firewall.manage if host.firewall is not None else None
        if host.os is OS.macos:
            if own:
                yield ("LF173", "llamafleet manages no firewall on macOS hosts", "remove firewall.manage here, and "
                       "see docs/hardening.md for what a macOS host exposes", ("hosts", name, "firewall", "manage"), False)
            elif own is None and cluster_manage:
                yield ("LF173", f"macOS host {name!r} gets no firewall rules (llamafleet manages none on macOS)",
                       "see docs/hardening.md for what a macOS host exposes", ("firewall", "manage"), True)
            continue
        if not manage:
            continue
        if on_loopback(inventory, name):
            shared_kernel.append(name)
        services = [(s, svc.role) for s, svc in inventory.services_on(name).items()]
        cache = getattr(inventory, "cache", None)  # the cluster's file cache: every host fetches from it
        if cache is not None and cache.host == name:
            services.append((CACHE_NAME, "cache"))
        for service, peer in unaddressed_peers(inventory, name, services):
            connection = inventory.hosts[peer].connection
            what = service if service == CACHE_NAME else f"service {service!r}"
            yield ("LF172", f"the firewall of host {name!r} must let {peer!r} reach {what}, but the inventory gives "
                   f"{peer!r} no IP address" + (f" (only the name {connection.address!r}, which is not resolved "
                                                "when rules are planned)" if connection.type == "ssh" else ""),
                   f"list {peer}'s IP addresses under hosts.{peer}.addresses, or set "
                   f"hosts.{name}.firewall.manage: false", ("hosts", peer, "connection"), False)
    for name in shared_kernel[1:]:
        yield ("LF174", f"hosts {shared_kernel[0]!r} and {name!r} are both reached on this machine's loopback, so "
               f"they share one kernel and one table inet {TABLE}: each deploy would replace the other's rules",
               "manage the firewall of at most one of them", ("hosts", name, "firewall", "manage"), False)
    places = [(("firewall", "allow", i), n) for i, n in enumerate(inventory.firewall.allow)]
    places += [(("hosts", h, "firewall", "allow", i), n) for h, host in inventory.hosts.items()
               if host.firewall is not None for i, n in enumerate(host.firewall.allow)]
    for path, network in places:
        if ipaddress.ip_network(network).prefixlen == 0:
            yield ("LF175", f"allow {network} lets every address reach every service port, RPC workers included",
                   "allow the networks of the machines that need it (e.g. the one running llamafleet doctor)",
                   path, True)


# --- drift -------------------------------------------------------------------------------------------


def firewall_findings(plan, state: dict) -> list:
    """Drift's findings for the host's firewall: one per difference, or one ok line (none where the
    firewall is not managed). ``state["firewall"]``: the live rules (facts/firewall.py)."""
    from llamafleet.findings import Finding, Severity

    firewall = host_firewall(plan)
    if firewall.clean:
        return [Finding(host=plan.name, check=f"firewall {what}", severity=Severity.fail, expected=expected,
                        actual=actual, hint="left by an earlier deploy: a deploy removes it")
                for what, expected, actual in leftovers(firewall, state.get("firewall"), removal_paths(plan))]
    if not firewall.manage or firewall.kind is None:
        return []
    live = state.get("firewall")
    if live is None or live.get("status") in ("no-nft", "failed"):
        return [Finding(host=plan.name, check="firewall", severity=Severity.error, expected="the live rules",
                        actual=(live or {}).get("detail", "not read"),
                        hint=f"or set hosts.{plan.name}.firewall.manage: false")]
    hint = (f"a deploy would replace table inet {TABLE}" if firewall.kind == "nftables"
            else "a deploy would create, set or remove the llamafleet-* Windows Firewall rules that differ")
    found = differences(firewall, live, boot_files(plan, firewall) if firewall.kind == "nftables" else None)
    if not found:
        what = f"{len(firewall.rules)} port rule(s) as planned"
        return [Finding(host=plan.name, check="firewall", severity=Severity.ok, expected=what, actual=what)]
    return [Finding(host=plan.name, check=f"firewall {what}", severity=Severity.fail, expected=expected,
                    actual=actual, hint=hint) for what, expected, actual in found]


# --- llamafleet plan ----------------------------------------------------------------------------------


def plan_summary(plan) -> dict:
    """The host's firewall as ``llamafleet plan`` shows it (JSON shape; the text is rendered from it)."""
    firewall = host_firewall(plan)
    out = {"managed": firewall.manage and firewall.kind is not None, "kind": firewall.kind, "why": firewall.why,
           "removes_leftovers": firewall.clean,
           "rules": [{"service": r.service, "role": r.role, "port": r.port, "used_by": list(r.peers),
                      "from": ANY if r.sources is None else [net_text(n) for n in r.sources]}
                     for r in firewall.rules]}
    if out["managed"] and firewall.kind == "nftables":
        files = boot_files(plan, firewall)
        out["file"] = files["nft"]
        if "unit" in files:
            out["boot_unit"] = files["unit"]
    elif out["managed"]:
        out["windows_rules"] = {name: {"port": rule["port"], "remote": list(rule["remote"])}
                                for name, rule in windows_expected(firewall).items()}
    return out
