"""Start and stop real llama.cpp processes on loopback for tests, the demo and benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from llamafleet.llama_client import LlamaClient, LlamaServerError
from llamafleet.rig.cache import LlamaCpp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningProcess:
    name: str
    process: subprocess.Popen
    port: int
    log_path: Path
    host: str = "127.0.0.1"
    argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_running(self) -> None:
        """Raise with the log's tail when the process has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _spawn(name: str, argv: Sequence[str], port: int, log_dir: Path, env: dict[str, str] | None) -> RunningProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    full_env = {**os.environ, **(env or {})}
    # The binaries load libllama/libggml from their own directory.
    full_env["LD_LIBRARY_PATH"] = f"{Path(argv[0]).parent}:{full_env.get('LD_LIBRARY_PATH', '')}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=full_env)
    return RunningProcess(name=name, process=proc, port=port, log_path=log_path, argv=list(argv))


def wait_for_health(server: RunningProcess, timeout: float = 120.0) -> None:
    """Poll /health until llama-server has loaded its model; fail with its log if it exits."""
    try:
        LlamaClient(2.0).wait_json(f"{server.url}/health", within=timeout, poll=0.2, alive=server.check_running,
                                   ready=lambda body: isinstance(body, dict) and body.get("status") == "ok")
    except LlamaServerError:
        server.stop()
        raise TimeoutError(f"{server.name} not healthy after {timeout:.0f}s:\n{server.log_tail()}") from None


def wait_for_port(server: RunningProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_running()
        with socket.socket() as s:
            if s.connect_ex((server.host, server.port)) == 0:
                return
        time.sleep(0.1)
    server.stop()
    raise TimeoutError(f"{server.name} not listening after {timeout:.0f}s:\n{server.log_tail()}")


def start_llama_server(
    build: LlamaCpp,
    model: Path,
    *,
    log_dir: Path,
    port: int | None = None,
    args: Sequence[str] = (),
    threads: int = 1,
    name: str = "llama-server",
    env: dict[str, str] | None = None,
) -> RunningProcess:
    port = port or free_port()
    argv = [str(build.server), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "-t", str(threads), "--no-webui", *args]
    server = _spawn(name, argv, port, log_dir, env)
    wait_for_health(server)
    return server


def start_rpc_server(build: LlamaCpp, *, log_dir: Path, port: int | None = None, threads: int = 1,
                     args: Sequence[str] = (), env: dict[str, str] | None = None) -> RunningProcess:
    port = port or free_port()
    argv = [str(build.rpc_server), "-H", "127.0.0.1", "-p", str(port), "-t", str(threads), *args]
    server = _spawn(build.rpc_server.name, argv, port, log_dir, env)
    wait_for_port(server)
    return server


@contextmanager
def running(server: RunningProcess) -> Iterator[RunningProcess]:
    try:
        yield server
    finally:
        server.stop()
