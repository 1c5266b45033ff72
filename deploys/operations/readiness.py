"""After a change, wait until every service on the host answers, so a deploy ends in a working state."""

from __future__ import annotations

from pyinfra.api import FunctionCommand

from llamafleet.deploys.operations.common import deploy_operation, helper_command, ps_helper_command


@deploy_operation
def wait_for_services(helper: str, spec: dict, windows: bool = False):
    """``spec``: {http: [health URLs], tcp: [addr:port], timeout: seconds, logs: folder}."""
    if spec.get("http") or spec.get("tcp"):
        yield (ps_helper_command if windows else helper_command)(helper, "wait", spec)


def _report(state, host, message: str, detail=None) -> bool:
    from pyinfra import logger

    extra = detail() if detail else ""
    host.log_styled(f"llamafleet: {message}" + (f": {extra}" if extra else ""), fg="red", log_func=logger.error)
    return False


@deploy_operation
def report_failure(message: str, detail=None):
    """Fail the host with ``message`` (after a rollback, so the deploy exits non-zero and says why);
    ``detail``, a callable, adds what is known only once the run is under way (the failed readiness
    output). Runs on the controller: nothing is sent to the host."""
    yield FunctionCommand(_report, (message, detail), {})


@deploy_operation
def barrier():
    """Yields nothing. Every host runs it at the same point of a rollout: pyinfra orders operations as
    one graph of each host's sequence, so an operation all hosts share is where every host has finished
    what comes before it, and none has started what comes after."""
    yield from ()


@deploy_operation
def gated(gate, operation, kwargs: dict):
    """``operation``'s commands when ``gate()`` is true, decided each time pyinfra asks: while it
    plans (and in a dry run) the rollout is healthy, so a switch is a change and a rollback is not;
    while it executes, the results of the operations before decide (``deploy.Rollout``)."""
    if gate():
        yield from operation.commands(**kwargs)
