"""Rolling build upgrades, end to end, with real parts: a real sshd on loopback standing in for three
hosts, a local mirror serving release-style archives packed from the rig's two real builds (b8942 and
b11434), and the real pyinfra CLI. One cluster goes through the whole sequence, in order:

1. deployed at b8942: its own names and flags (``rpc-server``, ``--draft-max``), generation works and
   the target's native draft runs over ``rpc-server`` (``timings.draft_n > 0``);
2. the pin moves to b11434: a ``--limit`` that splits a target from its RPC worker is refused, a
   canary ``--limit`` of that RPC group upgrades it alone (``drift`` and ``doctor`` report the mixed
   cluster), and the full run upgrades the rest;
3. the pin moves to a build nobody has seen (below): rendered with the nearest known build's names,
   it is refused on every host after the install and before any unit is written, with the valid
   spellings, and what the installed binaries said is saved;
4. the pin moves to a broken build (below): the group that fails goes back to b11434, which still
   answers, and the deploy exits non-zero.

Both made-up builds are b11434's real archive relabelled: ``llama-server`` is a shell script that
answers ``--version`` as the made-up build and runs the real binary beside it otherwise. The unknown
build (b9100, nearest known b8942) then behaves like b11434 under another number. The broken one
(b11435) answers ``--version`` and ``--help`` (so the install record and the flag check pass, as they
would for a real build) and exits at start: what a build that crashes on this machine's CPU or
drivers looks like to the deploy.

Topology: alpha runs the target with native speculation (draft on beta's RPC worker), beta the RPC
worker, gamma a drafter and the proxy. alpha and beta form one RPC group; gamma is its own.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest
import yaml

from llamafleet.cli import main
from llamafleet.rig import mirror as mirror_mod
from llamafleet.rig.cache import cache_root
from llamafleet.rig.servers import free_port
from llamafleet.server_key import state_root
from sshd_rig import running_sshd

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
HOSTS = ("alpha", "beta", "gamma")
BROKEN, UNKNOWN = "b11435", "b9100"
RELABELLED = """#!/bin/sh
# llamafleet's upgrade test: b11434's real llama-server (beside, as llama-server.real) under the made-up
# build number {number}.
here=$(dirname "$0")
case "$1" in
  --version) echo "version: {number} (relabelled)"; exit 0 ;;
  --help) exec "$here/llama-server.real" --help ;;
esac
{start}
"""
STARTS = 'exec "$here/llama-server.real" "$@"'
EXITS = 'echo "this build exits at start" >&2; exit 1'


def pack_relabelled_archive(real_bin: Path, dest: Path, build: str, start: str) -> Path:
    """b11434's build/bin as a release archive of ``build`` (see the module docstring)."""
    archive = dest / mirror_mod.release_archive_name(build)
    top = f"llama-{build}"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(real_bin.iterdir()):
            name = "llama-server.real" if path.name == "llama-server" else path.name
            tar.add(str(path), f"{top}/{name}", recursive=False)
        info = tarfile.TarInfo(f"{top}/llama-server")
        data = RELABELLED.format(number=build[1:], start=start).encode()
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return archive


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    yield from running_sshd(tmp_path_factory)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, b8942_build, llama_build, smollm2):
    root = tmp_path_factory.mktemp("mirror")
    content = mirror_mod.prepare_mirror(b8942_build, smollm2, root)
    releases = {"b8942": content.release,
                "b11434": mirror_mod._entry(mirror_mod.pack_release_archive(llama_build, root)),
                UNKNOWN: mirror_mod._entry(pack_relabelled_archive(llama_build.bin_dir, root, UNKNOWN, STARTS)),
                BROKEN: mirror_mod._entry(pack_relabelled_archive(llama_build.bin_dir, root, BROKEN, EXITS))}
    (root / "wheels").symlink_to(mirror_mod.prepare_wheelhouse(mirror_mod.default_mirror_root(), ROOT))
    server = mirror_mod.MirrorServer(root)
    server.start()
    yield server, content, releases
    server.stop()


def inventory_at(build: str, base: dict, releases: dict) -> dict:
    data = json.loads(json.dumps(base))
    data["llama_cpp"]["build"] = build
    release = releases[build]
    data["llama_cpp"]["releases"] = [{"file": release.name, "os": "linux", "arch": "x86_64", "backend": "cpu",
                                      "sha256": release.sha256}]
    return data


@pytest.fixture(scope="module")
def cluster(sshd, mirror, tmp_path_factory):
    server, content, releases = mirror
    base = tmp_path_factory.mktemp("hosts")
    roots = {name: base / name for name in HOSTS}
    # What the deploy learns about unknown builds goes to this run's own cache, not the user's.
    learned_cache = base / "cache"
    learned_cache.mkdir()
    (cache_root() / "wheels").mkdir(parents=True, exist_ok=True)  # the proxy wheel, built once for both
    (learned_cache / "wheels").symlink_to(cache_root() / "wheels", target_is_directory=True)

    def ssh(i):
        return {"type": "ssh", "address": sshd.addresses[i], "port": sshd.ports[i], "user": sshd.user,
                "key_file": str(sshd.key_file)}

    def host(i, name, models):
        return {"connection": ssh(i), "os": "linux", "arch": "x86_64", "backend": "cpu",
                "install_dir": str(roots[name]), "models_dir": str(roots[name] / "models"),
                "service_manager": "supervisord", "models": models}

    alpha, beta, gamma = sshd.addresses
    ports = {name: free_port() for name in ("target", "drafter", "rpc", "proxy")}
    data = {
        "version": 1, "cluster": "upgrade",
        "llama_cpp": {"build": "b8942"},
        "hosts": {"alpha": host(0, "alpha", ["smollm2"]), "beta": host(1, "beta", []),
                  "gamma": host(2, "gamma", ["smollm2"])},
        "models": {"smollm2": {"files": [{"name": content.model.name, "sha256": "0" * 64, "size": 1}],
                               "quant": "Q4_1", "tokenizer": "smollm2",
                               "architecture": {"family": "llama", "layers": 30, "n_embd": 576, "kv_dim": 192}}},
        "services": {
            "target": {"role": "target", "host": "alpha", "bind": alpha, "port": ports["target"], "model": "smollm2",
                       "ctx_size": 2048, "parallel": 2, "extra_args": ["--threads", "1"],
                       "native_draft": {"model": "smollm2", "rpc_worker": "rpc", "n_max": 4}},
            "rpc": {"role": "rpc-worker", "host": "beta", "bind": beta, "port": ports["rpc"]},
            "drafter": {"role": "drafter", "host": "gamma", "bind": gamma, "port": ports["drafter"], "model": "smollm2",
                        "ctx_size": 1024, "extra_args": ["--threads", "1"]},
            "proxy": {"role": "proxy", "host": "gamma", "bind": gamma, "port": ports["proxy"], "target": "target",
                      "drafters": ["drafter"], "auth": {"token_file": str(roots["gamma"] / "secrets" / "proxy.token")}},
        },
    }
    base_data = mirror_mod.pin_to_mirror(data, content, server.url)
    files = {}
    for build in ("b8942", "b11434", UNKNOWN, BROKEN):
        files[build] = base / f"cluster-{build}.yaml"
        files[build].write_text(yaml.safe_dump(inventory_at(build, base_data, releases), sort_keys=False))
    yield {"sshd": sshd, "server": server, "roots": roots, "files": files, "cache": learned_cache,
           "ports": ports, "addresses": dict(zip(HOSTS, sshd.addresses))}
    for root in roots.values():  # stop every supervisord the deploy started
        conf = root / "supervisor" / "supervisord.conf"
        if conf.exists():
            subprocess.run(["supervisorctl", "-c", str(conf), "shutdown"], capture_output=True, timeout=60)


def deploy(cluster, build: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLAMAFLEET_INVENTORY": str(cluster["files"][build]),
           "LLAMAFLEET_PIP_FIND_LINKS": f"{cluster['server'].url}/wheels/", "LLAMAFLEET_CACHE": str(cluster["cache"])}
    cmd = [str(Path(sys.executable).with_name("pyinfra")), "inventory/cluster.py", "deploys/cluster.py", "-y",
           "--data", f"ssh_known_hosts_file={cluster['sshd'].known_hosts}", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def current(cluster, name: str) -> str:
    return os.readlink(cluster["roots"][name] / "builds" / "current")


def conf(cluster, name: str, service: str) -> str:
    return (cluster["roots"][name] / "supervisor" / "conf.d" / f"llamafleet-{service}.conf").read_text()


def key_header() -> dict:
    """The deployed llama-servers answer only with the cluster's API key (the deploy generated it in
    this session's $LLAMAFLEET_STATE)."""
    return {"Authorization": f"Bearer {(state_root() / 'clusters' / 'upgrade' / 'server.key').read_text().strip()}"}


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **key_header()})
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.load(resp)


def get(url: str) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, headers=key_header()), timeout=30) as resp:
        return json.load(resp)


def url(cluster, service: str) -> str:
    host = {"target": "alpha", "rpc": "beta", "drafter": "gamma", "proxy": "gamma"}[service]
    return f"http://{cluster['addresses'][host]}:{cluster['ports'][service]}"


def assert_serves(cluster, build_number: int) -> None:
    """The target and the drafter report ``build_number`` and generate; the target drafts over RPC."""
    for service in ("target", "drafter"):
        assert get(f"{url(cluster, service)}/props")["build_info"].startswith(f"b{build_number}-")
    reply = post(f"{url(cluster, 'target')}/completion",
                 {"prompt": "The capital of France is", "n_predict": 16, "temperature": 0})
    assert reply["content"].strip()
    assert reply["timings"].get("draft_n", 0) > 0, reply["timings"]


def run_cli(capsys, *argv: str) -> tuple[int, dict]:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert captured.out, captured.err
    return code, json.loads(captured.out)


# --- 1. b8942 ------------------------------------------------------------------------------------


def test_deployed_at_b8942_with_its_own_names_and_flags(cluster):
    result = deploy(cluster, "b8942")
    assert result.returncode == 0, output(result)[-5000:]
    assert {current(cluster, h) for h in HOSTS} == {"b8942-cpu"}
    rpc = conf(cluster, "beta", "rpc")
    assert "/builds/b8942-cpu/rpc-server -H" in rpc and "ggml-rpc-server" not in rpc
    target = conf(cluster, "alpha", "target")
    assert "--draft-max 4" in target and "--spec-draft" not in target and "draft-simple" not in target
    assert_serves(cluster, 8942)


# --- 2. b11434: canary, then the rest ------------------------------------------------------------


def test_a_limit_that_splits_a_target_from_its_rpc_worker_is_refused(cluster):
    result = deploy(cluster, "b11434", "--limit", "alpha")
    assert result.returncode == 1
    assert ("hosts.alpha: switching b8942-cpu -> b11434-cpu needs beta in the same run: a target and its RPC "
            "workers switch builds together") in output(result)
    assert "Traceback" not in output(result)
    assert {current(cluster, h) for h in HOSTS} == {"b8942-cpu"}
    assert not (cluster["roots"]["alpha"] / "builds" / "b11434-cpu").exists()  # refused before any change


def test_a_canary_limit_upgrades_one_rpc_group_and_the_mixed_cluster_is_reported(cluster, capsys):
    result = deploy(cluster, "b11434", "--limit", "alpha", "--limit", "beta")
    assert result.returncode == 0, output(result)[-5000:]
    assert (current(cluster, "alpha"), current(cluster, "beta"), current(cluster, "gamma")) == \
        ("b11434-cpu", "b11434-cpu", "b8942-cpu")
    assert (cluster["roots"]["alpha"] / "builds" / "b8942-cpu" / "install.json").exists()  # the old build stays beside
    assert "ggml-rpc-server -H" in conf(cluster, "beta", "rpc")
    assert get(f"{url(cluster, 'target')}/props")["build_info"].startswith("b11434-")
    assert get(f"{url(cluster, 'drafter')}/props")["build_info"].startswith("b8942-")

    code, report = run_cli(capsys, "drift", str(cluster["files"]["b11434"]), "--json",
                           "--data", f"ssh_known_hosts_file={cluster['sshd'].known_hosts}")
    assert code == 2
    builds = {(f["host"], f["check"]): f for f in report["findings"] if f["check"] == "llama.cpp build"}
    assert builds[("gamma", "llama.cpp build")]["severity"] == "fail"
    assert builds[("gamma", "llama.cpp build")]["actual"] == "b8942-cpu"
    assert builds[("alpha", "llama.cpp build")]["severity"] == "ok"
    mixed = [f for f in report["findings"] if f["check"] == "mixed builds"]
    assert [(f["host"], f["severity"], f["actual"]) for f in mixed] == [("cluster", "fail", "alpha, beta: b11434; gamma: b8942")]

    code, report = run_cli(capsys, "doctor", str(cluster["files"]["b11434"]), "--json")
    assert code != 0
    checks = {f["check"]: f for f in report["findings"]}
    assert checks["build drafter"]["severity"] == "fail" and checks["build drafter"]["actual"].startswith("b8942-")
    assert checks["build target"]["severity"] == "ok"
    same = [f for f in report["findings"] if f["check"].startswith("same build")]
    assert same and {f["severity"] for f in same} == {"fail"}, same  # one server of two disagrees


def test_the_full_run_upgrades_the_rest_and_a_second_run_changes_nothing(cluster):
    result = deploy(cluster, "b11434")
    assert result.returncode == 0, output(result)[-5000:]
    assert {current(cluster, h) for h in HOSTS} == {"b11434-cpu"}
    target = conf(cluster, "alpha", "target")
    assert "--spec-draft-n-max 4" in target and "--draft-max" not in target
    assert_serves(cluster, 11434)
    again = deploy(cluster, "b11434")
    assert again.returncode == 0, output(again)[-3000:]
    assert [line for line in again.stdout.splitlines() if "] Success" in line] == []


# --- 3. a build nobody has seen: the installed binaries decide ------------------------------------


def test_an_unknown_builds_guessed_flags_are_refused_before_any_unit_is_written(cluster):
    units = {h: sorted((cluster["roots"][h] / "supervisor" / "conf.d").glob("*.conf")) for h in HOSTS}
    before = {h: [p.read_text() for p in units[h]] for h in HOSTS}
    result = deploy(cluster, UNKNOWN)
    text = output(result)
    assert result.returncode != 0 and "Traceback" not in text
    assert f"llama.cpp {UNKNOWN} is not known here: rendered with the names and flags of b8942" in text
    assert (f"hosts.alpha: service target: llama-server {UNKNOWN} has no flag --draft-max "
            f"(nearest valid: --spec-draft-n-max)") in text, text[-5000:]
    assert f"hosts.beta: service rpc: llama.cpp {UNKNOWN} has no rpc-server; its rpc binary is ggml-rpc-server" in text
    assert f"these command lines were rendered with b8942's flags; {UNKNOWN}'s own were read" in text
    # Installed beside, refused before the switch: nothing else changed, everything still serves b11434.
    assert (cluster["roots"]["alpha"] / "builds" / f"{UNKNOWN}-cpu" / "install.json").exists()
    assert {current(cluster, h) for h in HOSTS} == {"b11434-cpu"}
    assert {h: [p.read_text() for p in units[h]] for h in HOSTS} == before
    assert_serves(cluster, 11434)
    learned = json.loads((cluster["cache"] / "builds" / f"{UNKNOWN}.json").read_text())
    assert learned["build"] == UNKNOWN and learned["rpc_binary"] == "ggml-rpc-server"


# --- 4. a broken build: rolled back ------------------------------------------------------------


def test_a_build_that_exits_at_start_is_rolled_back_and_the_old_build_keeps_answering(cluster):
    result = deploy(cluster, BROKEN)
    text = output(result)
    assert result.returncode != 0, text[-5000:]
    assert "Traceback" not in text
    assert "hosts.alpha: rolled back to b11434-cpu after a failed switch to b11435-cpu" in text, text[-5000:]
    assert "hosts.beta: rolled back to b11434-cpu after a failed switch to b11435-cpu" in text
    assert "exited and supervisord gave up restarting it" in text
    # The whole RPC group is back on b11434; gamma, after the failed group, never switched.
    assert {current(cluster, h) for h in HOSTS} == {"b11434-cpu"}
    assert (cluster["roots"]["alpha"] / "builds" / "b11435-cpu" / "install.json").exists()
    assert "/builds/b11434-cpu/" in conf(cluster, "alpha", "target")
    assert_serves(cluster, 11434)
    # What the deploy learned from the installed b11435 binaries was kept for `validate`.
    assert json.loads((cluster["cache"] / "builds" / f"{BROKEN}.json").read_text())["build"] == BROKEN
