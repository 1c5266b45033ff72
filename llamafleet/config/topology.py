"""How the proxy reaches a natively speculating target without speculation: the plain route.

A llama-server started with a draft model (``-md``) drafts on every request unless the build reads a
per-request switch. Speculation only pays when the draft is cheap next to the target and agrees with
it; when it does not, a speculating server is slower than the same model decoding alone, whatever
its acceptance rate. The proxy's ``auto`` controller can only avoid that when a plain path exists:

- ``request``: the build reads ``speculative.n_max`` per request, so ``0`` turns drafting off for
  that request on the same server (read from the build's capability data, never assumed);
- ``sidecar``: a second llama-server on the same model file, the target's flags minus the draft. On
  CPU and Apple-silicon hosts both processes map the same file, so the second one costs its KV cache
  and compute buffers, not a second copy of the weights (the memory check counts exactly that); on a
  discrete GPU each process holds its own copy of the weights in VRAM;
- ``none``: no plain path; ``plan`` and ``validate`` say so before anything is deployed.

Pure: inventory in, decision out. The plan, the proxy config and the memory check all read this one
decision, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamafleet.config.builds import caps_for
from llamafleet.config.models import Backend, Inventory, PlainPath, TargetService

SIDECAR_SUFFIX = "-plain"
SIDECAR_PORT_OFFSET = 1000
SHARED_WEIGHTS_BACKENDS = (Backend.cpu, Backend.metal)  # the model file's pages are shared between processes


@dataclass(frozen=True)
class PlainRoute:
    """The decision for one target: how (``kind``), where (sidecar name and port) and why."""

    target: str
    kind: PlainPath  # never ``auto``: the resolved choice
    reason: str
    sidecar: str | None = None  # service name of the sidecar llama-server
    port: int | None = None

    @property
    def request_fields(self) -> dict[str, int]:
        """Fields that make one request to the target plain (empty unless ``kind`` is ``request``)."""
        return {"speculative.n_max": 0} if self.kind is PlainPath.request else {}


def sidecar_port(name: str, service: TargetService) -> int:
    draft = service.native_draft
    return draft.plain_port if draft and draft.plain_port else service.port + SIDECAR_PORT_OFFSET


def plain_route(inventory: Inventory, name: str) -> PlainRoute | None:
    """The plain route of target ``name``; None when it has no native draft (it is plain already)."""
    service = inventory.services[name]
    if not isinstance(service, TargetService) or service.native_draft is None:
        return None
    wanted = service.native_draft.plain
    caps = caps_for(inventory.llama_cpp.build)
    per_request = caps.per_request_speculative if caps is not None else None
    host = inventory.hosts.get(service.host)
    shared = host is not None and host.backend in SHARED_WEIGHTS_BACKENDS

    def sidecar(reason: str) -> PlainRoute:
        return PlainRoute(name, PlainPath.sidecar, reason, name + SIDECAR_SUFFIX, sidecar_port(name, service))

    if wanted is PlainPath.none:
        return PlainRoute(name, PlainPath.none, "native_draft.plain is none in the inventory")
    if wanted is PlainPath.request:
        return PlainRoute(name, PlainPath.request, "native_draft.plain is request: per-request speculative.n_max 0")
    if service.rpc_workers:
        # An RPC worker serves one client at a time: the target holds it, so a second process cannot.
        if per_request:
            return PlainRoute(name, PlainPath.request,
                              f"llama.cpp {inventory.llama_cpp.build} reads per-request speculative.n_max")
        return PlainRoute(name, PlainPath.none,
                          "the target splits its layers over rpc_workers, which serve one client at a time, so no "
                          f"second process can load the model, and llama.cpp {inventory.llama_cpp.build} has no "
                          "per-request speculation switch")
    if wanted is PlainPath.sidecar:
        return sidecar("native_draft.plain is sidecar")
    if per_request:
        return PlainRoute(name, PlainPath.request,
                          f"llama.cpp {inventory.llama_cpp.build} reads per-request speculative.n_max")
    if per_request is False:
        build_says = "has no per-request speculation switch"
    elif caps is None:
        build_says = "has no capability data, so its per-request speculation switch is unknown"
    else:  # learned from the installed binary's --help, which does not show what the server reads
        build_says = "was learned from its --help alone, which does not show a per-request speculation switch"
    if shared:
        return sidecar(f"llama.cpp {inventory.llama_cpp.build} {build_says}; on a {host.backend.value} host the "
                       "second process shares the model file's pages and costs its KV cache")
    return PlainRoute(name, PlainPath.none,
                      f"llama.cpp {inventory.llama_cpp.build} {build_says}, and on a discrete GPU "
                      f"({host.backend.value if host else 'unknown'} host) a second process "
                      "would hold a second copy of the weights: set native_draft.plain: sidecar where that fits")
