"""A real OpenSSH server for the deploy tests: sshd, and for each stand-in host its own loopback
address (127.0.0.2, 127.0.0.3, ...: all of 127/8 is local on Linux) and its own free port, so
services bound to "their host's address" are reachable across hosts as on a LAN. Keys and config
live in a temp folder. One sshd listens on at most 16 addresses (OpenSSH's MAX_LISTEN_SOCKS), so
more hosts get more sshd processes sharing the same keys."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from llamafleet.rig.servers import free_port

SSHD = "/usr/sbin/sshd"


def unavailable_reason() -> str | None:
    if not Path(SSHD).exists():
        return f"{SSHD} is not installed (ci/system-deps.sh installs openssh-server)"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen is not installed"
    if os.geteuid() != 0:
        return "sshd needs root here (privilege separation directory /run/sshd)"
    return None


MAX_LISTEN_SOCKS = 16  # per sshd process (OpenSSH's sshd.c)


@dataclass
class Sshd:
    processes: list[subprocess.Popen]
    ports: list[int]
    addresses: list[str]
    key_file: Path
    known_hosts: Path
    user: str
    log: Path

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=10)


def start_sshd(folder: Path, hosts: int, *, startup_files: bool = True) -> Sshd:
    """``startup_files=False``: sessions skip the user's shell startup files. bash sources ~/.bashrc
    for a command over SSH only as a top-level shell; SHLVL=1 in the session makes it a nested one.
    The stand-in hosts all share this machine's cores, so a heavy ~/.bashrc (here: root's runs
    ``pyenv init``) costs the whole "fleet" at once what real hosts each pay on their own CPU."""
    folder.mkdir(parents=True, exist_ok=True)
    host_key, client_key = folder / "host_ed25519", folder / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (folder / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    os.chmod(folder / "authorized_keys", 0o600)
    ports = [free_port() for _ in range(hosts)]
    addresses = [f"127.0.0.{i + 2}" for i in range(hosts)]
    configs = []
    for first in range(0, hosts, MAX_LISTEN_SOCKS):
        config = folder / f"sshd_config.{first // MAX_LISTEN_SOCKS}"
        chunk = zip(addresses[first:first + MAX_LISTEN_SOCKS], ports[first:first + MAX_LISTEN_SOCKS])
        config.write_text("\n".join([
            *(f"ListenAddress {a}:{p}" for a, p in chunk),
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}",
            f"PidFile {config.with_suffix('.pid')}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "Subsystem sftp internal-sftp",
            "LogLevel ERROR",
            # Each address stands in for a machine with its own sshd: no shared limit on connections
            # still authenticating (the default, 10:30:100, drops some when many hosts connect at once).
            "MaxStartups 200",
            *([] if startup_files else ["SetEnv SHLVL=1"]),
        ]) + "\n")
        configs.append(config)
    # pyinfra checks host keys; a private known_hosts keeps ~/.ssh untouched.
    public = host_key.with_suffix(".pub").read_text().split()
    known = folder / "known_hosts"
    known.write_text("".join(f"[{a}]:{p} {public[0]} {public[1]}\n" for a, p in zip(addresses, ports)))
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    log = folder / "sshd.log"
    with log.open("wb") as out:
        processes = [subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT)
                     for config in configs]
    sshd = Sshd(processes, ports, addresses, client_key, known, getpass.getuser(), log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            sshd.stop()
            raise RuntimeError(f"sshd exited: {log.read_text()}")
        if all(_listening(a, p) for a, p in zip(addresses, ports)):
            return sshd
        time.sleep(0.1)
    sshd.stop()
    raise TimeoutError(f"sshd did not listen on {ports}: {log.read_text()}")


def _listening(address: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((address, port)) == 0


def running_sshd(tmp_path_factory, hosts: int = 3):
    """A module fixture's body: a real sshd standing in for ``hosts`` hosts, skipped (a failure under
    CI) where this machine has none."""
    import pytest

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no real sshd: {reason}")
    server = start_sshd(tmp_path_factory.mktemp("sshd"), hosts=hosts)
    yield server
    server.stop()
