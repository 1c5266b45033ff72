"""``llamafleet doctor``: check the *running* cluster over HTTP and TCP against the inventory.

Where ``drift`` looks at files and units on each host over SSH, ``doctor`` asks the services
themselves, from wherever it runs (a laptop, a CI runner):

- every llama-server answers ``/health``, and refuses a completion without the cluster's API key (every
  other call to it carries the key; ``/health`` and ``/v1/models`` are public in llama-server);
- every llama-server's ``/props`` ``build_info`` is the expected one, and all of them agree
  (machines upgraded one by one by hand drift apart, e.g. b8112, b8100 and b8079 side by side);
- ``/props`` ``total_slots`` equals the inventory's ``parallel``;
- each drafter shares its target's vocabulary: ``/v1/models`` metadata, then ``/tokenize`` of probe
  strings, which must give identical ids (the same family name can still hide a changed vocabulary);
- a TLS proxy serves the certificate the deploy gave it (sha256 fingerprint against the local copy),
  and every other call to it trusts exactly that certificate;
- the proxy answers with its bearer token and refuses without it;
- no speculating path of the proxy is slower than plain decoding on the traffic it measured
  (a warning with the ratio, whatever the acceptance rate);
- each ggml-rpc-server accepts connections on its declared address and refuses them elsewhere.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterable

from llamafleet.config.models import (
    DrafterService,
    Host,
    Inventory,
    LlamaServerService,
    LocalConnection,
    ProxyService,
    RpcWorkerService,
    TargetService,
)
from llamafleet import tls
from llamafleet.llama_client import LlamaClient, LlamaServerError
from llamafleet.findings import Finding, Severity
from llamafleet.report import Report, by_host, parallel_count

# Probes cover plain English, code, digits, whitespace runs and non-ASCII text, so a vocabulary that
# differs anywhere common shows up as different ids.
TOKENIZER_PROBES = (
    "The quick brown fox jumps over the lazy dog, and the dog sleeps.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "In 2026, 3.14159 * 42 = 131.94678; tokens: <|im_start|>user\n",
    "Größe, naïve café, 東京, привет — émoji 🦙!",
    "   leading spaces\t\ttabs\n\n\nnewlines   ",
)

WILDCARDS = ("0.0.0.0", "::", "")


# --- where a service can be reached from here -----------------------------------------------------


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def host_is_this_machine(host: Host) -> bool:
    conn = host.connection
    return isinstance(conn, LocalConnection) or _is_loopback(conn.address)


def host_address(host: Host) -> str:
    return "127.0.0.1" if isinstance(host.connection, LocalConnection) else host.connection.address


def service_address(inventory: Inventory, bind: str, host_name: str) -> str | None:
    """The address to dial for a service, or None when it only listens on its host's loopback and
    that host is not this machine (then only a check run on that host can reach it)."""
    host = inventory.hosts[host_name]
    if bind in WILDCARDS:
        return host_address(host)
    if _is_loopback(bind) and not host_is_this_machine(host):
        return None
    return bind


def _url(address: str, port: int, path: str) -> str:
    shown = f"[{address}]" if ":" in address else address
    return f"http://{shown}:{port}{path}"


# --- the checks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expectation:
    """What every llama-server's build_info should be, and where that expectation came from."""

    build_info: str | None  # exact string; None means "starts with the pin's tag"
    source: str


class Doctor:
    def __init__(self, inventory: Inventory, *, http: LlamaClient, expect: Expectation, proxy_token: str | None,
                 server_key: str | None = None, key_problem: str = "") -> None:
        self.inv = inventory
        self.http = http
        self.expect = expect
        self.proxy_token = proxy_token
        # The llama-servers' API key (llamafleet/server_key.py), sent to them on every call but the check
        # that they refuse a request without it; ``key_problem`` says why it is not here.
        self.server_key = server_key
        self.key_problem = key_problem
        self.props: dict[str, dict] = {}  # service -> /props, filled by the health pass

    def run(self, hosts: Iterable[str], parallel: int | None = None) -> Report:
        """Check the services on ``hosts``; a target on another host is still asked (silently)
        when a selected drafter has to be compared with it.

        Two passes, each over the hosts side by side (at most ``parallel`` at a time, one host's
        services one after another): first every llama-server's health, build and slots, then what
        compares servers or needs their answers (vocabularies, proxies, rpc workers). A host that
        does not answer makes only its own checks wait for the timeout. Findings keep the order of
        the inventory's services, whatever order the hosts answer in."""
        selected = set(hosts)
        parallel = parallel or parallel_count(None, len(selected))
        report = Report("doctor")
        pairs = [(d, t) for d, t in self.vocabulary_pairs() if self.inv.services[d].host in selected]
        needed = {n for pair in pairs for n in pair}
        servers = [(name, svc) for name, svc in self.inv.services.items()
                   if isinstance(svc, LlamaServerService) and (svc.host in selected or name in needed)]
        answers = by_host([(svc.host, partial(self.check_llama_server, name, svc)) for name, svc in servers], parallel)
        for (_, svc), findings in zip(servers, answers):
            if svc.host in selected:
                report.extend(findings)
        report.extend(self.check_same_build(selected))
        second: list[tuple[str, Callable[[], list[Finding]]]] = [
            (self.inv.services[d].host, partial(self.check_vocabulary, d, t)) for d, t in pairs]
        for name, svc in self.inv.services.items():
            if svc.host not in selected:
                continue
            if isinstance(svc, ProxyService):
                second.append((svc.host, partial(self.check_proxy, name, svc)))
                second.append((svc.host, lambda name=name, svc=svc: [self.check_speculation_speed(name, svc)]))
            elif isinstance(svc, RpcWorkerService):
                second.append((svc.host, partial(self.check_rpc_worker, name, svc)))
        for findings in by_host(second, parallel):
            report.extend(findings)
        return report

    # llama-server: health, build, slots

    def _base(self, svc) -> str | None:
        address = service_address(self.inv, svc.bind, svc.host)
        return None if address is None else _url(address, svc.port, "")

    def check_llama_server(self, name: str, svc: LlamaServerService) -> list[Finding]:
        base = self._base(svc)
        if base is None:
            return [_not_from_here(svc.host, f"health {name}", svc.bind)]
        try:
            health = self.http.request(base + "/health")
        except LlamaServerError as err:
            return [Finding(svc.host, f"health {name}", Severity.error, "answers /health", _no_answer(err),
                            hint=f"start the service (llamafleet drift shows whether {name} runs on {svc.host})")]
        if health.status != 200:
            return [Finding(svc.host, f"health {name}", Severity.fail, "200 ok",
                            f"HTTP {health.status} {_error_message(health.body)}".strip(),
                            hint="a 503 means the model is still loading; otherwise read the service's log")]
        findings = [Finding(svc.host, f"health {name}", Severity.ok, "200 ok", "200 ok"),
                    self._refuses_without_key(name, svc, base)]
        try:
            props = self.http.request(base + "/props", token=self.server_key)
        except LlamaServerError as err:  # it answered /health a moment ago: it stopped or hung since
            findings.append(Finding(svc.host, f"props {name}", Severity.error, "/props as JSON", _no_answer(err)))
            return findings
        if props.status != 200 or not isinstance(props.body, dict):
            hint = "is this port really llama-server at the pinned build?"
            if props.status == 401:
                hint = (f"the server wants the cluster's API key: {self.key_problem}" if self.key_problem else
                        "the server refused the cluster's API key: re-deploy so its key file matches this one")
            findings.append(Finding(svc.host, f"props {name}", Severity.fail, "/props as JSON", f"HTTP {props.status}",
                                    hint=hint))
            return findings
        self.props[name] = props.body
        findings.append(self._build_finding(name, svc, str(props.body.get("build_info", ""))))
        slots = props.body.get("total_slots")
        findings.append(Finding(
            svc.host, f"slots {name}", Severity.ok if slots == svc.parallel else Severity.fail,
            f"{svc.parallel} (parallel)", str(slots),
            hint="" if slots == svc.parallel else f"the running server was started with -np {slots}; re-deploy {name}",
        ))
        return findings

    def _refuses_without_key(self, name: str, svc: LlamaServerService, base: str) -> Finding:
        """A completion without the API key gets 401: no one on the network reaches the model past the
        proxy's bearer token. (llama-server leaves /health and /v1/models public: they say whether it
        runs and what it loaded, never a model's answer.)"""
        check, expected = f"api key {name}", "401 to a completion without the key"
        try:
            reply = self.http.request(base + "/completion", data={"prompt": "a", "n_predict": 1})
        except LlamaServerError as err:
            return Finding(svc.host, check, Severity.error, expected, _no_answer(err))
        if reply.status == 401:
            return Finding(svc.host, check, Severity.ok, expected, "401")
        return Finding(svc.host, check, Severity.fail, expected, f"HTTP {reply.status}",
                       hint=f"the server answers without the cluster's API key, so its port bypasses the proxy's auth: "
                       f"re-deploy {svc.host} (every llama-server the deploy starts gets --api-key-file)")

    def _build_finding(self, name: str, svc: LlamaServerService, actual: str) -> Finding:
        pin = self.inv.llama_cpp.build
        if self.expect.build_info is not None:
            ok = actual == self.expect.build_info
            expected = f"{self.expect.build_info} ({self.expect.source})"
        else:
            ok = actual.startswith(pin + "-")
            expected = f"{pin}-* ({self.expect.source})"
        hint = ""
        if not ok:
            hint = f"re-deploy {svc.host} so it runs llama.cpp {pin}"
            if actual.startswith("b0-"):
                hint += ("; 'b0-unknown' is a source build without git metadata: build with "
                         f"-DLLAMA_BUILD_NUMBER={pin[1:]}, or pass --expect-build-info with what the deploy recorded")
        return Finding(svc.host, f"build {name}", Severity.ok if ok else Severity.fail, expected, actual, hint=hint)

    def check_same_build(self, selected: set[str]) -> list[Finding]:
        """All llama-servers must run one build, whatever the expectation says."""
        # In the inventory's order, not the order the servers answered in: ties and output stay stable.
        builds = {name: str(self.props[name].get("build_info", "")) for name in self.inv.services if name in self.props}
        if len(set(builds.values())) <= 1:
            return []
        counts: dict[str, int] = {}
        for b in builds.values():
            counts[b] = counts.get(b, 0) + 1
        majority = max(counts, key=counts.get)
        findings = []
        for name, build in builds.items():
            host = self.inv.services[name].host
            if build != majority and host in selected:
                findings.append(Finding(
                    host, f"same build {name}", Severity.fail, f"{majority} (as {counts[majority]} other server(s))",
                    build, hint=f"one llama.cpp build for the whole cluster: re-deploy {host}",
                ))
        return findings

    # draft and target vocabulary

    def vocabulary_pairs(self) -> list[tuple[str, str]]:
        """(drafter, target) pairs: each proxy's, and every target for a drafter no proxy names."""
        pairs: list[tuple[str, str]] = []
        named: set[str] = set()
        for svc in self.inv.services.values():
            if isinstance(svc, ProxyService):
                # Several targets: a drafter drafts for those of its tokenizer family (validate checks one exists).
                pairs += [(d, t) for d in svc.drafters for t in svc.target_names
                          if svc.target is not None or self._family(d) == self._family(t)]
                named.update(svc.drafters)
        targets = [n for n, s in self.inv.services.items() if isinstance(s, TargetService)]
        for name, svc in self.inv.services.items():
            if isinstance(svc, DrafterService) and name not in named:
                pairs += [(name, t) for t in targets]
        return list(dict.fromkeys(pairs))

    def _family(self, service: str) -> str | None:
        svc = self.inv.services.get(service)
        model = self.inv.models.get(svc.model) if svc is not None and hasattr(svc, "model") else None
        return model.tokenizer if model is not None else None

    def check_vocabulary(self, drafter: str, target: str) -> list[Finding]:
        host = self.inv.services[drafter].host
        check = f"vocabulary {drafter} vs {target}"
        bases = {n: self._base(self.inv.services[n]) for n in (drafter, target)}
        if drafter not in self.props or target not in self.props:
            down = [n for n in (drafter, target) if n not in self.props]
            return [Finding(host, check, Severity.skipped, actual=f"{', '.join(down)} not answering",
                            hint="fix the health findings first")]
        try:
            metas = {n: self._model_meta(bases[n]) for n in (drafter, target)}
            for key in ("vocab_type", "n_vocab"):
                if metas[drafter].get(key) != metas[target].get(key):
                    return [Finding(host, check, Severity.fail, f"{key} {metas[target].get(key)} (as {target})",
                                    f"{key} {metas[drafter].get(key)}", hint=_VOCAB_HINT)]
            for probe in TOKENIZER_PROBES:
                ids = {n: self._tokenize(bases[n], probe) for n in (drafter, target)}
                if ids[drafter] != ids[target]:
                    return [Finding(host, check, Severity.fail, f"ids of {probe!r} as {target}: {_ids(ids[target])}",
                                    _ids(ids[drafter]), hint=_VOCAB_HINT,
                                    detail=f"probe {probe!r}\n{target}: {ids[target]}\n{drafter}: {ids[drafter]}")]
        except (LlamaServerError, ValueError) as err:
            return [Finding(host, check, Severity.error, "metadata and /tokenize answers", str(err))]
        return [Finding(host, check, Severity.ok, f"same ids for {len(TOKENIZER_PROBES)} probes",
                        f"same ids for {len(TOKENIZER_PROBES)} probes")]

    def _model_meta(self, base: str) -> dict:
        reply = self.http.request(base + "/v1/models", token=self.server_key)
        try:
            return dict(reply.body["data"][0].get("meta") or {})
        except (TypeError, KeyError, IndexError):
            raise ValueError(f"{base}/v1/models: HTTP {reply.status}, no model metadata") from None

    def _tokenize(self, base: str, text: str) -> list[int]:
        reply = self.http.request(base + "/tokenize", data={"content": text, "add_special": False},
                                  token=self.server_key)
        if reply.status != 200 or not isinstance(reply.body, dict) or "tokens" not in reply.body:
            raise ValueError(f"{base}/tokenize: HTTP {reply.status}")
        return list(reply.body["tokens"])

    # proxy: auth

    # proxy: TLS

    def _proxy_client(self, name: str, svc: ProxyService) -> tuple[str | None, LlamaClient | None]:
        """The proxy's base URL and the client to ask it with: for a TLS proxy, one that trusts exactly
        the local copy of its certificate (None when there is none here)."""
        base = self._base(svc)
        if base is None or svc.tls is None:
            return base, self.http
        pair = tls.local_pair(self.inv, name, create=False)
        if pair is None:
            return base, None
        try:
            context = tls.pinned_context(pair.cert)
        except (OSError, ssl.SSLError):
            return base, None
        return "https" + base.removeprefix("http"), LlamaClient(self.http.timeout, context=context)

    def check_tls(self, name: str, svc: ProxyService) -> Finding:
        """The certificate the proxy serves is the one the deploy put there: its sha256 fingerprint
        against the local copy's (the inventory's cert_file, or the self-signed pair in the state folder)."""
        check = f"proxy tls {name}"
        address = service_address(self.inv, svc.bind, svc.host)
        pair = tls.local_pair(self.inv, name, create=False)
        try:
            expected = tls.file_fingerprint(pair.cert) if pair is not None else None
        except tls.TlsFileError as err:
            return Finding(svc.host, check, Severity.error, "the local certificate", str(err))
        if expected is None:
            return Finding(svc.host, check, Severity.skipped, actual="no local copy of the self-signed certificate",
                           hint=f"run doctor where the deploy ran, or copy its {tls.self_signed_dir(self.inv.cluster, name)}"
                                f" here (or set {tls.STATE_ENV})")
        try:
            served = tls.fingerprint(tls.served_certificate(address, svc.port, self.http.timeout))
        except tls.PlainHttp:
            return Finding(svc.host, check, Severity.fail, f"TLS, certificate sha256 {expected}", "plain HTTP",
                           hint=f"the proxy runs without its tls config: re-deploy {svc.host}")
        except (OSError, ssl.SSLError) as err:
            return Finding(svc.host, check, Severity.error, f"TLS, certificate sha256 {expected}",
                           f"no answer: {address}:{svc.port}: {getattr(err, 'strerror', None) or err}",
                           hint=f"start the proxy service {name} on {svc.host}")
        if served != expected:
            return Finding(svc.host, check, Severity.fail, f"certificate sha256 {expected}", f"sha256 {served}",
                           hint=f"the proxy serves another certificate than the deploy's: re-deploy {svc.host}, or "
                                "find who replaced it (clients that pinned the certificate refuse this one)")
        return Finding(svc.host, check, Severity.ok, f"certificate sha256 {expected}", f"sha256 {served}")

    # proxy: auth

    def check_proxy(self, name: str, svc: ProxyService) -> list[Finding]:
        check = f"proxy auth {name}"
        if self._base(svc) is None:
            return [_not_from_here(svc.host, check, svc.bind)]
        findings = []
        if svc.tls is not None:
            findings.append(self.check_tls(name, svc))
            if findings[0].severity is not Severity.ok:  # every other call trusts only the expected certificate
                return findings + [Finding(svc.host, check, Severity.skipped, actual=f"see proxy tls {name}")]
        base, http = self._proxy_client(name, svc)
        if http is None:
            return findings + [Finding(svc.host, check, Severity.skipped, actual=f"see proxy tls {name}")]
        try:
            health = http.request(base + "/health")
            anonymous = http.request(base + "/v1/models")
            token = self.proxy_token or _token_from_auth(svc)
            authed = http.request(base + "/v1/models", token=token) if token else None
        except LlamaServerError as err:
            return [Finding(svc.host, f"health {name}", Severity.error, "answers /health", _no_answer(err),
                            hint=f"start the proxy service {name} on {svc.host}")]
        findings.append(Finding(svc.host, f"health {name}", Severity.ok if health.status == 200 else Severity.fail,
                                "200", str(health.status)))
        if svc.auth is None:
            findings.append(Finding(svc.host, check, Severity.ok if anonymous.status == 200 else Severity.fail,
                                    "200 without a token (auth: none)", str(anonymous.status)))
            return findings
        findings.append(Finding(
            svc.host, f"proxy rejects anonymous {name}", Severity.ok if anonymous.status == 401 else Severity.fail,
            "401 without a token", str(anonymous.status),
            hint="" if anonymous.status == 401 else "the proxy serves without auth: re-deploy its config and token",
        ))
        if authed is None:
            findings.append(Finding(svc.host, check, Severity.skipped, actual="no token available here",
                                    hint=f"set {svc.auth.token_env or 'LLAMAFLEET_PROXY_TOKEN'} for doctor"))
        else:
            findings.append(Finding(svc.host, check, Severity.ok if authed.status == 200 else Severity.fail,
                                    "200 with the token", str(authed.status),
                                    hint="" if authed.status == 200 else "the proxy's token differs from the one doctor used"))
        return findings

    # proxy: is speculation paying off on live traffic?

    def check_speculation_speed(self, name: str, svc: ProxyService) -> Finding:
        """The proxy's own measurements (``/stats`` controller): a speculating path (native, proxy)
        measured slower than the plain path is a warning with the ratio, whatever its acceptance rate."""
        check = f"speculation speed {name}"
        expected = "speculating paths at least as fast as plain decoding"
        base, http = self._proxy_client(name, svc)
        if base is None:
            return _not_from_here(svc.host, check, svc.bind)
        if http is None:
            return Finding(svc.host, check, Severity.skipped, actual="no local copy of the proxy's certificate",
                           hint=f"see proxy tls {name}")
        token = (self.proxy_token or _token_from_auth(svc)) if svc.auth else None
        if svc.auth and not token:
            return Finding(svc.host, check, Severity.skipped, actual="no token available here for /stats",
                           hint=f"set {svc.auth.token_env or 'LLAMAFLEET_PROXY_TOKEN'} for doctor")
        try:
            reply = http.request(base + "/stats", token=token)
        except LlamaServerError as err:
            return Finding(svc.host, check, Severity.skipped, actual=_no_answer(err), hint="see health " + name)
        body = reply.body if isinstance(reply.body, dict) else {}
        controller = body.get("controller")
        if reply.status != 200 or not isinstance(controller, dict):
            return Finding(svc.host, check, Severity.skipped, actual=f"/stats answered HTTP {reply.status}",
                           hint=f"see proxy auth {name}")
        if "slower_than_plain" not in controller:
            return Finding(svc.host, check, Severity.skipped, actual="this proxy does not report speed against plain",
                           hint=f"re-deploy {svc.host} with this llamafleet version")
        if controller.get("plain_path") is None:
            return Finding(svc.host, check, Severity.warning, expected, "no plain path to compare with",
                           hint="the target speculates on every request, so auto cannot fall back to plain decoding: "
                                "llamafleet plan shows the target's plain path; give it one (native_draft.plain)")
        slower = controller["slower_than_plain"]
        if slower:
            acceptance = controller.get("proxy_acceptance") or {}

            def accepted(s: dict) -> str:  # the proxy path's own acceptance, where measured
                rate = acceptance.get(s["sampling"]) if s["path"] == "proxy" else None
                return "" if rate is None else f" at {rate:.0%} acceptance"

            actual = "; ".join(f"{s['path']} {s['speed_vs_plain']:.2f}x of plain ({s['sampling']}){accepted(s)}"
                               for s in slower)
            return Finding(svc.host, check, Severity.warning, expected, actual,
                           hint="speculation costs more than it saves on this traffic, whatever its acceptance "
                                "rate: auto routes around a slower path, but a cheaper draft (or none) frees its cost")
        ratios = [f"{path} {ratio:.2f}x of plain ({kind})" for kind, by_path in controller["speed_vs_plain"].items()
                  for path, ratio in sorted(by_path.items())]
        if not ratios:
            return Finding(svc.host, check, Severity.skipped, actual="not measured yet",
                           hint="the proxy compares paths on live traffic: send requests through it first")
        return Finding(svc.host, check, Severity.ok, expected, "; ".join(ratios))

    # rpc workers: declared address only

    def check_rpc_worker(self, name: str, svc: RpcWorkerService) -> list[Finding]:
        """ggml-rpc-server serves one client at a time and queues at most two more, so a worker
        whose target holds it accepts no new connection at all: "no answer" then means busy."""
        address = service_address(self.inv, svc.bind, svc.host)
        if address is None:
            return [_not_from_here(svc.host, f"rpc listens {name}", svc.bind)]
        return [self._rpc_listens(name, svc, address), self._rpc_exposure(name, svc)]

    def _rpc_listens(self, name: str, svc: RpcWorkerService, address: str) -> Finding:
        check, expected = f"rpc listens {name}", f"accepts on {address}:{svc.port}"
        probe = tcp_probe(address, svc.port, self.http.timeout)
        if probe == ACCEPTS:
            return Finding(svc.host, check, Severity.ok, expected, probe)
        holders = [t for t in self.targets_using(name) if t in self.props]
        if probe == NO_ANSWER and holders:
            return Finding(svc.host, check, Severity.ok, expected,
                           f"busy: held by {', '.join(holders)}, which answers (one client at a time)")
        return Finding(svc.host, check, Severity.error, expected, probe,
                       hint=f"start the rpc-worker {name} on {svc.host}, listening on {svc.bind}")

    def _rpc_exposure(self, name: str, svc: RpcWorkerService) -> Finding:
        check = f"rpc exposure {name}"
        host = self.inv.hosts[svc.host]
        others = other_addresses(host, svc.bind)
        if not others:
            return Finding(svc.host, check, Severity.skipped, actual="no other address known",
                           hint=f"list the host's other addresses under hosts.{svc.host}.addresses")
        probes = {a: tcp_probe(a, svc.port, self.http.timeout) for a in others}
        # Nothing listening on a local address refuses at once; silence there is a busy listener.
        # A remote address that stays silent is filtered on the way, which is not exposure from here.
        busy_counts = host_is_this_machine(host)
        exposed = [a for a, p in probes.items() if p == ACCEPTS or (p == NO_ANSWER and busy_counts)]
        if exposed:
            return Finding(svc.host, check, Severity.fail, f"refused on {', '.join(others)}",
                           "; ".join(f"{probes[a]} on {a}" for a in exposed),
                           hint=f"ggml-rpc-server must run with -H {svc.bind}; anyone who reaches it can run code "
                                "on its device")
        return Finding(svc.host, check, Severity.ok, f"refused on {', '.join(others)}",
                       "; ".join(f"{p} on {a}" for a, p in probes.items()))

    def targets_using(self, worker: str) -> list[str]:
        return [n for n, s in self.inv.services.items() if isinstance(s, TargetService)
                and (worker in s.rpc_workers or (s.native_draft and s.native_draft.rpc_worker == worker))]


_VOCAB_HINT = "the draft must use the target's tokenizer: place a draft model of the same family and vocabulary"


def _no_answer(err: LlamaServerError) -> str:
    return f"no answer: {err.url}: {err.reason}"


def _error_message(body: Any) -> str:
    """llama-server's error envelope is {"error": {"message": ...}}; anything else says nothing."""
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("message", "")) if isinstance(error, dict) else ""


def _ids(ids: list[int]) -> str:
    return "[" + ", ".join(map(str, ids[:12])) + (", …]" if len(ids) > 12 else "]")


def _not_from_here(host: str, check: str, bind: str) -> Finding:
    return Finding(host, check, Severity.skipped, actual=f"listens on {bind} of a remote host",
                   hint=f"only reachable on {host} itself: run doctor there (or through an SSH tunnel)")


def _token_from_auth(svc: ProxyService) -> str | None:
    """The proxy's token as CI would hold it: the variable the inventory names, or a local copy of
    the token file (the file itself lives on the proxy host)."""
    auth = svc.auth
    if auth is None:
        return None
    if auth.token_env and os.environ.get(auth.token_env):
        return os.environ[auth.token_env]
    if auth.token_file:
        try:
            return Path(auth.token_file).read_text().strip() or None
        except OSError:
            return None
    return None


ACCEPTS, REFUSED, NO_ANSWER = "accepts", "refused", "no answer"


def tcp_probe(address: str, port: int, timeout: float) -> str:
    """Whether a TCP connection opens: ACCEPTS, REFUSED, NO_ANSWER (timed out), or the error."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return ACCEPTS
    except TimeoutError:
        return NO_ANSWER
    except ConnectionRefusedError:
        return REFUSED
    except OSError as err:
        return err.strerror or type(err).__name__


def other_addresses(host: Host, bind: str) -> list[str]:
    """Addresses of ``host`` other than ``bind`` where a worker must not be reachable: its connection
    address, the further ``addresses`` the inventory lists, and on this machine a second loopback
    address (all of 127/8 is local). Loopback addresses of a remote host cannot be dialled from here."""
    candidates = [host_address(host), *host.addresses]
    if host_is_this_machine(host):
        candidates += ["127.0.0.1", "127.0.0.2"]
    else:
        candidates = [a for a in candidates if not _is_loopback(a)]
    return [a for a in dict.fromkeys(candidates) if a != bind]


def expectation(inventory: Inventory, override: str | None) -> Expectation:
    """--expect-build-info wins; otherwise any build_info that starts with the pin's tag."""
    if override:
        return Expectation(override, "--expect-build-info")
    return Expectation(None, f"pin {inventory.llama_cpp.build}")
