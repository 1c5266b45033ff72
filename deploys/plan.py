"""What one host must look like, computed from the inventory alone (pure: no I/O, no pyinfra).

The deploy turns a :class:`HostPlan` plus the host's gathered state into commands, and ``drift``
compares the same plan with the same state, so the two can never disagree about what "matches" means.
Every path on the host is derived here: model paths from ``models_dir`` + file name, binaries from
the install directory of the pinned build. Every binary name and flag comes from the pinned build's
capabilities (:func:`plan_caps`), never from one build's spellings.
"""

from __future__ import annotations

import ntpath
import posixpath
from dataclasses import dataclass, field
from functools import cached_property

from llamafleet.config.models import (
    OS,
    Backend,
    PlainPath,
    DrafterService,
    Host,
    Inventory,
    ProxyService,
    RpcWorkerService,
    TargetService,
)
from llamafleet.config.builds import BuildCaps, caps_for, known_builds
from llamafleet.config.topology import plain_route
from llamafleet.deploys import cache as file_cache
from llamafleet.deploys.operations.manager import ServiceManagerModule, manager_for
from llamafleet import tls
from llamafleet.errors import UserError
from llamafleet.server_key import host_key_path, key_source

HELPERS = {False: "lf_host.py", True: "lf_host.ps1"}  # the host helper script, by "is the host Windows"
INSTALL_RECORD = "install.json"  # in each build's folder, written by the helper when it installs the build
# An rpc-worker's tensor cache: LLAMA_CACHE=<install_dir>/rpc-cache, so ggml-rpc-server keeps it in
# <install_dir>/rpc-cache/rpc and never looks for a home folder (a service user may have none).
RPC_CACHE = "rpc-cache"
# cmake options every build gets: RPC for cross-machine drafting, and the pinned build number so a
# tree without git metadata still reports the build it was made from (it would say "build 0").
BASE_CMAKE_OPTIONS = ("-DGGML_RPC=ON", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DCMAKE_BUILD_TYPE=Release")
BACKEND_CMAKE_OPTIONS = {
    Backend.cuda: ("-DGGML_CUDA=ON",),
    Backend.rocm: ("-DGGML_HIP=ON",),
    Backend.vulkan: ("-DGGML_VULKAN=ON",),
    Backend.metal: ("-DGGML_METAL=ON",),
    Backend.cpu: (),
}
# The first device of each backend, as llama.cpp names it (``llama-server --list-devices``). Used to
# keep a target's layers on its own device when native speculation adds an RPC device for the draft.
FIRST_DEVICE = {Backend.cuda: "CUDA0", Backend.rocm: "ROCm0", Backend.vulkan: "Vulkan0", Backend.metal: "MTL0",
                Backend.cpu: "none"}
UPSTREAM_ARCH = {"x86_64": "x64", "arm64": "arm64"}


def _build_number(build: str) -> int:
    return int(build[1:]) if build[1:].isdigit() else -1


def plan_caps(build: str) -> tuple[BuildCaps, str | None]:
    """The capabilities to render ``build`` with, and a note when they are not ``build``'s own.

    A build with shipped or learned data renders with its own. A build nobody has seen yet renders
    with the known build nearest to it by number (its spellings are the likeliest), and the note says
    so: the deploy then reads the installed binary's ``--help``, refuses any flag it lacks, and saves
    what it learned, so the next run (and ``validate``) uses the build's own spellings.
    """
    caps = caps_for(build)
    if caps is not None:
        return caps, None
    known = known_builds()
    if not known:
        raise UserError(f"llama_cpp.build {build}: no build capabilities are known at all "
                        "(llamafleet/config/builds/ is missing from this installation)")
    nearest = min(known, key=lambda b: (abs(_build_number(b) - _build_number(build)), -_build_number(b)))
    return caps_for(nearest), (f"llama.cpp {build} is not known here: rendered with the names and flags of {nearest} "
                               f"(the nearest known build) until a deploy reads {build}'s own --help")


def upstream_release_name(build: str, os_: OS, arch: str, backend: Backend, variant: str | None = None) -> str:
    """The asset name llama.cpp's release workflow publishes (``.github/workflows/release*.yml``).

    ``variant`` is the toolkit version in the name: the CUDA label (``12.8``) or ROCm short version.
    """
    a = UPSTREAM_ARCH[arch]
    if os_ is OS.macos:
        return f"llama-{build}-bin-macos-{a}.tar.gz"
    platform, ext = ("win", "zip") if os_ is OS.windows else ("ubuntu", "tar.gz")
    middle = {
        Backend.cpu: "cpu-" if os_ is OS.windows else "",
        Backend.vulkan: "vulkan-",
        Backend.cuda: f"cuda-{variant or '12.8'}-",
        Backend.rocm: f"rocm-{variant or '10.0'}-",
    }.get(backend)
    if middle is None:
        raise UserError(f"llama.cpp publishes no {backend.value} release for {os_.value}; use install: source")
    return f"llama-{build}-bin-{platform}-{middle}{a}.{ext}"


@dataclass(frozen=True)
class Artifact:
    file: str
    url: str
    sha256: str
    size: int | None = None


@dataclass(frozen=True)
class BuildPlan:
    build: str
    backend: str
    method: str  # "release" | "source"
    build_id: str
    artifacts: tuple[Artifact, ...]  # unpacked in order into one folder (e.g. llama + cudart zips)
    cmake_options: tuple[str, ...] = ()
    binaries: tuple[str, ...] = ("llama-server",)


@dataclass(frozen=True)
class ModelFilePlan:
    model: str
    name: str
    path: str
    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ServicePlan:
    """One long-running process: what it runs and how its service manager names it."""

    service: str
    role: str
    unit_name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    user: str
    port: int
    bind: str
    http_health: bool


@dataclass(frozen=True)
class SecretPlan:
    path: str
    user: str
    source: str | None = None  # a local file copied to ``path`` (the server key); None: generated on the host


@dataclass(frozen=True)
class FolderPlan:
    """A folder only the service user may use (0700, its owner), made by the deploy: an rpc-worker's cache."""

    path: str
    user: str
    mode: str = "0700"


@dataclass
class HostPlan:
    name: str
    host: Host
    inventory: Inventory
    build: BuildPlan
    models: list[ModelFilePlan] = field(default_factory=list)
    services: list[ServicePlan] = field(default_factory=list)
    secrets: list[SecretPlan] = field(default_factory=list)
    folders: list[FolderPlan] = field(default_factory=list)
    proxy_services: list[str] = field(default_factory=list)
    certificates: dict[str, str] = field(default_factory=dict)  # path -> PEM: the proxies' TLS certificates
    caps: BuildCaps | None = None  # what the services were rendered with (plan_caps)
    caps_note: str | None = None  # set when those are another build's (the pin is not known yet)

    # --- derived paths --------------------------------------------------------------------------
    @property
    def windows(self) -> bool:
        return self.host.os is OS.windows

    def path(self, *parts: str) -> str:
        return (ntpath if self.windows else posixpath).join(self.host.install_dir, *parts)

    @property
    def manager(self) -> ServiceManagerModule:
        return manager_for(self.host.service_manager)

    @property
    def helper_name(self) -> str:
        return HELPERS[self.windows]

    @property
    def helper_path(self) -> str:
        return self.path("lib", self.helper_name)

    @property
    def project_record_path(self) -> str:
        """The proxy venv's record of the llamafleet wheel installed into it."""
        return self.path("venv", "llamafleet-wheel.json")

    def verified_stamp(self, model_path: str) -> str:
        """The helper's stamp beside a verified model file (its size and mtime when it was hashed)."""
        join, split = (ntpath.join, ntpath.split) if self.windows else (posixpath.join, posixpath.split)
        head, name = split(model_path)
        return join(head, f".{name}.verified")

    @cached_property
    def files(self) -> dict[str, tuple[str, str]]:
        """Every text file the deploy owns on the host: path -> (content, octal mode), rendered once."""
        from llamafleet.deploys.render import rendered_files

        return rendered_files(self)

    @property
    def supervisor_dir(self) -> str:
        return self.path("supervisor")

    @property
    def supervisor_conf(self) -> str:
        return self.path("supervisor", "supervisord.conf")

    @property
    def venv(self) -> str:
        return self.path("venv")

    def unit_path(self, svc: ServicePlan) -> str:
        return self.manager.unit_path(self, svc.unit_name)

    def proxy_config_path(self, service: str) -> str:
        return self.path("etc", f"{service}.json")


def service_user(host: Host) -> str:
    """Who the host's services run as (and who owns their secrets and folders): ``service_user``, else
    the ssh user, else root."""
    return host.service_user or getattr(host.connection, "user", None) or "root"


def _artifact_url(inventory: Inventory, url: str | None, file: str, what: str) -> str:
    if url:
        return url
    if not inventory.llama_cpp.mirror:
        raise UserError(f"{what}: no url and no llama_cpp.mirror to download {file} from")
    return inventory.llama_cpp.mirror.rstrip("/") + "/" + file


def plan_build(inventory: Inventory, name: str, host: Host, needs_rpc: bool, caps: BuildCaps) -> BuildPlan:
    pin = inventory.llama_cpp
    binaries = (caps.server_binary, caps.rpc_binary) if needs_rpc else (caps.server_binary,)
    if host.install == "source":
        if pin.source is None:
            raise UserError(f"hosts.{name}: install is 'source' but llama_cpp.source is not set")
        options = (*BASE_CMAKE_OPTIONS, f"-DLLAMA_BUILD_NUMBER={pin.build.lstrip('b')}",
                   *BACKEND_CMAKE_OPTIONS[host.backend], *pin.source.cmake_options.get(host.backend, ()))
        if host.os is OS.macos and host.backend is not Backend.metal:
            options += ("-DGGML_METAL=OFF",)  # Metal is on by default on macOS
        options = tuple(dict.fromkeys(options))  # the inventory may repeat a default
        artifact = Artifact(pin.source.file, _artifact_url(inventory, pin.source.url, pin.source.file, "llama_cpp.source"),
                            pin.source.sha256)
        return BuildPlan(pin.build, host.backend.value, "source", f"{pin.build}-{host.backend.value}-src", (artifact,),
                         options, binaries)
    artifacts = tuple(Artifact(r.file, _artifact_url(inventory, r.url, r.file, "llama_cpp.releases"), r.sha256)
                      for r in pin.releases_for(host))
    if artifacts:
        return BuildPlan(pin.build, host.backend.value, "release", f"{pin.build}-{host.backend.value}", artifacts,
                         (), binaries)
    expected = upstream_release_name(pin.build, host.os, host.arch.value, host.backend)
    raise UserError(f"hosts.{name}: no llama_cpp.releases entry for {host.os.value}/{host.arch.value}/"
                    f"{host.backend.value} (upstream publishes it as {expected}); add it or set install: source")


def _model_files(inventory: Inventory, name: str, host: Host, model: str, join) -> list[ModelFilePlan]:
    if model not in inventory.models:
        raise UserError(f"hosts.{name}: model {model!r} is not defined under models")
    return [ModelFilePlan(model, f.name, join(host.models_dir, f.name),
                          _artifact_url(inventory, f.url, f.name, f"models.{model}"), f.sha256, f.size)
            for f in inventory.models[model].files]


def model_path(inventory: Inventory, host: Host, model: str) -> str:
    """The path llama-server loads: the first file (the first shard of a split model)."""
    join = ntpath.join if host.os is OS.windows else posixpath.join
    return join(host.models_dir, inventory.models[model].files[0].name)


def _rpc_endpoint(inventory: Inventory, worker: str) -> str:
    svc = inventory.services[worker]
    return f"{svc.bind}:{svc.port}"


def llama_server_argv(inventory: Inventory, host: Host, svc: TargetService | DrafterService, server: str,
                      caps: BuildCaps | None = None) -> list[str]:
    """The llama-server command line of ``svc`` in ``caps``' spellings (default: the pin's
    :func:`plan_caps`). A plain sidecar is the target with ``native_draft`` set to None."""
    caps = caps or plan_caps(inventory.llama_cpp.build)[0]
    why = f"service {svc.role} on {svc.host}"

    def flag(purpose: str) -> str:
        return caps.require(purpose, why)

    argv = [server, flag("model"), model_path(inventory, host, svc.model), flag("host"), svc.bind,
            flag("port"), str(svc.port), flag("ctx_size"), str(svc.ctx_size), flag("slots"), str(svc.parallel),
            flag("gpu_layers"), str(svc.gpu_layers)]
    if caps.flag("no_webui"):  # builds from before the web UI switch have no UI to turn off
        argv.append(caps.flag("no_webui"))
    # the cluster's API key, from a file only the services' account can read (llamafleet/server_key.py)
    argv += [flag("api_key_file"), host_key_path(host)]
    devices = list(svc.devices) if svc.devices else None
    if isinstance(svc, TargetService):
        # No CPU weight repacking: with it, verifying a batch of draft tokens and decoding one at a
        # time took different kernels and disagreed on 7 of 546 positions (0 of 546 with -nr), and
        # the proxy promises exactly the target's tokens. On GPU backends the flag changes nothing.
        # (A build without the option has no repacking to turn off.)
        if caps.flag("no_repack"):
            argv.append(caps.flag("no_repack"))
        workers = list(svc.rpc_workers)
        native = svc.native_draft
        if native and native.rpc_worker not in workers:
            workers.append(native.rpc_worker)
        if workers:
            argv += [flag("rpc"), ",".join(_rpc_endpoint(inventory, w) for w in workers)]
        if native:
            # RPC devices are numbered in --rpc order; without an explicit -dev the target would
            # spread its own layers over the drafter's device too.
            if devices is None:
                devices = [FIRST_DEVICE[host.backend]] + [f"RPC{workers.index(w)}" for w in svc.rpc_workers]
            argv += [flag("draft_model"), model_path(inventory, host, native.model),
                     flag("draft_device"), f"RPC{workers.index(native.rpc_worker)}", flag("draft_gpu_layers"), "99",
                     *caps.draft_args(native.n_max, native.n_min)]
    if devices:
        argv += [flag("devices"), ",".join(devices)]
    return argv + list(svc.extra_args)


def rpc_worker_argv(svc: RpcWorkerService, binary: str, caps: BuildCaps) -> list[str]:
    why = f"rpc-worker on {svc.host}"
    argv = [binary, caps.require("rpc_host", why), svc.bind, caps.require("rpc_port", why), str(svc.port)]
    argv += [caps.require("rpc_device", why), svc.device] if svc.device else []
    argv += [caps.require("rpc_cache", why)] if rpc_cache_on(svc, caps) else []
    return argv


def rpc_cache_on(svc: RpcWorkerService, caps: BuildCaps) -> bool:
    """``cache: true`` always (validate refuses a build without -c); the default wherever the build has -c."""
    return svc.cache is True or (svc.cache is None and caps.flag("rpc_cache") is not None)


def rpc_cache_folder(svc: RpcWorkerService, caps: BuildCaps) -> bool:
    """Whether the deploy gives the worker its cache folder (cache on, and no LLAMA_CACHE of the user's)."""
    return rpc_cache_on(svc, caps) and "LLAMA_CACHE" not in svc.env


def _library_env(host: Host, bin_dir: str) -> list[tuple[str, str]]:
    # The binaries load libllama/libggml from their own folder; Windows finds DLLs there already.
    if host.os is OS.linux:
        return [("LD_LIBRARY_PATH", bin_dir)]
    if host.os is OS.macos:
        return [("DYLD_LIBRARY_PATH", bin_dir)]
    return []


def plan_services(inventory: Inventory, name: str, host: Host, build_id: str, install_path,
                  caps: BuildCaps) -> list[ServicePlan]:
    exe = ".exe" if host.os is OS.windows else ""
    user = service_user(host)
    prefix = manager_for(host.service_manager).unit_prefix
    plans = []
    for svc_name, svc in sorted(inventory.services_on(name).items()):
        env = _library_env(host, install_path("builds", build_id))
        if isinstance(svc, RpcWorkerService):
            argv = rpc_worker_argv(svc, install_path("builds", build_id, f"{caps.rpc_binary}{exe}"), caps)
            http = False
            env += [("LLAMA_CACHE", install_path(RPC_CACHE))] if rpc_cache_folder(svc, caps) else []
        elif isinstance(svc, ProxyService):
            env = []
            scripts = "Scripts" if host.os is OS.windows else "bin"
            argv = [install_path("venv", scripts, f"llamafleet{exe}"), "proxy", "--config",
                    install_path("etc", f"{svc_name}.json")]
            http = True
        else:
            server = install_path("builds", build_id, f"{caps.server_binary}{exe}")
            argv = llama_server_argv(inventory, host, svc, server, caps)
            http = True
            route = plain_route(inventory, svc_name)
            if route is not None and route.kind is PlainPath.sidecar:
                # The same model and flags without the draft, so the proxy has a path that never drafts.
                sidecar = svc.model_copy(update={"port": route.port, "native_draft": None})
                plans.append(ServicePlan(route.sidecar, "target-plain", prefix + route.sidecar,
                                         tuple(llama_server_argv(inventory, host, sidecar, server, caps)),
                                         tuple(env + sorted(svc.env.items())), user, route.port, svc.bind, True))
        env += sorted(svc.env.items())
        plans.append(ServicePlan(svc_name, svc.role, prefix + svc_name, tuple(argv), tuple(env), user,
                                 svc.port, svc.bind, http))
    return plans


def plan_host(inventory: Inventory, name: str, caps: BuildCaps | None = None) -> HostPlan:
    """``caps``: the pinned build's capabilities when the caller knows better than :func:`plan_caps`
    (the deploy, from the installed binary's --help)."""
    if name not in inventory.hosts:
        raise UserError(f"host {name!r} is not in the inventory (hosts: {', '.join(sorted(inventory.hosts))})")
    host = inventory.hosts[name]
    on_host = inventory.services_on(name)
    needs_rpc = any(isinstance(s, RpcWorkerService) for s in on_host.values())
    note = None
    if caps is None:
        caps, note = plan_caps(inventory.llama_cpp.build)
    # A guessed RPC worker name is not demanded of the archive: the check after the install reads the
    # name the build really ships and refuses a unit that uses another.
    build = plan_build(inventory, name, host, needs_rpc and note is None, caps)
    join = ntpath.join if host.os is OS.windows else posixpath.join

    def install_path(*parts: str) -> str:
        return join(host.install_dir, *parts)

    models = list(host.models)
    for svc in on_host.values():  # a native draft is loaded by the target process from its own disk
        for needed in (getattr(svc, "model", None), getattr(getattr(svc, "native_draft", None), "model", None)):
            if needed and needed not in models:
                models.append(needed)
    plan = HostPlan(name, host, inventory, build, caps=caps, caps_note=note)
    plan.models = [f for m in models for f in _model_files(inventory, name, host, m, join)]
    plan.services = plan_services(inventory, name, host, build.build_id, install_path, caps)
    plan.services += file_cache.cache_services(  # the cluster's file cache, on its host
        inventory, name, plan.helper_path, service_user(host),
        plan.manager.unit_prefix)
    for svc_name, svc in sorted(on_host.items()):
        if isinstance(svc, ProxyService):
            plan.proxy_services.append(svc_name)
            if svc.auth and svc.auth.token_file:
                plan.secrets.append(SecretPlan(svc.auth.token_file, service_user(host)))
            if svc.tls is not None:  # the certificate is an owned file, the key a copied secret (llamafleet/tls.py)
                files = tls.host_files(inventory, svc_name)
                plan.certificates[files.cert_path] = files.cert_pem
                plan.secrets.append(SecretPlan(files.key_path, service_user(host),
                                               files.key_source))
    if any(isinstance(s, RpcWorkerService) and rpc_cache_folder(s, caps) for s in on_host.values()):
        plan.folders.append(FolderPlan(install_path(RPC_CACHE), service_user(host)))
    if any(s.role != "rpc-worker" for s in on_host.values()):
        # llama-servers read the cluster's key, the proxy sends it to them
        plan.secrets.append(SecretPlan(host_key_path(host), service_user(host),
                                       str(key_source(inventory))))
    return plan
