"""Real parts: the rig's real llama.cpp builds and SmolLM2 complete prompts over real HTTP."""

import subprocess
import tarfile

import pytest

from llamafleet.config import builds
from llamafleet.llama_client import LlamaClient
from llamafleet.rig import cache, mirror, models, servers


def _post(url: str, body: dict) -> dict:
    return LlamaClient(60.0).json(url, data=body)


def test_binaries_built_from_pinned_source(llama_build):
    env = {"LD_LIBRARY_PATH": str(llama_build.bin_dir)}
    out = subprocess.run([str(llama_build.server), "--version"], capture_output=True, text=True, env=env)
    assert out.returncode == 0
    assert "version:" in (out.stdout + out.stderr)
    assert llama_build.rpc_server.exists()
    assert llama_build.root.name == cache.LLAMA_CPP_BUILD


def test_smollm2_completes_a_prompt(smollm2_server):
    result = _post(f"{smollm2_server.url}/completion",
                   {"prompt": "The capital of France is", "n_predict": 8, "temperature": 0})
    assert result["content"].strip()
    assert result["tokens_predicted"] == 8
    props = LlamaClient(10.0).json(f"{smollm2_server.url}/props")
    assert "build_info" in props


# --- each of the rig's real builds ---------------------------------------------------------------


@pytest.fixture(params=sorted(cache.RIG_BUILDS))
def rig_build(request, llama_build, b8942_build) -> cache.LlamaCpp:
    return {"b11434": llama_build, "b8942": b8942_build}[request.param]


def test_each_build_speculates_natively_with_its_own_flags(rig_build, smollm2, log_dir):
    """The draft on the build's own RPC worker, with the draft flags that build spells its own way
    (b11434: --spec-type draft-simple --spec-draft-n-max; b8942: --draft-max); /props reports the
    build_info its capability data expects."""
    caps = builds.caps_for(rig_build.build)
    assert rig_build.rpc_server.name == caps.rpc_binary
    with servers.running(servers.start_rpc_server(rig_build, log_dir=log_dir)) as rpc:
        args = ["-c", "1024", *models.native_target_args(smollm2, f"127.0.0.1:{rpc.port}", 4, build=rig_build.build)]
        with servers.running(servers.start_llama_server(rig_build, smollm2, log_dir=log_dir, args=args,
                                                        name=f"native-{rig_build.build}")) as target:
            result = _post(f"{target.url}/completion", {"prompt": "The capital of France is", "n_predict": 16,
                                                        "temperature": 0})
            props = LlamaClient(10.0).json(f"{target.url}/props")
    assert result["timings"]["draft_n"] > 0, result["timings"]
    assert props["build_info"] == caps.props_build_info


def test_release_archive_carries_the_builds_own_binaries(rig_build, tmp_path):
    caps = builds.caps_for(rig_build.build)
    archive = mirror.pack_release_archive(rig_build, tmp_path)
    assert archive.name == mirror.release_archive_name(rig_build.build)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    top = f"llama-{rig_build.build}"
    assert {f"{top}/llama-server", f"{top}/{caps.rpc_binary}"} <= names
    assert not {f"{top}/{name}" for name in builds.RPC_BINARIES if name != caps.rpc_binary} & names
