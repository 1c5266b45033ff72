"""Every value typed for what it may be: each bad inventory of ``bad_inventories.CASES`` ends in its own
finding (code, dotted path, line), never in an accepted inventory or an exception; and no string field
of the schema accepts a control character."""

from __future__ import annotations

import json

import jsonschema
import pytest
from bad_inventories import CASES, Bad
from inventory_testlib import REPO, edit, line_of

from llamafleet.config import check_inventory
from llamafleet.findings import Severity, dotted


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_value_ends_in_its_finding(tmp_path, case: Bad):
    path, text = case.write(tmp_path)
    inventory, findings = check_inventory(path)
    assert inventory is None, f"accepted: {case.name}"
    hits = [f for f in findings if f.code == case.code and dotted(f.path) == case.path]
    assert hits, "\n".join(map(str, findings))
    finding = hits[0]
    assert finding.severity is Severity.error and finding.message
    assert (finding.line, finding.col is not None) == (line_of(text, case.snippet), True), str(finding)


def test_cases_cover_every_class():
    kinds = {c.kind for c in CASES}
    assert kinds >= {"control character", "address", "driver version", "path", "file name", "URL", "env key",
                     "cross-field", "YAML tag", "placement", "firewall", "file cache", "proxy TLS", "rpc-worker cache"}
    assert len({c.name for c in CASES}) == len(CASES)


GOOD = {  # legitimate values of each kind, accepted
    "install_dir": ["/opt/llamafleet", "/srv/llama fleet/x", "/"],
    "mirror": ["http://127.0.0.1:8765", "https://mirror.example.org/llama.cpp/", "http://[::1]:8080/x?y=1"],
    "bind": ["192.168.1.10", "::1", "gpu-1.lan", "localhost"],
}


@pytest.mark.parametrize("field,value", [(k, v) for k, vs in GOOD.items() for v in vs])
def test_legitimate_values_pass(write, local_text, field, value):
    old = {"install_dir": "    install_dir: /opt/llamafleet\n", "mirror": "  mirror: http://127.0.0.1:8765\n",
           "bind": "    bind: 127.0.0.1\n    port: 8080\n"}[field]
    new = old.replace(old.split(": ", 1)[1].split("\n")[0], json.dumps(value))
    if field == "bind":  # a proxy beyond loopback keeps its auth; that is all LF191 wants
        new = old.replace("127.0.0.1", json.dumps(value))
    inventory, findings = check_inventory(write(edit(local_text, old, new)))
    errors = [str(f) for f in findings if f.severity is Severity.error]
    assert inventory is not None and not errors, errors


def _string_schemas(node, where="#"):
    """Every schema of type string without an enum or const (free text), with where it sits."""
    if isinstance(node, dict):
        if node.get("type") == "string" and "enum" not in node and "const" not in node:
            yield where, node
        for key, child in node.items():
            yield from _string_schemas(child, f"{where}/{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _string_schemas(child, f"{where}/{index}")


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\tb", "a\x00b", "a\x1bb", "a\x7fb", "a\x85b", "a\u2028b"],
                         ids=repr)
def test_no_string_field_accepts_a_control_character(bad):
    schema = json.loads((REPO / "schemas" / "inventory.schema.json").read_text())
    strings = list(_string_schemas(schema))
    assert len(strings) > 20
    for where, sub in strings:
        assert "pattern" in sub, f"{where} has no pattern: it accepts any text"
        assert not jsonschema.Draft202012Validator(sub).is_valid(bad), f"{where} accepts {bad!r}"
