"""The deploy, end to end, with real parts only: a real sshd on loopback standing in for three hosts
(one address, port and install root each), a local HTTP mirror serving a release-style archive packed
from the cached pinned build plus the source archive and SmolLM2, and the real pyinfra CLI running
``pyinfra inventory/cluster.py deploys/cluster.py``.

Topology: alpha runs the target with native speculation (draft on beta's ggml-rpc-server) and its
plain sidecar, beta runs the RPC worker and a drafter llama-server, gamma runs the proxy (project
wheel in a venv, token file).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from llamafleet.config import load_inventory
from llamafleet.config.models import ServiceManager
from llamafleet.deploys.plan import plan_host
from llamafleet.deploys.render import render_unit
from llamafleet.rig import mirror as mirror_mod
from llamafleet.rig.relay import HASH_THRESHOLD, cacheable_bytes
from llamafleet.rig.servers import free_port
from llamafleet.server_key import key_source, server_key
from sshd_rig import running_sshd

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CUT_AT = 30 * 1024 * 1024


class CuttingHandler(mirror_mod.MirrorHandler):
    """Cuts the body of the next full download of ``server.cut_next`` after CUT_AT bytes, once."""

    def body_limit(self, name, start, length):
        if name == self.server.cut_next and start == 0:
            self.server.cut_next = None
            return CUT_AT
        return length


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    yield from running_sshd(tmp_path_factory)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, llama_build, smollm2):
    root = tmp_path_factory.mktemp("mirror")
    content = mirror_mod.prepare_mirror(llama_build, smollm2, root)
    wheels = mirror_mod.prepare_wheelhouse(mirror_mod.default_mirror_root(), ROOT)
    (root / "wheels").symlink_to(wheels)
    server = mirror_mod.MirrorServer(root, handler=CuttingHandler)
    server.cut_next = None
    server.start()
    yield server, content
    server.stop()


def cluster_inventory(sshd, mirror_url: str, content, roots: dict[str, Path]) -> dict:
    def ssh(i):
        return {"type": "ssh", "address": sshd.addresses[i], "port": sshd.ports[i], "user": sshd.user,
                "key_file": str(sshd.key_file)}

    alpha, beta, gamma = sshd.addresses

    def host(i, name, models):
        return {"connection": ssh(i), "os": "linux", "arch": "x86_64", "backend": "cpu",
                "install_dir": str(roots[name]), "models_dir": str(roots[name] / "models"),
                "service_manager": "supervisord", "models": models}

    ports = {name: free_port() for name in ("target", "plain", "drafter", "rpc", "proxy")}
    data = {
        "version": 1, "cluster": "e2e",
        "llama_cpp": {"build": "b11434"},
        "hosts": {"alpha": host(0, "alpha", ["smollm2"]), "beta": host(1, "beta", ["smollm2"]),
                  "gamma": host(2, "gamma", [])},
        "models": {"smollm2": {"files": [{"name": content.model.name, "sha256": "0" * 64, "size": 1}],
                               "quant": "Q4_1", "tokenizer": "smollm2",
                               "architecture": {"family": "llama", "layers": 30, "n_embd": 576, "kv_dim": 192}}},
        "services": {
            "target": {"role": "target", "host": "alpha", "bind": alpha, "port": ports["target"], "model": "smollm2",
                       "ctx_size": 2048, "parallel": 2, "extra_args": ["--threads", "1"],
                       "native_draft": {"model": "smollm2", "rpc_worker": "rpc", "n_max": 4,
                                        "plain_port": ports["plain"]}},
            "rpc": {"role": "rpc-worker", "host": "beta", "bind": beta, "port": ports["rpc"]},
            "drafter": {"role": "drafter", "host": "beta", "bind": beta, "port": ports["drafter"], "model": "smollm2",
                        "ctx_size": 1024, "extra_args": ["--threads", "1"]},
            "proxy": {"role": "proxy", "host": "gamma", "bind": gamma, "port": ports["proxy"], "target": "target",
                      "drafters": ["drafter"],
                      "auth": {"token_file": str(roots["gamma"] / "secrets" / "proxy.token")}},
        },
    }
    return mirror_mod.pin_to_mirror(data, content, mirror_url)


def run_pyinfra(inventory_file: Path, sshd, mirror_url: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLAMAFLEET_INVENTORY": str(inventory_file),
           "LLAMAFLEET_PIP_FIND_LINKS": f"{mirror_url}/wheels/"}
    cmd = [str(Path(sys.executable).with_name("pyinfra")), "inventory/cluster.py", "deploys/cluster.py", "-y",
           "--data", f"ssh_known_hosts_file={sshd.known_hosts}", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def changed_operations(output: str) -> list[str]:
    """Lines where pyinfra reports an operation that changed something on a host."""
    return [line.strip() for line in output.splitlines() if "] Success" in line]


@pytest.fixture(scope="module")
def deployed(sshd, mirror, tmp_path_factory):
    server, content = mirror
    base = tmp_path_factory.mktemp("hosts")
    roots = {name: base / name for name in ("alpha", "beta", "gamma")}
    inventory_file = base / "cluster.yaml"
    inventory_file.write_text(yaml.safe_dump(cluster_inventory(sshd, server.url, content, roots), sort_keys=False))
    first = run_pyinfra(inventory_file, sshd, server.url)
    yield {"first": first, "inventory_file": inventory_file, "roots": roots, "sshd": sshd, "server": server,
           "content": content, "inventory": load_inventory(inventory_file)}
    for root in roots.values():  # stop every supervisord the deploy started
        conf = root / "supervisor" / "supervisord.conf"
        if conf.exists():
            subprocess.run(["supervisorctl", "-c", str(conf), "shutdown"], capture_output=True, timeout=60)


def service_url(inventory, name: str) -> str:
    service = inventory.services[name]
    return f"http://{service.bind}:{service.port}"


def get_json(url: str, token: str | None = None) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200
        return json.load(resp)


def post_status(url: str, body: dict, token: str | None) -> tuple[int, dict]:
    """(status, JSON body) of a POST, error statuses included."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def llama_servers(deployed) -> dict[str, str]:
    """name -> base URL of every llama-server the deploy started (target, its plain sidecar, drafter)."""
    inventory = deployed["inventory"]
    target = inventory.services["target"]
    return {"target": service_url(inventory, "target"), "drafter": service_url(inventory, "drafter"),
            "target-plain": f"http://{target.bind}:{target.native_draft.plain_port}"}


def test_first_run_installs_the_pinned_build_matching_its_record(deployed):
    assert deployed["first"].returncode == 0, deployed["first"].stdout[-4000:] + deployed["first"].stderr[-4000:]
    for name, root in deployed["roots"].items():
        current = root / "builds" / "current"
        assert os.readlink(current) == "b11434-cpu"
        record = json.loads((current / "install.json").read_text())
        assert record["build"] == "b11434" and record["artifacts_sha256"] == [deployed["content"].release.sha256]
        env = {**os.environ, "LD_LIBRARY_PATH": str(current)}
        version = subprocess.run([str(current / "llama-server"), "--version"], capture_output=True, text=True, env=env)
        line = next(x for x in (version.stdout + version.stderr).splitlines() if x.startswith("version:"))
        assert line == record["version"]
        assert record["reported_build"] == 11434  # the rig stamps the real build number (without it: 0)
        for binary, digest in record["binaries"].items():
            assert sha256(current / binary) == digest


def test_models_are_verified_and_stamped(deployed):
    model = deployed["content"].model
    for name in ("alpha", "beta"):
        path = deployed["roots"][name] / "models" / model.name
        assert sha256(path) == model.sha256
        stamp = json.loads((path.parent / f".{model.name}.verified").read_text())
        assert stamp == {"size": model.size, "mtime_ns": path.stat().st_mtime_ns, "sha256": model.sha256}
        assert not (path.parent / f".{model.name}.partial").exists()


def test_services_run_under_supervisord_and_answer(deployed):
    inventory = deployed["inventory"]
    key = server_key(inventory)
    for name in ("target", "drafter"):
        url = service_url(inventory, name)
        assert get_json(f"{url}/health")["status"] == "ok"
        assert "build_info" in get_json(f"{url}/props", key)
    status = subprocess.run(["supervisorctl", "-c", str(deployed["roots"]["beta"] / "supervisor" / "supervisord.conf"),
                             "status"], capture_output=True, text=True)
    assert "llamafleet-rpc" in status.stdout and "RUNNING" in status.stdout
    # ggml-rpc-server listens on its declared address only, never on a wildcard.
    rpc = inventory.services["rpc"]
    listening = json.loads(subprocess.run(
        [sys.executable, str(ROOT / "deploys" / "scripts" / "lf_host.py"), "state",
         json.dumps({"install_dir": str(deployed["roots"]["beta"]), "models_dir": str(deployed["roots"]["beta"])})],
        capture_output=True, text=True).stdout)["listening"]
    assert f"{rpc.bind}:{rpc.port}" in listening
    assert not {f"0.0.0.0:{rpc.port}", f":::{rpc.port}"} & set(listening)
    # The target really speculates with the draft on beta's RPC worker.
    body = json.dumps({"prompt": "The capital of France is", "n_predict": 16, "temperature": 0}).encode()
    request = urllib.request.Request(f"{service_url(inventory, 'target')}/completion", data=body,
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=120) as resp:
        timings = json.load(resp)["timings"]
    assert timings.get("draft_n", 0) > 0


def _supervised_pid(root: Path, program: str) -> int:
    conf = root / "supervisor" / "supervisord.conf"
    return int(subprocess.run(["supervisorctl", "-c", str(conf), "pid", program], capture_output=True, text=True,
                              timeout=30).stdout.strip())


def test_the_rpc_worker_keeps_its_tensor_cache_in_the_install_dir(deployed):
    """The worker runs with ``-c`` (on by default) and LLAMA_CACHE=<install_dir>/rpc-cache, a folder the
    deploy made 0700 for the service user (here the ssh user: the inventory sets no service_user), so it
    needs no home folder. The target's draft on it holds SmolLM2's tied embedding, a tensor over
    ggml-rpc's 10 MiB hash threshold: the worker keeps it there as one file of exactly those bytes, and a
    target restart finds the same cache (benchmarks/rpc_cache.py counts the bytes it saves)."""
    beta, alpha = deployed["roots"]["beta"], deployed["roots"]["alpha"]
    folder = beta / "rpc-cache"
    st = folder.stat()
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert pwd.getpwuid(st.st_uid).pw_name == deployed["sshd"].user
    pid = _supervised_pid(beta, "llamafleet-rpc")
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-2] == b"-c"
    environ = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
    assert environ[b"LLAMA_CACHE"] == str(folder).encode()
    _, large = cacheable_bytes(beta / "models" / deployed["content"].model.name)  # the file the deploy placed
    assert large > HASH_THRESHOLD

    def cached() -> dict[str, int]:
        return {p.name: p.stat().st_size for p in (folder / "rpc").iterdir()}

    assert sum(cached().values()) == large, cached()  # filled by the deploy's first start of the target
    before = cached()
    target = _supervised_pid(alpha, "llamafleet-target")
    conf = alpha / "supervisor" / "supervisord.conf"
    restart = subprocess.run(["supervisorctl", "-c", str(conf), "restart", "llamafleet-target"],
                             capture_output=True, text=True, timeout=120)
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert _supervised_pid(alpha, "llamafleet-target") != target
    health = f"{service_url(deployed['inventory'], 'target')}/health"
    deadline = time.monotonic() + 120
    while True:
        try:
            if get_json(health)["status"] == "ok":
                break
        except (OSError, AssertionError):
            pass
        assert time.monotonic() < deadline, "the target did not come back after its restart"
        time.sleep(0.5)
    assert cached() == before  # the same tensor, from the same cache: nothing new was written
    assert _supervised_pid(beta, "llamafleet-rpc") == pid  # the worker itself kept running


def test_every_llama_server_requires_the_clusters_key(deployed):
    """Every llama-server the deploy started (target, plain sidecar, drafter) answers a completion only
    with the cluster's API key: 401 without it or with a wrong one, from the real llama-server. Its unit
    names the key's file (--api-key-file), never the key; the file on each host is 0600 and the service
    user's (here the ssh user, as the inventory sets no service_user); the running processes' argv (what
    ps shows) has the file's path only. /health stays public, as llama-server keeps it."""
    inventory, roots = deployed["inventory"], deployed["roots"]
    key = server_key(inventory)
    assert key_source(inventory).parent.parent.parent == Path(os.environ["LLAMAFLEET_STATE"])
    body = {"prompt": "The capital of France is", "n_predict": 4, "temperature": 0}
    for name, url in llama_servers(deployed).items():
        assert post_status(f"{url}/completion", body, None)[0] == 401, name
        assert post_status(f"{url}/completion", body, "not-the-key-0123456789")[0] == 401, name
        status, answer = post_status(f"{url}/completion", body, key)
        assert status == 200 and answer["content"], (name, answer)
        assert get_json(f"{url}/health")["status"] == "ok"  # public in llama-server
    me = os.getuid()
    for host in ("alpha", "beta", "gamma"):
        key_file = roots[host] / "secrets" / "llama-server.key"
        st = key_file.lstat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == me, host
        assert key_file.read_text() == key + "\n"
        assert not list((roots[host] / "uploads").iterdir())  # nothing left where the key passed through
    for host, services in (("alpha", ("target", "target-plain")), ("beta", ("drafter",))):
        for service in services:
            unit = (roots[host] / "supervisor" / "conf.d" / f"llamafleet-{service}.conf").read_text()
            assert f"--api-key-file {roots[host] / 'secrets' / 'llama-server.key'}" in unit and key not in unit
    config = (roots["gamma"] / "etc" / "proxy.json").read_text()
    assert json.loads(config)["server_key_file"] == str(roots["gamma"] / "secrets" / "llama-server.key")
    assert key not in config
    argvs = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(root).encode() in arg for root in roots.values() for arg in argv):
            argvs.append(argv)
    servers = [a for a in argvs if a[0].endswith(b"llama-server")]
    assert len(servers) == 3, argvs
    assert all(b"--api-key-file" in a for a in servers)
    assert not [a for a in argvs if any(key.encode() in arg for arg in a)]


def test_every_path_of_the_deployed_proxy_gives_the_plain_targets_text(deployed):
    """The topology the deploy renders for a b11434 CPU target with a native draft: the target
    speculates on every request, and a plain sidecar on the same model (the proxy's direct path) does
    not. Through the proxy on gamma, every path answers with the plain target's own text."""
    import openai

    inventory = deployed["inventory"]
    target = inventory.services["target"]
    plain = f"http://{target.bind}:{target.native_draft.plain_port}"
    token = (deployed["roots"]["gamma"] / "secrets" / "proxy.token").read_text().strip()
    client = openai.OpenAI(base_url=f"{service_url(inventory, 'proxy')}/v1", api_key=token, max_retries=0, timeout=300)
    for prompt in ("The capital of France is", "def add(a, b):"):
        body = json.dumps({"prompt": prompt, "n_predict": 12, "temperature": 0}).encode()
        request = urllib.request.Request(f"{plain}/completion", data=body, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {server_key(inventory)}"})
        with urllib.request.urlopen(request, timeout=120) as resp:
            answer = json.load(resp)
        assert answer["timings"].get("draft_n", 0) == 0  # the sidecar never drafts
        for mode in ("direct", "native", "proxy", "auto"):
            reply = client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0,
                                              extra_headers={"X-Llamafleet-Mode": mode})
            report = reply.model_extra["llamafleet"]
            assert reply.choices[0].text == answer["content"], (mode, report)
            if mode == "direct":
                assert report["drafted"] == 0, report
            if mode == "native":
                assert report["drafted"] > 0, report


def test_proxy_host_serves_with_its_token(deployed):
    token_file = deployed["roots"]["gamma"] / "secrets" / "proxy.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    models = get_json(f"{service_url(deployed['inventory'], 'proxy')}/v1/models", token)
    assert models["data"], models


def test_no_secret_in_a_world_readable_file(deployed):
    """Neither the proxy's token nor the servers' key is in any file others can read on any host (unit
    files, configs, logs), nor in what pyinfra printed."""
    token = (deployed["roots"]["gamma"] / "secrets" / "proxy.token").read_text().strip()
    key = server_key(deployed["inventory"])
    leaks = []
    for root in deployed["roots"].values():
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_mode & stat.S_IROTH \
                    and path.stat().st_size < 50_000_000:
                data = path.read_bytes()
                leaks += [f"{path}: {what}" for what, secret in (("token", token), ("key", key))
                          if secret.encode() in data]
    assert leaks == []
    printed = deployed["first"].stdout + deployed["first"].stderr
    assert token not in printed and key not in printed


def test_systemd_units_for_these_hosts_pass_systemd_analyze(deployed, tmp_path):
    """The same services rendered as systemd units (as on a host with systemd), verified against the
    binaries and models the deploy installed."""
    inventory = deployed["inventory"]
    units = []
    for name in ("alpha", "beta", "gamma"):
        plan = plan_host(inventory, name)
        for svc in plan.services:
            unit = tmp_path / f"{svc.unit_name}.service"
            unit.write_text(render_unit(plan, svc, ServiceManager.systemd))
            units.append(str(unit))
    result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "llamafleet" not in result.stderr, result.stderr


def test_second_run_changes_nothing(deployed):
    second = run_pyinfra(deployed["inventory_file"], deployed["sshd"], deployed["server"].url)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert changed_operations(second.stdout) == []


def test_a_download_cut_midway_resumes(deployed):
    model = deployed["content"].model
    path = deployed["roots"]["alpha"] / "models" / model.name
    path.unlink()
    server = deployed["server"]
    server.requests.clear()
    server.cut_next = model.name
    result = run_pyinfra(deployed["inventory_file"], deployed["sshd"], server.url, "--limit", "alpha")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranges = [r for (_, p, r) in server.requests if p.endswith(model.name)]
    assert ranges[:2] == [None, f"bytes={CUT_AT}-"], server.requests
    assert sha256(path) == model.sha256


def test_a_corrupt_file_on_the_mirror_fails_clearly_and_keeps_the_old_model(deployed, tmp_path):
    model = deployed["content"].model
    path = deployed["roots"]["beta"] / "models" / model.name
    before = (path.stat().st_mtime_ns, sha256(path))
    data = yaml.safe_load(deployed["inventory_file"].read_text())
    # The inventory now expects a new version of the file; the mirror still serves the old bytes,
    # which is exactly what a corrupt or stale mirror looks like to the deploy.
    data["models"]["smollm2"]["files"][0]["sha256"] = "f" * 64
    changed = tmp_path / "cluster.yaml"
    changed.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run_pyinfra(changed, deployed["sshd"], deployed["server"].url, "--limit", "beta")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"sha256 mismatch for {deployed['server'].url}/{model.name}" in output
    assert "the existing file was left in place" in output
    assert "Traceback" not in output
    assert (path.stat().st_mtime_ns, sha256(path)) == before
    assert not (path.parent / f".{model.name}.partial").exists()


def test_a_new_key_reaches_every_server_and_the_proxy(deployed):
    """The cluster's key replaced on the controller: the next deploy copies it to every host and
    restarts what reads it (llama-servers and the proxy), so the old key is refused and the proxy
    still serves (it sends the new key upstream). The run after it changes nothing."""
    import openai

    inventory = deployed["inventory"]
    old = server_key(inventory)
    path = key_source(inventory)
    path.write_text("rotated-key-0123456789abcdef-0123456789\n")
    result = run_pyinfra(deployed["inventory_file"], deployed["sshd"], deployed["server"].url)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    new = server_key(inventory)
    assert new not in result.stdout + result.stderr and old not in result.stdout + result.stderr
    body = {"prompt": "Hello", "n_predict": 2, "temperature": 0}
    for name, url in llama_servers(deployed).items():
        assert post_status(f"{url}/completion", body, old)[0] == 401, name
        assert post_status(f"{url}/completion", body, new)[0] == 200, name
    token = (deployed["roots"]["gamma"] / "secrets" / "proxy.token").read_text().strip()
    client = openai.OpenAI(base_url=f"{service_url(inventory, 'proxy')}/v1", api_key=token, max_retries=0, timeout=300)
    for mode in ("direct", "proxy"):
        reply = client.completions.create(model="smollm2", prompt="Hello", max_tokens=4, temperature=0,
                                          extra_headers={"X-Llamafleet-Mode": mode})
        assert reply.model_extra["llamafleet"]["path"] == mode
    again = run_pyinfra(deployed["inventory_file"], deployed["sshd"], deployed["server"].url)
    assert again.returncode == 0 and changed_operations(again.stdout) == [], again.stdout[-3000:]
