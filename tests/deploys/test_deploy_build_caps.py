"""What the deploy renders comes from the pinned build's capabilities, and the installed binaries have
the last word: rendering per known build, the fallback for a build nobody has seen, the rollout order,
and the check of command lines against real binaries (the BuildHelp fact read through the real pyinfra
API on this machine, from the rig's real builds)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from llamafleet.config import load_inventory
from llamafleet.config.builds import caps_for, known_builds, shipped_builds
from llamafleet.config.models import Inventory
from llamafleet.deploys import rollout
from llamafleet.deploys.flagcheck import argv_problems, command_line_problems
from llamafleet.deploys.plan import plan_caps, plan_host

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "inventory" / "examples" / "seed-cluster.yaml"


@pytest.fixture(scope="module")
def seed() -> Inventory:
    return load_inventory(SEED)


def at_build(inventory: Inventory, build: str) -> Inventory:
    data = inventory.model_dump(mode="json", exclude_none=True)
    data["llama_cpp"]["build"] = build
    return Inventory.model_validate(data)


def services_of(plan) -> list[dict]:
    return [{"service": s.service, "role": s.role, "argv": list(s.argv)} for s in plan.services]


@pytest.mark.parametrize("build", shipped_builds())
def test_every_host_renders_with_the_pinned_builds_own_names_and_flags(seed, build):
    caps = caps_for(build)
    inventory = at_build(seed, build)
    for name in inventory.hosts:
        plan = plan_host(inventory, name)
        assert plan.caps is caps and plan.caps_note is None
        # Self-consistent: nothing rendered that this build's own tables refuse.
        assert command_line_problems(name, services_of(plan), caps, plan.windows) == []
        for svc in plan.services:
            binary = Path(svc.argv[0].replace("\\", "/")).name.removesuffix(".exe")
            if svc.role == "rpc-worker":
                assert binary == caps.rpc_binary
                assert svc.argv[1:5] == (caps.flag("rpc_host"), inventory.services[svc.service].bind,
                                         caps.flag("rpc_port"), str(inventory.services[svc.service].port))
            elif svc.role != "proxy":
                assert binary == caps.server_binary
                assert caps.flag("slots") in svc.argv and caps.flag("ctx_size") in svc.argv
    target = next(s for s in plan_host(inventory, "akiva").services if s.service == "target")
    draft = inventory.services["target"].native_draft
    tail = list(caps.draft_args(draft.n_max, draft.n_min))
    argv = list(target.argv)
    assert argv[argv.index(tail[0]):argv.index(tail[0]) + len(tail)] == tail


def test_an_unknown_build_renders_with_the_nearest_known_build_and_says_so(seed):
    caps, note = plan_caps("b8111")
    numbers = {b: int(b[1:]) for b in known_builds()}
    assert caps.build == min(numbers, key=lambda b: abs(numbers[b] - 8111))
    assert note == (f"llama.cpp b8111 is not known here: rendered with the names and flags of {caps.build} "
                    f"(the nearest known build) until a deploy reads b8111's own --help")
    plan = plan_host(seed, "desktop")
    assert plan.caps_note == note
    rpc = next(s for s in plan.services if s.role == "rpc-worker")
    assert rpc.argv[0] == f"C:\\llamafleet\\builds\\b8111-cuda\\{caps.rpc_binary}.exe"


def test_a_flag_the_build_lacks_is_named_with_its_valid_spelling():
    b11434 = caps_for("b11434")
    services = [{"service": "target", "role": "target",
                 "argv": ["/lf/builds/b9000-cpu/llama-server", "--np", "2", "--draft-max", "4", "--spec-type", "nope"]},
                {"service": "rpc", "role": "rpc-worker", "argv": ["/lf/builds/b9000-cpu/rpc-server", "-H", "10.0.0.2"]}]
    assert command_line_problems("alpha", services, b11434) == [
        "hosts.alpha: service target: llama-server b11434 has no flag --np (nearest valid: -np / --parallel)",
        "hosts.alpha: service target: llama-server b11434 has no flag --draft-max (nearest valid: --spec-draft-n-max)",
        f"hosts.alpha: service target: llama-server b11434 refuses --spec-type: value 'nope' is not one of "
        f"{', '.join(b11434.spec_types)}",
        "hosts.alpha: service rpc: llama.cpp b11434 has no rpc-server; its rpc binary is ggml-rpc-server",
    ]
    # Values are skipped by each option's arity, so a value that looks like a flag is not one.
    assert argv_problems(b11434.server, ["-c", "-1", "--host", "127.0.0.1"]) == []


def test_rollout_groups_follow_rpc_links_with_workers_first(seed):
    groups = rollout.groups(seed)
    assert sorted(h for g in groups for h in g) == sorted(seed.hosts)
    for client, worker in rollout.rpc_links(seed):
        group = next(g for g in groups if client in g)
        assert worker in group and group.index(worker) <= group.index(client)
    slot = rollout.slot(seed, "akiva")
    assert slot.hosts[slot.position] == "akiva"


def test_the_installed_binary_decides_and_what_it_says_is_saved(llama_build, b8942_build, tmp_path, monkeypatch,
                                                                caplog):
    """verify_flags as the deploy runs it after an install: the BuildHelp fact read through the real
    pyinfra API (@local) from a real build folder, here b11434's, pinned as a build unknown here."""
    from pyinfra.api import Config, Inventory as PyinfraInventory, State
    from pyinfra.api.connect import connect_all

    from llamafleet.deploys.operations.llama_cpp import verify_flags

    monkeypatch.setenv("LLAMAFLEET_CACHE", str(tmp_path))
    state = State(PyinfraInventory((["@local"], {})), Config())
    connect_all(state)
    host = state.inventory.get_host("@local")
    bin_dir = str(llama_build.bin_dir)
    b8942 = caps_for("b8942")
    rendered_old = plan_host(at_build(load_inventory(SEED), "b8942"), "akiva")
    with caplog.at_level(logging.ERROR, logger="pyinfra"):
        assert verify_flags(state, host, "akiva", bin_dir, "b11999", services_of(rendered_old), b8942.build) is False
    said = caplog.text
    assert "hosts.akiva: service target: llama-server b11999 has no flag --draft-max (nearest valid: --spec-draft-n-max)" in said
    assert "refuses --spec-type" not in said  # b8942 renders no --spec-type at all
    assert "these command lines were rendered with b8942's flags; b11999's own were read" in said
    learned = caps_for("b11999")
    assert learned is not None and learned.origin == "learned"
    assert dict(learned.deploy_flags) == dict(caps_for("b11434").deploy_flags)
    assert learned.rpc_binary == "ggml-rpc-server"
    # Rendered with what was learned, the same services pass.
    caplog.clear()
    rendered_new = plan_host(at_build(load_inventory(SEED), "b11999"), "akiva")
    assert rendered_new.caps_note is None  # learned: known offline now
    assert verify_flags(state, host, "akiva", bin_dir, "b11999", services_of(rendered_new), "b11999") is True
    # And b8942's real binaries accept b8942's rendering, rpc-server included.
    desktop = plan_host(at_build(load_inventory(SEED), "b8942"), "desktop")
    posix = [{**s, "argv": [str(Path(b8942_build.bin_dir) / Path(s["argv"][0].replace("\\", "/")).name.removesuffix(".exe")),
                            *s["argv"][1:]]} for s in services_of(desktop)]
    assert verify_flags(state, host, "desktop", str(b8942_build.bin_dir), "b8942", posix, "b8942") is True


def test_drift_names_a_cluster_left_on_mixed_builds(seed):
    from llamafleet.drift import mixed_build_findings
    from llamafleet.findings import Finding, Severity

    def build(host, actual):
        return Finding(host, "llama.cpp build", Severity.ok, "b11434-cpu", actual)

    same = [build("a", "b11434-cpu"), build("b", "b11434-cuda-src"), build("c", "nothing installed")]
    assert mixed_build_findings(seed, same) == []
    [mixed] = mixed_build_findings(seed, [*same, build("d", "b8942-cpu")])
    assert (mixed.host, mixed.check, mixed.severity, mixed.actual) == (
        "cluster", "mixed builds", Severity.fail, "a, b: b11434; d: b8942")
    assert mixed.expected == "every host on b8111"


def _pair_inventory(build: str) -> Inventory:
    """A target on alpha drafting natively over beta's RPC worker (the upgrade e2e's RPC group)."""
    def host(address):
        return {"connection": {"type": "ssh", "address": address, "user": "lf"}, "os": "linux", "arch": "x86_64",
                "backend": "cpu", "install_dir": "/lf", "models_dir": "/lf/models", "service_manager": "supervisord"}

    return Inventory.model_validate({
        "version": 1, "cluster": "pair", "llama_cpp": {"build": build, "mirror": "http://10.0.0.9/m",
                                                      "releases": [{"file": f"llama-{build}-bin-ubuntu-x64.tar.gz",
                                                                    "os": "linux", "arch": "x86_64", "backend": "cpu",
                                                                    "sha256": "a" * 64}]},
        "hosts": {"alpha": host("10.0.0.2"), "beta": host("10.0.0.3")},
        "models": {"smol": {"files": [{"name": "smol.gguf", "sha256": "b" * 64, "size": 98362432}], "quant": "Q4_1",
                            "tokenizer": "smollm2",
                            "architecture": {"family": "llama", "layers": 30, "n_embd": 576, "kv_dim": 192}}},
        "services": {
            "target": {"role": "target", "host": "alpha", "bind": "10.0.0.2", "port": 8080, "model": "smol",
                       "native_draft": {"model": "smol", "rpc_worker": "rpc", "n_max": 4}},
            "rpc": {"role": "rpc-worker", "host": "beta", "bind": "10.0.0.3", "port": 50052},
        },
    })


def test_an_upgrades_rollback_waits_for_what_ran_before_on_the_build_before(seed):
    """alpha moves b8942 -> b11434: the new plan adds units the old one did not have (b11434 has no
    per-request speculation switch, so the target gets a plain sidecar). The rollback's restart and
    readiness cover only the units that were on the host, and expect b8942 in /props."""
    from llamafleet.deploys.deploy import planned_operations

    old, new = plan_host(_pair_inventory("b8942"), "alpha"), plan_host(_pair_inventory("b11434"), "alpha")
    added = {s.unit_name for s in new.services} - {s.unit_name for s in old.services}
    state = {"install": {"current": "b8942-cpu", "builds": ["b8942-cpu"], "installed": {"b8942-cpu": ["c" * 64]},
                         "record": {"build": "b8942", "artifacts_sha256": ["c" * 64]}},
             "files": {old.unit_path(s): {"sha256": "0" * 64, "mode": "0644", "owner": "lf"} for s in old.services},
             "services": {"supervisord": {"running": True, "programs": {s.unit_name: "RUNNING" for s in old.services}}},
             "models": {}, "disk_free": 1 << 40}
    ops = {op.tag: op for op in planned_operations(new, state) if op.tag}
    assert [ops[t].when for t in ("stop", "switch", "units", "services", "wait", "rollback", "restart", "rolled back",
                                  "report")] == ["healthy"] * 5 + ["failed"] * 4
    assert ops["stop"].kwargs["programs"] == ["llamafleet-target"]  # the RPC client, before beta switches
    assert set(ops["switch"].kwargs["files"]) >= {new.unit_path(s) for s in new.services}
    forward, back = ops["wait"].kwargs["spec"], ops["rolled back"].kwargs["spec"]
    assert set(forward["props"].values()) == {11434} and forward["completion"]
    assert added == {"llamafleet-target-plain"}
    assert back["supervisord"]["programs"] == ["llamafleet-target"] and len(back["http"]) == 1
    assert set(back["props"].values()) == {8942} and back["completion"] == []
    assert ops["report"].kwargs["message"] == "hosts.alpha: rolled back to b8942-cpu after a failed switch to b11434-cpu"
