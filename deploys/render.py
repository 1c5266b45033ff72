"""Render a host's service definitions and configs from templates/ (Jinja2). Pure: text in, text out.

Autoescaping is off because no single escape fits: every interpolated value goes through the filter of
the format it lands in, and each filter belongs to the service manager module of that format (its
``filters``: ``systemd_*``: :mod:`..operations.systemd`; ``supervisor_*``: :mod:`..operations.supervisord`;
``winsw*``: :mod:`..operations.winsw`; ``xml``: :mod:`..operations.launchd`, i.e.
:func:`..operations.common.xml_text`). A value a format cannot carry unchanged is refused with a
:class:`UserError`, never written altered.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import jinja2

from llamafleet.config.models import ServiceManager
from llamafleet.deploys.operations.manager import all_managers, manager_for
from llamafleet.deploys.plan import HostPlan, ServicePlan
from llamafleet.errors import UserError


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    folder = resources.files("llamafleet.templates")
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), undefined=jinja2.StrictUndefined,
                                     keep_trailing_newline=True, autoescape=False)
    for manager in all_managers():
        environment.filters.update(manager.filters)
    return environment


def _render(template: str, what: str, **values) -> str:
    try:
        return _environment().get_template(template).render(**values)
    except ValueError as err:
        raise UserError(f"{what}: {err}") from None


def render_unit(plan: HostPlan, svc: ServicePlan, manager: ServiceManager | None = None) -> str:
    """The unit for ``svc`` in the host's service manager (or ``manager``, to render another kind)."""
    module = manager_for(manager or plan.host.service_manager)
    connection_user = getattr(plan.host.connection, "user", None)
    return _render(
        module.template,
        f"hosts.{plan.name}: service {svc.service} ({module.kind.value})",
        svc=svc,
        host=plan.name,
        install_dir=plan.host.install_dir,
        log_dir=plan.manager.log_dir(plan),
        # supervisord can only switch users when it runs as root; name one only when it differs.
        run_as=svc.user if plan.host.service_user and svc.user != connection_user else None,
    )


def render_supervisord_conf(plan: HostPlan) -> str:
    return _render("supervisord.conf.j2", f"hosts.{plan.name}: supervisord.conf", host=plan.name,
                   dir=plan.supervisor_dir, conf=plan.supervisor_conf, install_dir=plan.host.install_dir)


def render_proxy_config(plan: HostPlan, service: str) -> str:
    from llamafleet.proxy.config import ProxyConfig

    config = ProxyConfig.from_inventory(plan.inventory, service)
    return json.dumps(config.model_dump(mode="json", exclude_none=True), indent=2, sort_keys=True) + "\n"


def rendered_files(plan: HostPlan) -> dict[str, tuple[str, str]]:
    """Every text file the deploy owns on the host: path -> (content, octal mode). Rendered once per
    plan, as ``HostPlan.files``: read that."""
    files = {plan.unit_path(svc): (render_unit(plan, svc), "0644") for svc in plan.services}
    files.update((path, (content, "0644")) for path, content in plan.manager.host_files(plan).items())
    for service in plan.proxy_services:
        # The config names where the token lives, never the token itself.
        files[plan.proxy_config_path(service)] = (render_proxy_config(plan, service), "0644")
    files.update((path, (pem, "0644")) for path, pem in plan.certificates.items())  # the key is a secret
    return files
