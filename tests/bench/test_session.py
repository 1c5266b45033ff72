"""`llamafleet bench INVENTORY`: what it derives from a real inventory file (the four-machine example
cluster and the local demo inventory), and its clear errors. No cluster is contacted here; the rig test covers runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamafleet.bench.session import from_inventory
from llamafleet.cli import main
from llamafleet.errors import UserError

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "inventory" / "examples" / "seed-cluster.yaml"
SERVER_KEY = "seed-server-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    """The seed cluster's server key where a deploy of it would have left it (0600)."""
    monkeypatch.setenv("LLAMAFLEET_STATE", str(tmp_path / "state"))
    key = tmp_path / "state" / "clusters" / "seed" / "server.key"
    key.parent.mkdir(parents=True)
    key.write_text(SERVER_KEY + "\n")
    key.chmod(0o600)
    return key


def _token_file(path: Path, mode: int = 0o600) -> Path:
    path.write_text("s3cret\n")
    path.chmod(mode)
    return path


def test_seed_cluster_setup(tmp_path):
    setup = from_inventory(SEED, None, _token_file(tmp_path / "token"))
    assert setup.target_url == "http://192.168.86.29:8080"  # the target host's ssh address and port
    assert setup.proxy_url == "http://192.168.86.40:8000"
    assert setup.drafter_url == "http://192.168.86.36:8081"  # the first drafter
    assert setup.token == "s3cret"
    assert setup.modes == ["native", "auto"]  # no proxy path: the target has 1 slot (-np 1)
    assert "already runs llama.cpp's native speculation" in setup.notes[0]
    assert setup.server_key == SERVER_KEY  # the target and drafter are called with the cluster's key


def test_bench_needs_the_clusters_server_key(tmp_path, state):
    state.unlink()
    with pytest.raises(UserError, match=f"the cluster's server key is not on this machine \\({state}\\)"):
        from_inventory(SEED, None, _token_file(tmp_path / "token"))


def test_a_token_file_others_can_read_is_refused(tmp_path):
    token_file = _token_file(tmp_path / "token", 0o644)
    with pytest.raises(UserError, match=f"--token-file {token_file}: mode 0644 lets other users read"):
        from_inventory(SEED, None, token_file)


def test_token_file_on_the_proxy_host_is_named_when_missing():
    with pytest.raises(UserError, match="auth.token_file /usr/local/llamafleet/proxy.token"):
        from_inventory(SEED, None, None)


def test_unknown_proxy_service(tmp_path):
    with pytest.raises(UserError, match="services.nope: no proxy service"):
        from_inventory(SEED, "nope", None)


def test_inventory_without_a_proxy(tmp_path):
    text = SEED.read_text()
    cut = text[: text.index("  proxy:\n    role: proxy")]
    path = tmp_path / "no-proxy.yaml"
    path.write_text(cut)
    with pytest.raises(UserError, match=r"no-proxy.yaml: bench needs exactly one proxy service .*found: none"):
        from_inventory(path, None, None)


def test_cli_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "missing.yaml")]) == 1
    assert main(["bench", "--rig", str(SEED)]) == 1
    assert main(["bench", str(SEED), "--token-file", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "not both" in err and "--token-file" in err and "missing.yaml" in err


def test_mode_not_offered_is_named(tmp_path, capsys):
    # The example's proxy offers native and auto only; asking for proxy fails before any request is sent.
    # (Addresses moved to loopback all the same: a regression must not send traffic to a LAN.)
    inventory = tmp_path / "seed-loopback.yaml"
    inventory.write_text(SEED.read_text().replace("192.168.86.", "127.0.0."))
    token_file = _token_file(tmp_path / "token")
    assert main(["bench", str(inventory), "--token-file", str(token_file), "--modes", "proxy"]) == 1
    assert "path(s) proxy not offered" in capsys.readouterr().err


def test_output_folder_is_checked_before_the_run(tmp_path, capsys):
    assert main(["bench", "--rig", "--json", str(tmp_path / "no" / "such" / "dir" / "b.json")]) == 1
    assert "--json" in capsys.readouterr().err


@pytest.mark.slow
def test_a_rig_server_that_will_not_start_is_one_clear_error(tmp_path, capsys, llama_build, smollm2):
    not_a_model = tmp_path / "broken.gguf"
    not_a_model.write_bytes(b"this is not a GGUF file")
    assert main(["bench", "--rig", "--rig-target", str(not_a_model), "--log-dir", str(tmp_path / "logs")]) == 1
    err = capsys.readouterr().err
    assert "could not start the rig" in err and "target exited" in err and "Traceback" not in err
