"""The deployer's self-signed proxy pair (llamafleet/tls.py): made once by the deploy (and ``llamafleet
plan``) in the state folder, reused while it fits, renewed when the proxy's address changes or the files
are not right; everything else (drift's plan, doctor, bench) reads it and never makes one."""

from __future__ import annotations

import ipaddress
import stat
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "config"))
from inventory_testlib import EXAMPLES, edit  # noqa: E402

from llamafleet import tls  # noqa: E402
from llamafleet.config import load_inventory  # noqa: E402
from llamafleet.deploys.plan import plan_host  # noqa: E402
from llamafleet.errors import UserError  # noqa: E402

AUTH = "    auth: {token_file: /opt/llamafleet/proxy.token}\n"
PROXY_BIND = "    bind: 127.0.0.1\n    port: 8080\n"


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv(tls.STATE_ENV, str(tmp_path / "state"))
    return tmp_path / "state"


def inventory(tmp_path: Path, bind: str = "127.0.0.1"):
    text = edit((EXAMPLES / "local.yaml").read_text(), AUTH, AUTH + "    tls: {self_signed: true}\n")
    text = edit(text, PROXY_BIND, PROXY_BIND.replace("127.0.0.1", bind))
    path = tmp_path / f"cluster-{bind.replace(':', '_')}.yaml"
    path.write_text(text)
    return load_inventory(path)


def names(pair: tls.LocalPair) -> set[str]:
    return tls.covered_names(tls.load_certificate(pair.cert))


def test_made_once_private_and_reused(tmp_path, state):
    inv = inventory(tmp_path)
    assert tls.local_pair(inv, "proxy", create=False) is None
    tls.ensure_pairs(inv)
    pair = tls.local_pair(inv, "proxy", create=False)
    assert pair.cert.parent == state / "clusters" / "local" / "tls" / "proxy"
    assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600 and stat.S_IMODE(pair.cert.parent.stat().st_mode) == 0o700
    first = tls.file_fingerprint(pair.cert)
    assert names(pair) == {"127.0.0.1"}
    assert tls.key_matches(tls.load_certificate(pair.cert), tls.load_key(pair.key))
    tls.ensure_pairs(inv)
    plan = plan_host(inv, "local")
    assert tls.file_fingerprint(pair.cert) == first
    assert plan.files[str(Path(inv.hosts["local"].install_dir) / "etc" / "proxy.crt")] == (pair.cert_pem(), "0644")
    key = next(s for s in plan.secrets if s.path.endswith("/etc/proxy.key"))
    assert key.source == str(pair.key) and key.user == "root"


def test_renewed_when_the_address_changes_or_the_key_is_not_private(tmp_path):
    tls.ensure_pairs(inventory(tmp_path))
    pair = tls.local_pair(inventory(tmp_path), "proxy", create=False)
    first = tls.file_fingerprint(pair.cert)
    moved = inventory(tmp_path, "::1")
    tls.ensure_pairs(moved)
    assert names(pair) == {"::1"} and tls.file_fingerprint(pair.cert) != first
    second = tls.file_fingerprint(pair.cert)
    pair.key.chmod(0o644)
    tls.ensure_pairs(moved)
    assert tls.file_fingerprint(pair.cert) != second and stat.S_IMODE(pair.key.stat().st_mode) == 0o600
    pair.cert.write_text("damaged\n")
    tls.ensure_pairs(moved)
    assert names(pair) == {"::1"}


def test_a_wildcard_bind_covers_the_hosts_addresses_and_loopback(tmp_path):
    inv = inventory(tmp_path, "0.0.0.0")
    tls.ensure_pairs(inv)
    covered = names(tls.local_pair(inv, "proxy", create=False))
    assert {"127.0.0.1", "::1"} <= covered
    assert all(ipaddress.ip_address(n) for n in covered)


def test_without_the_pair_planning_is_one_clear_error(tmp_path, state):
    """drift (and anything else that plans) on a machine without the deployer's pair: a clear error, not a
    new pair of its own that would then differ from the host's."""
    with pytest.raises(UserError, match=r"^services\.proxy\.tls: the self-signed pair is not on this machine"):
        plan_host(inventory(tmp_path), "local")
    assert not (state / "clusters" / "local" / "tls").exists()
