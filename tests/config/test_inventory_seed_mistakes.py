"""Each classic mistake of a hand-set-up cluster (three builds side by side, a hand-typed model path,
``--np``, a Q8_0 draft on a 16 GB M2, a MoE target split over RPC onto a 12 GB card), written into the
(otherwise valid) four-machine example inventory/examples/seed-cluster.yaml, fails ``llamafleet
validate`` with its own code at the line of the mistake."""

from __future__ import annotations

import re

from inventory_testlib import edit, line_of, run_cli

M2 = "  m2-air:\n    connection: {type: ssh, address: 192.168.86.41, user: harold}\n"


def _errors(path) -> tuple[int, list[str]]:
    result = run_cli("validate", str(path))
    out = result.stdout + result.stderr
    assert "Traceback" not in out
    return result.returncode, [line for line in out.splitlines() if re.search(r":\d+:\d+ LF\d{3} ", line)]


def _finding(lines: list[str], code: str, line: int) -> str:
    matches = [ln for ln in lines if re.search(rf":{line}:\d+ {code} ", ln)]
    assert matches, f"no {code} at line {line} in:\n" + "\n".join(lines)
    return matches[0]


def test_three_builds(write, seed_text):
    text = edit(seed_text, "    install: source\n", "    install: source\n    llama_cpp_build: b8112\n")
    text = edit(text, '    driver: {kind: nvidia, version: "576.88"}\n',
                '    driver: {kind: nvidia, version: "576.88"}\n    llama_cpp_build: b8100\n')
    text = edit(text, M2, M2 + "    llama_cpp_build: b8079\n")
    code, lines = _errors(write(text))
    assert code == 1
    for build in ("b8112", "b8100", "b8079"):
        finding = _finding(lines, "LF101", line_of(text, f"    llama_cpp_build: {build}"))
        assert f"on llama.cpp {build} but the cluster pins b8111" in finding


def test_hand_typed_model_path(write, seed_text):
    text = edit(seed_text, "    gpu_layers: 20\n",
                '    gpu_layers: 20\n    extra_args: ["-m", "~/models/gpt-oss-20b-Q8_0.gguf"]\n')
    code, lines = _errors(write(text))
    assert code == 1
    finding = _finding(lines, "LF104", line_of(text, '    extra_args: ["-m"'))
    assert "services.m2-drafter.extra_args[0]" in finding and "models_dir" in finding


def test_double_dash_np(write, seed_text):
    # The flag list ships for b11434, the build this project pins and tests against.
    text = edit(seed_text, "  build: b8111\n", "  build: b11434\n")
    text = edit(text, "    devices: [CUDA1]\n", '    devices: [CUDA1]\n    extra_args: ["--np", "1"]\n')
    code, lines = _errors(write(text))
    assert code == 1
    finding = _finding(lines, "LF102", line_of(text, '    extra_args: ["--np"'))
    assert "has no flag '--np'" in finding and "-np or --parallel" in finding
    assert not [ln for ln in lines if " LF102 " in ln and "--jinja" in ln]  # real flags pass


def test_q8_draft_on_m2_metal(write, seed_text):
    q8 = ("  gpt-oss-20b-q8:\n    files:\n      - name: gpt-oss-20b-Q8_0.gguf\n"
          "        sha256: 5f1b4d3a0c2e8f7a6b9d1c3e5f7a9b1d3c5e7f9a1b3d5c7e9f1a3b5d7c9e1f3a\n"
          "        size: 22198000000\n    quant: Q8_0\n    tokenizer: gpt-oss\n"
          "    architecture: {family: gpt-oss, layers: 24, kv_dim: 512}\n\n")
    text = edit(seed_text, "services:\n", q8 + "services:\n")
    text = edit(text, "    models: [gpt-oss-20b]\n\nmodels:", "    models: [gpt-oss-20b-q8]\n\nmodels:")
    text = edit(text, "    model: gpt-oss-20b\n    ctx_size: 2048\n    gpu_layers: 20\n",
                "    model: gpt-oss-20b-q8\n    ctx_size: 2048\n")
    code, lines = _errors(write(text))
    assert code == 1
    finding = _finding(lines, "LF111", line_of(text, "    model: gpt-oss-20b-q8\n"))
    assert "m2-air GPU 0 (M2)" in finding
    assert "Metal working set 10.67 GiB = 2/3 of 16 GiB unified memory" in finding


def test_moe_split_over_rpc_to_a_12_gb_card(write, seed_text):
    text = edit(seed_text, "    gpu_layers: 26\n    native_draft: {model: gpt-oss-20b, rpc_worker: desktop-rpc, n_max: 8}\n",
                "    rpc_workers: [desktop-rpc]\n")
    text = edit(text, "    device: CUDA0\n", "")
    code, lines = _errors(write(text))
    assert code == 1
    finding = _finding(lines, "LF112", line_of(text, "    rpc_workers: [desktop-rpc]"))
    assert "handed 22.3 GB" in finding and "GeForce RTX 3060" in finding
