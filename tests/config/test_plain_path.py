"""The plain path of a natively speculating target (``native_draft.plain``): one decision, read alike by
validate, the memory check, the deploy plan and the proxy config.

Table-driven over the classes that decide it: the build's per-request switch (b8942 reads
``speculative.n_max``; b11434 does not; an unknown build may or may not), the host's memory kind
(CPU and Apple silicon share a mapped file's pages; a discrete GPU does not), RPC-split targets, and
the explicit settings. The builds' capability data is the shipped data generated from real binaries.
"""

from __future__ import annotations

import pytest
from inventory_testlib import EXAMPLES, edit, line_of

from llamafleet.config import check_inventory, load_inventory
from llamafleet.findings import Severity, dotted
from llamafleet.config.models import Backend, PlainPath, SpeculationMode
from llamafleet.config.topology import plain_route
from llamafleet.deploys.plan import plan_host
from llamafleet.proxy.config import ProxyConfig

LOCAL = (EXAMPLES / "local.yaml").read_text()
DRAFT_LINE = "    native_draft: {model: smollm2, rpc_worker: rpc, n_max: 8, plain: auto, plain_port: 8083}\n"


def variant(tmp_path, *, build="b11434", plain="auto", port="8083", extra=()):
    text = edit(LOCAL, "  build: b11434\n", f"  build: {build}\n")
    text = edit(text, DRAFT_LINE, DRAFT_LINE.replace("plain: auto", f"plain: {plain}").replace("8083", port))
    for old, new in extra:
        text = edit(text, old, new)
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path, text


def all_findings(path) -> list:
    """Errors and warnings both."""
    return check_inventory(path)[1]


RPC_SPLIT = [("    parallel: 4\n    native_draft:", "    parallel: 4\n    rpc_workers: [rpc2]\n    native_draft:"),
             ("  drafter:\n", "  rpc2:\n    role: rpc-worker\n    host: local\n    bind: 127.0.0.1\n    port: 50053\n\n"
                              "  drafter:\n")]

# (id, build, plain, extra edits, resolved kind, (code, severity) expected on native_draft.plain or None)
ROUTES = [
    ("b11434 has no switch: sidecar on CPU", "b11434", "auto", [], PlainPath.sidecar, None),
    ("b8942 reads the switch: per request", "b8942", "auto", [], PlainPath.request, None),
    ("unknown build on CPU: sidecar", "b8111", "auto", [], PlainPath.sidecar, None),
    ("explicit sidecar on a switch build", "b8942", "sidecar", [], PlainPath.sidecar, None),
    ("explicit none warns", "b11434", "none", [], PlainPath.none, ("LF193", Severity.warning)),
    ("request without the switch is an error", "b11434", "request", [], PlainPath.request, ("LF192", Severity.error)),
    ("request on an unknown build is an error", "b8111", "request", [], PlainPath.request, ("LF192", Severity.error)),
    ("RPC-split target, no switch: none", "b11434", "auto", RPC_SPLIT, PlainPath.none, ("LF193", Severity.warning)),
    ("RPC-split target, switch: request", "b8942", "auto", RPC_SPLIT, PlainPath.request, None),
    ("RPC-split target cannot have a sidecar", "b11434", "sidecar", RPC_SPLIT, PlainPath.none,
     ("LF192", Severity.error)),
]


@pytest.mark.parametrize("build,plain,extra,kind,finding", [c[1:] for c in ROUTES], ids=[c[0] for c in ROUTES])
def test_route_and_findings(tmp_path, build, plain, extra, kind, finding):
    path, text = variant(tmp_path, build=build, plain=plain, extra=extra)
    found = [f for f in all_findings(path) if f.code in ("LF192", "LF193")]
    if finding is None:
        assert found == []
    else:
        assert [(f.code, f.severity) for f in found] == [finding]
        assert dotted(found[0].path) == "services.target.native_draft.plain"
        assert found[0].line == line_of(text, "    native_draft:") and found[0].col is not None
    if finding is None or finding[1] is Severity.warning:
        inventory = load_inventory(path)
        assert plain_route(inventory, "target").kind is kind


def test_discrete_gpu_gets_no_sidecar_by_default():
    """A second process on a discrete GPU holds a second copy of the weights: auto does not add one."""
    inventory = load_inventory(EXAMPLES / "local.yaml")
    target = inventory.services["target"]
    for backend, kind in ((Backend.cuda, PlainPath.none), (Backend.rocm, PlainPath.none),
                          (Backend.vulkan, PlainPath.none), (Backend.metal, PlainPath.sidecar),
                          (Backend.cpu, PlainPath.sidecar)):
        host = inventory.hosts["local"].model_copy(update={"backend": backend})
        changed = inventory.model_copy(update={"hosts": {"local": host}})
        route = plain_route(changed, "target")
        assert route.kind is kind, backend
        assert backend.value in route.reason
        assert (route.sidecar is not None) == (kind is PlainPath.sidecar)
    explicit = target.model_copy(update={"native_draft": target.native_draft.model_copy(update={"plain": PlainPath.sidecar})})
    changed = inventory.model_copy(update={"hosts": {"local": host.model_copy(update={"backend": Backend.cuda})},
                                           "services": {**inventory.services, "target": explicit}})
    assert plain_route(changed, "target").kind is PlainPath.sidecar


def test_sidecar_port_collision_names_plain_port(tmp_path):
    path, text = variant(tmp_path, port="8082")  # the drafter's port
    [finding] = [f for f in all_findings(path) if f.code == "LF130"]
    assert dotted(finding.path) == "services.target.native_draft.plain_port"
    assert finding.line == line_of(text, "    native_draft:")


def test_sidecar_default_port_is_target_port_plus_1000(tmp_path):
    text = edit(LOCAL, DRAFT_LINE, DRAFT_LINE.replace(", plain_port: 8083", ""))
    (tmp_path / "c.yaml").write_text(text)
    inventory = load_inventory(tmp_path / "c.yaml")
    assert plain_route(inventory, "target").port == inventory.services["target"].port + 1000


def test_memory_check_counts_the_sidecar_kv_cache(tmp_path):
    """On CPU the sidecar shares the weights and adds its KV cache: 230 layers x 2048 x 192 x 2 x 2 bytes
    = 0.34 GiB. 1.3 GiB of RAM holds the cluster without it (about 1.1 GiB), not with it."""
    ram = [("    service_manager: supervisord\n", "    service_manager: supervisord\n    memory_gb: 1.3\n")]
    path, _ = variant(tmp_path, plain="none", extra=ram)
    assert [f.code for f in all_findings(path) if f.code == "LF114"] == []
    path, _ = variant(tmp_path, plain="auto", extra=ram)
    [finding] = [f for f in all_findings(path) if f.code == "LF114"]
    assert "target-plain" in finding.message


@pytest.mark.parametrize("build", ["b11434", "b8942"])
def test_plan_and_proxy_config_follow_the_route(tmp_path, build):
    path, _ = variant(tmp_path, build=build)
    inventory = load_inventory(path)
    plan = plan_host(inventory, "local")
    services = {s.service: s for s in plan.services}
    config = ProxyConfig.from_inventory(inventory, "proxy")
    target = services["target"]
    assert config.native.url == "http://127.0.0.1:8081"
    assert SpeculationMode.direct in config.available_modes() and SpeculationMode.native in config.available_modes()
    assert not config.native_is_target
    # b8942's speculation may end a reply short of max_tokens (its capability data): native on token ids.
    assert config.native.keeps_length is (build == "b11434")
    if build == "b11434":
        sidecar = services["target-plain"]
        assert (sidecar.role, sidecar.port, sidecar.bind) == ("target-plain", 8083, target.bind)
        # The target's own command line minus the draft: same binary, model, slots, context, -nr, extras.
        argv = list(sidecar.argv)
        assert argv[argv.index("--port") + 1] == "8083"
        assert "-md" not in argv and "--rpc" not in argv and "-devd" not in argv
        for flag in ("-m", "-c", "-np", "-nr", "--threads"):
            assert flag in argv and (flag == "-nr" or argv[argv.index(flag) + 1] == target.argv[target.argv.index(flag) + 1])
        assert argv[0] == target.argv[0]
        assert (config.target.name, config.target.url, config.target.request_fields) == \
            ("target-plain", "http://127.0.0.1:8083", {})
    else:
        assert "target-plain" not in services
        assert (config.target.url, config.target.request_fields) == \
            ("http://127.0.0.1:8081", {"speculative.n_max": 0})


def test_no_plain_path_leaves_one_speculating_server(tmp_path):
    path, _ = variant(tmp_path, plain="none")
    config = ProxyConfig.from_inventory(load_inventory(path), "proxy")
    assert config.native_is_target and config.target.url == config.native.url
