"""The host helper's side of the cluster's file cache, run as the deploy runs it (``python3 lf_host.py
VERB ...``) against real local HTTP servers: ``fetch`` through a list of sources (a source that is down
or sends other bytes is skipped, the file is verified before it replaces anything), and ``serve``, the
read-only file server of the cache host and of peers."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from llamafleet.rig.mirror import MirrorServer
from llamafleet.rig.servers import free_port

HELPER = Path(__file__).resolve().parents[2] / "deploys" / "scripts" / "lf_host.py"
sys.path.insert(0, str(HELPER.parent))
import lf_host  # noqa: E402  (the helper is a stdlib-only script, importable for its pure parts)

SIZE = 2 * 1024 * 1024 + 3
GOOD = os.urandom(SIZE)
DIGEST = hashlib.sha256(GOOD).hexdigest()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Three loopback servers holding x.bin: one with the right bytes, two with other bytes of the same size."""
    started = {}
    for name, data in (("good", GOOD), ("bad", GOOD[:-1] + b"\0"), ("worse", bytes(SIZE))):
        root = tmp_path_factory.mktemp(name)
        (root / "x.bin").write_bytes(data)
        started[name] = MirrorServer(root).start()
    yield started
    for server in started.values():
        server.stop()


def helper(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER), *args], capture_output=True, text=True, timeout=120)


def fetch(dest: Path, sources: list[str], size: int | None = SIZE) -> subprocess.CompletedProcess:
    return helper("fetch", json.dumps({"dest": str(dest), "url": sources[-1], "sources": sources, "sha256": DIGEST,
                                       "size": size}))


def test_a_source_with_other_bytes_is_skipped_and_the_next_one_used(servers, tmp_path):
    bad, good = f"{servers['bad'].url}/x.bin", f"{servers['good'].url}/x.bin"
    dest = tmp_path / "x.bin"
    result = fetch(dest, [bad, good])
    assert result.returncode == 0, result.stderr
    wrong = hashlib.sha256(GOOD[:-1] + b"\0").hexdigest()
    assert f"llamafleet: x.bin: skipping {bad}: it sent bytes with sha256 {wrong}, not {DIGEST}\n" in result.stderr
    assert result.stdout == f"llamafleet: downloaded x.bin from {good}\n"
    assert dest.read_bytes() == GOOD and lf_host.is_verified(str(dest), DIGEST)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.bin.verified", "x.bin"]  # no partial left


def test_a_source_that_is_down_is_skipped_at_once(servers, tmp_path):
    down, good = f"http://127.0.0.1:{free_port()}/x.bin", f"{servers['good'].url}/x.bin"
    started = time.monotonic()
    result = fetch(tmp_path / "x.bin", [down, good])
    assert result.returncode == 0, result.stderr
    assert f"llamafleet: x.bin: skipping {down}: cannot connect to {down}: connection refused\n" in result.stderr
    assert time.monotonic() - started < 10  # no retries against a port nothing listens on


def test_when_every_source_fails_nothing_is_replaced(servers, tmp_path):
    dest = tmp_path / "x.bin"
    dest.write_bytes(b"the model in use")
    sources = [f"{servers['bad'].url}/x.bin", f"{servers['worse'].url}/x.bin", f"{servers['good'].url}/missing.bin"]
    result = fetch(dest, sources)
    assert result.returncode == 3
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"llamafleet: no source gave x.bin with sha256 {DIGEST} (sha256 mismatch for {sources[0]}")
    assert f"download of {sources[2]} failed: HTTP 404" in last
    assert last.endswith("; the existing file was left in place")
    assert dest.read_bytes() == b"the model in use" and not (tmp_path / ".x.bin.partial").exists()


def test_bytes_kept_from_an_earlier_source_are_not_blamed_on_the_next(servers, tmp_path):
    """A partial file from an earlier source with wrong bytes, resumed from a good source, fails the
    hash: the good source is asked once more from the first byte, and gives the file."""
    (tmp_path / ".x.bin.partial").write_bytes(b"\xff" * 1000)
    servers["good"].requests.clear()
    result = fetch(tmp_path / "x.bin", [f"{servers['good'].url}/x.bin"])
    assert result.returncode == 0, result.stderr
    assert [r for _c, _p, r in servers["good"].requests] == ["bytes=1000-", None]
    assert (tmp_path / "x.bin").read_bytes() == GOOD


def test_an_unknown_size_comes_from_the_download_itself(servers, tmp_path):
    """Release archives have no size in the inventory: no HEAD request, the GET's length is used."""
    servers["good"].requests.clear()
    result = fetch(tmp_path / "x.bin", [f"{servers['good'].url}/x.bin"], size=None)
    assert result.returncode == 0, result.stderr
    assert [(c, r) for c, _p, r in servers["good"].requests] == [("GET", None)]
    assert (tmp_path / "x.bin").read_bytes() == GOOD


def answering(server: subprocess.Popen, port: int) -> str:
    """The base URL of a ``serve`` process once its /health answers."""
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2).close()
            return base
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)


@pytest.fixture
def cache(tmp_path):
    """``lf_host.py serve`` on 127.0.0.1 over a folder with one verified file, as the deploy fills it."""
    folder = tmp_path / "cache"
    verified = folder / DIGEST / "model.gguf"
    verified.parent.mkdir(parents=True)
    verified.write_bytes(GOOD)
    lf_host.write_stamp(str(verified), DIGEST)
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HELPER), "serve", "127.0.0.1", str(port), str(folder)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = answering(server, port)
    yield base, folder, verified, port
    server.terminate()
    server.wait(timeout=10)


def status_of(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers or {}), timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def test_the_cache_serves_a_verified_file_whole_and_in_ranges(cache):
    base, _folder, _verified, _port = cache
    url = f"{base}/{DIGEST}/model.gguf"
    assert status_of(url)[:2] == (200, GOOD)
    code, body, headers = status_of(url, "HEAD")
    assert (code, body, headers["Content-Length"]) == (200, b"", str(SIZE))
    code, body, headers = status_of(url, headers={"Range": "bytes=10-"})
    assert (code, body, headers["Content-Range"]) == (206, GOOD[10:], f"bytes 10-{SIZE - 1}/{SIZE}")
    assert status_of(url, headers={"Range": "bytes=10-19"})[:2] == (206, GOOD[10:20])
    code, _body, headers = status_of(url, headers={"Range": f"bytes={SIZE}-"})
    assert (code, headers["Content-Range"]) == (416, f"bytes */{SIZE}")


def test_the_cache_serves_nothing_but_verified_files(cache, tmp_path):
    base, folder, verified, _port = cache
    unverified = folder / ("1" * 64) / "other.gguf"
    unverified.parent.mkdir()
    unverified.write_bytes(b"never verified")
    outside = tmp_path / "secret"
    outside.write_bytes(b"not in the cache")
    link = folder / DIGEST / "link.gguf"
    link.symlink_to(verified)
    for path in (f"/{'1' * 64}/other.gguf", f"/{DIGEST}/.model.gguf.verified", f"/{DIGEST}/link.gguf",
                 f"/{DIGEST}/..%2f..%2fsecret", "/../secret", f"/{DIGEST}", "/", f"/{DIGEST.upper()}/model.gguf"):
        assert status_of(base + path)[0] == 404, path
    assert status_of(f"{base}/{DIGEST}/model.gguf", "PUT")[0] == 501  # read-only: no other method
    assert status_of(f"{base}/{DIGEST}/model.gguf", "DELETE")[0] == 501
    os.utime(verified, ns=(0, 0))  # changed since it was verified: the stamp no longer vouches for it
    assert status_of(f"{base}/{DIGEST}/model.gguf")[0] == 404


def test_the_cache_listens_on_its_address_only(cache):
    _base, _folder, _verified, port = cache
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.2", port)) != 0  # another address of this machine: refused
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/health")
    assert connection.getresponse().status == 200


def test_a_port_in_use_is_one_line(cache):
    base, folder, _verified, port = cache
    result = helper("serve", "127.0.0.1", str(port), str(folder))
    assert result.returncode == 2
    assert result.stderr.startswith(f"llamafleet: cannot serve the cache on 127.0.0.1 port {port}: ")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_peer_serves_the_verified_files_it_holds_in_its_own_folders(tmp_path, servers):
    """A peer's server reads its models_dir and downloads (a file and its stamp side by side), the
    way ``fetch`` left them there."""
    models, downloads = tmp_path / "models", tmp_path / "downloads"
    result = fetch(models / "x.bin", [f"{servers['good'].url}/x.bin"])
    assert result.returncode == 0, result.stderr
    downloads.mkdir()
    (downloads / "unstamped.tar.gz").write_bytes(GOOD)
    port = free_port()
    peer = subprocess.Popen([sys.executable, str(HELPER), "serve", "127.0.0.1", str(port), str(models),
                             str(downloads)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = answering(peer, port)
        assert status_of(f"{base}/{DIGEST}/x.bin")[:2] == (200, GOOD)
        assert status_of(f"{base}/{'2' * 64}/x.bin")[0] == 404  # another file's hash: not this one
        assert status_of(f"{base}/{DIGEST}/unstamped.tar.gz")[0] == 404  # never verified here
        # Fetched through the peer, by a third host: the bytes are checked on arrival as from any source.
        result = fetch(tmp_path / "third" / "x.bin", [f"{base}/{DIGEST}/x.bin"])
        assert result.returncode == 0 and (tmp_path / "third" / "x.bin").read_bytes() == GOOD
    finally:
        peer.terminate()
        peer.wait(timeout=10)
