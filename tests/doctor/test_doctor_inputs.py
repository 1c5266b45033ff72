"""doctor's bad input: clear messages and exit 1, never a traceback (no servers needed)."""

from __future__ import annotations

import pytest

from llamafleet.cli import main

from .conftest import write_inventory

SERVICES = {"target": {"role": "target", "host": "box", "model": "smollm2", "port": 1, "parallel": 1}}


def test_limit_matching_nothing_is_exit_1_naming_it(tmp_path, capsys):
    inventory = write_inventory(tmp_path, SERVICES)
    assert main(["doctor", str(inventory), "--limit", "gpu-*"]) == 1
    err = capsys.readouterr().err
    assert "--limit gpu-*: matches no host and no group" in err and "targets" in err


def test_invalid_inventory_is_exit_1_with_its_location(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ncluster: demo\nhosts: {}\n")
    assert main(["doctor", str(bad)]) == 1
    assert f"{bad}:3:" in capsys.readouterr().err


def test_unset_token_variable_and_bad_timeout_are_clear_errors(tmp_path, capsys, monkeypatch):
    inventory = write_inventory(tmp_path, SERVICES)
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    assert main(["doctor", str(inventory), "--proxy-token-env", "NO_SUCH_TOKEN_VAR"]) == 1
    assert "--proxy-token-env NO_SUCH_TOKEN_VAR: that variable is not set" in capsys.readouterr().err
    for bad in ("0", "-1", "nan", "inf"):  # a usage error, from argparse (exit 2)
        with pytest.raises(SystemExit) as exited:
            main(["doctor", str(inventory), "--timeout", bad])
        assert exited.value.code == 2
        assert "--timeout: must be a positive, finite number of seconds" in capsys.readouterr().err


def test_limit_to_a_group_checks_only_its_hosts(tmp_path, capsys):
    """Port 1 refuses: the one selected service is reported (exit 1), and only on its host."""
    inventory = write_inventory(tmp_path, SERVICES)
    assert main(["doctor", str(inventory), "--limit", "targets", "--json"]) == 1
    out = capsys.readouterr().out
    assert '"host": "box"' in out and '"check": "health target"' in out


def test_a_build_without_git_metadata_gets_an_explaining_hint(tmp_path):
    """A llama.cpp built from a source tree without git metadata reports build_info "b0-unknown" (its
    cmake/build-info.cmake counts commits with git): checked against the pin, with a hint."""
    from llamafleet.config import load_inventory
    from llamafleet.doctor import Doctor, expectation
    from llamafleet.llama_client import LlamaClient

    inventory = load_inventory(write_inventory(tmp_path, SERVICES))
    doctor = Doctor(inventory, http=LlamaClient(1), expect=expectation(inventory, None), proxy_token=None)
    finding = doctor._build_finding("target", inventory.services["target"], "b0-unknown")
    assert (finding.severity.value, finding.expected, finding.actual) == ("fail", "b11434-* (pin b11434)", "b0-unknown")
    assert "-DLLAMA_BUILD_NUMBER=11434" in finding.hint and "--expect-build-info" in finding.hint
    assert doctor._build_finding("target", inventory.services["target"], "b11434-3f2a1c9").severity.value == "ok"
