"""Secrets come only from files that no one but their owner can read (llamafleet/server_key.py): real
files with real modes, links, folders and special files; the cluster's server key is generated once,
complete or not at all, and a user's own key file is checked before it is used."""

from __future__ import annotations

import hashlib
import os
import stat
import threading

import pytest
from inventory_testlib import EXAMPLES

from llamafleet.config import load_inventory
from llamafleet.errors import UserError
from llamafleet.server_key import (
    STATE_ENV,
    ensure_server_key,
    host_key_path,
    key_digest,
    key_source,
    read_secret,
    server_key,
)


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv(STATE_ENV, str(tmp_path / "state"))
    return tmp_path / "state"


def _secret(path, text="s3cr3t-value-0123456789\n", mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def _inventory(tmp_path, key_file=None):
    text = (EXAMPLES / "local.yaml").read_text()
    if key_file is not None:
        text = text.replace("cluster: local\n", f"cluster: local\nsecurity: {{server_key_file: {key_file}}}\n")
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return load_inventory(path)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_secret_only_its_owner_can_read_is_read(tmp_path, mode):
    assert read_secret(_secret(tmp_path / "t", "  tok\n", mode), "auth.token_file") == "tok"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o620, 0o602, 0o610, 0o777])
def test_a_secret_others_may_read_or_change_is_refused(tmp_path, mode):
    path = _secret(tmp_path / "t", mode=mode)
    with pytest.raises(UserError) as err:
        read_secret(path, "auth.token_file")
    assert str(err.value) == (f"auth.token_file {path}: mode {mode:04o} lets other users read or change it; a secret "
                              f"must be in a file only its owner can read (chmod 600 {path})")
    assert "s3cr3t" not in str(err.value)


def test_a_link_is_judged_by_the_file_it_names(tmp_path):
    target = _secret(tmp_path / "real", mode=0o644)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(UserError, match="mode 0644"):
        read_secret(tmp_path / "link", "x")
    os.chmod(target, 0o600)
    assert read_secret(tmp_path / "link", "x") == "s3cr3t-value-0123456789"


def test_what_is_no_secret_file_is_one_clear_error(tmp_path):
    os.mkfifo(tmp_path / "fifo", 0o600)
    os.mkdir(tmp_path / "dir", 0o700)
    cases = {tmp_path / "missing": "No such file or directory", tmp_path / "fifo": "not a regular file",
             tmp_path / "dir": "not a regular file", _secret(tmp_path / "empty", "\n\n"): "the file is empty",
             _secret(tmp_path / "big", "x" * 5000): "5000 bytes"}
    (tmp_path / "latin1").write_bytes(b"caf\xe9")
    os.chmod(tmp_path / "latin1", 0o600)
    cases[tmp_path / "latin1"] = "not UTF-8"
    for path, said in cases.items():
        with pytest.raises(UserError, match=said):
            read_secret(path, "security.server_key_file")


def test_a_file_of_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")  # a failure under CI, where this runs as root
    path = _secret(tmp_path / "t")
    os.chown(path, 12345, 12345)
    with pytest.raises(UserError, match="owned by uid 12345"):
        read_secret(path, "x")


def test_the_cluster_key_is_generated_once_complete_and_private(tmp_path, state):
    inventory = _inventory(tmp_path)
    with pytest.raises(UserError, match="not on this machine"):  # doctor and bench never generate it
        server_key(inventory)
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(ensure_server_key(inventory))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    path = state / "clusters" / "local" / "server.key"
    assert paths == [path] * 8 and key_source(inventory) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    key = server_key(inventory)
    assert len(key) >= 40 and path.read_text() == key + "\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["server.key"]  # no temporary file left
    ensure_server_key(inventory)
    assert server_key(inventory) == key  # kept, never regenerated


def test_the_users_key_file_is_checked_and_never_generated(tmp_path, state):
    own = tmp_path / "own.key"
    inventory = _inventory(tmp_path, own)
    with pytest.raises(UserError, match=f"security.server_key_file {own}: No such file"):
        ensure_server_key(inventory)
    assert not state.exists()
    for bad in ("short\n", "two words here, not a key\n", "first-line-0123456789\nsecond-line-0123456789\n",
                "crlf-line-0123456789\r\n", "tab\tinside-0123456789\n", "#comment-0123456789abc\n"):
        _secret(own, bad)
        with pytest.raises(UserError, match="one line of 16 to 1024 printable characters"):
            ensure_server_key(inventory)
    _secret(own, "0123456789abcdef-own-key", mode=0o644)
    with pytest.raises(UserError, match="chmod 600"):
        ensure_server_key(inventory)
    os.chmod(own, 0o600)
    assert ensure_server_key(inventory) == own and server_key(inventory) == "0123456789abcdef-own-key"
    assert key_digest(own) == hashlib.sha256(own.read_bytes()).hexdigest()


def test_each_host_holds_the_key_under_its_install_dir(tmp_path):
    inventory = load_inventory(EXAMPLES / "seed-cluster.yaml")
    paths = {name: host_key_path(host) for name, host in inventory.hosts.items()}
    assert any(h.os.value == "windows" for h in inventory.hosts.values())
    for name, host in inventory.hosts.items():
        if host.os.value == "windows":  # a Windows path, with the host's own separators
            assert paths[name] == f"{host.install_dir}\\secrets\\llama-server.key"
        else:
            assert paths[name] == f"{host.install_dir}/secrets/llama-server.key"
