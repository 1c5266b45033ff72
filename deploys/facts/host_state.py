"""The one fact that reads everything the deploy needs from a host, as one JSON document.

pyinfra caches no facts, and every fact is a remote command (about 95 ms over ssh), so a host's whole
state (install record, binary hashes, model stamps, owned files, service states, listening ports,
free disk, raw driver-tool output) comes back from a single command. ``drift`` reuses this fact and
:func:`state_spec`; docs/deploys.md documents the JSON.
"""

from __future__ import annotations

import base64
import json
import shlex
import zlib
from functools import lru_cache
from importlib import resources

from pyinfra.api import FactBase

from llamafleet.deploys.plan import HELPERS, HostPlan


@lru_cache(maxsize=None)
def helper_source(name: str) -> str:
    return resources.files("llamafleet.deploys.scripts").joinpath(name).read_text()


def inline_python(script: str) -> str:
    """A ``python3 -c`` command that runs ``script`` without uploading it first (compressed, base64)."""
    blob = base64.b64encode(zlib.compress(script.encode(), 9)).decode()
    return f'python3 -c "import base64,zlib;exec(zlib.decompress(base64.b64decode(\'{blob}\')))"'


def inline_powershell(script: str) -> str:
    """A PowerShell expression that runs ``script`` from a gzip+base64 literal (no upload needed)."""
    import gzip

    blob = base64.b64encode(gzip.compress(script.encode(), 9, mtime=0)).decode()
    return ("& ([scriptblock]::Create((New-Object IO.StreamReader((New-Object IO.Compression.GZipStream("
            f"(New-Object IO.MemoryStream(,[Convert]::FromBase64String('{blob}'))),"
            "[IO.Compression.CompressionMode]::Decompress)))).ReadToEnd()))")


def state_spec(plan: HostPlan) -> str:
    """What the state script should look at, for this plan (JSON, passed as the fact's argument)."""
    from llamafleet.deploys.operations.cache import cache_state_spec

    units = [svc.unit_name for svc in plan.services]
    drivers = [plan.host.driver.kind] if plan.host.driver else []
    if plan.host.os.value == "macos":
        drivers.append("macos")
    spec = {
        "install_dir": plan.host.install_dir,
        "models_dir": plan.host.models_dir,
        "models": [{"path": m.path, "sha256": m.sha256} for m in plan.models],
        "files": sorted([*plan.files, plan.helper_path, *(s.path for s in plan.secrets),
                         *([plan.project_record_path] if plan.proxy_services else [])]),
        "drivers": drivers,
    }
    if plan.windows and plan.secrets:  # each secret's access list (deploys/operations/secrets.py)
        spec["secrets"] = sorted(s.path for s in plan.secrets)
    if plan.folders:  # the folders the deploy makes (an rpc-worker's cache)
        spec["folders"] = sorted(f.path for f in plan.folders)
    if cached := cache_state_spec(plan):  # the cluster's file cache, on its host
        spec["cache"] = cached
    spec.update(plan.manager.state_spec(plan, units))
    return json.dumps(spec, sort_keys=True)


class HostState(FactBase):
    """A POSIX host's state as a dict (see docs/deploys.md). Needs python3 on the host."""

    requires_command = "python3"

    @staticmethod
    def default():
        return None

    def command(self, spec: str) -> str:
        return f"{inline_python(helper_source(HELPERS[False]))} state {shlex.quote(spec)}"

    def process(self, output):
        return json.loads("\n".join(output))


class WindowsHostState(FactBase):
    """A Windows host's state, read by PowerShell over OpenSSH (same JSON shape as :class:`HostState`)."""

    shell_executable = None

    @staticmethod
    def default():
        return None

    def command(self, spec: str) -> str:
        from llamafleet.deploys.operations.common import ps_b64

        return f"{inline_powershell(helper_source(HELPERS[True]))} state {ps_b64(json.loads(spec))}"

    def process(self, output):
        return json.loads("\n".join(output))


def host_state_fact(windows: bool) -> type[FactBase]:
    """The state fact of the host's OS (both return the same JSON document)."""
    return WindowsHostState if windows else HostState
