"""No ``llamafleet`` command ends in a traceback, whatever it is given: every row of
``cli_bad_inputs.CALLS`` runs the real CLI as a subprocess and must exit 1 (bad input) or 2 (usage),
saying why in one line that starts with ``llamafleet``. A closed pipe (``validate | head``) ends quietly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cli_bad_inputs import CALLS, LOCAL, REPO, prepare


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-inputs")
    sockets = prepare(folder)
    yield folder
    for sock in sockets:
        sock.close()


def _run(argv, stdout=subprocess.PIPE):
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMAFLEET_TRACEBACK", "LLAMAFLEET_INVENTORY")}
    return subprocess.run([sys.executable, "-m", "llamafleet.cli", *argv], stdout=stdout, stderr=subprocess.PIPE,
                          cwd=REPO, env=env, timeout=120)


@pytest.mark.parametrize("call", CALLS, ids=[c.name for c in CALLS])
def test_bad_input_ends_in_one_clear_line(scratch, call):
    argv = [a.format(d=scratch, local=LOCAL) for a in call.argv]
    proc = _run(argv)
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    shown = out[-3000:]
    assert "Traceback" not in out, shown
    assert proc.returncode == call.code, (proc.returncode, shown)
    assert any(call.says in line for line in out.splitlines()), shown
    err = proc.stderr.decode(errors="replace")
    assert not err or err.splitlines()[0].startswith(("llamafleet", "usage: llamafleet")), shown


def test_subcommands_are_all_in_the_table():
    from llamafleet.cli import COMMANDS

    covered = {c.argv[0] for c in CALLS if c.argv}
    assert covered == set(COMMANDS), set(COMMANDS) ^ covered


def test_a_closed_pipe_ends_quietly():
    """``llamafleet validate | head``: the reader goes away before the output is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = _run(["validate", str(LOCAL)], stdout=write)
    finally:
        os.close(write)
    assert b"Traceback" not in proc.stderr and proc.stderr == b"", proc.stderr
    assert proc.returncode == 141


def test_a_file_name_that_is_not_utf8_still_prints(tmp_path):
    name = os.fsencode(tmp_path) + b"/caf\xe9.yaml"
    proc = subprocess.run([sys.executable, "-m", "llamafleet.cli", "validate", name], capture_output=True, cwd=REPO,
                          timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and b"Traceback" not in out and b"LF001" in out and b"caf\\udce9" in out, out
