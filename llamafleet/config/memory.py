"""Memory fit: does every service's model (weights plus a KV-cache estimate) fit the devices it lands on?

The estimate follows how llama.cpp places a model (see docs/inventory.md, "Memory fit"):
- ``gpu_layers`` of the model's ``layers`` go to GPUs, the rest stays in system RAM;
- the GPU part is split over the devices in use in proportion to their memory, which is what
  llama.cpp does when no ``--tensor-split`` is given (src/llama-model.cpp, "default split, by free memory");
- the KV cache is 2 (K and V) x layers x ctx x kv_dim x 2 bytes (f16), split like the layers;
- each service also needs compute buffers on every device it uses: ``DEVICE_OVERHEAD_GIB``;
- a native draft (``native_draft``) lives entirely on its RPC worker's device.
Usage is summed per physical device over every service on the host, then compared with capacity:
VRAM, or for Apple silicon the Metal working set (``metal_working_set_gib``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from llamafleet.findings import DataPath, Finding, Severity, problem
from llamafleet.config.models import Backend, Host, Inventory, Model, OS, RpcWorkerService, TargetService
from llamafleet.config.topology import SHARED_WEIGHTS_BACKENDS, plain_route

GIB = 2**30
DEVICE_OVERHEAD_GIB = 0.5  # compute buffers and backend context per service per device (an estimate)
KV_BYTES_PER_VALUE = 2  # f16 cache, llama.cpp's default --cache-type-k/v

DEVICE_PREFIX = {Backend.cuda: "CUDA", Backend.rocm: "ROCm", Backend.vulkan: "Vulkan", Backend.metal: "MTL"}


def metal_working_set_gib(unified_gib: float) -> float:
    """macOS's default Metal working set (MTLDevice.recommendedMaxWorkingSetSize): 2/3 of unified
    memory up to 36 GiB, 3/4 above. A 16 GiB M2 reports 11,453.25 MB (= 10.67 GiB) in llama.cpp's Metal log."""
    return unified_gib * (2 / 3 if unified_gib <= 36 else 3 / 4)


def kv_cache_bytes(model: Model, ctx: int) -> int:
    arch = model.architecture
    if arch.layers is None or arch.kv_dim is None:
        return 0
    return 2 * arch.layers * ctx * arch.kv_dim * KV_BYTES_PER_VALUE


def gpu_fraction(model: Model, gpu_layers: int | str) -> float:
    """Share of the model offloaded to GPUs: -ngl counts layers (plus the output layer)."""
    layers = model.architecture.layers
    if gpu_layers == "all" or layers is None:
        return 1.0
    return min(1.0, max(0, gpu_layers) / layers)


@dataclass
class Device:
    """One place memory is allocated: a GPU, or a host's system RAM."""

    host: str
    label: str
    capacity_gib: float
    rule: str  # how the capacity was derived, shown in the message
    path: DataPath
    metal: bool = False
    uses: list[tuple[str, float, DataPath]] = field(default_factory=list)  # (who, GiB, where it is declared)

    @property
    def used_gib(self) -> float:
        return sum(gib for _, gib, _ in self.uses)


def gpu_capacity(host: Host, index: int) -> tuple[float, str, bool]:
    gpu = host.gpus[index]
    if gpu.usable_gb is not None:
        return gpu.usable_gb, f"usable_gb {gpu.usable_gb:g} GiB", host.backend is Backend.metal
    if host.backend is Backend.metal:
        limit = metal_working_set_gib(gpu.vram_gb)
        share = "2/3" if gpu.vram_gb <= 36 else "3/4"
        return limit, f"Metal working set {limit:.2f} GiB = {share} of {gpu.vram_gb:g} GiB unified memory", True
    return gpu.vram_gb, f"{gpu.vram_gb:g} GiB VRAM", False


def device_index(name: str, host: Host) -> int | None:
    """``CUDA1`` -> 1 when the host's backend uses that prefix and has that GPU; None otherwise."""
    prefix = DEVICE_PREFIX.get(host.backend)
    match = re.fullmatch(r"([A-Za-z]+)(\d*)", name)
    if prefix is None or not match or match.group(1) != prefix:
        return None
    index = int(match.group(2) or 0)
    return index if index < len(host.gpus) else None


def valid_device_names(host: Host) -> list[str]:
    prefix = DEVICE_PREFIX.get(host.backend)
    return [f"{prefix}{i}" for i in range(len(host.gpus))] if prefix else []


class Ledger:
    """Every device in the cluster and what each service puts on it."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory
        self.gpus: dict[tuple[str, int], Device] = {}
        self.ram: dict[str, Device] = {}
        for name, host in inventory.hosts.items():
            for index, gpu in enumerate(host.gpus):
                capacity, rule, metal = gpu_capacity(host, index)
                self.gpus[(name, index)] = Device(name, f"{name} GPU {index} ({gpu.model})", capacity, rule,
                                                  ("hosts", name, "gpus", index), metal)
            if host.memory_gb is not None:
                self.ram[name] = Device(name, f"{name} system RAM", host.memory_gb, f"{host.memory_gb:g} GiB RAM",
                                        ("hosts", name, "memory_gb"))

    def uses_gpus(self, host_name: str) -> bool:
        host = self.inventory.hosts[host_name]
        return host.backend is not Backend.cpu and bool(host.gpus)

    def service_gpus(self, host_name: str, devices: list[str] | None) -> list[int]:
        """GPU indexes a llama-server on this host uses: its ``devices``, else every GPU."""
        if not self.uses_gpus(host_name) or devices == ["none"]:
            return []
        host = self.inventory.hosts[host_name]
        if devices is None:
            return list(range(len(host.gpus)))
        return [i for i in (device_index(d, host) for d in devices) if i is not None]

    def worker_gpus(self, worker: RpcWorkerService) -> list[int]:
        """GPUs an rpc-worker serves: its ``device``, else every GPU of its host."""
        return self.service_gpus(worker.host, None if worker.device is None else [worker.device])

    def place(self, service: str, path: DataPath, home: str, device_keys: list[tuple[str, int]], gpu_bytes: float,
              ram_bytes: float) -> None:
        """Split ``gpu_bytes`` over the GPUs in proportion to their capacity (llama.cpp's default split);
        ``ram_bytes`` (and everything, when there is no GPU) stays in the home host's RAM."""
        if not device_keys:
            gpu_bytes, ram_bytes = 0, ram_bytes + gpu_bytes
        total = sum(self.gpus[key].capacity_gib for key in device_keys)
        for key in device_keys:
            device = self.gpus[key]
            share = gpu_bytes * device.capacity_gib / total
            device.uses.append((service, share / GIB + DEVICE_OVERHEAD_GIB, path))
            if self.inventory.hosts[key[0]].os is OS.macos:
                self._ram(service, path, key[0], share)  # Apple silicon's GPU memory is the same RAM
        self._ram(service, path, home, ram_bytes)

    def _ram(self, service: str, path: DataPath, host: str, nbytes: float) -> None:
        if host in self.ram and nbytes:
            self.ram[host].uses.append((service, nbytes / GIB, path))


def _split_devices(ledger: Ledger, service: TargetService) -> list[tuple[str, int]]:
    """(host, gpu) of every device a target's GPU layers are split over: its own GPUs and its RPC workers'."""
    own = [(service.host, i) for i in ledger.service_gpus(service.host, service.devices)]
    remote = []
    for worker_name in service.rpc_workers:
        worker = ledger.inventory.services.get(worker_name)
        if isinstance(worker, RpcWorkerService) and worker.host in ledger.inventory.hosts:
            remote += [(worker.host, i) for i in ledger.worker_gpus(worker)]
    return own + remote


def fill_ledger(inventory: Inventory) -> Ledger:
    """Place every llama-server service's model (and native draft) on devices."""
    ledger = Ledger(inventory)
    for name, service in inventory.services.items():
        model = inventory.models.get(getattr(service, "model", ""))
        if model is None or service.host not in inventory.hosts or service.role not in ("target", "drafter"):
            continue
        need = model.size_bytes + kv_cache_bytes(model, service.ctx_size)
        on_gpu = need * gpu_fraction(model, service.gpu_layers)
        devices = _split_devices(ledger, service) if isinstance(service, TargetService) else \
            [(service.host, i) for i in ledger.service_gpus(service.host, service.devices)]
        ledger.place(name, ("services", name, "model"), service.host, devices, on_gpu, need - on_gpu)
        if isinstance(service, TargetService) and service.native_draft is not None:
            _place_native_draft(ledger, name, service)
            _place_plain_sidecar(ledger, name, service, model, devices)
    return ledger


def _place_plain_sidecar(ledger: Ledger, name: str, service: TargetService, model: Model, devices) -> None:
    """A plain sidecar maps the same model file: on CPU and unified-memory hosts the weights' pages are
    shared, so it adds its KV cache (and compute buffers, in the per-device overhead); a discrete GPU
    holds a second copy of the weights."""
    inventory = ledger.inventory
    if service.native_draft.rpc_worker not in inventory.services:
        return  # dangling reference: reported by check_references
    route = plain_route(inventory, name)
    if route is None or route.sidecar is None:
        return
    host = inventory.hosts[service.host]
    kv = kv_cache_bytes(model, service.ctx_size)
    need = kv if host.backend in SHARED_WEIGHTS_BACKENDS else model.size_bytes + kv
    on_gpu = need * gpu_fraction(model, service.gpu_layers)
    own = [key for key in devices if key[0] == service.host]
    ledger.place(route.sidecar, ("services", name, "native_draft", "plain"), service.host, own, on_gpu, need - on_gpu)


def _place_native_draft(ledger: Ledger, name: str, service: TargetService) -> None:
    inventory = ledger.inventory
    draft = inventory.models.get(service.native_draft.model)
    worker = inventory.services.get(service.native_draft.rpc_worker)
    if draft is None or not isinstance(worker, RpcWorkerService) or worker.host not in inventory.hosts:
        return
    gpus = ledger.worker_gpus(worker)[:1]  # -devd RPC0: the draft goes to the worker's first device
    need = draft.size_bytes + kv_cache_bytes(draft, service.ctx_size)
    ledger.place(f"{name} (native draft)", ("services", name, "native_draft", "model"), worker.host,
                 [(worker.host, i) for i in gpus], need, 0)


def memory_findings(inventory: Inventory) -> list[Finding]:
    ledger = fill_ledger(inventory)
    findings = []
    for device in list(ledger.gpus.values()) + list(ledger.ram.values()):
        if device.used_gib <= device.capacity_gib or not device.uses:
            continue
        parts = ", ".join(f"{service} {gib:.2f}" for service, gib, _ in device.uses)
        culprit = max(device.uses, key=lambda use: use[1])[2]  # point at the largest user's declaration
        code = "LF111" if device.metal else ("LF114" if device.path[-1] == "memory_gb" else "LF110")
        hint = ("use a smaller quant, fewer gpu_layers, a smaller ctx_size, or move a service to another device"
                if not device.metal else
                "the default Metal working set is 2/3 of unified memory (3/4 above 36 GiB): use a smaller quant or "
                "fewer gpu_layers; if you raised iogpu.wired_limit_mb, set usable_gb to what "
                "`llama-server --list-devices` reports")
        findings.append(problem(code, f"{device.label} needs {device.used_gib:.2f} GiB ({parts}) but holds "
                                f"{device.capacity_gib:.2f} GiB ({device.rule})", hint, culprit))
    findings += moe_rpc_findings(inventory, ledger)
    findings += _unestimated_kv(inventory)
    return findings


def moe_rpc_findings(inventory: Inventory, ledger: Ledger) -> list[Finding]:
    """LF112: an MoE target split over RPC workers. Each worker is handed a share of the model in
    proportion to the memory it reports, and a ggml-rpc-server that fronts several GPUs reports them
    together while its buffers land on one card. In the four-machine example the desktop's worker
    reports 28 GB (16 + 12) against akiva's 48 GB, so it is handed 28/76 of ~60.5 GB = 22.3 GB, and
    llama.cpp fails to allocate that on the 12 GB RTX 3060."""
    findings = []
    for name, service in inventory.services.items():
        if not isinstance(service, TargetService) or not service.rpc_workers:
            continue
        model = inventory.models.get(service.model)
        if model is None or model.architecture.moe is None:
            continue
        devices = _split_devices(ledger, service)
        total = sum(ledger.gpus[d].capacity_gib for d in devices)
        weights = model.size_bytes * gpu_fraction(model, service.gpu_layers)
        for index, worker_name in enumerate(service.rpc_workers):
            worker = inventory.services.get(worker_name)
            if not isinstance(worker, RpcWorkerService) or worker.host not in inventory.hosts:
                continue
            gpus = [ledger.gpus[(worker.host, i)] for i in ledger.worker_gpus(worker)]
            if not gpus or not total:
                continue
            reported = sum(g.capacity_gib for g in gpus)
            share = weights * reported / total
            smallest = min(gpus, key=lambda g: g.capacity_gib)
            if share / GIB + DEVICE_OVERHEAD_GIB > smallest.capacity_gib:
                findings.append(problem(
                    "LF112",
                    f"MoE model {service.model} split over RPC: worker {worker_name} reports {reported:g} of "
                    f"{total:g} GiB, so it is handed {share / 1e9:.1f} GB ({share / GIB:.1f} GiB) of weights in one "
                    f"buffer (+{DEVICE_OVERHEAD_GIB} GiB overhead), more than {smallest.label} holds "
                    f"({smallest.capacity_gib:g} GiB)",
                    "keep the MoE model on the target's own GPUs with fewer gpu_layers (the rest in RAM), or pin the "
                    "worker to one card with device: so it reports only that card",
                    ("services", name, "rpc_workers", index)))
    return findings


def _unestimated_kv(inventory: Inventory) -> list[Finding]:
    used = {getattr(s, "model", None) for s in inventory.services.values()}
    return [
        problem("LF113", "no layers/kv_dim: the memory check counts weights only, not the KV cache",
                "add architecture.layers and architecture.kv_dim (from the GGUF metadata)",
                ("models", name, "architecture"), Severity.warning)
        for name, model in inventory.models.items()
        if name in used and (model.architecture.layers is None or model.architecture.kv_dim is None)
    ]
