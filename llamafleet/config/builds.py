"""What each llama.cpp build can do, read from the build itself.

A build's capabilities are its programs' options (parsed from their own ``--help``), the name of its
RPC worker binary, the ``--spec-type`` values it accepts, whether its server reads per-request
``speculative.n_max``, and its version strings. From the option tables, each *deploy purpose* (the
slot count, the draft length, the RPC worker's address, ...) is resolved to this build's spelling by
trying known spellings in order, so a build nobody has seen before gets a mapping as well.

Shipped data (``llamafleet/config/builds/<build>.json``) is generated from real binaries and sources:

    python -m llamafleet.config.builds --bin-dir ~/.cache/llamafleet/llama.cpp/b11434/build/bin \\
        --build b11434 --source ~/.cache/llamafleet/llama.cpp/b11434/src

Builds learned at deploy time (from the installed binaries' ``--help``) are kept under
``$LLAMAFLEET_CACHE/builds/<build>.json`` (:func:`save_learned`) and read back by :func:`caps_for`, so
``llamafleet validate`` knows them offline afterwards.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

from llamafleet.errors import UserError

PROGRAMS = ("server", "rpc")
SERVER_BINARY = "llama-server"
# RPC worker binary names llama.cpp has used (b11434: ggml-rpc-server; b8942: rpc-server).
RPC_BINARIES = ("ggml-rpc-server", "rpc-server")
BUILDS_DIR = Path(__file__).with_name("builds")
_BUILD_TAG = re.compile(r"^b[0-9]+$")

# --- --help parsing ------------------------------------------------------------------------------

# A help line that declares flags: llama-server's start at column 0, the RPC worker's at column 2.
# Section rulers ("----- common params -----") and indented description text do not match.
_SPEC_LINE = re.compile(r"^ {0,2}(-{1,2}[A-Za-z0-9][^ ]*.*)$")
_RULER = re.compile(r"^-{3,}")
_COLUMN_GAP = re.compile(r" {2,}")
_FIRST_PAD = re.compile(r"^(-[^ ,]+,) +")
_CHOICE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# llama.cpp keeps some retired options in --help only to refuse them ("the argument has been removed").
_REMOVED = re.compile(r"\bhas been removed\b")


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]  # every spelling of one option, e.g. ("-np", "--parallel")
    values: int  # how many arguments follow it
    choices: tuple[str, ...] = ()  # the values it accepts, when --help lists a fixed set
    removed: bool = False  # listed only to say that it was removed: llama.cpp refuses it

    def to_json(self) -> dict:
        data: dict = {"flags": list(self.flags), "values": self.values}
        if self.choices:
            data["choices"] = list(self.choices)
        if self.removed:
            data["removed"] = True
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Option":
        return cls(tuple(data["flags"]), data["values"], tuple(data.get("choices", ())), data.get("removed", False))


def parse_help(text: str) -> list[Option]:
    """Options from a llama.cpp ``--help`` text: ``-c,    --ctx-size N   description`` -> (-c, --ctx-size), 1.

    A single value hint that lists a fixed set (``[on|off|auto]``, ``{none,linear,yarn}``,
    ``none,draft-simple,ngram-mod``) becomes the option's choices; a description saying the option
    "has been removed" marks it removed."""
    entries: list[tuple[str, list[str]]] = []  # (spec, description lines)
    for line in text.splitlines():
        match = _SPEC_LINE.match(line)
        if match and not _RULER.match(line.strip()):
            # "-t,    --threads N" pads the first spelling to a column: close that gap before looking
            # for the (2+ spaces) gap in front of the description.
            parts = _COLUMN_GAP.split(_FIRST_PAD.sub(r"\1 ", match.group(1).strip()), maxsplit=1)
            entries.append((parts[0], parts[1:]))
        elif entries and line.startswith("   "):
            entries[-1][1].append(line.strip())
        elif entries and line.strip():
            entries.append(("", []))  # anything else ends the description of the entry before it
    options = []
    for spec, description in entries:
        if not spec:
            continue
        tokens = _spec_tokens(spec)
        flags = tuple(t for t in tokens if t.startswith("-"))
        hints = [t for t in tokens if not t.startswith("-")]
        removed = bool(_REMOVED.search(" ".join(description)))
        # Negated spellings (--no-mmap) share the line with the positive flag but never take a value.
        positive = tuple(f for f in flags if not f.startswith("--no-"))
        negative = tuple(f for f in flags if f.startswith("--no-"))
        if positive:
            choices = _choices(hints[0]) if len(hints) == 1 else ()
            options.append(Option(positive, len(hints), choices, removed))
        if negative:
            options.append(Option(negative, 0, (), removed))
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


def _choices(hint: str) -> tuple[str, ...]:
    """``[a|b]``, ``{a,b}``, ``a|b`` or ``a,b`` of lower-case words -> (a, b); any other hint -> ()."""
    inner = hint[1:-1] if hint[:1] + hint[-1:] in ("[]", "{}") else hint
    for sep in ("|", ","):
        items = inner.split(sep)
        if len(items) >= 2 and all(_CHOICE.match(item) for item in items):
            return tuple(items)
    return ()


@dataclass(frozen=True)
class FlagTable:
    """One program's options at one build, looked up by any spelling."""

    options: tuple[Option, ...]

    @cached_property
    def by_flag(self) -> dict[str, Option]:
        return {flag: option for option in self.options for flag in option.flags}

    def lookup(self, flag: str) -> Option | None:
        return self.by_flag.get(flag)

    def usable(self, flag: str) -> Option | None:
        """The option behind ``flag``, unless the build only lists it as removed."""
        option = self.by_flag.get(flag)
        return option if option is not None and not option.removed else None


# --- deploy purposes -----------------------------------------------------------------------------

# purpose -> (program, spellings in order of preference). The first spelling the build has (and does
# not list as removed) is the build's spelling for that purpose. Newer and older llama.cpp names both
# appear, so that a build learned from its --help alone maps as well as the shipped ones.
PURPOSE_SPELLINGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "model": ("server", ("-m", "--model")),
    "host": ("server", ("--host",)),
    "port": ("server", ("--port",)),
    "ctx_size": ("server", ("-c", "--ctx-size")),
    "slots": ("server", ("-np", "--parallel")),
    "gpu_layers": ("server", ("-ngl", "--gpu-layers", "--n-gpu-layers")),
    "devices": ("server", ("-dev", "--device")),
    "rpc": ("server", ("--rpc",)),
    "draft_model": ("server", ("-md", "--model-draft", "--spec-draft-model")),
    "draft_device": ("server", ("-devd", "--device-draft", "--spec-draft-device")),
    "draft_gpu_layers": ("server", ("-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft", "--spec-draft-ngl")),
    "draft_max": ("server", ("--spec-draft-n-max", "--draft-max", "--draft-n-max", "--draft")),
    "draft_min": ("server", ("--spec-draft-n-min", "--draft-min", "--draft-n-min")),
    "spec_type": ("server", ("--spec-type",)),
    "no_repack": ("server", ("-nr", "--no-repack")),
    "no_webui": ("server", ("--no-webui",)),
    "api_key_file": ("server", ("--api-key-file",)),
    "rpc_host": ("rpc", ("-H", "--host")),
    "rpc_port": ("rpc", ("-p", "--port")),
    "rpc_device": ("rpc", ("-d", "--device")),
    "rpc_cache": ("rpc", ("-c", "--cache")),
}
DEPLOY_PURPOSES = tuple(PURPOSE_SPELLINGS)
# The --spec-type value that selects speculation with a draft model, in builds that need one named
# (b11434 does; in b8942 a draft model alone turns it on and --spec-type lists no draft-* type).
DRAFT_SPEC_TYPE = "draft-simple"


def resolve_purposes(server: FlagTable, rpc: FlagTable) -> dict[str, str]:
    tables = {"server": server, "rpc": rpc}
    resolved = {}
    for purpose, (program, spellings) in PURPOSE_SPELLINGS.items():
        found = next((s for s in spellings if tables[program].usable(s)), None)
        if found is not None:
            resolved[purpose] = found
    return resolved


_VERSION_NUMBERED = re.compile(r"\(build (\d+), commit ([^)\s]+)\)")  # version: 0.6.0-dev (build 11434, commit unknown)
_VERSION_PLAIN = re.compile(r"^version: (\d+) \(([^)\s]+)\)")  # version: 8942 (f535774)


def props_build_info(version: str) -> str | None:
    """/props ``build_info`` is ``b<number>-<commit>``, the two values ``--version`` prints."""
    match = _VERSION_NUMBERED.search(version) or _VERSION_PLAIN.search(version)
    return f"b{match.group(1)}-{match.group(2)}" if match else None


@dataclass(frozen=True)
class BuildCaps:
    build: str
    server_binary: str
    rpc_binary: str
    server: FlagTable
    rpc: FlagTable
    deploy_flags: Mapping[str, str]
    spec_types: tuple[str, ...]
    per_request_speculative: bool | None
    version: str
    props_build_info: str | None
    origin: str  # "shipped" | "learned"
    # Whether a speculating server returns every token it counts at n_predict. b8942 does not: it
    # counts the last round's accepted draft tokens in predicted_n (and usage) but drops one or two of
    # them from the text when the limit falls inside a round (measured by the generator's
    # --probe-model). None: not probed (a build learned from --help).
    speculation_keeps_length: bool | None = None

    def flag(self, purpose: str) -> str | None:
        if purpose not in PURPOSE_SPELLINGS:
            raise KeyError(f"unknown deploy purpose {purpose!r}")
        return self.deploy_flags.get(purpose)

    def require(self, purpose: str, why: str) -> str:
        spelling = self.flag(purpose)
        if spelling is None:
            program, spellings = PURPOSE_SPELLINGS[purpose]
            raise UserError(f"llama.cpp {self.build}: {self.binary(program)} has no option for {purpose.replace('_', ' ')} "
                            f"(none of {', '.join(spellings)}), which {why} needs")
        return spelling

    @property
    def draft_needs_spec_type(self) -> bool:
        """Whether a draft model alone is not enough: the build selects draft speculation by --spec-type."""
        return DRAFT_SPEC_TYPE in self.spec_types

    def draft_args(self, n_max: int, n_min: int) -> list[str]:
        args = []
        if self.draft_needs_spec_type:
            args += [self.require("spec_type", "native speculation"), DRAFT_SPEC_TYPE]
        args += [self.require("draft_max", "native speculation"), str(n_max)]
        args += [self.require("draft_min", "native speculation"), str(n_min)]
        return args

    def table(self, program: str) -> FlagTable:
        if program == "server":
            return self.server
        if program == "rpc":
            return self.rpc
        raise KeyError(f"unknown program {program!r} (server or rpc)")

    def binary(self, program: str) -> str:
        self.table(program)
        return self.server_binary if program == "server" else self.rpc_binary


def _make_caps(build: str, server_binary: str, rpc_binary: str, server: FlagTable, rpc: FlagTable, version: str,
               per_request_speculative: bool | None, origin: str) -> BuildCaps:
    spec = server.usable("--spec-type")
    return BuildCaps(build=build, server_binary=server_binary, rpc_binary=rpc_binary, server=server, rpc=rpc,
                     deploy_flags=resolve_purposes(server, rpc), spec_types=spec.choices if spec else (),
                     per_request_speculative=per_request_speculative, version=version,
                     props_build_info=props_build_info(version), origin=origin)


def _first_version_line(version_text: str) -> str:
    """The ``version: ...`` line of ``llama-server --version`` (backend loaders may print before it)."""
    lines = [line.strip() for line in version_text.splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("version:")), lines[0] if lines else "")


def caps_from_help(build: str, server_help: str, rpc_help: str | None, version_text: str, rpc_binary: str) -> BuildCaps:
    """Capabilities of a build known only from its binaries' output (what a deploy sees on a host).
    ``rpc_help`` None: no RPC worker help was read (the build folder has no RPC worker binary, which a
    host that runs no worker does not need); the RPC table is then empty."""
    _check_tag(build)
    server, rpc = parse_help(server_help), parse_help(rpc_help) if rpc_help is not None else []
    if not server:
        raise UserError(f"llama.cpp {build}: '{SERVER_BINARY} --help' listed no options")
    if rpc_help is not None and not rpc:
        raise UserError(f"llama.cpp {build}: '{rpc_binary} --help' listed no options")
    return _make_caps(build, SERVER_BINARY, rpc_binary, FlagTable(tuple(server)), FlagTable(tuple(rpc)),
                      _first_version_line(version_text), None, "learned")


def _check_tag(build: str) -> None:
    if not _BUILD_TAG.match(build):
        raise UserError(f"a llama.cpp build is named like b11434, got {build!r}")


# --- the data files ------------------------------------------------------------------------------


def to_json(caps: BuildCaps, generated_by: str) -> dict:
    return {
        "build": caps.build,
        "generated_by": generated_by,
        "version": caps.version,
        "server_binary": caps.server_binary,
        "rpc_binary": caps.rpc_binary,
        "per_request_speculative": caps.per_request_speculative,
        "speculation_keeps_length": caps.speculation_keeps_length,
        "programs": {"server": [o.to_json() for o in caps.server.options],
                     "rpc": [o.to_json() for o in caps.rpc.options]},
    }


def render(data: dict) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def _from_json(data: dict, origin: str) -> BuildCaps:
    tables = {p: FlagTable(tuple(Option.from_json(o) for o in data["programs"][p])) for p in PROGRAMS}
    caps = _make_caps(data["build"], data["server_binary"], data["rpc_binary"], tables["server"], tables["rpc"],
                      data["version"], data["per_request_speculative"], origin)
    return replace(caps, speculation_keeps_length=data.get("speculation_keeps_length"))


@lru_cache(maxsize=None)
def shipped_builds() -> tuple[str, ...]:
    names = resources.files("llamafleet.config").joinpath("builds").iterdir()
    return tuple(sorted((p.name.removesuffix(".json") for p in names if p.name.endswith(".json")), key=_build_number))


@lru_cache(maxsize=None)
def _shipped(build: str) -> BuildCaps:
    text = resources.files("llamafleet.config").joinpath("builds", f"{build}.json").read_text()
    return _from_json(json.loads(text), "shipped")


def learned_dir() -> Path:
    from llamafleet.rig.cache import cache_root

    return cache_root() / "builds"


def _learned_builds() -> list[str]:
    folder = learned_dir()
    if not folder.is_dir():
        return []
    return [p.stem for p in folder.glob("b*.json") if _BUILD_TAG.match(p.stem)]


def _learned(build: str) -> BuildCaps | None:
    path = learned_dir() / f"{build}.json"
    try:
        data = json.loads(path.read_text())
        caps = _from_json(data, "learned")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a readable llama.cpp capability file ({err}); delete it to learn "
                        f"{build} again at the next deploy") from None
    if caps.build != build:
        raise UserError(f"{path}: describes {caps.build}, not {build}; delete it to learn {build} again")
    return caps


def caps_for(build: str) -> BuildCaps | None:
    """The shipped capabilities of ``build``, else the learned ones, else None."""
    if build in shipped_builds():
        return _shipped(build)
    if not _BUILD_TAG.match(build):
        return None
    return _learned(build)


def known_builds() -> tuple[str, ...]:
    return tuple(sorted(set(shipped_builds()) | set(_learned_builds()), key=_build_number))


def _build_number(build: str) -> int:
    return int(build[1:]) if _BUILD_TAG.match(build) else -1


def builds_with_flag(program: str, flag: str) -> list[str]:
    """Known builds whose ``program`` ("server" or "rpc") accepts ``flag``."""
    return [b for b in known_builds() if (caps := caps_for(b)) is not None and caps.table(program).usable(flag)]


def nearest_flags(caps: BuildCaps, program: str, flag: str) -> list[str]:
    """Every spelling of the usable option closest to ``flag`` (``--np`` -> ``-np``, ``--parallel``),
    or [] when nothing is close."""
    options = [o for o in caps.table(program).options if not o.removed]
    names = {f.lstrip("-"): o for o in options for f in o.flags}
    bare = flag.partition("=")[0].lstrip("-").replace("_", "-")
    if bare in names:
        return list(names[bare].flags)
    close = difflib.get_close_matches(bare, list(names), n=1, cutoff=0.75)
    return list(names[close[0]].flags) if close else []


def save_learned(caps: BuildCaps) -> Path:
    """Keep learned capabilities under ``$LLAMAFLEET_CACHE/builds/<build>.json`` (written atomically)."""
    _check_tag(caps.build)
    folder = learned_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{caps.build}.json"
    text = render(to_json(caps, f"learned from the {caps.server_binary} and {caps.rpc_binary} of {caps.build}"))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{caps.build}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --- generation from a real build ----------------------------------------------------------------


def _run(binary: Path, arg: str) -> str:
    env = dict(os.environ, LD_LIBRARY_PATH=str(binary.parent))  # the binaries need the .so files beside them
    result = subprocess.run([str(binary), arg], capture_output=True, text=True, env=env, timeout=60)
    return result.stdout + result.stderr


def _cmake_executable(cmake_file: Path) -> str | None:
    """The executable a tool's CMakeLists.txt defines: ``set(TARGET x)`` ... ``add_executable(${TARGET} ...)``."""
    target = None
    for line in cmake_file.read_text().splitlines():
        if m := re.match(r"\s*set\(\s*TARGET\s+([\w.-]+)\s*\)", line):
            target = m.group(1)
        elif m := re.match(r"\s*add_executable\(\s*([\w.${}-]+)", line):
            return target if m.group(1) == "${TARGET}" else m.group(1)
    return None


def _live_code(text: str) -> str:
    """C/C++ source without its ``#if 0`` ... ``#endif`` blocks (nested conditionals respected)."""
    out, dead_depth, depth = [], 0, 0
    for line in text.splitlines():
        directive = line.strip()
        if directive.startswith("#if"):
            depth += 1
            if dead_depth == 0 and re.match(r"#if\s+0\b", directive):
                dead_depth = depth
                continue
        elif directive.startswith("#endif"):
            depth -= 1
            if dead_depth and depth < dead_depth:
                dead_depth = 0
                continue
        elif directive.startswith(("#else", "#elif")) and dead_depth == depth:
            dead_depth = 0  # the other branch of an "#if 0" is live
            continue
        if not dead_depth:
            out.append(line)
    return "\n".join(out)


def reads_per_request_speculation(source: Path) -> bool:
    """Whether the server parses a per-request ``"speculative.n_max"`` (outside ``#if 0`` blocks):
    b8942 does (tools/server/server-task.cpp); b11434 compiles it out (tools/server/server-schema.cpp)."""
    server_dir = source / "tools" / "server"
    if not server_dir.is_dir():
        raise UserError(f"{source}: no tools/server folder; is it a llama.cpp source tree?")
    read = re.compile(r'(json_value|field_\w+)\s*\(\s*(data\s*,\s*)?"speculative\.n_max"')
    return any(read.search(_live_code(p.read_text(errors="replace"))) for p in sorted(server_dir.glob("*.cpp")))


PROBE_PROMPTS = ("Water boils at", "The capital of France is", "def add(a, b):", "Once upon a time")
PROBE_TOKENS = 16


def probe_speculation_length(bin_dir: Path, caps: BuildCaps, model: Path) -> bool:
    """Run the real server with ``model`` as its own draft and check, on a few prompts, that a
    speculating request returns as many tokens as it counts (``predicted_n``) at its ``n_predict``."""
    from llamafleet.llama_client import LlamaClient
    from llamafleet.rig.servers import running, start_llama_server

    args = ["-c", "2048", "-np", "1", caps.require("draft_model", "the probe"), str(model), *caps.draft_args(8, 0)]
    binaries = SimpleNamespace(server=bin_dir / caps.server_binary)  # what start_llama_server reads of a build
    with running(start_llama_server(binaries, model, log_dir=Path(tempfile.mkdtemp(prefix="llamafleet-probe-")),
                                    args=args, name=f"{caps.build}-probe")) as server:
        for prompt in PROBE_PROMPTS:
            answer = LlamaClient(300.0).json(f"{server.url}/completion", data={
                "prompt": prompt, "n_predict": PROBE_TOKENS, "temperature": 0, "return_tokens": True,
                "cache_prompt": False})
            if not answer["timings"].get("draft_n"):
                raise UserError(f"llama.cpp {caps.build}: the probe server did not draft; cannot tell")
            if len(answer["tokens"]) != int(answer["timings"]["predicted_n"]):
                return False
    return True


def generate(bin_dir: Path, build: str, source: Path | None = None, probe_model: Path | None = None) -> BuildCaps:
    """Capabilities from real binaries (and their source tree, and a probe run, when given)."""
    rpc_binary = None
    if source is not None:
        rpc_cmake = source / "tools" / "rpc" / "CMakeLists.txt"
        if not rpc_cmake.is_file():
            raise UserError(f"{source}: no tools/rpc/CMakeLists.txt; is it a llama.cpp source tree?")
        rpc_binary = _cmake_executable(rpc_cmake)
    else:
        rpc_binary = next((name for name in RPC_BINARIES if (bin_dir / name).exists()), None)
    if rpc_binary is None:
        raise UserError(f"no RPC worker binary ({' or '.join(RPC_BINARIES)}) in {bin_dir}")
    for name in (SERVER_BINARY, rpc_binary):
        if not (bin_dir / name).is_file():
            raise UserError(f"{bin_dir / name} does not exist (build the '{name}' target first)")
    caps = caps_from_help(build, _run(bin_dir / SERVER_BINARY, "--help"), _run(bin_dir / rpc_binary, "--help"),
                          _run(bin_dir / SERVER_BINARY, "--version"), rpc_binary)
    if probe_model is not None:
        caps = replace(caps, speculation_keeps_length=probe_speculation_length(bin_dir, caps, probe_model))
    if source is None:
        return replace(caps, origin="shipped")
    server_binary = _cmake_executable(source / "tools" / "server" / "CMakeLists.txt")
    if server_binary != SERVER_BINARY:
        raise UserError(f"{source}: tools/server builds {server_binary!r}, not {SERVER_BINARY!r}")
    return replace(caps, per_request_speculative=reads_per_request_speculation(source), origin="shipped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamafleet.config.builds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin-dir", type=Path, required=True, help="folder holding llama-server and the RPC worker")
    parser.add_argument("--build", required=True, help="build tag these binaries are, e.g. b11434 "
                        "(source builds without git metadata cannot always report it themselves)")
    parser.add_argument("--source", type=Path, help="the build's llama.cpp source tree (RPC target name, "
                        "per-request speculation); without it per_request_speculative is unknown (null)")
    parser.add_argument("--probe-model", type=Path, help="a small GGUF to run the server with (as its own "
                        "draft) to measure speculation_keeps_length; without it that stays unknown (null)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out-dir", type=Path, default=BUILDS_DIR, help="where shipped data is written")
    where.add_argument("--learn", action="store_true", help="keep it in the learned store "
                       "($LLAMAFLEET_CACHE/builds) instead, for a build this checkout does not ship")
    args = parser.parse_args(argv)
    if not _BUILD_TAG.match(args.build):
        parser.error(f"--build must look like b11434, got {args.build!r}")
    try:
        caps = generate(args.bin_dir.expanduser(), args.build, args.source.expanduser() if args.source else None,
                        args.probe_model.expanduser() if args.probe_model else None)
    except UserError as err:
        print(f"builds: {err}", file=sys.stderr)
        return 1
    if args.learn:
        print(f"wrote {save_learned(replace(caps, origin='learned'))}")
        return 0
    generated_by = f"python -m llamafleet.config.builds --bin-dir DIR --build {args.build}" + \
        (" --source DIR" if args.source else "") + (" --probe-model GGUF" if args.probe_model else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{args.build}.json"
    out.write_text(render(to_json(caps, generated_by)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
