"""The cluster's file cache, end to end with real parts: a real sshd on loopback standing in for three
hosts (127.0.0.2-4), the loopback mirror as "upstream" (it records every request), and the real pyinfra
CLI. alpha is the cache host; every host installs the pinned build's release archive, and the hosts
place two small model files between them (random bytes: the cache moves files, it never loads them).

Shown: upstream serves each file exactly once for the whole cluster, every host holds verified copies,
the servers (the cache's, and beta's and gamma's as peers) listen on their cluster addresses only, a
second run changes and fetches nothing, and a copy whose bytes changed on disk after it was verified
is detected on arrival and skipped: the cache's for a peer's good copy, then the cache's and the
peer's for upstream's.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from llamafleet.rig import mirror as mirror_mod
from llamafleet.rig.servers import free_port
from sshd_rig import running_sshd
from test_deploy_e2e import changed_operations, run_pyinfra

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT / "deploys" / "scripts" / "lf_host.py"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    yield from running_sshd(tmp_path_factory)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, llama_build):
    files = tmp_path_factory.mktemp("files")
    models = []
    for name, size in (("model-a.gguf", 3 << 20), ("model-b.gguf", (1 << 20) + 7)):
        (files / name).write_bytes(os.urandom(size))
        models.append(files / name)
    root = tmp_path_factory.mktemp("upstream")
    content = mirror_mod.prepare_mirror(llama_build, models[0], root, extra_models=(models[1],))
    server = mirror_mod.MirrorServer(root).start()
    yield server, content
    server.stop()


def requests_per_file(server) -> collections.Counter:
    return collections.Counter(path.lstrip("/") for _command, path, _range in server.requests)


def said(run: subprocess.CompletedProcess) -> list[str]:
    """What the hosts' commands printed (pyinfra -vvv shows it, one line each, after the host's name)."""
    return (run.stdout + run.stderr).splitlines()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def deployed(sshd, upstream, tmp_path_factory):
    server, content = upstream
    base = tmp_path_factory.mktemp("hosts")
    roots = {name: base / name for name in ("alpha", "beta", "gamma")}
    places = {"alpha": ["a"], "beta": ["a", "b"], "gamma": ["b"]}

    def host(i, name):
        return {"connection": {"type": "ssh", "address": sshd.addresses[i], "port": sshd.ports[i], "user": sshd.user,
                               "key_file": str(sshd.key_file)},
                "os": "linux", "arch": "x86_64", "backend": "cpu", "install_dir": str(roots[name]),
                "models_dir": str(roots[name] / "models"), "service_manager": "supervisord", "models": places[name]}

    model = {"quant": "Q4_0", "tokenizer": "none"}
    data = {
        "version": 1, "cluster": "cache-e2e", "llama_cpp": {"build": "b11434"},
        "hosts": {name: host(i, name) for i, name in enumerate(roots)},
        "models": {key: {**model, "files": [{"name": f.name, "sha256": "0" * 64, "size": 1}]}
                   for key, f in (("a", content.model), ("b", content.extra_models[0]))},
        # bind: alpha's ssh address, 127.0.0.2; beta and gamma serve what they hold on the same port
        "cache": {"host": "alpha", "port": free_port(), "peers": True},
    }
    inventory_file = base / "cluster.yaml"
    inventory_file.write_text(yaml.safe_dump(mirror_mod.pin_to_mirror(data, content, server.url), sort_keys=False))
    server.requests.clear()
    first = run_pyinfra(inventory_file, sshd, server.url, "-vvv")
    yield {"first": first, "file": inventory_file, "roots": roots, "places": places, "server": server,
           "content": content, "sshd": sshd, "port": data["cache"]["port"],
           "cache": f"http://{sshd.addresses[0]}:{data['cache']['port']}"}
    stop_supervisord(roots.values())


def stop_supervisord(roots) -> None:
    """Stop every supervisord the deploy started (one per host's install_dir), through its own socket."""
    for root in roots:
        conf = root / "supervisor" / "supervisord.conf"
        if conf.exists():
            subprocess.run(["supervisorctl", "-c", str(conf), "shutdown"], capture_output=True, timeout=60)


def test_upstream_serves_each_file_once_for_the_whole_cluster(deployed):
    first, content = deployed["first"], deployed["content"]
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    names = {content.release.name, content.model.name, content.extra_models[0].name}
    assert requests_per_file(deployed["server"]) == {name: 1 for name in names}
    # The two hosts that are not the cache got their files from it (the helper says where from).
    cache = deployed["cache"]
    for host, model in (("beta", content.model), ("gamma", content.extra_models[0])):
        line = f"downloaded {model.name} from {cache}/{model.sha256}/{model.name}"
        assert any(f"[{host}]" in out and line in out for out in said(first)), first.stderr[-6000:]


def test_every_host_holds_verified_copies(deployed):
    content, roots = deployed["content"], deployed["roots"]
    by_key = {"a": content.model, "b": content.extra_models[0]}
    for name, keys in deployed["places"].items():
        for key in keys:
            path = roots[name] / "models" / by_key[key].name
            assert sha256(path) == by_key[key].sha256
        record = json.loads((roots[name] / "builds" / "current" / "install.json").read_text())
        assert record["artifacts_sha256"] == [content.release.sha256]
    for f in (content.release, content.model, content.extra_models[0]):  # the cache, content-addressed
        assert sha256(roots["alpha"] / "cache" / f.sha256 / f.name) == f.sha256


def test_the_cache_serves_verified_files_read_only_on_its_cluster_address(deployed):
    cache, model = deployed["cache"], deployed["content"].model
    with urllib.request.urlopen(f"{cache}/{model.sha256}/{model.name}", timeout=10) as resp:
        assert hashlib.sha256(resp.read()).hexdigest() == model.sha256
    request = urllib.request.Request(f"{cache}/{model.sha256}/{model.name}", headers={"Range": "bytes=1000-"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 206 and len(resp.read()) == model.size - 1000
    for path in (f"/{'0' * 64}/{model.name}", f"/{model.sha256}/.{model.name}.verified", "/", "/../etc/passwd"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{cache}{path}", timeout=10)
        assert refused.value.code == 404, path
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(f"{cache}/x", data=b"x", method="PUT"), timeout=10)
    assert refused.value.code == 501
    port = deployed["port"]
    listening = json.loads(subprocess.run(
        [sys.executable, str(HELPER), "state", json.dumps({"install_dir": "/nonexistent", "models_dir": "/"})],
        capture_output=True, text=True, check=True).stdout)["listening"]
    # The cache on alpha's address, each peer on its own: never a wildcard, never loopback.
    assert sorted(a for a in listening if a.endswith(f":{port}")) == [f"{a}:{port}" for a in deployed["sshd"].addresses]


def test_second_run_changes_and_fetches_nothing_and_drift_agrees(deployed):
    before = requests_per_file(deployed["server"])
    second = run_pyinfra(deployed["file"], deployed["sshd"], deployed["server"].url)
    assert second.returncode == 0, second.stdout[-4000:]
    assert changed_operations(second.stdout) == []
    assert requests_per_file(deployed["server"]) == before
    drift = subprocess.run([sys.executable, "-m", "llamafleet.cli", "drift", str(deployed["file"]), "--json",
                            "--data", f"ssh_known_hosts_file={deployed['sshd'].known_hosts}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    findings = json.loads(drift.stdout)["findings"]
    assert {f["host"] for f in findings if "llamafleet-file-cache" in f["check"]} == set(deployed["roots"])
    # The stand-in hosts share one kernel, so each sees the others' servers on the same cache.port
    # (real hosts do not): that is the only thing drift may report.
    addresses, port = deployed["sshd"].addresses, deployed["port"]
    for f in findings:
        if f["severity"] != "ok":
            own = addresses[list(deployed["roots"]).index(f["host"])]
            others = ", ".join(f"{a}:{port}" for a in addresses if a != own)
            assert (f["check"], f["actual"]) == (f"port {port} llamafleet-file-cache", f"also {others}"), f


def corrupt(path: Path) -> None:
    """Change bytes on disk after verification, keeping size and mtime: the stamp still matches, so the
    server sends the bad bytes; only the receiving host's own hash can tell."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_corrupted_cache_copy_is_skipped_for_a_peers_good_one(deployed):
    roots, model, cache = deployed["roots"], deployed["content"].extra_models[0], deployed["cache"]
    corrupt(roots["alpha"] / "cache" / model.sha256 / model.name)
    gamma = roots["gamma"] / "models" / model.name
    gamma.unlink()
    before = requests_per_file(deployed["server"])
    run = run_pyinfra(deployed["file"], deployed["sshd"], deployed["server"].url, "-vvv")
    assert run.returncode == 0, run.stdout[-6000:]
    path = f"/{model.sha256}/{model.name}"
    skipped = [line for line in said(run) if f"{model.name}: skipping {cache}{path}: it sent bytes" in line]
    assert len(skipped) == 1 and skipped[0].startswith("[gamma]"), run.stderr[-6000:]
    beta = f"http://{deployed['sshd'].addresses[1]}:{deployed['port']}"
    got = f"downloaded {model.name} from {beta}{path}"
    assert any(line.startswith("[gamma]") and got in line for line in said(run))
    assert sha256(gamma) == model.sha256
    assert requests_per_file(deployed["server"]) == before  # nothing more from upstream


def test_when_the_cache_and_the_peer_both_send_bad_bytes_upstream_gives_the_file(deployed):
    roots, model, cache = deployed["roots"], deployed["content"].extra_models[0], deployed["cache"]
    corrupt(roots["beta"] / "models" / model.name)  # the cache's copy is still the corrupted one
    gamma = roots["gamma"] / "models" / model.name
    gamma.unlink()
    before = requests_per_file(deployed["server"])
    run = run_pyinfra(deployed["file"], deployed["sshd"], deployed["server"].url, "-vvv")
    assert run.returncode == 0, run.stdout[-6000:]
    beta = f"http://{deployed['sshd'].addresses[1]}:{deployed['port']}"
    path = f"/{model.sha256}/{model.name}"
    for source in (cache, beta):
        skipped = [line for line in said(run) if f"{model.name}: skipping {source}{path}: it sent bytes" in line]
        assert len(skipped) == 1 and skipped[0].startswith("[gamma]"), run.stderr[-6000:]
    assert sha256(gamma) == model.sha256
    assert requests_per_file(deployed["server"]) - before == {model.name: 1}  # the one file, from upstream


@pytest.fixture(scope="module")
def on_deployer(deployed, sshd, upstream, tmp_path_factory):
    """The same three hosts from nothing, with the deploying machine (this one, on 127.0.0.1) as the cache."""
    server, content = upstream
    base = tmp_path_factory.mktemp("deployer-hosts")
    data = yaml.safe_load(deployed["file"].read_text())
    for name, host in data["hosts"].items():
        host.update(install_dir=str(base / name), models_dir=str(base / name / "models"))
    port = free_port()
    data["cache"] = {"host": "deployer", "bind": "127.0.0.1", "port": port, "folder": str(base / "deployer-cache")}
    inventory_file = base / "cluster.yaml"
    inventory_file.write_text(yaml.safe_dump(data, sort_keys=False))
    before = requests_per_file(server)
    first = run_pyinfra(inventory_file, sshd, server.url, "-vvv")
    yield {"first": first, "file": inventory_file, "base": base, "before": before, "port": port}
    stop_supervisord([base / name for name in data["hosts"]])


def test_the_deploying_machine_as_the_cache_serves_for_the_deploy_only(on_deployer, deployed):
    first, server, content = on_deployer["first"], deployed["server"], deployed["content"]
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    names = {content.release.name, content.model.name, content.extra_models[0].name}
    assert requests_per_file(server) - on_deployer["before"] == {name: 1 for name in names}
    cache = f"http://127.0.0.1:{on_deployer['port']}"
    serving = f"deployer: llamafleet: the file cache serves {on_deployer['base'] / 'deployer-cache'} on {cache}"
    assert sum(serving in line for line in said(first)) == 1  # filled once, by the first host that needed it
    for host, model in (("alpha", content.model), ("beta", content.model), ("gamma", content.extra_models[0])):
        line = f"downloaded {model.name} from {cache}/{model.sha256}/{model.name}"
        assert any(f"[{host}]" in out and line in out for out in said(first)), first.stderr[-6000:]
        assert sha256(on_deployer["base"] / host / "models" / model.name) == model.sha256
    with socket.socket() as probe:  # the server lived as long as the deploy
        assert probe.connect_ex(("127.0.0.1", on_deployer["port"])) != 0
    before = requests_per_file(server)
    second = run_pyinfra(on_deployer["file"], deployed["sshd"], server.url)
    assert second.returncode == 0 and changed_operations(second.stdout) == [], second.stdout[-4000:]
    assert requests_per_file(server) == before
