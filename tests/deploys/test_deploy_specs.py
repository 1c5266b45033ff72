"""Table-driven specs in pyinfra's own style: every operation and fact of llamafleet.deploys, per OS,
backend and service manager. Each YAML file is one case: the arguments (the slice of the HostState
fact the operation reads) and the exact commands expected.

Fact specs hold outputs of tools that cannot run here (nvidia-smi, amd-smi, rocm-smi, PowerShell,
sw_vers: no GPU, Windows or macOS on this machine). Each says where its output comes from in its
first line; they are representative outputs in the tools' documented formats, not captures made here.
"""

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
from pyinfra.api import FactBase

import llamafleet.deploys.facts as facts_pkg
import llamafleet.deploys.operations as ops_pkg
from deploy_spec_runner import load_specs, run_spec

SPECS = Path(__file__).parent / "specs"


@pytest.mark.parametrize("kind,dotted,path", load_specs(SPECS))
def test_spec(kind, dotted, path):
    run_spec(kind, dotted, path)


def _defined(pkg, predicate) -> set[str]:
    names = set()
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        names |= {f"{info.name}.{attr}" for attr, value in vars(module).items()
                  if getattr(value, "__module__", None) == module.__name__ and predicate(value)}
    return names


def test_every_operation_and_fact_has_specs():
    """A new operation or fact without a spec folder fails here rather than going untested."""
    have = {p.name for p in (SPECS / "operations").iterdir()} | {p.name for p in (SPECS / "facts").iterdir()}
    have |= {"proxy.project"}  # its expected record is a hash of the sources: tested below and end to end
    have |= {"readiness.gated"}  # wraps another operation behind a callable: tested below and end to end
    wanted = _defined(ops_pkg, lambda v: hasattr(v, "commands")) | _defined(
        facts_pkg, lambda v: inspect.isclass(v) and issubclass(v, FactBase))
    assert sorted(wanted - have) == []


def test_fact_specs_say_where_their_output_comes_from():
    for spec in (SPECS / "facts").rglob("*.yaml"):
        assert spec.read_text().startswith("# Output:"), f"{spec} must start with '# Output: <provenance>'"


def test_proxy_project_is_a_noop_when_the_venv_record_names_these_sources():
    from llamafleet.deploys.operations import proxy
    from llamafleet.deploys.operations.common import sha256_text

    record = "/lf/venv/llamafleet-wheel.json"
    state_files = {record: {"sha256": sha256_text(proxy.record_text()), "mode": "0644", "owner": "root"}}
    assert list(proxy.project.commands("/lf/venv", "/lf/downloads", record, state_files)) == []


def test_a_gated_operation_yields_the_inner_commands_only_while_its_gate_is_open():
    from llamafleet.deploys.operations import llama_cpp, readiness

    inner = {"helper": "/lf/lib/lf_host.py", "install_dir": "/lf"}
    expected = list(llama_cpp.rollback.commands(**inner))
    assert expected
    assert list(readiness.gated.commands(lambda: True, llama_cpp.rollback, inner)) == expected
    assert list(readiness.gated.commands(lambda: False, llama_cpp.rollback, inner)) == []
