"""Bad input through the real ``llamafleet validate`` command: exit 1, the place named, no traceback."""

from __future__ import annotations

import json

import pytest
from inventory_testlib import edit, line_of, run_cli


def _assert_clean_failure(result, *expected: str) -> str:
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Traceback" not in out, out
    for text in expected:
        assert text in out, f"{text!r} not in:\n{out}"
    return out


def test_examples_validate(seed_text):
    for name in ("seed-cluster.yaml", "local.yaml"):
        result = run_cli("validate", f"inventory/examples/{name}")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "valid" in result.stdout and "host" in result.stdout


def test_plan_summary_lists_hosts_services_and_models():
    out = run_cli("validate", "inventory/examples/seed-cluster.yaml").stdout
    assert "cluster seed: llama.cpp b8111, 4 host(s), 2 model(s)" in out
    assert "drafter    m2-drafter on 192.168.86.41:8081 model gpt-oss-20b" in out
    assert "model gpt-oss-120b: Q4_K_XL, 2 file(s)" in out


def test_default_path_comes_from_the_environment(write, local_text):
    path = write(edit(local_text, "cluster: local", "cluster: from-env"))
    result = run_cli("validate", env={"LLAMAFLEET_INVENTORY": str(path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cluster from-env:" in result.stdout


def test_yaml_syntax_error(write, local_text):
    text = edit(local_text, "    model: smollm2\n    ctx_size: 2048\n", "    model: smollm2\n    ctx_size: [2048\n")
    path = write(text)
    _assert_clean_failure(run_cli("validate", str(path)), f"{path}:", "LF005")


def test_duplicate_key(write, local_text):
    text = edit(local_text, "    model: smollm2\n    ctx_size: 2048\n",
                "    model: smollm2\n    ctx_size: 2048\n    ctx_size: 1024\n")
    line = line_of(text, "    ctx_size: 1024")
    _assert_clean_failure(run_cli("validate", str(write(text))), f":{line}:5 LF006", "duplicate key")


def test_unknown_key_with_suggestion(write, local_text):
    text = edit(local_text, "    model: smollm2\n    ctx_size: 2048\n", "    model: smollm2\n    ctx_sise: 2048\n")
    line = line_of(text, "    ctx_sise")
    _assert_clean_failure(run_cli("validate", str(write(text))),
                          f":{line}:5 LF010 services.drafter.ctx_sise: unknown key", "did you mean 'ctx_size'?")


def test_wrong_type(write, local_text):
    text = edit(local_text, "    port: 8082\n", "    port: eighty\n")
    line = line_of(text, "    port: eighty")
    _assert_clean_failure(run_cli("validate", str(write(text))),
                          f":{line}:11 LF012 services.drafter.port: must be an integer")


def test_missing_field(write, local_text):
    text = edit(local_text, "    service_manager: supervisord\n", "")
    _assert_clean_failure(run_cli("validate", str(write(text))),
                          "LF011 hosts.local.service_manager: missing required field 'service_manager'")


def test_value_out_of_range_names_the_dotted_path(write, seed_text):
    text = edit(seed_text, "model: GeForce RTX 3060, vram_gb: 12}", "model: GeForce RTX 3060, vram_gb: 0}")
    line = line_of(text, "      - {vendor: nvidia, model: GeForce RTX 3060")
    _assert_clean_failure(run_cli("validate", str(write(text))),
                          f":{line}:", "hosts.desktop.gpus[1].vram_gb: must be greater than 0")


def test_all_errors_reported_in_one_run(write, local_text):
    text = edit(local_text, "    port: 8082\n", "    port: eighty\n")
    text = edit(text, "    ctx_size: 2048\n    parallel: 4\n", "    ctx_size: -1\n    parallel: 4\n")
    text = edit(text, "  build: b11434\n", "  build: 11434\n")
    out = _assert_clean_failure(run_cli("validate", str(write(text))), "3 error(s)")
    assert out.count(" LF01") == 3


def test_alias_bomb(write):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    out = _assert_clean_failure(run_cli("validate", str(write("\n".join(lines) + "\n"))), "LF007", "alias bomb")
    assert ":1:1 " in out


def test_self_referencing_alias(write):
    _assert_clean_failure(run_cli("validate", str(write("&a {b: *a}\n"))), "LF007", "cycle")


def test_absurd_nesting(write):
    _assert_clean_failure(run_cli("validate", str(write("a: " + "[" * 400 + "]" * 400 + "\n"))), "LF007", "deep")


def test_non_utf8(write, local_text):
    raw = local_text.encode().replace(b"cluster: local", b"cluster: l\xe9cal")
    line = line_of(local_text, "cluster: local")
    _assert_clean_failure(run_cli("validate", str(write(raw))), f":{line}:11 LF004", "not UTF-8")


def test_empty_file(write):
    _assert_clean_failure(run_cli("validate", str(write("# nothing here\n\n"))), "LF003", "empty")


def test_oversized_file(write):
    _assert_clean_failure(run_cli("validate", str(write("# " + "x" * (5 * 2**20) + "\n"))), "LF003", "at most")


def test_bad_name(write, local_text):
    text = edit(local_text, "  drafter:\n", "  Drafter_1:\n")
    line = line_of(text, "  Drafter_1:")
    _assert_clean_failure(run_cli("validate", str(write(text))), f":{line}:3 LF015 services.Drafter_1: name")


def test_directory(tmp_path):
    _assert_clean_failure(run_cli("validate", str(tmp_path)), f"{tmp_path} LF002", "directory")


def test_missing_file(tmp_path):
    _assert_clean_failure(run_cli("validate", str(tmp_path / "nope.yaml")), "LF001", "no such file")


def test_top_level_not_a_mapping(write):
    _assert_clean_failure(run_cli("validate", str(write("- just\n- a list\n"))), "LF012", "must be a mapping")


def test_yaml_tags_refused(write, local_text):
    text = edit(local_text, "cluster: local", "cluster: !!python/name:os.system local")
    _assert_clean_failure(run_cli("validate", str(write(text))), "LF008")


@pytest.mark.parametrize("valid", [True, False])
def test_json_output(write, local_text, valid):
    text = local_text if valid else edit(local_text, "    port: 8082\n", "    port: eighty\n")
    result = run_cli("validate", "--json", str(write(text)))
    report = json.loads(result.stdout)
    assert result.returncode == (0 if valid else 1)
    assert report["valid"] is valid
    if valid:
        assert report["plan"]["hosts"]["local"]["services"]["proxy"]["role"] == "proxy"
    else:
        (finding,) = report["findings"]
        assert finding["code"] == "LF012"
        assert finding["path"] == "services.drafter.port"
        assert finding["line"] == line_of(text, "    port: eighty")
