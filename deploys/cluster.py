"""The cluster deploy: ``LLAMAFLEET_INVENTORY=cluster.yaml pyinfra inventory/cluster.py deploys/cluster.py``.

Per host: one state fact, then only the operations whose commands differ from that state; a second
run changes nothing. See docs/deploys.md.
"""

import sys

from pyinfra import host

from llamafleet.deploys.deploy import deploy_host
from llamafleet.errors import UserError

try:
    deploy_host(host)
except UserError as err:
    # SystemExit passes through pyinfra's exec wrapper: one clear line and exit 1, no traceback.
    print(f"llamafleet deploy: {err}", file=sys.stderr)
    raise SystemExit(1)
