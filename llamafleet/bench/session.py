"""What the benchmark runs against: URLs of the target, the proxy and a drafter, the proxy's token,
and which speculation paths are on offer. From a deployed cluster's inventory, or the local rig."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llamafleet import tls
from llamafleet.config import load_inventory
from llamafleet.config.models import SpeculationMode
from llamafleet.errors import UserError
from llamafleet.proxy.config import ProxyConfig, service_url
from llamafleet.server_key import read_secret, server_key

# The proxy's paths the benchmark compares with the baseline (the target decoding plainly, which is
# what "direct" is), in the order of its tables.
SPECULATION_MODES = tuple(m.value for m in (SpeculationMode.native, SpeculationMode.proxy, SpeculationMode.auto))


@dataclass
class BenchSetup:
    target_url: str  # the target model decoding plainly (a plain sidecar, or the target itself): the baseline
    proxy_url: str
    token: str | None
    drafter_url: str | None  # a drafter llama-server: the draft cost probe, and Tightwad's draft
    modes: list[str]  # the speculation paths the proxy offers, in SPECULATION_MODES order
    about: dict = field(default_factory=dict)  # what was benchmarked, for the JSON file
    notes: list[str] = field(default_factory=list)  # caveats printed under the tables
    target_fields: dict = field(default_factory=dict)  # request fields that keep the baseline plain
    server_key: str | None = None  # the llama-servers' API key (a deployed cluster's; the rig's need none)
    proxy_cert: str | None = None  # a TLS proxy: the local copy of its certificate, the only one trusted


def from_inventory(path: Path, proxy_service: str | None, token_file: Path | None) -> BenchSetup:
    inventory = load_inventory(path)
    name = proxy_service or _only_proxy(inventory, path)
    config = ProxyConfig.from_inventory(inventory, name)
    service = inventory.services[name]
    if config.target is None:
        raise UserError(f"{path}: services.{name} fronts several targets; llamafleet bench measures a proxy "
                        "with one target (benchmarks/replicas.py measures replicas)")
    offered = {m.value for m in config.available_modes()}
    proxy_url, cert = service_url(inventory, service), _proxy_cert(inventory, name, path)
    return BenchSetup(
        target_url=config.target.url,
        proxy_url="https" + proxy_url.removeprefix("http") if cert else proxy_url,
        proxy_cert=cert,
        token=_token(config, token_file),
        drafter_url=config.drafters[0].url if config.drafters else None,
        modes=[m for m in SPECULATION_MODES if m in offered],
        about={"inventory": str(path), "cluster": inventory.cluster, "proxy_service": name,
               "target": config.target.name, "drafters": [d.name for d in config.drafters]},
        notes=_caveats(config),
        target_fields=dict(config.target.request_fields),
        server_key=server_key(inventory),
    )


def _caveats(config: ProxyConfig) -> list[str]:
    if config.native_is_target:
        # No plain path: the only server of the target model speculates on every request.
        return [f"the target {config.target.name} loads its own draft (native_draft) and has no plain path "
                "(native_draft.plain: none), so the baseline already runs llama.cpp's native speculation."]
    return []


def _proxy_cert(inventory, name: str, path: Path) -> str | None:
    """The certificate to trust for a TLS proxy: the inventory's cert_file, or the self-signed pair the
    deploy generated on this machine."""
    if inventory.services[name].tls is None:
        return None
    pair = tls.local_pair(inventory, name, create=False)
    if pair is None:
        raise UserError(f"{path}: services.{name} serves TLS with a self-signed certificate that is not on this "
                        f"machine ({tls.self_signed_dir(inventory.cluster, name)}): run bench where the deploy ran, "
                        f"or copy that folder's cert.pem there (or set {tls.STATE_ENV})")
    return str(pair.cert)


def _only_proxy(inventory, path: Path) -> str:
    proxies = [n for n, s in inventory.services.items() if s.role == "proxy"]
    if len(proxies) != 1:
        found = ", ".join(proxies) or "none"
        raise UserError(f"{path}: bench needs exactly one proxy service or --proxy-service NAME (found: {found})")
    return proxies[0]


def _token(config: ProxyConfig, token_file: Path | None) -> str | None:
    """--token-file wins (the inventory's token_file is a path on the proxy host); otherwise read
    the inventory's own source here, which works for token_env and for a shared path."""
    if token_file is not None:
        return read_secret(token_file, "--token-file")  # a 0600 file of this user
    return config.auth.read_token() if config.auth else None
