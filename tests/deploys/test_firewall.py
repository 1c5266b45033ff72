"""Host firewall rules (deploys/firewall.py): who may reach which port, over generated clusters; the
nftables file checked and applied by the real ``nft`` and read back through the fact's parser; the
Windows rules against recorded-style output (no Windows here); validate's LF172-LF175.

Every test that applies rules touches only ``table inet llamafleet`` with ports no service here uses
and addresses outside 127.0.0.0/8 (loopback 127.0.0.1 is always allowed), and deletes it afterwards.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamafleet.config import load_inventory
from llamafleet.config.models import Inventory
from llamafleet.deploys import firewall as fw
from llamafleet.deploys.facts.firewall import NftablesRules, parse_nft, parse_windows_rules
from llamafleet.deploys.operations import firewall as fw_ops
from llamafleet.deploys.plan import plan_host
from llamafleet.errors import UserError

SHA = "a" * 64


# --- generated clusters ------------------------------------------------------------------------------


def _address(index: int, v6: bool) -> str:
    return f"fd00::{index + 1:x}" if v6 else f"10.9.{index // 200}.{index % 200 + 1}"


@st.composite
def clusters(draw):
    """A cluster of 2-5 Linux/Windows hosts, each known by one IPv4 or IPv6 address (some also by a
    second one), with targets (some over RPC workers, some drafting natively), drafters and 1-2 proxies."""
    n = draw(st.integers(2, 5))
    hosts, addrs = {}, {}
    for i in range(n):
        name = f"h{i}"
        v6 = draw(st.booleans())
        os_ = draw(st.sampled_from(["linux", "windows"]))
        addrs[name] = [_address(i, v6)] + ([_address(100 + i, not v6)] if draw(st.booleans()) else [])
        hosts[name] = {
            "connection": {"type": "ssh", "address": addrs[name][0]}, "addresses": addrs[name][1:], "os": os_,
            "install": "source", "install_dir": "C:\\lf" if os_ == "windows" else "/lf",
            "models_dir": "C:\\lf\\models" if os_ == "windows" else "/lf/models",
            "service_manager": "windows-service" if os_ == "windows" else draw(st.sampled_from(["systemd", "supervisord"])),
            "models": ["m"]}
    names = list(hosts)
    pick = st.sampled_from(names)
    services, port = {}, iter(range(20000, 30000, 7))
    workers = [f"rpc{i}" for i in range(draw(st.integers(0, 3)))]
    for w in workers:
        h = draw(pick)
        services[w] = {"role": "rpc-worker", "host": h, "bind": addrs[h][0], "port": next(port)}
    targets = [f"t{i}" for i in range(draw(st.integers(1, 3)))]
    for t in targets:
        h = draw(pick)
        svc = {"role": "target", "host": h, "bind": addrs[h][0], "port": next(port), "model": "m"}
        used = draw(st.lists(st.sampled_from(workers), unique=True, max_size=2)) if workers else []
        if used and draw(st.booleans()):
            svc["native_draft"] = {"model": "m", "rpc_worker": used[0], "plain": "sidecar", "plain_port": next(port)}
            svc["rpc_workers"] = used[1:]
        else:
            svc["rpc_workers"] = used
        services[t] = svc
    drafters = [f"d{i}" for i in range(draw(st.integers(0, 2)))]
    for d in drafters:
        h = draw(pick)
        services[d] = {"role": "drafter", "host": h, "bind": addrs[h][0], "port": next(port), "model": "m"}
    linux = [h for h in names if hosts[h]["os"] == "linux"] or [names[0]]
    hosts[linux[0]]["os"] = "linux"  # the proxy runs on Linux or macOS
    if hosts[linux[0]]["service_manager"] == "windows-service":
        hosts[linux[0]].update(service_manager="systemd", install_dir="/lf", models_dir="/lf/models")
    for p in range(draw(st.integers(1, 2))):
        h = draw(st.sampled_from(linux))
        services[f"p{p}"] = {"role": "proxy", "host": h, "bind": addrs[h][0], "port": next(port),
                             "targets": draw(st.lists(st.sampled_from(targets), unique=True, min_size=1)),
                             "drafters": draw(st.lists(st.sampled_from(drafters), unique=True)) if drafters else []}
    allow = draw(st.lists(st.sampled_from(["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]), unique=True, max_size=2))
    data = {"cluster": "gen", "llama_cpp": {"build": "b11434", "source": {"file": "src.tar.gz", "sha256": SHA},
                                            "mirror": "http://10.9.9.9:8000"},
            "hosts": hosts, "firewall": {"allow": allow},
            "models": {"m": {"files": [{"name": "m.gguf", "sha256": SHA, "size": 1}], "quant": "Q4_0",
                             "tokenizer": "t"}},
            "services": services}
    return Inventory.model_validate(data), addrs


def users_of(inventory: Inventory, service: str) -> set[str] | None:
    """The test's own reading of who connects to a service: None for the proxy (everyone)."""
    svc = inventory.services.get(service)
    if svc is None:  # a plain sidecar: its target's users
        svc = inventory.services[service.removesuffix("-plain")]
        service = service.removesuffix("-plain")
    if svc.role == "proxy":
        return None
    users = set()
    for other in inventory.services.values():
        if svc.role == "rpc-worker" and other.role == "target" and (
                service in other.rpc_workers or (other.native_draft and other.native_draft.rpc_worker == service)):
            users.add(other.host)
        if svc.role == "target" and other.role == "proxy" and service in other.target_names:
            users.add(other.host)
        if svc.role == "drafter" and other.role == "proxy" and service in other.drafters:
            users.add(other.host)
    return users


def reaches(sources, address: str) -> bool:
    return sources is None or any(ipaddress.ip_address(address) in n for n in sources)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_each_port_accepts_exactly_its_users_the_host_itself_loopback_and_allow(case):
    inventory, addrs = case
    allow = [ipaddress.ip_network(n) for n in inventory.firewall.allow]
    for host in inventory.hosts:
        plan = plan_host(inventory, host)
        firewall = fw.host_firewall(plan)
        assert firewall.manage and firewall.kind == ("windows" if plan.windows else "nftables")
        assert sorted(r.port for r in firewall.rules) == sorted(s.port for s in plan.services)
        for rule in firewall.rules:
            users = users_of(inventory, rule.service)
            if users is None:
                assert rule.sources is None, rule
                continue
            for other, addresses in addrs.items():
                for address in addresses:
                    assert reaches(rule.sources, address) == (other in users or other == host), (rule, other, address)
            assert reaches(rule.sources, "127.0.0.1") and reaches(rule.sources, "::1")
            assert all(reaches(rule.sources, str(n.network_address)) for n in allow)
            assert not reaches(rule.sources, "203.0.113.5") and not reaches(rule.sources, "2001:db9::1")
        if firewall.kind == "windows":  # the same, minus loopback (Windows Firewall leaves it alone)
            expected = fw.windows_expected(firewall)
            for rule in firewall.rules:
                remote = expected.get(fw.windows_rule_name(rule.service), {}).get("remote", [])
                assert "127.0.0.1" not in remote and "::1" not in remote
                if rule.sources is None:
                    assert remote == ["any"]
        else:
            text = fw.render_nftables(firewall)
            assert text.count("tcp dport") == sum(1 if r.sources is None else 1 + bool(r.v4) + bool(r.v6)
                                                  for r in firewall.rules)


# --- the real nft ------------------------------------------------------------------------------------

NFT = shutil.which("nft")
needs_nft = pytest.mark.skipif(NFT is None, reason="nft is not installed (ci/system-deps.sh installs nftables)")


def _nft(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([NFT, *args], input=stdin, capture_output=True, text=True, timeout=30)


@pytest.fixture
def llamafleet_table():
    """The table the tests apply, deleted afterwards whatever happened (only ours: table inet llamafleet)."""
    yield
    _nft("delete", "table", "inet", fw.TABLE)


def _seed_firewalls():
    inventory = load_inventory("inventory/examples/seed-cluster.yaml")
    return [fw.host_firewall(plan_host(inventory, "akiva"))]


@needs_nft
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_rendered_files_are_valid_nftables(case):
    """``nft -c``: parsed and checked by nft itself, nothing applied."""
    inventory, _ = case
    for host in inventory.hosts:
        firewall = fw.host_firewall(plan_host(inventory, host))
        if firewall.kind == "nftables":
            result = _nft("-c", "-f", "-", stdin=fw.render_nftables(firewall))
            assert result.returncode == 0, result.stderr


@needs_nft
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(clusters())
def test_applied_rules_read_back_as_planned_and_a_second_apply_replaces_the_first(llamafleet_table, case):
    inventory, _ = case
    applied = 0
    for host in inventory.hosts:
        firewall = fw.host_firewall(plan_host(inventory, host))
        if firewall.kind != "nftables":
            continue
        result = _nft("-f", "-", stdin=fw.render_nftables(firewall))
        assert result.returncode == 0, result.stderr
        listed = _nft("-j", "list", "table", "inet", fw.TABLE)
        live = parse_nft(listed.stdout)
        assert live["status"] == "ok" and live["chain"] == "ok" and live["other"] == []
        assert fw.nft_differences(firewall.expected(), live) == []
        assert fw.nft_differences(firewall.expected(), live) == []
        applied += 1
    tables = _nft("list", "tables").stdout
    assert tables.count(f"table inet {fw.TABLE}") == (1 if applied else 0)


@needs_nft
def test_the_fact_command_reads_a_missing_table_and_the_applied_one(llamafleet_table, tmp_path):
    rules_file = tmp_path / "etc" / "firewall.nft"
    command = NftablesRules().command(str(rules_file))
    _nft("delete", "table", "inet", fw.TABLE)
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30).stdout
    assert NftablesRules().process(out.splitlines()) == {"status": "absent", "detail": f"no table inet {fw.TABLE}",
                                                          "files": {"nft": None, "unit": None, "enabled": None}}
    firewall = _seed_firewalls()[0]
    files = {"nft": {"path": str(rules_file), "content": fw.render_nftables(firewall)}}
    commands = list(fw_ops.nftables.commands(files, firewall.expected(), parse_nft(out)))
    assert commands[-1] == f"nft -f {rules_file}"
    rules_file.parent.mkdir()
    rules_file.write_text(files["nft"]["content"])  # what the upload does
    assert _nft("-f", str(rules_file)).returncode == 0
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30).stdout
    live = NftablesRules().process(out.splitlines())
    assert live["ports"] == {8080: ["127.0.0.1", "192.168.86.29", "192.168.86.40", "::1"]}
    assert fw.nft_differences(firewall.expected(), live) == fw.file_differences(files, live) == []
    assert list(fw_ops.nftables.commands(files, firewall.expected(), live)) == []  # a second deploy: nothing
    # By hand: the drop rule goes, so the port is open to everyone; drift and the operation see it.
    handles = json.loads(_nft("-j", "-a", "list", "table", "inet", fw.TABLE).stdout)["nftables"]
    drop = next(i["rule"]["handle"] for i in handles if "rule" in i and {"drop": None} in i["rule"]["expr"])
    assert _nft("delete", "rule", "inet", fw.TABLE, "input", "handle", str(drop)).returncode == 0
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30).stdout
    live = parse_nft(out)
    assert fw.nft_differences(firewall.expected(), live) == [
        ("port 8080", "only from 127.0.0.1, 192.168.86.29, 192.168.86.40, ::1", "open to every address")]
    assert list(fw_ops.nftables.commands(files, firewall.expected(), live)) == [f"nft -f {rules_file}"]


def test_systemd_hosts_load_the_rules_at_boot_with_a_unit_systemd_parses_back(tmp_path):
    """The boot unit runs exactly ``nft -f <the rules file>``, whatever the install_dir holds
    (``systemd-analyze verify`` splits ExecStart= back into its argv)."""
    from test_unit_escaping import _systemd_dump

    inventory = load_inventory(_inventory(tmp_path))
    data = inventory.model_dump(mode="json")
    data["hosts"]["server"]["install_dir"] = "/srv/llama fleet/100% $HOME;x"
    plan = plan_host(Inventory.model_validate(data), "server")
    files = fw.boot_files(plan, fw.host_firewall(plan))
    assert files["unit"]["path"] == "/etc/systemd/system/llamafleet-firewall.service"
    if shutil.which("systemd-analyze") or os.environ.get("CI"):  # CI installs it (ci/system-deps.sh)
        dump = _systemd_dump(tmp_path, {"llamafleet-firewall": files["unit"]["content"]})
        assert dump["llamafleet-firewall"]["argv"] == [fw.NFT, "-f", "/srv/llama fleet/100% $HOME;x/etc/firewall.nft"]
    live = {"status": "ok", "chain": "ok", "ports": fw.host_firewall(plan).expected(), "other": [],
            "files": {"nft": None, "unit": None, "enabled": None}}
    commands = [c if isinstance(c, str) else type(c).__name__ for c in fw_ops.nftables.commands(
        files, fw.host_firewall(plan).expected(), live)]
    assert commands == ["mkdir -p '/srv/llama fleet/100% $HOME;x/etc'", "FileUploadCommand",
                        "chmod 0644 '/srv/llama fleet/100% $HOME;x/etc/firewall.nft'",
                        "mkdir -p /etc/systemd/system", "FileUploadCommand",
                        "chmod 0644 /etc/systemd/system/llamafleet-firewall.service", "systemctl daemon-reload",
                        "systemctl enable llamafleet-firewall.service"]
    # A supervisord host's services do not start at boot either: no unit there.
    data["hosts"]["server"]["service_manager"] = "supervisord"
    assert "unit" not in fw.boot_files(plan_host(Inventory.model_validate(data), "server"), fw.host_firewall(plan))


# --- escaping: nothing free-form reaches the nft file ---------------------------------------------------


@given(st.one_of(st.text(), st.integers(), st.booleans(), st.floats(), st.none()))
def test_the_nft_filter_takes_only_ports_networks_and_names(value):
    ok_name = isinstance(value, str) and fw._NAME.match(value) is not None
    ok_port = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535
    if ok_name or ok_port:
        assert fw.nft_value(value) == str(value)
    else:
        with pytest.raises(ValueError):
            fw.nft_value(value)


def test_windows_commands_quote_every_string_and_type_every_port():
    expected = {"llamafleet-d0": {"port": 8081, "remote": ["10.0.0.0/24", "fd00::1"]},
                "llamafleet-p0": {"port": 8000, "remote": ["any"]}}
    live = {"status": "ok", "rules": {
        "llamafleet-d0": {"ports": [8081], "remote": ["10.0.0.0/24"], "direction": "Inbound", "action": "Allow",
                          "protocol": "TCP", "enabled": True},
        "llamafleet-o'ld": {"ports": [9], "remote": ["any"], "direction": "Inbound", "action": "Allow",
                            "protocol": "TCP", "enabled": True}}}
    commands = list(fw_ops.windows_rules.commands(expected, live))
    assert commands == [
        "Set-NetFirewallRule -Name 'llamafleet-d0' -Direction Inbound -Action Allow -Protocol TCP -LocalPort 8081 "
        "-RemoteAddress '10.0.0.0/24','fd00::1' -Profile Any -Enabled True",
        "New-NetFirewallRule -Name 'llamafleet-p0' -DisplayName 'llamafleet-p0' -Group 'llamafleet' -Direction Inbound "
        "-Action Allow -Protocol TCP -LocalPort 8000 -RemoteAddress 'any' -Profile Any -Enabled True | Out-Null",
        "Remove-NetFirewallRule -Name 'llamafleet-o''ld'",
    ]
    assert all('"' not in c for c in commands)  # Windows OpenSSH's powershell -c strips double quotes


def test_windows_parser_reads_masks_ranges_keywords_and_a_single_rule():
    # Recorded-style output (the shape Get-NetFirewallRule | Get-Net*Filter gives on Windows; none here).
    single = json.dumps({"Name": "llamafleet-rpc", "Enabled": "True", "Direction": "Inbound", "Action": "Allow",
                         "Protocol": "TCP", "LocalPort": "50052",
                         "RemoteAddress": ["192.168.86.29", "10.1.0.0/255.255.0.0", "10.2.0.0-10.2.0.255",
                                           "LocalSubnet"]})
    rules = parse_windows_rules(single)["rules"]
    assert rules["llamafleet-rpc"]["remote"] == ["10.1.0.0/16", "10.2.0.0/24", "192.168.86.29", "LocalSubnet"]
    assert rules["llamafleet-rpc"]["ports"] == [50052]
    assert parse_windows_rules("[]") == {"status": "ok", "rules": {}}


# --- validate ------------------------------------------------------------------------------------------

BASE = """\
cluster: c
llama_cpp: {build: b11434, mirror: "http://10.0.0.9:8000", source: {file: s.tar.gz, sha256: "%s"}}
hosts:
  server:
    connection: {type: ssh, address: SERVER_ADDRESS}
    os: SERVER_OS
    install: source
    install_dir: /lf
    models_dir: /lf/models
    service_manager: SERVER_MANAGER
FIREWALL
  client:
    connection: {type: ssh, address: CLIENT_ADDRESS}
    os: linux
    install: source
    install_dir: /lf
    models_dir: /lf/models
    service_manager: systemd
services:
  rpc: {role: rpc-worker, host: server, bind: SERVER_BIND, port: 50052}
  t:
    role: target
    host: client
    port: 8080
    model: m
    rpc_workers: [rpc]
models:
  m: {files: [{name: m.gguf, sha256: "%s", size: 1}], quant: Q4_0, tokenizer: t}
""" % (SHA, SHA)


def _inventory(tmp_path, server="10.0.0.1", client="10.0.0.2", os_="linux", manager="systemd", firewall="",
               bind=None, extra=""):
    text = (BASE.replace("SERVER_ADDRESS", server).replace("CLIENT_ADDRESS", client).replace("SERVER_OS", os_)
            .replace("SERVER_MANAGER", manager).replace("SERVER_BIND", bind or server).replace("FIREWALL\n", firewall))
    path = tmp_path / "inv.yaml"
    path.write_text(text.replace("  client:\n    connection", "  client:\n    models: [m]\n    connection") + extra)
    return path


def _codes(path):
    from llamafleet.config.loader import check_inventory

    _, findings = check_inventory(path)
    return {(f.code, f.severity.value): f for f in findings if f.code.startswith("LF17")}


@pytest.mark.parametrize("client", ["gpu-box.lan", "client"])
def test_a_peer_known_only_by_name_is_refused_with_both_fixes(tmp_path, client):
    found = _codes(_inventory(tmp_path, client=client))
    finding = found[("LF172", "error")]
    assert "'client'" in finding.message and "no IP address" in finding.message
    assert "hosts.client.addresses" in finding.hint and "hosts.server.firewall.manage: false" in finding.hint
    assert finding.line is not None  # file:line:col of hosts.client.connection
    # An address for it, or no firewall on the server, and the inventory is valid.
    fixed = _inventory(tmp_path, client=client).read_text().replace(
        "    models: [m]\n", "    models: [m]\n    addresses: [10.0.0.2]\n", 1)
    (tmp_path / "inv.yaml").write_text(fixed)
    assert ("LF172", "error") not in _codes(tmp_path / "inv.yaml")
    off = _inventory(tmp_path, client=client, firewall="    firewall: {manage: false}\n")
    assert ("LF172", "error") not in _codes(off)


def test_a_service_of_a_role_the_firewall_does_not_know_admits_every_host_of_the_cluster(tmp_path):
    """The cluster's file cache (role cache) is fetched from by every host, and so is any later role."""
    inventory = load_inventory(_inventory(tmp_path))
    for role in ("cache", "some-future-role"):
        assert fw.peer_hosts(inventory, "x", role) == ("client", "server")
    assert fw.peer_hosts(inventory, "rpc", "rpc-worker") == ("client",)
    assert fw.peer_hosts(inventory, "t", "target") == ()  # no proxy uses it: loopback and its own host only


def test_a_macos_host_cannot_manage_its_firewall(tmp_path):
    path = _inventory(tmp_path, os_="macos", manager="launchd", firewall="    firewall: {manage: true}\n")
    assert ("LF173", "error") in _codes(path)
    path = _inventory(tmp_path, os_="macos", manager="launchd", extra="firewall: {manage: true}\n")
    assert ("LF173", "warning") in _codes(path)


def test_two_managed_hosts_on_this_machines_loopback_share_one_table(tmp_path):
    path = _inventory(tmp_path, server="127.0.0.2", client="127.0.0.3", extra="firewall: {manage: true}\n")
    found = _codes(path)
    assert ("LF174", "error") in found and "client" in found[("LF174", "error")].message
    # By default a loopback host's firewall is left alone, so nothing clashes.
    assert ("LF174", "error") not in _codes(_inventory(tmp_path, server="127.0.0.2", client="127.0.0.3"))


def test_allowing_every_address_is_a_warning(tmp_path):
    found = _codes(_inventory(tmp_path, firewall="    firewall: {allow: ['::/0']}\n"))
    assert ("LF175", "warning") in found


@pytest.mark.parametrize("bad", ["10.0.0.5/24", "gpu-box.lan", "10.0.0.0/33", "10.0.0.0/8; drop", "::/129"])
def test_an_allow_entry_that_is_not_a_network_is_refused(tmp_path, bad):
    from llamafleet.config.loader import check_inventory

    inventory, findings = check_inventory(_inventory(tmp_path, extra=f"firewall: {{allow: [{json.dumps(bad)}]}}\n"))
    assert inventory is None
    assert any("firewall" in str(f) and "allow" in str(f) for f in findings), findings


def test_default_is_managed_for_linux_and_windows_over_ssh_and_off_on_loopback_and_macos(tmp_path):
    inventory = load_inventory(_inventory(tmp_path))
    assert fw.managed(inventory, "server")[0] and fw.managed(inventory, "client")[0]
    inventory = load_inventory(_inventory(tmp_path, server="127.0.0.2", client="127.0.0.3"))
    assert not fw.managed(inventory, "server")[0]
    inventory = load_inventory(_inventory(tmp_path, os_="macos", manager="launchd"))
    assert not fw.managed(inventory, "server")[0]
    # A host setting wins over the cluster's.
    inventory = load_inventory(_inventory(tmp_path, firewall="    firewall: {manage: true}\n",
                                          extra="firewall: {manage: false}\n"))
    assert fw.managed(inventory, "server") == (True, "hosts.server.firewall.manage is true")
    assert not fw.managed(inventory, "client")[0]


def test_the_deploy_refuses_a_rule_it_cannot_write_and_reads_rules_only_where_managed(tmp_path):
    inventory = Inventory.model_validate({**load_inventory(_inventory(tmp_path)).model_dump(mode="json")})
    data = inventory.model_dump(mode="json")
    data["hosts"]["client"]["connection"]["address"] = "client.lan"
    with pytest.raises(UserError, match="LF172"):
        fw.host_firewall(plan_host(Inventory.model_validate(data), "server"))
    with pytest.raises(UserError, match="cannot apply the firewall rules: nft is not installed"):
        fw_ops.planned(plan_host(inventory, "server"), {"firewall": parse_nft("llamafleet-no-nft")})
    data["hosts"]["server"]["firewall"] = {"manage": False}
    assert fw_ops.planned(plan_host(Inventory.model_validate(data), "server"), {}) == []


# --- a firewall switched off: what an earlier deploy left is drift, and the deploy removes it ----------

LEFT = {"status": "ok", "chain": "ok", "ports": {50052: ["10.0.0.1", "10.0.0.2", "127.0.0.1", "::1"]}, "other": [],
        "files": {"nft": SHA, "unit": SHA, "enabled": "enabled"}}


def test_only_a_host_switched_off_by_setting_with_its_own_kernel_is_read_for_leftovers(tmp_path):
    def clean(path, host="server"):
        return fw.host_firewall(plan_host(load_inventory(path), host)).clean

    off = "    firewall: {manage: false}\n"
    assert clean(_inventory(tmp_path, firewall=off)) and not clean(_inventory(tmp_path, firewall=off), "client")
    assert clean(_inventory(tmp_path, extra="firewall: {manage: false}\n"), "client")
    assert not clean(_inventory(tmp_path))  # managed
    # Unmanaged by default (loopback, macOS): never read.
    assert not clean(_inventory(tmp_path, server="127.0.0.2", client="127.0.0.3"))
    assert not clean(_inventory(tmp_path, os_="macos", manager="launchd", firewall=off))
    # On loopback, set false: read, unless another loopback host's firewall is managed (the table is its).
    assert clean(_inventory(tmp_path, server="127.0.0.2", client="127.0.0.3", firewall=off))
    assert not clean(_inventory(tmp_path, server="127.0.0.2", client="127.0.0.3", firewall=off,
                                extra="firewall: {manage: true}\n"))
    assert clean(_inventory(tmp_path, server="127.0.0.2", firewall=off, extra="firewall: {manage: true}\n"))


def test_a_switched_off_linux_host_reports_the_leftover_table_unit_and_file_and_the_deploy_removes_them(tmp_path):
    plan = plan_host(load_inventory(_inventory(tmp_path, firewall="    firewall: {manage: false}\n")), "server")
    found = {f.check: f for f in fw.firewall_findings(plan, {"firewall": LEFT})}
    assert set(found) == {"firewall table inet llamafleet", "firewall boot unit llamafleet-firewall.service",
                          "firewall file /lf/etc/firewall.nft"}
    assert all(f.severity.value == "fail" and "earlier deploy" in f.hint for f in found.values())
    table = found["firewall table inet llamafleet"]
    assert "hosts.server.firewall.manage is false" in table.expected and "port 50052 only from" in table.actual
    assert fw.plan_summary(plan)["removes_leftovers"]  # llamafleet plan says so
    [(name, op, kwargs)] = fw_ops.planned(plan, {"firewall": LEFT})
    assert name == "firewall rules removed (nftables)"
    assert list(op.commands(**kwargs)) == [
        "nft delete table inet llamafleet", "systemctl disable llamafleet-firewall.service",
        "rm -f /etc/systemd/system/llamafleet-firewall.service", "systemctl daemon-reload", "rm -f /lf/etc/firewall.nft"]
    # Nothing left, or nothing readable (no nft, not root): no finding, no command.
    gone = {"status": "absent", "detail": "no table inet llamafleet", "files": {"nft": None, "unit": None, "enabled": None}}
    for live in (gone, parse_nft("llamafleet-no-nft"), parse_nft("llamafleet-nft-failed Operation not permitted")):
        assert fw.firewall_findings(plan, {"firewall": live}) == []
        assert all(list(op.commands(**kwargs)) == [] for _, op, kwargs in fw_ops.planned(plan, {"firewall": live}))


def test_a_switched_off_windows_host_reports_and_removes_every_llamafleet_rule():
    from llamafleet.config.models import Firewall

    seed = load_inventory(Path(__file__).parents[2] / "inventory" / "examples" / "seed-cluster.yaml")
    hosts = dict(seed.hosts)
    hosts["desktop"] = hosts["desktop"].model_copy(update={"firewall": Firewall(manage=False)})
    plan = plan_host(seed.model_copy(update={"hosts": hosts}), "desktop")
    live = parse_windows_rules('[{"Name": "llamafleet-desktop-rpc", "Enabled": "True", "Direction": "Inbound", '
                               '"Action": "Allow", "Protocol": "TCP", "LocalPort": ["50052"], '
                               '"RemoteAddress": ["192.168.86.29"]}]')
    [finding] = fw.firewall_findings(plan, {"firewall": live})
    assert finding.check == "firewall llamafleet-desktop-rpc" and "manage is false" in finding.expected
    [(name, op, kwargs)] = fw_ops.planned(plan, {"firewall": live})
    assert list(op.commands(**kwargs)) == ["Remove-NetFirewallRule -Name 'llamafleet-desktop-rpc'"]
