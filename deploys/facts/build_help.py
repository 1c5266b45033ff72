"""What an installed llama.cpp build says about itself: its binaries' ``--help`` and ``--version``.

The installed binary is the final authority on its flags. The deploy reads this fact right after
installing a build (at execution time, see :mod:`llamafleet.deploys.operations.llama_cpp`), and at
plan time for a build folder already on the host whose capabilities are not known locally.
:class:`BuildHelp` reads a POSIX host, :class:`WindowsBuildHelp` a Windows one (PowerShell over
OpenSSH); both print the same sections, read by one parser.
"""

from __future__ import annotations

import ntpath
import shlex

from pyinfra.api import FactBase

from llamafleet.config.builds import RPC_BINARIES, SERVER_BINARY, BuildCaps, caps_from_help
from llamafleet.deploys.operations.common import ps_quote
from llamafleet.errors import UserError

MARK = "@@llamafleet "  # starts the line in front of each program's output
# What each fact runs, in order: every RPC worker name llama.cpp has used (a build ships one or none).
RUNS = ((SERVER_BINARY, "--help"), *((b, "--help") for b in RPC_BINARIES), (SERVER_BINARY, "--version"))


class BuildHelp(FactBase):
    """``{"server_help", "rpc_binary", "rpc_help", "version"}`` of the build in ``bin_dir`` (POSIX), or
    None when its llama-server is missing. ``rpc_binary`` is whichever RPC worker name the build ships."""

    @staticmethod
    def default():
        return None

    def command(self, bin_dir: str) -> str:
        d = shlex.quote(bin_dir)
        # The binaries load libllama/libggml from their own folder (as the rendered units set it).
        parts = [f"cd {d} && export LD_LIBRARY_PATH={d} DYLD_LIBRARY_PATH={d} || exit 0"]
        parts += [f"if [ -x ./{b} ]; then echo '{MARK}{b} {arg}'; ./{b} {arg} 2>&1 </dev/null; fi" for b, arg in RUNS]
        return "; ".join(parts) + "; true"

    def process(self, output):
        return parse_build_help(output)


class WindowsBuildHelp(FactBase):
    """:class:`BuildHelp` of a Windows host: ``& '<bin_dir>\\llama-server.exe' --help`` etc. in PowerShell
    (a Windows build loads its DLLs from the executable's own folder). The command holds no double
    quotes: Windows OpenSSH hands it to ``powershell -c``, whose parsing strips them."""

    shell_executable = None

    @staticmethod
    def default():
        return None

    def command(self, bin_dir: str) -> str:
        parts = []
        for b, arg in RUNS:
            exe = ps_quote(ntpath.join(bin_dir, f"{b}.exe"))
            # 2>&1 turns stderr lines (--version writes there) into error records; ToString gives their text.
            parts.append(f"if (Test-Path -LiteralPath {exe}) {{ '{MARK}{b} {arg}'; & {exe} {arg} 2>&1 | "
                         f"ForEach-Object ToString }}")
        return "; ".join(parts) + "; exit 0"

    def process(self, output):
        return parse_build_help(output)


def build_help_fact(windows: bool) -> type[FactBase]:
    return WindowsBuildHelp if windows else BuildHelp


def parse_build_help(lines: list[str]) -> dict | None:
    sections: dict[str, list[str]] = {}
    current = None
    for line in lines:
        line = line.rstrip("\r")  # a Windows console line end
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


def learned_caps(build: str, fact: dict, rpc_needed: bool = True) -> BuildCaps:
    """The build's capabilities from this fact (``caps_from_help`` raises a UserError for output
    that lists no options). A build folder without an RPC worker binary is enough for a host that
    runs no worker (``rpc_needed`` false): its RPC table is then empty, see :func:`complete`."""
    rpc_binary = fact["rpc_binary"]
    if rpc_binary is None and rpc_needed:
        raise UserError(f"llama.cpp {build}: the installed build has no RPC worker binary "
                        f"({' or '.join(RPC_BINARIES)}), and this host runs an rpc-worker service")
    return caps_from_help(build, fact["server_help"], fact["rpc_help"] if rpc_binary else None, fact["version"],
                          rpc_binary or RPC_BINARIES[0])


def complete(caps: BuildCaps) -> bool:
    """Whether both programs' tables were read: only then is what was learned saved for ``validate``
    (an empty RPC table would refuse every RPC worker flag of a build whose other archives ship one)."""
    return bool(caps.server.options and caps.rpc.options)


def runs_rpc_worker(services: list[dict]) -> bool:
    """``services`` as the deploy renders them (``{"service", "role", "argv"}``)."""
    return any(s["role"] == "rpc-worker" for s in services)
