"""An rpc-worker's tensor cache (``ggml-rpc-server -c``), on by default, kept in <install_dir>/rpc-cache.

ggml-rpc-server puts its cache in ``$LLAMA_CACHE/rpc``, else under the user's home folder, which a
service user may not have; so the plan sets ``LLAMA_CACHE`` in the worker's unit and the deploy makes
the folder (0700, owned by the service user). Checked here for every service manager from the rendered
unit itself (parsed in its own format), the deploy's operations and drift on recorded states, and the
host helper's ``folder`` verb and state reading for real on this machine. Windows and macOS hosts
cannot exist here: their units and commands are checked as generated text. The real worker writing its
cache into that folder after a real deploy is in test_deploy_e2e.py.
"""

from __future__ import annotations

import copy
import json
import ntpath
import os
import plistlib
import posixpath
import pwd
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from llamafleet.config import load_inventory
from llamafleet.config.models import ServiceManager
from llamafleet.deploys.deploy import planned_operations
from llamafleet.deploys.facts.host_state import state_spec
from llamafleet.deploys.operations import folders
from llamafleet.deploys.plan import RPC_CACHE, FolderPlan, plan_host
from llamafleet.deploys.render import render_unit
from llamafleet.findings import Severity

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "inventory" / "examples" / "seed-cluster.yaml"
HELPER = ROOT / "deploys" / "scripts" / "lf_host.py"

# One rpc-worker on a host of every service manager: (host, manager). akiva is Linux (systemd, or
# supervisord), m2-air macOS (launchd), desktop Windows (WinSW).
# A fresh host's state (nothing installed); a Mac's sw_vers output as the state fact records it.
FRESH = {"drivers": {"sw_vers": "ProductName:\tmacOS\nProductVersion:\t15.3\nBuildVersion:\t24D60\n"}}
CASES = [("akiva", "systemd"), ("akiva", "supervisord"), ("m2-air", "launchd"), ("desktop", "windows-service")]


def seed_with_workers(tmp_path: Path, manager_of_akiva: str = "systemd", **worker: object):
    """The seed cluster with an rpc-worker on each of akiva, m2-air and desktop (the seed's own)."""
    data = yaml.safe_load(SEED.read_text())
    data["hosts"]["akiva"]["service_manager"] = manager_of_akiva
    data["hosts"]["akiva"]["service_user"] = "llama"
    for host in ("akiva", "m2-air"):
        data["services"][f"{host}-rpc"] = {"role": "rpc-worker", "host": host, "port": 50052,
                                           "bind": data["hosts"][host]["connection"]["address"], **worker}
    data["services"]["desktop-rpc"].update(worker)
    path = tmp_path / "seed.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_inventory(path)


def env_of_unit(text: str, manager: str) -> dict[str, str]:
    """The environment a rendered unit gives its process, read in the unit's own format."""
    if manager == "systemd":
        import shlex

        return dict(shlex.split(line.removeprefix("Environment="))[0].split("=", 1)
                    for line in text.splitlines() if line.startswith("Environment="))
    if manager == "supervisord":
        import configparser

        parser = configparser.RawConfigParser()
        parser.read_string(text)
        section = next(s for s in parser.sections() if s.startswith("program:"))
        pairs = parser.get(section, "environment")
        return {k: v.strip('"') for k, v in (item.split("=", 1) for item in pairs.split(","))}
    if manager == "launchd":
        return plistlib.loads(text.encode())["EnvironmentVariables"]
    return {e.get("name"): e.get("value") for e in ET.fromstring(text).findall("env")}


def argv_of_unit(text: str, manager: str) -> list[str]:
    if manager == "launchd":
        return plistlib.loads(text.encode())["ProgramArguments"]
    if manager == "windows-service":
        root = ET.fromstring(text)
        return [root.findtext("executable"), *root.findtext("arguments").split()]
    line = next(ln for ln in text.splitlines() if ln.startswith(("ExecStart=", "command=")))
    import shlex

    return shlex.split(line.split("=", 1)[1])


@pytest.mark.parametrize("host,manager", CASES, ids=[m for _, m in CASES])
def test_a_worker_runs_with_its_cache_in_the_install_dir(tmp_path, host, manager):
    inventory = seed_with_workers(tmp_path, manager if host == "akiva" else "systemd")
    plan = plan_host(inventory, host)
    assert plan.manager.kind is ServiceManager(manager)
    worker = next(s for s in plan.services if s.role == "rpc-worker")
    join = ntpath.join if plan.windows else posixpath.join
    folder = join(plan.host.install_dir, RPC_CACHE)
    user = "llama" if host == "akiva" else "harold"  # the service user, else the connection's
    assert plan.folders == [FolderPlan(folder, user)]
    assert json.loads(state_spec(plan))["folders"] == [folder]
    unit = render_unit(plan, worker)
    assert env_of_unit(unit, manager)["LLAMA_CACHE"] == folder
    assert argv_of_unit(unit, manager) == list(worker.argv) and worker.argv[-1] == plan.caps.flag("rpc_cache") == "-c"
    # The deploy makes the folder on a fresh host, before the units start, and starts the worker after it.
    ops = planned_operations(plan, FRESH)
    names = [op.name for op in ops]
    step = names.index("service folders (rpc-worker cache)")
    assert step < names.index("service units and configs")
    op = ops[step]
    commands = [str(c) for c in op.operation.commands(**op.kwargs)]
    if plan.windows:  # generated PowerShell text only: no Windows host here
        assert commands == [f"New-Item -ItemType Directory -Force -Path '{folder}' | Out-Null"]
    else:
        assert commands == [f"python3 {plan.helper_path} folder {folder} {user}"]
    assert folders.restarts(plan, {}) == [worker.unit_name]
    ok = {"kind": "folder", "mode": "0700", "owner": user}
    assert list(op.operation.commands(**{**op.kwargs, "state_folders": {folder: ok}})) == []
    assert folders.restarts(plan, {"folders": {folder: ok}}) == []


def test_cache_false_is_the_opt_out(tmp_path):
    inventory = seed_with_workers(tmp_path, cache=False)
    for host in ("akiva", "m2-air", "desktop"):
        plan = plan_host(inventory, host)
        worker = next(s for s in plan.services if s.role == "rpc-worker")
        assert "-c" not in worker.argv and "--cache" not in worker.argv
        assert "LLAMA_CACHE" not in dict(worker.env) and plan.folders == []
        assert "folders" not in json.loads(state_spec(plan))
        assert not any(op.step == "folders" for op in planned_operations(plan, FRESH))


def test_a_users_own_llama_cache_is_kept_and_no_folder_made(tmp_path):
    inventory = seed_with_workers(tmp_path, env={"LLAMA_CACHE": "/srv/tensors"})
    plan = plan_host(inventory, "akiva")
    worker = next(s for s in plan.services if s.role == "rpc-worker")
    assert [v for k, v in worker.env if k == "LLAMA_CACHE"] == ["/srv/tensors"] and "-c" in worker.argv
    assert plan.folders == []


@pytest.mark.parametrize("seen,actual", [
    (None, "missing"),
    ({"kind": "folder", "mode": "0700", "owner": "root"}, "folder, mode 0700, owner root"),
    ({"kind": "folder", "mode": "0755", "owner": "llama"}, "folder, mode 0755, owner llama"),
    ({"kind": "link", "mode": "0777", "owner": "llama"}, "link, mode 0777, owner llama"),
], ids=["missing", "owner", "mode", "link"])
def test_drift_sees_a_cache_folder_missing_or_not_the_service_users(tmp_path, seen, actual):
    plan = plan_host(seed_with_workers(tmp_path), "akiva")
    path = plan.folders[0].path
    [finding] = folders.folder_findings(plan, {"folders": {path: seen}})
    assert (finding.severity, finding.check, finding.expected, finding.actual) == \
        (Severity.fail, f"folder {path}", "folder, mode 0700, owner llama", actual)
    [good] = folders.folder_findings(plan, {"folders": {path: {"kind": "folder", "mode": "0700", "owner": "llama"}}})
    assert good.severity is Severity.ok


def test_drift_on_windows_checks_the_folder_is_there(tmp_path):
    plan = plan_host(seed_with_workers(tmp_path), "desktop")
    path = plan.folders[0].path
    assert [f.actual for f in folders.folder_findings(plan, {"folders": {path: None}})] == ["missing"]
    there = {"kind": "folder", "owner": "BUILTIN\\Administrators"}
    assert [f.severity for f in folders.folder_findings(plan, {"folders": {path: there}})] == [Severity.ok]


# --- the host helper, for real ---------------------------------------------------------------------


def helper(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER), *argv], capture_output=True, text=True)


def read_folders(*paths: Path) -> dict:
    spec = {"install_dir": "/nonexistent", "models_dir": "/", "folders": [str(p) for p in paths]}
    result = helper("state", json.dumps(spec))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["folders"]


def other_user() -> str:
    """A user that is not the one running the test: the folder's owner must be the service user's."""
    me = os.getuid()
    for name in ("nobody", "daemon"):
        try:
            if pwd.getpwnam(name).pw_uid != me:
                return name
        except KeyError:
            continue
    raise AssertionError("no second user on this machine (nobody, daemon)")


def test_the_helper_makes_and_repairs_the_folder_for_the_service_user(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("giving a folder to another user needs root (the deploy's helper runs as root)")
    user = other_user()
    folder = tmp_path / "install" / RPC_CACHE
    assert read_folders(folder) == {str(folder): None}
    result = helper("folder", str(folder), user)
    assert (result.returncode, result.stdout.strip()) == (0, "created"), result.stderr
    assert read_folders(folder) == {str(folder): {"kind": "folder", "mode": "0700", "owner": user}}
    assert helper("folder", str(folder), user).stdout.strip() == "kept"
    folder.chmod(0o755)
    os.chown(folder, 0, 0)
    assert helper("folder", str(folder), user).stdout.strip() == "repaired"
    assert read_folders(folder)[str(folder)] == {"kind": "folder", "mode": "0700", "owner": user}


@pytest.mark.parametrize("kind", ["link", "file"])
def test_the_helper_refuses_a_link_or_a_file_in_the_folders_place(tmp_path, kind):
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    folder = tmp_path / RPC_CACHE
    if kind == "link":
        folder.symlink_to(victim)
    else:
        folder.write_text("x")
    assert read_folders(folder)[str(folder)]["kind"] == ("link" if kind == "link" else "other")
    result = helper("folder", str(folder), pwd.getpwuid(os.getuid()).pw_name)
    assert result.returncode != 0 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"llamafleet: {folder} is a symbolic link or not a folder; refusing to use it")
    assert oct(victim.stat().st_mode & 0o777) == "0o755"  # nothing chmod'ed through the link


def test_the_helper_names_an_unknown_user_in_one_line(tmp_path):
    result = helper("folder", str(tmp_path / RPC_CACHE), "no-such-user-lf")
    assert result.stderr == f"llamafleet: no user 'no-such-user-lf' on this host to own the folder {tmp_path / RPC_CACHE}\n"
    assert not (tmp_path / RPC_CACHE).exists()


def test_the_windows_state_reads_the_folders_it_is_asked_for():
    """Generated text only (no Windows host here): lf_host.ps1's state reads each of the spec's folders
    (a folder, or null) into the same ``folders`` section as the POSIX helper."""
    script = (ROOT / "deploys" / "scripts" / "lf_host.ps1").read_text()
    state = script[script.index("function Get-State"):]
    assert "foreach ($d in @($Spec.folders))" in state
    assert "Test-Path -LiteralPath $d -PathType Container" in state and "kind = 'folder'" in state
    assert "files = $files; folders = $folders" in state
