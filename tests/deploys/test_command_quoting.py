"""Every value interpolated into a generated shell command is one word there: the commands run in a
real bash whose only commands are recording stubs (PATH leads nowhere), fed values that validation
would refuse (quotes, ``;``, newlines, ``$()``), so quoting is the only thing between a value and an
extra command. PowerShell is not installed here: its single-quote rule (a quote is doubled, and
PowerShell also takes U+2018/U+2019/U+201A/U+201B as single quotes) is checked by a reader of that
rule below."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest

from llamafleet.deploys.operations import drivers
from llamafleet.deploys.operations.common import helper_command, ps_quote

BASH = shutil.which("bash")
HOSTILE = ["550.120", "576.88'; touch /tmp/pwned; '", "6.3.1\ndeb http://evil/ x main", "$(touch /tmp/pwned)",
           "`id`", "a b", "\\'", '"; id; "', "*", "--help", "%s", ""]

STUBS = "\n".join(f"{name}() {{ printf '%s\\0' {name} \"$@\" >> \"$LOG\"; printf '\\n\\0' >> \"$LOG\"; }}"
                  for name in ("apt-get", "apt-mark", "dnf", "mkdir", "curl", "gpg", "python3", "shutdown"))


def _run(commands: list[str], tmp_path) -> list[list[str]]:
    """The argv of every command ``commands`` ran, in order (each through a recording stub)."""
    log = tmp_path / "calls"
    log.write_bytes(b"")
    script = f"{STUBS}\n" + "\n".join(commands)
    proc = subprocess.run([BASH, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=30,
                          env={"PATH": "/nonexistent", "LOG": str(log)})
    assert proc.returncode == 0 and not proc.stderr, (proc.stderr, commands)
    calls, current = [], []
    for word in log.read_bytes().decode().split("\0")[:-1]:
        if word == "\n":
            calls.append(current)
            current = []
        else:
            current.append(word)
    return calls


@pytest.mark.parametrize("version", HOSTILE, ids=repr)
def test_nvidia_apt_commands_keep_the_version_in_one_word(tmp_path, version):
    calls = _run(drivers.linux_install_commands("nvidia", version, {"ID": "ubuntu"}), tmp_path)
    package = f"nvidia-driver-{version.split('.')[0]}"
    assert calls == [["apt-get", "update", "-q"],
                     ["apt-get", "install", "-y", "-q", "--allow-downgrades", f"{package}={version}-*"],
                     ["apt-mark", "hold", package]]


@pytest.mark.parametrize("version", HOSTILE, ids=repr)
def test_nvidia_dnf_commands_keep_the_version_in_one_word(tmp_path, version):
    calls = _run(drivers.linux_install_commands("nvidia", version, {"ID": "fedora"}), tmp_path)
    assert calls[0] == ["dnf", "install", "-y", f"nvidia-driver-3:{version}*"]


@pytest.mark.parametrize("version", HOSTILE, ids=repr)
def test_driver_marker_writes_exactly_its_json(tmp_path, version):
    import json

    install_dir = str(tmp_path / "lf dir;$x")
    (tmp_path / "lf dir;$x" / "state").mkdir(parents=True)
    calls = _run(drivers.marker_commands(False, install_dir, "rocm", version), tmp_path)
    assert calls == [["mkdir", "-p", install_dir + "/state"]]
    written = (tmp_path / "lf dir;$x" / "state" / "driver-pending.json").read_text()
    assert json.loads(written) == {"kind": "rocm", "version": version}


def test_rocm_sources_are_written_as_one_printf_argument(tmp_path):
    """The version lands inside the apt source text; the text itself is one quoted word."""
    commands = drivers.linux_install_commands("rocm", "6.3.1", {"ID": "ubuntu", "VERSION_CODENAME": "noble"})
    printf = [c for c in commands if c.startswith("printf")]
    assert len(printf) == 2
    for command in printf:
        target = command.rsplit("> ", 1)[1]
        local = command.replace(target, str(tmp_path / "out"))
        subprocess.run([BASH, "-c", local], check=True, env={"PATH": "/usr/bin:/bin"})
        assert (tmp_path / "out").read_text().count("\n") in (2, 3)


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_helper_command_passes_its_json_as_one_word(tmp_path, value):
    import json

    spec = {"dest": value, "url": value}
    calls = _run([helper_command("/opt/lf x/lf_host.py", "fetch", spec)], tmp_path)
    assert calls[0][:3] == ["python3", "/opt/lf x/lf_host.py", "fetch"]
    assert json.loads(calls[0][3]) == spec and len(calls[0]) == 4


def _read_ps_single_quoted(text: str) -> str:
    """A PowerShell single-quoted literal, read by its rule: any single-quote character, doubled, is
    one of it; alone, it ends the literal."""
    quotes = "'\u2018\u2019\u201a\u201b"
    assert text[0] in quotes
    out, i = [], 1
    while True:
        if text[i] in quotes:
            if i + 1 < len(text) and text[i + 1] in quotes:
                out.append(text[i])
                i += 2
                continue
            assert i == len(text) - 1, f"literal ends early at {i}: {text!r}"
            return "".join(out)
        out.append(text[i])
        i += 1


def test_powershell_literal_round_trips_any_text():
    rng = random.Random(7)
    alphabet = list("ab '\"`$;(){}@#%\\\n") + ["\u2018", "\u2019", "\u201a", "\u201b", "é"]
    values = ["", "'", "''", "it's", "C:\\Program Files\\x", "a\u2019; Remove-Item C:\\ -Recurse; \u2018"]
    values += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(300)]
    for value in values:
        assert _read_ps_single_quoted(ps_quote(value)) == value
