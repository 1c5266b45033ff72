"""What an installed llama.cpp build says about itself: its binaries' ``--help`` and ``--version``.

The installed binary is the final authority on its flags. The deploy reads this fact right after
installing a build (at execution time, see :mod:`llamafleet.deploys.operations.llama_cpp`), and at
plan time for a build folder already on the host whose capabilities are not known locally.
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

from llamafleet.config.builds import RPC_BINARIES, SERVER_BINARY, BuildCaps, caps_from_help

MARK = "@@llamafleet "  # starts the line in front of each program's output


class BuildHelp(FactBase):
    """``{"server_help", "rpc_binary", "rpc_help", "version"}`` of the build in ``bin_dir`` (POSIX), or
    None when its llama-server is missing. ``rpc_binary`` is whichever RPC worker name the build ships."""

    @staticmethod
    def default():
        return None

    def command(self, bin_dir: str) -> str:
        d = shlex.quote(bin_dir)
        runs = [(SERVER_BINARY, "--help"), *((b, "--help") for b in RPC_BINARIES), (SERVER_BINARY, "--version")]
        # The binaries load libllama/libggml from their own folder (as the rendered units set it).
        parts = [f"cd {d} && export LD_LIBRARY_PATH={d} DYLD_LIBRARY_PATH={d} || exit 0"]
        parts += [f"if [ -x ./{b} ]; then echo '{MARK}{b} {arg}'; ./{b} {arg} 2>&1 </dev/null; fi" for b, arg in runs]
        return "; ".join(parts) + "; true"

    def process(self, output):
        return parse_build_help(output)


def parse_build_help(lines: list[str]) -> dict | None:
    sections: dict[str, list[str]] = {}
    current = None
    for line in lines:
        if line.startswith(MARK):
            current = line[len(MARK):].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    server_help = sections.get(f"{SERVER_BINARY} --help")
    if server_help is None:
        return None
    rpc_binary = next((b for b in RPC_BINARIES if f"{b} --help" in sections), None)
    return {"server_help": "\n".join(server_help), "rpc_binary": rpc_binary,
            "rpc_help": "\n".join(sections.get(f"{rpc_binary} --help", [])) if rpc_binary else "",
            "version": "\n".join(sections.get(f"{SERVER_BINARY} --version", []))}


def learned_caps(build: str, fact: dict) -> BuildCaps:
    """The build's capabilities from this fact (``caps_from_help`` raises a UserError for output
    that lists no options)."""
    rpc_binary = fact["rpc_binary"] or RPC_BINARIES[0]
    return caps_from_help(build, fact["server_help"], fact["rpc_help"], fact["version"], rpc_binary)
