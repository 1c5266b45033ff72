"""Semantic checks over a structurally valid inventory. Each check has its own code and fix hint."""

from __future__ import annotations

from pathlib import Path

from llamafleet.config.findings import Finding
from llamafleet.config.models import Inventory


def run_checks(inventory: Inventory, inventory_path: Path | None = None) -> list[Finding]:
    findings: list[Finding] = []
    for check in CHECKS:
        findings.extend(check(inventory))
    return findings


def check_one_build(inventory: Inventory):
    """LF101: the whole cluster runs one llama.cpp build (the seed ran b8112, b8100 and b8079)."""
    pinned = inventory.llama_cpp.build
    for name, host in inventory.hosts.items():
        if host.llama_cpp_build is not None and host.llama_cpp_build != pinned:
            yield Finding("LF101", f"host is on llama.cpp {host.llama_cpp_build} but the cluster pins {pinned}",
                          f"remove llama_cpp_build here (the deploy installs {pinned} on every host)",
                          ("hosts", name, "llama_cpp_build"))


CHECKS = (check_one_build,)
