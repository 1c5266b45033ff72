"""drift's comparison, table-driven: a host state that matches the plan, then one change at a time.

The states here are HostState documents written by hand in the fact's shape (docs/deploys.md);
the end-to-end tests (test_drift_e2e.py) read real ones from real hosts. Every case also checks that
drift and the deploy's own ``host_changes`` agree on whether the host differs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from llamafleet.config import load_inventory
from llamafleet.deploys.deploy import host_changes
from llamafleet.deploys.operations.common import sha256_text
from llamafleet.deploys.plan import plan_host
from llamafleet.drift import compare_host
from llamafleet.drift_reading import HostReading, operations_with_changes, owned_files
from llamafleet.findings import Severity
from llamafleet.server_key import ensure_server_key, key_digest

SHA_MODEL = "ab" * 32
SHA_ARCHIVE = "cd" * 32
VERSION = "version: 0.6.0-dev (build 0, commit unknown)"
BINARIES = {"llama-server": "11" * 32, "ggml-rpc-server": "22" * 32}


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift-compare")
    data = {
        "version": 1,
        "cluster": "compare",
        "llama_cpp": {"build": "b11434", "mirror": "http://127.0.0.1:1",
                      "releases": [{"file": "llama-b11434-bin-ubuntu-x64.tar.gz", "os": "linux", "arch": "x86_64",
                                    "backend": "cpu", "sha256": SHA_ARCHIVE}]},
        "hosts": {"node": {"connection": {"type": "ssh", "address": "127.0.0.1", "port": 2222, "user": "root"},
                           "os": "linux", "install_dir": "/srv/lf", "models_dir": "/srv/lf/models",
                           "service_manager": "supervisord", "models": ["smol"]}},
        "models": {"smol": {"files": [{"name": "smol.gguf", "sha256": SHA_MODEL, "size": 1000}],
                            "quant": "Q4_1", "tokenizer": "smol"}},
        "services": {
            "target": {"role": "target", "host": "node", "model": "smol", "port": 8081},
            "rpc": {"role": "rpc-worker", "host": "node", "port": 50052, "bind": "127.0.0.1"},
        },
    }
    path = root / "inventory.yaml"
    with path.open("w") as out:
        YAML().dump(data, out)
    ensure_server_key(load_inventory(path))  # the cluster's key, as the deploy left it on this machine
    return plan_host(load_inventory(path), "node")


def clean_state(plan) -> dict:
    """The HostState of a host exactly as the plan wants it."""
    build_id = plan.build.build_id
    record = {"build": "b11434", "artifacts": [a.file for a in plan.build.artifacts], "artifacts_sha256": [SHA_ARCHIVE],
              "version": VERSION, "binaries": dict(BINARIES)}
    files = {p: {"sha256": sha256_text(content), "mode": mode or "0755", "owner": "root"}
             for p, (content, mode) in owned_files(plan).items()}
    files.update({s.path: {"sha256": key_digest(s.source), "mode": "0600", "owner": s.user}
                  for s in plan.secrets if s.source})
    units = [s.unit_name for s in plan.services]
    return {
        "schema": 1,
        "install": {"current": build_id, "builds": [build_id], "record": record, "version": VERSION,
                    "binaries": dict(BINARIES)},
        "models": {m.path: {"present": {"size": m.size, "mtime_ns": 1}, "verified": True, "partial_size": 0}
                   for m in plan.models},
        "files": files,
        "folders": {f.path: {"kind": "folder", "mode": f.mode, "owner": f.user} for f in plan.folders},
        "services": {"supervisord": {"running": True, "pid": 42, "programs": {u: "RUNNING" for u in units}}},
        "listening": sorted(f"{s.bind}:{s.port}" for s in plan.services) + ["0.0.0.0:22"],
        "disk_free": 10**12,
        "drivers": {},
    }


def problems(plan, state, **reading):
    findings = compare_host(plan, HostReading(state, would_change=operations_with_changes(plan, state), **reading))
    return {f.check: f for f in findings if f.severity is not Severity.ok}


def test_a_matching_host_has_no_findings_but_every_check_is_listed(plan):
    state = clean_state(plan)
    assert operations_with_changes(plan, state) == []
    findings = compare_host(plan, HostReading(state))
    assert host_changes(plan, state).empty()
    assert [f for f in findings if f.severity is not Severity.ok] == []
    checks = {f.check for f in findings}
    assert {"llama.cpp build", "install record", "llama-server --version", "binary llama-server",
            "binary ggml-rpc-server", "model smol.gguf", "unit llamafleet-target", "unit llamafleet-rpc",
            "helper script", "service llamafleet-target", "service llamafleet-rpc",
            "port 8081 llamafleet-target", "port 50052 llamafleet-rpc", "folder /srv/lf/rpc-cache"} <= checks


def _set(state, path, value):
    *parents, last = path
    node = state
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


DELETE = object()
MODEL = "/srv/lf/models/smol.gguf"
UNIT = "/srv/lf/supervisor/conf.d/llamafleet-target.conf"
KEY = "/srv/lf/secrets/llama-server.key"

CASES = [
    # (what changed, path in the state, new value, check, expected, actual)
    ("another build is current", ("install", "current"), "b11433-cpu", "llama.cpp build", "b11434-cpu", "b11433-cpu"),
    ("install record deleted", ("install", "record"), None, "install record", "b11434-cpu/install.json", "missing"),
    ("binary replaced", ("install", "binaries", "llama-server"), "99" * 32, "binary llama-server",
     "sha256 111111111111…", "sha256 999999999999…"),
    ("binary gone", ("install", "binaries", "ggml-rpc-server"), DELETE, "binary ggml-rpc-server", "sha256 222222222222…", "missing"),
    ("binary reports another build", ("install", "version"), "version: 0.6.0-dev (build 11433, commit abc)",
     "llama-server --version", VERSION, "version: 0.6.0-dev (build 11433, commit abc)"),
    ("model missing", ("models", MODEL), {"present": None, "verified": False, "partial_size": 0}, "model smol.gguf", f"1000 bytes, sha256 {SHA_MODEL[:12]}…", "missing"),
    ("model truncated", ("models", MODEL), {"present": {"size": 10, "mtime_ns": 2}, "verified": False, "partial_size": 0},
     "model smol.gguf", f"1000 bytes, sha256 {SHA_MODEL[:12]}…", "10 bytes"),
    ("model touched", ("models", MODEL, "verified"), False, "model smol.gguf", f"1000 bytes, sha256 {SHA_MODEL[:12]}…",
     "same size, but changed since it was verified (mtime or stamp)"),
    ("unit edited", ("files", UNIT, "sha256"), "ee" * 32, "unit llamafleet-target", None, "sha256 eeeeeeeeeeee…, mode 0644"),
    ("unit deleted", ("files", UNIT), None, "unit llamafleet-target", None, "missing"),
    ("unit mode", ("files", UNIT, "mode"), "0666", "unit llamafleet-target", None, None),
    ("service stopped", ("services", "supervisord", "programs", "llamafleet-target"), "STOPPED", "service llamafleet-target",
     "enabled, running", "STOPPED (supervisord)"),
    ("service unknown", ("services", "supervisord", "programs", "llamafleet-rpc"), DELETE, "service llamafleet-rpc",
     "enabled, running", "not known to supervisord (not enabled)"),
    ("the servers' key replaced on the host", ("files", KEY, "sha256"), "ee" * 32, f"secret {KEY}", None,
     "mode 0600, owner root, other content"),
    ("the servers' key readable by others", ("files", KEY, "mode"), "0644", f"secret {KEY}", None, None),
]


@pytest.mark.parametrize("what, path, value, check, expected, actual", CASES, ids=[c[0] for c in CASES])
def test_one_change_is_one_finding_naming_expected_and_actual(plan, what, path, value, check, expected, actual):
    state = clean_state(plan)
    _set(state, path, value)
    found = problems(plan, state)
    assert check in found, found
    finding = found[check]
    assert finding.severity is Severity.fail and finding.host == "node"
    if expected is not None:
        assert finding.expected == expected
    if actual is not None:
        assert finding.actual == actual
    # The deploy would change this host too: its dry run has operations to run, and the hint says what.
    assert not host_changes(plan, state).empty()
    assert found["deploy plan"].actual.startswith("would run: ")
    assert finding.hint.startswith("a deploy would ")


def test_a_unit_diff_shows_the_edited_lines(plan):
    state = clean_state(plan)
    state["files"][UNIT]["sha256"] = "ee" * 32
    expected = owned_files(plan)[UNIT][0]
    edited = expected.replace("-np 1", "-np 4")
    assert edited != expected
    finding = problems(plan, state, contents={UNIT: edited})["unit llamafleet-target"]
    assert "-np 1" in finding.detail and "-np 4" in finding.detail
    assert finding.detail.splitlines()[0] == f"--- {UNIT} (expected)"
    assert "restart the service" in finding.hint


def test_ports_not_listening_or_listening_too_widely(plan):
    state = clean_state(plan)
    state["listening"] = [a for a in state["listening"] if not a.endswith(":8081")] + ["0.0.0.0:50052"]
    found = problems(plan, state)
    target = found["port 8081 llamafleet-target"]
    assert (target.expected, target.actual) == ("listening on 127.0.0.1:8081", "not listening")
    rpc = found["port 50052 llamafleet-rpc"]
    assert (rpc.expected, rpc.actual) == ("only 127.0.0.1:50052", "also 0.0.0.0:50052")


def test_deep_rehash_catches_same_size_same_mtime_replacement(plan):
    """The stamp still says verified, so neither the deploy nor a plain drift sees it; --deep does."""
    state = clean_state(plan)
    assert problems(plan, state) == {}
    assert host_changes(plan, state).empty()
    found = problems(plan, state, hashes={MODEL: "ff" * 32})
    finding = found["model smol.gguf"]
    assert finding.actual == "sha256 ffffffffffff… (re-hashed) under a stamp that still says verified"
    assert "/srv/lf/models/.smol.gguf.verified" in finding.hint
    ok = compare_host(plan, HostReading(copy.deepcopy(state), hashes={MODEL: SHA_MODEL}))
    assert next(f for f in ok if f.check == "model smol.gguf").actual.endswith("(re-hashed)")


def test_a_program_the_inventory_no_longer_names_is_drift(plan):
    state = clean_state(plan)
    supervisor = state["services"]["supervisord"]
    supervisor["programs"]["llamafleet-old-drafter"] = "RUNNING"
    supervisor["configs"] = ["llamafleet-old-drafter", "llamafleet-rpc", "llamafleet-target", "llamafleet-gone"]
    found = problems(plan, state)
    assert found["service llamafleet-old-drafter"].actual == "RUNNING (supervisord)"
    assert found["service llamafleet-gone"].actual == "configured (supervisord)"
    assert found["service llamafleet-gone"].hint == "a deploy would remove llamafleet-gone from supervisord"


def test_a_stopped_supervisord_is_named_as_such(plan):
    state = clean_state(plan)
    state["services"]["supervisord"] = {"running": False, "pid": None, "programs": {}, "configs": []}
    found = problems(plan, state)
    assert found["service llamafleet-target"].actual == "supervisord itself is not running"
    assert not host_changes(plan, state).empty()


def test_drift_without_the_local_key_compares_mode_and_owner_only(plan, tmp_path):
    """A CI runner that lacks the cluster's key cannot know the host copy's content: drift says so
    rather than call it the same, and still checks what it can see."""
    state = clean_state(plan)
    secret = next(s for s in plan.secrets if s.source)
    hidden = tmp_path / "moved-away.key"
    Path(secret.source).rename(hidden)
    try:
        found = {f.check: f for f in compare_host(plan, HostReading(copy.deepcopy(state)))}
        finding = found[f"secret {secret.path}"]
        assert finding.severity is Severity.ok
        assert "content not compared" in finding.actual and "the content of" not in finding.actual
        state["files"][secret.path]["mode"] = "0644"
        assert problems(plan, state)[f"secret {secret.path}"].actual.startswith("mode 0644")
    finally:
        hidden.rename(secret.source)
