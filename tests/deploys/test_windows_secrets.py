"""The cluster's server key on Windows hosts: every llama-server there gets ``--api-key-file``, the key
reaches ``<install_dir>\\secrets\\llama-server.key`` through ``lf_host.ps1``'s ``private`` and ``secret``
verbs with an access list of SYSTEM, Administrators and the services' account only, and the Windows
state's access list of the key decides what the deploy and drift do.

There is no Windows here and no PowerShell (none is installed, on purpose), so this is tested as
generated text: the commands the deploy yields for a Windows host, the WinSW XML, the state spec, and
the pure reading of the state's access list against outputs written as ``lf_host.ps1 state`` prints
them (``Get-Acl`` rules as SIDs; representative, not captured from a Windows host). The helper's
PowerShell itself is checked as text only.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from llamafleet.config.loader import load_inventory
from llamafleet.deploys.deploy import host_changes, planned_operations, unit_names, wait_spec
from llamafleet.deploys.facts.host_state import WindowsHostState, state_spec
from llamafleet.deploys.operations import secrets
from llamafleet.deploys.operations.common import ps_quote, sha256_text
from llamafleet.deploys.plan import plan_host
from llamafleet.deploys.render import render_unit
from llamafleet.drift import file_findings
from llamafleet.drift_reading import HostReading
from llamafleet.server_key import ensure_server_key, key_digest

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "inventory" / "examples" / "seed-cluster.yaml"
HELPER = ROOT / "deploys" / "scripts" / "lf_host.ps1"
KEY = "C:\\llamafleet\\secrets\\llama-server.key"
SYSTEM, ADMINS, USERS, EVERYONE = "S-1-5-18", "S-1-5-32-544", "S-1-5-32-545", "S-1-1-0"


def _rule(sid: str, rights: str = "FullControl", kind: str = "Allow") -> dict:
    return {"sid": sid, "type": kind, "rights": rights}


EXPECTED_ACL = {"protected": True, "rules": [_rule(SYSTEM), _rule(ADMINS)]}


@pytest.fixture
def seed(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMAFLEET_STATE", str(tmp_path))
    inventory = load_inventory(SEED)
    ensure_server_key(inventory)  # what the deploy does first: the cluster's key on this machine
    return inventory


def _decoded(command: str, verb: str) -> dict:
    match = re.fullmatch(re.escape(ps_quote("C:\\llamafleet\\lib\\lf_host.ps1")) + f" {verb} ([A-Za-z0-9+/=]+)",
                         command.removeprefix("& "))
    assert match, command
    return json.loads(base64.b64decode(match.group(1)))


def _commands(op) -> list:
    return list(op.operation.commands(**op.kwargs))


def _key_source(inventory) -> str:
    from llamafleet.server_key import key_source

    return str(key_source(inventory))


def _state(plan, key_entry: dict | None) -> dict:
    """A Windows host where everything but the key is in place (units written, services running)."""
    files = {path: {"sha256": sha256_text(content), "owner": "BUILTIN\\Administrators"}
             for path, (content, _) in plan.files.items()}
    if key_entry is not None:
        files[KEY] = key_entry
    return {"files": files, "services": {"winsw": {u: "Running" for u in unit_names(plan)}}}


def test_every_llama_server_on_a_windows_host_reads_the_key_file_through_its_winsw_xml(seed):
    """The XML's arguments name the key file (their exact parsing back is test_unit_escaping's); the
    host's one secret is the key, copied from this machine's file."""
    plan = plan_host(seed, "desktop")
    servers = [s for s in plan.services if s.role in ("target", "target-plain", "drafter")]
    assert servers and plan.windows
    for svc in servers:
        arguments = ET.fromstring(render_unit(plan, svc)).findtext("arguments")
        assert f"--api-key-file {KEY}" in arguments, arguments
    assert [(s.path, s.source) for s in plan.secrets] == [(KEY, _key_source(seed))]
    assert wait_spec(plan)["key_file"] == KEY  # readiness sends the key to /props and /completion


def test_the_key_is_uploaded_into_a_private_folder_and_put_in_place_by_the_helper(seed):
    """A host without the key: the upload folder is made private first, the key uploaded (the bytes of
    the local file, never a command line), then the helper's secret verb; the servers restart."""
    plan = plan_host(seed, "desktop")
    planned = planned_operations(plan, _state(plan, None))
    [op] = [o for o in planned if o.step == "secrets"]
    assert op.kwargs["windows"] is True
    private, upload, secret = _commands(op)
    sids = [SYSTEM, ADMINS]
    assert _decoded(private, "private") == {"path": "C:\\llamafleet\\uploads", "sids": sids}
    assert (str(upload.src), upload.dest) == (_key_source(seed), "C:/llamafleet/uploads/llama-server.key")
    assert _decoded(secret, "secret") == {"path": KEY, "upload": "C:\\llamafleet\\uploads\\llama-server.key",
                                          "sids": sids}
    key = Path(_key_source(seed)).read_text().strip()
    for command in (private, secret):  # Windows commands carry no double quote (OpenSSH's powershell -c)
        assert '"' not in command and key not in command
    changes = host_changes(plan, _state(plan, None))
    assert changes.secrets == [KEY]
    readers = {s.unit_name for s in plan.services if s.role != "rpc-worker"}
    assert readers and set(secrets.key_users(plan, changes.secrets)) == readers


def test_a_helper_path_with_quotes_is_one_powershell_literal(seed):
    """Every string of the generated commands goes through ps_quote: an install folder holding single
    and typographic quotes stays one literal."""
    folder = "C:\\Users\\O'Brien\u2019s \u2018lf\u2019"
    commands = list(secrets.windows_secret(folder + "\\lib\\lf_host.ps1",
                                           {"path": folder + "\\secrets\\llama-server.key", "user": "x",
                                            "source": "/k"}, folder))
    for command in (commands[0], commands[2]):
        assert command.startswith("& " + ps_quote(folder + "\\lib\\lf_host.ps1") + " ")
        assert "O''Brien\u2019\u2019s \u2018\u2018lf\u2019\u2019" in command
    assert _b64(commands[2])["path"] == folder + "\\secrets\\llama-server.key"


def _b64(command: str) -> dict:
    return json.loads(base64.b64decode(command.rsplit(" ", 1)[1]))


def test_a_host_secret_has_no_windows_writer():
    """A token generated on the host (only a proxy has one, and no proxy runs on Windows) is refused
    rather than left unwritten."""
    with pytest.raises(ValueError, match="no writer on Windows"):
        list(secrets.windows_secret("C:\\lf\\lib\\lf_host.ps1", {"path": "C:\\lf\\t", "user": "x", "source": None},
                                    "C:\\lf"))


# The key file as lf_host.ps1 state reports it (recorded-style: Get-Acl's rules, translated to SIDs).
ACL_CASES = [
    ({"protected": True, "rules": [_rule(SYSTEM), _rule(ADMINS)]}, False, None),
    ({"protected": True, "rules": [_rule(ADMINS), _rule(SYSTEM), _rule(SYSTEM, "FullControl", "Allow")]}, False, None),
    ({"protected": False, "rules": [_rule(SYSTEM), _rule(ADMINS)]}, False, "inherits its folder's access rules"),
    ({"protected": False, "rules": [_rule(SYSTEM), _rule(ADMINS), _rule(USERS, "ReadAndExecute, Synchronize")]}, False,
     "inherits its folder's access rules; also grants Users"),
    ({"protected": True, "rules": [_rule(SYSTEM), _rule(ADMINS), _rule(EVERYONE, "Read")]}, False, "also grants Everyone"),
    ({"protected": True, "rules": [_rule(SYSTEM), _rule(ADMINS), _rule("S-1-5-21-1-2-3-1001", "Read, Synchronize")]},
     False, "also grants S-1-5-21-1-2-3-1001"),
    ({"protected": True, "rules": [_rule(SYSTEM)]}, False, "no full control for Administrators"),
    ({"protected": True, "rules": [_rule(SYSTEM), _rule(ADMINS, "ReadAndExecute, Synchronize")]}, False,
     "no full control for Administrators"),
    ({"protected": True, "rules": []}, False, "no full control for SYSTEM, Administrators"),
    ({"protected": True, "rules": [_rule(SYSTEM), _rule(ADMINS)]}, True, "a reparse point"),
    (None, False, "no access list read"),
]


@pytest.mark.parametrize("acl,reparse,problem", ACL_CASES)
def test_the_key_files_access_list_is_read_against_the_expected_one(acl, reparse, problem):
    seen = {"sha256": "0" * 64, "owner": "BUILTIN\\Administrators", "acl": acl, "reparse_point": reparse}
    found = secrets.acl_problem(seen)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found
    assert secrets.differs({"path": KEY, "user": "harold", "source": None}, seen) is (problem is not None)


@pytest.mark.parametrize("acl,reparse,problem", ACL_CASES)
def test_the_deploy_rewrites_the_key_exactly_when_its_bytes_or_access_list_differ(seed, acl, reparse, problem):
    plan = plan_host(seed, "desktop")
    digest = key_digest(_key_source(seed))
    for sha256 in (digest, "f" * 64):
        entry = {"sha256": sha256, "owner": "BUILTIN\\Administrators", "acl": acl, "reparse_point": reparse}
        state = _state(plan, entry)
        wanted = problem is not None or sha256 != digest
        assert host_changes(plan, state).secrets == ([KEY] if wanted else [])
        ops = [o for o in planned_operations(plan, state) if o.step == "secrets"]
        assert [len(_commands(o)) for o in ops] == [3 if wanted else 0]
        [finding] = [f for f in file_findings(plan, HostReading(copy.deepcopy(state))) if f.check == f"secret {KEY}"]
        assert (finding.severity.value == "ok") is not wanted, finding
        if problem:
            assert problem in finding.actual
        assert "access only SYSTEM, Administrators (inheritance removed)" in finding.expected


def test_the_windows_state_asks_for_each_secrets_access_list(seed):
    windows, posix = plan_host(seed, "desktop"), plan_host(seed, "akiva")
    assert json.loads(state_spec(windows))["secrets"] == [KEY]
    assert KEY in json.loads(state_spec(windows))["files"]
    assert "secrets" not in json.loads(state_spec(posix)) and posix.secrets  # POSIX reads mode and owner


def test_the_windows_state_fact_parses_the_key_files_access_list():
    """lf_host.ps1 state's output (recorded-style) for a host whose key is in place: its sha256 and access
    list come back as printed, and read as the expected one."""
    entry = {"sha256": "9f" * 32, "owner": "BUILTIN\\Administrators", "reparse_point": False,
             "acl": {"protected": True, "rules": [{"sid": SYSTEM, "type": "Allow", "rights": "FullControl"},
                                                  {"sid": ADMINS, "type": "Allow", "rights": "FullControl"}]}}
    output = json.dumps({"schema": 1, "files": {KEY: entry}}, separators=(",", ":"))
    state = WindowsHostState().process([output])
    assert state["files"][KEY] == entry and secrets.acl_problem(state["files"][KEY]) is None


def _function(script: str, name: str) -> str:
    start = script.index(f"function {name}(")
    end = script.find("\nfunction ", start + 1)
    return script[start:end]


def test_the_helpers_secret_writer_refuses_links_and_removes_the_upload():
    """Text only (no PowerShell here): the secret verb checks for a reparse point in the key's and its
    folder's place before it writes, with GetAttributes (which does not follow a link); the upload is
    removed in a finally; the access list is a new one with inheritance removed, set before the bytes are
    written and again on the final path; the state reports each secret's access list as SIDs; readiness
    sends the key as a bearer token to /props and /completion."""
    script = HELPER.read_text()
    secret = _function(script, "Invoke-Secret")
    assert secret.index("New-PrivateFolder (Split-Path -Parent $path)") < secret.index("Assert-NotReparse $path") \
        < secret.index("WriteAllBytes($tmp, [byte[]]@())") < secret.index("Set-Private $tmp") \
        < secret.index("WriteAllBytes($tmp, $data)") < secret.index("Move-Item")
    assert re.search(r"finally \{[^}]*Remove-Item -Force -LiteralPath \$upload", secret)
    assert "Assert-NotReparse $Path" in _function(script, "New-PrivateFolder")
    assert "[IO.File]::GetAttributes($Path)" in _function(script, "Get-Attributes")
    private = _function(script, "Set-Private")
    assert "SetAccessRuleProtection($true, $false)" in private and "Set-Acl -LiteralPath $Path" in private
    assert "GetAccessRules($true, $true, [Security.Principal.SecurityIdentifier])" in _function(script, "Get-AclState")
    wait = _function(script, "Invoke-Wait")
    assert wait.count("-Headers $headers") == 2 and "Bearer $key" in wait
