"""``llamafleet drift`` against real hosts: the deploy tests' three loopback hosts behind a real sshd,
deployed by the real pyinfra CLI, then tampered with one thing at a time the way a person on the
box would, checked, and re-deployed.

Every tamper expects exit 2 naming the host, the thing, and expected versus actual; the re-deploy
(``pyinfra ... --limit HOST``) must bring drift back to exit 0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from llamafleet.cli import main
from llamafleet.deploys.operations.proxy import source_hash
from llamafleet.rig.servers import free_port
from test_deploy_e2e import run_pyinfra  # the deploy tests' way to run the real pyinfra CLI (conftest.py)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(deployed):
    first = deployed["first"]
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return deployed


def drift(cluster, capsys, *args: str, inventory: Path | None = None) -> tuple[int, dict]:
    """Run ``llamafleet drift --json`` in-process; returns the exit code and the parsed report."""
    source_hash.cache_clear()  # as a fresh ``llamafleet drift`` process would hash this checkout anew
    code = main(["drift", str(inventory or cluster["inventory_file"]), "--json",
                 "--data", f"ssh_known_hosts_file={cluster['sshd'].known_hosts}", *args])
    captured = capsys.readouterr()
    assert captured.out, captured.err
    report = json.loads(captured.out)
    assert report["exit_code"] == code
    return code, report


def problems(report: dict) -> dict[tuple[str, str], dict]:
    return {(f["host"], f["check"]): f for f in report["findings"] if f["severity"] != "ok"}


def redeploy(cluster, host: str) -> None:
    result = run_pyinfra(cluster["inventory_file"], cluster["sshd"], cluster["server"].url, "--limit", host)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def assert_clean(cluster, capsys, host: str, *args: str) -> None:
    code, report = drift(cluster, capsys, "--limit", host, *args)
    assert code == 0, problems(report)


def proxy_wheel_outdated(cluster) -> bool:
    """True when this checkout changed since the deploy installed its wheel on gamma (the team shares
    one working tree): then gamma really differs, and drift must say so."""
    record = cluster["roots"]["gamma"] / "venv" / "llamafleet-wheel.json"
    source_hash.cache_clear()
    return json.loads(record.read_text())["source_sha256"] != source_hash()


def test_a_fresh_deploy_has_no_drift(cluster, capsys, tmp_path):
    junit = tmp_path / "drift.xml"
    code, report = drift(cluster, capsys, "--junit", str(junit))
    if proxy_wheel_outdated(cluster):
        assert set(problems(report)) == {("gamma", "deploy plan"), ("gamma", "proxy project (llamafleet wheel)")}
        redeploy(cluster, "gamma")
        code, report = drift(cluster, capsys, "--junit", str(junit))
    assert code == 0, problems(report)
    checks = {(f["host"], f["check"]) for f in report["findings"]}
    for host in ("alpha", "beta", "gamma"):
        assert {(host, "deploy plan"), (host, "llama.cpp build"), (host, "install record"),
                (host, "binary llama-server")} <= checks
    assert {("alpha", "unit llamafleet-target"), ("beta", "service llamafleet-rpc"),
            ("gamma", "proxy project (llamafleet wheel)")} <= checks
    # One remote command per host: the deploy's own state fact, read once.
    assert report["stats"]["remote_commands"] == {"alpha": 1, "beta": 1, "gamma": 1}
    assert "only caught with --deep" in report["notes"][0]
    root = ET.parse(junit).getroot()
    assert int(root.get("tests")) == len(report["findings"]) and root.get("failures") == "0"


def _models(cluster, host: str) -> Path:
    return cluster["roots"][host] / "models" / cluster["content"].model.name


def _replace_binary(cluster, host):
    """Another build's llama-server: the pinned binary with its compiled-in commit changed."""
    binary = cluster["roots"][host] / "builds" / "b11434-cpu" / "llama-server"
    data = binary.read_bytes()
    assert data.count(b"\0unknown\0") == 1
    tmp = binary.with_name("llama-server.other")
    tmp.write_bytes(data.replace(b"\0unknown\0", b"\0patched\0"))
    tmp.chmod(0o755)
    os.replace(tmp, binary)  # a new inode: the running server keeps the old one, as after a rebuild


def _truncate_model(cluster, host):
    model = _models(cluster, host)
    half = model.with_name(model.name + ".half")
    with model.open("rb") as src, half.open("wb") as dst:
        dst.write(src.read(model.stat().st_size // 2))
    os.replace(half, model)  # a new inode, so the server that mapped the old file is not hurt


def _edit_unit(cluster, host):
    unit = cluster["roots"][host] / "supervisor" / "conf.d" / "llamafleet-target.conf"
    text = unit.read_text()
    assert " -np 2 " in text
    unit.write_text(text.replace(" -np 2 ", " -np 3 "))


def _stop_service(cluster, host):
    conf = cluster["roots"][host] / "supervisor" / "supervisord.conf"
    subprocess.run(["supervisorctl", "-c", str(conf), "stop", "llamafleet-target"], check=True, capture_output=True)


def _edit_helper(cluster, host):
    helper = cluster["roots"][host] / "lib" / "lf_host.py"
    helper.write_text(helper.read_text() + "# edited by hand\n")


def _delete_record(cluster, host):
    (cluster["roots"][host] / "builds" / "b11434-cpu" / "install.json").unlink()


def _binary_hashes_named(cluster, host, found):
    record = json.loads((cluster["roots"][host] / "builds" / "current" / "install.json").read_text())
    finding = found[(host, "binary llama-server")]
    assert finding["expected"] == f"sha256 {record['binaries']['llama-server'][:12]}…"
    assert finding["actual"].startswith("sha256 ") and finding["actual"] != finding["expected"]
    assert "reinstall" in finding["hint"]


def _unit_diff_shown(cluster, host, found):
    lines = found[(host, "unit llamafleet-target")]["detail"].splitlines()
    assert any(line.startswith("-") and " -np 2 " in line for line in lines)
    assert any(line.startswith("+") and " -np 3 " in line for line in lines)
    assert "restart the service" in found[(host, "unit llamafleet-target")]["hint"]


def _nothing_more(cluster, host, found):
    pass


TAMPERS = [
    # (id, host, tamper, check, expected contains, actual contains, more checks)
    ("binary-from-another-build", "alpha", _replace_binary, "llama-server --version",
     "commit unknown)", "commit patched)", _binary_hashes_named),
    ("truncated-model", "alpha", _truncate_model, "model SmolLM2-135M-Instruct.Q4_1.gguf", "98362432 bytes",
     "49181216 bytes", _nothing_more),
    ("edited-unit", "alpha", _edit_unit, "unit llamafleet-target", "sha256 ", "sha256 ", _unit_diff_shown),
    ("stopped-service", "alpha", _stop_service, "service llamafleet-target", "enabled, running",
     "STOPPED (supervisord)", _nothing_more),
    ("deleted-install-record", "gamma", _delete_record, "install record", "b11434-cpu/install.json", "missing",
     _nothing_more),
]


@pytest.mark.parametrize("host, tamper, check, expected, actual, more", [t[1:] for t in TAMPERS],
                         ids=[t[0] for t in TAMPERS])
def test_tampering_is_drift_until_the_next_deploy(cluster, capsys, host, tamper, check, expected, actual, more):
    tamper(cluster, host)
    code, report = drift(cluster, capsys, "--limit", host)
    assert code == 2
    found = problems(report)
    assert (host, check) in found, sorted(found)
    finding = found[(host, check)]
    assert expected in finding["expected"] and actual in finding["actual"], finding
    assert finding["hint"]
    more(cluster, host, found)
    # The deploy's own dry run sees it too, on that host only.
    assert {h for (h, c) in found if c == "deploy plan"} == {host}
    redeploy(cluster, host)
    assert_clean(cluster, capsys, host)


def test_same_size_same_mtime_replacement_is_only_caught_with_deep(cluster, capsys):
    model = _models(cluster, "alpha")
    before = model.stat()
    other = model.with_name(model.name + ".other")
    shutil.copyfile(model, other)
    with other.open("r+b") as f:  # different bytes in the middle of the tensor data, same size
        f.seek(before.st_size // 2)
        chunk = f.read(4096)
        f.seek(before.st_size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    os.replace(other, model)
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (model.stat().st_size, model.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    code, report = drift(cluster, capsys, "--limit", "alpha")
    assert code == 0, problems(report)  # the stamp (size, mtime) still matches: a plain check cannot see it
    assert "only caught with --deep" in report["notes"][0]
    code, report = drift(cluster, capsys, "--limit", "alpha", "--deep")
    assert code == 2
    finding = problems(report)[("alpha", "model SmolLM2-135M-Instruct.Q4_1.gguf")]
    assert "under a stamp that still says verified" in finding["actual"]
    assert finding["expected"].endswith(f"sha256 {cluster['content'].model.sha256[:12]}…")
    assert report["stats"]["remote_commands"] == {"alpha": 2}  # the state fact and one sha256sum
    # The deploy trusts the stamp as well; the hint's remedy works.
    stamp = model.with_name(f".{model.name}.verified")
    assert str(stamp) in finding["hint"]
    stamp.unlink()
    redeploy(cluster, "alpha")
    assert_clean(cluster, capsys, "alpha", "--deep")


def test_drift_agrees_with_pyinfra_dry_run(cluster, capsys):
    """The real CLI's ``--dry --json`` plan lists the same hosts and operations as drift's plan lines."""
    _stop_service(cluster, "alpha")
    _edit_helper(cluster, "beta")
    code, report = drift(cluster, capsys)
    assert code == 2
    drift_plan = {f["host"]: f["actual"] for f in report["findings"] if f["check"] == "deploy plan"}
    env = {**os.environ, "LLAMAFLEET_INVENTORY": str(cluster["inventory_file"]),
           "LLAMAFLEET_PIP_FIND_LINKS": f"{cluster['server'].url}/wheels/"}
    dry = subprocess.run([str(Path(sys.executable).with_name("pyinfra")), "inventory/cluster.py", "deploys/cluster.py",
                          "--dry", "--json", "--data", f"ssh_known_hosts_file={cluster['sshd'].known_hosts}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    plan = json.loads(dry.stdout)["plan"]
    cli = {host: sorted(op["name"] for op in plan if host in op["hosts_with_change"]) for host in ("alpha", "beta", "gamma")}
    ours = {host: sorted(drift_plan[host].removeprefix("would run: ").split("; ")) if drift_plan[host] != "no changes"
            else [] for host in ("alpha", "beta", "gamma")}
    # gamma is left out: its proxy wheel follows this checkout, which others may be editing meanwhile.
    assert {h: ours[h] for h in ("alpha", "beta")} == {h: cli[h] for h in ("alpha", "beta")}
    assert cli["alpha"] and cli["beta"]
    redeploy(cluster, "alpha")
    redeploy(cluster, "beta")


def test_an_unreachable_host_is_exit_1_and_named(cluster, capsys, tmp_path):
    data = yaml.safe_load(cluster["inventory_file"].read_text())
    data["hosts"]["gamma"]["connection"]["port"] = free_port()  # nothing listens there
    broken = tmp_path / "cluster.yaml"
    broken.write_text(yaml.safe_dump(data, sort_keys=False))
    code, report = drift(cluster, capsys, inventory=broken)
    assert code == 1
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    assert [(f["host"], f["check"]) for f in errors] == [("gamma", "connect")]
    assert str(data["hosts"]["gamma"]["connection"]["port"]) in errors[0]["expected"]
    assert {f["host"] for f in report["findings"]} == {"alpha", "beta", "gamma"}  # the others were still checked


def test_limit_takes_pyinfra_groups(cluster, capsys):
    code, report = drift(cluster, capsys, "--limit", "rpc_workers")
    assert code == 0
    assert {f["host"] for f in report["findings"]} == {"beta"}


def test_the_plain_ci_script_reports_drift_with_junit(cluster, tmp_path):
    """ci/drift-check.sh as another CI would run it: the SSH key and known hosts come from the
    environment (the key into a private ssh-agent; the inventory names no key file), JUnit out."""
    data = yaml.safe_load(cluster["inventory_file"].read_text())
    for host in data["hosts"].values():
        host["connection"].pop("key_file")
    inventory = tmp_path / "cluster.yaml"
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "LLAMAFLEET_SSH_KEY": cluster["sshd"].key_file.read_text(),
           "LLAMAFLEET_KNOWN_HOSTS": cluster["sshd"].known_hosts.read_text(), "LLAMAFLEET_LIMIT": "alpha"}
    script = str(ROOT / "ci" / "drift-check.sh")
    clean = subprocess.run([script, str(inventory)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stdout[-2000:] + clean.stderr[-2000:]
    _stop_service(cluster, "alpha")
    dirty = subprocess.run([script, str(inventory)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert dirty.returncode == 2, dirty.stdout[-2000:] + dirty.stderr[-2000:]
    assert "drift-check: drift found" in dirty.stdout
    failures = [c.get("name") for c in ET.parse(tmp_path / "reports" / "drift.xml").getroot().iter("testcase")
                if c.find("failure") is not None]
    assert "service llamafleet-target" in failures
    redeploy(cluster, "alpha")


def test_doctor_passes_on_the_deployed_cluster(cluster, capsys):
    """doctor over HTTP against what the deploy started: every service, the draft/target vocabulary,
    the proxy with its token file, and the RPC worker only on beta's address."""
    record = json.loads((cluster["roots"]["alpha"] / "builds" / "current" / "install.json").read_text())
    # "version: 0.6.0-dev (build N, commit C)" is what /props reports as "bN-C"
    number = record["version"].split("(build ")[1].split(",")[0]
    commit = record["version"].split("commit ")[1].rstrip(")")
    code = main(["doctor", str(cluster["inventory_file"]), "--json", "--expect-build-info", f"b{number}-{commit}"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, [f for f in report["findings"] if f["severity"] != "ok"]
    checks = {f["check"]: f["severity"] for f in report["findings"]}
    assert checks["vocabulary drafter vs target"] == "ok"
    assert checks["proxy auth proxy"] == checks["proxy rejects anonymous proxy"] == "ok"
    assert checks["rpc exposure rpc"] == "ok"
