"""A proxy in front of several target services: the inventory field, its findings (LF197, LF198) and
the proxy config it renders (one model per model name, its targets as replicas, drafters by tokenizer)."""

from __future__ import annotations

import json

import pytest
from inventory_testlib import EXAMPLES, edit, line_of

from llamafleet.config import check_inventory, load_inventory
from llamafleet.findings import Severity, dotted
from llamafleet.errors import UserError
from llamafleet.proxy.config import ProxyConfig

LOCAL = (EXAMPLES / "local.yaml").read_text()

# A second replica of the slow model (plain, no native draft), SmolLM2 served as a model of its own, and a
# model of another tokenizer family with a drafter of it.
MORE = """
  target2:
    role: target
    host: local
    port: 8091
    model: smollm2-slow
    ctx_size: 2048
    parallel: 2

  small:
    role: target
    host: local
    port: 8092
    model: smollm2
    ctx_size: 1024
    parallel: 3

  other-drafter:
    role: drafter
    host: local
    port: 8093
    model: other

"""
OTHER_MODEL = """  other:
    files:
      - name: other.gguf
        sha256: b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
        size: 98362432
    quant: Q4_1
    tokenizer: otherfamily

services:
"""


def inventory_text(targets: str, drafters: str = "[drafter]") -> str:
    text = edit(LOCAL, "    models: [smollm2, smollm2-slow]\n", "    models: [smollm2, smollm2-slow, other]\n")
    text = edit(text, "\nservices:\n", "\n" + OTHER_MODEL)
    text = edit(text, "  proxy:\n", MORE.lstrip("\n") + "  proxy:\n")
    text = edit(text, "    target: target\n", targets)
    return edit(text, "    drafters: [drafter]\n", f"    drafters: {drafters}\n")


def findings_of(tmp_path, text: str):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return check_inventory(path)


def test_one_target_renders_the_one_server_shape_unchanged():
    inventory = load_inventory(EXAMPLES / "local.yaml")
    config = ProxyConfig.from_inventory(inventory, "proxy")
    assert config.models is None and config.target is not None
    assert "models" not in config.model_dump(mode="json", exclude_none=True)
    (model,) = config.served()
    assert model.name == "smollm2-slow" and [r.target.url for r in model.replicas] == [config.target.url]


def test_targets_become_models_with_replicas_and_drafters_by_tokenizer(tmp_path):
    text = inventory_text("    targets: [target, small, target2]\n", "[drafter, other-drafter]")
    inventory, findings = findings_of(tmp_path, text)
    # other-drafter fits none of the models: LF198 on it, at its line.
    (finding,) = [f for f in findings if f.code == "LF198"]
    assert finding.severity is Severity.error and dotted(finding.path) == "services.proxy.drafters[1]"
    assert finding.line == line_of(text, "    drafters: [drafter, other-drafter]")
    assert "otherfamily" in finding.message and finding.hint

    ok = inventory_text("    targets: [target, small, target2]\n")
    path = tmp_path / "ok.yaml"
    path.write_text(ok)
    inventory, findings = check_inventory(path)
    assert inventory is not None, "\n".join(map(str, findings))
    config = ProxyConfig.from_inventory(inventory, "proxy")
    assert config.target is None
    by_name = {m.name: m for m in config.models}
    assert list(by_name) == ["smollm2-slow", "smollm2"]  # inventory order, one entry per model
    slow = by_name["smollm2-slow"]
    assert [r.service for r in slow.replicas] == ["target", "target2"]
    # The natively speculating target keeps its plain sidecar; the plain replica is its own plain path.
    assert slow.replicas[0].target.name == "target-plain" and slow.replicas[0].target.url.endswith(":8083")
    assert slow.replicas[0].native is not None and slow.replicas[0].native.url.endswith(":8081")
    assert slow.replicas[1].native is None and slow.replicas[1].target.url.endswith(":8091")
    assert [r.target.slots for r in slow.replicas] == [4, 2]
    assert [d.name for d in slow.drafters] == ["drafter"] and [d.name for d in by_name["smollm2"].drafters] == ["drafter"]
    # What the deploy writes round-trips through the file loader, and each replica is a valid one-server config.
    rendered = json.loads(json.dumps(config.model_dump(mode="json", exclude_none=True)))
    assert ProxyConfig.model_validate(rendered) == config
    assert config.replica_config(slow, slow.replicas[1]).target.url.endswith(":8091")
    assert config.replica_of("target2") is slow.replicas[1]
    # Modes offered are those every replica has: native only on target, so not native.
    assert [m.value for m in config.available_modes()] == ["auto", "direct", "proxy"]


def test_a_target_listed_twice_is_lf197(tmp_path):
    text = inventory_text("    targets: [small, target, small]\n")
    _, findings = findings_of(tmp_path, text)
    (finding,) = [f for f in findings if f.code == "LF197"]
    assert finding.severity is Severity.error and dotted(finding.path) == "services.proxy.targets[2]"
    assert finding.line == line_of(text, "    targets: [small, target, small]")


@pytest.mark.parametrize("fields", [
    "    target: target\n    targets: [small]\n",
    "    targets: []\n",
    "",
])
def test_exactly_one_of_target_and_targets(tmp_path, fields):
    _, findings = findings_of(tmp_path, inventory_text(fields))
    problems = [f for f in findings if f.severity is Severity.error]
    assert any("exactly one of target" in f.message and dotted(f.path) == "services.proxy.targets"
               for f in problems), "\n".join(map(str, problems))


def test_targets_name_target_services(tmp_path):
    _, findings = findings_of(tmp_path, inventory_text("    targets: [small, drafter, nosuch]\n"))
    wrong = {(f.code, dotted(f.path)) for f in findings}
    assert ("LF161", "services.proxy.targets[1]") in wrong and ("LF160", "services.proxy.targets[2]") in wrong


def test_native_mode_needs_every_replica_to_speculate(tmp_path):
    text = edit(inventory_text("    targets: [target, target2]\n"), "    mode: auto\n", "    mode: native\n")
    _, findings = findings_of(tmp_path, text)
    lf190 = [f for f in findings if f.code == "LF190"]
    assert len(lf190) == 1 and "'target2'" in lf190[0].message


def test_proxy_config_file_rejects_a_mixed_or_empty_shape(tmp_path):
    replica = {"service": "a", "target": {"name": "a", "url": "http://127.0.0.1:1"}}
    cases = {
        "both.json": {"target": {"name": "a", "url": "http://127.0.0.1:1"}, "models": [{"name": "m", "replicas": [replica]}]},
        "none.json": {},
        "twice.json": {"models": [{"name": "m", "replicas": [replica]}, {"name": "m", "replicas": [replica]}]},
        "noreplica.json": {"models": [{"name": "m", "replicas": []}]},
        "proxy-mode.json": {"mode": "proxy", "models": [{"name": "m", "replicas": [replica]}]},
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_text(json.dumps(data))
        with pytest.raises(UserError) as err:
            ProxyConfig.load(path)
        assert str(path) in str(err.value) and "Traceback" not in str(err.value), name


def test_doctor_compares_each_drafter_with_the_targets_of_its_tokenizer_family(tmp_path):
    from llamafleet.doctor import Doctor

    text = inventory_text("    targets: [target, small, other-target]\n", "[drafter, other-drafter]")
    text = edit(text, "  proxy:\n", "  other-target:\n    role: target\n    host: local\n    port: 8094\n"
                "    model: other\n\n  proxy:\n")
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    inventory = load_inventory(path)
    config = ProxyConfig.from_inventory(inventory, "proxy")
    assert {m.name: [d.name for d in m.drafters] for m in config.models} == {
        "smollm2-slow": ["drafter"], "smollm2": ["drafter"], "other": ["other-drafter"]}
    pairs = Doctor(inventory, http=None, expect=None, proxy_token=None).vocabulary_pairs()
    assert [(d, t) for d, t in pairs if d in ("drafter", "other-drafter")] == [
        ("drafter", "target"), ("drafter", "small"), ("other-drafter", "other-target")]


def test_proxy_config_file_names_the_replica_a_mode_is_missing_on(tmp_path):
    plain = {"service": "b", "target": {"name": "b", "url": "http://127.0.0.1:2", "slots": 2}}
    native = {"service": "a", "target": {"name": "a", "url": "http://127.0.0.1:1", "slots": 2},
              "native": {"name": "a", "url": "http://127.0.0.1:1"}}
    path = tmp_path / "proxy.json"
    path.write_text(json.dumps({"mode": "native", "models": [{"name": "m", "replicas": [native, plain]}]}))
    with pytest.raises(UserError, match=r"model 'm', replica 'b': mode 'native' is not available"):
        ProxyConfig.load(path)
    path.write_text(json.dumps({"mode": "native", "models": [{"name": "m", "replicas": [native]}]}))
    assert [m.value for m in ProxyConfig.load(path).available_modes()] == ["auto", "direct", "native"]
