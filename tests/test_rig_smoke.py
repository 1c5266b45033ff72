"""Real parts: the pinned llama.cpp build and SmolLM2 complete a prompt over real HTTP."""

import json
import subprocess
import urllib.request

from llamafleet.rig import cache


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.load(resp)


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
    props = json.load(urllib.request.urlopen(f"{smollm2_server.url}/props", timeout=10))
    assert "build_info" in props
