"""ProxyConfig: loading with clear errors, building from the inventory, and the CLI's exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamafleet.cli import main
from llamafleet.config import load_inventory
from llamafleet.config.models import SpeculationMode
from llamafleet.errors import UserError
from llamafleet.proxy.config import ProxyConfig

SEED = Path(__file__).resolve().parents[2] / "inventory" / "examples" / "seed-cluster.yaml"


def test_from_inventory_resolves_backend_addresses_and_modes():
    inventory = load_inventory(SEED)
    config = ProxyConfig.from_inventory(inventory, "proxy")
    target = inventory.services["target"]
    target_host = inventory.hosts[target.host].connection
    assert config.target.url == f"http://{target_host.address}:{target.port}"
    assert [d.name for d in config.drafters] == ["desktop-drafter", "m2-drafter"]
    assert config.listen.host == "192.168.86.40" and config.listen.port == 8000
    assert config.auth.token_file == "/usr/local/llamafleet/proxy.token"
    assert config.mode is SpeculationMode.auto
    # The rendered config round-trips through the file loader unchanged.
    assert ProxyConfig.model_validate(json.loads(config.model_dump_json())) == config


def test_from_inventory_rejects_a_non_proxy_service():
    with pytest.raises(UserError, match="services.target: no proxy service"):
        ProxyConfig.from_inventory(load_inventory(SEED), "target")


def test_load_names_file_and_key(tmp_path):
    bad = tmp_path / "proxy.yaml"
    bad.write_text("target: {name: t, url: 'http://127.0.0.1:1'}\nlimts: {}\n")
    with pytest.raises(UserError, match=r"proxy.yaml: invalid proxy config:\n  limts: unknown key"):
        ProxyConfig.load(bad)
    bad.write_text("target: {name: t, url: 'http://127.0.0.1:1'}\nmode: proxy\n")
    with pytest.raises(UserError, match="mode 'proxy' is not available: it needs at least one drafter"):
        ProxyConfig.load(bad)
    # A list item's path is spelled as the inventory's findings spell it: drafters[1].url.
    bad.write_text("target: {name: t, url: 'http://127.0.0.1:1'}\n"
                   "drafters: [{name: a, url: 'http://127.0.0.1:2'}, {name: b, url: 'not a url'}]\n")
    with pytest.raises(UserError, match=r"\n  drafters\[1\]\.url: "):
        ProxyConfig.load(bad)


def test_load_reports_yaml_position(tmp_path):
    bad = tmp_path / "proxy.yaml"
    bad.write_text("target: {name: t\n")
    with pytest.raises(UserError, match=r"proxy.yaml:\d+:\d+: invalid YAML"):
        ProxyConfig.load(bad)


def test_auth_needs_exactly_one_source_and_a_token(tmp_path, monkeypatch):
    base = {"target": {"name": "t", "url": "http://127.0.0.1:1"}}
    with pytest.raises(Exception, match="exactly one"):
        ProxyConfig.model_validate({**base, "auth": {"token_file": "/run/a", "token_env": "B"}})
    for auth, problem in (({"token_file": "proxy.token"}, "auth.token_file"),
                          ({"token_env": "NOT-A-NAME"}, "auth.token_env")):  # the inventory's rules
        with pytest.raises(Exception, match=problem):
            ProxyConfig.model_validate({**base, "auth": auth})
    config = ProxyConfig.model_validate({**base, "auth": {"token_env": "LLAMAFLEET_TEST_TOKEN"}})
    monkeypatch.delenv("LLAMAFLEET_TEST_TOKEN", raising=False)
    with pytest.raises(UserError, match="LLAMAFLEET_TEST_TOKEN: the token is empty or unset"):
        config.auth.read_token()
    monkeypatch.setenv("LLAMAFLEET_TEST_TOKEN", "s3cret\n")
    assert config.auth.read_token() == "s3cret"


def test_cli_bad_config_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "proxy.json"
    bad.write_text('{"target": {"name": "t", "url": "ftp://x"}}')
    assert main(["proxy", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "target.url" in err and "Traceback" not in err
    assert main(["proxy", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read proxy config" in capsys.readouterr().err


def test_cli_check_accepts_a_good_config(tmp_path, capsys, monkeypatch):
    good = tmp_path / "proxy.yaml"
    good.write_text("target: {name: t, url: 'http://127.0.0.1:1', slots: 5}\n"
                    "drafters: [{name: d, url: 'http://127.0.0.1:2'}]\nauth: {token_env: LF_TOKEN}\n")
    monkeypatch.setenv("LF_TOKEN", "x")
    assert main(["proxy", "--config", str(good), "--check"]) == 0
    assert "modes: auto, direct, proxy" in capsys.readouterr().out
