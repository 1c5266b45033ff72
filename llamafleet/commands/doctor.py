"""``llamafleet doctor [INVENTORY]``: ask the running services whether they are what the inventory says.

Exit codes as ``drift`` (and ``terraform plan -detailed-exitcode``): 0 all good, 2 something differs,
1 something could not be checked.
"""

from __future__ import annotations

import os
from pathlib import Path

from llamafleet.commands import seconds
from llamafleet.config.loader import DEFAULT_INVENTORY, INVENTORY_ENV, default_inventory_path, load_inventory
from llamafleet.doctor import Doctor, expectation
from llamafleet.errors import UserError
from llamafleet.llama_client import LlamaClient
from llamafleet.server_key import server_key
from llamafleet.report import add_output_options, add_parallel_option, emit, parallel_count, selected_hosts


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check the running cluster over HTTP: health, build, vocabulary, slots, proxy auth, speculation speed "
        "against plain decoding, RPC exposure",
        description=f"Check the running services of an inventory (default: ${INVENTORY_ENV} or {DEFAULT_INVENTORY}). "
        "Exit 0: all good; 2: something differs; 1: something could not be checked.",
    )
    parser.add_argument("inventory", nargs="?", type=Path, help="inventory YAML file")
    add_output_options(parser)
    parser.add_argument(
        "--expect-build-info",
        metavar="STRING",
        help="exact /props build_info every llama-server must report (default: starts with the pinned tag)",
    )
    parser.add_argument("--timeout", type=seconds, default=10.0, metavar="SECONDS", help="per request (default 10)")
    add_parallel_option(parser, "check")
    parser.add_argument(
        "--proxy-token-env",
        metavar="VAR",
        help="environment variable holding the proxy's bearer token (default: the one the inventory names)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    path = args.inventory or default_inventory_path()
    inventory = load_inventory(path)
    hosts = selected_hosts(inventory, path, args.limit)
    parallel = parallel_count(args.parallel, len(hosts))
    token = None
    if args.proxy_token_env:
        token = os.environ.get(args.proxy_token_env)
        if not token:
            raise UserError(f"--proxy-token-env {args.proxy_token_env}: that variable is not set")
    try:
        key, key_problem = server_key(inventory), ""
    except UserError as err:  # the servers' checks say what it costs (their /props answers 401)
        key, key_problem = None, str(err)
    doctor = Doctor(inventory, http=LlamaClient(args.timeout), expect=expectation(inventory, args.expect_build_info),
                    proxy_token=token, server_key=key, key_problem=key_problem)
    return emit(doctor.run(hosts, parallel), args)

