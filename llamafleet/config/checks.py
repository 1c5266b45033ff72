"""Semantic checks over a structurally valid inventory. Each check has its own code and fix hint
(docs/inventory.md lists them); errors fail ``llamafleet validate``, warnings are only printed.

Checks never assume that references resolve: a dangling reference is reported once, by
:func:`check_references`, and every other check skips what it cannot look up.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from llamafleet.config import builds
from llamafleet.findings import Finding, Severity, problem
from llamafleet.config.cache_checks import check_cache
from llamafleet.config.memory import device_index, memory_findings, valid_device_names
from llamafleet.config.tls_files import check_proxy_tls
from llamafleet.config.topology import PlainRoute, plain_route
from llamafleet.config.models import (
    OS,
    Backend,
    DrafterService,
    GpuVendor,
    Inventory,
    LlamaServerService,
    PlainPath,
    ProxyService,
    RpcWorkerService,
    ServiceManager,
    TargetService,
)

Findings = Iterator[Finding]

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def run_checks(inventory: Inventory) -> list[Finding]:
    findings: list[Finding] = []
    for check in CHECKS:
        findings.extend(check(inventory))
    return findings


def _llama_services(inventory: Inventory) -> Iterator[tuple[str, LlamaServerService]]:
    for name, service in inventory.services.items():
        if isinstance(service, LlamaServerService):
            yield name, service


# --- one build -----------------------------------------------------------------------------------


def check_one_build(inventory: Inventory) -> Findings:
    """LF101: the whole cluster runs one llama.cpp build (machines upgraded one by one by hand end
    up on b8112, b8100 and b8079 side by side)."""
    pinned = inventory.llama_cpp.build
    for name, host in inventory.hosts.items():
        if host.llama_cpp_build is not None and host.llama_cpp_build != pinned:
            yield problem("LF101", f"host is on llama.cpp {host.llama_cpp_build} but the cluster pins {pinned}",
                          f"remove llama_cpp_build here: the deploy installs {pinned} on every host",
                          ("hosts", name, "llama_cpp_build"))


# --- flags against the pinned build's capabilities -----------------------------------------------

# Every spelling (b11434, b8942) of options whose value is a model location: model paths come from
# models_dir + the file name. Checked for every build, known or not.
MODEL_PATH_FLAGS = {"-m", "--model", "-mu", "--model-url", "-dr", "--docker-repo", "-hf", "-hfr", "--hf-repo",
                    "-hff", "--hf-file", "-md", "--model-draft", "--spec-draft-model", "-hfd", "-hfrd",
                    "--hf-repo-draft", "--spec-draft-hf", "-mm", "--mmproj", "-mmu", "--mmproj-url", "-mv",
                    "--model-vocoder", "-hfv", "-hfrv", "--hf-repo-v", "-hffv", "--hf-file-v"}
# Deploy purposes the inventory sets from structured fields (purpose -> field); the same option again
# in extra_args would fight it. The spellings come from the build's capabilities.
MANAGED_PURPOSES = {"ctx_size": "ctx_size", "slots": "parallel", "gpu_layers": "gpu_layers", "devices": "devices",
                    "port": "port", "host": "bind", "rpc": "rpc_workers", "draft_device": "native_draft",
                    "draft_gpu_layers": "native_draft", "draft_max": "native_draft", "draft_min": "native_draft"}
_NUMBER = re.compile(r"^-?[0-9.]+$")


def _normalise(flag: str) -> str:
    """llama.cpp reads ``--ctx_size`` as ``--ctx-size`` (long flags only); it has no ``--flag=value``."""
    return flag.replace("_", "-") if flag.startswith("--") else flag


def _is_flag(token: str) -> bool:
    return token.startswith("-") and not _NUMBER.match(token)


def _flag_tokens(args: list[str]) -> Iterator[tuple[int, str]]:
    """(index, flag) for each argument that looks like a flag (``--x=1`` -> ``--x``; ``-1`` is a value)."""
    for index, token in enumerate(args):
        if _is_flag(token):
            yield index, _normalise(token.partition("=")[0])


def _pinned_caps(inventory: Inventory) -> list[builds.BuildCaps]:
    """The pinned build's capabilities, or, for a build not known here, those of every known build."""
    caps = builds.caps_for(inventory.llama_cpp.build)
    if caps is not None:
        return [caps]
    return [c for b in builds.known_builds() if (c := builds.caps_for(b)) is not None]


def _managed_spellings(capss: list[builds.BuildCaps]) -> dict[str, str]:
    """flag -> the structured field that sets it, over every spelling of each managed option."""
    managed = {}
    for caps in capss:
        for purpose, field_name in MANAGED_PURPOSES.items():
            option = caps.server.usable(caps.deploy_flags.get(purpose, ""))
            for spelling in option.flags if option else ():
                managed[spelling] = field_name
    return managed


def check_managed_args(inventory: Inventory) -> Findings:
    """LF104: no model paths in extra_args; LF105: no flags that duplicate a structured field."""
    managed = _managed_spellings(_pinned_caps(inventory))
    for name, service in _llama_services(inventory):
        for index, flag in _flag_tokens(service.extra_args):
            where = ("services", name, "extra_args", index)
            if flag in MODEL_PATH_FLAGS:
                yield problem("LF104", f"{flag} sets a model path by hand (a hand-typed path is easily wrong on one machine)",
                              "name the model in the service's model: (or native_draft:); its path is derived "
                              "from the host's models_dir and the file name", where)
            elif flag in managed:
                yield problem("LF105", f"{flag} is set by llamafleet from the service's {managed[flag]}",
                              f"set {managed[flag]} on the service instead of passing {flag}", where)


def check_flags(inventory: Inventory) -> Findings:
    """LF102/LF106/LF108: every llama-server service's extra_args against the pinned build's options;
    LF107: a structured feature the pinned build has no option for; LF103: the pinned build is not known
    here, so extra_args are checked against the known builds instead."""
    build = inventory.llama_cpp.build
    caps = builds.caps_for(build)
    services = list(_llama_services(inventory))
    if caps is None:
        known = builds.known_builds()
        if any(not isinstance(s, ProxyService) for s in inventory.services.values()):
            yield problem("LF103", f"llama.cpp {build} is not known here (known: {', '.join(known) or 'none'}): "
                          "what its binaries accept is not checked, only extra_args against the known builds",
                          f"pin a known build, or learn {build} from its binaries: `python -m llamafleet.config.builds "
                          f"--bin-dir DIR --build {build} --learn` (a deploy learns it from the installed binaries)",
                          ("llama_cpp", "build"), Severity.warning)
        for name, service in services:
            yield from _check_args_unknown(build, ("services", name, "extra_args"), service.extra_args)
        return
    for name, service in services:
        yield from _check_args(caps, ("services", name, "extra_args"), service.extra_args)
    for name, service in inventory.services.items():
        for purpose, where, why in _rendered_purposes(caps, name, service):
            if caps.flag(purpose) is None:
                program, spellings = builds.PURPOSE_SPELLINGS[purpose]
                having = [b for b in builds.known_builds() if (c := builds.caps_for(b)) and c.flag(purpose)]
                yield problem("LF107", f"llama.cpp {build} cannot express {why}: its {caps.binary(program)} has no "
                              f"{purpose.replace('_', ' ')} option (none of {', '.join(spellings)})",
                              f"pin a build that has it ({', '.join(having) or 'none known'}), or drop the feature",
                              where)


def _rendered_purposes(caps: builds.BuildCaps, name: str, service) -> Iterator[tuple[str, tuple, str]]:
    """(purpose, data path, feature) of every option the deploy renders for this service."""
    base = ("services", name)
    if isinstance(service, LlamaServerService):
        for purpose, field_name in (("model", "model"), ("host", "bind"), ("port", "port"), ("ctx_size", "ctx_size"),
                                    ("slots", "parallel"), ("gpu_layers", "gpu_layers")):
            yield purpose, base + (field_name,), f"a {service.role}'s {field_name}"
        yield "no_webui", base, f"a {service.role} without the web UI"
        yield "api_key_file", base, f"a {service.role} that requires the cluster's API key (llamafleet/server_key.py)"
        if service.devices:
            yield "devices", base + ("devices",), "devices"
    if isinstance(service, TargetService):
        yield "no_repack", base, "a target without weight repacking (exact verification)"
        if service.rpc_workers:
            yield "rpc", base + ("rpc_workers",), "rpc_workers"
        draft = service.native_draft
        if draft is not None:
            where = base + ("native_draft",)
            yield "rpc", where + ("rpc_worker",), "native_draft (a draft on an RPC worker)"
            yield "devices", where, "native_draft (the target's own devices)"
            for purpose, field_name in (("draft_model", "model"), ("draft_device", "rpc_worker"),
                                        ("draft_gpu_layers", "rpc_worker"), ("draft_max", "n_max"),
                                        ("draft_min", "n_min")):
                yield purpose, where + (field_name,), f"native_draft.{field_name}"
            if caps.draft_needs_spec_type:
                yield "spec_type", where, "native_draft (the build selects draft speculation by --spec-type)"
    if isinstance(service, RpcWorkerService):
        yield "rpc_host", base + ("bind",), "an rpc-worker's bind"
        yield "rpc_port", base + ("port",), "an rpc-worker's port"
        if service.device is not None:
            yield "rpc_device", base + ("device",), "an rpc-worker's device"
        if service.cache is True:  # the default only asks for the cache where the build has it
            yield "rpc_cache", base + ("cache",), "an rpc-worker's cache: true"


def _walk_args(path: tuple, args: list[str], resolve, caps: builds.BuildCaps | None = None) -> Findings:
    """One walk over ``extra_args``: ``resolve(token, where)`` gives the findings about a flag and its
    option (None: no such flag, its values are skipped: one mistake, one finding). Values are counted
    against the option, and checked against its choices where the pinned build's ``caps`` are known."""
    index = 0
    while index < len(args):
        token = args[index]
        where = path + (index,)
        if not _is_flag(token):
            yield problem("LF106", f"{token!r} is not a flag and no flag before it takes a value",
                          "write each flag followed by its value(s) as separate list items", where)
            index += 1
            continue
        findings, option = resolve(token, where)
        yield from findings
        if option is None:
            index = _skip_values(args, index)
            continue
        if option.values > len(args) - index - 1:
            yield problem("LF106", f"{token} needs {option.values} value(s)", f"add the value after {token}", where)
        elif caps is not None and option.choices:
            for item in args[index + 1].split(","):
                if item not in option.choices:
                    yield problem("LF108", f"{caps.server_binary} {caps.build} does not accept {item!r} for {token}",
                                  f"one of: {', '.join(option.choices)}", path + (index + 1,))
        index += 1 + option.values


def _check_args(caps: builds.BuildCaps, path: tuple, args: list[str]) -> Findings:
    def resolve(token: str, where: tuple):
        option = caps.server.lookup(_normalise(token))
        if option is None or option.removed:
            what = "lists only as removed" if option else "has no flag"
            return [problem("LF102", f"{caps.server_binary} {caps.build} {what} {token!r}", _flag_hint(caps, token),
                            where)], None
        return [], option

    return _walk_args(path, args, resolve, caps)


def _skip_values(args: list[str], index: int) -> int:
    """Past a flag the build does not know and whatever values follow it (one mistake, one finding)."""
    index += 1
    while index < len(args) and not _is_flag(args[index]):
        index += 1
    return index


def _check_args_unknown(build: str, path: tuple, args: list[str]) -> Findings:
    """extra_args at a build with no capability data: a flag that no known build has is an error, one
    that only some known builds have is a warning naming them."""
    known = builds.known_builds()

    def resolve(token: str, where: tuple):
        flag = _normalise(token)
        having = builds.builds_with_flag("server", flag)
        if not having:
            near = list(dict.fromkeys(s for b in reversed(known) if (c := builds.caps_for(b))
                                      for s in builds.nearest_flags(c, "server", flag)))
            return [problem("LF102", f"no known llama.cpp build ({', '.join(known)}) has flag {token!r}, and "
                            f"{build} is not known here", f"did you mean {' or '.join(near)}?" if near else
                            "see `llama-server --help` of the pinned build", where)], None
        findings = []
        if len(having) < len(known):
            findings.append(problem("LF102", f"{token} exists only in {', '.join(having)} of the known builds; "
                                    f"{build} is not known here and may lack it",
                                    f"check `llama-server --help` of {build}", where, Severity.warning))
        return findings, builds.caps_for(having[-1]).server.lookup(flag)

    return _walk_args(path, args, resolve)


def _flag_hint(caps: builds.BuildCaps, flag: str) -> str:
    name, equals, _ = flag.partition("=")
    if equals and caps.server.usable(_normalise(name)):
        return f"llama.cpp has no --flag=value form: write {name!r} and its value as two list items"
    near = builds.nearest_flags(caps, "server", _normalise(flag))
    if not near:
        return f"see `{caps.server_binary} --help` of {caps.build}"
    managed = _managed_spellings([caps]).get(near[0])
    better = f" Better, set {managed} on the service." if managed else ""
    return f"did you mean {' or '.join(near)}?{better}"


# --- references and roles ------------------------------------------------------------------------

_ROLE_OF = {TargetService: "target", DrafterService: "drafter", RpcWorkerService: "rpc-worker", ProxyService: "proxy"}


def check_references(inventory: Inventory) -> Findings:
    """LF160 (no such host/model/service) and LF161 (a reference to a service of the wrong role)."""
    for host_name, host in inventory.hosts.items():
        for index, model in enumerate(host.models):
            if model not in inventory.models:
                yield _missing("model", model, inventory.models, ("hosts", host_name, "models", index))
    for name, service in inventory.services.items():
        base = ("services", name)
        if service.host not in inventory.hosts:
            yield _missing("host", service.host, inventory.hosts, base + ("host",))
        if isinstance(service, LlamaServerService) and service.model not in inventory.models:
            yield _missing("model", service.model, inventory.models, base + ("model",))
        yield from _service_refs(inventory, base, service)


def _service_refs(inventory: Inventory, base: tuple, service) -> Findings:
    wanted: list[tuple[tuple, str, type]] = []
    if isinstance(service, TargetService):
        wanted += [(base + ("rpc_workers", i), w, RpcWorkerService) for i, w in enumerate(service.rpc_workers)]
        if service.native_draft is not None:
            draft = service.native_draft
            if draft.model not in inventory.models:
                yield _missing("model", draft.model, inventory.models, base + ("native_draft", "model"))
            wanted.append((base + ("native_draft", "rpc_worker"), draft.rpc_worker, RpcWorkerService))
    if isinstance(service, ProxyService):
        wanted += [(base + _target_path(service, i), t, TargetService) for i, t in enumerate(service.target_names)]
        wanted += [(base + ("drafters", i), d, DrafterService) for i, d in enumerate(service.drafters)]
    for path, ref, kind in wanted:
        other = inventory.services.get(ref)
        if other is None:
            yield _missing("service", ref, inventory.services, path)
        elif not isinstance(other, kind):
            yield problem("LF161", f"service {ref!r} is a {other.role}, but this must name a {_ROLE_OF[kind]}",
                          f"name a service with role: {_ROLE_OF[kind]}", path)


def _target_path(service: ProxyService, index: int) -> tuple:
    """Where a proxy's ``index``-th target is written: ``target`` or ``targets.<index>``."""
    return ("target",) if service.target is not None else ("targets", index)


def _missing(kind: str, name: str, known, path: tuple) -> Finding:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"declare it under {kind}s:" if kind != "service" \
        else "declare it under services:"
    return problem("LF160", f"no {kind} named {name!r}", hint, path)


def check_model_on_host(inventory: Inventory) -> Findings:
    """LF150: a service's model (and a native draft) must be in its host's models list, so the deploy
    places the file there before the service starts."""
    for name, service in _llama_services(inventory):
        host = inventory.hosts.get(service.host)
        if host is None:
            continue
        needed = [(("services", name, "model"), service.model)]
        if isinstance(service, TargetService) and service.native_draft is not None:
            needed.append((("services", name, "native_draft", "model"), service.native_draft.model))
        for path, model in needed:
            if model in inventory.models and model not in host.models:
                yield problem("LF150", f"model {model!r} is not in host {service.host!r}'s models list",
                              f"add {model} to hosts.{service.host}.models", path)


# --- tokenizer -----------------------------------------------------------------------------------


def check_tokenizers(inventory: Inventory) -> Findings:
    """LF120: drafts must share the target's tokenizer family (proxy drafters and native drafts)."""
    for name, service in inventory.services.items():
        if isinstance(service, TargetService) and service.native_draft is not None:
            yield from _same_tokenizer(inventory, service.model, service.native_draft.model,
                                       ("services", name, "native_draft", "model"))
        if isinstance(service, ProxyService) and service.target is not None:
            target = inventory.services.get(service.target)
            if not isinstance(target, TargetService):
                continue
            for index, drafter_name in enumerate(service.drafters):
                drafter = inventory.services.get(drafter_name)
                if isinstance(drafter, DrafterService):
                    yield from _same_tokenizer(inventory, target.model, drafter.model,
                                               ("services", name, "drafters", index))


def _same_tokenizer(inventory: Inventory, target_model: str, draft_model: str, path: tuple) -> Findings:
    target, draft = inventory.models.get(target_model), inventory.models.get(draft_model)
    if target is not None and draft is not None and target.tokenizer != draft.tokenizer:
        yield problem("LF120", f"draft {draft_model} uses tokenizer {draft.tokenizer!r} but target {target_model} "
                      f"uses {target.tokenizer!r}: its tokens mean nothing to the target",
                      "pick a draft model of the target's family", path)


# --- ports and addresses -------------------------------------------------------------------------


def _listeners(inventory: Inventory) -> Iterator[tuple[str, str, int, tuple]]:
    """(service, host, port, data path) of every listening process, plain sidecars included."""
    for name, service in inventory.services.items():
        yield name, service.host, service.port, ("services", name, "port")
    for name, service in inventory.services.items():  # last, so a clash points at the derived port
        route = _plain_route(inventory, name)
        if route is not None and route.sidecar is not None:
            yield route.sidecar, service.host, route.port, ("services", name, "native_draft", "plain_port")


def _plain_route(inventory: Inventory, name: str) -> PlainRoute | None:
    service = inventory.services[name]
    draft = getattr(service, "native_draft", None)
    if draft is None or draft.rpc_worker not in inventory.services or service.host not in inventory.hosts:
        return None  # a dangling reference is reported once, by check_references
    return plain_route(inventory, name)


def check_ports(inventory: Inventory) -> Findings:
    """LF130: two services on one host cannot listen on the same port."""
    seen: dict[tuple[str, int], str] = {}
    for name, host, port, path in _listeners(inventory):
        key = (host, port)
        if key in seen:
            yield problem("LF130", f"port {port} on host {host!r} is already used by {seen[key]!r}",
                          "give each service on a host its own port"
                          + (" (native_draft.plain_port sets the plain sidecar's)" if path[-1] == "plain_port" else ""),
                          path)
        else:
            seen[key] = name


def declared_addresses(inventory: Inventory, host_name: str) -> set[str]:
    host = inventory.hosts[host_name]
    declared = set(LOOPBACK) | set(host.addresses)
    if host.connection.type == "ssh":
        declared.add(host.connection.address)
    return declared


def check_binds(inventory: Inventory) -> Findings:
    """LF170: an rpc-worker binds a declared address of its host (ggml-rpc-server has no auth);
    LF171: a service used from another host must not listen on loopback only."""
    for name, service in inventory.services.items():
        if service.host not in inventory.hosts:
            continue
        if isinstance(service, RpcWorkerService) and service.bind not in declared_addresses(inventory, service.host):
            yield problem("LF170", f"rpc-worker binds {service.bind}, which is not an address of host {service.host!r}",
                          f"bind one of: {', '.join(sorted(declared_addresses(inventory, service.host)))}, "
                          f"or add it to hosts.{service.host}.addresses", ("services", name, "bind"))
        for path, ref in _remote_uses(name, service):
            used = inventory.services.get(ref)
            if used is not None and used.host != service.host and used.bind in LOOPBACK:
                yield problem("LF171", f"{ref!r} listens on {used.bind} of host {used.host!r}, so {name!r} on "
                              f"host {service.host!r} cannot reach it",
                              f"bind {ref} to an address of {used.host} that {service.host} can reach",
                              ("services", name) + path)


def _remote_uses(name: str, service) -> Iterator[tuple[tuple, str]]:
    if isinstance(service, TargetService):
        yield from ((("rpc_workers", i), w) for i, w in enumerate(service.rpc_workers))
        if service.native_draft is not None:
            yield ("native_draft", "rpc_worker"), service.native_draft.rpc_worker
    if isinstance(service, ProxyService):
        yield from ((_target_path(service, i), t) for i, t in enumerate(service.target_names))
        yield from ((("drafters", i), d) for i, d in enumerate(service.drafters))


# --- hosts: backend, OS, GPUs, drivers, devices --------------------------------------------------

BACKEND_OS = {Backend.metal: {OS.macos}, Backend.rocm: {OS.linux}, Backend.cuda: {OS.linux, OS.windows},
              Backend.vulkan: {OS.linux, OS.windows}, Backend.cpu: {OS.linux, OS.windows, OS.macos}}
BACKEND_VENDOR = {Backend.cuda: {GpuVendor.nvidia}, Backend.rocm: {GpuVendor.amd}, Backend.metal: {GpuVendor.apple},
                  Backend.vulkan: {GpuVendor.nvidia, GpuVendor.amd, GpuVendor.intel}}
DRIVER_VENDOR = {"nvidia": GpuVendor.nvidia, "rocm": GpuVendor.amd}


def _managers_on(os_: OS) -> set[ServiceManager]:
    from llamafleet.deploys.operations.manager import all_managers

    return {m.kind for m in all_managers() if os_ in m.systems}


def check_hosts(inventory: Inventory) -> Findings:
    """LF140 backend/OS, LF141 service manager/OS, LF142 GPUs/backend, LF143 driver pin/GPUs."""
    for name, host in inventory.hosts.items():
        base = ("hosts", name)
        if host.os not in BACKEND_OS[host.backend]:
            allowed = ", ".join(sorted(o.value for o in BACKEND_OS[host.backend]))
            yield problem("LF140", f"backend {host.backend.value} does not run on {host.os.value} (only {allowed})",
                          "pick the backend this OS supports (metal: macos; rocm: linux; cuda/vulkan: linux, windows)",
                          base + ("backend",))
        managers = _managers_on(host.os)
        if host.service_manager not in managers:
            allowed = ", ".join(sorted(m.value for m in managers))
            yield problem("LF141", f"{host.service_manager.value} does not manage services on {host.os.value}",
                          f"use one of: {allowed}", base + ("service_manager",))
        yield from _check_gpus(name, host)
        if host.driver is not None and not any(g.vendor is DRIVER_VENDOR[host.driver.kind] for g in host.gpus):
            yield problem("LF143", f"a {host.driver.kind} driver pin on a host without a "
                          f"{DRIVER_VENDOR[host.driver.kind].value} GPU", "remove the driver pin or list the GPU",
                          base + ("driver", "kind"))


def _check_gpus(name: str, host) -> Findings:
    vendors = BACKEND_VENDOR.get(host.backend)
    if vendors is None:
        return
    if not host.gpus:
        yield problem("LF142", f"backend {host.backend.value} needs a GPU, and none is listed",
                      "list the host's GPUs (vendor, model, vram_gb), or use backend: cpu", ("hosts", name, "backend"))
    for index, gpu in enumerate(host.gpus):
        if gpu.vendor not in vendors:
            yield problem("LF142", f"backend {host.backend.value} cannot drive a {gpu.vendor.value} GPU",
                          "use the backend of this GPU's vendor (nvidia: cuda; amd: rocm; apple: metal; any: vulkan)",
                          ("hosts", name, "gpus", index, "vendor"))


def check_devices(inventory: Inventory) -> Findings:
    """LF115: device names (-dev, rpc-worker -d) must name a GPU of the host, e.g. CUDA1 or ROCm0."""
    for name, service in inventory.services.items():
        host = inventory.hosts.get(service.host)
        if host is None:
            continue
        names: list[tuple[tuple, str]] = []
        if isinstance(service, LlamaServerService) and service.devices and service.devices != ["none"]:
            names = [(("devices", i), d) for i, d in enumerate(service.devices)]
        if isinstance(service, RpcWorkerService) and service.device is not None:
            names = [(("device",), service.device)]
        for path, device in names:
            if device_index(device, host) is None:
                valid = ", ".join(valid_device_names(host)) or "none (this host has no GPU backend)"
                yield problem("LF115", f"host {service.host!r} has no device {device!r}", f"valid: {valid}",
                              ("services", name) + path)


def check_gpu_layers(inventory: Inventory) -> Findings:
    """LF116: gpu_layers above what the model has. llama.cpp offloads at most its blocks plus the output
    layer ("offloaded 31/31 layers to GPU" for a 30-block model), so ``layers + 1`` is everything."""
    for name, service in _llama_services(inventory):
        model = inventory.models.get(service.model)
        layers = model.architecture.layers if model is not None else None
        if isinstance(service.gpu_layers, int) and layers is not None and service.gpu_layers > layers + 1:
            yield problem("LF116", f"gpu_layers {service.gpu_layers} is more than model {service.model!r} has "
                          f"({layers} layers, plus the output layer: {layers + 1})",
                          "write gpu_layers: all to offload everything", ("services", name, "gpu_layers"))


def check_memory(inventory: Inventory) -> Findings:
    """LF110-LF114: weights plus KV cache fit each device (see llamafleet.config.memory)."""
    yield from memory_findings(inventory)


# --- values the host's service manager cannot carry ------------------------------------------------


def _unit_writers(manager: ServiceManager):
    """(install_dir, env value, extra_args item) writers of the manager's format: the render's own
    escaping functions, which raise ValueError for a value they cannot write unchanged."""
    from llamafleet.deploys.operations.manager import manager_for

    return manager_for(manager).value_writers()


def check_unit_values(inventory: Inventory) -> Findings:
    """LF195: a value that the host's service manager cannot carry unchanged (the render would refuse it)."""
    def refused(path: tuple, manager: ServiceManager, write, *value) -> Findings:
        try:
            write(*value)
        except ValueError as err:
            yield problem("LF195", f"{manager.value} cannot carry this value unchanged: {err}",
                          "change the value (see docs/hardening.md for what each format can carry)", path)

    for name, host in inventory.hosts.items():
        install_dir, _, _ = _unit_writers(host.service_manager)
        yield from refused(("hosts", name, "install_dir"), host.service_manager, install_dir, host.install_dir)
    for name, service in inventory.services.items():
        host = inventory.hosts.get(service.host)
        if host is None:
            continue
        _, env, arg = _unit_writers(host.service_manager)
        for key, value in service.env.items():
            yield from refused(("services", name, "env", key), host.service_manager, env, key, value)
        for index, item in enumerate(getattr(service, "extra_args", [])):
            yield from refused(("services", name, "extra_args", index), host.service_manager, arg, item)


# --- secrets in the inventory ---------------------------------------------------------------------

# A name part that means "this holds a secret", in any case (HF_TOKEN, OPENAI_API_KEY, GithubToken,
# db_password, --api-key, --hf-token); a last part that means "this names where the secret is"
# (--api-key-file, HF_TOKEN_PATH) is fine, and so is a count (MAX_TOKENS).
_SECRET_PART = re.compile(r"^(?:\w*key|\w*token|\w*secrets?|\w*passwords?|passwd|pass|credentials?)$", re.I)
# The options that give llama-server its API key: the deploy sets the key itself (llamafleet/server_key.py).
API_KEY_FLAGS = ("--api-key", "--api-key-file")
API_KEY_ENV = ("LLAMA_API_KEY", "LLAMA_ARG_API_KEY_FILE")  # the same options' variables (llama-server --help)
# Query parameters of signed download URLs (S3, GCS, Azure) besides the secret-looking names.
_SIGNED_URL_PARAMS = re.compile(r"^(?:sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|"
                                r"x-goog-signature|x-goog-credential)$", re.I)


def _download_urls(inventory: Inventory) -> Iterator[tuple[tuple, str]]:
    """(dotted path, URL) of every download URL the deploy hands to the host helper."""
    pin = inventory.llama_cpp
    if pin.mirror:
        yield ("llama_cpp", "mirror"), pin.mirror
    for index, release in enumerate(pin.releases):
        if release.url:
            yield ("llama_cpp", "releases", index, "url"), release.url
    if pin.source is not None and pin.source.url:
        yield ("llama_cpp", "source", "url"), pin.source.url
    for name, model in inventory.models.items():
        for index, file in enumerate(model.files):
            if file.url:
                yield ("models", name, "files", index, "url"), file.url


def _url_secret(url: str) -> str | None:
    """The name of a query parameter of ``url`` that carries a secret, if any."""
    from urllib.parse import parse_qsl, urlsplit

    for name, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if _names_a_secret(name) or _SIGNED_URL_PARAMS.match(name):
            return name
    return None
_LOCATION_PART = re.compile(r"^(?:file|path|dir|env|name|id)$", re.I)
_URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s@]+@", re.I)


def _names_a_secret(name: str) -> bool:
    parts = [p for p in re.split(r"[-_]", name.lstrip("-")) if p]
    return any(_SECRET_PART.match(p) for p in parts) and not (parts and _LOCATION_PART.match(parts[-1]))


def _secret_flag(capss: list[builds.BuildCaps], flag: str) -> bool:
    """``flag`` or any other spelling of its option (``-hft`` is ``--hf-token``) names a secret that
    follows it (a switch such as ``--cors-credentials`` carries none)."""
    spellings = {flag}
    for caps in capss:
        option = caps.server.lookup(flag)
        if option is not None and option.values == 0:
            return False
        spellings.update(option.flags if option else ())
    return any(_names_a_secret(s) for s in spellings)


def _api_key_option(capss: list[builds.BuildCaps], flag: str) -> str | None:
    """Which of llama-server's API key options ``flag`` spells (--api-key or --api-key-file), if any."""
    spellings = {flag}
    for caps in capss:
        option = caps.server.lookup(flag)
        spellings.update(option.flags if option else ())
    return next((s for s in API_KEY_FLAGS if s in spellings), None)


def check_secrets(inventory: Inventory) -> Findings:
    """LF109 (error): an API key option in ``extra_args``: the deploy gives every llama-server the
    cluster's key from a 0600 file, and ``--api-key``'s value would land in the unit file and every
    ``ps`` listing. LF196 (warning): a secret written into the inventory ends up in a unit file and,
    for arguments, in every ``ps`` listing: a secret-looking ``extra_args`` flag (``--hf-token``), an
    ``env`` value under a secret-looking name or under the proxy's ``auth.token_env``, and a URL with
    a user name or password in any ``env`` value or argument; a download URL whose query carries a
    secret (``?token=``, a signed URL's signature), which the host helper gets on its command line."""
    hint = "keep the secret in a 0600 file on the host and name the file (a *-file option, auth.token_file)"
    capss = _pinned_caps(inventory)
    for where, url in _download_urls(inventory):
        secret = _url_secret(url)
        if secret is not None:
            yield problem("LF196", f"the URL's query holds {secret}, which looks like a secret: download URLs are "
                          "passed to the host helper on its command line (every ps listing on the host) and shown "
                          "in pyinfra's output", "serve the file from a mirror that needs no secret in the URL "
                          "(llama_cpp.mirror)", where, Severity.warning)
    for name, service in inventory.services.items():
        auth = getattr(service, "auth", None)
        token_env = auth.token_env if auth is not None else None
        for key, value in service.env.items():
            where = ("services", name, "env", key)
            if key in API_KEY_ENV and isinstance(service, LlamaServerService):
                yield problem("LF109", f"{key} sets llama-server's API key, which the deploy sets itself: every "
                              "llama-server gets --api-key-file with the cluster's key",
                              "remove it; to choose the key, put it in a 0600 file on the machine that deploys and "
                              "name that file in security.server_key_file", where)
            elif value and (key == token_env or _names_a_secret(key)):
                yield problem("LF196", f"the value of {key} looks like a secret, and env values are written "
                              "into the service's unit file", hint, where, Severity.warning)
            elif _URL_CREDENTIALS.search(value):
                yield problem("LF196", f"{key} holds a URL with credentials, which land in the unit file",
                              "drop the user name and password from the URL", where, Severity.warning)
        args = getattr(service, "extra_args", [])
        flags = dict(_flag_tokens(args))
        for index, item in enumerate(args):
            where = ("services", name, "extra_args", index)
            key_option = _api_key_option(capss, flags[index]) if index in flags else None
            if key_option is not None:
                exposed = "" if key_option == "--api-key-file" else \
                    " (and its value would land in the unit file and every ps listing)"
                yield problem("LF109", f"{flags[index]} sets llama-server's API key, which the deploy sets itself"
                              f"{exposed}: every llama-server gets --api-key-file with the cluster's key",
                              "remove it; to choose the key, put it in a 0600 file on the machine that deploys and "
                              "name that file in security.server_key_file", where)
            elif index in flags and _secret_flag(capss, flags[index]):
                yield problem("LF196", f"{flags[index]} puts a secret on the command line (the unit file and "
                              "every ps listing show it)", hint, where, Severity.warning)
            elif _URL_CREDENTIALS.search(item):
                yield problem("LF196", "a URL with credentials on the command line (the unit file and every ps "
                              "listing show it)", "drop the user name and password from the URL", where,
                              Severity.warning)


# --- downloads -----------------------------------------------------------------------------------


def check_downloads(inventory: Inventory) -> Findings:
    """LF180: every model file to place has a URL (its own, or the mirror); LF181: every host that runs
    llama.cpp has an archive to install from (a release for its os/arch/backend, or the source)."""
    pin = inventory.llama_cpp
    placed = {m for host in inventory.hosts.values() for m in host.models}
    for model_name in sorted(placed & set(inventory.models)):
        for index, file in enumerate(inventory.models[model_name].files):
            if file.url is None and pin.mirror is None:
                yield problem("LF180", f"no URL for {file.name} and no llama_cpp.mirror to fall back to",
                              "add url: to the file, or set llama_cpp.mirror",
                              ("models", model_name, "files", index, "name"))
    runs_llama = {s.host for s in inventory.services.values() if not isinstance(s, ProxyService)}
    for name in sorted(runs_llama & set(inventory.hosts)):
        yield from _host_archive(inventory, name)


def _host_archive(inventory: Inventory, name: str) -> Findings:
    host, pin = inventory.hosts[name], inventory.llama_cpp
    if host.install == "source":
        archives = [pin.source] if pin.source is not None else []
        missing = "llama_cpp.source is not set"
    else:
        archives = pin.releases_for(host)
        missing = f"no llama_cpp.releases entry for {host.os.value}/{host.arch.value}/{host.backend.value}"
    if not archives:
        yield problem("LF181", f"host installs llama.cpp from {host.install}, but {missing}",
                      "add the release archive with its sha256, or set install: source and llama_cpp.source",
                      ("hosts", name, "install"))
    for archive in archives:
        if archive.url is None and pin.mirror is None:
            yield problem("LF180", f"no URL for {archive.file} and no llama_cpp.mirror to fall back to",
                          "add url: to the archive, or set llama_cpp.mirror", ("hosts", name, "install"))


# --- proxy ---------------------------------------------------------------------------------------


def check_proxies(inventory: Inventory) -> Findings:
    """LF190: the speculation mode has what it needs; LF191: auth is unambiguous, and required off loopback;
    LF197: a proxy's target listed twice; LF198: a drafter of a several-target proxy that fits none of its
    models' tokenizer families (with one target, LF120 says it)."""
    for name, service in inventory.services.items():
        if not isinstance(service, ProxyService):
            continue
        base = ("services", name)
        if service.mode.value == "proxy" and not service.drafters:
            yield problem("LF190", "mode proxy needs at least one drafter", "list drafters, or use mode: auto",
                          base + ("mode",))
        seen: set[str] = set()
        for index, target_name in enumerate(service.target_names):
            path = base + _target_path(service, index)
            if target_name in seen:
                yield problem("LF197", f"target {target_name!r} is listed twice",
                              "list each target service once: replicas are separate target services", path)
            seen.add(target_name)
            target = inventory.services.get(target_name)
            if service.mode.value == "native" and isinstance(target, TargetService) and target.native_draft is None:
                yield problem("LF190", f"mode native needs target {target_name!r} to have native_draft",
                              "add native_draft to the target, or use mode: auto", base + ("mode",))
        if service.target is None:
            yield from _drafters_fit(inventory, service, base)
        host = inventory.hosts.get(service.host)
        if host is not None and host.os is OS.windows:
            yield problem("LF194", f"the proxy cannot run on host {service.host!r}: it runs on Linux or macOS hosts",
                          "put the proxy on a linux or macos host", base + ("host",))
        auth = service.auth
        if auth is not None and (auth.token_file is None) == (auth.token_env is None):
            yield problem("LF191", "auth needs exactly one of token_file and token_env",
                          "keep one token source", base + ("auth",))
        if auth is None and service.bind not in LOOPBACK:
            yield problem("LF191", f"the proxy listens on {service.bind} without auth",
                          "add auth: {token_file: ...}, or bind 127.0.0.1", base + ("bind",))


def _drafters_fit(inventory: Inventory, service: ProxyService, base: tuple) -> Findings:
    """Each drafter of a several-target proxy drafts for the targets of its tokenizer family: at least one."""
    families = {}
    for target_name in service.target_names:
        target = inventory.services.get(target_name)
        model = inventory.models.get(target.model) if isinstance(target, TargetService) else None
        if model is not None:
            families.setdefault(model.tokenizer, []).append(target.model)
    for index, drafter_name in enumerate(service.drafters):
        drafter = inventory.services.get(drafter_name)
        model = inventory.models.get(drafter.model) if isinstance(drafter, DrafterService) else None
        if model is not None and families and model.tokenizer not in families:
            served = ", ".join(f"{m} ({t})" for t, ms in families.items() for m in dict.fromkeys(ms))
            yield problem("LF198", f"drafter {drafter_name!r} uses tokenizer {model.tokenizer!r}, which none of "
                          f"this proxy's models uses: {served}", "drop the drafter, or add a target of its "
                          "tokenizer family", base + ("drafters", index))


def check_plain_routes(inventory: Inventory) -> Findings:
    """LF192: an explicit plain route the cluster cannot provide; LF193: a target with no plain route.

    Without a plain route, ``auto`` can only choose among speculating paths, so a draft that does not
    pay makes every request slower than the target alone would be. Say so before deploying.
    """
    caps = builds.caps_for(inventory.llama_cpp.build)
    for name, service in inventory.services.items():
        route = _plain_route(inventory, name)
        if route is None:
            continue
        path = ("services", name, "native_draft", "plain")
        wanted = service.native_draft.plain
        if wanted is PlainPath.request and (caps is None or not caps.per_request_speculative):
            known = "does not read" if caps is not None else "has no capability data to show it reads"
            yield problem("LF192", f"plain: request needs per-request speculative.n_max, which llama.cpp "
                          f"{inventory.llama_cpp.build} {known}", "use plain: sidecar (or auto)", path)
        elif wanted is PlainPath.sidecar and service.rpc_workers:
            yield problem("LF192", "plain: sidecar cannot share the target's rpc_workers: an RPC worker serves one "
                          "client at a time", "use plain: request on a build that reads it, or none", path)
        elif route.kind is PlainPath.none:
            yield problem("LF193", f"no plain path to target {name!r}: {route.reason}; the proxy's auto mode can "
                          "only choose among speculating paths", "see docs/proxy.md, 'The plain path'", path,
                          Severity.warning)


def check_firewall(inventory: Inventory) -> Findings:
    """LF172-LF175: host firewall rules the deploy could not write, or that would not hold
    (``llamafleet.deploys.firewall``)."""
    from llamafleet.deploys.firewall import firewall_problems

    for code, message, hint, path, warning in firewall_problems(inventory):
        yield problem(code, message, hint, path, Severity.warning if warning else Severity.error)


CHECKS = (check_references, check_one_build, check_managed_args, check_flags, check_model_on_host, check_tokenizers, check_ports,
          check_binds, check_hosts, check_devices, check_gpu_layers, check_memory, check_downloads, check_proxies,
          check_plain_routes, check_unit_values, check_secrets, check_proxy_tls, check_cache, check_firewall)
