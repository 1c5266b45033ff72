"""Host firewall rules (``deploys/firewall.py``): apply them where the live rules differ, nothing otherwise.

Linux: the rendered nftables file is uploaded and applied with ``nft -f``, one transaction that
replaces ``table inet llamafleet`` whole (or leaves the old one in place if anything in it fails);
on systemd hosts a oneshot unit loads the same file at boot, before the network comes up.
Windows: one ``New-``, ``Set-`` or ``Remove-NetFirewallRule`` per llamafleet rule that differs.
Where ``firewall.manage`` was set to false, what an earlier deploy left is removed: the table, its rules
file and boot unit (:func:`nftables_removed`), or every ``llamafleet-*`` rule (:func:`windows_rules` with
none expected).
The live rules come from ``facts/firewall.py``, read once per host with the other state.
"""

from __future__ import annotations

import shlex


from llamafleet.deploys.firewall import (
    BOOT_UNIT,
    TABLE,
    boot_files,
    host_firewall,
    nft_differences,
    removal_paths,
    windows_differences,
    windows_expected,
)
from llamafleet.deploys.operations.common import deploy_operation, ps_quote, sha256_text, upload_posix
from llamafleet.errors import UserError


@deploy_operation
def nftables(files: dict, expected: dict, live: dict):
    """``files``: "nft" (the rules) and on systemd hosts "unit" (loads them at boot), each {path,
    content}; ``expected``: port -> "any" or networks; ``live``: the NftablesRules fact. A differing
    table is replaced whole (``nft -f`` of the file); a differing file is rewritten; the boot unit is
    enabled."""
    seen = live.get("files") or {}
    rules, unit = files["nft"], files.get("unit")
    table_differs = bool(nft_differences(expected, live))
    if seen.get("nft") != sha256_text(rules["content"]):
        yield from upload_posix(rules["path"], rules["content"], "0644")
    if table_differs:
        yield f"nft -f {shlex.quote(rules['path'])}"
    if unit is None:
        return
    if seen.get("unit") != sha256_text(unit["content"]):
        yield from upload_posix(unit["path"], unit["content"], "0644")
        yield "systemctl daemon-reload"
    if seen.get("enabled") != "enabled":
        yield f"systemctl enable {BOOT_UNIT}"


@deploy_operation
def nftables_removed(paths: dict, live: dict):
    """What an earlier deploy left on a host whose firewall is no longer managed: ``table inet
    llamafleet`` is deleted, the boot unit disabled and removed, the rules file removed. ``paths``:
    "nft" (the rules file) and "unit" (the boot unit, systemd hosts; or None); ``live``: the
    NftablesRules fact."""
    seen = live.get("files") or {}
    if live.get("status") == "ok":
        yield f"nft delete table inet {TABLE}"
    if paths.get("unit") and seen.get("unit"):
        yield f"systemctl disable {BOOT_UNIT}"
        yield f"rm -f {shlex.quote(paths['unit'])}"
        yield "systemctl daemon-reload"
    if seen.get("nft"):
        yield f"rm -f {shlex.quote(paths['nft'])}"


@deploy_operation
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
    if firewall.clean:
        live = state.get("firewall")
        if live is None or live.get("status") not in ("ok", "absent"):
            return []  # not read (a state without it), or not readable: nothing known to remove
        if firewall.kind == "nftables":
            return [("firewall rules removed (nftables)", nftables_removed,
                     {"paths": removal_paths(plan), "live": live})]
        return [("firewall rules removed (Windows Firewall)", windows_rules, {"expected": {}, "live": live})]
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
            "files": boot_files(plan, firewall), "expected": firewall.expected(), "live": live})]
    return [("firewall rules (Windows Firewall)", windows_rules, {"expected": windows_expected(firewall),
                                                                   "live": live})]
