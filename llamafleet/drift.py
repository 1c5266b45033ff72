"""``llamafleet drift``: every difference between each host and what the deploy would make of it.

Built on the deploy itself so the two cannot disagree: per host drift reads the deploy's own
one-command state fact (``HostState``) and dry-runs the deploy's own operation list on it
(``planned_operations``, what ``deploys/cluster.py`` executes; an operation would change the host
when it yields a command, as pyinfra decides it). That gives the "deploy plan" line. The detailed
findings compare the same document with the same plan (``plan_host``) through the deploy's own
comparisons (``host_changes``, ``file_matches``, ``running_version``), adding the evidence: expected
and actual values, unit diffs, and what a deploy cannot fix by itself (a driver waiting for a reboot,
a model whose bytes changed under an intact stamp, a port nobody listens on).

This module holds the comparisons; reading the hosts (the pyinfra API, the state fact, the dry run,
the extra reads) is :mod:`llamafleet.drift_reading`.
"""

from __future__ import annotations

import difflib
import time
from pathlib import Path

from llamafleet.config.models import OS, Backend, Inventory
from llamafleet.deploys.deploy import HostChanges, build_spec, host_changes, service_states
from llamafleet.deploys.facts.drivers import METAL_MIN_MACOS, metal_supported, parse_sw_vers
from llamafleet.deploys.firewall import firewall_findings
from llamafleet.deploys.operations.common import file_matches, sha256_text
from llamafleet.deploys.operations import folders, secrets
from llamafleet.deploys.operations.drivers import running_version
from llamafleet.deploys.plan import INSTALL_RECORD, HostPlan, plan_host
from llamafleet.drift_reading import (
    CONNECT_TIMEOUT,
    ConnectErrors,
    HostReading,
    Unreadable,
    owned_files,
    pyinfra_state,
    read_host,
)
from llamafleet.findings import Finding, Severity
from llamafleet.report import Report, by_host, parallel_count

DEEP_NOTE = ("model files were checked by their verified stamp (size and mtime): a file replaced by other "
             "bytes of the same size and mtime is only caught with --deep, which re-hashes every file")


def _short(sha: str | None) -> str:
    return f"sha256 {sha[:12]}…" if sha else "none"


def _would(changes_text: str) -> str:
    return f"a deploy would {changes_text}"


def compare_host(plan: HostPlan, reading: HostReading) -> list[Finding]:
    changes = host_changes(plan, reading.state)
    return [
        plan_finding(plan, reading),
        *build_findings(plan, reading.state, changes),
        *driver_findings(plan, reading.state),
        *model_findings(plan, reading, changes),
        *file_findings(plan, reading),
        *service_findings(plan, reading.state),
        *port_findings(plan, reading.state),
        *firewall_findings(plan, reading.state),
        *folders.folder_findings(plan, reading.state),
    ]


def plan_finding(plan: HostPlan, reading: HostReading) -> Finding:
    """The deploy's own dry run: the operations it would run on this host. Drift reports the same
    differences in detail below; this line is what makes "drift" and "deploy" agree by construction."""
    if not reading.would_change:
        return Finding(plan.name, "deploy plan", Severity.ok, "no operation changes anything", "no changes")
    return Finding(plan.name, "deploy plan", Severity.fail, "no operation changes anything",
                   "would run: " + "; ".join(reading.would_change),
                   hint=f"llamafleet's deploy (pyinfra inventory/cluster.py deploys/cluster.py --limit {plan.name}) "
                        "makes the host match again")


# --- llama.cpp: the build, its install record, the binaries ----------------------------------------


def build_findings(plan: HostPlan, state: dict, changes: HostChanges) -> list[Finding]:
    """The deploy's ``install_reason`` decides; the findings say which part of the install differs."""
    host, spec = plan.name, build_spec(plan)
    installed = state.get("install") or {}
    record = installed.get("record")
    hint = _would(changes.build) if changes.build else ""
    findings = [_compare(host, "llama.cpp build", spec["build_id"], installed.get("current") or "nothing installed", hint)]
    if installed.get("current") != spec["build_id"]:
        return findings  # nothing below means anything for another build
    if record is None:
        findings.append(Finding(host, "install record", Severity.fail, f"{spec['build_id']}/{INSTALL_RECORD}",
                                "missing", hint=hint))
        return findings
    wanted = ", ".join(f"{a['file']} {_short(a['sha256'])}" for a in spec["artifacts"])
    recorded_files = record.get("artifacts") or []
    recorded_shas = record.get("artifacts_sha256") or []
    have = ", ".join(f"{f} {_short(sha)}" for f, sha in zip(recorded_files, recorded_shas)) or "no artifacts"
    findings.append(_compare(host, "install record", wanted, have, hint))
    findings.append(_compare(host, "llama-server --version", str(record.get("version")),
                             str(installed.get("version")), hint))
    recorded, actual = record.get("binaries") or {}, installed.get("binaries") or {}
    for binary in sorted(set(spec["binaries"]) | set(recorded) | set(actual)):
        findings.append(_compare(host, f"binary {binary}", _short(recorded.get(binary)),
                                 _short(actual.get(binary)) if binary in actual else "missing", hint))
    if changes.build and not any(f.severity is Severity.fail for f in findings):
        # Only if the deploy learns a new reason before drift does: never let them disagree silently.
        findings.append(Finding(host, "llama.cpp install", Severity.fail, "as planned", str(changes.build), hint=hint))
    return findings


def _compare(host: str, check: str, expected: str, actual: str, hint: str = "") -> Finding:
    same = expected == actual
    return Finding(host, check, Severity.ok if same else Severity.fail, expected, actual, hint="" if same else hint)


# --- GPU driver and OS ---------------------------------------------------------------------------


def driver_findings(plan: HostPlan, state: dict) -> list[Finding]:
    host = plan.host
    drivers = state.get("drivers") or {}
    findings = []
    if host.driver is not None:
        running = running_version(host.driver.kind, drivers)
        pending = state.get("driver_pending") == {"kind": host.driver.kind, "version": host.driver.version}
        if pending and host.allow_reboot:
            hint = _would("reboot the host into the installed driver")
        elif pending:
            hint = "installed, waiting for a reboot (allow_reboot is false): reboot the host"
        else:
            hint = _would(f"install the {host.driver.kind} driver {host.driver.version}"
                          + (" and reboot" if host.allow_reboot else " (then it needs a reboot)"))
        findings.append(_compare(plan.name, f"driver {host.driver.kind}", host.driver.version,
                                 running or "none running", hint))
    if host.os is OS.macos:
        findings += macos_findings(plan, drivers)
    return findings


def macos_findings(plan: HostPlan, drivers: dict) -> list[Finding]:
    """macOS has no driver to pin: Metal needs a minimum OS, and the inventory may name the version."""
    host = plan.host
    parsed = parse_sw_vers(drivers.get("sw_vers") or "")
    if parsed is None:
        return [Finding(plan.name, "macOS version", Severity.error, "sw_vers output", "unreadable")]
    findings = []
    if host.backend is Backend.metal:
        ok = metal_supported(parsed["version"])
        minimum = ".".join(map(str, METAL_MIN_MACOS))
        findings.append(Finding(plan.name, "macOS for Metal", Severity.ok if ok else Severity.fail,
                                f">= {minimum}", parsed["version"],
                                hint="" if ok else "upgrade macOS (a deploy cannot) or use backend: cpu"))
    if host.macos_version:
        same = host.macos_version == parsed["version"]
        findings.append(Finding(plan.name, "macOS version", Severity.ok if same else Severity.warning,
                                host.macos_version, parsed["version"],
                                hint="" if same else "update macos_version in the inventory (memory checks use it)"))
    return findings


# --- model files -----------------------------------------------------------------------------------


def model_findings(plan: HostPlan, reading: HostReading, changes: HostChanges) -> list[Finding]:
    findings = []
    for m in plan.models:
        seen = (reading.state.get("models") or {}).get(m.path) or {}
        present = seen.get("present")
        check = f"model {m.name}"
        expected = f"{m.size} bytes, {_short(m.sha256)}"
        if m.path in changes.models:
            if present is None:
                actual = "missing" + (f" ({seen.get('partial_size')} bytes downloaded)" if seen.get("partial_size") else "")
            elif present.get("size") != m.size:
                actual = f"{present.get('size')} bytes"
            else:
                actual = "same size, but changed since it was verified (mtime or stamp)"
            findings.append(Finding(plan.name, check, Severity.fail, expected, actual,
                                    hint=_would(f"re-verify {m.path} and download it again if it differs")))
        elif reading.hashes is None:
            findings.append(Finding(plan.name, check, Severity.ok, expected, "verified stamp matches (size, mtime)"))
        else:
            findings.append(_deep_finding(plan, m, reading.hashes.get(m.path), expected))
    return findings


def _deep_finding(plan: HostPlan, m, actual_sha: str | None, expected: str) -> Finding:
    check = f"model {m.name}"
    if actual_sha == m.sha256:
        return Finding(plan.name, check, Severity.ok, expected, f"{m.size} bytes, {_short(actual_sha)} (re-hashed)")
    stamp = plan.verified_stamp(m.path)
    return Finding(
        plan.name, check, Severity.fail, expected,
        f"{_short(actual_sha)} (re-hashed) under a stamp that still says verified",
        hint=f"the bytes changed but size and mtime did not, so a deploy trusts the stamp: delete {stamp}, then deploy",
    )


# --- owned files: units, configs, the helper; secrets ------------------------------------------------


def file_label(plan: HostPlan, path: str) -> str:
    units = {plan.unit_path(svc): svc.unit_name for svc in plan.services}
    if path in units:
        return f"unit {units[path]}"
    if path == plan.helper_path:
        return "helper script"
    if plan.proxy_services and path == plan.project_record_path:
        return "proxy project (llamafleet wheel)"
    return f"config {path}"


def file_findings(plan: HostPlan, reading: HostReading) -> list[Finding]:
    seen = reading.state.get("files") or {}
    findings = []
    for path, (content, mode) in owned_files(plan).items():
        check = file_label(plan, path)
        expected = f"{_short(sha256_text(content))}" + (f", mode {mode}" if mode else "")
        if file_matches(seen, path, content, mode):
            findings.append(Finding(plan.name, check, Severity.ok, expected, expected))
            continue
        state = seen.get(path)
        if not state:
            findings.append(Finding(plan.name, check, Severity.fail, expected, "missing",
                                    hint=_would(f"write {path}")))
            continue
        actual = f"{_short(state.get('sha256'))}" + (f", mode {state.get('mode')}" if mode else "")
        findings.append(Finding(plan.name, check, Severity.fail, expected, actual, hint=_file_hint(check, path),
                                detail=_diff(path, content, reading.contents.get(path))))
    for secret in plan.secrets:
        state = seen.get(secret.path) or {}
        expected = secrets.access(plan.windows, secret.user)
        actual = secrets.seen_access(plan.windows, state)
        hint = _would("create the token file or fix its mode and owner")
        if secret.source:  # copied from this machine: the same bytes too (by sha256; a secret is never shown)
            digest = secrets.local_digest(secret.source)
            if digest is None:  # a CI runner without the key: mode and owner only
                unknown = f" (content not compared: {secret.source} is not readable here)"
                expected += unknown
                actual += unknown if state else ""
            else:
                expected += f", the content of {secret.source}"
                same = state and state.get("sha256") == digest  # access is reported above
                actual += f", the content of {secret.source}" if same else (", other content" if state else "")
            hint = _would(f"copy {secret.source} there ({secrets.access(plan.windows, secret.user)}) and restart what reads it")
        findings.append(_compare(plan.name, f"secret {secret.path}", expected, actual, hint))
    return findings


def _file_hint(check: str, path: str) -> str:
    if check.startswith("unit"):
        return _would(f"rewrite {path} and restart the service")
    if check.startswith("proxy project"):
        return _would("build this checkout's llamafleet wheel and install it into the proxy's venv")
    return _would(f"rewrite {path}")


def _diff(path: str, expected: str, actual: str | None) -> str:
    if actual is None:
        return ""
    lines = list(difflib.unified_diff(expected.splitlines(), actual.splitlines(),
                                      f"{path} (expected)", f"{path} (on the host)", lineterm=""))
    return "\n".join(lines) if lines else "contents are equal; only the mode differs"


# --- services and ports ----------------------------------------------------------------------------


def service_findings(plan: HostPlan, state: dict) -> list[Finding]:
    findings = []
    manager = plan.manager.kind.value
    services = state.get("services") or {}
    down = plan.manager.down(services)
    for unit, status in service_states(plan, state).items():
        if status == "running":
            findings.append(Finding(plan.name, f"service {unit}", Severity.ok, "enabled, running", "enabled, running"))
            continue
        if down:
            actual = down
        elif status == "absent":
            actual = f"not known to {manager} (not enabled)"
        else:
            actual = f"{status} ({manager})"
        findings.append(Finding(plan.name, f"service {unit}", Severity.fail, "enabled, running", actual,
                                hint=_would(f"enable and start {unit}")))
    # Services the manager runs or has a config for that the inventory no longer names (the rule its
    # own operation removes them by).
    stale = plan.manager.stale(services, [s.unit_name for s in plan.services])
    findings += [Finding(plan.name, f"service {name}", Severity.fail, "not configured (not in the inventory)",
                         f"{status} ({manager})", hint=_would(f"remove {name} from {manager}"))
                 for name, status in stale.items()]
    return findings


def port_findings(plan: HostPlan, state: dict) -> list[Finding]:
    """Each service listens on its declared address and port, and on no other address."""
    listening = state.get("listening") or []
    findings = []
    for svc in plan.services:
        on_port = sorted(a for a in listening if a.rsplit(":", 1)[-1] == str(svc.port))
        declared = f"{svc.bind}:{svc.port}"
        others = [a for a in on_port if a != declared]
        check = f"port {svc.port} {svc.unit_name}"
        if declared not in on_port:
            findings.append(Finding(plan.name, check, Severity.fail, f"listening on {declared}",
                                    "not listening" if not others else f"listening on {', '.join(others)}",
                                    hint=f"{svc.unit_name} does not listen where declared: see its service finding and log"))
        elif others:
            findings.append(Finding(plan.name, check, Severity.fail, f"only {declared}",
                                    f"also {', '.join(others)}",
                                    hint=f"something else listens on port {svc.port}; {svc.unit_name} must be the only one"))
        else:
            findings.append(Finding(plan.name, check, Severity.ok, f"listening on {declared}", f"listening on {declared}"))
    return findings


def run_drift(inventory: Inventory, path: Path, hosts: list[str], *, deep: bool,
              override: dict[str, str] | None = None, parallel: int | None = None,
              timeout: float = CONNECT_TIMEOUT) -> Report:
    """Read every host in ``hosts`` and compare it with its plan; unreachable hosts are errors.

    Hosts are read side by side, at most ``parallel`` at a time (default: all, up to
    ``DEFAULT_PARALLEL``): a host's time is the SSH handshake and its state script, spent waiting on
    the host, so one thread per host overlaps them. pyinfra's own CLI runs hosts side by side on
    gevent after monkey-patching the process; drift uses its API without that patch, so it brings
    its own threads. The findings keep the order of ``hosts`` whatever order the hosts answer in."""
    report = Report("drift")
    plans = {name: plan_host(inventory, name) for name in hosts}
    state, connect_errors = pyinfra_state(inventory, path, hosts, override or {}, timeout)
    by_name = {host.data.llamafleet_host: host for host in state.inventory}
    parallel = parallel or parallel_count(None, len(hosts))

    def timed(name: str) -> tuple[list[Finding], int, float]:
        host_started = time.monotonic()
        findings, commands = check_host(by_name[name], plans[name], deep, connect_errors)
        return findings, commands, round(time.monotonic() - host_started, 3)

    started = time.monotonic()
    try:
        results = by_host([(name, lambda name=name: timed(name)) for name in hosts], parallel)
    finally:
        for host in state.inventory:
            if host.connected:
                host.disconnect()
    for findings, _, _ in results:
        report.extend(findings)
    report.extend(mixed_build_findings(inventory, report.findings))
    if not deep and any(p.models for p in plans.values()):
        report.notes.append(DEEP_NOTE)
    report.stats = {"seconds": round(time.monotonic() - started, 3), "parallel": parallel,
                    "host_seconds": {name: seconds for name, (_, _, seconds) in zip(hosts, results)},
                    "remote_commands": {name: commands for name, (_, commands, _) in zip(hosts, results)},
                    "deep": deep}
    return report


def mixed_build_findings(inventory: Inventory, findings: list[Finding]) -> list[Finding]:
    """One cluster-wide line when the hosts read run different llama.cpp builds (a rollout that stopped
    part-way: a failed group, or a --limit canary), whatever each host's own findings say."""
    running = {f.host: f.actual.split("-")[0] for f in findings
               if f.check == "llama.cpp build" and f.actual != "nothing installed"}
    builds = sorted(set(running.values()))
    if len(builds) < 2:
        return []
    actual = "; ".join(f"{', '.join(sorted(h for h, b in running.items() if b == build))}: {build}" for build in builds)
    return [Finding("cluster", "mixed builds", Severity.fail, f"every host on {inventory.llama_cpp.build}", actual,
                    hint="a rollout stopped part-way (a failed group or a --limit canary): the deploy without "
                         "--limit finishes it, and says why a group failed")]


def check_host(host, plan: HostPlan, deep: bool, connect_errors: ConnectErrors) -> tuple[list[Finding], int]:
    """Connect, dry-run, compare: the findings for one host and the remote commands it took."""
    host.connect(show_errors=False)
    if not host.connected:
        reason = connect_errors.errors.get(host.name, "could not connect")
        return [Finding(plan.name, "connect", Severity.error, f"reachable as {_address(plan.host)}", reason,
                        hint="check the host is up and the SSH key, user and port in the inventory")], 0
    reading, commands = read_host(host, plan, deep)
    if isinstance(reading, Unreadable):
        return [Finding(plan.name, "host state", Severity.error, "the HostState fact", reading.reason)], commands
    return compare_host(plan, reading), commands


def _address(host) -> str:
    conn = host.connection
    return "local" if conn.type == "local" else f"{conn.user}@{conn.address}:{conn.port}"
