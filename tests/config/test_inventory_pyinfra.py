"""The pyinfra inventory module, driven by the real pyinfra CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from inventory_testlib import EXAMPLES, REPO, edit, line_of

PYINFRA = Path(sys.executable).with_name("pyinfra")


def _pyinfra(*args: str, inventory: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("LLAMAFLEET_INVENTORY", None)
    if inventory is not None:
        env["LLAMAFLEET_INVENTORY"] = str(inventory)
    return subprocess.run([str(PYINFRA), "inventory/cluster.py", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def _host_block(out: str, host: str) -> str:
    return out.split(f"[{host}]", 1)[1].split("\n[", 1)[0]


def test_debug_inventory_lists_groups_and_host_data():
    result = _pyinfra("debug-inventory", inventory=EXAMPLES / "seed-cluster.yaml")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    desktop = _host_block(out, "desktop")
    assert "--> Groups: drafters, rpc_workers, windows, cuda" in desktop
    assert '"ssh_hostname": "192.168.86.36"' in desktop and '"ssh_user": "harold"' in desktop
    assert '"_shell_executable": null' in desktop  # Windows: OpenSSH runs PowerShell, no sh -c
    assert "--> Groups: targets, linux, rocm" in _host_block(out, "akiva")
    assert "--> Groups: proxies, macos, metal" in _host_block(out, "mac-mini")
    assert '"llamafleet_inventory": "' + str(EXAMPLES / "seed-cluster.yaml") in desktop


def test_default_inventory_is_the_local_host():
    result = _pyinfra("debug-inventory")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    local = _host_block(out, "@local")
    assert "targets" in local and "rpc_workers" in local and "proxies" in local and "cpu" in local
    assert '"llamafleet_host": "local"' in local
    assert "ssh_hostname" not in local


def test_invalid_inventory_stops_pyinfra_before_any_host(tmp_path):
    text = edit((EXAMPLES / "seed-cluster.yaml").read_text(), "    port: 8081\n    model: gpt-oss-20b\n    ctx_size: 2048\n"
                "    devices: [CUDA1]\n", "    port: 50052\n    model: gpt-oss-20b\n    ctx_size: 2048\n    devices: [CUDA1]\n")
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    result = _pyinfra("exec", "--", "echo", "contacted", inventory=path)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    line = line_of(text, "    port: 50052\n    model: gpt-oss-20b")
    assert f"{path}:{line}:11 LF130 services.desktop-drafter.port" in out
    assert "Traceback" not in out
    assert "Connecting" not in out and "contacted" not in out
