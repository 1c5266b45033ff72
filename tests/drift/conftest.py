"""drift's end-to-end fixtures are the deploy tests' own: the same real sshd standing in for three
hosts, the same local mirror, the same first deploy (tests/deploys/test_deploy_e2e.py). Importing the
fixture functions gives this folder its own instance of each (module scope), so tampering here never
touches the deploy tests' hosts."""

from __future__ import annotations

import sys
from pathlib import Path

DEPLOY_TESTS = Path(__file__).resolve().parents[1] / "deploys"
if str(DEPLOY_TESTS) not in sys.path:  # the deploy tests import their helpers as top-level modules
    sys.path.insert(0, str(DEPLOY_TESTS))

from test_deploy_e2e import deployed, mirror, sshd  # noqa: E402,F401 - the fixtures, reused
