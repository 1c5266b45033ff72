"""A TLS proxy deployed for real: the real sshd on loopback (one stand-in host), the loopback mirror,
the real pyinfra CLI, then ``llamafleet doctor`` and ``llamafleet drift`` against what runs.

The inventory asks for ``tls: {self_signed: true}``: the deploy generates the pair once in the local
state folder, uploads the certificate and the key (0600, the service user's), and the proxy serves
HTTPS. doctor finds the served certificate's fingerprint equal to the local one; after the pair on the
host is replaced by another one (and the proxy restarted on it) doctor reports the mismatch and drift
the changed files, and a re-deploy puts the deploy's pair back and restarts the proxy.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import stat
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from test_deploy_e2e import mirror, run_pyinfra, sshd  # noqa: F401 (module fixtures, used by name)

from llamafleet import tls
from llamafleet.cli import main
from llamafleet.config import load_inventory
from llamafleet.rig import mirror as mirror_mod
from llamafleet.rig.servers import free_port

pytestmark = pytest.mark.slow


def tls_inventory(sshd, mirror_url: str, content, root: Path) -> dict:
    address = sshd.addresses[0]
    ports = {name: free_port() for name in ("target", "proxy")}
    data = {
        "version": 1, "cluster": "tls-e2e",
        "llama_cpp": {"build": "b11434"},
        "hosts": {"alpha": {
            "connection": {"type": "ssh", "address": address, "port": sshd.ports[0], "user": sshd.user,
                           "key_file": str(sshd.key_file)},
            "os": "linux", "arch": "x86_64", "backend": "cpu", "install_dir": str(root),
            "models_dir": str(root / "models"), "service_manager": "supervisord", "models": ["smollm2"]}},
        "models": {"smollm2": {"files": [{"name": content.model.name, "sha256": "0" * 64, "size": 1}],
                               "quant": "Q4_1", "tokenizer": "smollm2",
                               "architecture": {"family": "llama", "layers": 30, "n_embd": 576, "kv_dim": 192}}},
        "services": {
            "target": {"role": "target", "host": "alpha", "bind": address, "port": ports["target"],
                       "model": "smollm2", "ctx_size": 1024, "extra_args": ["--threads", "1"]},
            "proxy": {"role": "proxy", "host": "alpha", "bind": address, "port": ports["proxy"], "target": "target",
                      "auth": {"token_file": str(root / "secrets" / "proxy.token")}, "tls": {"self_signed": True}},
        },
    }
    return mirror_mod.pin_to_mirror(data, content, mirror_url)


@pytest.fixture(scope="module")
def cluster(sshd, mirror, tmp_path_factory):  # noqa: F811 (the fixtures imported above)
    server, content = mirror
    base = tmp_path_factory.mktemp("tls-host")
    state = tmp_path_factory.mktemp("tls-state")  # the deployer's state folder: the generated pair
    root = base / "alpha"
    inventory_file = base / "cluster.yaml"
    inventory_file.write_text(yaml.safe_dump(tls_inventory(sshd, server.url, content, root), sort_keys=False))
    previous = os.environ.get(tls.STATE_ENV)
    os.environ[tls.STATE_ENV] = str(state)  # doctor and drift run in this process, pyinfra inherits it
    first = run_pyinfra(inventory_file, sshd, server.url)
    inventory = load_inventory(inventory_file)
    yield {"first": first, "inventory_file": inventory_file, "inventory": inventory, "root": root, "state": state,
           "sshd": sshd, "server": server, "local": tls.local_pair(inventory, "proxy", create=False)}
    conf = root / "supervisor" / "supervisord.conf"
    if conf.exists():
        subprocess.run(["supervisorctl", "-c", str(conf), "shutdown"], capture_output=True, timeout=60)
    if previous is None:
        os.environ.pop(tls.STATE_ENV, None)
    else:
        os.environ[tls.STATE_ENV] = previous


def build_info(root: Path) -> str:
    record = json.loads((root / "builds" / "current" / "install.json").read_text())
    number = record["version"].split("(build ")[1].split(",")[0]
    return f"b{number}-{record['version'].split('commit ')[1].rstrip(')')}"


def doctor(cluster, capsys) -> tuple[int, dict[str, dict]]:
    capsys.readouterr()
    code = main(["doctor", str(cluster["inventory_file"]), "--json", "--expect-build-info", build_info(cluster["root"])])
    report = json.loads(capsys.readouterr().out)
    return code, {f["check"]: f for f in report["findings"]}


def proxy_url(cluster) -> str:
    svc = cluster["inventory"].services["proxy"]
    return f"https://{svc.bind}:{svc.port}"


def wait_for_proxy(cluster, context: ssl.SSLContext) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(proxy_url(cluster) + "/health", verify=context, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the proxy did not come back"
        time.sleep(0.5)


def test_the_deploy_places_the_pair_and_the_proxy_serves_it(cluster):
    first = cluster["first"]
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    local = cluster["local"]
    assert local is not None and stat.S_IMODE(local.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(local.cert.parent.stat().st_mode) == 0o700
    cert, key = cluster["root"] / "etc" / "proxy.crt", cluster["root"] / "etc" / "proxy.key"
    assert cert.read_bytes() == local.cert.read_bytes() and key.read_bytes() == local.key.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.owner() == cluster["sshd"].user
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    config = json.loads((cluster["root"] / "etc" / "proxy.json").read_text())
    assert config["tls"] == {"cert_file": str(cert), "key_file": str(key)}
    assert "PRIVATE KEY" not in (cluster["root"] / "etc" / "proxy.json").read_text()
    assert "PRIVATE KEY" not in first.stdout + first.stderr
    uploads = cluster["root"] / "uploads"  # where a copied secret passes through: empty afterwards
    assert not uploads.exists() or not list(uploads.iterdir())
    svc = cluster["inventory"].services["proxy"]
    assert tls.fingerprint(tls.served_certificate(svc.bind, svc.port, 10)) == tls.file_fingerprint(local.cert)


def test_openai_client_over_tls_with_the_generated_certificate(cluster):
    token = (cluster["root"] / "secrets" / "proxy.token").read_text().strip()
    trust = ssl.create_default_context(cafile=str(cluster["local"].cert))  # names checked: the SAN is the bind
    client = openai.OpenAI(base_url=proxy_url(cluster) + "/v1", api_key=token, max_retries=0, timeout=120,
                           http_client=httpx.Client(verify=trust))
    reply = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert reply.choices[0].text
    bare = openai.OpenAI(base_url=proxy_url(cluster) + "/v1", api_key=token, max_retries=0, timeout=30)
    with pytest.raises(openai.APIConnectionError):
        bare.completions.create(model="smollm2", prompt="x", max_tokens=1)


def test_doctor_passes_and_a_second_deploy_keeps_the_pair(cluster, capsys):
    code, checks = doctor(cluster, capsys)
    assert code == 0, {k: f for k, f in checks.items() if f["severity"] != "ok"}
    assert checks["proxy tls proxy"]["severity"] == "ok"
    assert tls.file_fingerprint(cluster["local"].cert) in checks["proxy tls proxy"]["actual"]
    assert checks["proxy auth proxy"]["severity"] == checks["proxy rejects anonymous proxy"]["severity"] == "ok"
    before = cluster["local"].cert.read_bytes()
    again = run_pyinfra(cluster["inventory_file"], cluster["sshd"], cluster["server"].url)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert cluster["local"].cert.read_bytes() == before  # reused: the fingerprint clients pinned stays


def test_a_replaced_pair_is_a_fingerprint_mismatch_until_the_deploy_restores_it(cluster, capsys, tmp_path):
    root, local = cluster["root"], cluster["local"]
    svc = cluster["inventory"].services["proxy"]
    other = tls.LocalPair(tmp_path / "cert.pem", tmp_path / "key.pem")
    tls.generate_self_signed(other, [svc.bind], "someone else")
    for source, target in ((other.cert, root / "etc" / "proxy.crt"), (other.key, root / "etc" / "proxy.key")):
        shutil.copyfile(source, target)
    conf = root / "supervisor" / "supervisord.conf"
    restarted = subprocess.run(["supervisorctl", "-c", str(conf), "restart", "llamafleet-proxy"],
                               capture_output=True, text=True, timeout=120)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    wait_for_proxy(cluster, tls.pinned_context(other.cert))

    code, checks = doctor(cluster, capsys)
    assert code == 2
    finding = checks["proxy tls proxy"]
    assert finding["severity"] == "fail"
    assert tls.file_fingerprint(local.cert) in finding["expected"]
    assert tls.file_fingerprint(other.cert) in finding["actual"]
    assert checks["proxy auth proxy"]["severity"] == "skipped"  # nothing sent to a proxy doctor does not trust

    capsys.readouterr()
    drift_code = main(["drift", str(cluster["inventory_file"]), "--json",
                       "--data", f"ssh_known_hosts_file={cluster['sshd'].known_hosts}"])
    report = json.loads(capsys.readouterr().out)
    assert drift_code == 2
    differing = " ".join(json.dumps(f) for f in report["findings"] if f["severity"] == "fail")
    assert str(root / "etc" / "proxy.crt") in differing and str(root / "etc" / "proxy.key") in differing
    assert "PRIVATE KEY" not in json.dumps(report)

    again = run_pyinfra(cluster["inventory_file"], cluster["sshd"], cluster["server"].url)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (root / "etc" / "proxy.key").read_bytes() == local.key.read_bytes()
    assert stat.S_IMODE((root / "etc" / "proxy.key").stat().st_mode) == 0o600
    wait_for_proxy(cluster, tls.pinned_context(local.cert))  # restarted on the restored pair
    code, checks = doctor(cluster, capsys)
    assert code == 0 and checks["proxy tls proxy"]["severity"] == "ok", checks["proxy tls proxy"]
