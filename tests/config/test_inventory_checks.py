"""Every semantic check, one failing variant each: its code, the dotted path and the line it names.
Variants are one-edit changes of the committed examples (which themselves pass)."""

from __future__ import annotations

import re

import pytest
from bad_inventories import CASES as BAD_VALUES
from inventory_testlib import EXAMPLES, REPO, edit, line_of

from llamafleet.config import InventoryError, check_inventory, load_inventory
from llamafleet.findings import Severity, dotted

LOCAL = "local.yaml"
SEED = "seed-cluster.yaml"

# (id, example, [(old, new), ...], code, path, snippet whose line the finding must name)
CASES = [
    ("managed flag", LOCAL, [('    ctx_size: 2048\n    extra_args: ["--threads", "1"]',
                              '    ctx_size: 2048\n    extra_args: ["-c", "1024"]')],
     "LF105", "services.drafter.extra_args[0]", '    extra_args: ["-c"'),
    ("flag=value form", LOCAL, [('    ctx_size: 2048\n    extra_args: ["--threads", "1"]',
                                 '    ctx_size: 2048\n    extra_args: ["--threads=1"]')],
     "LF102", "services.drafter.extra_args[0]", '    extra_args: ["--threads=1"]'),
    ("flag missing its value", LOCAL, [('    ctx_size: 2048\n    extra_args: ["--threads", "1"]',
                                        '    ctx_size: 2048\n    extra_args: ["--jinja", "--threads"]')],
     "LF106", "services.drafter.extra_args[1]", '    extra_args: ["--jinja", "--threads"]'),
    ("stray value", LOCAL, [('    ctx_size: 2048\n    extra_args: ["--threads", "1"]',
                             '    ctx_size: 2048\n    extra_args: ["--jinja", "1"]')],
     "LF106", "services.drafter.extra_args[1]", '    extra_args: ["--jinja", "1"]'),
    ("device over VRAM", SEED, [("    ctx_size: 2048\n    devices: [CUDA1]\n", "    ctx_size: 65536\n    devices: [CUDA1]\n")],
     "LF110", "services.desktop-drafter.model", "    model: gpt-oss-20b\n    ctx_size: 65536"),
    ("system RAM", SEED, [("    gpu_layers: 26\n", "    gpu_layers: 6\n")],
     "LF114", "services.target.model", "    model: gpt-oss-120b\n"),
    ("unknown device", SEED, [("    device: CUDA0\n", "    device: CUDA2\n")],
     "LF115", "services.desktop-rpc.device", "    device: CUDA2"),
    ("tokenizer family", LOCAL, [("\n  smollm2-slow:\n", "\n  other:\n"
                                  "    files: [{name: o.gguf, sha256: " + "ab" * 32 + ", size: 10}]\n"
                                  "    quant: Q8_0\n    tokenizer: llama3\n\n  smollm2-slow:\n"),
                                 ("    models: [smollm2, smollm2-slow]\n", "    models: [smollm2, smollm2-slow, other]\n"),
                                 ("    native_draft: {model: smollm2,", "    native_draft: {model: other,")],
     "LF120", "services.target.native_draft.model", "    native_draft: {model: other"),
    ("port clash", LOCAL, [("    port: 8082\n", "    port: 8081\n")],
     "LF130", "services.drafter.port", "    port: 8081\n    model: smollm2\n    ctx_size: 2048"),
    ("metal on linux", LOCAL, [("    arch: x86_64\n    backend: cpu\n", "    arch: x86_64\n    backend: metal\n    gpus: [{vendor: apple, model: M2, vram_gb: 16}]\n")],
     "LF140", "hosts.local.backend", "    backend: metal\n"),
    ("launchd on linux", LOCAL, [("    service_manager: supervisord\n", "    service_manager: launchd\n")],
     "LF141", "hosts.local.service_manager", "    service_manager: launchd"),
    ("cuda without nvidia", SEED, [("{vendor: nvidia, model: GeForce RTX 3060", "{vendor: amd, model: GeForce RTX 3060")],
     "LF142", "hosts.desktop.gpus[1].vendor", "{vendor: amd, model: GeForce RTX 3060"),
    ("driver without its GPU", SEED, [('    driver: {kind: nvidia, version: "576.88"}',
                                       '    driver: {kind: rocm, version: "576.88"}')],
     "LF143", "hosts.desktop.driver.kind", '    driver: {kind: rocm, version: "576.88"}'),
    ("model not placed on host", LOCAL, [("    models: [smollm2, smollm2-slow]\n", "")],
     "LF150", "services.target.model", "    model: smollm2-slow\n    ctx_size: 2048"),
    ("unknown host", LOCAL, [("    host: local\n    port: 8082\n", "    host: lokal\n    port: 8082\n")],
     "LF160", "services.drafter.host", "    host: lokal"),
    ("wrong role", LOCAL, [("    drafters: [drafter]\n", "    drafters: [rpc]\n")],
     "LF161", "services.proxy.drafters[0]", "    drafters: [rpc]"),
    ("rpc worker on foreign address", LOCAL, [("    bind: 127.0.0.1\n    port: 50052\n", "    bind: 10.1.2.3\n    port: 50052\n")],
     "LF170", "services.rpc.bind", "    bind: 10.1.2.3"),
    ("rpc worker unreachable", SEED, [("    bind: 192.168.86.36\n    port: 50052\n", "    bind: 127.0.0.1\n    port: 50052\n")],
     "LF171", "services.target.native_draft.rpc_worker", "    native_draft: {"),
    ("no url and no mirror", LOCAL, [("  mirror: http://127.0.0.1:8765\n", "")],
     "LF180", "models.smollm2.files[0].name", "      - name: SmolLM2"),
    ("no release for the host", SEED, [("      os: macos\n      arch: arm64\n      backend: metal\n",
                                        "      os: macos\n      arch: x86_64\n      backend: metal\n")],
     "LF181", "hosts.m2-air.install", "    connection: {type: ssh, address: 192.168.86.41"),
    ("proxy mode without drafters", LOCAL, [("    drafters: [drafter]\n    mode: auto\n", "    mode: proxy\n")],
     "LF190", "services.proxy.mode", "    mode: proxy"),
    ("open proxy without auth", SEED, [("    auth: {token_file: /usr/local/llamafleet/proxy.token}\n", "")],
     "LF191", "services.proxy.bind", "    bind: 192.168.86.40"),
    ("path typed as a file name", LOCAL, [("      - name: SmolLM2-135M-Instruct.Q4_1.gguf\n",
                                           "      - name: ~/models/SmolLM2-135M-Instruct.Q4_1.gguf\n")],
     "LF013", "models.smollm2.files[0].name", "      - name: ~/models/"),
    ("rpc worker on a wildcard (model validator)", LOCAL, [("    bind: 127.0.0.1\n    port: 50052\n",
                                                            "    bind: 0.0.0.0\n    port: 50052\n")],
     "LF014", "services.rpc.bind", "    bind: 0.0.0.0"),
]


def _variant(example: str, edits: list[tuple[str, str]]) -> str:
    text = (EXAMPLES / example).read_text()
    for old, new in edits:
        text = edit(text, old, new)
    return text


@pytest.mark.parametrize("example,edits,code,path,snippet", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_fails_with_code_path_and_line(write, example, edits, code, path, snippet):
    text = _variant(example, edits)
    inventory, findings = check_inventory(write(text))
    assert inventory is None
    hits = [f for f in findings if f.code == code]
    assert hits, "\n".join(map(str, findings))
    assert any(dotted(f.path) == path for f in hits), "\n".join(map(str, hits))
    finding = next(f for f in hits if dotted(f.path) == path)
    assert finding.severity is Severity.error and finding.hint
    assert finding.line == line_of(text, snippet), str(finding)


def test_every_code_is_documented_and_tested():
    # The inventory checks, plus the firewall's, which live beside the rules they judge.
    emitters = [*(REPO / "llamafleet" / "config").glob("*.py"), REPO / "deploys" / "firewall.py"]
    source = "".join(p.read_text() for p in emitters)
    emitted = set(re.findall(r'"(LF\d{3})"', source))
    docs = (REPO / "docs" / "inventory.md").read_text()
    documented = set(re.findall(r"^\| `(LF\d{3})` ", docs, re.M))
    assert emitted == documented, (emitted - documented, documented - emitted)
    tested = {c[3] for c in CASES}
    tested |= {"LF101", "LF102", "LF104", "LF111", "LF112"}  # test_inventory_seed_mistakes
    tested |= {"LF103", "LF113"}  # the warnings, below
    tested |= {"LF192", "LF193"}  # test_plain_path
    tested |= {"LF196"}  # test_inventory_secrets
    tested |= {"LF197", "LF198"}  # test_proxy_targets
    tested |= {"LF185", "LF186", "LF187", "LF188", "LF189"}  # test_inventory_tls
    tested |= {"LF107", "LF108"}  # test_builds
    tested |= {"LF210", "LF211", "LF212", "LF213", "LF214"}  # test_inventory_cache
    tested |= {"LF172", "LF173", "LF174", "LF175"}  # tests/deploys/test_firewall.py
    tested |= {c.code for c in BAD_VALUES}  # test_inventory_types
    tested |= {"LF009"}  # tests/test_cli_bad_inputs.py (an inventory that cannot be read)
    tested |= {"LF001", "LF002", "LF003", "LF004", "LF005", "LF006", "LF007", "LF008", "LF010", "LF011", "LF012",
               "LF013", "LF015"}  # test_inventory_cli
    assert documented == tested, documented ^ tested


def test_missing_flag_data_is_a_warning_not_silence(write):
    text = _variant(SEED, [])
    inventory, findings = check_inventory(write(text))
    assert inventory is not None
    (warning,) = [f for f in findings if f.code == "LF103"]
    assert warning.severity is Severity.warning and "b8111 is not known here" in warning.message
    assert warning.line == line_of(text, "  build: b8111")


def test_unknown_kv_shape_is_a_warning(write):
    text = _variant(LOCAL, [("      layers: 30\n", "")])
    inventory, findings = check_inventory(write(text))
    assert inventory is not None
    assert [f.code for f in findings] == ["LF113"]


def test_metal_working_set_default_and_override(write):
    all_layers_on_m2 = [("    ctx_size: 2048\n    gpu_layers: 20\n", "    ctx_size: 2048\n")]
    _, findings = check_inventory(write(_variant(SEED, all_layers_on_m2)))
    (metal,) = [f for f in findings if f.code == "LF111"]
    assert "needs 11.87 GiB" in metal.message and "holds 10.67 GiB" in metal.message
    raised = all_layers_on_m2 + [("{vendor: apple, model: M2, vram_gb: 16}", "{vendor: apple, model: M2, vram_gb: 16, usable_gb: 12}")]
    inventory, findings = check_inventory(write(_variant(SEED, raised)))
    assert inventory is not None, "\n".join(map(str, findings))


def test_load_inventory_raises_with_every_error(write):
    text = _variant(LOCAL, [("    port: 8082\n", "    port: 8081\n"), ("    drafters: [drafter]\n", "    drafters: [rpc]\n")])
    with pytest.raises(InventoryError) as err:
        load_inventory(write(text))
    assert sorted(f.code for f in err.value.findings) == ["LF130", "LF161"]
    assert "LF130" in str(err.value) and "LF161" in str(err.value)


def test_load_inventory_default_path_from_env(write, monkeypatch):
    path = write(_variant(LOCAL, [("cluster: local", "cluster: via-env")]))
    monkeypatch.setenv("LLAMAFLEET_INVENTORY", str(path))
    assert load_inventory().cluster == "via-env"
