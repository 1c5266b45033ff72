"""The host helper (deploys/scripts/lf_host.py) run as the deploy runs it: ``python3 lf_host.py VERB JSON``,
against a real local HTTP mirror. Fast checks of what the end-to-end test also shows over ssh."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llamafleet.rig.mirror import MirrorHandler, MirrorServer

HELPER = Path(__file__).resolve().parents[2] / "deploys" / "scripts" / "lf_host.py"
sys.path.insert(0, str(HELPER.parent))
import lf_host  # noqa: E402  (the helper is a stdlib-only script, importable for its pure parts)

SIZE = 3 * 1024 * 1024


class Cut(MirrorHandler):
    def body_limit(self, name, start, length):
        if name == "cut.bin" and start == 0:
            return 1024 * 1024  # the first full request stops after 1 MiB
        return length


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    data = os.urandom(SIZE)
    for name in ("good.bin", "cut.bin"):
        (root / name).write_bytes(data)
    server = MirrorServer(root, handler=Cut).start()
    yield server, hashlib.sha256(data).hexdigest()
    server.stop()


def helper(verb: str, spec: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER), verb, json.dumps(spec)], capture_output=True, text=True)


def test_fetch_verifies_stamps_and_does_not_rehash(served, tmp_path):
    server, digest = served
    dest = tmp_path / "models" / "good.bin"
    spec = {"url": f"{server.url}/good.bin", "dest": str(dest), "sha256": digest, "size": SIZE}
    first = helper("fetch", spec)
    assert first.returncode == 0 and "llamafleet: downloaded" in first.stdout
    assert "good.bin 3.0 MiB / 3.0 MiB (100%)" in first.stderr  # progress
    stamp = json.loads((dest.parent / ".good.bin.verified").read_text())
    assert stamp == {"size": SIZE, "mtime_ns": dest.stat().st_mtime_ns, "sha256": digest}
    assert helper("fetch", spec).stdout.strip() == "llamafleet: verified"
    os.utime(dest, ns=(0, 0))  # a changed mtime invalidates the stamp: hash again, re-stamp
    assert helper("fetch", spec).stdout.strip() == "llamafleet: verified (stamped)"


def test_a_cut_download_resumes_with_a_range_request(served, tmp_path):
    server, digest = served
    server.requests.clear()
    dest = tmp_path / "cut.bin"
    result = helper("fetch", {"url": f"{server.url}/cut.bin", "dest": str(dest), "sha256": digest, "size": SIZE})
    assert result.returncode == 0, result.stderr
    assert [r for (_, p, r) in server.requests if p == "/cut.bin"] == [None, f"bytes={1024 * 1024}-"]
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest


def test_a_corrupt_download_never_replaces_the_good_file(served, tmp_path):
    server, _ = served
    dest = tmp_path / "good.bin"
    dest.write_bytes(b"the good old model")
    result = helper("fetch", {"url": f"{server.url}/good.bin", "dest": str(dest), "sha256": "f" * 64, "size": SIZE})
    assert result.returncode == 3
    last = result.stderr.splitlines()[-1]  # after the progress lines
    assert last.startswith(f"llamafleet: sha256 mismatch for {server.url}/good.bin: expected {'f' * 64}, got ")
    assert last.endswith("; the existing file was left in place") and "Traceback" not in result.stderr
    assert dest.read_bytes() == b"the good old model"
    assert not (tmp_path / ".good.bin.partial").exists()


def test_free_disk_is_checked_before_downloading(served, tmp_path):
    server, digest = served
    result = helper("fetch", {"url": f"{server.url}/good.bin", "dest": str(tmp_path / "huge.bin"),
                              "sha256": digest, "size": 1 << 60})
    assert result.returncode == 2
    assert result.stderr.startswith(f"llamafleet: not enough free disk in {tmp_path} for huge.bin: need 1048576.0 TiB, ")
    assert not list(tmp_path.iterdir())


def test_missing_file_on_the_mirror_is_a_clear_error(served, tmp_path):
    server, digest = served
    result = helper("fetch", {"url": f"{server.url}/nope.bin", "dest": str(tmp_path / "n.bin"), "sha256": digest,
                              "size": 10})
    assert result.returncode == 2
    assert result.stderr.strip() == f"llamafleet: download of {server.url}/nope.bin failed: HTTP 404 not on the mirror"


def test_state_of_a_fresh_host(tmp_path):
    spec = {"install_dir": str(tmp_path / "lf"), "models_dir": str(tmp_path / "lf" / "models"),
            "models": [{"path": str(tmp_path / "lf" / "models" / "m.gguf"), "sha256": "a" * 64}],
            "files": [str(tmp_path / "lf" / "x.conf")], "drivers": []}
    result = helper("state", spec)
    state = json.loads(result.stdout)
    assert state["install"] == {"current": None, "builds": [], "record": None, "version": None, "binaries": {}, "installed": {}}
    assert state["models"] == {spec["models"][0]["path"]: {"present": None, "verified": False, "partial_size": 0}}
    assert state["files"] == {spec["files"][0]: None}
    assert state["disk_free"] > 0 and isinstance(state["listening"], list)


@pytest.mark.parametrize("line,build", [
    ("version: 0.6.0-dev (build 11434, commit unknown)", 11434),  # source tree, number set by cmake
    ("version: 0.6.0-dev (build 0, commit unknown)", 0),  # source tree without git metadata
    ("version: 8111 (5f6a8c4e1)", 8111),  # upstream release archives
    ("error: no version line (exit 127)", None),
])
def test_reported_build(line, build):
    assert lf_host.reported_build(line) == build


def test_bad_input_is_one_line_not_a_traceback():
    result = subprocess.run([sys.executable, str(HELPER), "explode"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("llamafleet: usage: lf_host.py state|fetch|install|switch|rollback|wait SPEC_JSON")


@pytest.mark.slow
def test_install_records_the_build_and_rollback_is_a_switch(tmp_path, llama_build):
    """A release-style archive of the real pinned build: installed into its own folder with a record
    that matches the binary's --version; going back to an installed build downloads nothing."""
    from llamafleet.rig import mirror

    archive = mirror.pack_release_archive(llama_build, tmp_path / "mirror")
    server = MirrorServer(archive.parent).start()
    try:
        def install(build_id):
            spec = {"install_dir": str(tmp_path / "lf"), "build": "b11434", "build_id": build_id, "backend": "cpu",
                    "method": "release", "binaries": ["llama-server", "ggml-rpc-server"], "cmake_options": [],
                    "artifacts": [{"file": archive.name, "url": f"{server.url}/{archive.name}",
                                   "sha256": mirror.sha256_of(archive), "size": None}]}
            result = helper("install", spec)
            assert result.returncode == 0, result.stderr
            return json.loads(helper("state", {"install_dir": spec["install_dir"], "models_dir": str(tmp_path),
                                               "drivers": []}).stdout)["install"]

        first = install("b11434-cpu")
        assert first["current"] == "b11434-cpu" and first["version"] == first["record"]["version"]
        assert first["binaries"] == first["record"]["binaries"]
        assert first["record"]["artifacts_sha256"] == [mirror.sha256_of(archive)]
        assert install("b11434-cpu-next")["current"] == "b11434-cpu-next"
        server.requests.clear()
        back = install("b11434-cpu")
        assert back["current"] == "b11434-cpu" and back["builds"] == ["b11434-cpu", "b11434-cpu-next"]
        assert server.requests == []  # a rollback is a switch of `current`, nothing is fetched
    finally:
        server.stop()


@pytest.mark.slow
def test_wait_sees_an_rpc_worker_that_a_target_holds(llama_build, log_dir):
    """Real ggml-rpc-server: it serves one client at a time and queues two more (measured), and
    connects beyond that time out; earlier readiness probes filled that queue themselves. A re-deploy
    of the worker's host must still find it ready, by its LISTEN socket."""
    import socket
    from contextlib import ExitStack

    from llamafleet.rig import servers

    with servers.running(servers.start_rpc_server(llama_build, log_dir=log_dir)) as worker, ExitStack() as held:
        for _ in range(3):  # the target's connection plus a full accept queue
            held.enter_context(socket.create_connection(("127.0.0.1", worker.port), timeout=5))
        result = helper("wait", {"tcp": [f"127.0.0.1:{worker.port}"], "timeout": 10})
    assert result.returncode == 0, result.stderr
    assert "all services answer" in result.stdout + result.stderr
    stopped = helper("wait", {"tcp": [f"127.0.0.1:{worker.port}"], "timeout": 2})
    assert stopped.returncode != 0 and f"127.0.0.1:{worker.port}" in stopped.stderr


def test_switch_saves_what_a_rollback_restores(tmp_path):
    """An upgrade's switch keeps the build in use and the files about to be rewritten; the rollback
    puts both back (a file that did not exist goes away again)."""
    lf = tmp_path / "lf"
    for build_id in ("b8942-cpu", "b11434-cpu"):
        (lf / "builds" / build_id).mkdir(parents=True)
        (lf / "builds" / build_id / "install.json").write_text("{}")
    (lf / "builds" / "current").symlink_to("b8942-cpu")
    unit, added = lf / "supervisor" / "conf.d" / "llamafleet-target.conf", lf / "supervisor" / "conf.d" / "new.conf"
    unit.parent.mkdir(parents=True)
    unit.write_text("command=/lf/builds/b8942-cpu/llama-server\n")
    spec = {"install_dir": str(lf), "build_id": "b11434-cpu", "files": [str(unit), str(added)]}
    switched = helper("switch", spec)
    assert switched.returncode == 0 and switched.stdout.strip() == "llamafleet: switched b8942-cpu -> b11434-cpu"
    assert os.readlink(lf / "builds" / "current") == "b11434-cpu"
    assert oct((lf / "state" / "rollback.json").stat().st_mode & 0o777) == "0o600"
    assert helper("switch", spec).stdout.strip() == "llamafleet: b11434-cpu is already current"
    unit.write_text("command=/lf/builds/b11434-cpu/llama-server\n")  # what the deploy writes next
    added.write_text("[program:new]\n")
    back = helper("rollback", {"install_dir": str(lf)})
    assert back.returncode == 0 and back.stdout.strip() == "llamafleet: rolled back b11434-cpu -> b8942-cpu"
    assert unit.read_text() == "command=/lf/builds/b8942-cpu/llama-server\n" and not added.exists()
    assert os.readlink(lf / "builds" / "current") == "b8942-cpu"
    again = helper("rollback", {"install_dir": str(lf)})
    assert again.returncode == 2 and "nothing to roll back" in again.stderr
    missing = helper("switch", {**spec, "build_id": "b9999-cpu"})
    assert missing.returncode == 2 and "b9999-cpu is not installed" in missing.stderr


def test_wait_checks_the_props_build_and_one_completion(smollm2_server, llama_build):
    """Against a real llama-server of the rig's build: /props must report the expected build and a
    2-token completion must answer; another build number fails readiness."""
    base = smollm2_server.url
    number = int(llama_build.build.removeprefix("b"))
    ok = helper("wait", {"http": [f"{base}/health"], "props": {base: number}, "completion": [base], "timeout": 30})
    assert ok.returncode == 0, ok.stderr
    wrong = helper("wait", {"http": [f"{base}/health"], "props": {base: number + 1}, "timeout": 30})
    assert wrong.returncode == 3
    assert f"{base}/props reports build_info 'b{number}-" in wrong.stderr and f"not build b{number + 1}" in wrong.stderr
