"""``llamafleet plan [INVENTORY] [--host H] [--json]``: what a deploy would write and run, offline.

The review step before a deploy, like ``terraform plan``: for each host (or only ``--host``), every
file the deploy owns there (service units, the supervisord config, proxy configs, the host helper)
with its path, mode and exact content; the exact command line (argv) and environment of every
service; the llama.cpp build, model files and secret files it installs; and, for each target that
speculates natively, how the proxy reaches a path without speculation. Nothing is contacted: this
is the deploy's own plan (``deploys/plan.py``) and rendering (``deploys/render.py``), printed.

An invalid inventory prints its findings as ``validate`` does and exits 1.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

from llamafleet import tls
from llamafleet.config.loader import DEFAULT_INVENTORY, INVENTORY_ENV, check_inventory, default_inventory_path
from llamafleet.config.models import Inventory, TargetService
from llamafleet.errors import UserError
from llamafleet.findings import Finding

FORMAT = 1  # version of the --json shape; bumped when a key changes meaning or goes away


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="print every file, command line and install a deploy would make, per host (offline)",
        description=f"Print what a deploy of an inventory (default: ${INVENTORY_ENV} or {DEFAULT_INVENTORY}) "
        "would write and run on each host: files with path, mode and content, service command lines, "
        "build, models, secrets, and the plain (no speculation) path of each natively drafting target. "
        "Contacts no host.")
    parser.add_argument("inventory", nargs="?", type=Path, help="inventory YAML file")
    parser.add_argument("--host", metavar="HOST", action="append", default=[],
                        help="only this inventory host (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON (a stable, versioned shape)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from llamafleet.commands.validate import json_report, text_report

    path = args.inventory or default_inventory_path()
    inventory, findings = check_inventory(path)
    if inventory is None:  # exactly what validate prints, and its exit code
        out = json.dumps(json_report(path, None, findings), indent=2) if args.json else text_report(path, None, findings)
        return _write(out + "\n", 1)
    tls.ensure_pairs(inventory)  # the review shows the self-signed pair the deploy will place (made once, here)
    plan = cluster_plan(path, inventory, findings, selected(inventory, args.host))
    return _write(json.dumps(plan, indent=2) + "\n" if args.json else render_text(plan, findings), 0)


def selected(inventory: Inventory, wanted: list[str]) -> list[str]:
    unknown = [h for h in wanted if h not in inventory.hosts]
    if unknown:
        raise UserError(f"--host {', '.join(unknown)}: not a host of this inventory "
                        f"(hosts: {', '.join(inventory.hosts)})")
    return [h for h in inventory.hosts if not wanted or h in wanted]


def _write(text: str, code: int) -> int:
    sys.stdout.write(text)  # a reader that stops early (``| head``) is handled by llamafleet.cli
    return code


# --- the plan as data (the --json shape; the text is rendered from it) ---------------------------


def cluster_plan(path: Path, inventory: Inventory, findings: list[Finding], hosts: list[str]) -> dict:
    from llamafleet.deploys.plan import plan_host

    return {
        "format": FORMAT,
        "file": str(path),
        "cluster": inventory.cluster,
        "llama_cpp": capabilities(inventory.llama_cpp.build),
        "warnings": [f.to_json() for f in findings],
        "hosts": {name: host_plan(plan_host(inventory, name)) for name in hosts},
    }


def capabilities(build: str) -> dict:
    """Whose names and flags the plan is rendered with: the pinned build's own, or (for a build with
    no capability data) the nearest known build's, said in words."""
    from llamafleet.config.builds import caps_for
    from llamafleet.deploys.plan import plan_caps

    own = caps_for(build)
    caps, note = plan_caps(build)
    if own is not None:
        how = "learned from an installed binary's --help (saved locally)" if own.origin == "learned" else \
            "shipped with llamafleet (generated from its binaries)"
        note = f"names and flags of llama.cpp {build}: {how}"
    return {"build": build, "capabilities": None if own is None else own.origin, "rendered_with": caps.build,
            "note": note}


def host_plan(plan) -> dict:
    """One host's :class:`HostPlan` (computed once by the caller) as plain data."""
    from llamafleet.deploys.facts.host_state import helper_source

    host = plan.host
    build = plan.build
    # Windows hosts get no POSIX modes: the deploy uploads there without one.
    mode_of = (lambda mode: None) if plan.windows else (lambda mode: mode)
    files = [_file(path, content, mode_of(mode)) for path, (content, mode) in sorted(plan.files.items())]
    helper = helper_source(plan.helper_name)
    files.insert(0, {**_file(plan.helper_path, helper, mode_of("0755")), "content": None,
                     "note": "llamafleet's host helper script (shipped with llamafleet; content not shown)"})
    return {
        "os": host.os.value, "arch": host.arch.value, "backend": host.backend.value,
        "service_manager": host.service_manager.value, "install_dir": host.install_dir,
        "build": {
            "build": build.build, "build_id": build.build_id, "method": build.method,
            "dir": plan.path("builds", build.build_id), "binaries": list(build.binaries),
            "cmake_options": list(build.cmake_options),
            "artifacts": [{"file": a.file, "url": a.url, "sha256": a.sha256,
                           "sources": _sources(plan, a.url, a.sha256, a.file)} for a in build.artifacts],
        },
        "models": [{"model": m.model, "path": m.path, "url": m.url, "sha256": m.sha256, "size": m.size,
                    "sources": _sources(plan, m.url, m.sha256, m.name)} for m in plan.models],
        "services": {svc.service: {
            "role": svc.role, "unit": svc.unit_name, "unit_path": plan.unit_path(svc), "user": svc.user,
            "bind": svc.bind, "port": svc.port, "argv": list(svc.argv), "command": _command_line(plan, svc.argv),
            "env": dict(svc.env),
        } for svc in plan.services},
        # The token itself is never shown. The deploy makes token files on POSIX hosts only.
        "secrets": [{"path": s.path, "mode": mode_of("0600"), "owner": s.user, "made_by_deploy": not plan.windows,
                     "copied_from": s.source} for s in plan.secrets],
        # Folders the deploy makes for the service user (an rpc-worker's tensor cache).
        "folders": [{"path": f.path, "mode": mode_of(f.mode), "owner": None if plan.windows else f.user}
                    for f in plan.folders],
        "plain_paths": plain_paths(plan.inventory, plan.name),
        "firewall": _firewall(plan),
        "files": files,
    }


def _file(path: str, content: str, mode: str | None) -> dict:
    data = content.encode()
    return {"path": path, "mode": mode, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "content": content}


def _command_line(plan, argv) -> str:
    """The argv as one line quoted the way the host's service manager takes it."""
    return subprocess.list2cmdline(list(argv)) if plan.windows else shlex.join(argv)


def plain_paths(inventory: Inventory, host: str) -> dict:
    """For each target on ``host`` that runs a native draft: how the proxy reaches it without speculation."""
    out = {}
    for name, svc in inventory.services_on(host).items():
        if isinstance(svc, TargetService) and svc.native_draft is not None:
            out[name] = plain_path(inventory, name)
    return out


def plain_path(inventory: Inventory, target: str) -> dict:
    """The target's plain route (``llamafleet.config.topology``), with a sentence for the text form."""
    from llamafleet.config.models import PlainPath, ProxyService
    from llamafleet.config.topology import plain_route
    from llamafleet.proxy.config import ProxyConfig

    route = plain_route(inventory, target)
    if route.kind is PlainPath.sidecar:
        how = (f"a sidecar llama-server {route.sidecar} on port {route.port}: the same model and flags "
               "without the draft")
    elif route.kind is PlainPath.request:
        how = f"per request on {target} itself, with {json.dumps(route.request_fields)}"
    else:
        how = "NONE: the proxy's auto can only choose among speculating paths"
    # What each proxy in front of this target is configured with for its plain (direct) path.
    proxies = {}
    for name, svc in inventory.services.items():
        if isinstance(svc, ProxyService) and target in svc.target_names:
            direct = ProxyConfig.from_inventory(inventory, name).replica_of(target).target
            proxies[name] = {"url": direct.url, "request_fields": dict(direct.request_fields)}
    via = "; ".join(f"proxy {n} sends direct requests to {p['url']}"
                    + (f" with {json.dumps(p['request_fields'])}" if p["request_fields"] else "")
                    for n, p in proxies.items())
    return {"kind": route.kind.value, "sidecar": route.sidecar, "port": route.port,
            "request_fields": route.request_fields, "reason": route.reason, "proxies": proxies,
            "summary": f"{how} ({route.reason})" + (f"; {via}" if via and route.kind is not PlainPath.none else "")}


# --- text ------------------------------------------------------------------------------------------


def render_text(plan: dict, findings: list[Finding]) -> str:
    lines = [f"llamafleet plan: {plan['file']}: cluster {plan['cluster']}, llama.cpp {plan['llama_cpp']['build']}, "
             f"{len(plan['hosts'])} host(s). Offline: no host was contacted."]
    lines += [str(f) for f in findings]
    lines.append(("" if plan["llama_cpp"]["capabilities"] else "WARNING: ") + plan["llama_cpp"]["note"])
    for name, host in plan["hosts"].items():
        lines += [""] + _host_lines(name, host)
    return "\n".join(lines) + "\n"


def _sources(plan, url: str, sha256: str, name: str) -> list[str]:
    """Where the host fetches a file from, in order (the cluster's file cache and peers first, if any)."""
    from llamafleet.deploys.cache import source_fields

    return source_fields(plan, url, sha256, name).get("sources", [url])


def _host_lines(name: str, h: dict) -> list[str]:
    b = h["build"]
    lines = [f"host {name} ({h['os']} {h['arch']}, {h['backend']}, {h['service_manager']}), "
             f"install_dir {h['install_dir']}",
             f"  llama.cpp {b['build']}: {b['build_id']} by {b['method']} into {b['dir']} ({', '.join(b['binaries'])})"]
    if b["cmake_options"]:
        lines.append(f"    cmake options: {shlex.join(b['cmake_options'])}")
    lines += [f"    artifact {a['file']} sha256 {a['sha256']} from {', then '.join(a['sources'])}"
              for a in b["artifacts"]]
    lines.append("  model files:" if h["models"] else "  model files: none")
    lines += [f"    {m['path']} ({m['model']}, {m['size']} bytes, sha256 {m['sha256']}) "
              f"from {', then '.join(m['sources'])}" for m in h["models"]]
    lines.append("  services:" if h["services"] else "  services: none")
    for svc_name, s in h["services"].items():
        lines.append(f"    {svc_name} ({s['role']}): unit {s['unit']}, as {s['user']}, listens on {s['bind']}:{s['port']}")
        lines += [f"      env {k}={v}" for k, v in s["env"].items()]
        lines.append(f"      command: {s['command']}")
    lines += _firewall_lines(h["firewall"])
    for target, p in h["plain_paths"].items():
        lines.append(f"  plain path of {target}: {p['summary']}")
    for s in h["secrets"]:
        if s["made_by_deploy"] and s["copied_from"]:
            lines.append(f"  secret {s['path']}: mode {s['mode']}, owner {s['owner']}, copied from {s['copied_from']} "
                         "on this machine (its content is never shown)")
        elif s["made_by_deploy"]:
            lines.append(f"  secret {s['path']}: mode {s['mode']}, owner {s['owner']}, made on the host "
                         "(the token is never shown)")
        else:
            lines.append(f"  secret {s['path']}: NOT made by the deploy on this host: create it, readable by "
                         f"{s['owner']} only")
    for f in h["folders"]:
        lines.append(f"  folder {f['path']}: " + (f"mode {f['mode']}, owner {f['owner']}" if f["owner"]
                                                 else "made by the deploy (the install folder's access rules)"))
    lines.append(f"  files ({len(h['files'])}):")
    for f in h["files"]:
        mode = f"mode {f['mode']}" if f["mode"] else "no POSIX mode"
        lines.append(f"    {f['path']} ({mode}, {f['bytes']} bytes, sha256 {f['sha256']})"
                     + (f": {f['note']}" if f.get("note") else ""))
        if f["content"] is not None:
            lines += _content_lines(f["content"])
    return lines


def _firewall(plan) -> dict:
    from llamafleet.deploys.firewall import plan_summary

    return plan_summary(plan)


def _firewall_lines(f: dict) -> list[str]:
    """Which port accepts whom (docs/hardening.md, "Network exposure")."""
    if not f["managed"]:
        left = ("table inet llamafleet, its rules file and boot unit" if f["kind"] == "nftables"
                else "the llamafleet-* rules")
        return [f"  firewall: not managed ({f['why']}): every service port is reachable by whoever reaches its bind "
                "address" + (f"; {left} left by an earlier deploy are removed" if f.get("removes_leftovers") else "")]
    how = "nftables, table inet llamafleet" if f["kind"] == "nftables" else "Windows Firewall, rules llamafleet-*"
    lines = [f"  firewall: managed ({how}; {f['why']}):"]
    for r in f["rules"]:
        who = "open to every address" if r["from"] == "any" else "only from " + ", ".join(r["from"])
        used = f" (used from {', '.join(r['used_by'])})" if r["used_by"] else ""
        lines.append(f"    port {r['port']} {r['service']} ({r['role']}): {who}{used}")
    if "file" in f:
        lines.append(f"    {f['file']['path']}, applied with nft -f:")
        lines += _content_lines(f["file"]["content"])
    if "boot_unit" in f:
        lines.append(f"    {f['boot_unit']['path']}, enabled: loads it at boot")
        lines += _content_lines(f["boot_unit"]["content"])
    return lines

def _content_lines(content: str) -> list[str]:
    """The content, each line behind ``| ``; a missing final newline is said, not hidden."""
    body = content[:-1] if content.endswith("\n") else content
    lines = [f"      | {line}" if line else "      |" for line in body.split("\n")] if content else []
    if content and not content.endswith("\n"):
        lines.append("      (no newline at end of file)")
    return lines
