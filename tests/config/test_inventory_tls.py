"""A proxy's ``tls:`` in the inventory: one source (own pair or self-signed), and the own pair's files read
by ``validate`` (LF185-LF188), each problem at the line of the file in question with its dotted path.
The certificates are real ones, made with ``cryptography`` as the deploy makes its self-signed pair."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from inventory_testlib import EXAMPLES, edit, line_of, run_cli

from llamafleet import tls
from llamafleet.config import check_inventory
from llamafleet.findings import Severity, dotted

AUTH = "    auth: {token_file: /opt/llamafleet/proxy.token}\n"
NOW = datetime.datetime.now(datetime.timezone.utc)


def write_pair(folder: Path, *, names=("127.0.0.1",), start=NOW - datetime.timedelta(days=1),
               end=NOW + datetime.timedelta(days=365), key=None, password: bytes | None = None) -> tls.LocalPair:
    """A self-signed certificate for ``names`` valid from ``start`` to ``end``, and its key (0600)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    alt = [x509.IPAddress(__import__("ipaddress").ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in names]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False).sign(key, hashes.SHA256()))
    pair = tls.LocalPair(folder / "cert.pem", folder / "key.pem")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    os.chmod(pair.key, 0o600)
    return pair


def inventory(tmp_path: Path, tls_block: str) -> tuple[Path, str]:
    text = edit((EXAMPLES / "local.yaml").read_text(), AUTH, AUTH + tls_block)
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path, text


def files_block(cert, key) -> str:
    return f"    tls:\n      cert_file: {cert}\n      key_file: {key}\n"


def only(findings, code):
    hits = [f for f in findings if f.code == code]
    assert len(hits) == 1, "\n".join(map(str, findings))
    return hits[0]


def test_a_good_pair_and_a_self_signed_proxy_are_valid(tmp_path):
    good = write_pair(tmp_path / "good")
    for block in (files_block(good.cert, good.key), "    tls: {self_signed: true}\n"):
        path, _ = inventory(tmp_path, block)
        loaded, findings = check_inventory(path)
        assert loaded is not None and not findings, "\n".join(map(str, findings))
        assert loaded.services["proxy"].tls is not None


@pytest.mark.parametrize("block, snippet", [
    ("    tls:\n      self_signed: true\n      cert_file: /etc/c.pem\n      key_file: /etc/k.pem\n", "tls:\n"),
    ("    tls:\n      cert_file: /etc/c.pem\n", "tls:\n"),
    ("    tls:\n      key_file: /etc/k.pem\n", "tls:\n"),
    ("    tls: {}\n", "tls: {}"),
])
def test_tls_has_exactly_one_source(tmp_path, block, snippet):
    path, text = inventory(tmp_path, block)
    loaded, findings = check_inventory(path)
    assert loaded is None
    finding = only(findings, "LF014")
    assert dotted(finding.path).startswith("services.proxy.tls"), str(finding)
    assert "cert_file and key_file" in finding.message or "self_signed" in finding.message


def test_relative_file_paths_are_refused_by_type(tmp_path):
    path, text = inventory(tmp_path, files_block("certs/proxy.crt", "/etc/k.pem"))
    loaded, findings = check_inventory(path)
    assert loaded is None
    assert any(dotted(f.path) == "services.proxy.tls.cert_file" and f.line == line_of(text, "cert_file: certs")
               for f in findings), "\n".join(map(str, findings))


def _cases(tmp_path: Path) -> list[tuple[str, str, str, str, Severity, str]]:
    """(name, cert file, key file, code, severity, field) for each class of bad pair."""
    good = write_pair(tmp_path / "good")
    other = write_pair(tmp_path / "other")
    expired = write_pair(tmp_path / "expired", start=NOW - datetime.timedelta(days=400),
                         end=NOW - datetime.timedelta(days=1))
    future = write_pair(tmp_path / "future", start=NOW + datetime.timedelta(days=10),
                        end=NOW + datetime.timedelta(days=400))
    soon = write_pair(tmp_path / "soon", end=NOW + datetime.timedelta(days=5))
    elsewhere = write_pair(tmp_path / "elsewhere", names=("192.0.2.7", "proxy.example"))
    rsa_pair = write_pair(tmp_path / "rsa", key=rsa.generate_private_key(65537, 2048))
    locked = write_pair(tmp_path / "locked", password=b"secret")
    loose = write_pair(tmp_path / "loose")
    os.chmod(loose.key, 0o644)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    return [
        ("missing certificate", tmp_path / "nope.crt", good.key, "LF185", Severity.error, "cert_file"),
        ("missing key", good.cert, tmp_path / "nope.key", "LF185", Severity.error, "key_file"),
        ("certificate is a folder", tmp_path, good.key, "LF185", Severity.error, "cert_file"),
        ("certificate is not PEM", junk, good.key, "LF185", Severity.error, "cert_file"),
        ("key is not PEM", good.cert, junk, "LF185", Severity.error, "key_file"),
        ("key is the certificate", good.cert, good.cert, "LF185", Severity.error, "key_file"),
        ("encrypted key", locked.cert, locked.key, "LF185", Severity.error, "key_file"),
        ("key readable by others", loose.cert, loose.key, "LF185", Severity.error, "key_file"),
        ("another pair's key", good.cert, other.key, "LF186", Severity.error, "key_file"),
        ("an RSA key for an EC certificate", good.cert, rsa_pair.key, "LF186", Severity.error, "key_file"),
        ("expired", expired.cert, expired.key, "LF187", Severity.error, "cert_file"),
        ("not valid yet", future.cert, future.key, "LF187", Severity.error, "cert_file"),
        ("expires in 5 days", soon.cert, soon.key, "LF187", Severity.warning, "cert_file"),
        ("names other addresses", elsewhere.cert, elsewhere.key, "LF188", Severity.warning, "cert_file"),
    ]


def test_each_bad_pair_is_one_finding_at_its_file(tmp_path):
    for name, cert, key, code, severity, field in _cases(tmp_path):
        path, text = inventory(tmp_path, files_block(cert, key))
        loaded, findings = check_inventory(path)
        finding = only(findings, code)
        assert finding.severity is severity, (name, str(finding))
        assert dotted(finding.path) == f"services.proxy.tls.{field}", (name, str(finding))
        assert finding.file == str(path) and finding.line == line_of(text, f"{field}: "), (name, str(finding))
        assert finding.hint, name
        assert (loaded is None) == (severity is Severity.error), name
        others = [f for f in findings if f.code.startswith("LF18") and f is not finding]
        assert not others, (name, "\n".join(map(str, others)))


@pytest.mark.parametrize("bind, tls_block, warned", [
    ("192.168.1.20", "", True),
    ("0.0.0.0", "", True),
    ("192.168.1.20", "    tls: {self_signed: true}\n", False),
    ("127.0.0.1", "", False),
])
def test_a_token_beyond_loopback_without_tls_is_a_warning(tmp_path, bind, tls_block, warned):
    text = edit((EXAMPLES / "local.yaml").read_text(), AUTH, AUTH + tls_block)
    text = edit(text, "    bind: 127.0.0.1\n    port: 8080\n", f"    bind: {bind}\n    port: 8080\n")
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    loaded, findings = check_inventory(path)
    hits = [f for f in findings if f.code == "LF189"]
    assert loaded is not None or not warned, "\n".join(map(str, findings))
    if not warned:
        assert not hits, "\n".join(map(str, hits))
        return
    assert len(hits) == 1 and hits[0].severity is Severity.warning
    assert dotted(hits[0].path) == "services.proxy.bind" and hits[0].line == line_of(text, f"bind: {bind}\n    port: 8080")


def test_validate_cli_reports_a_bad_pair_without_a_traceback(tmp_path):
    good, other = write_pair(tmp_path / "good"), write_pair(tmp_path / "other")
    path, text = inventory(tmp_path, files_block(good.cert, other.key))
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    line = line_of(text, "key_file: ")
    assert f"{path}:{line}:" in result.stdout + result.stderr
    assert "LF186 services.proxy.tls.key_file" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "PRIVATE KEY" not in result.stdout + result.stderr
