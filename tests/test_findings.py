"""The one Finding type: inventory findings (validate) and host findings (drift, doctor) share its
line form, its JSON form and its guards."""

from __future__ import annotations

import json

import pytest

from llamafleet.config import InventoryError
from llamafleet.findings import Finding, Severity, dotted, problem
from llamafleet.report import Report, render_json


@pytest.mark.parametrize("path, expected", [
    ((), "(document)"),
    (("hosts",), "hosts"),
    (("hosts", "desktop", "gpus", 1, "vram_gb"), "hosts.desktop.gpus[1].vram_gb"),
    (("hosts", "a b", "port"), "hosts['a b'].port"),
    ((0, "x"), "[0].x"),
])
def test_dotted_paths(path, expected):
    assert dotted(path) == expected


@pytest.mark.parametrize("finding, line", [
    (problem("LF101", "bad build", "remove it", ("hosts", "a", "llama_cpp_build"), file="c.yaml", line=3, col=5),
     "c.yaml:3:5 LF101 hosts.a.llama_cpp_build: bad build (hint: remove it)"),
    (problem("LF102", "may lack it", "", ("services", "t", "extra_args", 0), Severity.warning, file="c.yaml",
             line=9, col=7),
     "c.yaml:9:7 warning LF102 services.t.extra_args[0]: may lack it"),
    (problem("LF001", "no such file", file="missing.yaml"), "missing.yaml LF001: no such file"),
    (Finding("node-a", "unit llama", Severity.fail, "enabled", "disabled", hint="llamafleet deploy"),
     "node-a fail unit llama: expected enabled, actual disabled (hint: llamafleet deploy)"),
    (Finding("node-b", "health", Severity.error, hint="start it"), "node-b health: (hint: start it)"),
])
def test_one_line_form_for_every_kind(finding, line):
    assert str(finding) == line


def test_one_json_form_for_every_kind():
    inventory = problem("LF012", "must be an integer", "", ("services", "d", "port"), file="c.yaml", line=4, col=11)
    host = Finding("node-a", "model m", Severity.ok, "sha256 ab", "sha256 ab")
    assert inventory.to_json().keys() == host.to_json().keys()
    assert inventory.to_json() == {"host": "", "check": "", "severity": "error", "expected": "", "actual": "",
                                   "hint": "", "detail": "", "code": "LF012", "message": "must be an integer",
                                   "path": "services.d.port", "file": "c.yaml", "line": 4, "col": 11}
    report = Report("drift", [host])
    assert json.loads(render_json(report))["findings"] == [host.to_json()]


@pytest.mark.parametrize("args, kwargs", [
    (("LF101", "a message", "a hint", ("hosts",)), {}),  # the inventory order, positionally: severity is a hint
    (("node", "check", "fail"), {}),  # a string, not a Severity
    ((), {"host": "node"}),  # names neither a check nor a code
])
def test_a_malformed_finding_is_refused(args, kwargs):
    with pytest.raises(TypeError):
        Finding(*args, **kwargs)


def test_inventory_error_lists_every_finding_and_counts_errors():
    findings = [problem("LF010", "unknown key 'x'", "", ("x",), file="c.yaml", line=1, col=1),
                problem("LF193", "no plain path", "", ("services", "p"), Severity.warning, file="c.yaml", line=7,
                        col=3)]
    assert str(InventoryError(findings)).splitlines() == [
        "1 error(s) in the inventory:",
        "c.yaml:1:1 LF010 x: unknown key 'x'",
        "c.yaml:7:3 warning LF193 services.p: no plain path",
    ]
