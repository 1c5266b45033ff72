"""pyinfra inventory module for llamafleet: ``pyinfra inventory/cluster.py DEPLOY``.

Reads ``$LLAMAFLEET_INVENTORY`` (default: ``cluster.yaml`` next to this file), validates it, and
exposes hosts in groups by role (targets, drafters, rpc_workers, proxies), OS and backend. An
invalid inventory stops here, before pyinfra contacts any host.
"""

import os
import sys
from pathlib import Path

from llamafleet.config import InventoryError, load_inventory_with_warnings
from llamafleet.config.pyinfra_groups import groups

_path = Path(os.environ.get("LLAMAFLEET_INVENTORY") or Path(__file__).resolve().parent / "cluster.yaml")
try:
    _loaded = load_inventory_with_warnings(_path)
except InventoryError as _err:
    print(f"llamafleet inventory: {_err}", file=sys.stderr)
    raise SystemExit(1)  # SystemExit passes through pyinfra's exec wrapper: no traceback, exit 1
for _warning in _loaded.warnings:
    print(f"llamafleet inventory: {_warning}", file=sys.stderr)

globals().update(groups(_loaded.inventory, _path))
