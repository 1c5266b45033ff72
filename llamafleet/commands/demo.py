"""``llamafleet demo``: deploy the local example to this machine with the real pyinfra CLI, then serve.

Steps: make sure the rig (pinned llama.cpp build, SmolLM2) is cached; pack a release-style archive
from that build and serve it, the source archive, the model and a wheelhouse from a local HTTP
mirror on 127.0.0.1; write the local inventory (inventory/examples/local.yaml with this mirror's
real sha256s); run ``pyinfra inventory/cluster.py deploys/cluster.py -y``; check that every
llama-server answers /health and /props and that the proxy answers; print the addresses and a sample
request; measure the paths side by side (plain target, native speculation, the proxy path, auto) in
one interleaved run and print the comparison; keep serving until Ctrl-C (``--check`` exits after the
checks, ``--no-compare`` skips the measurement).

The default pair is the case speculation is for: the slow padded rig target with SmolLM2 as its draft
on the RPC worker. ``--pair fast`` makes SmolLM2 the target too: a fast target, where speculation
cannot pay and ``auto`` has to settle on the plain path.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from llamafleet import tls
from llamafleet.config.topology import plain_route
from llamafleet.errors import UserError
from llamafleet.llama_client import LlamaClient, LlamaServerError
from llamafleet.server_key import key_source, server_key

PROJECT = Path(__file__).resolve().parents[2]
PAIRS = ("slow", "fast")  # llamafleet.rig.example.example_inventory's pairs


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="deploy the local example here with pyinfra and serve it",
                                   description="Deploy the local example to this machine with the real pyinfra CLI, then serve it.")
    parser.add_argument("--check", action="store_true", help="exit after the deploy and the checks")
    parser.add_argument("--install-dir", help="install root on this machine (default: the example's)")
    parser.add_argument("--free-ports", action="store_true",
                        help="give every service a free port instead of the example's fixed ones")
    parser.add_argument("--pair", choices=PAIRS, default="slow",
                        help="slow: padded slow target, SmolLM2 draft (default); fast: SmolLM2 as target and draft")
    parser.add_argument("--no-compare", action="store_true", help="skip the side-by-side measurement of the paths")
    parser.add_argument("--compare-tokens", type=int, default=32, metavar="N",
                        help="tokens per request in the comparison (default 32)")
    parser.set_defaults(func=run)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _wait_json(url: str, timeout: float = 120, cert: str | None = None, key: str | None = None) -> dict:
    try:
        return LlamaClient(10.0, context=tls.pinned_context(cert) if cert else None, token=key).wait_json(
            url, within=timeout)
    except LlamaServerError as err:
        raise UserError(f"{url} does not answer after the deploy: {err.reason}") from None


def verify(inventory) -> list[str]:
    """Check every service over HTTP; return the lines to print (addresses and a sample request)."""
    lines = []
    key = server_key(inventory)  # the llama-servers answer /props and completions only with the cluster's key
    for name, svc in inventory.services.items():
        url = f"http://{svc.bind}:{svc.port}"
        if svc.role in ("target", "drafter"):
            _wait_json(f"{url}/health")
            build_info = _wait_json(f"{url}/props", key=key).get("build_info")
            lines.append(f"  {svc.role:10} {name:10} {url}  (llama-server, build_info {build_info})")
            route = plain_route(inventory, name)
            if route is not None:
                plain = f"http://{svc.bind}:{route.port}" if route.sidecar else url
                if route.sidecar:
                    _wait_json(f"{plain}/health")
                lines.append(f"  {'plain':10} {route.sidecar or name:10} {plain}  (plain path: {route.kind.value}; "
                             f"{route.reason})")
        elif svc.role == "proxy":
            token_file = svc.auth.token_file if svc.auth else None
            pair = tls.local_pair(inventory, name, create=False) if svc.tls else None  # the deploy made it
            cert = str(pair.cert) if pair else None
            url = "https" + url.removeprefix("http") if svc.tls else url
            _wait_json(f"{url}/health", cert=cert)
            lines.append(f"  proxy      {name:10} {url}  (OpenAI API; bearer token in {token_file}"
                         + (f"; certificate {cert})" if cert else ")"))
            target = inventory.services[svc.target_names[0]]
            lines += ["", "Try:", f"  curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' "
                      + (f"--cacert {shlex.quote(cert)} " if cert else "")
                      + (f"-H \"Authorization: Bearer $(cat {token_file})\" " if token_file else "")
                      + "-d '{\"model\": \"" + target.model + "\", \"messages\": [{\"role\": \"user\", "
                      "\"content\": \"Name three colours.\"}], \"max_tokens\": 32}'"]
        else:
            lines.append(f"  {svc.role:10} {name:10} {svc.bind}:{svc.port}  (ggml-rpc-server)")
    targets = [s for s in inventory.services.values() if s.role == "target"]
    if targets:
        t = targets[0]
        lines += ["  curl -s http://%s:%d/completion -H \"Authorization: Bearer $(cat %s)\" "
                  "-d '{\"prompt\": \"The capital of France is\", \"n_predict\": 16}'"
                  % (t.bind, t.port, shlex.quote(str(key_source(inventory))))]
    return lines


COMPARE_WARMUP = 2
# Two measured rounds, so each ratio shows its range: one round of five short answers on a shared
# CPU moves by several percent either way, which a lone figure would hide.
COMPARE_REPEATS = 2


def compare(inventory_file: Path, max_tokens: int) -> str:
    """The deployed paths side by side: one interleaved run of the built-in prompts (one per category),
    each path's tok/s and its ratio to the plain target on the same prompts."""
    import argparse
    import tempfile

    from llamafleet.bench import session
    from llamafleet.bench.driver import benchmark
    from llamafleet.bench.tables import comparison_table

    setup = session.from_inventory(inventory_file, None, None)
    # Two unrecorded rounds first: auto's first probe of each path (paid once in a proxy's life) lands
    # there, not in a five-request measurement where it would weigh as much as a day's probing.
    settings = argparse.Namespace(modes=None, prompts=None, per_category=1, max_tokens=max_tokens,
                                  repeats=COMPARE_REPEATS,
                                  warmup=COMPARE_WARMUP, progress=None, no_tightwad=True)
    print(f"llamafleet demo: measuring plain target, {', '.join(setup.modes)} side by side "
          f"(5 prompts, {max_tokens} tokens each, {COMPARE_REPEATS} rounds interleaved, after {COMPARE_WARMUP} warm-up "
          "rounds; each ratio is the median [lowest–highest] of the rounds)...", flush=True)
    with tempfile.TemporaryDirectory(prefix="llamafleet-demo-") as log_dir:
        result = benchmark(setup, settings, Path(log_dir))
    names = result.conditions
    return "\n".join([comparison_table(result.summary, names), "", *(f"Note: {n}" for n in result.record["notes"]),
                      "Full comparison: llamafleet bench " + str(inventory_file) + " (see docs/benchmarks.md)"])


def run(args) -> int:
    from llamafleet.config import load_inventory
    from llamafleet.rig import cache, mirror
    from llamafleet.rig.example import EXAMPLE, example_inventory

    if not (PROJECT / "inventory" / "cluster.py").exists():
        raise UserError(f"the demo runs from a source checkout (no inventory/cluster.py under {PROJECT})")
    from llamafleet.rig.models import ensure_slow_target

    if args.compare_tokens <= 0:
        raise UserError(f"--compare-tokens must be a positive number of tokens, got {args.compare_tokens}")
    build, model = cache.ensure_llama_cpp(), cache.ensure_smollm2()
    extra = (ensure_slow_target(),) if args.pair == "slow" else ()
    content = mirror.prepare_mirror(build, model, extra_models=extra)
    mirror.prepare_wheelhouse(content.root, PROJECT)
    example_port = int(yaml.safe_load(EXAMPLE.read_text())["llama_cpp"]["mirror"].rsplit(":", 1)[1])
    server = mirror.MirrorServer(content.root, example_port if _port_free(example_port) else 0).start()
    try:
        data = example_inventory(content, server.url, args.install_dir, args.free_ports, args.pair)
        inventory_file = cache.cache_root() / "demo" / "cluster.yaml"
        inventory_file.parent.mkdir(parents=True, exist_ok=True)
        inventory_file.write_text(yaml.safe_dump(data, sort_keys=False))
        inventory = load_inventory(inventory_file)
        print(f"llamafleet demo: mirror {server.url}, inventory {inventory_file}", flush=True)
        env = {**os.environ, "LLAMAFLEET_INVENTORY": str(inventory_file),
               "LLAMAFLEET_PIP_FIND_LINKS": f"{server.url}/wheels/"}
        pyinfra = Path(sys.executable).with_name("pyinfra")
        deploy = subprocess.run([str(pyinfra), "inventory/cluster.py", "deploys/cluster.py", "-y"], cwd=PROJECT, env=env)
        if deploy.returncode != 0:
            raise UserError(f"the deploy failed (pyinfra exit {deploy.returncode}); see its output above")
        print("\nllamafleet demo: deployed by pyinfra and answering:\n" + "\n".join(verify(inventory)), flush=True)
        if not args.no_compare:
            print("\n" + compare(inventory_file, args.compare_tokens), flush=True)
        if args.check:
            return 0
        conf = Path(inventory.hosts["local"].install_dir) / "supervisor" / "supervisord.conf"
        print(f"\nServing until Ctrl-C, which stops the services (supervisorctl -c {conf} shutdown).", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            subprocess.run(["supervisorctl", "-c", str(conf), "shutdown"], check=False)
            return 0
    finally:
        server.stop()
