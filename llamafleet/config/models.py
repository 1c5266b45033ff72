"""The inventory's pydantic models: the single source of truth for its shape.

``schemas/inventory.schema.json`` is generated from :class:`Inventory` (``llamafleet schema --write``)
and a test fails when the committed file differs. Cross-field rules that need the whole inventory
(one build, memory fit, tokenizer families, ports, ...) live in :mod:`llamafleet.config.checks`,
each with its own error code; the models here only say what a single field may hold.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
BUILD_PATTERN = r"^b[0-9]+$"

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN, description="Lower-case hex sha256 of the file.")]
Port = Annotated[int, Field(ge=1, le=65535)]


class Strict(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OS(str, Enum):
    linux = "linux"
    windows = "windows"
    macos = "macos"


class Arch(str, Enum):
    x86_64 = "x86_64"
    arm64 = "arm64"


class Backend(str, Enum):
    cuda = "cuda"
    rocm = "rocm"
    vulkan = "vulkan"
    metal = "metal"
    cpu = "cpu"


class ServiceManager(str, Enum):
    systemd = "systemd"
    launchd = "launchd"
    windows_service = "windows-service"
    supervisord = "supervisord"


class GpuVendor(str, Enum):
    nvidia = "nvidia"
    amd = "amd"
    apple = "apple"
    intel = "intel"


# --- llama.cpp pin -------------------------------------------------------------------------------


class ReleaseArchive(Strict):
    """One upstream release asset, e.g. ``llama-b8111-bin-ubuntu-x64.tar.gz``."""

    file: str = Field(description="Asset file name as published upstream.")
    os: OS
    arch: Arch
    backend: Backend
    sha256: Sha256
    url: str | None = Field(None, description="Full URL; defaults to the pin's mirror plus the file name.")


class SourceArchive(Strict):
    """The llama.cpp source tree at the pinned build, built on the host with cmake."""

    file: str = Field(description="Archive file name, e.g. llama.cpp-b8111.tar.gz.")
    sha256: Sha256
    url: str | None = Field(None, description="Full URL; defaults to the pin's mirror plus the file name.")
    cmake_options: dict[Backend, list[str]] = Field(
        default_factory=dict,
        description="Extra cmake -D options per backend, added to the defaults for that backend.",
    )


class LlamaCppPin(Strict):
    build: str = Field(pattern=BUILD_PATTERN, description="The one llama.cpp build tag for the whole cluster.")
    mirror: str | None = Field(None, description="Base URL serving release and source archives (air-gapped sites, tests).")
    releases: list[ReleaseArchive] = Field(default_factory=list)
    source: SourceArchive | None = None

    def releases_for(self, host: Host) -> list[ReleaseArchive]:
        """The release archive(s) a host with ``install: release`` installs (match on os, arch, backend)."""
        return [r for r in self.releases if (r.os, r.arch, r.backend) == (host.os, host.arch, host.backend)]


# --- hosts ---------------------------------------------------------------------------------------


class LocalConnection(Strict):
    type: Literal["local"]


class SshConnection(Strict):
    type: Literal["ssh"]
    address: str = Field(min_length=1, description="Host name or IP address.")
    port: Port = 22
    user: str = Field("root", min_length=1)
    key_file: str | None = Field(None, description="Private key path on the machine running pyinfra.")


Connection = Annotated[Union[LocalConnection, SshConnection], Field(discriminator="type")]


class Gpu(Strict):
    vendor: GpuVendor
    model: str = Field(min_length=1)
    vram_gb: float = Field(gt=0, description="Device memory in GiB (for Apple silicon: unified memory).")
    usable_gb: float | None = Field(
        None, gt=0,
        description="GiB llama.cpp may allocate here, when less than vram_gb: for Apple silicon the Metal working "
        "set (what `llama-server --list-devices` reports). Default for Metal: 2/3 of vram_gb up to 36 GiB, 3/4 above.")


class DriverPin(Strict):
    kind: Literal["nvidia", "rocm"]
    version: str = Field(min_length=1, description="Exact package version, e.g. 550.120 or 6.3.1.")


class Host(Strict):
    connection: Connection
    addresses: list[str] = Field(
        default_factory=list,
        description="Further addresses of this host that services may bind (the ssh address and loopback always may).")
    os: OS
    arch: Arch = Arch.x86_64
    backend: Backend = Backend.cpu
    gpus: list[Gpu] = Field(default_factory=list)
    memory_gb: float | None = Field(None, gt=0, description="System RAM in GiB; unified memory on Apple silicon.")
    macos_version: str | None = Field(None, description="macOS product version, checked against Metal's minimum.")
    driver: DriverPin | None = None
    allow_reboot: bool = Field(False, description="Let a driver change reboot the host; otherwise it is only reported.")
    install: Literal["release", "source"] = "release"
    llama_cpp_build: str | None = Field(
        None, pattern=BUILD_PATTERN, description="Only for documenting a host's build; must equal llama_cpp.build."
    )
    install_dir: str = Field(min_length=1, description="Root of llamafleet's files on the host (builds, units, state).")
    models_dir: str = Field(min_length=1, description="Where model files live; model paths are derived, never typed.")
    service_manager: ServiceManager
    service_user: str | None = Field(None, description="Account services run as; defaults to the connection user.")
    models: list[Name] = Field(default_factory=list, description="Models to place on this host.")


# --- models --------------------------------------------------------------------------------------


class ModelFile(Strict):
    name: str = Field(min_length=1, pattern=r"^[^/\\]+$", description="File name only; the path comes from models_dir.")
    url: str | None = Field(None, description="Where to download it; defaults to the mirror plus the name.")
    sha256: Sha256
    size: int = Field(gt=0, description="Exact size in bytes.")


class MoE(Strict):
    experts: int = Field(gt=1)
    active_experts: int = Field(gt=0)


class Architecture(Strict):
    """Facts used by the memory-fit checks. All optional: a missing fact skips the check it feeds."""

    family: str | None = Field(None, description="e.g. llama, gpt-oss.")
    layers: int | None = Field(None, gt=0)
    n_embd: int | None = Field(None, gt=0)
    kv_dim: int | None = Field(None, gt=0, description="n_head_kv * head_dim, for the KV-cache estimate.")
    total_params_b: float | None = Field(None, gt=0)
    active_params_b: float | None = Field(None, gt=0)
    moe: MoE | None = None


class Model(Strict):
    files: list[ModelFile] = Field(min_length=1, description="One file, or every shard in order.")
    quant: str = Field(min_length=1)
    tokenizer: str = Field(min_length=1, description="Tokenizer family; draft and target must match.")
    architecture: Architecture = Field(default_factory=Architecture)

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)


# --- services ------------------------------------------------------------------------------------


class ServiceBase(Strict):
    host: Name
    port: Port
    bind: str = Field("127.0.0.1", description="Address to listen on. Use a LAN address only where peers need it.")
    env: dict[str, str] = Field(default_factory=dict)


class LlamaServerService(ServiceBase):
    model: Name
    ctx_size: int = Field(4096, gt=0, description="Total context (-c), shared by all slots.")
    parallel: int = Field(1, gt=0, description="Slots (-np / --parallel).")
    gpu_layers: int | Literal["all"] = Field("all", description="-ngl; fewer than all layers offloads the rest to RAM.")
    devices: list[str] | None = Field(None, description="-dev device names; None lets llama.cpp choose.")
    extra_args: list[str] = Field(default_factory=list, description="Checked against the pinned build's flags.")


class PlainPath(str, Enum):
    """How the proxy reaches the target without speculation, when the target runs a native draft.

    A llama-server started with a draft model may speculate on every request; speculation can be slower
    than plain decoding (a fast target, a costly draft, low acceptance), so the proxy needs a plain path
    to fall back to. ``auto`` picks per build and host (see ``llamafleet.config.topology``).
    """

    auto = "auto"
    request = "request"  # the build reads per-request speculative.n_max: 0 turns drafting off for one request
    sidecar = "sidecar"  # a second llama-server on the same model file, without the draft
    none = "none"  # no plain path: auto can only choose among the speculating paths


class NativeDraft(Strict):
    """Native speculation: the target runs the draft model itself, on an RPC worker's device."""

    model: Name
    rpc_worker: Name = Field(description="The rpc-worker service whose device holds the draft.")
    n_max: int = Field(8, gt=0, le=64)
    n_min: int = Field(0, ge=0)
    plain: PlainPath = Field(PlainPath.auto, description="How the proxy reaches this target without speculation.")
    plain_port: Port | None = Field(
        None, description="Port of the plain sidecar llama-server (plain: sidecar); default: the target's port + 1000.")


class TargetService(LlamaServerService):
    role: Literal["target"]
    rpc_workers: list[Name] = Field(default_factory=list, description="rpc-worker services the target splits layers over.")
    native_draft: NativeDraft | None = None


class DrafterService(LlamaServerService):
    role: Literal["drafter"]


class RpcWorkerService(ServiceBase):
    role: Literal["rpc-worker"]
    bind: str = Field(description="Declared address; ggml-rpc-server must never listen beyond it.")
    device: str | None = Field(None, description="Device the worker exposes (-d), e.g. CUDA0.")
    cache: bool = Field(False, description="Enable the worker's local tensor cache (-c).")

    @field_validator("bind")
    @classmethod
    def _not_wildcard(cls, v: str) -> str:
        if v in ("0.0.0.0", "::", ""):
            raise ValueError("ggml-rpc-server must bind a declared address, not a wildcard")
        return v


class SpeculationMode(str, Enum):
    auto = "auto"
    direct = "direct"
    native = "native"
    proxy = "proxy"


class ProxyAuth(Strict):
    token_file: str | None = Field(None, description="File holding the bearer token (mode 0600).")
    token_env: str | None = Field(None, description="Environment variable holding the bearer token.")


class ProxyService(ServiceBase):
    role: Literal["proxy"]
    target: Name
    drafters: list[Name] = Field(default_factory=list)
    mode: SpeculationMode = SpeculationMode.auto
    draft_max: int = Field(8, gt=0, le=64, description="Largest draft length the controller may choose.")
    auth: ProxyAuth | None = Field(None, description="Bearer-token source; None disables auth (loopback only).")


Service = Annotated[
    Union[TargetService, DrafterService, RpcWorkerService, ProxyService], Field(discriminator="role")
]


class Inventory(Strict):
    """A whole llama.cpp cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="llamafleet inventory")

    version: Literal[1] = 1
    cluster: Name
    llama_cpp: LlamaCppPin
    hosts: dict[Name, Host] = Field(min_length=1)
    models: dict[Name, Model] = Field(default_factory=dict)
    services: dict[Name, Service] = Field(default_factory=dict)

    def services_on(self, host: str) -> dict[str, Service]:
        return {name: s for name, s in self.services.items() if s.host == host}
