"""GPU driver and OS versions: pure parsers for the vendors' tools, and the facts that run them.

The HostState fact carries the same tools' raw output (``drivers`` section), parsed on the controller
with these parsers, so a deploy does not spend extra remote commands on them. The standalone facts
are for ad-hoc use (``pyinfra @host fact llamafleet.deploys.facts.drivers.NvidiaSmi``) and for specs.
"""

from __future__ import annotations

import csv
import json
import re

from pyinfra.api import FactBase

from llamafleet.config.models import METAL_MIN_MACOS  # the one definition, with its public source


def parse_nvidia_smi(output: str) -> dict | None:
    """``nvidia-smi --query-gpu=driver_version,name,memory.total --format=csv,noheader`` (Linux and
    Windows print the same). Returns {"driver": "550.120", "gpus": [{"name", "memory_mib"}]}."""
    rows = [r for r in csv.reader(line for line in output.splitlines() if line.strip()) if len(r) >= 3]
    if not rows:
        return None
    gpus = []
    for driver, name, memory in rows:
        mib = re.match(r"\s*(\d+)\s*MiB", memory)
        gpus.append({"name": name.strip(), "memory_mib": int(mib.group(1)) if mib else None})
    drivers = {r[0].strip() for r in rows}
    if len(drivers) != 1:
        raise ValueError(f"nvidia-smi reports several driver versions: {sorted(drivers)}")
    return {"driver": drivers.pop(), "gpus": gpus}


def parse_amd_smi_version(output: str) -> dict | None:
    """``amd-smi version --json`` (ROCm 6.x): the ROCm release and the amdgpu driver version.

    Older tools print one line, ``AMDSMI Tool: 24.6.3+9578815 | AMDSMI Library version: 24.6.3.0 |
    ROCm version: 6.2.4``; both shapes are accepted."""
    text = output.strip()
    if not text:
        return None
    if text.startswith(("[", "{")):
        data = json.loads(text)
        item = data[0] if isinstance(data, list) else data
        rocm = item.get("rocm_version")
        driver = item.get("amdgpu_version") or item.get("driver_version")
    else:
        fields = dict(part.split(":", 1) for part in text.split("|") if ":" in part)
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        rocm = fields.get("rocm version")
        driver = fields.get("amdgpu version")
    if not rocm or rocm.upper() == "N/A":
        return None
    return {"rocm": rocm, "driver": driver}


def parse_rocm_info_version(output: str) -> str | None:
    """``/opt/rocm/.info/version``: ``6.3.1-48`` -> ``6.3.1``."""
    match = re.match(r"\s*(\d+\.\d+(?:\.\d+)?)", output)
    return match.group(1) if match else None


def parse_rocm_smi_driver(output: str) -> str | None:
    """``rocm-smi --showdriverversion``: the kernel driver line."""
    match = re.search(r"Driver version:\s*(\S+)", output)
    return match.group(1) if match else None


def nvidia_version_from_windows(driver_version: str) -> str | None:
    """Windows reports NVIDIA drivers as ``32.0.15.6094``; the last five digits are ``560.94``."""
    digits = driver_version.replace(".", "")[-5:]
    if not digits.isdigit() or len(digits) < 5:
        return None
    return f"{int(digits[:3])}.{digits[3:]}"


def parse_windows_video_controllers(output: str) -> dict | None:
    """``Get-CimInstance Win32_VideoController | Select Name,DriverVersion | ConvertTo-Json``."""
    text = output.strip()
    if not text:
        return None
    data = json.loads(text)
    items = data if isinstance(data, list) else [data]
    nvidia = [i for i in items if "nvidia" in (i.get("Name") or "").lower()]
    if not nvidia:
        return None
    return {"driver": nvidia_version_from_windows(nvidia[0]["DriverVersion"]),
            "gpus": [{"name": i["Name"]} for i in nvidia]}


def parse_sw_vers(output: str) -> dict | None:
    """macOS ``sw_vers``: {"name", "version", "build"}."""
    fields = {}
    for line in output.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    if "ProductVersion" not in fields:
        return None
    return {"name": fields.get("ProductName"), "version": fields["ProductVersion"], "build": fields.get("BuildVersion")}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def metal_supported(macos_version: str) -> bool:
    return version_tuple(macos_version)[:2] >= METAL_MIN_MACOS


class NvidiaSmi(FactBase):
    """The NVIDIA driver version and GPUs (Linux or Windows)."""

    requires_command = "nvidia-smi"
    command = "nvidia-smi --query-gpu=driver_version,name,memory.total --format=csv,noheader"

    def process(self, output):
        return parse_nvidia_smi("\n".join(output))


class AmdSmiVersion(FactBase):
    requires_command = "amd-smi"
    command = "amd-smi version --json"

    def process(self, output):
        return parse_amd_smi_version("\n".join(output))


class RocmSmiDriver(FactBase):
    requires_command = "rocm-smi"
    command = "rocm-smi --showdriverversion"

    def process(self, output):
        return parse_rocm_smi_driver("\n".join(output))


class WindowsNvidiaDriver(FactBase):
    shell_executable = None
    command = "Get-CimInstance Win32_VideoController | Select-Object Name,DriverVersion | ConvertTo-Json"

    def process(self, output):
        return parse_windows_video_controllers("\n".join(output))


class MacosVersion(FactBase):
    requires_command = "sw_vers"
    command = "sw_vers"

    def process(self, output):
        return parse_sw_vers("\n".join(output))
