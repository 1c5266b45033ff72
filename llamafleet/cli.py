"""The ``llamafleet`` command. Each subcommand lives in ``llamafleet/commands/<name>.py`` and
exposes ``register(subparsers)``; the parser it adds carries ``func(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

from llamafleet.errors import UserError

COMMANDS = (
    "validate",
    "plan",
    "schema",
    "proxy",
    "bench",
    "doctor",
    "drift",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamafleet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"llamafleet.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"llamafleet {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
