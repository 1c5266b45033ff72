"""``llamafleet drift [INVENTORY]``: every difference between the hosts and what a deploy would make.

Exit codes as ``terraform plan -detailed-exitcode``: 0 no drift, 2 drift, 1 error (an unreachable
host, an invalid inventory).
"""

from __future__ import annotations

from pathlib import Path

from llamafleet.commands import seconds
from llamafleet.config.loader import DEFAULT_INVENTORY, INVENTORY_ENV, default_inventory_path, load_inventory
from llamafleet.errors import UserError
from llamafleet.report import add_output_options, add_parallel_option, emit, parallel_count, selected_hosts


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "drift",
        help="compare every host with the inventory over SSH (build, drivers, models, units, services, ports)",
        description=f"Compare each host of an inventory (default: ${INVENTORY_ENV} or {DEFAULT_INVENTORY}) with what "
        "the deploy would make of it. Read-only. Exit 0: no drift; 2: drift; 1: error.",
    )
    parser.add_argument("inventory", nargs="?", type=Path, help="inventory YAML file")
    add_output_options(parser)
    parser.add_argument("--deep", action="store_true",
                        help="re-hash every model file (catches a replacement with the same size and mtime)")
    parser.add_argument("--data", metavar="KEY=VALUE", action="append", default=[],
                        help="override pyinfra host data, as pyinfra's --data (e.g. ssh_known_hosts_file=PATH)")
    add_parallel_option(parser, "read")
    parser.add_argument("--timeout", type=seconds, default=10.0, metavar="SECONDS",
                        help="per host, for each part of the SSH connect: TCP, banner, authentication (default 10)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from llamafleet.drift import run_drift  # pyinfra and the deploys load only when drift runs

    path = args.inventory or default_inventory_path()
    inventory = load_inventory(path)
    hosts = selected_hosts(inventory, path, args.limit)
    parallel = parallel_count(args.parallel, len(hosts))
    return emit(run_drift(inventory, path, hosts, deep=args.deep, override=parse_data(args.data), parallel=parallel,
                          timeout=args.timeout), args)


def parse_data(items: list[str]) -> dict[str, str]:
    data = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--data {item}: expected KEY=VALUE")
        data[key] = value
    return data
