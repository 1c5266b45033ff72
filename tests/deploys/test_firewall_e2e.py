"""Firewall rules end to end: the real pyinfra CLI deploys, through the real sshd, an inventory whose
host gamma (127.0.0.4) runs an RPC worker, gamma's firewall managed (``firewall: {manage: true}``:
hosts on loopback default to unmanaged, as they share this machine's kernel) and 127.0.0.2 allowed.
The kernel's real nftables then decides: a connection from 127.0.0.3 is dropped, one from 127.0.0.2
is accepted. ``llamafleet drift`` reads the live table; a rule deleted by hand is reported, and a
re-deploy puts it back. Then gamma's ``firewall.manage`` is set to false: drift reports the table and
rules file the deploys left, a deploy removes both, and drift is clean again. (Which peers a port admits is derived from the inventory and tested over
generated clusters in test_firewall.py; here nothing uses the worker, because ggml-rpc-server serves
one client at a time with a backlog of one: while a target holds it, a probe that finds the accept
queue full times out exactly like one the firewall drops.)

Only ``table inet llamafleet`` is touched, only for the worker's port, and it is deleted at the end.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from llamafleet.cli import main
from llamafleet.deploys.firewall import TABLE
from llamafleet.rig import mirror as mirror_mod
from llamafleet.rig.servers import free_port
from test_deploy_e2e import mirror, run_pyinfra, sshd  # noqa: F401 - fixtures, one instance for this module

pytestmark = pytest.mark.slow
NFT = shutil.which("nft")


def _nft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([NFT, *args], capture_output=True, text=True, timeout=30)


def inventory_data(sshd, mirror_url: str, content, root: Path, port: int) -> dict:
    gamma = sshd.addresses[2]
    data = {
        "version": 1, "cluster": "fw",
        "llama_cpp": {"build": "b11434"},
        "hosts": {"gamma": {
            "connection": {"type": "ssh", "address": gamma, "port": sshd.ports[2], "user": sshd.user,
                           "key_file": str(sshd.key_file)},
            "os": "linux", "install_dir": str(root), "models_dir": str(root / "models"),
            "service_manager": "supervisord", "firewall": {"manage": True, "allow": [sshd.addresses[0]]}}},
        "services": {"rpc": {"role": "rpc-worker", "host": "gamma", "bind": gamma, "port": port}},
    }
    return mirror_mod.pin_to_mirror(data, content, mirror_url)


@pytest.fixture(scope="module")
def cluster(sshd, mirror, tmp_path_factory):
    if NFT is None:
        pytest.skip("nft is not installed (ci/system-deps.sh installs nftables)")
    server, content = mirror
    base = tmp_path_factory.mktemp("fw-hosts")
    root, port = base / "gamma", free_port()
    inventory_file = base / "cluster.yaml"
    inventory_file.write_text(yaml.safe_dump(inventory_data(sshd, server.url, content, root, port), sort_keys=False))
    _nft("delete", "table", "inet", TABLE)  # nothing of ours from an earlier, interrupted run
    try:
        first = run_pyinfra(inventory_file, sshd, server.url)
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
        yield {"inventory_file": inventory_file, "sshd": sshd, "server": server, "port": port, "first": first}
    finally:
        _nft("delete", "table", "inet", TABLE)
        conf = root / "supervisor" / "supervisord.conf"
        if conf.exists():
            subprocess.run(["supervisorctl", "-c", str(conf), "shutdown"], capture_output=True, timeout=60)


def connects(source: str, address: str, port: int, timeout: float = 2.0) -> bool:
    """A TCP connection from ``source`` (the client socket bound to it): True if accepted, False if the
    SYN went unanswered (dropped). A refusal would raise: the worker listens, so it means something else."""
    with socket.socket() as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        try:
            s.connect((address, port))
            return True
        except socket.timeout:
            return False


def drift(cluster, capsys, *args: str) -> tuple[int, dict]:
    code = main(["drift", str(cluster["inventory_file"]), "--json",
                 "--data", f"ssh_known_hosts_file={cluster['sshd'].known_hosts}", *args])
    report = json.loads(capsys.readouterr().out)
    return code, report


def problems(report: dict) -> dict:
    return {(f["host"], f["check"]): f for f in report["findings"] if f["severity"] != "ok"}


def test_only_the_allowed_address_reaches_the_rpc_worker_and_drift_watches_the_rules(cluster, capsys):
    sshd, port = cluster["sshd"], cluster["port"]
    alpha, beta, gamma = sshd.addresses
    assert "firewall rules (nftables)" in cluster["first"].stdout + cluster["first"].stderr
    listed = _nft("list", "table", "inet", TABLE)
    assert listed.returncode == 0 and f"tcp dport {port} drop" in listed.stdout, listed.stdout + listed.stderr
    assert _nft("list", "tables").stdout.count(f"table inet {TABLE}") == 1

    assert connects(alpha, gamma, port)  # allowed
    assert not connects(beta, gamma, port)  # not allowed: dropped
    assert connects("127.0.0.1", gamma, port)  # loopback (the deploy's own readiness probe comes from there)

    code, report = drift(cluster, capsys)
    assert code == 0, problems(report)
    firewall = [f for f in report["findings"] if f["host"] == "gamma" and f["check"] == "firewall"]
    assert firewall and firewall[0]["severity"] == "ok"
    assert report["stats"]["remote_commands"] == {"gamma": 2}  # the state fact, plus the rules

    # By hand on gamma: the worker's drop rule goes. The port is open to everyone, and drift says so.
    rules = json.loads(_nft("-j", "-a", "list", "table", "inet", TABLE).stdout)["nftables"]
    handle = next(r["rule"]["handle"] for r in rules if "rule" in r and {"drop": None} in r["rule"]["expr"])
    assert _nft("delete", "rule", "inet", TABLE, "input", "handle", str(handle)).returncode == 0
    assert connects(beta, gamma, port)
    code, report = drift(cluster, capsys)
    assert code == 2
    found = problems(report)
    finding = found[("gamma", f"firewall port {port}")]
    assert finding["expected"] == f"only from 127.0.0.1, {alpha}, {gamma}, ::1"
    assert finding["actual"] == "open to every address"
    assert "firewall rules (nftables)" in found[("gamma", "deploy plan")]["actual"]
    assert set(found) == {("gamma", f"firewall port {port}"), ("gamma", "deploy plan")}

    # The deploy puts the table back; drift is clean again and 127.0.0.3 is dropped again.
    again = run_pyinfra(cluster["inventory_file"], sshd, cluster["server"].url, "--limit", "gamma")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    code, report = drift(cluster, capsys)
    assert code == 0, problems(report)
    assert not connects(beta, gamma, port) and connects(alpha, gamma, port)


def test_switched_off_the_table_left_behind_is_drift_until_a_deploy_removes_it(cluster, capsys, tmp_path):
    """gamma's own firewall.manage: false (no other host shares this kernel's table, so it is gamma's)."""
    sshd, port = cluster["sshd"], cluster["port"]
    alpha, beta, gamma = sshd.addresses
    data = yaml.safe_load(cluster["inventory_file"].read_text())
    data["hosts"]["gamma"]["firewall"]["manage"] = False
    rules = Path(data["hosts"]["gamma"]["install_dir"]) / "etc" / "firewall.nft"
    off = tmp_path / "cluster.yaml"
    off.write_text(yaml.safe_dump(data, sort_keys=False))
    switched = {**cluster, "inventory_file": off}
    assert _nft("list", "table", "inet", TABLE).returncode == 0 and rules.is_file()  # left by the deploys above

    code, report = drift(switched, capsys)
    assert code == 2
    found = problems(report)
    assert set(found) == {("gamma", f"firewall table inet {TABLE}"), ("gamma", f"firewall file {rules}"),
                          ("gamma", "deploy plan")}, found
    assert found[("gamma", f"firewall table inet {TABLE}")]["actual"].startswith(f"present: port {port} only from")
    assert "firewall rules removed (nftables)" in found[("gamma", "deploy plan")]["actual"]

    done = run_pyinfra(off, sshd, cluster["server"].url, "--limit", "gamma")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _nft("list", "table", "inet", TABLE).returncode != 0 and not rules.exists()
    assert connects(beta, gamma, port)  # no table: the worker's port is no longer filtered
    code, report = drift(switched, capsys)
    assert code == 0, problems(report)
    assert report["stats"]["remote_commands"] == {"gamma": 2}  # the state fact, plus the rules (still read)
