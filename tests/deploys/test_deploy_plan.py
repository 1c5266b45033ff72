"""The pure parts of the deploy: the plan (build, cmake options, argv, derived paths) and rendering
(systemd, launchd, WinSW, supervisord), for every OS, backend and service manager."""

from __future__ import annotations

import plistlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from llamafleet.config import load_inventory
from llamafleet.config.models import OS, Backend, Inventory, ServiceManager
from llamafleet.deploys.plan import plan_caps, plan_host, upstream_release_name
from llamafleet.deploys.render import render_unit, rendered_files
from llamafleet.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "inventory" / "examples" / "seed-cluster.yaml"


@pytest.fixture(scope="module")
def seed() -> Inventory:
    return load_inventory(SEED)


@pytest.mark.parametrize("os_,arch,backend,variant,name", [
    (OS.linux, "x86_64", Backend.cpu, None, "llama-b11434-bin-ubuntu-x64.tar.gz"),
    (OS.linux, "arm64", Backend.cpu, None, "llama-b11434-bin-ubuntu-arm64.tar.gz"),
    (OS.linux, "x86_64", Backend.vulkan, None, "llama-b11434-bin-ubuntu-vulkan-x64.tar.gz"),
    (OS.linux, "x86_64", Backend.cuda, "12.8", "llama-b11434-bin-ubuntu-cuda-12.8-x64.tar.gz"),
    (OS.linux, "x86_64", Backend.cuda, "13.4", "llama-b11434-bin-ubuntu-cuda-13.4-x64.tar.gz"),
    (OS.linux, "x86_64", Backend.rocm, "10.0", "llama-b11434-bin-ubuntu-rocm-10.0-x64.tar.gz"),
    (OS.macos, "arm64", Backend.metal, None, "llama-b11434-bin-macos-arm64.tar.gz"),
    (OS.macos, "x86_64", Backend.cpu, None, "llama-b11434-bin-macos-x64.tar.gz"),
    (OS.windows, "x86_64", Backend.cpu, None, "llama-b11434-bin-win-cpu-x64.zip"),
    (OS.windows, "x86_64", Backend.cuda, "12.4", "llama-b11434-bin-win-cuda-12.4-x64.zip"),
    (OS.windows, "arm64", Backend.vulkan, None, "llama-b11434-bin-win-vulkan-arm64.zip"),
    (OS.windows, "x86_64", Backend.rocm, "10.0", "llama-b11434-bin-win-rocm-10.0-x64.zip"),
])
def test_release_names_are_the_ones_upstream_publishes(llama_build, os_, arch, backend, variant, name):
    """Checked against the pinned tree's own release workflow (the asset list it publishes)."""
    assert upstream_release_name("b11434", os_, arch, backend, variant) == name
    published = (llama_build.src / ".github" / "workflows" / "release-publish.yml").read_text()
    assert name.replace("b11434", "${{ steps.tag.outputs.name }}") in published


def test_no_release_for_metal_on_linux():
    with pytest.raises(UserError, match="no metal release for linux"):
        upstream_release_name("b1", OS.linux, "x86_64", Backend.metal)


def _source_host(seed: Inventory, os_: str, backend: str) -> Inventory:
    data = seed.model_dump(mode="json")
    data["hosts"]["akiva"].update(os=os_, backend=backend, install="source", driver=None, gpus=[])
    if os_ == "macos":
        data["hosts"]["akiva"].update(service_manager="launchd", arch="arm64")
    return Inventory.model_validate(data)


@pytest.mark.parametrize("os_,backend,expected", [
    ("linux", "cuda", ["-DGGML_CUDA=ON"]),
    ("linux", "rocm", ["-DGGML_HIP=ON", "-DAMDGPU_TARGETS=gfx1100"]),
    ("linux", "vulkan", ["-DGGML_VULKAN=ON"]),
    ("linux", "cpu", []),
    ("macos", "metal", ["-DGGML_METAL=ON"]),
    ("macos", "cpu", ["-DGGML_METAL=OFF"]),
])
def test_source_builds_get_cmake_options_per_backend(seed, os_, backend, expected):
    plan = plan_host(_source_host(seed, os_, backend), "akiva")
    assert plan.build.method == "source" and plan.build.build_id == f"b8111-{backend}-src"
    assert plan.build.artifacts[0].file == "llama.cpp-b8111.tar.gz"
    # RPC always, and the pinned build number so the binary reports b8111 without git metadata.
    assert list(plan.build.cmake_options) == ["-DGGML_RPC=ON", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                                             "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_NUMBER=8111", *expected]


def test_windows_cuda_installs_llama_and_cudart_zips_into_one_build(seed):
    plan = plan_host(seed, "desktop")
    assert [a.file for a in plan.build.artifacts] == ["llama-b8111-bin-win-cuda-12.4-x64.zip",
                                                      "cudart-llama-bin-win-cuda-12.4-x64.zip"]
    assert plan.build.artifacts[0].url == "http://192.168.86.40:8765/llama.cpp/llama-b8111-bin-win-cuda-12.4-x64.zip"
    # desktop runs an RPC worker, but b8111 is not known here: its worker's name is read from the
    # installed build (the check after the install), not demanded of the archive under a guessed name.
    assert plan.caps_note is not None and plan.build.binaries == ("llama-server",)
    data = seed.model_dump(mode="json", exclude_none=True)
    data["llama_cpp"]["build"] = "b8942"
    assert plan_host(Inventory.model_validate(data), "desktop").build.binaries == ("llama-server", "rpc-server")


def test_missing_release_names_the_upstream_file(seed):
    data = seed.model_dump(mode="json")
    data["hosts"]["akiva"]["install"] = "release"
    with pytest.raises(UserError, match=r"hosts.akiva: no llama_cpp.releases entry for linux/x86_64/rocm "
                                        r"\(upstream publishes it as llama-b8111-bin-ubuntu-rocm-10.0-x64.tar.gz\)"):
        plan_host(Inventory.model_validate(data), "akiva")


def test_native_speculation_target_flags(seed):
    """The four-machine example pinned to b11434 (shipped data): the exact command line in b11434's spellings."""
    data = seed.model_dump(mode="json", exclude_none=True)
    data["llama_cpp"]["build"] = "b11434"
    target = next(s for s in plan_host(Inventory.model_validate(data), "akiva").services if s.service == "target")
    assert list(target.argv) == [
        "/opt/llamafleet/builds/b11434-rocm-src/llama-server",
        "-m", "/opt/llamafleet/models/gpt-oss-120b-UD-Q4_K_XL-00001-of-00002.gguf",
        "--host", "192.168.86.29", "--port", "8080", "-c", "8192", "-np", "1", "-ngl", "26", "--no-webui",
        "--api-key-file", "/opt/llamafleet/secrets/llama-server.key", "-nr",
        "--rpc", "192.168.86.36:50052",
        "-md", "/opt/llamafleet/models/gpt-oss-20b-mxfp4.gguf", "-devd", "RPC0", "-ngld", "99",
        "--spec-type", "draft-simple", "--spec-draft-n-max", "8", "--spec-draft-n-min", "0",
        "-dev", "ROCm0", "--jinja"]
    assert ("LD_LIBRARY_PATH", "/opt/llamafleet/builds/b11434-rocm-src") in target.env


@pytest.mark.parametrize("build", ["b11434", "b8942"])
def test_every_llama_server_reads_the_cluster_key_from_its_file(seed, build, monkeypatch, tmp_path):
    """Targets, plain sidecars and drafters on every host, Windows included, get --api-key-file (the
    build's own spelling) naming the host's copy of the key (a Windows path there); the host's secrets
    copy it from the local key file; the proxy's config names the same file."""
    monkeypatch.setenv("LLAMAFLEET_STATE", str(tmp_path))
    from llamafleet.deploys.render import rendered_files

    data = seed.model_dump(mode="json", exclude_none=True)
    data["llama_cpp"]["build"] = build
    inventory = Inventory.model_validate(data)
    local = str(tmp_path / "clusters" / "seed" / "server.key")
    servers, windows_servers = 0, 0
    for name, host in inventory.hosts.items():
        plan = plan_host(inventory, name)
        sep = "\\" if host.os.value == "windows" else "/"
        key_file = sep.join([host.install_dir, "secrets", "llama-server.key"])
        copied = [s for s in plan.secrets if s.source]
        for svc in plan.services:
            if svc.role in ("target", "target-plain", "drafter"):
                servers += 1
                windows_servers += host.os.value == "windows"
                argv = list(svc.argv)
                assert argv[argv.index("--api-key-file") + 1] == key_file, argv
            assert "--api-key" not in svc.argv
        readers = [s for s in plan.services if s.role in ("target", "target-plain", "drafter", "proxy")]
        if not readers:
            assert copied == []
        else:
            assert [(s.path, s.source) for s in copied] == [(key_file, local)]
        for service in plan.proxy_services:
            config = rendered_files(plan)[plan.proxy_config_path(service)][0]
            assert f'"server_key_file": "{key_file}"' in config
    assert servers >= 3 and windows_servers >= 1


def test_native_draft_model_is_placed_on_the_target_host(seed):
    plan = plan_host(seed, "akiva")
    assert {m.path for m in plan.models} >= {"/opt/llamafleet/models/gpt-oss-20b-mxfp4.gguf"}


def test_rpc_worker_binds_only_its_declared_address(seed):
    rpc = next(s for s in plan_host(seed, "desktop").services if s.role == "rpc-worker")
    rpc_binary = plan_caps("b8111")[0].rpc_binary  # b8111 is not known: the nearest known build's name
    assert list(rpc.argv) == [f"C:\\llamafleet\\builds\\b8111-cuda\\{rpc_binary}.exe", "-H", "192.168.86.36",
                              "-p", "50052", "-d", "CUDA0", "-c"]  # the tensor cache, on by default


def test_model_paths_derive_from_models_dir(seed):
    plan = plan_host(seed, "desktop")
    assert [m.path for m in plan.models] == ["C:\\llamafleet\\models\\gpt-oss-20b-mxfp4.gguf"]


def test_launchd_plist_parses_with_the_needed_keys(seed):
    plan = plan_host(seed, "m2-air")
    svc = plan.services[0]
    plist = plistlib.loads(render_unit(plan, svc).encode())
    assert plist["Label"] == "org.llamafleet.m2-drafter"
    assert plist["ProgramArguments"] == list(svc.argv)
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["UserName"] == "harold"
    assert plist["EnvironmentVariables"] == {"DYLD_LIBRARY_PATH": "/usr/local/llamafleet/builds/b8111-metal"}
    assert plist["StandardOutPath"].startswith("/usr/local/llamafleet/logs/")
    assert plan.unit_path(svc) == "/Library/LaunchDaemons/org.llamafleet.m2-drafter.plist"


# WinSW v2 XML (doc/xmlConfigFile.md): <service> with id, name, executable required; arguments,
# onfailure (action=restart|reboot|none, delay), logpath, log mode among the optional elements.
WINSW_ELEMENTS = {"id", "name", "description", "executable", "arguments", "workingdirectory", "env", "startmode",
                  "onfailure", "resetfailure", "stoptimeout", "logpath", "log"}


def test_winsw_xml_follows_the_documented_format(seed):
    plan = plan_host(seed, "desktop")
    for svc in plan.services:
        root = ET.fromstring(render_unit(plan, svc))
        assert root.tag == "service"
        assert {child.tag for child in root} <= WINSW_ELEMENTS
        assert root.findtext("id") == svc.unit_name
        assert root.findtext("executable") == svc.argv[0]
        assert root.findtext("arguments").split() == list(svc.argv[1:])
        assert root.findtext("startmode") == "Automatic"
        assert all(f.get("action") == "restart" for f in root.findall("onfailure"))
        assert root.find("log").get("mode") == "roll-by-size"
        assert plan.unit_path(svc) == f"C:\\llamafleet\\services\\{svc.unit_name}\\{svc.unit_name}.xml"


def test_supervisord_program_and_systemd_unit(seed):
    plan = plan_host(seed, "akiva")
    target = next(s for s in plan.services if s.service == "target")
    program = render_unit(plan, target, ServiceManager.supervisord)
    assert "[program:llamafleet-target]\n" in program
    assert 'environment=LD_LIBRARY_PATH="/opt/llamafleet/builds/b8111-rocm-src"' in program
    unit = render_unit(plan, target)
    assert "ExecStart=/opt/llamafleet/builds/b8111-rocm-src/llama-server -m " in unit
    assert "User=harold\n" in unit and "Restart=on-failure\n" in unit


def test_proxy_config_names_the_token_file_never_a_token(seed):
    plan = plan_host(seed, "mac-mini")
    files = rendered_files(plan)
    config = files["/usr/local/llamafleet/etc/proxy.json"][0]
    assert '"token_file"' in config or '"token_env"' in config
    assert plan.services[0].argv[1:] == ("proxy", "--config", "/usr/local/llamafleet/etc/proxy.json")


def test_host_changes_for_a_windows_host_from_its_state(seed):
    """The Windows desktop after a deploy (state as lf_host.ps1 reports it): only the stopped drafter
    and the files that differ are changes."""
    import yaml

    from llamafleet.deploys.deploy import host_changes

    spec = Path(__file__).parent / "specs" / "facts" / "host_state.WindowsHostState" / "desktop_cuda.yaml"
    state = yaml.safe_load(spec.read_text())["fact"]
    plan = plan_host(seed, "desktop")
    state["services"]["winsw"] = {"llamafleet-desktop-rpc": "Running", "llamafleet-desktop-drafter": "Stopped"}
    changes = host_changes(plan, state)
    assert changes.stopped == ["llamafleet-desktop-drafter"]
    assert changes.build is not None  # the recorded binaries do not match the recorded hashes here
    assert plan.helper_path == "C:\\llamafleet\\lib\\lf_host.ps1" and plan.helper_path in changes.files


def _fresh_state(plan) -> dict:
    """A host with nothing installed (what the state script reports on first contact)."""
    from llamafleet.deploys.operations import proxy
    from llamafleet.deploys.operations.common import sha256_text

    files = {}
    if plan.proxy_services:  # an up-to-date venv, so the test does not build a wheel
        files[plan.path("venv", "llamafleet-wheel.json")] = {"sha256": sha256_text(proxy.record_text())}
    return {"install": {"current": None, "builds": [], "record": None, "version": None, "binaries": {}},
            "models": {}, "files": files, "services": {}, "disk_free": 1 << 50, "driver_pending": None,
            "drivers": {"sw_vers": "ProductName:\tmacOS\nProductVersion:\t15.3\nBuildVersion:\t24D60\n"},
            "os_release": {"ID": "ubuntu", "ID_LIKE": "debian", "VERSION_CODENAME": "noble"}}


def _commands(plan, state) -> list[str]:
    from deploy_spec_runner import command_json
    from llamafleet.deploys.deploy import planned_operations

    out = []
    for planned in planned_operations(plan, state):
        if planned.when == "failed":
            continue  # rollback and report: only after a failed readiness
        out += [c if isinstance(c, str) else f"{c[0]} {c[1] if c[0] == 'function' else c[2]}"
                for c in map(command_json, planned.operation.commands(**planned.kwargs))]
    return out


def test_first_deploy_of_the_seed_cluster_per_os(seed):
    """Every seed host from nothing: the whole operation sequence renders, in its own OS's shell."""
    windows = _commands(plan_host(seed, "desktop"), _fresh_state(plan_host(seed, "desktop")))
    assert not any(c.startswith(("mkdir -p", "python3", "chmod", "supervisorctl", "systemctl")) for c in windows)
    assert not any('"' in c for c in windows)  # Windows OpenSSH's powershell -c strips double quotes
    assert any(c.startswith("& 'C:\\llamafleet\\lib\\lf_host.ps1' install ") for c in windows)
    assert "& 'C:\\llamafleet\\services\\llamafleet-desktop-rpc\\llamafleet-desktop-rpc.exe' install" in windows
    assert any("Get-AuthenticodeSignature" in c for c in windows)  # the pinned NVIDIA driver

    akiva = _commands(plan_host(seed, "akiva"), _fresh_state(plan_host(seed, "akiva")))
    assert "DEBIAN_FRONTEND=noninteractive apt-get install -y -q amdgpu-dkms rocm" in akiva
    assert any('"method": "source"' in c and "-DGGML_HIP=ON" in c for c in akiva)
    assert akiva[-3:-1] == ["systemctl enable llamafleet-target.service", "systemctl restart llamafleet-target.service"]

    mini = _commands(plan_host(seed, "mac-mini"), _fresh_state(plan_host(seed, "mac-mini")))
    assert "launchctl bootstrap system /Library/LaunchDaemons/org.llamafleet.proxy.plist" in mini
    assert "upload /usr/local/llamafleet/etc/proxy.json" in mini


def test_macos_older_than_metals_minimum_is_refused(seed):
    from llamafleet.deploys.deploy import planned_operations

    state = _fresh_state(plan_host(seed, "m2-air"))
    state["drivers"]["sw_vers"] = "ProductName:\tmacOS\nProductVersion:\t12.7.4\nBuildVersion:\t21H1123\n"
    with pytest.raises(UserError, match=r"hosts.m2-air: macOS 12.7.4 is older than 13.3"):
        planned_operations(plan_host(seed, "m2-air"), state)


def test_a_deploy_time_error_is_one_clear_line_not_a_traceback():
    import os
    import subprocess
    import sys

    env = {**os.environ, "LLAMAFLEET_INVENTORY": str(SEED)}
    result = subprocess.run([str(Path(sys.executable).with_name("pyinfra")), "@local", "deploys/cluster.py", "--dry",
                             "--data", "llamafleet_host=nosuch"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "llamafleet deploy: host 'nosuch' is not in the inventory (hosts: akiva, desktop, m2-air, mac-mini)" \
        in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
