"""After a change, wait until every service on the host answers, so a deploy ends in a working state."""

from __future__ import annotations

from pyinfra.api import operation

from llamafleet.deploys.operations.common import helper_command, ps_helper_command


@operation()
def wait_for_services(helper: str, spec: dict, windows: bool = False):
    """``spec``: {http: [health URLs], tcp: [addr:port], timeout: seconds, logs: folder}."""
    if spec.get("http") or spec.get("tcp"):
        yield (ps_helper_command if windows else helper_command)(helper, "wait", spec)
