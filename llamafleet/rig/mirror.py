"""A local HTTP mirror for the demo and the deploy tests: release-style archive, source, model.

The release-style archive is packed from the cached pinned build exactly the way llama.cpp's release
workflow packs ``build/bin`` (``llama-<tag>-bin-ubuntu-x64.tar.gz`` with a ``llama-<tag>/`` top
folder), deterministically, so its sha256 is stable across runs. The server speaks HTTP Range and
HEAD (the deploy resumes downloads) and only ever listens on loopback.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import platform
import re
import shutil
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

from llamafleet.rig.cache import LLAMA_CPP_BUILD, LlamaCpp, cache_root

ARCH = {"x86_64": "x64", "aarch64": "arm64", "arm64": "arm64"}


def release_archive_name(build: str = LLAMA_CPP_BUILD) -> str:
    return f"llama-{build}-bin-ubuntu-{ARCH.get(platform.machine(), 'x64')}.tar.gz"


def _fixed_mtime(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
    return info


def pack_release_archive(build: LlamaCpp, dest: Path) -> Path:
    """Pack ``build/bin`` like the release workflow (``tar -czf NAME --transform s,^.,llama-<tag>,``): the
    build's own binaries, its RPC worker under the name that build gives it."""
    archive = dest / release_archive_name(build.build)
    # Repack when the cached build changes (the rig rebuilds when its cmake options change).
    source_key = dest / f".{archive.name}.from"
    fingerprint = json.dumps(sorted((p.name, p.lstat().st_size, p.lstat().st_mtime_ns) for p in build.bin_dir.iterdir()))
    if archive.exists() and source_key.exists() and source_key.read_text() == fingerprint:
        return archive
    dest.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        top = f"llama-{build.build}"
        tar.addfile(_fixed_mtime(tar.gettarinfo(str(build.bin_dir), top)))
        for path in sorted(build.bin_dir.iterdir()):
            tar.add(str(path), f"{top}/{path.name}", recursive=False, filter=_fixed_mtime)
    os.replace(tmp, archive)
    source_key.write_text(fingerprint)
    return archive


def sha256_of(path: Path) -> str:
    """sha256 of a file, remembered in a sidecar keyed by size and mtime (the mirror holds 100 MB+ files)."""
    sidecar = path.with_name(f".{path.name}.sha256")
    st = path.stat()
    key = f"{st.st_size}:{st.st_mtime_ns}"
    if sidecar.exists():
        saved = json.loads(sidecar.read_text())
        if saved.get("key") == key:
            return saved["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    sidecar.write_text(json.dumps({"key": key, "sha256": digest.hexdigest()}))
    return digest.hexdigest()


def _link(src: Path, dest: Path) -> Path:
    """Hard-link (or copy across filesystems) a cached file into the mirror."""
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dest)
        except OSError:
            shutil.copy2(src, dest)
    return dest


@dataclass(frozen=True)
class MirrorFile:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class MirrorContent:
    root: Path
    release: MirrorFile
    source: MirrorFile
    model: MirrorFile
    extra_models: tuple[MirrorFile, ...] = ()  # further model files (e.g. the demo's slow rig target)

    @property
    def models(self) -> tuple[MirrorFile, ...]:
        return (self.model, *self.extra_models)


def _entry(path: Path) -> MirrorFile:
    return MirrorFile(path.name, sha256_of(path), path.stat().st_size)


def default_mirror_root() -> Path:
    return cache_root() / "mirror"


def prepare_mirror(build: LlamaCpp, model: Path, root: Path | None = None, extra_models: tuple[Path, ...] = ()) -> MirrorContent:
    root = root or default_mirror_root()
    release = pack_release_archive(build, root)
    source = _link(build.source_archive, root / build.source_archive.name)
    model_file = _link(model, root / model.name)
    extra = tuple(_entry(_link(m, root / m.name)) for m in extra_models)
    return MirrorContent(root, _entry(release), _entry(source), _entry(model_file), extra)


RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class MirrorHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HEAD and single-range GET (``Range: bytes=N-``), logging each request."""

    def log_message(self, format, *args):  # noqa: A002 - keep the tests' output quiet
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if path.is_dir():  # a listing, so pip can use the wheels/ folder with --find-links
            self._remaining = None
            return super().send_head()
        if not path.is_file():
            self.send_error(404, "not on the mirror")
            return None
        size = path.stat().st_size
        start, end = 0, size - 1
        match = RANGE.match(self.headers.get("Range", ""))
        self.server.requests.append((self.command, self.path, self.headers.get("Range")))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else size - 1
            if start >= size:
                self.send_error(416, "range not satisfiable")
                return None
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        f = path.open("rb")
        f.seek(start)
        self._remaining = self.body_limit(path.name, start, end - start + 1)
        return f

    def body_limit(self, name: str, start: int, length: int) -> int:
        """How many body bytes to send; tests override it to cut a download short."""
        return length

    def copyfile(self, source, outputfile):
        if self._remaining is None:
            return super().copyfile(source, outputfile)
        remaining = self._remaining
        while remaining > 0:
            block = source.read(min(1 << 20, remaining))
            if not block:
                break
            outputfile.write(block)
            remaining -= len(block)


class MirrorServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, port: int = 0, handler: type[MirrorHandler] = MirrorHandler):
        self.requests: list[tuple[str, str, str | None]] = []
        directory = str(root)

        class Bound(handler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=directory, **kwargs)

        super().__init__(("127.0.0.1", port), Bound)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> "MirrorServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def pin_to_mirror(data: dict, content: MirrorContent, url: str) -> dict:
    """Fill an inventory (plain dict, e.g. examples/local.yaml) with this mirror's URL and real hashes."""
    pin = data["llama_cpp"]
    pin["mirror"] = url
    pin["releases"] = [{"file": content.release.name, "os": "linux", "arch": "x86_64" if "x64" in content.release.name
                        else "arm64", "backend": "cpu", "sha256": content.release.sha256}]
    pin.setdefault("source", {}).update(file=content.source.name, sha256=content.source.sha256)
    served = {m.name: m for m in content.models}
    for model in data.get("models", {}).values():
        for f in model["files"]:
            if f["name"] in served:
                f.update(sha256=served[f["name"]].sha256, size=served[f["name"]].size)
    return data


def prepare_wheelhouse(root: Path, project_root: Path) -> Path:
    """Wheels of the project's dependencies under ``root/wheels`` (pip --find-links for the proxy host),
    rebuilt when pyproject.toml changes."""
    import subprocess
    import sys

    wheels = root / "wheels"
    key = hashlib.sha256((project_root / "pyproject.toml").read_bytes()).hexdigest()
    stamp = wheels / ".complete"
    if stamp.exists() and stamp.read_text() == key:
        return wheels
    wheels.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), str(project_root)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip wheel for the mirror's wheelhouse failed:\n{proc.stdout[-2000:]}")
    stamp.write_text(key)
    return wheels
