"""ci/: the GitHub Actions workflow is valid YAML wired as documented, and the workflow and the
plain script name only llamafleet subcommands and options that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from llamafleet.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "ci" / "github" / "llamafleet.yml"
SCRIPT = ROOT / "ci" / "drift-check.sh"

# "llamafleet SUB ..." or "$llamafleet SUB ..." up to the end of the line.
INVOCATION = re.compile(r'(?:^|[\s;(|&])"?\$?\{?llamafleet\}?"? +([a-z][a-z-]*)([^\n]*)')
OPTION = re.compile(r"(?<![\w$-])(--?[a-z][a-z-]*)")


def workflow() -> dict:
    return YAML(typ="safe").load(WORKFLOW.read_text())


def run_scripts() -> list[str]:
    return [step["run"] for job in workflow()["jobs"].values() for step in job["steps"] if "run" in step]


def subcommands() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def invocations(text: str) -> list[tuple[str, list[str]]]:
    found = []
    for sub, rest in INVOCATION.findall(text):
        # Drop shell expansions such as ${LIMIT:+--limit "$LIMIT"} only as far as their names go:
        # the options they add are still options of the subcommand.
        found.append((sub, OPTION.findall(rest)))
    return found


def test_workflow_triggers_and_jobs():
    wf = workflow()
    triggers = wf["on"]
    assert set(triggers) == {"push", "pull_request", "schedule", "workflow_dispatch"}
    assert triggers["schedule"][0]["cron"].count(" ") == 4
    jobs = wf["jobs"]
    assert set(jobs) == {"validate", "drift"}
    assert "push" in jobs["validate"]["if"] and "schedule" in jobs["drift"]["if"]
    assert "workflow_dispatch" in jobs["drift"]["if"]
    steps = jobs["drift"]["steps"]
    key_step = next(s for s in steps if "ssh-add" in s.get("run", ""))
    assert key_step["env"]["SSH_KEY"] == "${{ secrets.LLAMAFLEET_SSH_KEY }}"
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "reports/"
    junit_outputs = [s["run"] for s in steps if "--junit" in s.get("run", "")]
    assert any("reports/drift.xml" in r for r in junit_outputs) and any("reports/doctor.xml" in r for r in junit_outputs)


@pytest.mark.parametrize("source", ["workflow", "script"])
def test_ci_names_only_real_subcommands_and_options(source):
    text = "\n".join(run_scripts()) if source == "workflow" else SCRIPT.read_text()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    calls = invocations(text)
    assert {sub for sub, _ in calls} == {"validate", "drift", "doctor"}, calls
    choices = subcommands()
    for sub, options in calls:
        assert sub in choices, f"{source} runs 'llamafleet {sub}', which does not exist"
        known = {s for action in choices[sub]._actions for s in action.option_strings}
        for option in options:
            assert option in known, f"{source}: 'llamafleet {sub} {option}' is not an option of {sub}"


def test_script_is_valid_bash_and_executable():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert SCRIPT.stat().st_mode & 0o111


def test_script_stops_at_an_invalid_inventory_with_exit_1(tmp_path):
    bad = tmp_path / "cluster.yaml"
    bad.write_text("version: 1\ncluster: Not A Name\n")
    proc = subprocess.run([str(SCRIPT), str(bad)], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cluster.yaml:2:" in proc.stdout + proc.stderr
    assert not (tmp_path / "reports" / "drift.xml").exists()
