"""drift's bad input: a clear message and exit 1, never a traceback (no hosts needed)."""

from __future__ import annotations

from ruamel.yaml import YAML

from llamafleet.cli import main


def _inventory(tmp_path):
    data = {"version": 1, "cluster": "inputs",
            "llama_cpp": {"build": "b11434", "mirror": "http://127.0.0.1:1",
                          "releases": [{"file": "llama-b11434-bin-ubuntu-x64.tar.gz", "os": "linux", "arch": "x86_64",
                                        "backend": "cpu", "sha256": "0" * 64}]},
            "hosts": {"node": {"connection": {"type": "ssh", "address": "127.0.0.1", "port": 1}, "os": "linux",
                               "install_dir": "/srv/lf", "models_dir": "/srv/lf/models",
                               "service_manager": "supervisord"}}}
    path = tmp_path / "cluster.yaml"
    with path.open("w") as out:
        YAML().dump(data, out)
    return path


def test_invalid_inventory_is_exit_1_naming_the_place(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ncluster: ok\nllama_cpp: {build: 11434}\nhosts: {}\n")
    assert main(["drift", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("llamafleet drift: ") and f"{bad}:3:" in err and "Traceback" not in err


def test_bad_data_and_limit_are_exit_1(tmp_path, capsys):
    inventory = _inventory(tmp_path)
    assert main(["drift", str(inventory), "--data", "novalue"]) == 1
    assert "--data novalue: expected KEY=VALUE" in capsys.readouterr().err
    assert main(["drift", str(inventory), "--limit", "windows"]) == 1  # an empty group checks nothing
    assert "--limit windows: matches no host and no group" in capsys.readouterr().err


def test_a_refused_ssh_port_is_exit_1_naming_the_host(tmp_path, capsys):
    """Port 1 on loopback refuses at once: the host is named, with how drift tried to reach it."""
    assert main(["drift", str(_inventory(tmp_path)), "--json"]) == 1
    out = capsys.readouterr().out
    assert '"host": "node"' in out and '"check": "connect"' in out and "root@127.0.0.1:1" in out
