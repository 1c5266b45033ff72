"""Tightwad's speculation proxy (PyPI ``tightwad``, 0.5.4), started on loopback against the same
target and drafter the benchmark uses, so its figures sit next to ours from the same run.

It runs as a subprocess through its own public API (``tightwad.proxy.create_app`` with the
``TIGHTWAD_*`` environment its ``load_proxy_from_env`` reads), served by uvicorn as its CLI does.
The interpreter is the current one when ``tightwad`` imports here, otherwise a separate venv at
``$LLAMAFLEET_CACHE/tightwad-0.5.4`` (for installs where its pins clash with ours).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from llamafleet.llama_client import LlamaClient, LlamaServerError
from llamafleet.rig.cache import cache_root
from llamafleet.rig.servers import RunningProcess, free_port

TIGHTWAD_VERSION = "0.5.4"
DRAFT_TOKENS = 8  # Tightwad's default max_draft_tokens

_SERVE = (
    "import uvicorn; from tightwad.config import load_proxy_from_env; from tightwad.proxy import create_app; "
    "c = load_proxy_from_env(); uvicorn.run(create_app(c), host=c.host, port=c.port, log_level='warning')"
)


def tightwad_python() -> str | None:
    """The interpreter that can import tightwad, or None when it is not installed anywhere we look."""
    if importlib.util.find_spec("tightwad") is not None:
        return sys.executable
    separate = cache_root() / f"tightwad-{TIGHTWAD_VERSION}" / "bin" / "python"
    return str(separate) if separate.exists() else None


def tightwad_version(python: str) -> str:
    out = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('tightwad'))"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip() or "unknown"


@contextmanager
def running_tightwad(python: str, target_url: str, drafter_url: str, log_dir: Path) -> Iterator[RunningProcess]:
    port = free_port()
    env = {
        **os.environ,
        "TIGHTWAD_TARGET_URL": target_url,
        "TIGHTWAD_DRAFT_URL": drafter_url,
        "TIGHTWAD_TARGET_BACKEND": "llamacpp",
        "TIGHTWAD_DRAFT_BACKEND": "llamacpp",
        "TIGHTWAD_MAX_DRAFT_TOKENS": str(DRAFT_TOKENS),
        "TIGHTWAD_HOST": "127.0.0.1",
        "TIGHTWAD_PORT": str(port),
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"tightwad-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([python, "-c", _SERVE], stdout=log, stderr=subprocess.STDOUT, env=env)
    proxy = RunningProcess(name="tightwad", process=process, port=port, log_path=log_path)
    try:
        _wait_until_serving(proxy)
        yield proxy
    finally:
        proxy.stop()


def _wait_until_serving(proxy: RunningProcess, timeout: float = 60.0) -> None:
    try:
        LlamaClient(5.0).wait_json(f"{proxy.url}/v1/models", within=timeout, poll=0.2, alive=proxy.check_running)
    except LlamaServerError:
        raise TimeoutError(f"Tightwad not serving after {timeout:.0f}s:\n{proxy.log_tail()}") from None
