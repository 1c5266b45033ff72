"""The shared findings model and its renderings (used by both drift and doctor)."""

from __future__ import annotations

import argparse
import io
import json
import xml.etree.ElementTree as ET

import pytest

from llamafleet.errors import UserError
from llamafleet.findings import Finding, Severity
from llamafleet.report import (
    EXIT_CLEAN,
    EXIT_DIFFERS,
    EXIT_ERROR,
    Report,
    add_output_options,
    emit,
    render_json,
    render_junit,
    render_table,
    select_hosts,
)


def _report(*severities: Severity) -> Report:
    report = Report("drift")
    for i, severity in enumerate(severities):
        report.add(Finding(f"node-{i % 2}", f"check {i}", severity, expected=f"want {i}", actual=f"got {i}",
                           hint=f"fix {i}" if severity is Severity.fail else ""))
    return report


@pytest.mark.parametrize(
    "severities, code",
    [
        ((Severity.ok, Severity.ok), EXIT_CLEAN),
        ((Severity.ok, Severity.warning, Severity.skipped), EXIT_CLEAN),
        ((Severity.ok, Severity.fail), EXIT_DIFFERS),
        ((Severity.fail, Severity.error), EXIT_ERROR),  # an unchecked host outranks drift elsewhere
        ((Severity.error,), EXIT_ERROR),
    ],
)
def test_exit_codes_follow_terraform_detailed_exitcode(severities, code):
    assert _report(*severities).exit_code() == code


def test_table_lists_problems_with_expected_actual_and_hint_but_not_passes():
    text = render_table(_report(Severity.ok, Severity.fail))
    header, row = text.splitlines()[:2]
    assert header.split() == ["HOST", "CHECK", "STATUS", "EXPECTED", "ACTUAL"]
    assert row.split() == ["node-1", "check", "1", "FAIL", "want", "1", "got", "1"]
    assert "check 0" not in text
    assert "hint: fix 1" in text
    assert text.rstrip().endswith("differences found (2 host(s), 2 check(s), 1 fail)")


def test_table_keeps_long_values_and_diffs_in_the_notes():
    report = Report("drift")
    long = "sha256 " + "ab" * 40
    report.add(Finding("node-a", "unit llama", Severity.fail, long, "x", detail="--- expected\n+++ actual\n-a\n+b"))
    text = render_table(report)
    assert f"expected: {long}" in text
    assert "  +++ actual" in text and "  -a" in text


def test_clean_table_is_one_summary_line():
    assert render_table(_report(Severity.ok)) == "llamafleet drift: no differences (1 host(s), 1 check(s))\n"


def test_json_carries_every_finding_and_the_exit_code():
    data = json.loads(render_json(_report(Severity.ok, Severity.fail)))
    assert data["exit_code"] == EXIT_DIFFERS
    assert [f["severity"] for f in data["findings"]] == ["ok", "fail"]
    assert data["findings"][1] == {"host": "node-1", "check": "check 1", "severity": "fail", "expected": "want 1",
                                   "actual": "got 1", "hint": "fix 1", "detail": "", "code": "", "message": "",
                                   "path": "", "file": "", "line": None, "col": None}


def test_junit_has_one_testcase_per_host_and_check():
    report = _report(Severity.ok, Severity.fail, Severity.error, Severity.skipped, Severity.warning)
    report.add(Finding("node-1", 'quote " & <tag>', Severity.fail, "<a>", "&b", detail="diff & <stuff>"))
    root = ET.fromstring(render_junit(report))
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("6", "2", "1", "1")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"drift.node-0", "drift.node-1"}
    cases = [(c.get("classname"), c.get("name")) for s in root for c in s.findall("testcase")]
    assert len(cases) == len(set(cases)) == 6
    node1 = {c.get("name"): c for c in suites["drift.node-1"].findall("testcase")}
    failure = node1["check 1"].find("failure")
    assert failure.get("message") == "expected want 1, actual got 1. fix 1"
    escaped = node1['quote " & <tag>'].find("failure")
    assert escaped.get("message").startswith("expected <a>, actual &b") and escaped.text == "diff & <stuff>"
    assert node1["check 3"].find("skipped") is not None
    assert suites["drift.node-0"].findall("testcase")[1].find("error") is not None


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_output_options(parser)
    return parser.parse_args(list(argv))


def test_emit_writes_junit_and_returns_the_exit_code(tmp_path):
    out = io.StringIO()
    target = tmp_path / "reports" / "drift.xml"
    assert emit(_report(Severity.fail), _args("--json", "--junit", str(target)), out) == EXIT_DIFFERS
    assert json.loads(out.getvalue())["exit_code"] == EXIT_DIFFERS
    assert ET.parse(target).getroot().get("failures") == "1"


def test_emit_reports_an_unwritable_junit_path_clearly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write the JUnit report to .*file/x.xml"):
        emit(_report(Severity.ok), _args("--junit", str(blocker / "x.xml")), io.StringIO())


HOSTS = ["gpu-box", "mac-mini", "desktop", "laptop"]
GROUPS = {"macos": ["mac-mini", "laptop"], "target": ["gpu-box"]}


@pytest.mark.parametrize(
    "patterns, chosen",
    [
        ([], HOSTS),
        (["macos"], ["mac-mini", "laptop"]),
        (["target", "desk*"], ["gpu-box", "desktop"]),
        (["*-*"], ["gpu-box", "mac-mini"]),
    ],
)
def test_limit_selects_groups_then_host_globs_like_pyinfra(patterns, chosen):
    assert select_hosts(HOSTS, GROUPS, patterns) == chosen


def test_limit_that_matches_nothing_is_an_error_naming_it():
    with pytest.raises(UserError, match=r"--limit nope: matches no host and no group \(groups: macos, target\)"):
        select_hosts(HOSTS, GROUPS, ["nope"])
