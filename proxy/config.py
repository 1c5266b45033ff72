"""The proxy's configuration: what it listens on, which backends it may talk to, and its limits.

Loaded from a YAML or JSON file (``llamafleet proxy --config FILE``) or built from the inventory with
:meth:`ProxyConfig.from_inventory`, which is what the deploy renders onto the proxy host. The bearer
token itself never appears here: only where to read it from (a file or an environment variable).
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from llamafleet.config.models import ProxyAuth, SpeculationMode, Strict
from llamafleet.errors import UserError, validation_problems
from llamafleet.findings import dotted
from llamafleet.server_key import host_key_path, read_secret

MAX_CONFIG_BYTES = 1024 * 1024  # a proxy config is a few hundred bytes; the size is checked before reading


class BackendRef(Strict):
    """One llama-server the proxy may call. The proxy never talks to anything not listed."""

    name: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://[^/\s]+$", description="Base URL, e.g. http://10.0.0.2:8080 (no path).")


class TargetRef(BackendRef):
    """The target's plain path: a llama-server of the target model that does not speculate."""

    slots: int = Field(1, gt=0, description="The target's -np; proxy-path verification needs draft length + 1 slots.")
    request_fields: dict[str, int] = Field(
        default_factory=dict,
        description="Fields added to every request on this path, e.g. {\"speculative.n_max\": 0} where the target "
        "itself speculates natively and its build reads that field per request.")


class NativeRef(BackendRef):
    """A llama-server of the target model that speculates with its own draft model."""

    keeps_length: bool = Field(
        True, description="False where the server's build may end a speculating reply short of max_tokens while "
        "counting the missing tokens (b8942): the proxy then runs native requests on token ids and continues "
        "a short reply. From the build's capability data (speculation_keeps_length; unknown counts as False).")


class Replica(Strict):
    """One server set of a model: its plain path and, where it speculates natively, that server."""

    service: str = Field(min_length=1, description="The inventory's target service (names it in /stats).")
    target: TargetRef
    native: NativeRef | None = None


class ServedModel(Strict):
    """A model the proxy serves: its id in /v1/models, its replicas and the drafters of its tokenizer family."""

    name: str = Field(min_length=1, description="The id /v1/models reports and a request's model selects.")
    replicas: list[Replica] = Field(min_length=1, description="Servers of this model; each request goes to "
                                    "the least busy one with a free slot, and a failing one is taken out.")
    drafters: list[BackendRef] = Field(default_factory=list)


class Auth(ProxyAuth):
    """Where the proxy reads its bearer token: the inventory's proxy auth, with exactly one source."""

    @model_validator(mode="after")
    def _one_source(self) -> "Auth":
        if bool(self.token_file) == bool(self.token_env):
            raise ValueError("set exactly one of token_file or token_env")
        return self

    def read_token(self) -> str:
        """Read the token now; a missing or empty source is a configuration error."""
        if self.token_file:
            token = read_secret(self.token_file, "auth.token_file")  # a 0600 file of this user
            where = f"auth.token_file {self.token_file}"
        else:
            token = os.environ.get(self.token_env or "", "").strip()
            where = f"auth.token_env {self.token_env}"
        if not token:
            raise UserError(f"{where}: the token is empty or unset")
        return token


class Tls(Strict):
    """HTTPS: the proxy host's certificate and key files (paths only; the deploy puts them there, the key as
    a 0600 file of the service user). Without it the proxy serves plain HTTP."""

    cert_file: str = Field(min_length=1, description="PEM certificate (chain) the proxy serves.")
    key_file: str = Field(min_length=1, description="Its PEM private key, unencrypted, mode 0600.")

    def server_context(self) -> ssl.SSLContext:
        """The server's SSL context, read now: a missing, unreadable or mismatched pair is a UserError."""
        from llamafleet.tls import TlsFileError, server_context

        try:
            return server_context(self.cert_file, self.key_file)
        except TlsFileError as err:
            raise UserError(f"tls: {err}") from None


class Limits(Strict):
    max_body_bytes: int = Field(1 << 20, gt=0)
    max_tokens: int = Field(4096, gt=0, description="Cap on a request's max_tokens; larger requests get a 400.")
    max_concurrency: int = Field(64, gt=0, description="Requests generating at once; more get a 429.")
    max_prompt_tokens: int = Field(8192, gt=0)


class Timeouts(Strict):
    connect_s: float = Field(2.0, gt=0, description="TCP connect to any backend.")
    target_s: float = Field(300.0, gt=0, description="Whole upstream call to the target.")
    drafter_s: float = Field(5.0, gt=0, description="One drafting call; a slower drafter is skipped for that round.")


class Listen(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65535, description="0 picks a free port (tests).")


class ProxyConfig(Strict):
    listen: Listen = Field(default_factory=Listen)
    model_name: str = Field("llamafleet", min_length=1, description="The id /v1/models reports.")
    target: TargetRef | None = Field(None, description="One model on one server; or list models instead.")
    drafters: list[BackendRef] = Field(default_factory=list)
    native: NativeRef | None = Field(
        None,
        description="A llama-server of the target model started with its own draft model (native speculation). "
        "When it is the target itself and target.request_fields cannot turn drafting off, direct and native are "
        "one path.",
    )
    mode: SpeculationMode = Field(SpeculationMode.auto,
                                  description="Default path; X-Llamafleet-Mode overrides it per request.")
    draft_max: int = Field(8, gt=0, le=64)
    auth: Auth | None = Field(None, description="None disables auth: only for a loopback listener.")
    server_key_file: str | None = Field(
        None, min_length=1, description="File holding the API key the llama-servers require (mode 0600, on the proxy "
        "host; the deploy's <install_dir>/secrets/llama-server.key): sent as a bearer token on every upstream call.")
    tls: Tls | None = Field(None, description="Serve HTTPS with this certificate and key; None serves HTTP.")
    limits: Limits = Field(default_factory=Limits)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    history_size: int = Field(256, gt=0, description="Requests kept in /stats history.")
    models: list[ServedModel] | None = Field(
        None, description="Several models and replicas (instead of model_name, target, drafters and native).")

    @model_validator(mode="after")
    def _mode_available(self) -> "ProxyConfig":
        if self.models is None:
            if self.target is None:
                raise ValueError("set target (one model on one server) or models (several models or replicas)")
            if self.mode not in self.available_modes():
                raise ValueError(f"mode {self.mode.value!r} is not available: {self._why_unavailable(self.mode)}")
            return self
        if self.target is not None or self.drafters or self.native is not None:
            raise ValueError("models replaces target, drafters and native: set one shape, not both")
        names = [m.name for m in self.models]
        if not names or len(set(names)) != len(names):
            raise ValueError("models must list at least one model, each name once")
        for model in self.models:
            for replica in model.replicas:
                try:
                    self.replica_config(model, replica)  # validated like a one-server config (its mode too)
                except ValidationError as err:
                    problems = "; ".join(message for _, message in validation_problems(err))
                    raise ValueError(f"model {model.name!r}, replica {replica.service!r}: {problems}") from None
        return self

    def server_key(self) -> str | None:
        """The llama-servers' API key, read now from ``server_key_file`` (None: the servers need none)."""
        return read_secret(self.server_key_file, "server_key_file") if self.server_key_file else None

    def served(self) -> list[ServedModel]:
        """Every model with its replicas (a one-server config is one model with one replica)."""
        if self.models is not None:
            return list(self.models)
        return [ServedModel(name=self.model_name, drafters=self.drafters,
                            replicas=[Replica(service=self.target.name, target=self.target, native=self.native)])]

    def replica_config(self, model: ServedModel, replica: Replica) -> "ProxyConfig":
        """The one-server config of one replica: what its engine and request handling run on."""
        return ProxyConfig.model_validate({
            **self.model_dump(exclude={"models", "target", "native", "drafters", "model_name"}),
            "model_name": model.name, "target": replica.target.model_dump(),
            "native": replica.native.model_dump() if replica.native else None,
            "drafters": [d.model_dump() for d in model.drafters]})

    def replica_of(self, service: str) -> Replica:
        """The replica an inventory target service became (KeyError if the proxy does not front it)."""
        if self.models is None:  # one server: it is the target whatever its name
            return self.served()[0].replicas[0]
        for model in self.models:
            for replica in model.replicas:
                if replica.service == service:
                    return replica
        raise KeyError(service)

    @property
    def native_is_target(self) -> bool:
        """True when the only server of the target model speculates on every request: no plain path."""
        return self.native is not None and self.native.url == self.target.url and not self.target.request_fields

    def available_modes(self) -> list[SpeculationMode]:
        if self.models is not None:  # the modes every replica offers
            offered = [self.replica_config(m, r).available_modes() for m in self.models for r in m.replicas]
            return [mode for mode in offered[0] if all(mode in other for other in offered)]
        modes = [SpeculationMode.auto, SpeculationMode.direct]
        if self.native is not None:
            modes.append(SpeculationMode.native)
        if self.drafters and self.target.slots >= 2:
            modes.append(SpeculationMode.proxy)
        return modes

    def _why_unavailable(self, mode: SpeculationMode) -> str:
        if mode is SpeculationMode.native:
            return "the target has no native draft model"
        return "it needs at least one drafter and a target with at least 2 slots (-np)"

    @classmethod
    def load(cls, path: str | Path) -> "ProxyConfig":
        """Read a YAML or JSON file; every problem becomes one UserError naming the file and the key."""
        from llamafleet.config.loader import NotRegularFile, TooLarge, read_limited

        path = Path(path)
        try:
            raw = read_limited(path, MAX_CONFIG_BYTES)
        except (NotRegularFile, TooLarge) as err:
            raise UserError(f"{path}: cannot read proxy config: it {err}") from None
        except OSError as err:
            raise UserError(f"{path}: cannot read proxy config: {err.strerror or err}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            line = raw.count(b"\n", 0, err.start) + 1
            col = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
            raise UserError(f"{path}:{line}:{col}: proxy config is not UTF-8 (byte 0x{raw[err.start]:02x})") from None
        data = _parse(path, text)
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise UserError(f"{path}: invalid proxy config:\n{_describe(err)}") from None

    @classmethod
    def from_inventory(cls, inventory: Any, service_name: str) -> "ProxyConfig":
        """Build the config for one proxy service of an inventory (``llamafleet.config.models.Inventory``):
        the one-server shape for ``target``, the ``models`` shape for ``targets`` (targets of one model are
        its replicas; each model gets the drafters of its tokenizer family)."""
        service = inventory.services.get(service_name)
        if service is None or getattr(service, "role", None) != "proxy":
            raise UserError(f"services.{service_name}: no proxy service of that name in the inventory")
        auth = None
        if service.auth is not None:
            auth = Auth.model_validate(service.auth.model_dump())
        common = dict(listen=Listen(host=service.bind, port=service.port), mode=service.mode,
                      draft_max=service.draft_max, auth=auth,
                      server_key_file=host_key_path(inventory.hosts[service.host]))
        if service.tls is not None:
            from llamafleet.tls import host_paths

            cert, key = host_paths(inventory.hosts[service.host].install_dir, service_name)
            common["tls"] = Tls(cert_file=cert, key_file=key)
        drafters = [(BackendRef(name=n, url=service_url(inventory, inventory.services[n])),
                     _tokenizer(inventory, inventory.services[n].model)) for n in service.drafters]
        if service.target is not None:
            replica = _replica(inventory, service.target)
            return cls(model_name=inventory.services[service.target].model, target=replica.target,
                       drafters=[d for d, _ in drafters], native=replica.native, **common)
        models: dict[str, ServedModel] = {}
        for name in service.target_names:
            model = inventory.services[name].model
            served = models.setdefault(model, ServedModel(
                name=model, replicas=[_replica(inventory, name)],
                drafters=[d for d, family in drafters if family == _tokenizer(inventory, model)]))
            if served.replicas[0].service != name:
                served.replicas.append(_replica(inventory, name))
        return cls(models=list(models.values()), **common)


def _tokenizer(inventory: Any, model: str) -> str | None:
    entry = inventory.models.get(model)
    return entry.tokenizer if entry is not None else None


def _replica(inventory: Any, name: str) -> Replica:
    """Target service ``name`` as the proxy reaches it: its plain path and, with a native draft, itself."""
    from llamafleet.config.builds import caps_for
    from llamafleet.config.topology import plain_route

    caps = caps_for(inventory.llama_cpp.build)
    target = inventory.services[name]
    target_url = service_url(inventory, target)
    route = plain_route(inventory, name)
    plain_url = service_url(inventory, target, route.port) if route is not None and route.sidecar else target_url
    return Replica(
        service=name,
        target=TargetRef(name=route.sidecar if route is not None and route.sidecar else name, url=plain_url,
                         slots=target.parallel, request_fields=route.request_fields if route is not None else {}),
        native=NativeRef(name=name, url=target_url,
                         keeps_length=bool(caps and caps.speculation_keeps_length)) if target.native_draft else None)


def service_url(inventory: Any, service: Any, port: int | None = None) -> str:
    """Where the proxy host reaches a service (or another ``port`` of its host): the host's ssh address
    (127.0.0.1 for a local host)."""
    connection = inventory.hosts[service.host].connection
    address = getattr(connection, "address", "127.0.0.1")
    if ":" in address:  # IPv6 literal
        address = f"[{address}]"
    return f"http://{address}:{port or service.port}"


def _parse(path: Path, text: str) -> Any:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        if path.suffix == ".json":
            return json.loads(text)
        return YAML(typ="safe").load(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None
    except MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {err.problem}") from None
    except YAMLError as err:
        raise UserError(f"{path}: invalid YAML: {str(err).strip().splitlines()[-1]}") from None
    except RecursionError:
        raise UserError(f"{path}: proxy config is nested too deeply to parse (a config nests a few levels)") from None


def _describe(err: ValidationError) -> str:
    return "\n".join(f"  {dotted(loc) if loc else '(top level)'}: {message}"
                     for loc, message in validation_problems(err))
