"""The cluster's file cache in the plan and the operation list (pure: no host is contacted). The seed
cluster with mac-mini (launchd) as the cache host: its server is one more service rendered like the
others, it fetches every file of the cluster once, and every host's downloads name the cache first."""

from __future__ import annotations

import plistlib
import re

import pytest
from test_deploy_plan import SEED, _commands, _fresh_state

from llamafleet.config import load_inventory
from llamafleet.deploys.cache import cluster_files
from llamafleet.deploys.deploy import build_spec, model_specs, planned_operations
from llamafleet.deploys.operations.common import sha256_text
from llamafleet.deploys.plan import plan_host
from llamafleet.deploys.render import render_unit, rendered_files

CACHE = "http://192.168.86.40:8001"


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    path = tmp_path_factory.mktemp("inv") / "cluster.yaml"
    path.write_text(SEED.read_text() + "\ncache:\n  host: mac-mini\n  port: 8001\n")
    return load_inventory(path)


def test_the_cache_server_is_one_more_service_on_its_host_only(cached):
    mini = plan_host(cached, "mac-mini")
    (server,) = [s for s in mini.services if s.role == "cache"]
    assert server.argv == ("/usr/bin/env", "python3", "/usr/local/llamafleet/lib/lf_host.py", "serve",
                           "192.168.86.40", "8001", "/usr/local/llamafleet/cache")
    assert (server.bind, server.port, server.http_health) == ("192.168.86.40", 8001, True)
    plist = plistlib.loads(render_unit(mini, server).encode())  # the host's own service manager
    assert plist["Label"] == "org.llamafleet.file-cache" and tuple(plist["ProgramArguments"]) == server.argv
    for name in ("akiva", "desktop", "m2-air"):
        assert not [s for s in plan_host(cached, name).services if s.role == "cache"]


def test_the_cache_holds_every_file_of_the_cluster_once(cached):
    wanted = set()
    for name in ("akiva", "mac-mini", "m2-air", "desktop"):  # desktop, a Windows host, too
        plan = plan_host(cached, name)
        wanted |= {(a.sha256, a.file) for a in plan.build.artifacts} | {(m.sha256, m.name) for m in plan.models}
    files = cluster_files(cached)
    assert sorted((f["sha256"], f["name"]) for f in files) == sorted(wanted)
    assert len(files) == len(wanted)  # gpt-oss-20b sits on two of them, and is in the cache once


def test_every_download_names_the_cache_first_then_upstream(cached):
    """Windows hosts too: lf_host.ps1's fetch and install take the same ordered sources (the Windows
    spec YAML shows the generated command)."""
    for name in ("akiva", "mac-mini", "m2-air", "desktop"):
        plan = plan_host(cached, name)
        for spec in model_specs(plan) + build_spec(plan)["artifacts"]:
            file = spec.get("file") or re.split(r"[\\/]", spec["dest"])[-1]
            assert spec["sources"] == [f"{CACHE}/{spec['sha256']}/{file}", spec["url"]]


def test_without_a_cache_every_host_fetches_from_upstream_as_before():
    seed = load_inventory(SEED)
    plan = plan_host(seed, "m2-air")
    assert all("sources" not in spec for spec in model_specs(plan) + build_spec(plan)["artifacts"])
    assert [op for op in planned_operations(plan, _fresh_state(plan)) if op.step == "cache"] == []


def _cache_step(plan, state):
    return [op for op in planned_operations(plan, state) if op.step == "cache"]


def test_the_cache_host_fills_and_starts_its_cache_before_any_host_fetches(cached):
    mini, air = plan_host(cached, "mac-mini"), plan_host(cached, "m2-air")
    steps = _cache_step(mini, _fresh_state(mini))
    assert [op.name for op in steps] == ["file cache: fetch each file from upstream once",
                                         "file cache: its server's unit", "file cache: launchd daemons",
                                         "file cache: serving", "file cache: filled and serving"]
    fetches = list(steps[0].operation.commands(**steps[0].kwargs))
    assert len(fetches) == len(cluster_files(cached))
    assert all('"sources": ["https://' in c or '"sources": ["http://' in c for c in fetches)
    assert not any(CACHE in c for c in fetches)  # the cache itself fetches from upstream only
    assert steps[3].kwargs["spec"]["http"] == [f"{CACHE}/health"]
    # Every other host has the barrier alone, at the same position: pyinfra runs it as one operation,
    # after the cache host's steps and before any host's build or model download.
    (barrier,) = _cache_step(air, _fresh_state(air))
    assert (barrier.name, barrier.position) == (steps[-1].name, steps[-1].position)
    # The unit is written once: the rollout sees it in place and its server running.
    commands = _commands(mini, _fresh_state(mini))
    assert commands.count("upload /Library/LaunchDaemons/org.llamafleet.file-cache.plist") == 1
    assert sum("launchctl bootstrap system /Library/LaunchDaemons/org.llamafleet.file-cache.plist" in c
               for c in commands) == 1


def test_a_filled_and_serving_cache_changes_nothing(cached):
    mini = plan_host(cached, "mac-mini")
    state = _fresh_state(mini)
    (server,) = [s for s in mini.services if s.role == "cache"]
    unit = mini.unit_path(server)
    state["files"][unit] = {"sha256": sha256_text(rendered_files(mini)[unit][0]), "mode": "0644"}
    state["services"] = {"launchd": {server.unit_name: "running"}}
    state["cache"] = {f"/usr/local/llamafleet/cache/{f['sha256']}/{f['name']}": {"verified": True}
                      for f in cluster_files(cached)}
    for op in _cache_step(mini, state):
        assert list(op.operation.commands(**op.kwargs)) == [], op.name


@pytest.fixture(scope="module")
def with_peers(tmp_path_factory):
    path = tmp_path_factory.mktemp("inv") / "cluster.yaml"
    path.write_text(SEED.read_text() + "\ncache:\n  host: mac-mini\n  port: 8001\n  peers: true\n")
    return load_inventory(path)


def test_peers_serve_their_own_files_and_are_tried_after_the_cache(with_peers):
    akiva, air = plan_host(with_peers, "akiva"), plan_host(with_peers, "m2-air")
    (server,) = [s for s in akiva.services if s.role == "cache"]
    assert server.argv[3:] == ("serve", "192.168.86.29", "8001", "/opt/llamafleet/models", "/opt/llamafleet/downloads")
    assert not [s for s in plan_host(with_peers, "desktop").services if s.role == "cache"]  # Windows: no server
    # gpt-oss-20b: the cache, then akiva (its plan places it; desktop's too, but desktop serves nothing).
    (draft,) = [spec for spec in model_specs(air) if spec["dest"].endswith("gpt-oss-20b-mxfp4.gguf")]
    path = f"/{draft['sha256']}/gpt-oss-20b-mxfp4.gguf"
    assert draft["sources"] == [CACHE + path, "http://192.168.86.29:8001" + path, draft["url"]]
    # m2-air's release archive is placed by no other peer: the cache, then upstream.
    (archive,) = build_spec(air)["artifacts"]
    assert archive["sources"] == [f"{CACHE}/{archive['sha256']}/{archive['file']}", archive["url"]]
    # A peer starts its server in the cache step, and fetches nothing into a cache it does not have.
    assert [op.name for op in _cache_step(akiva, _fresh_state(akiva))] == [
        "file cache: its server's unit", "file cache: systemd units", "file cache: serving",
        "file cache: filled and serving"]


def test_on_the_deployer_each_host_that_downloads_asks_the_deploying_machines_cache(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(SEED.read_text() + "\ncache:\n  host: deployer\n  bind: 192.168.86.10\n  folder: /srv/lf-cache\n")
    inventory = load_inventory(path)
    for name in ("akiva", "mac-mini", "m2-air"):
        plan = plan_host(inventory, name)
        assert not [s for s in plan.services if s.role == "cache"]  # no host serves: the deployer does
        (first, barrier) = _cache_step(plan, _fresh_state(plan))
        assert first.kwargs["bind"] == "192.168.86.10" and first.kwargs["folder"] == "/srv/lf-cache"
        assert {s["dest"] for s in first.kwargs["specs"]} == {
            f"/srv/lf-cache/{f['sha256']}/{f['name']}" for f in cluster_files(inventory)}
        assert barrier.name == "file cache: filled and serving"
        for spec in model_specs(plan):
            assert spec["sources"] == [f"http://192.168.86.10:8780/{spec['sha256']}/{spec['dest'].rsplit('/', 1)[1]}",
                                       spec["url"]]
    # A host with nothing to download does not wake the deploying machine's cache.
    air = plan_host(inventory, "m2-air")
    state = _fresh_state(air)
    state["models"] = {m.path: {"verified": True} for m in air.models}
    record = {"artifacts_sha256": [a.sha256 for a in air.build.artifacts], "version": "v",
              "binaries": {"llama-server": "h"}}
    state["install"] = {"current": air.build.build_id, "record": record, "version": "v",
                        "binaries": {"llama-server": "h"}, "builds": [air.build.build_id]}
    assert [op.name for op in _cache_step(air, state)] == ["file cache: filled and serving"]


def test_llamafleet_plan_shows_where_each_file_comes_from(capsys, tmp_path):
    import json

    from llamafleet.cli import main

    path = tmp_path / "cluster.yaml"
    path.write_text(SEED.read_text() + "\ncache:\n  host: mac-mini\n  port: 8001\n")
    assert main(["plan", str(path), "--json"]) == 0
    hosts = json.loads(capsys.readouterr().out)["hosts"]
    for m in hosts["m2-air"]["models"]:
        assert m["sources"] == [f"{CACHE}/{m['sha256']}/{m['path'].rsplit('/', 1)[1]}", m["url"]]
    for m in hosts["desktop"]["models"]:  # a Windows host fetches through the cache too
        assert m["sources"] == [f"{CACHE}/{m['sha256']}/{m['path'].rsplit(chr(92), 1)[1]}", m["url"]]
    assert main(["plan", str(path), "--host", "m2-air"]) == 0
    text = capsys.readouterr().out
    (draft,) = [line for line in text.splitlines() if "gpt-oss-20b-mxfp4.gguf (" in line]
    upstream = "http://192.168.86.40:8765/llama.cpp/gpt-oss-20b-mxfp4.gguf"  # the seed's mirror
    assert f" from {CACHE}/" in draft and draft.endswith(f", then {upstream}")
