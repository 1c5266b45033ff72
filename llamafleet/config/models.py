"""The inventory's pydantic models: the single source of truth for its shape.

``schemas/inventory.schema.json`` is generated from :class:`Inventory` (``llamafleet schema --write``)
and a test fails when the committed file differs. Cross-field rules that need the whole inventory
(one build, memory fit, tokenizer families, ports, ...) live in :mod:`llamafleet.config.checks`,
each with its own error code; the models here only say what a single field may hold.
"""

from __future__ import annotations

import ipaddress
import ntpath
import posixpath
import re
from enum import Enum
from typing import Annotated, Literal, Union
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# Every string lands somewhere: a unit file, a command line, a log line. A control character (C0, DEL,
# C1) or a Unicode line separator can start a new directive there, so no string field accepts one.
_CTRL = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
TEXT_PATTERN = rf"^[^{_CTRL}]*$"
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
BUILD_PATTERN = r"^b[0-9]+$"
ENV_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
USER_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.@-]*[$]?$"
DEVICE_PATTERN = r"^[A-Za-z][A-Za-z0-9]*$"
# One path component, portable to every OS: no separators, no characters Windows refuses, not . or ..
_NAME_CHAR = rf'[^/\\<>:"|?*{_CTRL}]'
_NAME_CHAR_NO_DOT = rf'[^./\\<>:"|?*{_CTRL}]'
FILE_NAME_PATTERN = rf"^({_NAME_CHAR_NO_DOT}{_NAME_CHAR}*|[.]{_NAME_CHAR_NO_DOT}{_NAME_CHAR}*|[.][.]{_NAME_CHAR}+)$"
# Absolute in either style; the host's os decides which one (Host._path_for_os), and it must be normalised.
ABS_PATH_PATTERN = rf"^(/|[A-Za-z]:[\\/])[^{_CTRL}]*$"
POSIX_PATH_PATTERN = rf"^/[^{_CTRL}]*$"
# An IP literal or a DNS host name (the details are checked by _address).
ADDRESS_PATTERN = r"^[0-9A-Za-z.:-]+$"
# http(s) only; the authority holds no '@', so no user name or password can ride along.
URL_PATTERN = r"^https?://[^/?#@\s\x00-\x1f\x7f-\x9f]+([/?#][^\s\x00-\x1f\x7f-\x9f]*)?$"
MACOS_VERSION_PATTERN = r"^[0-9]+(\.[0-9]+){0,2}$"
NVIDIA_DRIVER_PATTERN = r"^[0-9]{3}\.[0-9]{2,3}(\.[0-9]{2})?$"
ROCM_VERSION_PATTERN = r"^[0-9]+\.[0-9]+(\.[0-9]+)?$"

# llama.cpp's macOS release is built with CMAKE_OSX_DEPLOYMENT_TARGET=13.3 (.github/workflows/release.yml,
# the macos-arm64 job: "-DGGML_METAL_EMBED_LIBRARY=ON -DCMAKE_OSX_DEPLOYMENT_TARGET=13.3"), so its Metal
# build does not load on an older macOS.
METAL_MIN_MACOS = (13, 3)

_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def _address(value: str) -> str:
    """An IP literal (v4 or v6, no zone) or a DNS host name (RFC 1123 labels, not all digits)."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value.split(".")
    if ":" in value or len(value) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError(f"{value!r} is neither an IP address nor a DNS host name")
    if labels[-1].isdigit():
        raise ValueError(f"{value!r} is not a valid IP address (each part of an IPv4 address is 0-255)")
    return value


def _is_wildcard(value: str) -> bool:
    """0.0.0.0, ::, or an IPv4-mapped ::ffff:0.0.0.0 (a host name is never one)."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_unspecified or (mapped is not None and mapped.is_unspecified)


def _url(value: str) -> str:
    parts = urlsplit(value)
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"{value!r} names no host")
    try:
        port = parts.port  # raises on a port outside 0-65535
    except ValueError as err:
        raise ValueError(f"{value!r}: {err}") from None
    if port == 0:
        raise ValueError(f"{value!r}: port 0 is not a port a server listens on")
    _address(host)
    return value


def _posix_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute POSIX path: start with /, e.g. /opt/llamafleet")
    normal = posixpath.normpath(value)
    if normal != value or value.startswith("//"):
        raise ValueError(f"{value!r} is not a normalised absolute POSIX path (no '..', '.', '//' or trailing '/'): "
                         f"write {normal.replace('//', '/')!r}")
    return value


def _windows_path(value: str) -> str:
    if not re.match(r"^[A-Za-z]:\\", value):
        raise ValueError(f"{value!r} is not an absolute Windows path: start with a drive, e.g. C:\\llamafleet")
    if re.search(r'[<>:"|?*]', value[2:]):
        raise ValueError(f"{value!r} holds a character Windows refuses in paths (one of <>:\"|?*)")
    normal = ntpath.normpath(value)
    if normal != value:
        raise ValueError(f"{value!r} is not a normalised Windows path (backslashes, no '..', '.' or trailing '\\'): "
                         f"write {normal!r}")
    return value


Text = Annotated[str, Field(pattern=TEXT_PATTERN)]
Word = Annotated[str, Field(min_length=1, pattern=TEXT_PATTERN)]
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN, description="Lower-case hex sha256 of the file.")]
Port = Annotated[int, Field(ge=1, le=65535)]
EnvKey = Annotated[str, Field(pattern=ENV_KEY_PATTERN, max_length=255)]
UserName = Annotated[str, Field(pattern=USER_PATTERN, max_length=64)]
DeviceName = Annotated[str, Field(pattern=DEVICE_PATTERN, max_length=32)]
FileName = Annotated[str, Field(pattern=FILE_NAME_PATTERN, max_length=255,
                                description="One path component: no '/', '\\', '..' or control characters.")]
Address = Annotated[str, Field(pattern=ADDRESS_PATTERN, max_length=253), AfterValidator(_address)]
# An IP network (CIDR) or one IP address, host bits clear: what a firewall rule can name. No DNS name.
NETWORK_PATTERN = r"^[0-9A-Fa-f.:]+(/[0-9]{1,3})?$"


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value)
    except ValueError as err:
        raise ValueError(f"{value!r} is not an IP network or address (e.g. 192.168.1.0/24, 10.0.0.5, fd00::/64): "
                         f"{err}") from None
    return value


Network = Annotated[str, Field(pattern=NETWORK_PATTERN, max_length=64), AfterValidator(_network)]
Url = Annotated[str, Field(pattern=URL_PATTERN, max_length=2048,
                           description="http:// or https://, without user name or password."), AfterValidator(_url)]
AbsPath = Annotated[str, Field(pattern=ABS_PATH_PATTERN, max_length=1024)]
PosixPath = Annotated[str, Field(pattern=POSIX_PATH_PATTERN, max_length=1024), AfterValidator(_posix_path)]


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

    file: FileName = Field(description="Asset file name as published upstream.")
    os: OS
    arch: Arch
    backend: Backend
    sha256: Sha256
    url: Url | None = Field(None, description="Full URL; defaults to the pin's mirror plus the file name.")


class SourceArchive(Strict):
    """The llama.cpp source tree at the pinned build, built on the host with cmake."""

    file: FileName = Field(description="Archive file name, e.g. llama.cpp-b8111.tar.gz.")
    sha256: Sha256
    url: Url | None = Field(None, description="Full URL; defaults to the pin's mirror plus the file name.")
    cmake_options: dict[Backend, list[Word]] = Field(
        default_factory=dict,
        description="Extra cmake -D options per backend, added to the defaults for that backend.",
    )


class LlamaCppPin(Strict):
    build: str = Field(pattern=BUILD_PATTERN, description="The one llama.cpp build tag for the whole cluster.")
    mirror: Url | None = Field(None, description="Base URL serving release and source archives (air-gapped sites, tests).")
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
    address: Address = Field(description="Host name or IP address.")
    port: Port = 22
    user: UserName = "root"
    key_file: Word | None = Field(None, description="Private key path on the machine running pyinfra.")


Connection = Annotated[Union[LocalConnection, SshConnection], Field(discriminator="type")]


class Gpu(Strict):
    vendor: GpuVendor
    model: Word
    vram_gb: float = Field(gt=0, description="Device memory in GiB (for Apple silicon: unified memory).")
    usable_gb: float | None = Field(
        None, gt=0,
        description="GiB llama.cpp may allocate here, when less than vram_gb: for Apple silicon the Metal working "
        "set (what `llama-server --list-devices` reports). Default for Metal: 2/3 of vram_gb up to 36 GiB, 3/4 above.")

    @field_validator("usable_gb")
    @classmethod
    def _within_vram(cls, value: float | None, info: ValidationInfo) -> float | None:
        vram = info.data.get("vram_gb")
        if value is not None and vram is not None and value > vram:
            raise ValueError(f"usable_gb {value:g} is more than vram_gb {vram:g}: a device cannot give more than it has")
        return value


class NvidiaDriverPin(Strict):
    kind: Literal["nvidia"]
    version: str = Field(pattern=NVIDIA_DRIVER_PATTERN, description="Exact driver version, e.g. 550.120 or 576.88.")


class RocmDriverPin(Strict):
    kind: Literal["rocm"]
    version: str = Field(pattern=ROCM_VERSION_PATTERN, description="Exact ROCm release, e.g. 6.3.1.")


DriverPin = Annotated[Union[NvidiaDriverPin, RocmDriverPin], Field(discriminator="kind")]


class Firewall(Strict):
    """Host firewall rules (docs/hardening.md, "Network exposure"): nftables on Linux, Windows Firewall on
    Windows, none on macOS."""

    manage: bool | None = Field(
        None, description="Render and apply the rules. Default: on for Linux and Windows hosts reached over SSH at "
        "an address that is not loopback; off for macOS, local and loopback hosts (they share this machine's kernel).")
    allow: list[Network] = Field(
        default_factory=list,
        description="Further IP networks or addresses that may reach every service port, e.g. the machine that runs "
        "llamafleet doctor or bench.")


class Host(Strict):
    connection: Connection
    addresses: list[Address] = Field(
        default_factory=list,
        description="Further addresses of this host that services may bind (the ssh address and loopback always may).")
    os: OS
    arch: Arch = Arch.x86_64
    backend: Backend = Backend.cpu
    gpus: list[Gpu] = Field(default_factory=list)
    memory_gb: float | None = Field(None, gt=0, description="System RAM in GiB; unified memory on Apple silicon.")
    macos_version: str | None = Field(None, pattern=MACOS_VERSION_PATTERN,
                                      description="macOS product version, checked against Metal's minimum (13.3).")
    driver: DriverPin | None = None
    allow_reboot: bool = Field(False, description="Let a driver change reboot the host; otherwise it is only reported.")
    install: Literal["release", "source"] = "release"
    llama_cpp_build: str | None = Field(
        None, pattern=BUILD_PATTERN, description="Only for documenting a host's build; must equal llama_cpp.build."
    )
    install_dir: AbsPath = Field(description="Root of llamafleet's files on the host (builds, units, state): an "
                                 "absolute, normalised path of the host's os (/opt/llamafleet, C:\\llamafleet).")
    models_dir: AbsPath = Field(description="Where model files live; model paths are derived, never typed.")
    service_manager: ServiceManager
    service_user: UserName | None = Field(None, description="Account services run as; defaults to the connection user.")
    models: list[Name] = Field(default_factory=list, description="Models to place on this host.")
    firewall: Firewall | None = Field(None, description="This host's firewall: manage overrides the cluster's, allow "
                                      "adds to it.")

    @field_validator("install_dir", "models_dir")
    @classmethod
    def _path_for_os(cls, value: str, info: ValidationInfo) -> str:
        os_ = info.data.get("os")
        if os_ is None:  # the os itself is wrong and reported; no style to check against
            return value
        return _windows_path(value) if os_ is OS.windows else _posix_path(value)

    @field_validator("macos_version")
    @classmethod
    def _metal_minimum(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if info.data.get("os") not in (OS.macos, None):
            raise ValueError("macos_version is only for macos hosts")
        version = tuple(int(part) for part in value.split("."))
        if info.data.get("backend") is Backend.metal and version < METAL_MIN_MACOS:
            minimum = ".".join(map(str, METAL_MIN_MACOS))
            raise ValueError(f"macOS {value} is older than {minimum}, the minimum of llama.cpp's Metal build "
                             "(CMAKE_OSX_DEPLOYMENT_TARGET in its release workflow)")
        return value


# --- models --------------------------------------------------------------------------------------


class ModelFile(Strict):
    name: FileName = Field(description="File name only; the path comes from models_dir.")
    url: Url | None = Field(None, description="Where to download it; defaults to the mirror plus the name.")
    sha256: Sha256
    size: int = Field(gt=0, description="Exact size in bytes.")


class MoE(Strict):
    experts: int = Field(gt=1)
    active_experts: int = Field(gt=0)

    @field_validator("active_experts")
    @classmethod
    def _at_most_experts(cls, value: int, info: ValidationInfo) -> int:
        experts = info.data.get("experts")
        if experts is not None and value > experts:
            raise ValueError(f"active_experts {value} is more than experts {experts}")
        return value


class Architecture(Strict):
    """Facts used by the memory-fit checks. All optional: a missing fact skips the check it feeds."""

    family: Word | None = Field(None, description="e.g. llama, gpt-oss.")
    layers: int | None = Field(None, gt=0)
    n_embd: int | None = Field(None, gt=0)
    kv_dim: int | None = Field(None, gt=0, description="n_head_kv * head_dim, for the KV-cache estimate.")
    total_params_b: float | None = Field(None, gt=0)
    active_params_b: float | None = Field(None, gt=0)
    moe: MoE | None = None


class Model(Strict):
    files: list[ModelFile] = Field(min_length=1, description="One file, or every shard in order.")
    quant: Word
    tokenizer: Word = Field(description="Tokenizer family; draft and target must match.")
    architecture: Architecture = Field(default_factory=Architecture)

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)


# --- services ------------------------------------------------------------------------------------


class ServiceBase(Strict):
    host: Name
    port: Port
    bind: Address = Field("127.0.0.1", description="Address to listen on. Use a LAN address only where peers need it.")
    env: dict[EnvKey, Text] = Field(default_factory=dict)


class LlamaServerService(ServiceBase):
    model: Name
    ctx_size: int = Field(4096, gt=0, description="Total context (-c), shared by all slots.")
    parallel: int = Field(1, gt=0, description="Slots (-np / --parallel).")
    gpu_layers: Annotated[int, Field(ge=0)] | Literal["all"] = Field(
        "all", description="-ngl; fewer than all layers offloads the rest to RAM.")
    devices: list[DeviceName] | None = Field(None, description="-dev device names; None lets llama.cpp choose.")
    extra_args: list[Text] = Field(default_factory=list, description="Checked against the pinned build's flags.")


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

    @field_validator("n_min")
    @classmethod
    def _at_most_n_max(cls, value: int, info: ValidationInfo) -> int:
        n_max = info.data.get("n_max")
        if n_max is not None and value > n_max:
            raise ValueError(f"n_min {value} is more than n_max {n_max}")
        return value
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
    bind: Address = Field(description="Declared address; ggml-rpc-server must never listen beyond it.")
    device: DeviceName | None = Field(None, description="Device the worker exposes (-d), e.g. CUDA0.")
    cache: bool | None = Field(None, description="The worker's local tensor cache (-c) in <install_dir>/rpc-cache: a "
                               "target restart loads the tensors over 10 MiB from the worker's disk instead of sending "
                               "them again. Default: on where the pinned build's worker has -c; true: required (validate "
                               "refuses a build without it); false: off.")

    @field_validator("bind")
    @classmethod
    def _not_wildcard(cls, v: str) -> str:
        if _is_wildcard(v):  # a host name: check_binds wants it among the host's addresses
            raise ValueError(f"ggml-rpc-server must bind a declared address, not the wildcard {v}")
        return v


class SpeculationMode(str, Enum):
    auto = "auto"
    direct = "direct"
    native = "native"
    proxy = "proxy"


class ProxyAuth(Strict):
    token_file: PosixPath | None = Field(None, description="File holding the bearer token (mode 0600), on the proxy's "
                                         "host (Linux or macOS): an absolute, normalised path.")
    token_env: EnvKey | None = Field(None, description="Environment variable holding the bearer token.")


class ProxyTls(Strict):
    """HTTPS for the proxy: a certificate and key of your own, or a self-signed pair made once on the
    deployer (kept in its local state folder, see docs/hardening.md) whose fingerprint doctor checks."""

    cert_file: AbsPath | None = Field(None, description="PEM certificate (chain) on the machine that runs the deploy: "
                                      "an absolute path. Uploaded to the proxy host.")
    key_file: AbsPath | None = Field(None, description="Its PEM private key (unencrypted, mode 0600) on the machine "
                                     "that runs the deploy: an absolute path. Uploaded as a 0600 secret.")
    self_signed: bool = Field(False, description="Generate a self-signed pair for the proxy's address instead, "
                              "once; later deploys reuse it.")

    @model_validator(mode="after")
    def _one_source(self) -> "ProxyTls":
        files = [self.cert_file, self.key_file]
        if self.self_signed and any(files):
            raise ValueError("set either self_signed: true or cert_file and key_file, not both")
        if not self.self_signed and not all(files):
            raise ValueError("set both cert_file and key_file (or self_signed: true)")
        return self


class ProxyService(ServiceBase):
    role: Literal["proxy"]
    target: Name | None = Field(None, description="The target service it fronts (one model, one server).")
    targets: list[Name] = Field(
        default_factory=list, validate_default=True,
        description="Several target services instead of one: targets of the same model are replicas (each "
        "request goes to the least busy one), different models are separate entries in /v1/models, selected "
        "by the request's model.")
    drafters: list[Name] = Field(default_factory=list)
    mode: SpeculationMode = SpeculationMode.auto
    draft_max: int = Field(8, gt=0, le=64, description="Largest draft length the controller may choose.")
    auth: ProxyAuth | None = Field(None, description="Bearer-token source; None disables auth (loopback only).")
    tls: ProxyTls | None = Field(None, description="Serve HTTPS; None serves plain HTTP.")

    @field_validator("targets")
    @classmethod
    def _one_target_field(cls, targets: list[str], info: ValidationInfo) -> list[str]:
        # On targets (validated after target), so the finding points at the proxy's targets line.
        if "target" in info.data and (info.data["target"] is None) == (not targets):
            raise ValueError("set exactly one of target (one target service) or targets (a list of them)")
        return targets

    @property
    def target_names(self) -> list[str]:
        """The target services it fronts, in inventory order."""
        return [self.target] if self.target is not None else list(self.targets)


Service = Annotated[
    Union[TargetService, DrafterService, RpcWorkerService, ProxyService], Field(discriminator="role")
]


class Security(Strict):
    """The cluster's own secrets (docs/deploys.md, "Secrets")."""

    server_key_file: PosixPath | None = Field(
        None, description="File on the machine running the deploy holding the API key every llama-server requires "
        "(mode 0600, one line). The deploy copies it to each host as a 0600 file of the service user, starts every "
        "llama-server with --api-key-file, and gives the proxy the same file. Default: a key the deploy generates "
        "once under $LLAMAFLEET_STATE/clusters/<cluster>/server.key.")


class FileCache(Strict):
    """The cluster's file cache: one host fetches every model file and llama.cpp archive from its
    upstream URL once, verifies it, and serves it to the other hosts (docs/deploys.md, "The file cache")."""

    host: Name = Field(description="The host that fetches each file from upstream once and serves it (Linux or "
                       "macOS), or deployer: the machine that runs the deploy, serving for the deploy's duration.")
    port: Port = Field(8780, description="Port of its file server.")
    bind: Address | None = Field(
        None, description="Address its file server listens on, one the other hosts reach; default: the host's ssh "
        "address (required with host: deployer). Never a wildcard.")
    folder: PosixPath | None = Field(None, description="Where it keeps the files; default: <install_dir>/cache "
                                     "(deployer: $LLAMAFLEET_CACHE/files).")
    peers: bool = Field(False, description="Every other Linux or macOS host reached over ssh also serves the verified "
                        "files it holds (its models_dir and downloaded archives) on this port at its ssh address; a "
                        "host fetches from the cache, then from the peers that hold the file, then upstream.")

    @field_validator("bind")
    @classmethod
    def _not_wildcard(cls, v: str | None) -> str | None:
        if v is not None and _is_wildcard(v):
            raise ValueError(f"the file cache serves the cluster's addresses only, not the wildcard {v}")
        return v


class Inventory(Strict):
    """A whole llama.cpp cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="llamafleet inventory")

    version: Literal[1] = 1
    cluster: Name
    llama_cpp: LlamaCppPin
    hosts: dict[Name, Host] = Field(min_length=1)
    models: dict[Name, Model] = Field(default_factory=dict)
    services: dict[Name, Service] = Field(default_factory=dict)
    firewall: Firewall = Field(default_factory=Firewall, description="Host firewall rules for every host.")
    security: Security = Field(default_factory=Security)
    cache: FileCache | None = Field(None, description="Fetch each file from upstream once per cluster, on this "
                                    "host, and serve it to the others; none: every host fetches from upstream.")

    def services_on(self, host: str) -> dict[str, Service]:
        return {name: s for name, s in self.services.items() if s.host == host}
