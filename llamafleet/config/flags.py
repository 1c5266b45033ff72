"""The command-line flags of each pinned llama.cpp build, shipped as data and generated from that
build's own ``--help`` (the seed lost a run to ``--np``, a flag llama-server does not have).

Regenerate after pinning a new build (needs that build's binaries, e.g. from the rig cache):

    python -m llamafleet.config.flags --bin-dir ~/.cache/llamafleet/llama.cpp/b11434/build/bin --build b11434

which writes ``llamafleet/config/flags/<build>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

PROGRAMS = ("llama-server", "ggml-rpc-server")
FLAGS_DIR = Path(__file__).with_name("flags")

# A help line that declares flags: llama-server's start at column 0, ggml-rpc-server's at column 2.
# Section rulers ("----- common params -----") and indented description text do not match.
_SPEC_LINE = re.compile(r"^ {0,2}(-{1,2}[A-Za-z0-9][^ ]*.*)$")
_RULER = re.compile(r"^-{3,}")
_COLUMN_GAP = re.compile(r" {2,}")
_FIRST_PAD = re.compile(r"^(-[^ ,]+,) +")


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]  # every spelling of one option, e.g. ("-np", "--parallel")
    values: int  # how many arguments follow it

    def to_json(self) -> dict:
        return {"flags": list(self.flags), "values": self.values}


def parse_help(text: str) -> list[Option]:
    """Options from a llama.cpp ``--help`` text: ``-c,    --ctx-size N   description`` -> (-c, --ctx-size), 1."""
    options = []
    for line in text.splitlines():
        match = _SPEC_LINE.match(line)
        if not match or _RULER.match(line.strip()):
            continue
        # "-t,    --threads N" pads the first spelling to a column: close that gap before looking for
        # the (2+ spaces) gap in front of the description.
        spec = _COLUMN_GAP.split(_FIRST_PAD.sub(r"\1 ", match.group(1).strip()), maxsplit=1)[0]
        tokens = _spec_tokens(spec)
        flags = tuple(t for t in tokens if t.startswith("-"))
        hints = [t for t in tokens if not t.startswith("-")]
        # Negated spellings (--no-mmap) share the line with the positive flag but never take a value.
        positive = tuple(f for f in flags if not f.startswith("--no-"))
        negative = tuple(f for f in flags if f.startswith("--no-"))
        if positive:
            options.append(Option(positive, len(hints)))
        if negative:
            options.append(Option(negative, 0))
    return options


def _spec_tokens(spec: str) -> list[str]:
    """Split ``-ot, --override-tensor <tensor name pattern>=<buffer type>,...`` into flags and value
    hints, keeping spaces inside <...>, [...] and {...} within one hint."""
    tokens, current, depth = [], "", 0
    for char in spec:
        depth += char in "<[{"
        depth -= char in ">]}"
        if char == " " and depth <= 0:
            if current:
                tokens.append(current)
            current = ""
        else:
            current += char
    tokens.append(current)
    return [t.rstrip(",") for t in tokens if t.rstrip(",")]


@dataclass(frozen=True)
class FlagTable:
    """One program's options at one build, looked up by any spelling."""

    options: tuple[Option, ...]

    @property
    def by_flag(self) -> dict[str, Option]:
        return {flag: option for option in self.options for flag in option.flags}

    def lookup(self, flag: str) -> Option | None:
        return self.by_flag.get(flag)


@lru_cache(maxsize=None)
def shipped_builds() -> tuple[str, ...]:
    names = resources.files("llamafleet.config").joinpath("flags").iterdir()
    return tuple(sorted(p.name.removesuffix(".json") for p in names if p.name.endswith(".json")))


@lru_cache(maxsize=None)
def flag_table(build: str, program: str) -> FlagTable | None:
    """The shipped flag table, or None when this build has no flag data."""
    if build not in shipped_builds():
        return None
    data = json.loads(resources.files("llamafleet.config").joinpath("flags", f"{build}.json").read_text())
    options = data["programs"].get(program)
    if options is None:
        return None
    return FlagTable(tuple(Option(tuple(o["flags"]), o["values"]) for o in options))


# --- regeneration --------------------------------------------------------------------------------


def _run_help(binary: Path, arg: str) -> str:
    env = dict(os.environ, LD_LIBRARY_PATH=str(binary.parent))  # the binaries need the .so files beside them
    result = subprocess.run([str(binary), arg], capture_output=True, text=True, env=env, timeout=60)
    return result.stdout + result.stderr


def generate(bin_dir: Path, build: str) -> dict:
    programs = {}
    for program in PROGRAMS:
        binary = bin_dir / program
        if not binary.exists():
            raise SystemExit(f"flags: {binary} does not exist (build the '{program}' target first)")
        options = parse_help(_run_help(binary, "--help"))
        if not options:
            raise SystemExit(f"flags: '{binary} --help' listed no options; is it a llama.cpp binary?")
        programs[program] = [o.to_json() for o in options]
    version = _run_help(bin_dir / "llama-server", "--version").strip().splitlines()
    return {
        "build": build,
        "generated_by": f"python -m llamafleet.config.flags --bin-dir DIR --build {build}",
        "llama_server_version": [line for line in version if line.startswith(("version:", "built with"))],
        "programs": programs,
    }


def render(data: dict) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamafleet.config.flags", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin-dir", type=Path, required=True, help="folder holding llama-server and ggml-rpc-server")
    parser.add_argument("--build", required=True, help="build tag these binaries are, e.g. b11434 "
                        "(source builds without git metadata cannot report it themselves)")
    parser.add_argument("--out-dir", type=Path, default=FLAGS_DIR)
    args = parser.parse_args(argv)
    if not re.fullmatch(r"b[0-9]+", args.build):
        parser.error(f"--build must look like b11434, got {args.build!r}")
    out = args.out_dir / f"{args.build}.json"
    out.write_text(render(generate(args.bin_dir.expanduser(), args.build)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
