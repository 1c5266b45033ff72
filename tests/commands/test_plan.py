"""``llamafleet plan``: every file, command line and install a deploy would make, offline.

Checked against the deploy itself: the files printed are the ones the deploy's own operations would
upload to an empty host (``planned_operations`` with no gathered state), byte for byte; each printed
command line splits back into the service's argv. Bad input (an invalid inventory, an unknown
--host, a reader that stops early) ends in one clear message, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from llamafleet.cli import main
from llamafleet.config import load_inventory
from llamafleet.deploys.deploy import planned_operations
from llamafleet.deploys.operations import files as file_ops
from llamafleet.deploys.plan import plan_host

ROOT = Path(__file__).resolve().parents[2]
INVENTORIES = sorted([ROOT / "inventory" / "cluster.yaml", *(ROOT / "inventory" / "examples").glob("*.yaml")])


def plan(capsys, *args) -> tuple[int, str, str]:
    code = main(["plan", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def empty_host_state(inventory, host: str) -> dict:
    """A host with nothing of ours on it. A Mac's deploy first checks the OS version, so its state
    carries ``sw_vers`` output (recorded format) with the inventory's macOS version."""
    h = inventory.hosts[host]
    if h.os.value != "macos":
        return {}
    return {"drivers": {"sw_vers": f"ProductName:\t\tmacOS\nProductVersion:\t\t{h.macos_version or '15.3'}\n"
                                   "BuildVersion:\t\t24D60\n"}}


def deploy_uploads(inventory, host: str) -> dict[str, tuple[str, str]]:
    """path -> (content, mode) of every text file the deploy uploads to an empty host."""
    uploads = {}
    for op in planned_operations(plan_host(inventory, host), empty_host_state(inventory, host)):
        if op.operation is file_ops.text_files:
            uploads.update({p: tuple(v) for p, v in op.kwargs["files"].items()})
    return uploads


@pytest.mark.parametrize("path", INVENTORIES, ids=[p.name for p in INVENTORIES])
def test_json_plan_is_exactly_what_the_deploy_would_write(capsys, path):
    code, out, err = plan(capsys, path, "--json")
    assert code == 0, err
    data = json.loads(out)
    inventory = load_inventory(path)
    assert list(data["hosts"]) == list(inventory.hosts)
    for host, h in data["hosts"].items():
        uploads = deploy_uploads(inventory, host)
        windows = h["os"] == "windows"
        assert [f["path"] for f in h["files"]] == [h["files"][0]["path"], *sorted(p for p in uploads if p != h["files"][0]["path"])]
        assert {f["path"] for f in h["files"]} == set(uploads)
        for f in h["files"]:
            content, mode = uploads[f["path"]]
            assert f["mode"] == (None if windows else mode)
            assert f["bytes"] == len(content.encode()) and f["sha256"] == hashlib.sha256(content.encode()).hexdigest()
            assert f["content"] in (content, None)  # None: the host helper, llamafleet's own script
        assert sum(f["content"] is None for f in h["files"]) == 1
        host_plan = plan_host(inventory, host)
        assert {n: s["argv"] for n, s in h["services"].items()} == {s.service: list(s.argv) for s in host_plan.services}
        assert [m["path"] for m in h["models"]] == [m.path for m in host_plan.models]


@pytest.mark.parametrize("path", INVENTORIES, ids=[p.name for p in INVENTORIES])
def test_text_plan_shows_every_file_line_and_command(capsys, path):
    code, out, _ = plan(capsys, path)
    assert code == 0
    _, data, _ = plan(capsys, path, "--json")
    data = json.loads(data)
    assert "Offline: no host was contacted." in out.splitlines()[0]
    for host, h in data["hosts"].items():
        assert f"host {host} (" in out
        for f in h["files"]:
            assert f"    {f['path']} (" in out
            if f["content"] is not None:  # every line, in order, behind "| "
                shown = "\n".join(f"      | {line}" if line else "      |" for line in f["content"].rstrip("\n").split("\n"))
                assert shown in out
        for svc in h["services"].values():
            assert f"      command: {svc['command']}\n" in out
            if h["os"] != "windows":  # quoted for the shell: it splits back into the exact argv
                assert shlex.split(svc["command"]) == svc["argv"]
            else:
                assert subprocess.list2cmdline(svc["argv"]) == svc["command"]
        for target, p in h["plain_paths"].items():
            assert f"  plain path of {target}: {p['summary']}" in out


def test_json_shape_is_stable(capsys):
    _, out, _ = plan(capsys, ROOT / "inventory" / "examples" / "seed-cluster.yaml", "--json")
    data = json.loads(out)
    assert list(data) == ["format", "file", "cluster", "llama_cpp", "warnings", "hosts"]
    assert data["format"] == 1
    assert set(data["llama_cpp"]) == {"build", "capabilities", "rendered_with", "note"}
    for h in data["hosts"].values():
        assert list(h) == ["os", "arch", "backend", "service_manager", "install_dir", "build", "models", "services",
                           "secrets", "folders", "plain_paths", "firewall", "files"]
        assert set(h["firewall"]) - {"file", "boot_unit", "windows_rules"} == {
            "managed", "kind", "why", "removes_leftovers", "rules"}
        for r in h["firewall"]["rules"]:
            assert set(r) == {"service", "role", "port", "used_by", "from"} and isinstance(r["port"], int)
        assert set(h["build"]) == {"build", "build_id", "method", "dir", "binaries", "cmake_options", "artifacts"}
        for s in h["services"].values():
            assert set(s) == {"role", "unit", "unit_path", "user", "bind", "port", "argv", "command", "env"}
            assert all(isinstance(a, str) for a in s["argv"]) and isinstance(s["port"], int)
        for f in h["files"]:
            assert set(f) - {"note"} == {"path", "mode", "bytes", "sha256", "content"}
        for p in h["plain_paths"].values():
            assert set(p) == {"kind", "sidecar", "port", "request_fields", "reason", "proxies", "summary"}
            assert p["kind"] in ("request", "sidecar", "none")
        for s in h["secrets"]:
            assert set(s) == {"path", "mode", "owner", "made_by_deploy", "copied_from"}
        for f in h["folders"]:  # an rpc-worker's cache: 0700 for the service user (Windows: inherited rules)
            assert f == ({"path": f"{h['install_dir']}\\rpc-cache", "mode": None, "owner": None} if h["os"] == "windows"
                         else {"path": f"{h['install_dir']}/rpc-cache", "mode": "0700", "owner": "harold"})
    assert [len(h["folders"]) for h in data["hosts"].values()] == [0, 1, 0, 0]  # the seed's one worker: desktop


def test_text_plan_says_which_port_accepts_whom(capsys):
    """Per host: the firewall, managed or not and why, each port with the addresses it accepts, and the
    nftables file the deploy applies (docs/hardening.md, "Network exposure")."""
    _, out, _ = plan(capsys, ROOT / "inventory" / "examples" / "seed-cluster.yaml")
    assert ("  firewall: managed (nftables, table inet llamafleet; default for linux hosts reached over SSH):\n"
            "    port 8080 target (target): only from 127.0.0.1, 192.168.86.29, 192.168.86.40, ::1 (used from mac-mini)"
            ) in out
    assert "    port 50052 desktop-rpc (rpc-worker): only from 127.0.0.1, 192.168.86.29, 192.168.86.36, ::1 (used from akiva)" in out
    assert "      | \t\ttcp dport 8080 drop" in out
    assert "    /etc/systemd/system/llamafleet-firewall.service, enabled: loads it at boot" in out
    assert "      | ExecStart=/usr/sbin/nft -f /opt/llamafleet/etc/firewall.nft" in out
    assert out.count("  firewall: not managed (macOS: llamafleet manages no firewall there") == 2


SEED = ROOT / "inventory" / "examples" / "seed-cluster.yaml"
SEED_HOSTS = list(load_inventory(SEED).hosts)


@pytest.mark.parametrize("hosts", [[h] for h in SEED_HOSTS] + [SEED_HOSTS[:2], SEED_HOSTS[::-1]],
                         ids=lambda hosts: "+".join(hosts))
def test_host_filter(capsys, hosts):
    args = [a for h in hosts for a in ("--host", h)]
    _, out, _ = plan(capsys, SEED, "--json", *args)
    assert list(json.loads(out)["hosts"]) == [h for h in SEED_HOSTS if h in hosts]  # inventory order
    _, text, _ = plan(capsys, SEED, *args)
    assert [h for h in SEED_HOSTS if f"\nhost {h} (" in text] == [h for h in SEED_HOSTS if h in hosts]


@pytest.mark.parametrize("args", [["--host", "nope"], ["--host", "akiva", "--host", "Akiva"], ["--json", "--host", ""]],
                         ids=["unknown", "wrong-case", "empty"])
def test_unknown_host_is_one_clear_error(capsys, args):
    code, out, err = plan(capsys, SEED, *args)
    assert code == 1 and out == ""
    assert err.startswith("llamafleet plan: --host ") and "not a host of this inventory" in err
    assert f"(hosts: {', '.join(SEED_HOSTS)})" in err and "Traceback" not in err


BAD = [
    ("syntax", "version: 1\ncluster: [unclosed\n"),
    ("schema", None),  # the four-machine example with a port out of range
    ("missing-file", ""),
]


@pytest.mark.parametrize("name, text", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_invalid_inventory_ends_like_validate(capsys, tmp_path, name, text, as_json):
    path = tmp_path / "bad.yaml"
    if text is None:
        path.write_text(SEED.read_text().replace("port: 8080", "port: 80800", 1))
    elif text:
        path.write_text(text)
    flags = ["--json"] if as_json else []
    code, out, err = plan(capsys, path, *flags, "--host", "akiva")
    validate_code = main(["validate", str(path), *flags])
    validated = capsys.readouterr()
    assert (code, out, err) == (1, validated.out, validated.err) and validate_code == 1
    assert "Traceback" not in out + err
    if as_json:
        assert json.loads(out)["valid"] is False
    else:
        assert "not valid" in out.splitlines()[-1]


def test_default_inventory_is_the_same_as_validates(capsys, monkeypatch, tmp_path):
    """No INVENTORY argument: $LLAMAFLEET_INVENTORY, else inventory/cluster.yaml, as validate."""
    monkeypatch.setenv("LLAMAFLEET_INVENTORY", str(SEED))
    _, out, _ = plan(capsys, "--json")
    assert json.loads(out)["file"] == str(SEED)
    monkeypatch.delenv("LLAMAFLEET_INVENTORY")
    monkeypatch.chdir(tmp_path)  # no inventory/cluster.yaml here: validate's "cannot read" finding
    code, out, err = plan(capsys)
    validate_code = main(["validate"])
    validated = capsys.readouterr()
    assert (code, out, err) == (validate_code, validated.out, validated.err) and code == 1
    assert "inventory/cluster.yaml" in out


def test_a_reader_that_stops_early_gets_no_traceback():
    """`llamafleet plan | head`: the reader is gone before the plan is written (EPIPE on write)."""
    proc = subprocess.Popen([sys.executable, "-m", "llamafleet.cli", "plan", str(SEED)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err  # as a process that SIGPIPE ended
    assert err == ""


def test_a_build_without_capability_data_is_said(capsys, tmp_path):
    from llamafleet.config.builds import known_builds

    path = tmp_path / "unknown-build.yaml"
    yaml = YAML()
    data = yaml.load(SEED.read_text())
    data["llama_cpp"]["build"] = "b7000"
    with path.open("w") as out:
        yaml.dump(data, out)
    _, text, _ = plan(capsys, path)
    _, out, _ = plan(capsys, path, "--json")
    pin = json.loads(out)["llama_cpp"]
    assert pin["capabilities"] is None and pin["rendered_with"] in known_builds()
    [warning] = [line for line in text.splitlines() if line.startswith("WARNING: ")]
    assert "b7000" in warning and pin["rendered_with"] in warning and warning == "WARNING: " + pin["note"]


# --- the same inventory at two pinned builds --------------------------------------------------------

OLD, NEW = "b11434", "b8942"
DRAFT_PURPOSES = ("draft_max", "draft_min", "spec_type")


def plan_at(capsys, tmp_path, build: str, plain: str = "sidecar") -> dict:
    """The local example at ``build`` (archive names follow the tag). The plain path is pinned to a
    sidecar by default, so the topology is the same at both builds and only build-specific names and
    flags remain."""
    yaml = YAML()
    data = yaml.load((ROOT / "inventory" / "examples" / "local.yaml").read_text().replace(OLD, build))
    for svc in data["services"].values():
        if svc.get("native_draft"):
            svc["native_draft"]["plain"] = plain
    folder = tmp_path / f"{build}-{plain}"
    folder.mkdir()
    path = folder / "cluster.yaml"
    with path.open("w") as out:
        yaml.dump(data, out)
    code, out, err = plan(capsys, path, "--json")
    assert code == 0, err
    return json.loads(out)


def build_renames(inventory_path: Path):
    """What must change from OLD to NEW, from the two builds' capability data alone: the tag, the RPC
    worker's binary, each deploy flag's spelling, and the native draft's arguments."""
    from llamafleet.config.builds import DEPLOY_PURPOSES, caps_for

    old, new = caps_for(OLD), caps_for(NEW)
    assert old is not None and new is not None, "capability data for both builds is shipped"
    draft = [(old.draft_args(d["n_max"], d.get("n_min", 0)), new.draft_args(d["n_max"], d.get("n_min", 0)))
             for d in (s.get("native_draft") for s in YAML().load(inventory_path.read_text())["services"].values()) if d]
    flags = {old.flag(p): new.flag(p) for p in DEPLOY_PURPOSES
             if p not in DRAFT_PURPOSES and old.flag(p) and new.flag(p) and old.flag(p) != new.flag(p)}
    binaries = {old.rpc_binary: new.rpc_binary, old.server_binary: new.server_binary}
    # The proxy config says whether the native server's build keeps every counted token (probed data).
    keeps = [(f'"keeps_length": {json.dumps(bool(old.speculation_keeps_length))}',
              f'"keeps_length": {json.dumps(bool(new.speculation_keeps_length))}')]

    def argv(args: list[str]) -> list[str]:
        args = list(args)
        for before, after in draft:
            for i in range(len(args) - len(before) + 1):
                if args[i:i + len(before)] == before:
                    args[i:i + len(before)] = after
                    break
        return [text(flags.get(a, a)) for a in args]

    def text(s: str) -> str:
        for before, after in draft:
            s = s.replace(shlex.join(before), shlex.join(after))
        for before, after in flags.items():
            s = s.replace(f" {before} ", f" {after} ").replace(f" {before}\n", f" {after}\n")
        for before, after in binaries.items():
            s = s.replace(f"/{before}", f"/{after}").replace(f"\\{before}", f"\\{after}")
        for before, after in keeps:
            s = s.replace(before, after)
        return s.replace(OLD, NEW).replace(f"LLAMA_BUILD_NUMBER={OLD[1:]}", f"LLAMA_BUILD_NUMBER={NEW[1:]}")

    return argv, text, binaries


def test_plans_at_two_builds_differ_exactly_in_build_specific_names_and_flags(capsys, tmp_path):
    old, new = plan_at(capsys, tmp_path, OLD), plan_at(capsys, tmp_path, NEW)
    argv, text, binaries = build_renames(ROOT / "inventory" / "examples" / "local.yaml")

    def expected(node, key=None):
        if isinstance(node, dict):
            return {k: expected(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return argv(node) if key == "argv" else [binaries.get(b, b) for b in node] if key == "binaries" \
                else [expected(v) for v in node]
        return text(node) if isinstance(node, str) else node

    for plan_ in (old, new):
        plan_.pop("file")
        for h in plan_["hosts"].values():
            for f in h["files"]:  # size and hash follow from the content
                f.pop("bytes"), f.pop("sha256")
    assert old != new
    assert expected(old) == new
    # Something build-specific really changed on the command lines (not only the tag in paths).
    old_args = {a for h in old["hosts"].values() for s in h["services"].values() for a in s["argv"]}
    new_args = {a for h in new["hosts"].values() for s in h["services"].values() for a in s["argv"]}
    assert {a for a in old_args - new_args if OLD not in a}, "only the tag differs: no build-specific flag"


@pytest.mark.parametrize("build", [OLD, NEW])
def test_the_plain_path_follows_the_builds_per_request_switch(capsys, tmp_path, build):
    """With ``plain: auto``, a build that reads per-request speculative.n_max gets no sidecar (the
    proxy turns drafting off per request); one that does not gets a sidecar on this CPU host."""
    from llamafleet.config.builds import caps_for

    reads_switch = caps_for(build).per_request_speculative
    host = plan_at(capsys, tmp_path, build, plain="auto")["hosts"]["local"]
    [route] = host["plain_paths"].values()
    assert route["kind"] == ("request" if reads_switch else "sidecar")
    assert ("target-plain" in host["services"]) is (not reads_switch)
    [proxy] = route["proxies"].values()
    assert proxy["request_fields"] == ({"speculative.n_max": 0} if reads_switch else {})
