"""``llamafleet plan``: every file, command line and install a deploy would make, offline.

Checked against the deploy itself: the files printed are the ones the deploy's own operations would
upload to an empty host (``planned_operations`` with no gathered state), byte for byte; each printed
command line splits back into the service's argv. Bad input (an invalid inventory, an unknown
--host, a reader that stops early) ends in one clear message, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from llamafleet.cli import main
from llamafleet.config import load_inventory
from llamafleet.deploys.deploy import planned_operations
from llamafleet.deploys.operations import files as file_ops
from llamafleet.deploys.plan import plan_host

ROOT = Path(__file__).resolve().parents[2]
INVENTORIES = sorted([ROOT / "inventory" / "cluster.yaml", *(ROOT / "inventory" / "examples").glob("*.yaml")])


def plan(capsys, *args) -> tuple[int, str, str]:
    code = main(["plan", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def empty_host_state(inventory, host: str) -> dict:
    """A host with nothing of ours on it. A Mac's deploy first checks the OS version, so its state
    carries ``sw_vers`` output (recorded format) with the inventory's macOS version."""
    h = inventory.hosts[host]
    if h.os.value != "macos":
        return {}
    return {"drivers": {"sw_vers": f"ProductName:\t\tmacOS\nProductVersion:\t\t{h.macos_version or '15.3'}\n"
                                   "BuildVersion:\t\t24D60\n"}}


def deploy_uploads(inventory, host: str) -> dict[str, tuple[str, str]]:
    """path -> (content, mode) of every text file the deploy uploads to an empty host."""
    uploads = {}
    for op in planned_operations(plan_host(inventory, host), empty_host_state(inventory, host)):
        if op.operation is file_ops.text_files:
            uploads.update({p: tuple(v) for p, v in op.kwargs["files"].items()})
    return uploads


@pytest.mark.parametrize("path", INVENTORIES, ids=[p.name for p in INVENTORIES])
def test_json_plan_is_exactly_what_the_deploy_would_write(capsys, path):
    code, out, err = plan(capsys, path, "--json")
    assert code == 0, err
    data = json.loads(out)
    inventory = load_inventory(path)
    assert list(data["hosts"]) == list(inventory.hosts)
    for host, h in data["hosts"].items():
        uploads = deploy_uploads(inventory, host)
        windows = h["os"] == "windows"
        assert [f["path"] for f in h["files"]] == [h["files"][0]["path"], *sorted(p for p in uploads if p != h["files"][0]["path"])]
        assert {f["path"] for f in h["files"]} == set(uploads)
        for f in h["files"]:
            content, mode = uploads[f["path"]]
            assert f["mode"] == (None if windows else mode)
            assert f["bytes"] == len(content.encode()) and f["sha256"] == hashlib.sha256(content.encode()).hexdigest()
            assert f["content"] in (content, None)  # None: the host helper, llamafleet's own script
        assert sum(f["content"] is None for f in h["files"]) == 1
        host_plan = plan_host(inventory, host)
        assert {n: s["argv"] for n, s in h["services"].items()} == {s.service: list(s.argv) for s in host_plan.services}
        assert [m["path"] for m in h["models"]] == [m.path for m in host_plan.models]


@pytest.mark.parametrize("path", INVENTORIES, ids=[p.name for p in INVENTORIES])
def test_text_plan_shows_every_file_line_and_command(capsys, path):
    code, out, _ = plan(capsys, path)
    assert code == 0
    _, data, _ = plan(capsys, path, "--json")
    data = json.loads(data)
    assert "Offline: no host was contacted." in out.splitlines()[0]
    for host, h in data["hosts"].items():
        assert f"host {host} (" in out
        for f in h["files"]:
            assert f"    {f['path']} (" in out
            if f["content"] is not None:  # every line, in order, behind "| "
                shown = "\n".join(f"      | {line}" if line else "      |" for line in f["content"].rstrip("\n").split("\n"))
                assert shown in out
        for svc in h["services"].values():
            assert f"      command: {svc['command']}\n" in out
            if h["os"] != "windows":  # quoted for the shell: it splits back into the exact argv
                assert shlex.split(svc["command"]) == svc["argv"]
            else:
                assert subprocess.list2cmdline(svc["argv"]) == svc["command"]
        for target, p in h["plain_paths"].items():
            assert f"  plain path of {target}: {p['summary']}" in out


def test_json_shape_is_stable(capsys):
    _, out, _ = plan(capsys, ROOT / "inventory" / "examples" / "seed-cluster.yaml", "--json")
    data = json.loads(out)
    assert list(data) == ["format", "file", "cluster", "llama_cpp", "warnings", "hosts"]
    assert data["format"] == 1
    assert set(data["llama_cpp"]) == {"build", "capabilities", "note"}
    for h in data["hosts"].values():
        assert list(h) == ["os", "arch", "backend", "service_manager", "install_dir", "build", "models", "services",
                           "secrets", "plain_paths", "files"]
        assert set(h["build"]) == {"build", "build_id", "method", "dir", "binaries", "cmake_options", "artifacts"}
        for s in h["services"].values():
            assert set(s) == {"role", "unit", "unit_path", "user", "bind", "port", "argv", "command", "env"}
            assert all(isinstance(a, str) for a in s["argv"]) and isinstance(s["port"], int)
        for f in h["files"]:
            assert set(f) - {"note"} == {"path", "mode", "bytes", "sha256", "content"}
        for p in h["plain_paths"].values():
            assert set(p) == {"kind", "sidecar", "port", "request_fields", "reason", "proxies", "summary"}
            assert p["kind"] in ("request", "sidecar", "none")
        for s in h["secrets"]:
            assert set(s) == {"path", "mode", "owner", "made_by_deploy"}


SEED = ROOT / "inventory" / "examples" / "seed-cluster.yaml"
SEED_HOSTS = list(load_inventory(SEED).hosts)


@pytest.mark.parametrize("hosts", [[h] for h in SEED_HOSTS] + [SEED_HOSTS[:2], SEED_HOSTS[::-1]],
                         ids=lambda hosts: "+".join(hosts))
def test_host_filter(capsys, hosts):
    args = [a for h in hosts for a in ("--host", h)]
    _, out, _ = plan(capsys, SEED, "--json", *args)
    assert list(json.loads(out)["hosts"]) == [h for h in SEED_HOSTS if h in hosts]  # inventory order
    _, text, _ = plan(capsys, SEED, *args)
    assert [h for h in SEED_HOSTS if f"\nhost {h} (" in text] == [h for h in SEED_HOSTS if h in hosts]


@pytest.mark.parametrize("args", [["--host", "nope"], ["--host", "akiva", "--host", "Akiva"], ["--json", "--host", ""]],
                         ids=["unknown", "wrong-case", "empty"])
def test_unknown_host_is_one_clear_error(capsys, args):
    code, out, err = plan(capsys, SEED, *args)
    assert code == 1 and out == ""
    assert err.startswith("llamafleet plan: --host ") and "not a host of this inventory" in err
    assert f"(hosts: {', '.join(SEED_HOSTS)})" in err and "Traceback" not in err


BAD = [
    ("syntax", "version: 1\ncluster: [unclosed\n"),
    ("schema", None),  # the seed with a port out of range
    ("missing-file", ""),
]


@pytest.mark.parametrize("name, text", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_invalid_inventory_ends_like_validate(capsys, tmp_path, name, text, as_json):
    path = tmp_path / "bad.yaml"
    if text is None:
        path.write_text(SEED.read_text().replace("port: 8080", "port: 80800", 1))
    elif text:
        path.write_text(text)
    flags = ["--json"] if as_json else []
    code, out, err = plan(capsys, path, *flags, "--host", "akiva")
    validate_code = main(["validate", str(path), *flags])
    validated = capsys.readouterr()
    assert (code, out, err) == (1, validated.out, validated.err) and validate_code == 1
    assert "Traceback" not in out + err
    if as_json:
        assert json.loads(out)["valid"] is False
    else:
        assert "not valid" in out.splitlines()[-1]


def test_default_inventory_is_the_same_as_validates(capsys, monkeypatch, tmp_path):
    """No INVENTORY argument: $LLAMAFLEET_INVENTORY, else inventory/cluster.yaml, as validate."""
    monkeypatch.setenv("LLAMAFLEET_INVENTORY", str(SEED))
    _, out, _ = plan(capsys, "--json")
    assert json.loads(out)["file"] == str(SEED)
    monkeypatch.delenv("LLAMAFLEET_INVENTORY")
    monkeypatch.chdir(tmp_path)  # no inventory/cluster.yaml here: validate's "cannot read" finding
    code, out, err = plan(capsys)
    validate_code = main(["validate"])
    validated = capsys.readouterr()
    assert (code, out, err) == (validate_code, validated.out, validated.err) and code == 1
    assert "inventory/cluster.yaml" in out


def test_a_reader_that_stops_early_gets_no_traceback():
    """`llamafleet plan | head`: the reader is gone before the plan is written (EPIPE on write)."""
    proc = subprocess.Popen([sys.executable, "-m", "llamafleet.cli", "plan", str(SEED)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""


def test_a_build_without_capability_data_is_said(capsys, tmp_path):
    path = tmp_path / "unknown-build.yaml"
    yaml = YAML()
    data = yaml.load(SEED.read_text())
    data["llama_cpp"]["build"] = "b7000"
    with path.open("w") as out:
        yaml.dump(data, out)
    _, text, _ = plan(capsys, path)
    assert "WARNING: no capability data for llama.cpp b7000" in text
    _, out, _ = plan(capsys, path, "--json")
    assert json.loads(out)["llama_cpp"]["capabilities"] is None

