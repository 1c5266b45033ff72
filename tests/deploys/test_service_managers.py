"""The service manager modules behind their one interface, and the one HostPlan per host.

Every kind the inventory accepts has exactly one module; what a module writes into the state it
expects after a change reads back, through its own parser, as every unit running; and one host's
plan renders its files once, however many of the deploy's and drift's steps read them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llamafleet.config import load_inventory
from llamafleet.config.models import OS, ServiceManager
from llamafleet.deploys import render
from llamafleet.deploys.deploy import host_changes, planned_operations
from llamafleet.deploys.facts.host_state import state_spec
from llamafleet.deploys.operations.manager import all_managers, manager_for
from llamafleet.deploys.plan import plan_host
from llamafleet.drift_reading import owned_files

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "inventory" / "examples").glob("*.yaml"))
UNITS = ["llamafleet-target", "llamafleet-rpc", "org.llamafleet.x"]


def test_every_kind_has_exactly_one_module():
    kinds = [m.kind for m in all_managers()]
    assert sorted(k.value for k in kinds) == sorted(k.value for k in ServiceManager)
    for kind in ServiceManager:
        assert manager_for(kind).kind is kind


def test_every_os_has_a_service_manager():
    for os_ in OS:
        assert any(os_ in m.systems for m in all_managers()), os_


@pytest.mark.parametrize("kind", list(ServiceManager), ids=lambda k: k.value)
def test_what_a_module_expects_after_a_change_reads_back_as_running(kind):
    """A rollback and the file cache continue from ``with_running``; the module's own reading of the
    state fact must then see every unit running, the manager up, and nothing stale."""
    manager = manager_for(kind)
    before = {"other": {"x": 1}}
    after = manager.with_running(before, UNITS)
    assert after["other"] == {"x": 1}  # the rest of the services section is kept
    assert manager.service_states(after, UNITS) == {u: "running" for u in UNITS}
    assert manager.down(after) is None
    assert manager.stale(after, UNITS) == {}
    # Adding one more unit keeps the ones already running.
    assert manager.service_states(manager.with_running(after, ["extra"]), UNITS + ["extra"]) == \
        {u: "running" for u in UNITS + ["extra"]}


@pytest.mark.parametrize("kind", list(ServiceManager), ids=lambda k: k.value)
def test_an_empty_state_reads_as_absent(kind):
    manager = manager_for(kind)
    assert manager.service_states({}, UNITS) == {u: "absent" for u in UNITS}


@pytest.fixture(scope="module")
def example_inventories():
    return {path.name: load_inventory(path) for path in EXAMPLES}


def test_the_examples_cover_every_service_manager(example_inventories):
    used = {h.service_manager for inv in example_inventories.values() for h in inv.hosts.values()}
    assert used == set(ServiceManager)


def test_one_plan_renders_its_files_once(example_inventories, monkeypatch):
    """The state spec, the deploy's changes and operations, and drift's owned files all read the
    same plan: its files are rendered once per host, whatever the service manager."""
    calls = []
    real = render.rendered_files
    monkeypatch.setattr(render, "rendered_files", lambda plan: calls.append(plan.name) or real(plan))
    state = {"files": {}, "services": {}, "install": {}, "models": {}, "disk_free": 1 << 40,
             "drivers": {"sw_vers": "ProductName: macOS\nProductVersion: 14.5\nBuildVersion: 23F79\n"}}
    for inventory in example_inventories.values():
        for host in inventory.hosts:
            calls.clear()
            plan = plan_host(inventory, host)
            state_spec(plan)
            host_changes(plan, state)
            planned_operations(plan, state)
            owned_files(plan)
            assert calls == [host]
            assert {plan.unit_path(s) for s in plan.services} <= set(plan.files)
