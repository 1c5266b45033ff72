"""Bad inputs for every ``llamafleet`` subcommand, as a table: each row is a command line (built in a
scratch folder that ``prepare`` fills), the exit code it must end with, and a fragment of the one line
that must say why (on stderr, or on stdout for validate's findings). ``test_cli_bad_inputs`` runs them; ``docs/hardening.md`` lists them."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "inventory" / "examples" / "local.yaml"


@dataclass(frozen=True)
class BadCall:
    name: str
    argv: tuple[str, ...]  # {d} is the scratch folder, {local} the local example
    code: int
    says: str  # a fragment of what stderr says


def prepare(folder: Path) -> list[socket.socket]:
    """Files the table's command lines name. Returns the sockets to close afterwards."""
    (folder / "deep.yaml").write_text("cluster: " + "[" * 5000 + "]" * 5000 + "\n")
    (folder / "deep.json").write_text("[" * 5000 + "]" * 5000)
    (folder / "latin1.yaml").write_bytes("cluster: caf\u00e9\n".encode("latin-1"))
    (folder / "latin1.json").write_bytes(b'{"listen": "\xe9"}')
    (folder / "big.yaml").write_bytes(b"# " + b"x" * (5 * 1024 * 1024) + b"\n")
    (folder / "bomb.yaml").write_text("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefg", "bcdefgh")))
    (folder / "junk.gguf").write_bytes(os.urandom(4096))
    (folder / "empty.yaml").write_text("")
    (folder / "list.yaml").write_text("- 1\n- 2\n")
    (folder / "proxy-bad.yaml").write_text("listen: {host: 127.0.0.1, port: 0}\nnonsense: 1\n")
    (folder / "prompts.yaml").write_text("[unclosed\n")
    os.mkfifo(folder / "fifo")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(folder / "sock"))
    return [sock]


LONG = "x" * 5000

CALLS = [
    # validate: what it is and how large, before reading
    BadCall("validate: no such file", ("validate", "{d}/missing.yaml"), 1, "LF001"),
    BadCall("validate: a directory", ("validate", "{d}"), 1, "LF002"),
    BadCall("validate: /dev/zero", ("validate", "/dev/zero"), 1, "LF002"),
    BadCall("validate: a FIFO", ("validate", "{d}/fifo"), 1, "LF002"),
    BadCall("validate: a socket", ("validate", "{d}/sock"), 1, "LF002"),
    BadCall("validate: a file that cannot be read", ("validate", "/proc/self/mem"), 1, "LF009"),
    BadCall("validate: a path too long", ("validate", f"{{d}}/{LONG}.yaml"), 1, "LF009"),
    BadCall("validate: more than 4 MiB", ("validate", "{d}/big.yaml"), 1, "LF003"),
    BadCall("validate: empty", ("validate", "{d}/empty.yaml"), 1, "LF003"),
    BadCall("validate: not UTF-8", ("validate", "{d}/latin1.yaml"), 1, "LF004"),
    BadCall("validate: 5,000 levels deep", ("validate", "{d}/deep.yaml"), 1, "LF007"),
    BadCall("validate: an alias bomb", ("validate", "{d}/bomb.yaml"), 1, "LF007"),
    BadCall("validate: a list, not a mapping", ("validate", "{d}/list.yaml"), 1, "LF012"),
    BadCall("validate: random bytes", ("validate", "{d}/junk.gguf"), 1, "LF004"),
    BadCall("validate --json: /dev/zero", ("validate", "--json", "/dev/zero"), 1, "LF002"),
    BadCall("validate: an unknown option", ("validate", "--nope"), 2, "unrecognized arguments"),
    # plan and schema
    BadCall("plan: /dev/zero", ("plan", "/dev/zero"), 1, "LF002"),
    BadCall("plan: an unknown host", ("plan", "{local}", "--host", "nope"), 1, "nope"),
    BadCall("schema: --write and --check", ("schema", "--write", "--check"), 2, "not allowed with"),
    # proxy --config
    BadCall("proxy: no such config", ("proxy", "--config", "{d}/missing.yaml", "--check"), 1, "No such file"),
    BadCall("proxy: config is /dev/zero", ("proxy", "--config", "/dev/zero", "--check"), 1, "not a regular file"),
    BadCall("proxy: config is a FIFO", ("proxy", "--config", "{d}/fifo", "--check"), 1, "not a regular file"),
    BadCall("proxy: config is a directory", ("proxy", "--config", "{d}", "--check"), 1, "a directory"),
    BadCall("proxy: config over 1 MiB", ("proxy", "--config", "{d}/big.yaml", "--check"), 1, "the limit is"),
    BadCall("proxy: YAML config not UTF-8", ("proxy", "--config", "{d}/latin1.yaml", "--check"), 1, "not UTF-8"),
    BadCall("proxy: JSON config not UTF-8", ("proxy", "--config", "{d}/latin1.json", "--check"), 1, "not UTF-8"),
    BadCall("proxy: YAML 5,000 levels deep", ("proxy", "--config", "{d}/deep.yaml", "--check"), 1, "nested too deeply"),
    BadCall("proxy: JSON 5,000 levels deep", ("proxy", "--config", "{d}/deep.json", "--check"), 1, "nested too deeply"),
    BadCall("proxy: invalid fields", ("proxy", "--config", "{d}/proxy-bad.yaml", "--check"), 1, "invalid proxy config"),
    BadCall("proxy: no --config", ("proxy",), 2, "--config"),
    # doctor and drift: timeouts, inventories
    BadCall("doctor: --timeout nan", ("doctor", "--timeout", "nan", "{local}"), 2, "finite"),
    BadCall("doctor: --timeout inf", ("doctor", "--timeout", "inf", "{local}"), 2, "finite"),
    BadCall("doctor: --timeout -1", ("doctor", "--timeout", "-1", "{local}"), 2, "positive"),
    BadCall("doctor: --timeout 0", ("doctor", "--timeout", "0", "{local}"), 2, "positive"),
    BadCall("doctor: --timeout abc", ("doctor", "--timeout", "abc", "{local}"), 2, "not a number"),
    BadCall("doctor: inventory is a socket", ("doctor", "{d}/sock"), 1, "LF002"),
    BadCall("drift: --timeout nan", ("drift", "--timeout", "nan", "{local}"), 2, "finite"),
    BadCall("drift: --data without =", ("drift", "--data", "novalue", "{local}"), 1, "KEY=VALUE"),
    BadCall("drift: inventory is /dev/zero", ("drift", "/dev/zero"), 1, "LF002"),
    # bench, demo, model
    BadCall("bench: --repeats 0", ("bench", "--repeats", "0"), 2, "--repeats"),
    BadCall("bench: inventory is /dev/zero", ("bench", "/dev/zero"), 1, "LF002"),
    BadCall("demo: an unknown pair", ("demo", "--pair", "nope"), 2, "invalid choice"),
    BadCall("model add: not a GGUF file", ("model", "add", "{d}/junk.gguf", "--inventory", "{d}/missing.yaml"), 1,
            "junk.gguf"),
    BadCall("model add: /dev/zero", ("model", "add", "/dev/zero", "--inventory", "{d}/missing.yaml"), 1, "zero"),
    BadCall("model verify: inventory is a FIFO", ("model", "verify", "--inventory", "{d}/fifo"), 1, "LF002"),
    BadCall("no subcommand", (), 2, "required"),
]
