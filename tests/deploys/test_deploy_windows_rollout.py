"""Windows hosts upgrade like POSIX hosts (install beside, check the installed binaries' flags, switch,
readiness, roll back on failure), and a host that runs no RPC worker needs no RPC worker binary.

There is no Windows here (and no PowerShell: Debian has no ``powershell`` package), so the Windows
half is tested as generated text: the operations the deploy plans for a Windows host and the
PowerShell commands they yield. The helper's verbs are checked against the POSIX helper's. The RPC
half runs for real: the BuildHelp fact read through the real pyinfra API from a copy of the rig's
b11434 build folder without its RPC worker binary.
"""

from __future__ import annotations

import ast
import base64
import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from llamafleet.config.builds import caps_for, caps_from_help
from llamafleet.config.models import Inventory
from llamafleet.deploys.plan import plan_host
from llamafleet.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "deploys" / "scripts"


def _windows_pair(build: str) -> Inventory:
    """A target on win-a drafting natively over win-b's RPC worker, both Windows services."""
    def host(address):
        return {"connection": {"type": "ssh", "address": address, "user": "lf"}, "os": "windows", "arch": "x86_64",
                "backend": "cpu", "install_dir": "C:\\llamafleet", "models_dir": "C:\\llamafleet\\models",
                "service_manager": "windows-service"}

    return Inventory.model_validate({
        "version": 1, "cluster": "winpair", "llama_cpp": {"build": build, "mirror": "http://10.0.0.9/m", "releases": [
            {"file": f"llama-{build}-bin-win-cpu-x64.zip", "os": "windows", "arch": "x86_64", "backend": "cpu",
             "sha256": "a" * 64}]},
        "hosts": {"win-a": host("10.0.0.2"), "win-b": host("10.0.0.3")},
        "models": {"smol": {"files": [{"name": "smol.gguf", "sha256": "b" * 64, "size": 98362432}], "quant": "Q4_1",
                            "tokenizer": "smollm2",
                            "architecture": {"family": "llama", "layers": 30, "n_embd": 576, "kv_dim": 192}}},
        "services": {
            "target": {"role": "target", "host": "win-a", "bind": "10.0.0.2", "port": 8080, "model": "smol",
                       "native_draft": {"model": "smol", "rpc_worker": "rpc", "n_max": 4}},
            "rpc": {"role": "rpc-worker", "host": "win-b", "bind": "10.0.0.3", "port": 50052},
        },
    })


def _ps_spec(command: str, verb: str) -> dict:
    """The JSON a generated ``& 'helper' VERB BASE64`` command carries."""
    match = re.fullmatch(r"& '([^']|'')+' " + verb + r" ([A-Za-z0-9+/=]+)", command)
    assert match, command
    return json.loads(base64.b64decode(match.group(2)))


@pytest.mark.parametrize("host", ["win-a", "win-b"])
def test_a_windows_upgrade_is_planned_like_a_posix_one(host):
    """Generated text: each host of a Windows RPC group moving b8942 -> b11434 installs beside, checks
    the installed binaries (WindowsBuildHelp), switches through lf_host.ps1, waits for readiness
    (/props build and a completion included), and on failure rolls back and reinstalls the WinSW services
    from the restored XML."""
    from llamafleet.deploys.deploy import planned_operations, unit_names

    old, new = plan_host(_windows_pair("b8942"), host), plan_host(_windows_pair("b11434"), host)
    assert new.windows
    state = {"install": {"current": "b8942-cpu", "builds": ["b8942-cpu"], "installed": {"b8942-cpu": ["c" * 64]},
                         "record": {"build": "b8942", "artifacts_sha256": ["c" * 64]}},
             "files": {old.unit_path(s): {"sha256": "0" * 64, "owner": "lf"} for s in old.services},
             "services": {"winsw": {u: "Running" for u in unit_names(old)}}, "models": {}, "disk_free": 1 << 40}
    planned = planned_operations(new, state)
    by_step = {op.step: op for op in planned}
    ops = {op.tag: op for op in planned if op.tag}
    client = host == "win-a"  # the target talks to win-b's worker over RPC
    tags = ["stop"] * client + ["switch", "units", "services", "wait", "rollback", "restart", "rolled back", "report"]
    assert [t for t in ops] == tags
    assert [ops[t].when for t in tags] == ["healthy"] * (4 + client) + ["failed"] * 4

    def commands(op):
        return [c if isinstance(c, str) else c.get_raw_value() for c in op.operation.commands(**op.kwargs)]

    [install] = commands(by_step["build"])
    assert _ps_spec(install, "install")["switch"] is False  # beside the running build
    check = by_step["check"]
    assert check.kwargs["windows"] is True and check.kwargs["bin_dir"] == "C:\\llamafleet\\builds\\b11434-cpu"
    [switch] = commands(ops["switch"])
    sent = _ps_spec(switch, "switch")
    assert sent["build_id"] == "b11434-cpu" and set(sent["files"]) >= {new.unit_path(s) for s in new.services}
    [rollback] = commands(ops["rollback"])
    assert _ps_spec(rollback, "rollback") == {"install_dir": "C:\\llamafleet"}
    forward, back = ops["wait"].kwargs["spec"], ops["rolled back"].kwargs["spec"]
    assert ops["wait"].kwargs["windows"] and ops["rolled back"].kwargs["windows"]
    assert set(back.get("props", {}).values()) <= {8942} and back["completion"] == []
    if client:
        assert set(forward["props"].values()) == {11434} and forward["completion"]
        [stop] = commands(ops["stop"])
        assert stop == "& 'C:\\llamafleet\\services\\llamafleet-target\\llamafleet-target.exe' stop"
    # A service the switch added (b11434 reads no per-request speculation switch: the target gets a plain
    # sidecar) is stopped and uninstalled before the rollback deletes its XML.
    added = sorted({s.unit_name for s in new.services} - set(unit_names(old)))
    assert added == (["llamafleet-target-plain"] if client else [])
    removal = [op for op in planned if op.operation.__name__ == "remove"]
    if added:
        [remove] = removal
        assert remove.when == "failed" and planned.index(remove) < planned.index(ops["rollback"])
        exe = f"'C:\\llamafleet\\services\\{added[0]}\\{added[0]}.exe'"
        assert commands(remove) == [f"& {exe} stop", f"& {exe} uninstall"]
    else:
        assert removal == []
    # WinSW reads its XML only at install: the restored XML is applied by reinstalling each service.
    restart = commands(ops["restart"])
    for unit in unit_names(old):
        exe = next(c for c in restart if unit in c).split(" ")[1]
        assert [c for c in restart if exe in c] == [f"& {exe} {verb}" for verb in ("stop", "uninstall", "install",
                                                                                  "start")]


def test_the_powershell_helper_has_every_verb_of_the_posix_helper():
    """Generated text: the verbs lf_host.ps1 dispatches are lf_host.py's JSON verbs plus its own writers
    of secret files and folders (private, secret: access lists where POSIX has token, secret and folder
    with positional arguments), and its usage line names them all."""
    tree = ast.parse((SCRIPTS / "lf_host.py").read_text())
    commands = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    and getattr(n.targets[0], "id", None) == "COMMANDS")
    posix = {k.value for k in commands.keys}
    script = (SCRIPTS / "lf_host.ps1").read_text()
    dispatch = script[script.rindex("switch ($Verb)"):]
    windows = set(re.findall(r"^\s+'([a-z]+)' \{", dispatch, re.M))
    assert posix == {"state", "fetch", "install", "switch", "rollback", "wait"}
    assert windows == posix | {"private", "secret"}
    in_order = sorted(windows, key=lambda verb: dispatch.index(f"'{verb}' {{"))
    assert f"usage: lf_host.ps1 {'|'.join(in_order)} SPEC_JSON" in dispatch


SERVER_HELP = "-np,   --parallel N                     number of server slots (default: -1, -1 = auto)"


def test_missing_rpc_help_is_accepted_only_as_missing():
    caps = caps_from_help("b11999", SERVER_HELP, None, "version: 11999 (x)", "ggml-rpc-server")
    assert caps.server.options and not caps.rpc.options
    with pytest.raises(UserError, match="'ggml-rpc-server --help' listed no options"):
        caps_from_help("b11999", SERVER_HELP, "", "version: 11999 (x)", "ggml-rpc-server")


@pytest.fixture()
def server_only_build(llama_build, tmp_path) -> Path:
    """A copy of the rig's b11434 build folder without its RPC worker binary (a release archive that
    ships none)."""
    folder = tmp_path / "builds" / "b11999-cpu"
    shutil.copytree(llama_build.bin_dir, folder, symlinks=True,
                    ignore=shutil.ignore_patterns("ggml-rpc-server", "rpc-server"))
    assert (folder / "llama-server").exists() and not (folder / "ggml-rpc-server").exists()
    return folder


def test_a_host_without_an_rpc_worker_needs_no_rpc_worker_binary(server_only_build, tmp_path, monkeypatch, caplog):
    """verify_flags as the deploy runs it, the BuildHelp fact read through the real pyinfra API (@local)
    from real binaries: the target-only host passes, a host with an rpc-worker service is refused by
    name, and a build learned without its RPC table is not saved for validate."""
    from pyinfra.api import Config, Inventory as PyinfraInventory, State
    from pyinfra.api.connect import connect_all

    from llamafleet.deploys.operations.llama_cpp import verify_flags

    monkeypatch.setenv("LLAMAFLEET_CACHE", str(tmp_path / "cache"))
    state = State(PyinfraInventory((["@local"], {})), Config())
    connect_all(state)
    local = state.inventory.get_host("@local")
    bin_dir = str(server_only_build)
    target = {"service": "target", "role": "target", "argv": [f"{bin_dir}/llama-server", "-m", "/m/x.gguf", "-np", "2"]}
    rpc = {"service": "rpc", "role": "rpc-worker", "argv": [f"{bin_dir}/ggml-rpc-server", "-p", "50052"]}
    with caplog.at_level(logging.ERROR, logger="pyinfra"):
        assert verify_flags(state, local, "alpha", bin_dir, "b11999", [target], "b11999") is True
        assert caplog.text == ""
        assert verify_flags(state, local, "beta", bin_dir, "b11999", [target, rpc], "b11999") is False
    assert ("hosts.beta: llama.cpp b11999: the installed build has no RPC worker binary (ggml-rpc-server or "
            "rpc-server), and this host runs an rpc-worker service") in caplog.text
    assert caps_for("b11999") is None
    # A flag the installed llama-server lacks is still refused on the target-only host.
    caplog.clear()
    bad = {**target, "argv": [*target["argv"], "--np", "2"]}
    with caplog.at_level(logging.ERROR, logger="pyinfra"):
        assert verify_flags(state, local, "alpha", bin_dir, "b11999", [bad], "b11999") is False
    assert "hosts.alpha: service target: llama-server b11999 has no flag --np" in caplog.text


def test_the_powershell_fetch_tries_its_sources_in_order_like_the_posix_one():
    """Text only (no PowerShell here): lf_host.ps1's fetch takes the ordered ``sources`` the deploy sends
    (default: ``url``), as install does for each archive; each source's bytes are hashed before the move
    into place; a source that fails is skipped with lf_host.py's words, a mismatch after a resume gets
    one more try from the first byte, and the final failure names every reason."""
    script = (SCRIPTS / "lf_host.ps1").read_text()
    posix = (SCRIPTS / "lf_host.py").read_text()
    fetch = script[script.index("function Invoke-Fetch("):script.index("function Get-VersionLine(")]
    assert "$sources = @(@($Spec.sources) | Where-Object { $_ })" in fetch and "$sources = @($Spec.url)" in fetch
    assert "sources = $artifact.sources" in script[script.index("function Invoke-Install("):]
    loop = fetch[fetch.index("for ($index = 0"):]
    assert loop.index("Receive-Resumable $url $partial") < loop.index("Get-Sha256 $partial") \
        < loop.index("Move-Item -Force -LiteralPath $partial") < loop.index("Remove-Item -LiteralPath $partial")
    assert "foreach ($fromZero in @($false, $true))" in loop and "if ($resumed -and -not $fromZero) { continue }" in loop
    for words in (": skipping ", ": it sent bytes with sha256 ", "sha256 mismatch for ", "no source gave ",
                  "the existing file was left in place", "nothing was installed"):
        assert words in fetch and words in posix, words
    receive = script[script.index("function Receive-Resumable("):script.index("function Invoke-Fetch(")]
    assert "[Net.WebExceptionStatus]::ConnectFailure) { break }" in receive and "Fail " not in receive
