"""Host firewall rules (``deploys/firewall.py``): apply them where the live rules differ, nothing otherwise.

Linux: the rendered nftables file is uploaded and applied with ``nft -f``, one transaction that
replaces ``table inet llamafleet`` whole (or leaves the old one in place if anything in it fails).
Windows: one ``New-``, ``Set-`` or ``Remove-NetFirewallRule`` per llamafleet rule that differs.
The live rules come from ``facts/firewall.py``, read once per host with the other state.
"""

from __future__ import annotations

import shlex

from pyinfra.api import operation

from llamafleet.deploys.firewall import (
    host_firewall,
    nft_differences,
    nftables_path,
    render_nftables,
    windows_differences,
    windows_expected,
)
from llamafleet.deploys.operations.common import ps_quote, upload_posix
from llamafleet.errors import UserError


@operation()
def nftables(path: str, content: str, expected: dict, live: dict):
    """``expected``: port -> "any" or networks; ``live``: the NftablesRules fact. A differing table
    is replaced whole: upload the file, then ``nft -f`` it."""
    if not nft_differences(expected, live):
        return
    yield from upload_posix(path, content, "0644")
    yield f"nft -f {shlex.quote(path)}"


@operation()
def windows_rules(expected: dict, live: dict):
    """``expected``: rule name -> {port, remote}; ``live``: the WindowsFirewallRules fact."""
    present = live.get("rules", {})
    for name, _, _ in windows_differences(expected, live):
        if name not in expected:
            yield f"Remove-NetFirewallRule -Name {ps_quote(name)}"
            continue
        want = expected[name]
        settings = (f"-Direction Inbound -Action Allow -Protocol TCP -LocalPort {int(want['port'])} "
                    f"-RemoteAddress {','.join(ps_quote(str(r)) for r in want['remote'])} -Profile Any -Enabled True")
        if name in present:
            yield f"Set-NetFirewallRule -Name {ps_quote(name)} {settings}"
        else:
            yield (f"New-NetFirewallRule -Name {ps_quote(name)} -DisplayName {ps_quote(name)} "
                   f"-Group {ps_quote('llamafleet')} {settings} | Out-Null")


def planned(plan, state: dict) -> list[tuple[str, object, dict]]:
    """(name, operation, kwargs) for the host's firewall: none where it is not managed."""
    firewall = host_firewall(plan)
    if not firewall.manage or firewall.kind is None:
        return []
    # A state without a reading is a fresh host's (tests, an empty state): no rules yet.
    fresh = {"status": "absent", "detail": "no table"} if firewall.kind == "nftables" else {"status": "ok", "rules": {}}
    live = state.get("firewall", fresh)
    if live is None or live.get("status") in ("no-nft", "failed"):
        why = live.get("detail") if live else "the host did not answer the firewall fact"
        raise UserError(f"hosts.{plan.name}: cannot apply the firewall rules: {why} (or set "
                        f"hosts.{plan.name}.firewall.manage: false)")
    if firewall.kind == "nftables":
        return [("firewall rules (nftables)", nftables, {
            "path": nftables_path(plan), "content": render_nftables(firewall), "expected": firewall.expected(),
            "live": live})]
    return [("firewall rules (Windows Firewall)", windows_rules, {"expected": windows_expected(firewall),
                                                                   "live": live})]
