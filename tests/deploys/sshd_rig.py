"""A real OpenSSH server for the deploy tests: one sshd process, and for each stand-in host its own
loopback address (127.0.0.2, 127.0.0.3, ...: all of 127/8 is local on Linux) and its own free port,
so services bound to "their host's address" are reachable across hosts as on a LAN. Keys and config
live in a temp folder."""

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


@dataclass
class Sshd:
    process: subprocess.Popen
    ports: list[int]
    addresses: list[str]
    key_file: Path
    known_hosts: Path
    user: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def start_sshd(folder: Path, hosts: int) -> Sshd:
    folder.mkdir(parents=True, exist_ok=True)
    host_key, client_key = folder / "host_ed25519", folder / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (folder / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    os.chmod(folder / "authorized_keys", 0o600)
    ports = [free_port() for _ in range(hosts)]
    addresses = [f"127.0.0.{i + 2}" for i in range(hosts)]
    config = folder / "sshd_config"
    config.write_text("\n".join([
        *(f"ListenAddress {a}:{p}" for a, p in zip(addresses, ports)),
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}",
        f"PidFile {folder / 'sshd.pid'}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "Subsystem sftp internal-sftp",
        "LogLevel ERROR",
    ]) + "\n")
    # pyinfra checks host keys; a private known_hosts keeps ~/.ssh untouched.
    public = host_key.with_suffix(".pub").read_text().split()
    known = folder / "known_hosts"
    known.write_text("".join(f"[{a}]:{p} {public[0]} {public[1]}\n" for a, p in zip(addresses, ports)))
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    log = folder / "sshd.log"
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited: {log.read_text()}")
        if all(_listening(a, p) for a, p in zip(addresses, ports)):
            return Sshd(process, ports, addresses, client_key, known, getpass.getuser(), log)
        time.sleep(0.1)
    process.terminate()
    raise TimeoutError(f"sshd did not listen on {ports}: {log.read_text()}")


def _listening(address: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((address, port)) == 0
