"""The host helper (deploys/scripts/lf_host.py) run as the deploy runs it: ``python3 lf_host.py VERB JSON``,
against a real local HTTP mirror. Fast checks of what the end-to-end test also shows over ssh."""

from __future__ import annotations

import hashlib
import json
import os
import re
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


# --- archives: every member stays inside the destination --------------------------------------------
# Crafted archives, served by the real mirror and installed by the real helper. Release archives hold
# links from a library to its versioned file beside it (libggml.so -> libggml.so.0), so such a link is
# unpacked; every other link, hard link, device, fifo, absolute name and `..` component is refused
# before anything is placed.

FAKE_SERVER = b'#!/bin/sh\necho "version: 1 (abc1234)" >&2\n'  # what a b1 release's llama-server --version prints


def _tar_member(tar, name: str, kind: str = "file", data: bytes = b"x", link: str = "") -> None:
    import io
    import tarfile

    info = tarfile.TarInfo(name)
    info.mode = 0o755
    if kind == "file":
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        return
    info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                 "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
    info.linkname = link
    tar.addfile(info)


def _zip_member(zf, name: str, kind: str = "file", data: bytes = b"x", link: str = "") -> None:
    import stat
    import zipfile

    info = zipfile.ZipInfo(name)
    mode = {"file": stat.S_IFREG | 0o755, "symlink": stat.S_IFLNK | 0o777, "chr": stat.S_IFCHR | 0o644}[kind]
    info.external_attr = mode << 16
    zf.writestr(info, link.encode() if kind == "symlink" else data)


def make_archive(path: Path, members: list[tuple]) -> Path:
    """``members``: (name, kind, data-or-link) tuples, after a well-formed llama-b1/llama-server."""
    import tarfile
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as zf:
            _zip_member(zf, "llama-b1/llama-server", data=FAKE_SERVER)
            for name, kind, extra in members:
                _zip_member(zf, name, kind, **({"link": extra} if kind == "symlink" else {"data": extra}))
    else:
        with tarfile.open(path, "w:gz") as tar:
            _tar_member(tar, "llama-b1", "dir")
            _tar_member(tar, "llama-b1/llama-server", data=FAKE_SERVER)
            for name, kind, extra in members:
                _tar_member(tar, name, kind, **({"link": extra} if kind in ("symlink", "hardlink") else {"data": extra}))
    return path


@pytest.fixture
def archive_mirror(tmp_path):
    server = MirrorServer(tmp_path / "mirror").start()
    (tmp_path / "mirror").mkdir()
    yield server, tmp_path / "mirror"
    server.stop()


def install_archive(server, archive: Path, install_dir: Path) -> subprocess.CompletedProcess:
    return helper("install", {"install_dir": str(install_dir), "build": "b1", "build_id": "b1-cpu", "backend": "cpu",
                              "method": "release", "binaries": ["llama-server"], "cmake_options": [],
                              "artifacts": [{"file": archive.name, "url": f"{server.url}/{archive.name}",
                                             "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(), "size": None}]})


def one_line(result: subprocess.CompletedProcess) -> str:
    """The helper's failure: a non-zero exit and one `llamafleet:` line, no traceback."""
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if " / " not in line]  # drop the download progress lines
    assert len(lines) == 1 and lines[0].startswith("llamafleet: "), result.stderr
    return lines[0]


ESCAPES = [  # (id, members, what the one line says)
    ("dot-dot", [("llama-b1/../../../escaped", "file", b"pwned")], "leaves the destination folder"),
    ("dot-dot at the top", [("../escaped", "file", b"pwned")], "leaves the destination folder"),
    ("absolute name", [("{outside}/escaped", "file", b"pwned")], "has an absolute name"),
    ("link to an absolute path", [("llama-b1/escaped", "symlink", "{outside}/escaped")], "only links to a file beside them"),
    ("link up and out", [("llama-b1/escaped", "symlink", "../../../escaped")], "only links to a file beside them"),
    ("link into a folder", [("llama-b1/escaped", "symlink", "sub/x")], "only links to a file beside them"),
    ("link then a file through it", [("llama-b1/d", "symlink", ".."), ("llama-b1/d/escaped", "file", b"pwned")],
     "only links to a file beside them"),
    ("hard link", [("llama-b1/escaped", "hardlink", "llama-b1/llama-server")], "is a hard link"),
    ("device", [("llama-b1/escaped", "chr", b"")], "is a device or fifo"),
    ("fifo", [("llama-b1/escaped", "fifo", b"")], "is a device or fifo"),
]
ZIP_ESCAPES = [
    ("dot-dot", [("llama-b1/../../../escaped", "file", b"pwned")], "leaves the destination folder"),
    ("backslash dot-dot", [("..\\..\\escaped", "file", b"pwned")], "leaves the destination folder"),
    ("absolute name", [("{outside}/escaped", "file", b"pwned")], "has an absolute name"),
    ("drive letter", [("C:/escaped", "file", b"pwned")], "has an absolute name"),
    ("link up and out", [("llama-b1/escaped", "symlink", "../../../escaped")], "only links to a file beside them"),
    ("link to an absolute path", [("llama-b1/escaped", "symlink", "{outside}/escaped")], "only links to a file beside them"),
    ("device", [("llama-b1/escaped", "chr", b"")], "is a device or fifo"),
]


@pytest.mark.parametrize("suffix,members,says", [(".tar.gz", *c[1:]) for c in ESCAPES] + [(".zip", *c[1:]) for c in ZIP_ESCAPES],
                         ids=[f"tar {c[0]}" for c in ESCAPES] + [f"zip {c[0]}" for c in ZIP_ESCAPES])
def test_an_archive_member_outside_the_destination_is_refused(archive_mirror, tmp_path, suffix, members, says):
    server, root = archive_mirror
    outside = tmp_path / "outside"
    outside.mkdir()
    members = [(n.format(outside=outside), k, e.format(outside=outside) if isinstance(e, str) else e) for n, k, e in members]
    archive = make_archive(root / f"llama-b1-bin{suffix}", members)
    lf = tmp_path / "lf"
    line = one_line(install_archive(server, archive, lf))
    assert line.startswith(f"llamafleet: {archive.name}: member ") and says in line, line
    escaped = [p for p in tmp_path.rglob("escaped*")]
    assert escaped == [] and not (lf / "escaped").exists() and list(outside.iterdir()) == []
    assert sorted(p.name for p in (lf / "builds").iterdir()) == []  # no build, no staging, no half-unpacked tree


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_a_link_beside_its_file_is_unpacked(archive_mirror, tmp_path, suffix):
    """The shape of real release archives: libx.so -> libx.so.0 -> libx.so.0.1 in the binaries' folder."""
    server, root = archive_mirror
    archive = make_archive(root / f"llama-b1-bin{suffix}", [
        ("llama-b1/libx.so.0.1", "file", b"lib"), ("llama-b1/libx.so.0", "symlink", "libx.so.0.1"),
        ("llama-b1/libx.so", "symlink", "libx.so.0")])
    result = install_archive(server, archive, tmp_path / "lf")
    assert result.returncode == 0, result.stderr
    build = tmp_path / "lf" / "builds" / "b1-cpu"
    assert os.readlink(build / "libx.so") == "libx.so.0" and (build / "libx.so").read_bytes() == b"lib"
    assert os.access(build / "llama-server", os.X_OK)
    assert json.loads((build / "install.json").read_text())["version"] == "version: 1 (abc1234)"


def test_a_member_after_a_link_of_its_name_replaces_the_link(archive_mirror, tmp_path):
    """A link to a file beside it, then a file of the link's name: the file replaces the link and the
    link's target is not written through."""
    server, root = archive_mirror
    archive = make_archive(root / "llama-b1-bin.tar.gz", [("llama-b1/libx.so", "symlink", "llama-server"),
                                                         ("llama-b1/libx.so", "file", b"not the server")])
    assert install_archive(server, archive, tmp_path / "lf").returncode == 0
    build = tmp_path / "lf" / "builds" / "b1-cpu"
    assert not (build / "libx.so").is_symlink() and (build / "libx.so").read_bytes() == b"not the server"
    assert (build / "llama-server").read_bytes() == FAKE_SERVER


def _holding(data: bytes):
    return lambda path: (path.write_bytes(data), path)[1]


def _truncated(path: Path) -> Path:
    make_archive(path, [("llama-b1/big", "file", os.urandom(256 * 1024))])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("name,make,says", [
    ("llama-b1-bin.tar.gz", _holding(b"<html>404 from a captive portal</html>\n"),
     "is not a readable tar archive"),
    ("llama-b1-bin.zip", _holding(b"<html>404 from a captive portal</html>\n"),
     "is not a readable zip archive"),
    ("llama-b1-bin.tar.gz", _truncated, "is not a readable tar archive"),
    ("llama-b1-bin.zip", _truncated, "is not a readable zip archive"),
    ("llama-b1-bin.tar.gz", _holding(b""), "is not a readable tar archive"),
], ids=["html as tar", "html as zip", "truncated tar.gz", "truncated zip", "empty file"])
def test_a_download_that_is_not_an_archive_is_one_line(archive_mirror, tmp_path, name, make, says):
    server, root = archive_mirror
    archive = make(root / name)
    line = one_line(install_archive(server, archive, tmp_path / "lf"))
    assert line.startswith(f"llamafleet: {tmp_path / 'lf' / 'downloads' / name} {says} ("), line
    assert line.endswith("delete it and run the deploy again")
    assert sorted(p.name for p in (tmp_path / "lf" / "builds").iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["fetch", "{not json"],
    ["fetch", "{}"],
    ["install", json.dumps({"install_dir": "/nonexistent-root-\0"})],
    ["token", "relative/path", "root"],
])
def test_every_failure_is_one_line(argv):
    result = subprocess.run([sys.executable, str(HELPER), *argv], capture_output=True, text=True)
    assert one_line(result)


# --- token files -------------------------------------------------------------------------------------


def _me() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def token(path: Path, user: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER), "token", str(path), user or _me()], capture_output=True, text=True)


def test_token_in_missing_folders_is_readable_by_its_user(tmp_path):
    """Missing folders above the token are created 0755 (owned by the deploying user), the token 0600
    owned by the service user: the service user can reach and read it, nobody else can read it."""
    path = tmp_path / "a" / "b" / "proxy.token"
    old = os.umask(0o077)  # a strict umask must not make the folders unreachable
    try:
        result = token(path)
    finally:
        os.umask(old)
    assert result.returncode == 0 and result.stdout.strip() == "created", result.stderr
    assert [oct(p.stat().st_mode & 0o777) for p in (tmp_path / "a", tmp_path / "a" / "b")] == ["0o755", "0o755"]
    assert oct(path.stat().st_mode & 0o777) == "0o600" and path.stat().st_uid == os.getuid()
    first = path.read_text()
    assert len(first.strip()) >= 40 and token(path).stdout.strip() == "kept" and path.read_text() == first


def test_token_with_a_loose_mode_is_repaired_in_place(tmp_path):
    path = tmp_path / "proxy.token"
    path.write_text("kept-secret\n")
    path.chmod(0o644)
    result = token(path)
    assert result.returncode == 0 and result.stdout.strip() == "repaired", result.stderr
    assert oct(path.stat().st_mode & 0o777) == "0o600" and path.read_text() == "kept-secret\n"


@pytest.mark.parametrize("dangling", [False, True], ids=["link to a file", "dangling link"])
def test_a_token_path_that_is_a_link_is_refused(tmp_path, dangling):
    victim = tmp_path / "victim"
    if not dangling:
        victim.write_text("not a token\n")
        victim.chmod(0o644)
    link = tmp_path / "proxy.token"
    link.symlink_to(victim)
    line = one_line(token(link))
    assert line == (f"llamafleet: token file {link} is a symbolic link; refusing to write, chmod or chown through "
                    "it (remove the link, the deploy then creates the file)")
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_text() == "not a token\n" and oct(victim.stat().st_mode & 0o777) == "0o644"


def test_a_token_hard_linked_elsewhere_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("x\n")
    victim.chmod(0o644)
    os.link(victim, tmp_path / "proxy.token")
    line = one_line(token(tmp_path / "proxy.token"))
    assert "has 2 hard links" in line and oct(victim.stat().st_mode & 0o777) == "0o644"


def test_token_for_an_unknown_user_is_one_line(tmp_path):
    line = one_line(token(tmp_path / "proxy.token", "no-such-user-lf"))
    assert line == f"llamafleet: no user 'no-such-user-lf' on this host to own the token file {tmp_path / 'proxy.token'}"
    assert not (tmp_path / "proxy.token").exists()


def put_secret(path: Path, upload: Path, user: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER), "secret", str(path), user or _me(), str(upload)],
                          capture_output=True, text=True)


def _upload(folder: Path, text: str) -> Path:
    folder.mkdir(mode=0o700, exist_ok=True)
    upload = folder / "llama-server.key"
    upload.write_text(text)
    return upload


def test_a_copied_secret_is_put_in_place_0600_and_its_upload_removed(tmp_path):
    """The server key's copy: written through the same O_NOFOLLOW descriptor as a token, 0600 and owned
    by the service user, in 0755 folders; the upload is gone afterwards; a changed key replaces the old
    one in place; the same key again changes nothing."""
    path = tmp_path / "etc" / "llama-server.key"
    result = put_secret(path, _upload(tmp_path / "uploads", "first-key-0123456789\n"))
    assert result.returncode == 0 and result.stdout.strip() == "created", result.stderr
    assert path.read_text() == "first-key-0123456789\n" and oct(path.stat().st_mode & 0o777) == "0o600"
    assert path.stat().st_uid == os.getuid() and oct(path.parent.stat().st_mode & 0o777) == "0o755"
    assert list((tmp_path / "uploads").iterdir()) == []
    assert put_secret(path, _upload(tmp_path / "uploads", "first-key-0123456789\n")).stdout.strip() == "kept"
    path.chmod(0o644)
    assert put_secret(path, _upload(tmp_path / "uploads", "second-key-0123456789\n")).stdout.strip() == "replaced"
    assert path.read_text() == "second-key-0123456789\n" and oct(path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("dangling", [False, True], ids=["link to a file", "dangling link"])
def test_a_secret_path_that_is_a_link_is_refused(tmp_path, dangling):
    victim = tmp_path / "victim"
    if not dangling:
        victim.write_text("not a key\n")
        victim.chmod(0o644)
    link = tmp_path / "llama-server.key"
    link.symlink_to(victim)
    upload = _upload(tmp_path / "uploads", "a-key-0123456789abc\n")
    line = one_line(put_secret(link, upload))
    assert line == (f"llamafleet: secret file {link} is a symbolic link; refusing to write, chmod or chown through "
                    "it (remove the link, the deploy then creates the file)")
    assert not upload.exists()  # the key does not stay behind in the upload folder either
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_text() == "not a key\n" and oct(victim.stat().st_mode & 0o777) == "0o644"


def test_a_missing_or_linked_upload_is_one_line(tmp_path):
    line = one_line(put_secret(tmp_path / "k", tmp_path / "nothing"))
    assert line == f"llamafleet: cannot read the uploaded secret {tmp_path / 'nothing'}: No such file or directory"
    other = tmp_path / "other"
    other.write_text("someone else's file\n")
    (tmp_path / "up").symlink_to(other)
    assert "cannot read the uploaded secret" in one_line(put_secret(tmp_path / "k", tmp_path / "up"))
    assert not (tmp_path / "k").exists() and other.read_text() == "someone else's file\n"


def test_state_reads_a_link_as_a_link(tmp_path):
    """A link put in a deployed file's place reads as mode 0777 and no hash, so the token operation
    sends it to the helper (which refuses it) instead of finding its target in order."""
    target = tmp_path / "t"
    target.write_text("x")
    target.chmod(0o600)
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    spec = {"install_dir": str(tmp_path / "lf"), "models_dir": str(tmp_path), "drivers": [],
            "files": [str(tmp_path / "link"), str(tmp_path / "dangling"), str(target)]}
    files = json.loads(helper("state", spec).stdout)["files"]
    assert files[str(tmp_path / "link")]["mode"] == "0777" and files[str(tmp_path / "link")]["sha256"] is None
    assert files[str(tmp_path / "dangling")]["mode"] == "0777"
    assert files[str(target)]["mode"] == "0600" and files[str(target)]["sha256"] == hashlib.sha256(b"x").hexdigest()


# --- the PowerShell twin (deploys/scripts/lf_host.ps1) ------------------------------------------------
# No PowerShell and no Windows here: these read the script's text. Its name rules are .NET regexes that
# mean the same in Python's re (character classes and anchors only), so they are applied to the names the
# POSIX helper refuses and must refuse the same ones; the rest checks where the checks sit in the script.

PS1 = HELPER.with_name("lf_host.ps1").read_text()
NAMES = ["llama-b1/../../../escaped", "../escaped", "..\\..\\escaped", "/tmp/escaped", "\\escaped", "C:/escaped",
         "c:escaped", "llama-b1/llama-server.exe", "./llama-server.exe", "a..b/c..", "ggml-cuda.dll", "sub/dir/"]


def _ps1_string(variable: str) -> str:
    (value,) = re.findall(rf"^\${variable} = '([^']*)'$", PS1, re.M)
    return value


@pytest.mark.parametrize("name", NAMES)
def test_ps1_refuses_the_member_names_the_posix_helper_refuses(name):
    ps1_refuses = bool(re.match(_ps1_string("AbsoluteName"), name)) or ".." in re.split(_ps1_string("NamePart"), name)
    try:
        lf_host.member_path("/dest", "a.zip", name, "file")
        posix_refuses = False
    except lf_host.Failure:
        posix_refuses = True
    assert ps1_refuses == posix_refuses


def test_ps1_checks_every_archive_before_unpacking_it():
    lines = PS1.splitlines()
    unpacks = [i for i, line in enumerate(lines) if "Expand-Archive " in line or re.search(r"\btar -x", line)]
    assert len(unpacks) == 2  # the release zips, the source tarball
    for i in unpacks:
        archive = re.search(r"(\$archives\[0\]|\$archive)(?!\w)", lines[i]).group(1)
        checked = [line for line in lines[:i] if re.search(r"Assert-(Zip|Tar)Members " + re.escape(archive) + r"(?!\w)", line)]
        assert checked, lines[i]
    assert "Fail \"$Archive is not a readable zip archive" in PS1 and "Fail \"$Archive is not a readable tar archive" in PS1


def test_ps1_failures_are_one_line():
    """Fail joins a multi-line message; the verb dispatch turns any other error into a Fail."""
    assert "Error.WriteLine(\"llamafleet: $($Message -replace '\\s*\\r?\\n\\s*', ' ')\")" in PS1
    dispatch = PS1[PS1.index("switch ($Verb) {"):]
    assert PS1[:PS1.index("switch ($Verb) {")].rstrip().endswith("try {")
    assert dispatch.rstrip().endswith('} catch { Fail "$Verb failed: $($_.Exception.Message)" }')


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as a deploy has, to give files to another user")
def test_secrets_for_another_service_user_are_readable_by_it_and_nobody_else():
    """The deploy runs the helper as root for a service user that is not root: the token and the
    server key end up owned by that user, who can read them through the folders the helper made, and
    another unprivileged user cannot. (A real second account of this machine: nobody; daemon.)"""
    import pwd
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="lf-secrets-", dir="/tmp"))  # pytest's own tmp is root's alone
    try:
        root.chmod(0o755)
        token_path, key_path = root / "etc" / "proxy.token", root / "secrets" / "llama-server.key"
        assert token(token_path, "nobody").returncode == 0
        upload = _upload(root / "uploads", "a-key-for-nobody-0123456789\n")
        assert put_secret(key_path, upload, "nobody").returncode == 0
        nobody = pwd.getpwnam("nobody").pw_uid
        for path in (token_path, key_path):
            assert path.stat().st_uid == nobody and oct(path.stat().st_mode & 0o777) == "0o600"
            as_nobody = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(path)], capture_output=True, text=True)
            assert as_nobody.returncode == 0 and as_nobody.stdout == path.read_text()
            as_daemon = subprocess.run(["runuser", "-u", "daemon", "--", "cat", str(path)], capture_output=True, text=True)
            assert as_daemon.returncode != 0 and "Permission denied" in as_daemon.stderr
    finally:
        shutil.rmtree(root)
