"""``llamafleet bench --rig``: the whole local rig on loopback, started here and torn down after.

- target: the slow padded SmolLM2 (identical greedy outputs, about 7x slower) or, with
  ``pair="partial"``, the partly-agreeing target; ``-np`` wide enough for proxy-path verification;
- drafter: SmolLM2 on its own llama-server (the proxy path's and Tightwad's draft);
- native: a second llama-server of the same target running llama.cpp's own speculation, with the
  draft model on a ggml-rpc-server (how a cluster places the draft on another machine);
- the llamafleet proxy as a subprocess (``llamafleet proxy --config``), with bearer-token auth on.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from llamafleet.bench.session import BenchSetup
from llamafleet.errors import UserError
from llamafleet.rig import cache, models, servers

DRAFT_MAX = 8
CONTEXT_PER_SLOT = 1024


@contextmanager
def running_rig(log_dir: Path, *, pair: str = "slow", threads: int = 1, build: cache.LlamaCpp | None = None,
                device: str | None = None, target_model: Path | None = None) -> Iterator[BenchSetup]:
    """``build``, ``device`` and ``target_model`` are for GPU runs (benchmarks/gpu/run.sh): a CUDA
    build, the device every server offloads to (e.g. CUDA0), and a larger padded target."""
    build = build or cache.ensure_llama_cpp()
    draft = cache.ensure_smollm2()
    if target_model is None:
        target_model = models.ensure_slow_target() if pair == "slow" else models.ensure_partial_target()
    with ExitStack() as stack:
        try:
            setup = _start_rig(stack, log_dir, build, draft, target_model, pair, threads, device)
        except (RuntimeError, TimeoutError) as err:  # a server that would not start: its log tail is in err
            raise UserError(f"could not start the rig (logs in {log_dir}): {err}") from None
        yield setup


def _start_rig(stack: ExitStack, log_dir: Path, build: cache.LlamaCpp, draft: Path, target_model: Path,
               pair: str, threads: int, device: str | None) -> BenchSetup:
    # On the CPU rig "-dev none" keeps every model on the host; a GPU device takes all layers.
    placement = ["-dev", device, "-ngl", "99"] if device else ["-dev", "none"]

    def start(model: Path, name: str, args: list[str]) -> servers.RunningProcess:
        server = servers.start_llama_server(build, model, log_dir=log_dir, args=args, threads=threads,
                                            name=name)
        return stack.enter_context(servers.running(server))

    slots = DRAFT_MAX + 1  # the proxy path verifies draft length + 1 prefixes in one batch
    # -nr (no weight repacking) on the targets: batched and one-token evaluation then give the
    # bit-identical logits exact verification relies on (docs/proxy.md).
    target = start(target_model, "target",
                   ["-c", str(CONTEXT_PER_SLOT * slots), "-np", str(slots), "-nr", *placement])
    drafter = start(draft, "drafter", ["-c", str(CONTEXT_PER_SLOT), *placement])
    rpc = stack.enter_context(servers.running(servers.start_rpc_server(build, log_dir=log_dir, threads=threads)))
    native = start(target_model, "native", [
        "-c", str(CONTEXT_PER_SLOT), "-nr",
        *models.native_target_args(draft, f"127.0.0.1:{rpc.port}", DRAFT_MAX, device=device or "none"),
    ])
    token = secrets.token_urlsafe(24)
    config = {
        "listen": {"host": "127.0.0.1", "port": servers.free_port()},
        "target": {"name": "target", "url": target.url, "slots": slots},
        "drafters": [{"name": "drafter", "url": drafter.url}],
        "native": {"name": "native", "url": native.url},
        "mode": "auto",
        "draft_max": DRAFT_MAX,
        "auth": {"token_file": str(_write_secret(log_dir / "proxy-token", token))},
    }
    proxy = stack.enter_context(servers.running(start_proxy(config, log_dir)))
    return BenchSetup(
        target_url=target.url, proxy_url=proxy.url, token=token, drafter_url=drafter.url,
        modes=["native", "proxy", "auto"],
        about={"cluster": f"local rig ({pair} pair)", "target_model": target_model.name,
               "draft_model": draft.name, "threads_per_server": threads, "draft_max": DRAFT_MAX,
               "device": device or "cpu", "llama_cpp": str(build.root)},
    )


def _write_secret(path: Path, secret: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return path


def start_proxy(config: dict, log_dir: Path) -> servers.RunningProcess:
    """The proxy in its own process, as a deployment runs it (and off the benchmark client's GIL)."""
    port = config["listen"]["port"]
    config_path = log_dir / f"proxy-{port}.json"
    config_path.write_text(json.dumps(config, indent=1))
    log_path = log_dir / f"proxy-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "llamafleet.cli", "proxy", "--config", str(config_path)],
                                   stdout=log, stderr=subprocess.STDOUT)
    proxy = servers.RunningProcess(name="proxy", process=process, port=port, log_path=log_path)
    servers.wait_for_health(proxy, timeout=60)
    return proxy
