"""The host's live firewall rules, as the deploy and drift compare them with the plan.

Two facts, one command each, and their pure parsers: :class:`NftablesRules` (``nft -j list table inet
llamafleet``) and :class:`WindowsFirewallRules` (``Get-NetFirewallRule`` with its port and address
filters, as JSON). Both parse into one canonical shape, the one ``deploys/firewall.py`` derives from
the plan: per port, :data:`~llamafleet.deploys.firewall.ANY` or the collapsed networks that may
connect. nft merges adjacent addresses of a set into ranges (``127.0.0.1-127.0.0.2``) and Windows
writes IPv4 subnets with a mask (``10.0.0.0/255.255.255.0``), so both are turned back into networks
and collapsed before anything is compared.

The firewall is read only on hosts whose firewall the deploy manages, or whose ``firewall.manage`` was
set to false (what an earlier deploy left there is removed: ``firewall.cleans_up``), by
:func:`with_live_rules`: one more remote command there, none elsewhere.
"""

from __future__ import annotations

import ipaddress
import json
import shlex

from pyinfra.api import FactBase

from llamafleet.deploys.firewall import (
    ANY,
    BOOT_UNIT,
    TABLE,
    WINDOWS_PREFIX,
    boot_unit_path,
    collapse,
    host_firewall,
    net_text,
    nftables_path,
)
from llamafleet.deploys.operations.common import ps_quote

NO_NFT = "llamafleet-no-nft"
NO_TABLE = "llamafleet-no-table"
NFT_FAILED = "llamafleet-nft-failed"
FILES = "llamafleet-files"  # the last line: sha256 of the rules file and of the boot unit, the unit's enablement


# --- nftables ---------------------------------------------------------------------------------------


class NftablesRules(FactBase):
    """``table inet llamafleet`` on a Linux host, parsed (:func:`parse_nft`). Needs root (CAP_NET_ADMIN)."""

    @staticmethod
    def default():
        return None

    def command(self, path: str, unit: str = "") -> str:
        """``path``: the rules file; ``unit``: the boot unit's path (systemd hosts), or empty."""
        def sha(file: str) -> str:
            return f"$([ -f {shlex.quote(file)} ] && sha256sum < {shlex.quote(file)} | cut -c1-64)" if file else ""

        enabled = f"$(systemctl is-enabled {BOOT_UNIT} 2>/dev/null)" if unit else ""
        return (f"command -v nft >/dev/null 2>&1 || {{ echo {NO_NFT}; exit 0; }}; "
                f"nft -j list table inet {TABLE} 2>/dev/null || "
                f"{{ if nft list tables >/dev/null 2>&1; then echo {NO_TABLE}; "
                f"else echo {NFT_FAILED} $(nft list tables 2>&1 | head -n 1); fi; }}; "
                f"nf={sha(path)}; un={sha(unit)}; en={enabled}; "
                f"printf '{FILES} %s %s %s\\n' \"${{nf:--}}\" \"${{un:--}}\" \"${{en:--}}\"")

    def process(self, output):
        return parse_nft("\n".join(output))


def _network(item) -> list:
    """One nft set element or match value (address, prefix or range) as networks."""
    if isinstance(item, str):
        return [ipaddress.ip_network(item)]
    if isinstance(item, dict) and "prefix" in item:
        return [ipaddress.ip_network(f"{item['prefix']['addr']}/{item['prefix']['len']}")]
    if isinstance(item, dict) and "range" in item:
        first, last = (ipaddress.ip_address(a) for a in item["range"])
        return list(ipaddress.summarize_address_range(first, last))
    raise ValueError(f"not an address: {item!r}")


def _rule(exprs: list) -> tuple[int, list | None, str] | None:
    """(port, sources or None, verdict) of a rule in llamafleet's shape, else None."""
    port, sources, verdict = None, None, None
    for expr in exprs:
        match = expr.get("match") if isinstance(expr, dict) else None
        if match is not None and match.get("op") == "==" and "payload" in match.get("left", {}):
            payload = match["left"]["payload"]
            right = match["right"]
            if (payload.get("protocol"), payload.get("field")) == ("tcp", "dport") and isinstance(right, int):
                port = right
                continue
            if payload.get("field") == "saddr" and payload.get("protocol") in ("ip", "ip6") and sources is None:
                try:
                    items = right["set"] if isinstance(right, dict) and "set" in right else [right]
                    sources = [n for item in items for n in _network(item)]
                except (ValueError, KeyError, TypeError):
                    return None
                continue
            return None
        if isinstance(expr, dict) and len(expr) == 1 and next(iter(expr)) in ("accept", "drop") and verdict is None:
            verdict = next(iter(expr))
            continue
        return None
    if port is None or verdict is None or (verdict == "drop" and sources is not None):
        return None
    return port, sources, verdict


def parse_nft(output: str) -> dict:
    """``nft -j list table inet llamafleet`` (or the command's markers), then the files line ->
    {status, chain, ports, other, files}.

    ``ports``: port -> ANY or the sorted collapsed networks, as the rules in order decide it: an accept
    with a source set adds those sources, an accept without one opens the port, the first drop closes
    it to everyone else; a port no drop closes is open. ``other``: rules of any other shape."""
    lines = output.strip().splitlines()
    files = None
    if lines and lines[-1].startswith(FILES + " "):
        fields = (lines.pop().split() + ["-"] * 3)[1:4]
        files = dict(zip(("nft", "unit", "enabled"), (None if f == "-" else f for f in fields)))
    parsed = _parse_table("\n".join(lines).strip())
    return parsed if files is None else {**parsed, "files": files}


def _parse_table(text: str) -> dict:
    if text == NO_NFT:
        return {"status": "no-nft", "detail": "nft is not installed (Debian/Ubuntu: apt-get install nftables)"}
    if text == NO_TABLE:
        return {"status": "absent", "detail": f"no table inet {TABLE}"}
    if text.startswith(NFT_FAILED):
        return {"status": "failed", "detail": f"nft cannot list the rules: {text[len(NFT_FAILED):].strip()}"}
    items = json.loads(text).get("nftables", [])
    chains = [i["chain"] for i in items if "chain" in i]
    chain = "missing"
    if any(c.get("name") == "input" for c in chains):
        c = next(c for c in chains if c.get("name") == "input")
        shape = (c.get("type"), c.get("hook"), c.get("policy"))
        chain = "ok" if shape == ("filter", "input", "accept") else \
            f"type {c.get('type')} hook {c.get('hook')} policy {c.get('policy')}"
    other = [f"chain {c.get('name')}" for c in chains if c.get("name") != "input"]
    decided: dict[int, object] = {}
    accepted: dict[int, list] = {}
    for item in items:
        rule = item.get("rule")
        if rule is None or rule.get("chain") != "input":
            continue
        parsed = _rule(rule.get("expr", []))
        if parsed is None:
            other.append(f"rule handle {rule.get('handle')}: {json.dumps(rule.get('expr'), sort_keys=True)}")
            continue
        port, sources, verdict = parsed
        if port in decided:
            continue
        if verdict == "drop":
            decided[port] = [net_text(n) for n in collapse(accepted.get(port, []))]
        elif sources is None:
            decided[port] = ANY
        else:
            accepted.setdefault(port, []).extend(sources)
    ports = {port: decided.get(port, ANY) for port in sorted(set(decided) | set(accepted))}
    return {"status": "ok", "chain": chain, "ports": ports, "other": other}


# --- Windows Firewall ---------------------------------------------------------------------------------


class WindowsFirewallRules(FactBase):
    """The llamafleet-* rules of Windows Firewall with their port and address filters, parsed
    (:func:`parse_windows_rules`). No double quotes: Windows OpenSSH hands the command to ``powershell -c``."""

    shell_executable = None

    @staticmethod
    def default():
        return None

    def command(self) -> str:
        return ("ConvertTo-Json -Depth 4 -InputObject @(Get-NetFirewallRule -Name "
                f"{ps_quote(WINDOWS_PREFIX + '*')} -ErrorAction SilentlyContinue | ForEach-Object {{ "
                "$p = $_ | Get-NetFirewallPortFilter; $a = $_ | Get-NetFirewallAddressFilter; "
                "[pscustomobject]@{Name = $_.Name; Enabled = [string]$_.Enabled; Direction = [string]$_.Direction; "
                "Action = [string]$_.Action; Protocol = [string]$p.Protocol; LocalPort = @($p.LocalPort); "
                "RemoteAddress = @($a.RemoteAddress)} })")

    def process(self, output):
        return parse_windows_rules("\n".join(output))


def _remote(values: list[str]) -> list[str]:
    """RemoteAddress values -> ["any"] or the collapsed networks, then keywords (LocalSubnet, ...) sorted."""
    if any(v.lower() == ANY for v in values):
        return [ANY]
    nets, keywords = [], []
    for value in values:
        try:
            if "-" in value:
                first, last = (ipaddress.ip_address(a) for a in value.split("-", 1))
                nets += ipaddress.summarize_address_range(first, last)
            else:
                nets.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            keywords.append(value)
    return [*(net_text(n) for n in collapse(nets)), *sorted(keywords)]


def _strings(value) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def parse_windows_rules(output: str) -> dict:
    """The JSON of :class:`WindowsFirewallRules` -> {status, rules: name -> {ports, remote, direction,
    action, protocol, enabled}}."""
    text = output.strip()
    data = json.loads(text) if text else []
    if isinstance(data, dict):  # one rule, from a PowerShell that unrolled the array
        data = [data]
    rules = {}
    for item in data:
        ports = _strings(item.get("LocalPort"))
        rules[item["Name"]] = {
            "ports": [int(p) if p.isdigit() else p for p in ports],
            "remote": _remote(_strings(item.get("RemoteAddress"))),
            "direction": str(item.get("Direction")), "action": str(item.get("Action")),
            "protocol": str(item.get("Protocol")).upper(), "enabled": str(item.get("Enabled")) == "True",
        }
    return {"status": "ok", "rules": rules}


# --- reading a host -------------------------------------------------------------------------------------


def with_live_rules(host, plan, state: dict) -> dict:
    """``state`` with the host's live rules under "firewall" where the deploy manages its firewall or
    removes an earlier deploy's rules (one remote command); ``state`` itself elsewhere."""
    firewall = host_firewall(plan)
    if not (firewall.manage or firewall.clean) or firewall.kind is None:
        return state
    if firewall.kind == "nftables":
        live = host.get_fact(NftablesRules, path=nftables_path(plan), unit=boot_unit_path(plan) or "")
    else:
        live = host.get_fact(WindowsFirewallRules)
    return {**state, "firewall": live}
