"""LF185-LF188: a proxy's own certificate and key files (``tls.cert_file``/``tls.key_file``), read on the
machine that runs ``validate`` and the deploy (a self-signed pair is made by the deploy and needs no check);
LF189: a proxy that takes its bearer token beyond loopback without TLS.

The proxy would refuse these files only when it starts on its host, after the deploy; here each problem
is a finding at the inventory line that names the file.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

from llamafleet import tls
from llamafleet.findings import Finding, Severity, problem
from llamafleet.config.models import Inventory, ProxyService

EXPIRY_WARNING = datetime.timedelta(days=30)


def check_proxy_tls(inventory: Inventory) -> Iterator[Finding]:
    for name, service in inventory.services.items():
        if not isinstance(service, ProxyService):
            continue
        if service.tls is None and service.auth is not None and not _loopback(service.bind):
            yield problem("LF189", f"the proxy takes a bearer token on {service.bind} over plain HTTP: the token "
                          "crosses the network in clear", "add tls: {self_signed: true} (or your own cert_file and "
                          "key_file)", ("services", name, "bind"), Severity.warning)
        if service.tls is not None and service.tls.cert_file is not None:
            base = ("services", name, "tls")
            yield from _check_pair(Path(service.tls.cert_file), Path(service.tls.key_file), base, service.bind)


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def _check_pair(cert_path: Path, key_path: Path, base: tuple, bind: str) -> Iterator[Finding]:
    cert = key = None
    try:
        cert = tls.load_certificate(cert_path)
    except tls.TlsFileError as err:
        yield problem("LF185", str(err), "give the PEM certificate (chain) the proxy serves", base + ("cert_file",))
    try:
        key = tls.load_key(key_path)
        mode = os.stat(key_path).st_mode & 0o777
        if mode & 0o077:
            yield problem("LF185", f"key file {key_path} has mode {mode:04o}: others can read the private key",
                          f"chmod 600 {key_path}", base + ("key_file",))
    except tls.TlsFileError as err:
        yield problem("LF185", str(err), "give the certificate's unencrypted PEM private key, mode 0600",
                      base + ("key_file",))
    if cert is None:
        return
    if key is not None and not tls.key_matches(cert, key):
        yield problem("LF186", f"key file {key_path} is not the key of certificate {cert_path}",
                      "give the private key the certificate was issued for", base + ("key_file",))
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = tls.validity(cert)
    if end <= now:
        yield problem("LF187", f"certificate {cert_path} expired on {end:%Y-%m-%d %H:%M} UTC",
                      "renew it, or use self_signed: true", base + ("cert_file",))
    elif start > now:
        yield problem("LF187", f"certificate {cert_path} is not valid before {start:%Y-%m-%d %H:%M} UTC",
                      "check the deployer's clock, or issue it with an earlier start", base + ("cert_file",))
    elif end - now < EXPIRY_WARNING:
        yield problem("LF187", f"certificate {cert_path} expires on {end:%Y-%m-%d} (in {(end - now).days} days)",
                      "renew it before then", base + ("cert_file",), Severity.warning)
    if bind not in tls.WILDCARDS and not tls.covers(cert, bind):
        names = ", ".join(sorted(tls.covered_names(cert))) or "none"
        yield problem("LF188", f"certificate {cert_path} does not name {bind}, where the proxy listens "
                      f"(its subjectAltName: {names})", "clients that check the name (the openai client does) "
                      "will refuse it: add the address to the certificate", base + ("cert_file",), Severity.warning)
