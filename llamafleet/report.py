"""A run of host checks (``llamafleet drift``, ``doctor``, ``model verify``) and its three renderings.

A *check* is one thing compared on one host ("model smollm2", "unit llama-target", ...). Every check
that ran yields one :class:`~llamafleet.findings.Finding`, including the ones that passed, so that a
JUnit report has one testcase per host x check and a passing run still shows what was looked at.

Exit codes follow ``terraform plan -detailed-exitcode``: 0 nothing differs, 2 something differs,
1 something could not be checked (an unreachable host, a bad inventory). An error outranks a
difference: a CI job must not report "only drift" when part of the cluster was never looked at.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, TextIO, TypeVar

from llamafleet.config.models import Inventory
from llamafleet.config.pyinfra_groups import groups
from llamafleet.errors import UserError
from llamafleet.findings import Finding, Severity

EXIT_CLEAN = 0
EXIT_ERROR = 1
EXIT_DIFFERS = 2


@dataclass
class Report:
    """All findings of one run, in the order the checks ran."""

    command: str  # "drift" or "doctor": names the JUnit suite and the summary line
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # run-wide caveats, printed before the summary
    stats: dict = field(default_factory=dict)  # figures about the run itself (JSON only)

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def extend(self, findings: Iterable[Finding]) -> None:
        self.findings.extend(findings)

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity is severity)

    @property
    def hosts(self) -> list[str]:
        return list(dict.fromkeys(f.host for f in self.findings))

    def exit_code(self) -> int:
        if self.count(Severity.error):
            return EXIT_ERROR
        if self.count(Severity.fail):
            return EXIT_DIFFERS
        return EXIT_CLEAN

    def summary(self) -> str:
        parts = [f"{len(self.hosts)} host(s)", f"{len(self.findings)} check(s)"]
        for severity in (Severity.fail, Severity.error, Severity.warning, Severity.skipped):
            if n := self.count(severity):
                parts.append(f"{n} {severity.value}")
        verdict = {EXIT_CLEAN: "no differences", EXIT_DIFFERS: "differences found", EXIT_ERROR: "errors"}
        return f"llamafleet {self.command}: {verdict[self.exit_code()]} ({', '.join(parts)})"


# --- renderers -----------------------------------------------------------------------------------

_TABLE_COLUMNS = ("HOST", "CHECK", "STATUS", "EXPECTED", "ACTUAL")
_CELL_MAX = 48  # long values are cut in the table; the notes below it and --json carry them whole


def _cell(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _CELL_MAX else flat[: _CELL_MAX - 1] + "…"


def render_table(report: Report, *, show_ok: bool = False) -> str:
    """Problems (and warnings/skips) as a table, then each one's hint and evidence, then a summary."""
    shown = [f for f in report.findings if show_ok or f.severity is not Severity.ok]
    lines: list[str] = []
    if shown:
        rows = [_TABLE_COLUMNS] + [
            (f.host, f.check, f.severity.value.upper(), _cell(f.expected), _cell(f.actual)) for f in shown
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_TABLE_COLUMNS))]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        notes = [f for f in shown if f.severity is not Severity.ok
                 and (f.hint or f.detail or len(f.expected) > _CELL_MAX or len(f.actual) > _CELL_MAX)]
        if notes:
            lines.append("")
        for f in notes:
            long = len(f.expected) > _CELL_MAX or len(f.actual) > _CELL_MAX
            if not (long or f.detail):  # a hint alone fits on one line
                lines.append(f"{f.host} / {f.check}: hint: {f.hint}")
                continue
            lines.append(f"{f.host} / {f.check}:")
            if long:
                lines += [f"  expected: {f.expected}", f"  actual:   {f.actual}"]
            if f.detail:
                lines += ["  " + line for line in f.detail.rstrip("\n").splitlines()]
            if f.hint:
                lines.append(f"  hint: {f.hint}")
        lines.append("")
    lines += [f"note: {note}" for note in report.notes]
    lines.append(report.summary())
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    findings = [f.to_json() for f in report.findings]
    return json.dumps(
        {
            "command": report.command,
            "exit_code": report.exit_code(),
            "summary": report.summary(),
            "notes": report.notes,
            "stats": report.stats,
            "findings": findings,
        },
        indent=2,
    ) + "\n"


def _failure_message(f: Finding) -> str:
    message = f.text or f.check
    return f"{message}. {f.hint}" if f.hint else message


def render_junit(report: Report) -> str:
    """JUnit XML: one <testsuite> per host, one <testcase> per check on that host."""
    root = ET.Element("testsuites", name=f"llamafleet {report.command}")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for host in report.hosts:
        cases = [f for f in report.findings if f.host == host]
        counts = {
            "tests": len(cases),
            "failures": sum(f.severity is Severity.fail for f in cases),
            "errors": sum(f.severity is Severity.error for f in cases),
            "skipped": sum(f.severity is Severity.skipped for f in cases),
        }
        suite = ET.SubElement(root, "testsuite", name=f"{report.command}.{host}", **{k: str(v) for k, v in counts.items()})
        for f in cases:
            case = ET.SubElement(suite, "testcase", classname=f"llamafleet.{report.command}.{host}", name=f.check)
            if f.severity in (Severity.fail, Severity.error):
                tag = "failure" if f.severity is Severity.fail else "error"
                element = ET.SubElement(case, tag, message=_failure_message(f), type=f.severity.value)
                element.text = f.detail or None
            elif f.severity is Severity.skipped:
                ET.SubElement(case, "skipped", message=f.hint or f.actual)
            elif f.severity is Severity.warning:
                ET.SubElement(case, "system-out").text = _failure_message(f)
        for key, value in counts.items():
            totals[key] += value
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# --- the options both commands share -------------------------------------------------------------


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the findings as JSON instead of a table")
    parser.add_argument("--junit", metavar="FILE", type=Path, help="also write a JUnit XML report to FILE")
    parser.add_argument("--verbose", "-v", action="store_true", help="list passing checks in the table too")
    parser.add_argument(
        "--limit",
        metavar="HOST|GROUP",
        action="append",
        default=[],
        help="only these hosts or groups (as pyinfra: a group name or a host glob; repeatable)",
    )


DEFAULT_PARALLEL = 16


def add_parallel_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--parallel", metavar="N", default=None,
                        help=f"{what} at most N hosts at a time (default: all of them, up to {DEFAULT_PARALLEL})")


def parallel_count(value: str | None, hosts: int) -> int:
    """``--parallel``: a whole number of hosts, 1 or more; by default every host at once, up to
    ``DEFAULT_PARALLEL`` (each host holds one thread and, for drift, one SSH connection)."""
    if value is None:
        return max(1, min(DEFAULT_PARALLEL, hosts))
    try:
        count = int(value.strip())
    except ValueError:
        count = 0
    if count < 1:
        raise UserError(f"--parallel {value}: expected a whole number of hosts, 1 or more")
    return count


T = TypeVar("T")


def by_host(tasks: Iterable[tuple[str, Callable[[], T]]], parallel: int) -> list[T]:
    """Run ``(host, task)`` pairs on at most ``parallel`` threads: one host's tasks one after another
    (a dead host makes only its own tasks wait for their timeouts), different hosts side by side.
    The results come back in the order of ``tasks``, whatever order the hosts finish in."""
    tasks = list(tasks)
    per_host: dict[str, list[int]] = {}
    for index, (host, _) in enumerate(tasks):
        per_host.setdefault(host, []).append(index)
    results: list = [None] * len(tasks)

    def run_host(indexes: list[int]) -> None:
        for index in indexes:
            results[index] = tasks[index][1]()

    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(per_host)))) as pool:
        for future in [pool.submit(run_host, indexes) for indexes in per_host.values()]:
            future.result()  # re-raises a task's unexpected exception here, in the caller's thread
    return results


def emit(report: Report, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the report the way the options ask, write the JUnit file, return the exit code."""
    out = out or sys.stdout
    out.write(render_json(report) if args.json else render_table(report, show_ok=args.verbose))
    if args.junit:
        try:
            args.junit.parent.mkdir(parents=True, exist_ok=True)
            args.junit.write_text(render_junit(report))
        except OSError as err:
            raise UserError(f"cannot write the JUnit report to {args.junit}: {err.strerror}") from None
    return report.exit_code()


def select_hosts(all_hosts: Iterable[str], groups: dict[str, list[str]], patterns: Iterable[str]) -> list[str]:
    """pyinfra's --limit rule: each pattern is a group name, else a glob over host names. A pattern
    that matches nothing is an error here (pyinfra only warns): a CI job must not pass by checking
    nothing."""
    hosts = list(all_hosts)
    patterns = list(patterns)
    if not patterns:
        return hosts
    chosen: set[str] = set()
    for pattern in patterns:
        matched = groups[pattern] if pattern in groups else [h for h in hosts if fnmatch(h, pattern)]
        if not matched:
            known = ", ".join(sorted(groups)) or "none"
            raise UserError(f"--limit {pattern}: matches no host and no group (groups: {known})")
        chosen.update(matched)
    return [h for h in hosts if h in chosen]


def selected_hosts(inventory: Inventory, path: Path, patterns: Iterable[str]) -> list[str]:
    """--limit over the groups inventory/cluster.py gives pyinfra, by inventory host name."""
    by_group = {group: [data["llamafleet_host"] for _, data in entries]
                for group, entries in groups(inventory, path).items()}
    return select_hosts(inventory.hosts, by_group, patterns)
