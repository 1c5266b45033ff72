"""``llamafleet validate [INVENTORY] [--json]``: check an inventory and print every finding.

Exit 0 when there are no errors (warnings are printed but do not fail), 1 otherwise. On success it
prints the plan: which services run on which host, with which model.
"""

from __future__ import annotations

import json
from pathlib import Path

from llamafleet.config.loader import DEFAULT_INVENTORY, INVENTORY_ENV, check_inventory, default_inventory_path
from llamafleet.config.models import Inventory
from llamafleet.findings import Finding, Severity


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "validate", help="check an inventory file and print the plan",
        description=f"Check an inventory (default: ${INVENTORY_ENV} or {DEFAULT_INVENTORY}).")
    parser.add_argument("inventory", nargs="?", type=Path, help="inventory YAML file")
    parser.add_argument("--json", action="store_true", help="print the findings (and plan) as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    path = args.inventory or default_inventory_path()
    inventory, findings = check_inventory(path)
    ok = inventory is not None
    if args.json:
        print(json.dumps(json_report(path, inventory, findings), indent=2))
    else:
        print(text_report(path, inventory, findings))
    return 0 if ok else 1


def _counts(findings: list[Finding]) -> tuple[int, int]:
    errors = sum(f.severity is Severity.error for f in findings)
    return errors, len(findings) - errors


def text_report(path: Path, inventory: Inventory | None, findings: list[Finding]) -> str:
    errors, warnings = _counts(findings)
    lines = [str(f) for f in findings]
    if inventory is None:
        lines.append(f"{path}: {errors} error(s), {warnings} warning(s): not valid")
        return "\n".join(lines)
    lines.append(f"{path}: valid ({warnings} warning(s))")
    lines += plan_lines(inventory)
    return "\n".join(lines)


def json_report(path: Path, inventory: Inventory | None, findings: list[Finding]) -> dict:
    errors, warnings = _counts(findings)
    report = {"file": str(path), "valid": inventory is not None, "errors": errors, "warnings": warnings,
              "findings": [f.to_json() for f in findings]}
    if inventory is not None:
        report["plan"] = plan(inventory)
    return report


def plan(inventory: Inventory) -> dict:
    """What a deploy of this inventory would run: per host, its services, and the models placed."""
    hosts = {}
    for name, host in inventory.hosts.items():
        services = {}
        for service_name, service in inventory.services_on(name).items():
            services[service_name] = {"role": service.role, "port": service.port, "bind": service.bind,
                                      "model": getattr(service, "model", None)}
        hosts[name] = {"os": host.os.value, "backend": host.backend.value,
                       "service_manager": host.service_manager.value, "models": list(host.models),
                       "services": services}
    models = {name: {"files": len(m.files), "bytes": m.size_bytes, "quant": m.quant, "tokenizer": m.tokenizer}
              for name, m in inventory.models.items()}
    return {"cluster": inventory.cluster, "llama_cpp": inventory.llama_cpp.build, "hosts": hosts, "models": models}


def plan_lines(inventory: Inventory) -> list[str]:
    summary = plan(inventory)
    lines = [f"cluster {summary['cluster']}: llama.cpp {summary['llama_cpp']}, "
             f"{len(summary['hosts'])} host(s), {len(summary['models'])} model(s)"]
    for host_name, host in summary["hosts"].items():
        lines.append(f"  host {host_name} ({host['os']}, {host['backend']}, {host['service_manager']}):"
                     f" models {', '.join(host['models']) or '-'}")
        for service_name, s in host["services"].items():
            model = f" model {s['model']}" if s["model"] else ""
            lines.append(f"    {s['role']:<10} {service_name} on {s['bind']}:{s['port']}{model}")
    for model_name, m in summary["models"].items():
        lines.append(f"  model {model_name}: {m['quant']}, {m['files']} file(s), {m['bytes'] / 2**30:.2f} GiB,"
                     f" tokenizer {m['tokenizer']}")
    return lines
