"""The ``llamafleet`` command. Each subcommand lives in ``llamafleet/commands/<name>.py`` and
exposes ``register(subparsers)``; the parser it adds carries ``func(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import os
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
    "model",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamafleet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"llamafleet.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # File names come from the command line as bytes; one that is not UTF-8 must still print.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # a real text stream (tests may pass in-memory ones)
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader stopped early (``| head``). Python would fail again flushing stdout at exit:
        # point it at /dev/null, and end as a process killed by SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    except UserError as err:
        print(f"llamafleet {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except (RecursionError, MemoryError) as err:
        print(f"llamafleet {args.command}: input too large or too deeply nested ({type(err).__name__})",
              file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - the last resort: one line, never a traceback
        if os.environ.get("LLAMAFLEET_TRACEBACK"):
            raise
        print(f"llamafleet {args.command}: internal error: {type(err).__name__}: {err} "
              "(please report it; LLAMAFLEET_TRACEBACK=1 shows where)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
