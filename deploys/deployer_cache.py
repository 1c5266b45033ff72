"""``cache: {host: deployer}``: the machine that runs the deploy is the cluster's file cache.

The first host whose downloads need it runs :func:`ready` on the controller (a pyinfra function
command, step "cache"): the host helper, run here as it runs on the hosts, fetches every cluster file
from upstream into the local cache folder (resumable, sha256-verified, each once), then serves the
folder read-only on ``cache.bind:cache.port`` (``lf_host.py serve``, a child process) until the deploy
exits. Every other host's call waits for that one and reuses its result. Progress and failures are
logged through pyinfra, one line each.
"""

from __future__ import annotations

import atexit
import json
import subprocess
import sys
import threading
import time
import urllib.request
from importlib import resources
from pathlib import Path

_LOCK = threading.Lock()  # gevent's, under the pyinfra CLI: one host fills, the others wait
_READY: dict[tuple, bool] = {}
_SERVERS: list[subprocess.Popen] = []


def _helper() -> str:
    return str(resources.files("llamafleet.deploys.scripts").joinpath("lf_host.py"))


def _say(host, line: str, error: bool = False) -> None:
    from pyinfra import logger

    host.log_styled(f"deployer: {line}", fg="red" if error else None, log_func=logger.error if error else logger.info)


def ready(state, host, specs: list[dict], bind: str, port: int, folder: str) -> bool:
    """Fill the local cache and start its server, once per deploy; True when it answers."""
    key = (bind, port, folder)
    with _LOCK:
        if key not in _READY:
            _READY[key] = _fill(host, specs) and _serve(host, bind, port, folder)
        return _READY[key]


def _fill(host, specs: list[dict]) -> bool:
    for spec in specs:
        done = subprocess.run([sys.executable, _helper(), "fetch", json.dumps(spec, sort_keys=True)],
                              capture_output=True, text=True)
        lines = (done.stderr + done.stdout).splitlines()
        failed = done.returncode != 0
        for index, line in enumerate(lines):
            _say(host, line, error=failed and index == len(lines) - 1)  # the helper's reason comes last
        if failed:
            return False
    return True


def _serve(host, bind: str, port: int, folder: str) -> bool:
    log = Path(folder) / ".server.log"  # never served: the server sends no name that starts with "."
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        server = subprocess.Popen([sys.executable, _helper(), "serve", bind, str(port), folder],
                                  stdout=subprocess.DEVNULL, stderr=out)
    _SERVERS.append(server)
    base = f"http://{f'[{bind}]' if ':' in bind else bind}:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            said = log.read_text().strip().splitlines()
            _say(host, said[-1] if said else f"the cache's server exited ({server.returncode})", error=True)
            return False
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2).close()
            _say(host, f"llamafleet: the file cache serves {folder} on {base} until the deploy ends")
            return True
        except OSError:
            time.sleep(0.2)
    _say(host, f"llamafleet: the cache's server did not answer on {base} within 30 s (see {log})", error=True)
    return False


@atexit.register
def _stop() -> None:
    """The server lives as long as the deploy: stopped by its own PID when pyinfra exits."""
    for server in _SERVERS:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
