"""Every rendered field, fed arbitrary strings, parses back to exactly what was meant, by each format's
real parser:

- systemd: ``systemd-analyze verify`` with debug logging dumps each loaded unit (``Command Line:`` is
  ExecStart's argv as systemd split it, then ``Environment:``, ``User:``, ``WorkingDirectory:``);
- supervisord: supervisor's own ``UnhosedConfigParser``, ``saneget`` (its %-expansion),
  ``dict_of_key_value_pairs`` (environment=) and ``shlex.split`` (how ``process.py`` splits command=),
  run by the interpreter of the installed ``supervisord``;
- WinSW: an XML parser, then the Microsoft C runtime's argv rules (no Windows here: the rules are
  implemented below from Microsoft's "Parsing C++ command-line arguments");
- launchd: ``plistlib``.

A value that a format cannot carry unchanged must be refused with a UserError naming the service, and
only the classes each format documents are refused (``_refusable``). The strings come from a seeded
generator over a wide alphabet (quotes, backslashes, ``%``, ``$``, ``;``, ``#``, spaces, non-ASCII),
with legitimate values that broke the old units first.
"""

from __future__ import annotations

import json
import os
import plistlib
import random
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from llamafleet.config import load_inventory
from llamafleet.config.models import ServiceManager
from llamafleet.deploys.plan import plan_host
from llamafleet.deploys.render import render_supervisord_conf, render_unit
from llamafleet.errors import UserError

REPO = Path(__file__).resolve().parents[2]
SEED = 11434
CASES = 150

ALPHABET = (list("abcXYZ019 -_./=,:@+") + list("'\"\\%$;#`{}()[]*?~!&|<>^") +
            ["é", "ü", "中", "🦙", "\u00a0", "ß", "%%", "$$", "${X}", "$HOME", "%h", " ;", " #", "\\\\", "\\'"])
LEGIT = ["-ot", r"blk\.([0-9]+)\.ffn_.*_exps\.=CPU", "a\\", "", "%h", "$HOME", "${X}", ";", "#x", " ;x", 'a "b" c',
         "it's", "50%", "--alias", "x y", "\\", "'", '"']


def _text(rng: random.Random, most: int = 10) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, most)))


def _segment(rng: random.Random, wide: bool) -> str:
    """A path component: from the whole alphabet, or (most paths) without the quotes and backslashes
    that systemd refuses in a program path."""
    while True:
        seg = _text(rng, 6).replace("/", "")
        if not wide:
            seg = re.sub("['\"\\\\]", "", seg)
        if seg not in ("", ".", ".."):
            return seg


def _cases():
    rng = random.Random(SEED)
    inventory = load_inventory(REPO / "inventory" / "examples" / "local.yaml")
    plan = plan_host(inventory, "local")
    base = next(s for s in plan.services if s.role == "target")
    for index in range(CASES):
        wide = index % 4 == 3
        install_dir = "/" + "/".join(_segment(rng, wide) for _ in range(rng.randint(1, 3))) if index else "/opt/llamafleet"
        args = LEGIT if index == 0 else [_text(rng) for _ in range(rng.randint(0, 6))]
        argv = (install_dir + "/builds/" + _segment(rng, wide) + "/llama-server", *args)
        env = tuple((f"K{i}_{rng.choice('ABC_')}", LEGIT[i % len(LEGIT)] if index == 0 else _text(rng))
                    for i in range(rng.randint(0, 3) if index else len(LEGIT)))
        user = rng.choice(["llama", "svc_1", "a.b-c", "x@y", "m$"])
        host = plan.host.model_copy(update={"install_dir": install_dir, "service_user": user})
        yield (replace(plan, host=host), replace(base, unit_name=f"lfcase{index}", argv=argv, env=env, user=user))


CASE_LIST = list(_cases())


def _comment(text: str) -> bool:
    return re.search(r"\s[;#]", text) is not None


def _refusable(manager: ServiceManager, plan, svc) -> bool:
    """The documented values each format cannot carry unchanged."""
    install_dir = plan.host.install_dir
    if manager is ServiceManager.systemd:
        return (install_dir != install_dir.strip() or install_dir.endswith("\\")
                or any(c in svc.argv[0] for c in "'\"\\"))  # string_is_safe() on the program path
    if manager is ServiceManager.supervisord:
        values = [v for _, v in svc.env]
        bad_env = any(('"' in v and "'" in v) or (v[:1] + v[-1:]).strip("'\"") != v[:1] + v[-1:] or _comment(v)
                      for v in values)
        return bad_env or install_dir != install_dir.strip() or _comment(install_dir)
    if manager is ServiceManager.windows_service:
        return any(re.search(r"%[A-Za-z_][A-Za-z0-9_()]*%", v) for v in [*svc.argv, subprocess.list2cmdline(list(svc.argv[1:])),
                                                      install_dir, *(v for _, v in svc.env)])
    return False


def _render_all(manager: ServiceManager):
    rendered, refused = [], 0
    for plan, svc in CASE_LIST:
        try:
            rendered.append((plan, svc, render_unit(plan, svc, manager)))
        except UserError as err:
            assert _refusable(manager, plan, svc), f"refused a value it can carry: {err}"
            assert f"service {svc.service}" in str(err)
            refused += 1
            continue
        assert not _refusable(manager, plan, svc), "accepted a value the format cannot carry"
    assert len(rendered) >= CASES * 0.4, f"{refused} of {CASES} refused"
    return rendered


# --- systemd ---------------------------------------------------------------------------------------


def _systemd_words(line: bytes) -> list[str]:
    """Split systemd's ``Command Line:`` (shell_maybe_quote/cescape): plain words, or "..." with \\X,
    \\t, \\n and octal escapes."""
    words, i = [], 0
    while i < len(line):
        if line[i:i + 1] == b'"':
            word, i = bytearray(), i + 1
            while line[i:i + 1] != b'"':
                if line[i:i + 1] == b"\\":
                    nxt = line[i + 1:i + 2]
                    if nxt.isdigit():
                        word.append(int(line[i + 1:i + 4], 8))
                        i += 4
                        continue
                    word += {b"t": b"\t", b"n": b"\n"}.get(nxt, nxt)
                    i += 2
                else:
                    word += line[i:i + 1]
                    i += 1
            i += 1
        else:
            end = line.find(b" ", i)
            end = len(line) if end < 0 else end
            word, i = line[i:end], end
        words.append(bytes(word).decode())
        i += 1  # the space between words
    return words


def _systemd_dump(folder: Path, units: dict[str, str]) -> dict[str, dict]:
    for name, text in units.items():
        (folder / f"{name}.service").write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", *sorted(f"{n}.service" for n in units)], cwd=folder,
                          capture_output=True, env={**os.environ, "SYSTEMD_LOG_LEVEL": "debug"}, timeout=120)
    out = proc.stdout + proc.stderr
    assert b"Ignoring unknown escape" not in out and b"Invalid" not in out, out.decode(errors="replace")[-3000:]
    parsed = {}
    for block in out.split(b"-> Unit ")[1:]:
        name = block.split(b".service:", 1)[0].decode()
        if name not in units:
            continue
        info = {"env": [], "argv": None, "user": None, "dir": None}
        for raw in block.split(b"\n"):
            line = raw.strip(b"\t")
            if line.startswith(b"Environment: "):
                info["env"].append(line[len(b"Environment: "):].decode())
            elif line.startswith(b"User: "):
                info["user"] = line[len(b"User: "):].decode()
            elif line.startswith(b"WorkingDirectory: "):
                info["dir"] = line[len(b"WorkingDirectory: "):].decode()
            elif line.startswith(b"Command Line: ") and info["argv"] is None:
                # the dump shows argv before ExecStart's $-substitution, where $$ is a literal $
                info["argv"] = [w.replace("$$", "$") for w in _systemd_words(line[len(b"Command Line: "):])]
        parsed[name] = info
    return parsed


@pytest.mark.skipif(shutil.which("systemd-analyze") is None and not os.environ.get("CI"), reason="no systemd-analyze")
def test_systemd_units_parse_back_exactly(tmp_path):
    rendered = _render_all(ServiceManager.systemd)
    dump = _systemd_dump(tmp_path, {svc.unit_name: text for _, svc, text in rendered})
    assert len(dump) == len(rendered)
    for plan, svc, text in rendered:
        got = dump[svc.unit_name]
        assert got["argv"] == list(svc.argv), text
        assert got["env"] == [f"{k}={v}" for k, v in svc.env], text
        assert (got["user"], got["dir"]) == (svc.user, plan.host.install_dir), text


def test_systemd_control_characters_stay_inside_their_word(tmp_path):
    """Defensive: the inventory refuses control characters, and a unit still cannot gain a line."""
    plan, svc = CASE_LIST[0]
    svc = replace(svc, argv=(svc.argv[0], "a\nExecStartPre=/bin/touch /tmp/pwned", "tab\there", "esc\x1b[0m"), env=())
    text = render_unit(plan, svc, ServiceManager.systemd)
    assert "\nExecStartPre" not in text
    assert _systemd_dump(tmp_path, {svc.unit_name: text})[svc.unit_name]["argv"] == list(svc.argv)


# --- supervisord -------------------------------------------------------------------------------------

SUPERVISOR_PARSE = r"""
import json, shlex, sys
from supervisor.options import UnhosedConfigParser
from supervisor.datatypes import dict_of_key_value_pairs
out = {}
for path in json.load(sys.stdin):
    parser = UnhosedConfigParser()
    try:
        parser.read(path)
        got = {}
        for section in parser.sections():
            get = lambda option: parser.saneget(section, option, None)
            values = {option: get(option) for option in parser.options(section)}
            if section.startswith("program:"):
                values["argv"] = shlex.split(values["command"])
                values["env"] = dict_of_key_value_pairs(values.get("environment") or "")
            got[section] = values
        out[path] = got
    except Exception as err:
        out[path] = {"error": repr(err)}
json.dump(out, sys.stdout)
"""


def _supervisor_python() -> str:
    supervisord = shutil.which("supervisord")
    assert supervisord, "supervisord is not installed (ci/system-deps.sh)"
    return Path(supervisord).read_text().splitlines()[0].removeprefix("#!").split()[0]


def _supervisor_parse(paths: list[Path]) -> dict:
    proc = subprocess.run([_supervisor_python(), "-c", SUPERVISOR_PARSE], input=json.dumps(list(map(str, paths))),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_supervisord_programs_parse_back_exactly(tmp_path):
    rendered = _render_all(ServiceManager.supervisord)
    paths = []
    for _, svc, text in rendered:
        paths.append(tmp_path / f"{svc.unit_name}.conf")
        paths[-1].write_text(text)
    parsed = _supervisor_parse(paths)
    for (plan, svc, text), path in zip(rendered, paths):
        got = parsed[str(path)]
        assert "error" not in got, (got, text)
        program = got[f"program:{svc.unit_name}"]
        assert program["argv"] == list(svc.argv), text
        assert program["env"] == dict(svc.env), text
        assert program["directory"] == plan.host.install_dir, text
        assert program.get("user") in (None, svc.user), text


def test_supervisord_conf_parses_back(tmp_path):
    for plan, _ in CASE_LIST[:40]:
        try:
            text = render_supervisord_conf(plan)
        except UserError:
            assert _refusable(ServiceManager.supervisord, plan, CASE_LIST[0][1])
            continue
        path = tmp_path / "supervisord.conf"
        path.write_text(text)
        got = _supervisor_parse([path])[str(path)]
        assert got["supervisord"]["directory"] == plan.host.install_dir, text
        assert got["supervisord"]["pidfile"] == plan.supervisor_dir + "/supervisord.pid", text


# --- WinSW and launchd ---------------------------------------------------------------------------------


def _msvc_argv(line: str) -> list[str]:
    """The Microsoft C runtime's command-line rules (argv[1:]): 2n backslashes + quote -> n backslashes
    and a quote toggle; 2n+1 + quote -> n and a literal quote; "" inside quotes -> a literal quote."""
    args, i, word, quoted, started = [], 0, "", False, False
    while i < len(line):
        c = line[i]
        if c == "\\":
            n = len(line[i:]) - len(line[i:].lstrip("\\"))
            if i + n < len(line) and line[i + n] == '"':
                word += "\\" * (n // 2)
                if n % 2:
                    word += '"'
                    i += n + 1
                else:
                    i += n
                started = True
                continue
            word += "\\" * n
            i += n
            started = True
            continue
        if c == '"':
            if quoted and line[i + 1:i + 2] == '"':
                word += '"'
                i += 2
                continue
            quoted, started = not quoted, True
        elif c in " \t" and not quoted:
            if started:
                args.append(word)
            word, started = "", False
        else:
            word += c
            started = True
        i += 1
    if started:
        args.append(word)
    return args


def test_winsw_xml_parses_back_exactly():
    for plan, svc, text in _render_all(ServiceManager.windows_service):
        root = ET.fromstring(text)
        assert root.findtext("executable") == svc.argv[0]
        assert _msvc_argv(root.findtext("arguments")) == list(svc.argv[1:]), text
        assert [(e.get("name"), e.get("value")) for e in root.findall("env")] == list(svc.env), text
        assert root.findtext("workingdirectory") == plan.host.install_dir


def test_launchd_plist_parses_back_exactly():
    for plan, svc, text in _render_all(ServiceManager.launchd):
        data = plistlib.loads(text.encode())
        assert data["ProgramArguments"] == list(svc.argv), text
        assert data.get("EnvironmentVariables", {}) == dict(svc.env), text
        assert (data["UserName"], data["WorkingDirectory"]) == (svc.user, plan.host.install_dir)


def test_xml_keeps_control_characters_it_can_and_refuses_the_rest():
    plan, svc = CASE_LIST[0]
    kept = replace(svc, argv=(svc.argv[0], "a\nb", "tab\t", "cr\r"), env=(("K", "x\ny"),))
    data = plistlib.loads(render_unit(plan, kept, ServiceManager.launchd).encode())
    assert data["ProgramArguments"] == list(kept.argv) and data["EnvironmentVariables"] == {"K": "x\ny"}
    with pytest.raises(UserError, match="XML cannot hold"):
        render_unit(plan, replace(svc, argv=(svc.argv[0], "nul\x00")), ServiceManager.launchd)


def test_legitimate_values_are_never_refused():
    """The values that broke the old units (a %, shlex's 'a\\', an -ot regex) go through every format."""
    plan, svc = CASE_LIST[0]
    safe_env = tuple((k, v) for k, v in svc.env if v and v.strip("'\"") == v and not _comment(v)
                     and not ('"' in v and "'" in v))
    svc = replace(svc, env=safe_env)
    for manager in ServiceManager:
        text = render_unit(plan, svc, manager)
        assert text


# --- validate and the render agree -----------------------------------------------------------------------


@pytest.mark.parametrize("example,host_lines", [
    ("local.yaml", ["    auth: {token_file: /opt/llamafleet/proxy.token}\n"]),
    ("seed-cluster.yaml", ["    extra_args: [\"--jinja\"]\n", "    devices: [CUDA1]\n", "    gpu_layers: 20\n"]),
], ids=["supervisord", "systemd-winsw-launchd"])
def test_what_validates_renders_and_what_cannot_render_does_not_validate(tmp_path, example, host_lines):
    """Random env values and --alias values on every service manager: an inventory that validates renders
    every file of every host; one that the render would refuse ends in LF195 at validate."""
    from llamafleet.config import check_inventory
    from llamafleet.deploys.render import rendered_files

    rng = random.Random(SEED)
    base = (REPO / "inventory" / "examples" / example).read_text()
    outcomes = {"rendered": 0, "LF195": 0}
    for _ in range(25):
        text = base
        for line in host_lines:
            value = json.dumps(_text(rng, 8), ensure_ascii=False)
            text = text.replace(line, line + f"    env: {{LF_X: {value}}}\n", 1)
        path = tmp_path / "cluster.yaml"
        path.write_text(text)
        inventory, findings = check_inventory(path)
        errors = [f for f in findings if f.severity.value == "error"]
        if inventory is None:
            assert {f.code for f in errors} == {"LF195"}, [str(f) for f in errors]
            outcomes["LF195"] += 1
            continue
        for host in inventory.hosts:
            assert rendered_files(plan_host(inventory, host))
        outcomes["rendered"] += 1
    assert outcomes["rendered"] >= 5, outcomes
