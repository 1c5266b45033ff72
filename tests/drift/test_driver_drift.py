"""Driver drift on each OS, from recorded tool outputs.

No GPU, Windows or macOS exists here, so these feed drift the outputs the deploy's own fact specs
hold (tests/deploys/specs/facts/drivers.*: nvidia-smi on Linux and Windows, amd-smi for ROCm,
sw_vers on macOS; each file says where its output comes from) through the HostState ``drivers``
section, keyed by tool as the host helper reports them, and check what drift says.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ruamel.yaml import YAML

from llamafleet.config import load_inventory
from llamafleet.deploys.plan import plan_host
from llamafleet.drift import driver_findings
from llamafleet.findings import Severity

SPECS = Path(__file__).resolve().parents[1] / "deploys" / "specs" / "facts"


def recorded(spec: str) -> str:
    """The raw tool output a deploy fact spec holds (e.g. ``drivers.NvidiaSmi/linux_two_gpus``)."""
    return yaml.safe_load((SPECS / f"{spec}.yaml").read_text())["output"]


def host(os_: str, backend: str, **extra) -> dict:
    root = "C:\\lf" if os_ == "windows" else "/opt/lf"
    manager = {"linux": "systemd", "windows": "windows-service", "macos": "launchd"}[os_]
    return {"connection": {"type": "ssh", "address": "10.0.0.9"}, "os": os_, "arch": "arm64" if os_ == "macos" else "x86_64",
            "backend": backend, "install": "source", "install_dir": root, "models_dir": root + ("\\models" if os_ == "windows" else "/models"),
            "service_manager": manager, **extra}


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    data = {
        "version": 1, "cluster": "drivers",
        "llama_cpp": {"build": "b11434", "source": {"file": "llama.cpp-b11434.tar.gz", "sha256": "0" * 64,
                                                    "url": "http://10.0.0.1/llama.cpp-b11434.tar.gz"}},
        "hosts": {
            "linux-nvidia": host("linux", "cuda", driver={"kind": "nvidia", "version": "550.120"},
                                 gpus=[{"vendor": "nvidia", "model": "RTX 3090", "vram_gb": 24}]),
            "linux-rocm": host("linux", "rocm", driver={"kind": "rocm", "version": "6.3.1"},
                               gpus=[{"vendor": "amd", "model": "RX 7900 XTX", "vram_gb": 24}]),
            "windows-nvidia": host("windows", "cuda", driver={"kind": "nvidia", "version": "566.36"},
                                   gpus=[{"vendor": "nvidia", "model": "RTX 4070", "vram_gb": 12}]),
            "mac": host("macos", "metal", macos_version="14.5", memory_gb=16,
                        gpus=[{"vendor": "apple", "model": "M2", "vram_gb": 16}]),
        },
    }
    path = tmp_path_factory.mktemp("drivers") / "inventory.yaml"
    with path.open("w") as out:
        YAML().dump(data, out)
    inventory = load_inventory(path)
    return {name: plan_host(inventory, name) for name in inventory.hosts}


CASES = [
    # (host, drivers section from recorded outputs, driver_pending, check, severity, actual, hint contains)
    ("linux-nvidia", {"nvidia-smi": "drivers.NvidiaSmi/linux_two_gpus"}, None,
     "driver nvidia", "ok", "550.120", ""),
    ("linux-nvidia", {"nvidia-smi": "drivers.NvidiaSmi/no_devices"}, None,
     "driver nvidia", "fail", "none running", "a deploy would install the nvidia driver 550.120"),
    ("windows-nvidia", {"nvidia-smi": "drivers.NvidiaSmi/windows_rtx4070"}, None,
     "driver nvidia", "fail", "560.94", "(then it needs a reboot)"),
    ("windows-nvidia", {"nvidia-smi": "drivers.NvidiaSmi/windows_rtx4070"}, {"kind": "nvidia", "version": "566.36"},
     "driver nvidia", "fail", "560.94", "waiting for a reboot"),
    ("linux-rocm", {"amd-smi": "drivers.AmdSmiVersion/json_rocm63"}, None, "driver rocm", "ok", "6.3.1", ""),
    ("linux-rocm", {"amd-smi": "drivers.AmdSmiVersion/text_rocm62"}, None,
     "driver rocm", "fail", "6.2.4", "a deploy would install the rocm driver 6.3.1"),
    ("mac", {"sw_vers": "drivers.MacosVersion/sonoma"}, None, "macOS for Metal", "ok", "14.5", ""),
    ("mac", {"sw_vers": "drivers.MacosVersion/monterey"}, None, "macOS for Metal", "fail", "12.7.4", "upgrade macOS"),
    ("mac", {"sw_vers": "drivers.MacosVersion/monterey"}, None, "macOS version", "warning", "12.7.4", "macos_version"),
]


@pytest.mark.parametrize("name, tools, pending, check, severity, actual, hint", CASES,
                         ids=[f"{c[0]}-{c[3]}-{c[5]}" for c in CASES])
def test_driver_drift_from_recorded_outputs(plans, name, tools, pending, check, severity, actual, hint):
    state = {"drivers": {tool: recorded(spec) for tool, spec in tools.items()}, "driver_pending": pending}
    findings = {f.check: f for f in driver_findings(plans[name], state)}
    finding = findings[check]
    assert (finding.host, finding.severity, finding.actual) == (name, Severity(severity), actual)
    assert hint in finding.hint
    if check.startswith("driver") and severity == "ok":
        assert finding.expected == actual
    if check == "macOS for Metal":
        assert finding.expected == ">= 13.3"


def test_unreadable_sw_vers_is_an_error(plans):
    findings = driver_findings(plans["mac"], {"drivers": {"sw_vers": None}})
    assert [(f.check, f.severity) for f in findings] == [("macOS version", Severity.error)]
