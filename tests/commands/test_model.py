"""``llamafleet model add`` / ``model verify`` on real GGUF files: the cached SmolLM2, the rig's derived
models (a 230-block padded target, a 31-block partly agreeing one), a SmolLM2 with two vocabulary
entries swapped, and SmolLM2 split into shards by gguf-py's own writer (the split support llama.cpp's
converter uses). The architecture facts are compared with what a real llama-server (b11434) reports for
the same file: its load log (``print_info:`` lines at ``-lv 4``), ``/props`` and ``/v1/models``.

Remote sources are served by a real HTTP server on loopback (the rig's mirror, which speaks Range;
Python's plain file server, which does not). ``hf://`` references resolve against ``$HF_ENDPOINT``,
the same override huggingface_hub honours, pointed at that loopback server: the Hub itself is not
reachable from the test machine.

No MoE GGUF small enough to run exists in the cache, so expert counting is checked on headers that
gguf-py writes with MoE metadata and expert tensor shapes (no weights worth running), against the
arithmetic of those shapes.
"""

from __future__ import annotations

import difflib
import http.server
import json
import os
import re
import shutil
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from llamafleet import cli, gguf_info
from llamafleet.commands import model as model_cmd
from llamafleet.config.loader import check_inventory, load_inventory
from llamafleet.rig import cache, models, servers
from llamafleet.rig.mirror import MirrorHandler, MirrorServer

REPO = Path(__file__).resolve().parents[2]

# A small valid inventory with comments, a flow mapping and no models yet: what `model add` must keep.
BASE_INVENTORY = """\
# test cluster: comments and order must survive model add
version: 1
cluster: test   # trailing comment

llama_cpp:
  build: b11434
  mirror: http://127.0.0.1:8765
  releases:
    - {file: llama-b11434-bin-ubuntu-x64.tar.gz, os: linux, arch: x86_64, backend: cpu, sha256: "%s"}

hosts:
  local:
    connection: {type: local}
    os: linux
    install_dir: /opt/llamafleet
    models_dir: /opt/llamafleet/models   # where the files go
    service_manager: supervisord
""" % ("0" * 64)


@pytest.fixture(scope="module")
def real_models() -> dict[str, Path]:
    return {"smollm2": cache.ensure_smollm2(), "partial": models.ensure_partial_target(),
            "slow": models.ensure_slow_target()}


@pytest.fixture
def inventory(tmp_path) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(BASE_INVENTORY)
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def add(sources, inventory: Path, capsys, *extra: str) -> tuple[int, str, str]:
    sources = [sources] if isinstance(sources, (str, Path)) else sources
    return run_cli(["model", "add", *map(str, sources), "--inventory", str(inventory), *extra], capsys)


def facts_of(path: Path) -> gguf_info.ModelFacts:
    """Headers and hashes, as ``model add`` reads them."""
    return gguf_info.hash_model(*gguf_info.read_headers(str(path)))


def header_facts(path: Path) -> gguf_info.ModelFacts:
    """Headers only (no hashing: the slow rig target is 540 MB)."""
    return gguf_info.model_facts([gguf_info.read_header(s) for s in gguf_info.file_sources(str(path))], [])


# --- pure parts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ref, url", [
    ("hf://unsloth/gpt-oss-20b-GGUF/gpt-oss-20b-F16.gguf",
     "https://huggingface.co/unsloth/gpt-oss-20b-GGUF/resolve/main/gpt-oss-20b-F16.gguf"),
    ("hf://Qwen/Qwen3-8B-GGUF@v2/sub dir/Qwen3-8B-Q4_K_M-00001-of-00002.gguf",
     "https://huggingface.co/Qwen/Qwen3-8B-GGUF/resolve/v2/sub%20dir/Qwen3-8B-Q4_K_M-00001-of-00002.gguf"),
    ("hf://org/repo@refs%2Fpr%2F1/m.gguf", "https://huggingface.co/org/repo/resolve/refs%252Fpr%252F1/m.gguf"),
    ("https://example.org/x.gguf", "https://example.org/x.gguf"),
    ("models/x.gguf", "models/x.gguf"),
])
def test_hf_references_resolve_to_the_hub_download_url(ref, url, monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert gguf_info.resolve(ref) == url


@pytest.mark.parametrize("ref", ["hf://org/repo", "hf://org//file.gguf", "hf:///repo/file.gguf", "hf://org/@v1/f.gguf",
                                 "hf://org/repo/../f.gguf", "hf://"])
def test_bad_hf_references_are_refused_with_the_expected_form(ref):
    with pytest.raises(gguf_info.SourceError, match=r"hf://ORG/REPO/FILE\.gguf"):
        gguf_info.resolve(ref)


@pytest.mark.parametrize("file_name, name", [
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct-q4-1"),
    ("gpt-oss-120b-UD-Q4_K_XL-00001-of-00002.gguf", "gpt-oss-120b-ud-q4-k-xl"),
    ("__Weird__Name__.gguf", "weird-name"),
    ("x" * 80 + ".gguf", "x" * 63),
])
def test_default_names_follow_the_inventory_name_rule(file_name, name):
    assert model_cmd.default_name(file_name) == name


def test_a_file_name_without_usable_letters_needs_name():
    with pytest.raises(Exception, match="pass --name"):
        model_cmd.default_name("___.gguf")


@pytest.mark.parametrize("name, shards", [
    ("m.gguf", ["m.gguf"]),
    ("m-00002-of-00003.gguf", ["m-00001-of-00003.gguf", "m-00002-of-00003.gguf", "m-00003-of-00003.gguf"]),
    ("a-b-00001-of-00001.gguf", ["a-b-00001-of-00001.gguf"]),
    ("m-0001-of-0002.gguf", ["m-0001-of-0002.gguf"]),  # not llama.cpp's 5-digit form: one plain file
])
def test_any_shard_names_the_whole_split_set(name, shards):
    assert gguf_info._shard_names(name) == shards


@pytest.mark.parametrize("name", ["m-00004-of-00003.gguf", "m-00000-of-00003.gguf", "m-00001-of-00000.gguf"])
def test_impossible_shard_names_are_refused(name):
    with pytest.raises(gguf_info.SourceError, match="not a valid split-model name"):
        gguf_info._shard_names(name)


@pytest.mark.parametrize("model, pre, label", [
    ("gpt2", "smollm", "smollm"), ("gpt2", "llama-bpe", "llama-bpe"), ("llama", "default", "llama"),
    ("llama", None, "llama"), ("gpt2", "GPT-4o", "gpt-4o"), (None, None, "unknown"),
])
def test_tokenizer_labels(model, pre, label):
    fingerprint = "ab" * 32
    expected = label if label == "unknown" else f"{label}:abababab"
    assert gguf_info.tokenizer_family(model, pre, fingerprint) == expected
    if label != "unknown":
        assert gguf_info.TOKENIZER_LABEL.match(expected)


# --- headers of real models against a real llama-server ------------------------------------------


def load_log_facts(log: str) -> dict[str, str]:
    """``print_info: n_layer = 30`` lines of a llama-server load log (-lv 4)."""
    return {m[1].strip(): m[2].strip() for m in re.finditer(r"print_info: (.+?)\s*= (.*)$", log, re.M)}


def served_facts(llama_build, model: Path, log_dir: Path) -> tuple[dict, dict, dict]:
    """(load log facts, /props, /v1/models meta) of a real llama-server on ``model``."""
    with servers.running(servers.start_llama_server(llama_build, model, log_dir=log_dir, name=model.stem,
                                                    args=["-c", "256", "-np", "1", "-lv", "4"])) as server:
        props = json.load(urllib.request.urlopen(f"{server.url}/props", timeout=30))
        meta = json.load(urllib.request.urlopen(f"{server.url}/v1/models", timeout=30))["data"][0]["meta"]
        log = server.log_path.read_text(errors="replace")
    return load_log_facts(log), props, meta


@pytest.mark.parametrize("which", ["smollm2", "partial", "slow"])
def test_header_facts_match_what_llama_server_reports(which, real_models, llama_build, log_dir):
    path = real_models[which]
    facts = header_facts(path)
    log, props, meta = served_facts(llama_build, path, log_dir)
    header = facts.headers[0]
    assert facts.family == log["arch"]
    assert facts.layers == int(log["n_layer"])
    assert facts.n_embd == int(log["n_embd"]) == meta["n_embd"]
    assert header.n_head_kv == int(log["n_head_kv"])
    assert facts.kv_dim == int(log["n_embd_k_gqa"]) == int(log["n_head_kv"]) * int(log["n_embd_head_k"])
    assert facts.n_params == meta["n_params"] == facts.n_active_params
    assert facts.total_params_b == gguf_info.sig4(meta["n_params"] / 1e9)
    assert (facts.experts or 0) == int(log["n_expert"]) and (facts.experts_used or 0) == int(log["n_expert_used"])
    assert facts.moe is None
    assert facts.quant == props["model_ftype"] == log["file type"]
    assert header.n_vocab == meta["n_vocab"] == int(log["n_vocab"])
    assert facts.has_chat_template == bool(props.get("chat_template"))
    assert header.size == path.stat().st_size


def test_models_with_one_vocabulary_share_a_tokenizer_label_and_a_swapped_one_does_not(real_models, tmp_path):
    labels = {which: header_facts(p).tokenizer for which, p in real_models.items()}
    assert len(set(labels.values())) == 1, labels
    assert labels["smollm2"].startswith("smollm:")  # SmolLM2's tokenizer.ggml.pre is "smollm"
    swapped = tmp_path / "swapped.gguf"
    swap_two_tokens(real_models["smollm2"], swapped)
    assert header_facts(swapped).tokenizer.startswith("smollm:")
    assert header_facts(swapped).tokenizer != labels["smollm2"]


def swap_two_tokens(source: Path, dest: Path) -> None:
    """Copy ``source`` with two vocabulary entries of equal length exchanged in place."""
    import gguf

    shutil.copyfile(source, dest)
    reader = gguf.GGUFReader(dest, "r+")
    field = reader.fields["tokenizer.ggml.tokens"]
    parts = [field.parts[i] for i in field.data[1000:1200]]
    a, b = next((x, y) for i, x in enumerate(parts) for y in parts[i + 1:]
                if len(x) == len(y) and bytes(x) != bytes(y))
    a_bytes = bytes(a)
    a[:] = np.frombuffer(bytes(b), dtype=np.uint8)
    b[:] = np.frombuffer(a_bytes, dtype=np.uint8)
    reader.data.flush()


# --- model add -----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["smollm2", "partial", "slow"])
def test_add_writes_an_entry_that_validate_accepts(which, real_models, inventory, capsys):
    path = real_models[which]
    before = inventory.read_text()
    code, out, err = add(path, inventory, capsys)
    assert code == 0, err
    name = model_cmd.default_name(path.name)
    assert f"added {name}:" in out and f"wrote {inventory}" in out
    code, out, err = run_cli(["validate", str(inventory)], capsys)
    assert code == 0, out + err
    entry = load_inventory(inventory).models[name]
    facts = header_facts(path)
    assert entry.files[0].name == path.name and entry.files[0].size == path.stat().st_size
    assert entry.files[0].sha256 == gguf_info.hash_file(gguf_info.FileSource(path.name, path=path))[0]
    assert entry.architecture.layers == facts.layers and entry.architecture.kv_dim == facts.kv_dim
    assert (entry.quant, entry.tokenizer) == (facts.quant, facts.tokenizer)
    # Only lines were added: every comment and key of the original is still there, in order.
    diff = list(difflib.ndiff(before.splitlines(), inventory.read_text().splitlines()))
    assert not [line for line in diff if line.startswith("- ")], "\n".join(diff)


def test_add_twice_changes_nothing_and_a_second_model_keeps_the_first(real_models, inventory, capsys):
    assert add(real_models["smollm2"], inventory, capsys)[0] == 0
    once = inventory.read_text()
    code, out, _ = add(real_models["smollm2"], inventory, capsys)
    assert code == 0 and "not changed" in out and inventory.read_text() == once
    assert add([real_models["partial"], real_models["slow"]], inventory, capsys)[0] == 0
    assert set(load_inventory(inventory).models) == {"smollm2-135m-instruct-q4-1", "smollm2-partial-31",
                                                     "smollm2-slow-230"}
    assert inventory.read_text().startswith(once.split("\nmodels:")[0])


def test_add_fills_in_what_an_existing_entry_leaves_out(real_models, tmp_path, capsys):
    """The shipped example's hand-typed smollm2 entry agrees with the file; facts it lacks are added."""
    inv = tmp_path / "local.yaml"
    text = (REPO / "inventory/examples/local.yaml").read_text()
    inv.write_text(text.replace("      kv_dim: 192\n", "", 1))
    assert "kv_dim" in text and load_inventory(inv).models["smollm2"].architecture.kv_dim is None
    code, out, err = add(real_models["smollm2"], inv, capsys, "--name", "smollm2")
    assert code == 0, err
    assert "checked smollm2" in out
    assert load_inventory(inv).models["smollm2"].architecture.kv_dim == 192
    assert check_inventory(inv)[0] is not None


def test_the_same_file_under_a_new_name_points_at_the_existing_entry(real_models, tmp_path, capsys):
    inv = tmp_path / "local.yaml"
    inv.write_text((REPO / "inventory/examples/local.yaml").read_text())
    before = inv.read_text()
    code, _, err = add(real_models["smollm2"], inv, capsys)
    assert code == 1 and "already in the inventory as model smollm2" in err and "--name smollm2" in err
    assert inv.read_text() == before


@pytest.mark.parametrize("tail", [
    "",
    "models: {}\n",
    "models: {}  # none yet\n",
    "\n# the models come last\nmodels:\n  other:\n    files: [{name: o.gguf, sha256: \"%s\", size: 1}]\n    quant: Q4_1\n"
    "    tokenizer: x   # typed by hand\n# end of file\n" % ("b" * 64),
    "models:\n  other:\n    files:\n      - name: o.gguf\n        sha256: \"%s\"\n        size: 1\n    quant: Q4_1\n"
    "    tokenizer: x\n\n# no services yet\nservices: {}\n" % ("b" * 64),
], ids=["no models key", "flow empty models", "flow empty with comment", "entries and comments",
        "a section after the models"])
def test_add_into_each_shape_of_models_section(tail, real_models, inventory, capsys):
    inventory.write_text(BASE_INVENTORY + tail)
    before = inventory.read_text()
    code, _, err = add(real_models["partial"], inventory, capsys)
    assert code == 0, err
    after = inventory.read_text()
    assert "  smollm2-partial-31:\n    files:\n      - name: smollm2-partial-31.gguf\n" in after
    for line in before.splitlines():
        if "{}" not in line:  # an empty flow mapping becomes a block one
            assert line in after.splitlines(), line
    assert set(load_inventory(inventory).models) >= {"smollm2-partial-31"}
    # What followed the models section still follows it: the new entry is not put after it.
    for trailer in ("# end of file", "# no services yet"):
        if trailer in before:
            assert after.index(trailer) > after.index("smollm2-partial-31:"), after
    if "# typed by hand" in before:
        assert "tokenizer: x   # typed by hand\n" in after


def test_numeric_looking_hashes_are_written_as_strings(inventory):
    """A sha256 of digits only would read back as an integer unless quoted."""
    facts = gguf_info.ModelFacts(
        files=[gguf_info.FileFacts("digits.gguf", "1" * 64, 10), gguf_info.FileFacts("exp.gguf", "1e" + "0" * 62, 11)],
        family="llama", layers=2, n_embd=8, kv_dim=8, n_params=1000, n_active_params=1000, experts=None,
        experts_used=None, quant="F32", tokenizer="llama:00000000", has_chat_template=False, headers=[])
    assert model_cmd.write_entries(inventory, {"digits": model_cmd.entry_data(facts)})
    files = load_inventory(inventory).models["digits"].files
    assert [f.sha256 for f in files] == ["1" * 64, "1e" + "0" * 62]


def test_add_through_a_symlinked_inventory_edits_its_target(real_models, inventory, tmp_path, capsys):
    link = tmp_path / "cluster.yaml"
    link.symlink_to(inventory)
    assert add(real_models["partial"], link, capsys)[0] == 0
    assert link.is_symlink() and "smollm2-partial-31" in inventory.read_text()


def test_an_entry_the_inventory_cannot_hold_leaves_the_file_alone(real_models, inventory, capsys):
    """The edited copy is validated before it replaces the file. Here the entry lacks layers and kv_dim,
    so the memory check counts weights only and passes; filled in from the header, the KV cache of a
    64k context no longer fits the host's 1 GiB: the add is refused with the check's finding."""
    facts = facts_of(real_models["smollm2"])
    f = facts.files[0]
    text = BASE_INVENTORY.replace("service_manager: supervisord", "service_manager: supervisord\n"
                                  "    memory_gb: 1\n    models: [t]") + f"""
models:
  t:
    files: [{{name: {f.name}, sha256: "{f.sha256}", size: {f.size}}}]
    quant: Q4_1
    tokenizer: smollm2
services:
  target:
    role: target
    host: local
    port: 8081
    model: t
    ctx_size: 65536
"""
    inventory.write_text(text)
    assert check_inventory(inventory)[0] is not None
    code, out, err = add(real_models["smollm2"], inventory, capsys, "--name", "t")
    assert code == 1 and not out
    assert "not changed: with the new entry the inventory would not validate" in err
    assert re.search(rf"{re.escape(str(inventory))}:\d+:\d+ LF11\d", err), err
    assert inventory.read_text() == text
    assert not list(inventory.parent.glob(".*.tmp"))  # the edited copy is gone too


# --- contradictions ------------------------------------------------------------------------------


CONTRADICTIONS = [  # (field of the smollm2 entry, the wrong value written there)
    ("files[0].sha256", "f" * 64),
    ("files[0].size", 12345),
    ("architecture.layers", 31),
    ("architecture.n_embd", 512),
    ("architecture.kv_dim", 576),
    ("architecture.family", "qwen2"),
    ("architecture.total_params_b", 0.2),
    ("architecture.active_params_b", 0.1),
    ("architecture.moe", {"experts": 8, "active_experts": 2}),
    ("quant", "Q8_0"),
    ("tokenizer", "smollm:00000000"),
]


def set_field(entry: dict, dotted: str, value) -> None:
    node = entry
    parts = re.findall(r"[^.\[\]]+", dotted)
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    node[parts[-1]] = value


def inventory_with(tmp_path: Path, facts: gguf_info.ModelFacts, name: str, field: str | None = None, value=None) -> Path:
    """BASE_INVENTORY plus ``name`` as ``add`` writes it, with one field changed."""
    inv = tmp_path / f"inv-{(field or 'clean').replace('.', '-')}.yaml"
    inv.write_text(BASE_INVENTORY)
    entry = json.loads(json.dumps(model_cmd.entry_data(facts)))
    if field:
        set_field(entry, field, value)
    model_cmd.write_entries(inv, {name: entry})
    return inv


@pytest.mark.parametrize("field, value", CONTRADICTIONS, ids=[c[0] for c in CONTRADICTIONS])
def test_add_refuses_a_file_that_contradicts_the_entry(field, value, real_models, tmp_path, capsys):
    path = real_models["smollm2"]
    inv = inventory_with(tmp_path, facts_of(path), "smollm2", field, value)
    before = inv.read_text()
    code, out, err = add(path, inv, capsys, "--name", "smollm2")
    assert code == 1 and not out
    assert f"models.smollm2.{field}: the inventory says" in err, err
    assert "Traceback" not in err and inv.read_text() == before


def test_add_refuses_a_file_name_the_inventory_lists_with_other_bytes(real_models, tmp_path, capsys):
    inv = inventory_with(tmp_path, facts_of(real_models["smollm2"]), "other", "files[0].sha256", "e" * 64)
    code, _, err = add(real_models["smollm2"], inv, capsys)
    assert code == 1 and "models.other.files[0].sha256: SmolLM2-135M-Instruct.Q4_1.gguf is listed with sha256 eee" in err


def test_hand_typed_rounded_parameters_and_free_labels_are_not_contradictions(real_models, tmp_path, capsys):
    inv = tmp_path / "local.yaml"
    inv.write_text((REPO / "inventory/examples/local.yaml").read_text())  # 0.135 typed for 0.1345; "smollm2" label
    code, out, err = add(real_models["smollm2"], inv, capsys, "--name", "smollm2")
    assert code == 0 and "not changed" in out, err


# --- model verify --------------------------------------------------------------------------------


def verify(inv: Path, models_dir: Path, capsys, *extra: str) -> tuple[int, dict]:
    code, out, err = run_cli(["model", "verify", "--inventory", str(inv), "--models-dir", str(models_dir),
                              "--json", *extra], capsys)
    assert "Traceback" not in err
    return code, json.loads(out)


def failing(report: dict) -> list[str]:
    return [f["check"] for f in report["findings"] if f["severity"] == "fail"]


def test_verify_is_clean_on_what_add_wrote(real_models, inventory, capsys):
    assert add([real_models["smollm2"], real_models["partial"]], inventory, capsys)[0] == 0
    code, report = verify(inventory, real_models["smollm2"].parent, capsys, "smollm2-135m-instruct-q4-1")
    assert code == 0 and not failing(report)
    checks = {f["check"] for f in report["findings"]}
    assert {"model smollm2-135m-instruct-q4-1 files[0].sha256", "model smollm2-135m-instruct-q4-1 architecture.kv_dim",
            "model smollm2-135m-instruct-q4-1 tokenizer", "model smollm2-135m-instruct-q4-1 quant"} <= checks


@pytest.mark.parametrize("field, value", CONTRADICTIONS, ids=[c[0] for c in CONTRADICTIONS])
def test_verify_reports_each_field_that_differs(field, value, real_models, tmp_path, capsys):
    path = real_models["smollm2"]
    inv = inventory_with(tmp_path, facts_of(path), "smollm2", field, value)
    code, report = verify(inv, path.parent, capsys)
    assert code == 2
    assert failing(report) == [f"model smollm2 {field}"]


def test_verify_reports_a_replaced_and_a_missing_file(real_models, tmp_path, capsys):
    smollm2, partial = real_models["smollm2"], real_models["partial"]
    inv = inventory_with(tmp_path, facts_of(smollm2), "smollm2")
    files = tmp_path / "files"
    files.mkdir()
    code, report = verify(inv, files, capsys)
    assert code == 2 and failing(report) == [f"model smollm2 file {smollm2.name}"]
    os.link(partial, files / smollm2.name)  # another model under the listed name
    code, report = verify(inv, files, capsys)
    assert code == 2
    assert set(failing(report)) == {"model smollm2 files[0].size", "model smollm2 files[0].sha256",
                                    "model smollm2 architecture.layers", "model smollm2 architecture.total_params_b",
                                    "model smollm2 architecture.active_params_b"}
    code, out, _ = run_cli(["model", "verify", "--inventory", str(inv), "--models-dir", str(files)], capsys)
    assert code == 2 and "architecture.layers" in out and "differences found" in out


def test_verify_of_a_corrupt_file_reports_its_header(real_models, tmp_path, capsys):
    inv = inventory_with(tmp_path, facts_of(real_models["smollm2"]), "smollm2")
    files = tmp_path / "files"
    files.mkdir()
    (files / real_models["smollm2"].name).write_bytes(real_models["smollm2"].read_bytes()[:5000])
    code, report = verify(inv, files, capsys)
    assert code == 2 and failing(report) == ["model smollm2 header"]
    assert "truncated" in report["findings"][0]["actual"]


@pytest.mark.parametrize("argv, message", [
    (["nosuchmodel"], "nosuchmodel: not a model of"),
    (["--models-dir", "/nonexistent-dir"], "--models-dir /nonexistent-dir: not a folder"),
])
def test_verify_usage_errors_are_one_line(argv, message, real_models, tmp_path, capsys):
    inv = inventory_with(tmp_path, facts_of(real_models["smollm2"]), "smollm2")
    code, out, err = run_cli(["model", "verify", "--inventory", str(inv), *argv], capsys)
    assert code == 1 and not out and message in err and len(err.strip().splitlines()) == 1


def test_verify_output_into_a_closed_pipe_ends_quietly(real_models, tmp_path):
    import subprocess

    inv = inventory_with(tmp_path, facts_of(real_models["smollm2"]), "smollm2", "architecture.layers", 3)
    proc = subprocess.run(f"{sys.executable} -m llamafleet.cli model verify -v --inventory {inv} "
                          f"--models-dir {real_models['smollm2'].parent} | head -c 10",
                          shell=True, capture_output=True, text=True, cwd=REPO)
    assert len(proc.stdout) == 10 and "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr


# --- split models --------------------------------------------------------------------------------


def write_split(source: Path, dest: Path, max_tensors: int) -> list[Path]:
    """``source`` rewritten as a split set by gguf-py's writer (split.no/count/tensors.count keys, the
    -0000N-of-0000M names), as llama.cpp's converter writes with --split-max-tensors."""
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dest, arch, split_max_tensors=max_tensors)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(dest.parent.glob(f"{dest.stem}-*-of-*.gguf"))


@pytest.fixture(scope="module")
def split_smollm2(real_models, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("split")
    shards = write_split(real_models["smollm2"], folder / "smollm2-split.gguf", max_tensors=100)
    assert [p.name for p in shards] == [f"smollm2-split-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    return shards


@pytest.mark.parametrize("named", [0, 1, 2])
def test_any_shard_adds_the_whole_split_model(named, split_smollm2, real_models, inventory, capsys):
    code, out, err = add(split_smollm2[named], inventory, capsys)
    assert code == 0, err
    entry = load_inventory(inventory).models["smollm2-split"]
    assert [f.name for f in entry.files] == [p.name for p in split_smollm2]
    assert [f.size for f in entry.files] == [p.stat().st_size for p in split_smollm2]
    whole, split = header_facts(real_models["smollm2"]), header_facts(split_smollm2[named])
    assert (split.n_params, split.layers, split.kv_dim, split.tokenizer, split.quant) == \
        (whole.n_params, whole.layers, whole.kv_dim, whole.tokenizer, whole.quant)
    assert "3 file(s)" in out


def test_llama_server_loads_the_split_set_with_the_same_facts(split_smollm2, llama_build, log_dir):
    facts = header_facts(split_smollm2[0])
    log, props, meta = served_facts(llama_build, split_smollm2[0], log_dir)
    assert meta["n_params"] == facts.n_params and int(log["n_layer"]) == facts.layers
    assert int(log["n_embd_k_gqa"]) == facts.kv_dim and props["model_ftype"] == facts.quant


def test_verify_covers_every_shard(split_smollm2, tmp_path, capsys):
    inv = inventory_with(tmp_path, facts_of(split_smollm2[0]), "split", "files[2].sha256", "c" * 64)
    code, report = verify(inv, split_smollm2[0].parent, capsys)
    assert code == 2 and failing(report) == ["model split files[2].sha256"]


def test_a_remote_split_model_is_read_from_its_urls_folder(split_smollm2, inventory, capsys):
    server = MirrorServer(split_smollm2[0].parent).start()
    try:
        code, _, err = add(f"{server.url}/{split_smollm2[2].name}", inventory, capsys)
    finally:
        server.stop()
    assert code == 0, err
    files = load_inventory(inventory).models["smollm2-split"].files
    assert [f.url for f in files] == [f"{server.url}/{p.name}" for p in split_smollm2]
    header_reads = [r for r in server.requests if r[2] is not None]
    assert {r[1] for r in header_reads} == {f"/{p.name}" for p in split_smollm2}
    assert sorted(r[1] for r in server.requests if r[2] is None) == sorted(f"/{p.name}" for p in split_smollm2)


def test_split_sets_that_do_not_add_up_are_refused(split_smollm2, inventory, tmp_path, capsys):
    two = tmp_path / "two"
    two.mkdir()
    for i in (1, 2):  # the first two shards of three, named as a set of two
        os.link(split_smollm2[i - 1], two / f"m-0000{i}-of-00002.gguf")
    code, _, err = add(two / "m-00001-of-00002.gguf", inventory, capsys)
    assert code == 1 and "split.count is 3, but the file name says 2 shards" in err
    lone = tmp_path / "lone.gguf"
    os.link(split_smollm2[1], lone)
    code, _, err = add(lone, inventory, capsys)
    assert code == 1 and "shard 2 of 3" in err and "lacks the -0000N-of-0000M" in err
    gap = tmp_path / "gap"
    gap.mkdir()
    os.link(split_smollm2[0], gap / split_smollm2[0].name)
    os.link(split_smollm2[2], gap / split_smollm2[2].name)
    code, _, err = add(gap / split_smollm2[0].name, inventory, capsys)
    assert code == 1 and f"{gap / split_smollm2[1].name} is missing" in err


# --- remote sources ------------------------------------------------------------------------------


@pytest.fixture
def mirror(real_models, tmp_path):
    root = tmp_path / "mirror"
    root.mkdir()
    for path in real_models.values():
        os.link(path, root / path.name)
    (root / "notes.gguf").write_text("not a model\n" * 100)
    (root / "cut.gguf").write_bytes(real_models["smollm2"].read_bytes()[:300_000])
    hub = root / "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/resolve/main"
    hub.mkdir(parents=True)
    os.link(real_models["smollm2"], hub / real_models["smollm2"].name)
    server = MirrorServer(root).start()
    yield server
    server.stop()


def test_only_the_header_crosses_the_wire(real_models, mirror):
    path = real_models["slow"]
    header = gguf_info.read_header(gguf_info.FileSource(path.name, url=f"{mirror.url}/{path.name}"))
    local = gguf_info.read_header(gguf_info.FileSource(path.name, path=path))
    assert header.tensors == local.tensors and header.tokens_fingerprint == local.tokens_fingerprint
    served = sum(int(r[2].split("-")[1]) - int(r[2].split("=")[1].split("-")[0]) + 1 for r in mirror.requests)
    assert all(r[0] == "GET" and r[2] and r[2].startswith("bytes=") for r in mirror.requests)
    assert header.bytes_fetched <= served  # never more than asked for
    assert header.header_bytes <= header.bytes_fetched < 2 * header.header_bytes + gguf_info.FIRST_CHUNK
    assert header.bytes_fetched < path.stat().st_size / 100
    assert header.size == path.stat().st_size


def test_add_from_a_url_records_it_and_hashes_the_whole_file(real_models, mirror, inventory, capsys):
    path = real_models["partial"]
    url = f"{mirror.url}/{path.name}"
    code, out, err = add(url, inventory, capsys)
    assert code == 0, err
    entry = load_inventory(inventory).models["smollm2-partial-31"]
    local = facts_of(path)
    assert entry.files[0].url == url and entry.files[0].sha256 == local.files[0].sha256
    assert entry.files[0].size == path.stat().st_size and entry.architecture.layers == local.layers
    full = [r for r in mirror.requests if r[2] is None]
    assert len(full) == 1 and full[0][:2] == ("GET", f"/{path.name}")


def test_hf_reference_resolves_and_reads_over_http(real_models, mirror, inventory, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", mirror.url)
    code, out, err = add("hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf",
                         inventory, capsys, "--name", "smollm2")
    assert code == 0, err
    entry = load_inventory(inventory).models["smollm2"]
    assert entry.files[0].url == (f"{mirror.url}/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/resolve/main/"
                                  "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert entry.files[0].sha256 == facts_of(real_models["smollm2"]).files[0].sha256


def test_ranges_follow_redirects_as_the_hub_sends_them(real_models, mirror, inventory, capsys, monkeypatch):
    """The Hub answers resolve/ URLs with a redirect to its storage; Range must survive it."""
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(302)
            self.send_header("Location", mirror.url + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format, *args):  # noqa: A002
            pass

    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.server_address[1]}")
    try:
        code, _, err = add("hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf",
                           inventory, capsys)
    finally:
        hub.shutdown()
        hub.server_close()
    assert code == 0, err
    ranged = [r for r in mirror.requests if r[2] is not None]
    assert ranged and sum(1 for r in mirror.requests if r[2] is None) == 1  # header by Range, then one full read
    assert load_inventory(inventory).models["smollm2-135m-instruct-q4-1"].files[0].sha256 == \
        facts_of(real_models["smollm2"]).files[0].sha256


def test_a_server_that_shortens_ranges_is_asked_again(real_models, tmp_path):
    """Some servers answer a large Range with fewer bytes (206 with a shorter Content-Range): that is not
    the end of the file, the reader asks for the rest."""
    class Capped(MirrorHandler):
        def send_head(self):
            first, _, last = (self.headers.get("Range") or "bytes=0-").removeprefix("bytes=").partition("-")
            if last and int(last) - int(first) >= 100_000:
                self.headers.replace_header("Range", f"bytes={first}-{int(first) + 99_999}")
            return super().send_head()

    server = MirrorServer(real_models["smollm2"].parent, handler=Capped).start()
    try:
        header = gguf_info.read_header(gguf_info.FileSource("m", url=f"{server.url}/{real_models['smollm2'].name}"))
    finally:
        server.stop()
    assert header.block_count == 30 and header.header_bytes <= header.bytes_fetched < header.header_bytes + 100_000
    assert len(server.requests) > header.header_bytes // 100_000


def test_a_server_without_range_support_is_read_as_one_stream(real_models, tmp_path):
    root = tmp_path / "plain"
    root.mkdir()
    os.link(real_models["smollm2"], root / "m.gguf")
    handler = lambda *a, **k: QuietHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/m.gguf"
        header = gguf_info.read_header(gguf_info.FileSource("m.gguf", url=url))
        assert header.block_count == 30
        assert header.bytes_fetched < 2 * header.header_bytes + gguf_info.FIRST_CHUNK
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Python's file server: no Range support, every GET answers 200 with the whole file."""

    def log_message(self, format, *args):  # noqa: A002
        pass


# --- bad sources: one clear line each ------------------------------------------------------------


def closed_port_url() -> str:
    return f"http://127.0.0.1:{servers.free_port()}/m.gguf"


BAD_SOURCES = [  # (source, given the mirror's URL and a temp folder; what the one line says)
    ("missing file", lambda url, d: str(d / "nope.gguf"), "nope.gguf: no such file"),
    ("a folder", lambda url, d: str(d), "is a directory"),
    ("a device", lambda url, d: "/dev/zero", "/dev/zero: not a regular file"),
    ("a FIFO", lambda url, d: (os.mkfifo(d / "fifo.gguf"), str(d / "fifo.gguf"))[1], "not a regular file"),
    ("empty file", lambda url, d: str(_file(d / "empty.gguf", b"")), "truncated: the file ends at byte 0"),
    ("not a GGUF", lambda url, d: str(_file(d / "readme.gguf", b"# hello\n" * 50)), "not a GGUF file"),
    ("truncated header", lambda url, d: str(_file(d / "cut.gguf", cache.ensure_smollm2().read_bytes()[:100_000])),
     "truncated: the file ends at byte 100000, inside the GGUF header"),
    ("absurd length", lambda url, d: str(_file(d / "huge.gguf", b"GGUF" + (3).to_bytes(4, "little")
                                               + (1).to_bytes(8, "little") + (1).to_bytes(8, "little")
                                               + (2**40).to_bytes(8, "little"))), "a corrupt header?"),
    ("absurd array", lambda url, d: str(_file(d / "array.gguf", b"GGUF" + (3).to_bytes(4, "little")
                                              + (0).to_bytes(8, "little") + (1).to_bytes(8, "little")
                                              + (1).to_bytes(8, "little") + b"k" + (9).to_bytes(4, "little")
                                              + (0).to_bytes(4, "little") + (2**40).to_bytes(8, "little"))),
     "claims 1099511627776 items"),
    ("HTTP 404", lambda url, d: f"{url}/absent.gguf", "absent.gguf: HTTP 404"),
    ("remote not a GGUF", lambda url, d: f"{url}/notes.gguf", "not a GGUF file"),
    ("remote truncated", lambda url, d: f"{url}/cut.gguf", "truncated: the file ends at byte 300000"),
    ("nothing listening", lambda url, d: closed_port_url(), "cannot fetch"),
    ("bad hf reference", lambda url, d: "hf://org/file.gguf", "hf://ORG/REPO/FILE.gguf"),
]


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, message", [b[1:] for b in BAD_SOURCES], ids=[b[0] for b in BAD_SOURCES])
def test_bad_sources_end_with_one_clear_line(make, message, mirror, inventory, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    before = inventory.read_text()
    code, out, err = add(make(mirror.url, folder), inventory, capsys)
    assert code == 1 and not out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llamafleet model: ") and message in lines[0], err
    assert inventory.read_text() == before


def test_an_invalid_inventory_is_reported_as_validate_reports_it(real_models, tmp_path, capsys):
    inv = tmp_path / "bad.yaml"
    inv.write_text(BASE_INVENTORY.replace("os: linux", "os: plan9"))
    code, _, err = add(real_models["smollm2"], inv, capsys)
    assert code == 1 and re.search(r"bad\.yaml:\d+:\d+ LF013 hosts\.local\.os", err)


def test_name_goes_with_one_source(real_models, inventory, capsys):
    code, _, err = add([real_models["smollm2"], real_models["partial"]], inventory, capsys, "--name", "x")
    assert code == 1 and "--name names one model" in err


# --- headers gguf-py writes: MoE, per-layer head counts, explicit head size -----------------------


def write_header_only(path: Path, arch: str, kv: dict, tensors: dict[str, tuple[int, ...]]) -> Path:
    """A GGUF with the given metadata and tensor shapes (zero F32 data, tiny shapes stand for real ones)."""
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    for key, value in kv.items():
        if isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_uint32(key, value)
    for name, shape in tensors.items():
        writer.add_tensor(name, np.zeros(tuple(reversed(shape)), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


SYNTHETIC = [  # (case, arch, kv, tensors by name -> ggml shape (ne0, ne1, ...), expected facts)
    ("moe", "qwen3moe",
     {"qwen3moe.block_count": 2, "qwen3moe.embedding_length": 16, "qwen3moe.attention.head_count": 4,
      "qwen3moe.attention.head_count_kv": 2, "qwen3moe.expert_count": 8, "qwen3moe.expert_used_count": 2},
     {"token_embd.weight": (16, 32), "blk.0.ffn_up_exps.weight": (16, 8, 8), "blk.0.ffn_down_exps.weight": (8, 16, 8),
      "blk.1.ffn_up_exps.weight": (16, 8, 8), "blk.1.ffn_down_exps.weight": (8, 16, 8),
      "blk.0.ffn_up_shexp.weight": (16, 8)},
     {"kv_dim": 8, "moe": (8, 2), "n_params": 16 * 32 + 4 * 1024 + 128,
      "n_active_params": 16 * 32 + 128 + 4 * 1024 * 2 // 8}),
    ("per-layer kv heads", "openelm",
     {"openelm.block_count": 3, "openelm.embedding_length": 64, "openelm.attention.head_count": [4, 8, 8],
      "openelm.attention.head_count_kv": [1, 2, 4], "openelm.attention.key_length": 16},
     {"token_embd.weight": (64, 10)},
     {"kv_dim": 64, "moe": None, "n_params": 640, "n_active_params": 640}),
    ("explicit head size", "gemma3",
     {"gemma3.block_count": 1, "gemma3.embedding_length": 640, "gemma3.attention.head_count": 4,
      "gemma3.attention.head_count_kv": 1, "gemma3.attention.key_length": 256},
     {"token_embd.weight": (640, 4)},
     {"kv_dim": 256, "moe": None, "n_params": 2560, "n_active_params": 2560}),
    ("no kv head count", "gpt2",
     {"gpt2.block_count": 1, "gpt2.embedding_length": 32, "gpt2.attention.head_count": 4},
     {"token_embd.weight": (32, 4)},
     {"kv_dim": 32, "moe": None, "n_params": 128, "n_active_params": 128}),
]


@pytest.mark.parametrize("arch, kv, tensors, expected", [s[1:] for s in SYNTHETIC], ids=[s[0] for s in SYNTHETIC])
def test_facts_from_written_headers(arch, kv, tensors, expected, tmp_path):
    facts = header_facts(write_header_only(tmp_path / "m.gguf", arch, kv, tensors))
    got = {"kv_dim": facts.kv_dim, "moe": facts.moe, "n_params": facts.n_params,
           "n_active_params": facts.n_active_params}
    assert got == expected
    assert facts.quant == "F32"  # no general.file_type: the type holding the most weight bytes
    assert facts.has_chat_template is False and facts.tokenizer == "unknown"


def test_a_header_without_an_architecture_is_not_a_model(tmp_path, inventory, capsys):
    import gguf

    path = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.kv_data[0].pop("general.architecture")
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    code, _, err = add(path, inventory, capsys)
    assert code == 1 and "no general.architecture" in err


# --- the progress bar ----------------------------------------------------------------------------


def test_hashing_shows_progress_on_a_terminal_only(real_models, capsys):
    import subprocess

    source = gguf_info.FileSource(real_models["partial"].name, path=real_models["partial"])
    digest, _ = gguf_info.hash_file(source)
    assert capsys.readouterr().err == ""  # not a terminal: no bar
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()  # a child whose stderr is a terminal of 24 x 80, as a real one has a size
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    code = ("import sys; from pathlib import Path; from llamafleet import gguf_info as g; "
            f"p = Path({str(source.path)!r}); print(g.hash_file(g.FileSource(p.name, path=p))[0])")
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=slave, text=True, cwd=REPO)
    os.close(slave)
    shown = b""
    while True:
        try:
            block = os.read(master, 1 << 16)
        except OSError:  # EIO: the child has gone and everything was read
            break
        if not block:
            break
        shown += block
    os.close(master)
    assert proc.returncode == 0 and proc.stdout.strip() == digest
    assert source.name.encode() in shown and b"B/s" in shown
