"""The local example inventory (``inventory/examples/local.yaml``) made deployable on this machine:
pinned to a local mirror's real archives and hashes, under a chosen install root, on free ports.
The demo deploys it; the re-deploy benchmark and the tests deploy variants of it."""

from __future__ import annotations

from pathlib import Path

import yaml

from llamafleet.rig.mirror import MirrorContent, pin_to_mirror
from llamafleet.rig.servers import free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "inventory" / "examples" / "local.yaml"
SLOW_MODEL = "smollm2-slow"


def example_inventory(content: MirrorContent, mirror_url: str, install_dir: str | None, free_ports: bool,
                      pair: str = "slow") -> dict:
    """The example's data. ``pair`` slow: the padded slow target with SmolLM2 as its draft (as written);
    fast: SmolLM2 as the target as well as the draft."""
    data = yaml.safe_load(EXAMPLE.read_text())
    if pair == "fast":
        data["models"].pop(SLOW_MODEL)
        for host in data["hosts"].values():
            host["models"] = [m for m in host.get("models", []) if m != SLOW_MODEL]
        for service in data["services"].values():
            if service.get("model") == SLOW_MODEL:
                service["model"] = "smollm2"
    pin_to_mirror(data, content, mirror_url)
    host = data["hosts"]["local"]
    if install_dir:
        old = host["install_dir"]
        host.update(install_dir=install_dir, models_dir=host["models_dir"].replace(old, install_dir, 1))
        for service in data["services"].values():  # keep secrets under the chosen root too
            auth = service.get("auth") or {}
            if auth.get("token_file", "").startswith(old):
                auth["token_file"] = auth["token_file"].replace(old, install_dir, 1)
    if free_ports:
        for service in data["services"].values():
            service["port"] = free_port()
            if service.get("native_draft"):
                service["native_draft"]["plain_port"] = free_port()
    return data
