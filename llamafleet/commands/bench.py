"""``llamafleet bench [INVENTORY] [--rig]``: baseline against each speculation path, as per-category
tables and speculation statistics, with Tightwad side by side when it is installed. See
docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from llamafleet.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark direct generation against each speculation path (and Tightwad)",
        description=__doc__.split("\n")[0])
    parser.add_argument("inventory", nargs="?", type=Path,
                        help="inventory of the deployed cluster to benchmark (default: as for validate)")
    parser.add_argument("--rig", action="store_true",
                        help="start the local loopback rig (slow padded target + SmolLM2 draft) and benchmark it")
    parser.add_argument("--proxy-service", metavar="NAME", help="the inventory's proxy service, if it has several")
    parser.add_argument("--token-file", type=Path, metavar="FILE",
                        help="the proxy's bearer token (default: the inventory's auth source, read locally)")
    parser.add_argument("--prompts", type=Path, metavar="FILE", help="YAML/JSON prompt file (default: built-in set)")
    parser.add_argument("--per-category", type=_positive, metavar="N",
                        help="use only the first N prompts of each category")
    parser.add_argument("--max-tokens", type=_positive, default=64, metavar="N", help="tokens per answer (64)")
    parser.add_argument("--repeats", type=_positive, default=3, metavar="N", help="measured repeats (3)")
    parser.add_argument("--warmup", type=_non_negative, default=1, metavar="N",
                        help="unrecorded requests per condition first (1)")
    parser.add_argument("--modes", type=_modes, metavar="LIST",
                        help="comma-separated speculation paths to run (default: every one offered: native,proxy,auto)")
    parser.add_argument("--no-tightwad", action="store_true", help="leave Tightwad out even when it is installed")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every raw figure as JSON")
    parser.add_argument("--chart", type=Path, metavar="FILE.png", help="write bar charts of tok/s and speedup")
    parser.add_argument("--rig-pair", choices=("slow", "partial"), default="slow",
                        help="rig target: slow padded SmolLM2 (draft always agrees) or the fast partly-agreeing one")
    parser.add_argument("--rig-threads", type=_positive, default=1, metavar="N", help="threads per rig llama-server (1)")
    parser.add_argument("--rig-build", type=Path, metavar="DIR",
                        help="llama.cpp tree whose build/bin holds llama-server and ggml-rpc-server (GPU runs)")
    parser.add_argument("--rig-device", metavar="NAME", help="llama.cpp device for every rig server, e.g. CUDA0")
    parser.add_argument("--rig-target", type=Path, metavar="FILE.gguf",
                        help="target model for the rig instead of the padded SmolLM2 (same vocabulary)")
    parser.add_argument("--log-dir", type=Path, metavar="DIR", help="where rig and Tightwad logs go (default: a temp dir)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from llamafleet.bench import rig, session
    from llamafleet.bench.chart import write_chart
    from llamafleet.bench.driver import benchmark
    from llamafleet.config import default_inventory_path

    if args.rig and args.inventory is not None:
        raise UserError("give an INVENTORY of a deployed cluster or --rig for the local rig, not both")
    for path, option in ((args.json, "--json"), (args.chart, "--chart")):
        _check_output(path, option)  # before a run of many minutes, not after it
    with ExitStack() as stack:
        log_dir = args.log_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llamafleet-bench-")))
        if args.rig:
            setup = stack.enter_context(rig.running_rig(
                log_dir, pair=args.rig_pair, threads=args.rig_threads, build=_rig_build(args.rig_build),
                device=args.rig_device, target_model=_existing(args.rig_target, "--rig-target")))
        else:
            inventory = args.inventory or default_inventory_path()
            setup = session.from_inventory(inventory, args.proxy_service, args.token_file)
        result = benchmark(setup, args, log_dir)
    print(result.tables)
    if args.json:
        _write(args.json, json.dumps(result.record, indent=1) + "\n")
        print(f"raw figures: {args.json}", file=sys.stderr)
    if args.chart:
        write_chart(result.summary, result.conditions, args.chart, result.title)
        print(f"chart: {args.chart}", file=sys.stderr)
    return 0


def _rig_build(root: Path | None):
    from llamafleet.rig.cache import LlamaCpp

    if root is None:
        return None
    build = LlamaCpp(root)
    for binary in (build.server, build.rpc_server):
        if not binary.is_file():
            raise UserError(f"--rig-build {root}: no {binary.name} in {build.bin_dir}")
    return build


def _existing(path: Path | None, option: str) -> Path | None:
    if path is not None and not path.is_file():
        raise UserError(f"{option} {path}: no such file")
    return path


def _check_output(path: Path | None, option: str) -> None:
    if path is not None and not path.absolute().parent.is_dir():
        raise UserError(f"{option} {path}: folder {path.absolute().parent} does not exist")


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None


def _positive(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _modes(text: str) -> list[str]:
    from llamafleet.bench.session import SPECULATION_MODES

    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in SPECULATION_MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(SPECULATION_MODES)}, got {text!r}")
    return modes
