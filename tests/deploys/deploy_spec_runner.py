"""A small runner for pyinfra-style YAML specs (the format pyinfra and pyinfra-testing use).

pyinfra-testing itself imports ``pyinfra_cli``, which monkey-patches the whole test process with
gevent; that would change every other test in the session, so the same format is run here directly.
Operation spec: ``args``/``kwargs`` in, ``commands`` out (or ``exception: {name, message}``).
Fact spec: ``arg`` in, ``command`` (optional) and ``output`` -> ``fact``.
A Python callback an operation yields (pyinfra's FunctionCommand, run on the controller at execution
time) is written ``[function, <name>, <args>...]``.
In expected commands, ``B64(<json>)`` stands for that JSON as the deploy base64-encodes it for
Windows (compact, sorted keys), so the specs stay readable.
"""

from __future__ import annotations

import base64
import importlib
import json
import re
from pathlib import Path

import pytest
import yaml
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand


def command_json(command):
    if isinstance(command, str):
        command = StringCommand(command.strip())
    if isinstance(command, StringCommand):
        return command.get_raw_value()
    if isinstance(command, FileUploadCommand):
        src = command.src
        data = src.getvalue().decode() if hasattr(src, "getvalue") else str(src)
        return ["upload", data, str(command.dest)]
    if isinstance(command, FunctionCommand):  # runs on the controller while the deploy executes
        return ["function", command.function.__name__, *command.args]
    raise AssertionError(f"unexpected command type {command!r}")


def load_specs(folder: Path) -> list:
    cases = []
    for kind in ("operations", "facts"):
        for spec_dir in sorted((folder / kind).iterdir()):
            for case in sorted(spec_dir.glob("*.yaml")):
                cases.append(pytest.param(kind, spec_dir.name, case, id=f"{spec_dir.name}/{case.stem}"))
    return cases


def resolve(kind: str, dotted: str):
    module, attr = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(f"llamafleet.deploys.{kind}.{module}"), attr)


def expand_b64(command):
    if not isinstance(command, str):
        return command
    return re.sub(r"B64\((\{.*\})\)", lambda m: base64.b64encode(
        json.dumps(json.loads(m.group(1)), sort_keys=True).encode()).decode(), command)


def run_operation_spec(dotted: str, spec: dict) -> None:
    op = resolve("operations", dotted)
    args, kwargs = spec.get("args", []), spec.get("kwargs", {})
    if "exception" in spec:
        with pytest.raises(Exception) as info:
            list(op.commands(*args, **kwargs))
        assert type(info.value).__name__ == spec["exception"]["name"]
        assert spec["exception"]["message"] in str(info.value)
        return
    got = [command_json(c) for c in op.commands(*args, **kwargs)]
    assert got == [expand_b64(c) for c in spec["commands"]]


def run_fact_spec(dotted: str, spec: dict) -> None:
    fact = resolve("facts", dotted)()
    arg = spec.get("arg", {})
    if "command" in spec:
        command = fact.command(**arg) if callable(fact.command) else fact.command
        assert command == spec["command"]
    output = spec["output"]
    lines = output.splitlines() if isinstance(output, str) else output
    assert fact.process(lines) == spec["fact"]


def run_spec(kind: str, dotted: str, path: Path) -> None:
    spec = yaml.safe_load(path.read_text())
    (run_operation_spec if kind == "operations" else run_fact_spec)(dotted, spec)
