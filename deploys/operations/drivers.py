"""Pinned GPU drivers: NVIDIA (Linux distribution packages, Windows installer) and ROCm (AMD's repo).

The running version comes from the HostState ``drivers`` section, parsed with the tested parsers in
:mod:`llamafleet.deploys.facts.drivers`. A driver change needs a reboot: the deploy writes a marker
(``state/driver-pending.json``), reports "reboot required", and reboots only when the host's
``allow_reboot`` is true. While the marker names the pinned version, later runs only report.
"""

from __future__ import annotations

import json
import shlex

from pyinfra import logger

from llamafleet.config.models import OS, Backend
from llamafleet.deploys.facts.drivers import (
    METAL_MIN_MACOS,
    metal_supported,
    parse_amd_smi_version,
    parse_nvidia_smi,
    parse_rocm_info_version,
    parse_sw_vers,
)
from llamafleet.deploys.operations.common import deploy_operation, ps_quote
from llamafleet.errors import UserError

NVIDIA_WINDOWS_INSTALLER = "{version}-desktop-win10-win11-64bit-international-dch-whql.exe"
ROCM_REPO = "https://repo.radeon.com"


def running_version(kind: str, drivers: dict) -> str | None:
    if kind == "nvidia":
        parsed = parse_nvidia_smi(drivers.get("nvidia-smi") or "")
        return parsed["driver"] if parsed else None
    parsed = parse_rocm_info_version(drivers.get("/opt/rocm/.info/version") or "")
    if parsed:
        return parsed
    amd = parse_amd_smi_version(drivers.get("amd-smi") or "")
    return amd["rocm"] if amd else None


def linux_install_commands(kind: str, version: str, os_release: dict) -> list[str]:
    """Package commands that install exactly ``version`` and hold it there."""
    distro = (os_release.get("ID") or "").lower()
    like = (os_release.get("ID_LIKE") or "").lower()
    codename = os_release.get("VERSION_CODENAME") or ""
    apt = distro in ("debian", "ubuntu") or "debian" in like or "ubuntu" in like
    if kind == "nvidia":
        if apt:
            package = f"nvidia-driver-{version.split('.')[0]}" if distro == "ubuntu" or "ubuntu" in like else "nvidia-driver"
            return ["apt-get update -q",
                    "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "
                    + shlex.quote(f"{package}={version}-*"),
                    f"apt-mark hold {shlex.quote(package)}"]
        return [f"dnf install -y {shlex.quote(f'nvidia-driver-3:{version}*')}", "dnf versionlock add nvidia-driver"]
    if not apt:
        raise UserError(f"ROCm {version}: only Ubuntu/Debian hosts are supported through AMD's apt repository "
                        f"(found {distro or 'an unknown distribution'})")
    sources = (f"deb [arch=amd64 signed-by=/etc/apt/keyrings/rocm.gpg] {ROCM_REPO}/rocm/apt/{version} {codename} main\n"
               f"deb [arch=amd64 signed-by=/etc/apt/keyrings/rocm.gpg] {ROCM_REPO}/amdgpu/{version}/ubuntu {codename} main\n")
    pin = "Package: *\nPin: origin repo.radeon.com\nPin-Priority: 600\n"
    return ["mkdir -p /etc/apt/keyrings",
            f"curl -fsSL {ROCM_REPO}/rocm/rocm.gpg.key | gpg --dearmor --yes -o /etc/apt/keyrings/rocm.gpg",
            f"printf %s {shlex.quote(sources)} > /etc/apt/sources.list.d/rocm.list",
            f"printf %s {shlex.quote(pin)} > /etc/apt/preferences.d/rocm-pin-600",
            "apt-get update -q",
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q amdgpu-dkms rocm"]


def windows_install_commands(version: str, mirror: str | None, install_dir: str) -> list[str]:
    if not mirror:
        raise UserError("the NVIDIA driver for Windows is downloaded from llama_cpp.mirror; set it")
    installer = NVIDIA_WINDOWS_INSTALLER.format(version=version)
    path = f"{install_dir}\\downloads\\{installer}"
    return [f"New-Item -ItemType Directory -Force -Path {ps_quote(install_dir + chr(92) + 'downloads')} | Out-Null",
            f"Invoke-WebRequest -UseBasicParsing -Uri {ps_quote(mirror.rstrip('/') + '/' + installer)} -OutFile {ps_quote(path)}",
            # NVIDIA publishes no checksums; the installer's Authenticode signature must be NVIDIA's.
            f"$s = Get-AuthenticodeSignature {ps_quote(path)}; if ($s.Status -ne 'Valid' -or "
            f"$s.SignerCertificate.Subject -notmatch 'NVIDIA Corporation') {{ throw {ps_quote(f'llamafleet: {installer} is not signed by NVIDIA')} }}",
            f"$p = Start-Process -Wait -PassThru -FilePath {ps_quote(path)} -ArgumentList '-s','-noreboot','-noeula'; "
            "if ($p.ExitCode -ne 0) { throw ('llamafleet: NVIDIA installer exited with ' + $p.ExitCode) }"]


def marker_commands(windows: bool, install_dir: str, kind: str, version: str) -> list[str]:
    body = json.dumps({"kind": kind, "version": version})
    if windows:  # no double quotes in Windows commands (see common.ps_b64)
        folder = install_dir + "\\state"
        return [f"New-Item -ItemType Directory -Force -Path {ps_quote(folder)} | Out-Null",
                f"@{{kind={ps_quote(kind)}; version={ps_quote(version)}}} | ConvertTo-Json -Compress | "
                f"Set-Content -Path {ps_quote(folder + chr(92) + 'driver-pending.json')}"]
    return [f"mkdir -p {shlex.quote(install_dir + '/state')}",
            f"printf %s {shlex.quote(body)} > {shlex.quote(install_dir + '/state/driver-pending.json')}"]


def reboot_command(windows: bool) -> str:
    return "Restart-Computer -Force" if windows else "shutdown -r +1 'llamafleet: GPU driver changed'"


@deploy_operation
def driver(host_name: str, kind: str, version: str, os_name: str, drivers: dict, pending: dict | None,
           os_release: dict, allow_reboot: bool, install_dir: str, mirror: str | None = None):
    """Install the pinned ``kind`` driver ``version`` when the running one differs."""
    os_ = OS(os_name)
    running = running_version(kind, drivers)
    if running == version:
        return
    windows = os_ is OS.windows
    wanted = {"kind": kind, "version": version}
    if pending != wanted:
        commands = (windows_install_commands(version, mirror, install_dir) if windows
                    else linux_install_commands(kind, version, os_release))
        yield from commands
        yield from marker_commands(windows, install_dir, kind, version)
    if allow_reboot:
        yield reboot_command(windows)
    else:
        logger.warning(f"{host_name}: reboot required: {kind} driver {version} is installed but "
                       f"{running or 'no driver'} is running (set allow_reboot: true to let the deploy reboot)")


def check_macos(host_name: str, backend: Backend, declared: str | None, drivers: dict) -> None:
    parsed = parse_sw_vers(drivers.get("sw_vers") or "")
    if parsed is None:
        raise UserError(f"hosts.{host_name}: could not read the macOS version (sw_vers)")
    if backend is Backend.metal and not metal_supported(parsed["version"]):
        minimum = ".".join(map(str, METAL_MIN_MACOS))
        raise UserError(f"hosts.{host_name}: macOS {parsed['version']} is older than {minimum}, the minimum for "
                        "llama.cpp's Metal build; upgrade macOS or use backend: cpu")
    if declared and declared != parsed["version"]:
        logger.warning(f"{host_name}: inventory says macOS {declared}, the host runs {parsed['version']}")


def planned(plan, state: dict) -> list[tuple[str, object, dict]]:
    """The driver operation for this host, if it pins one (macOS hosts are checked, not changed)."""
    host = plan.host
    drivers = state.get("drivers", {})
    if host.os is OS.macos:
        check_macos(plan.name, host.backend, host.macos_version, drivers)
    if host.driver is None:
        return []
    return [(f"{host.driver.kind} driver {host.driver.version}", driver, {
        "host_name": plan.name, "kind": host.driver.kind, "version": host.driver.version, "os_name": host.os.value,
        "drivers": drivers, "pending": state.get("driver_pending"), "os_release": state.get("os_release", {}),
        "allow_reboot": host.allow_reboot, "install_dir": host.install_dir, "mirror": plan.inventory.llama_cpp.mirror})]
