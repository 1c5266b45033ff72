"""TLS for the proxy: its certificate and key on the deployer, on the proxy host, and as clients see it.

A proxy service's ``tls`` (``llamafleet.config.models.ProxyTls``) names either a certificate and key the
user made (``cert_file`` + ``key_file``, local files on the machine that runs the deploy), or
``self_signed: true``: a pair generated once on the deployer and kept in the local state folder,

    $LLAMAFLEET_STATE (default ``$XDG_STATE_HOME/llamafleet``, else ``~/.local/state/llamafleet``)
        clusters/<cluster>/tls/<proxy service>/cert.pem  (0644)
        clusters/<cluster>/tls/<proxy service>/key.pem   (0600)

keyed by the inventory's cluster name and the proxy's service name. Later deploys reuse it, so its
fingerprint stays the one clients pinned; it is replaced only when it no longer fits (its addresses
changed, it expires within :data:`RENEW_BEFORE`, or the key does not match it).

On the proxy host the certificate is an owned file (0644) and the key a secret (0600, owned by the
service user) next to the proxy's config (:func:`host_paths`); the config holds their paths, never key
material. ``doctor`` compares the certificate the proxy serves with the local one by its sha256
fingerprint, and every client of a TLS proxy (doctor, bench, the demo) trusts exactly that
certificate (:func:`pinned_context`).

The ``ssl`` module serves and verifies; ``cryptography`` (a pyinfra dependency already) reads and
generates certificates, on the deployer only.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import posixpath
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llamafleet.server_key import STATE_ENV, state_root  # the deployer's state folder, shared with the server key

VALIDITY = datetime.timedelta(days=5 * 365)
RENEW_BEFORE = datetime.timedelta(days=30)
WILDCARDS = ("0.0.0.0", "::")
MAX_PEM_BYTES = 1024 * 1024


class TlsFileError(ValueError):
    """A certificate or key file that cannot be used; the message says why, without key material."""


# --- where the files live -------------------------------------------------------------------------


def self_signed_dir(cluster: str, service: str) -> Path:
    """Where the generated pair of a proxy lives on the deployer (cluster and service are inventory names:
    lower-case letters, digits and dashes, so each is one safe path component)."""
    return state_root() / "clusters" / cluster / "tls" / service


def host_paths(install_dir: str, service: str) -> tuple[str, str]:
    """(certificate, key) on the proxy host (a POSIX host: validate refuses a proxy on Windows)."""
    etc = posixpath.join(install_dir, "etc")
    return posixpath.join(etc, f"{service}.crt"), posixpath.join(etc, f"{service}.key")


@dataclass(frozen=True)
class LocalPair:
    """The deployer's copy of a proxy's certificate and key."""

    cert: Path
    key: Path

    def cert_pem(self) -> str:
        return read_pem(self.cert, "certificate").decode()


def local_pair(inventory, service: str, *, create: bool = False) -> LocalPair | None:
    """The pair a proxy service of ``inventory`` serves. For ``self_signed``: the one in the state folder
    (None when there is none yet); with ``create`` (:func:`ensure_pairs`) it is generated, or renewed
    when it no longer fits."""
    svc = inventory.services[service]
    tls = svc.tls
    if tls.cert_file is not None:
        return LocalPair(Path(tls.cert_file), Path(tls.key_file))
    folder = self_signed_dir(inventory.cluster, service)
    pair = LocalPair(folder / "cert.pem", folder / "key.pem")
    names = subject_names(inventory, service)
    if _usable(pair, names):
        return pair
    if not create:
        return pair if pair.cert.exists() else None
    generate_self_signed(pair, names, f"llamafleet {inventory.cluster} {service}")
    return pair


@dataclass(frozen=True)
class HostFiles:
    """What the deploy puts on a proxy's host: the certificate (an owned file, 0644) and the key (a
    secret copied from the deployer's ``key_source``, 0600 and owned by the service user)."""

    cert_path: str
    cert_pem: str
    key_path: str
    key_source: str


def ensure_pairs(inventory) -> None:
    """Generate (or renew, see :func:`local_pair`) the self-signed pair of every proxy that asks for one.
    The deploy calls this first, and ``llamafleet plan`` (its review); everything else reads the pair
    the deploy made and never makes one of its own."""
    from llamafleet.errors import UserError

    for name, svc in inventory.services.items():
        if getattr(svc, "tls", None) is not None and svc.tls.self_signed:
            try:
                local_pair(inventory, name, create=True)
            except OSError as err:
                raise UserError(f"services.{name}.tls: cannot write the self-signed pair under "
                                f"{self_signed_dir(inventory.cluster, name)}: {err.strerror or err}") from None


def host_files(inventory, service: str) -> HostFiles:
    """The proxy's pair as the deploy places it (and drift compares it). A self-signed pair that is not on
    this machine, or a file that went missing or bad since ``validate``, is one :class:`UserError`."""
    from llamafleet.errors import UserError

    svc = inventory.services[service]
    try:
        pair = local_pair(inventory, service)
        if pair is None:
            raise UserError(f"services.{service}.tls: the self-signed pair is not on this machine "
                            f"({self_signed_dir(inventory.cluster, service)}): the deploy generates it there; run "
                            f"this where the deploy ran, copy that folder here, or set {STATE_ENV}")
        pem = pair.cert_pem()
    except (ValueError, OSError) as err:  # TlsFileError, or a certificate file that is not text
        raise UserError(f"services.{service}.tls: {err}") from None
    cert_path, key_path = host_paths(inventory.hosts[svc.host].install_dir, service)
    return HostFiles(cert_path, pem, key_path, str(pair.key))


def subject_names(inventory, service: str) -> list[str]:
    """The addresses a self-signed certificate covers: where clients dial the proxy. Its bind address;
    for a wildcard bind, every address of its host (the ssh address, ``addresses``) and loopback."""
    svc = inventory.services[service]
    host = inventory.hosts[svc.host]
    if svc.bind not in WILDCARDS:
        return [svc.bind]
    names = [getattr(host.connection, "address", "127.0.0.1"), *host.addresses, "127.0.0.1", "::1"]
    return list(dict.fromkeys(names))


# --- reading and checking -------------------------------------------------------------------------


def read_pem(path: Path, what: str) -> bytes:
    from llamafleet.config.loader import NotRegularFile, TooLarge, read_limited

    try:
        return read_limited(path, MAX_PEM_BYTES)
    except FileNotFoundError:
        raise TlsFileError(f"{what} file {path} does not exist") from None
    except (NotRegularFile, TooLarge) as err:
        raise TlsFileError(f"{what} file {path} {err}") from None
    except OSError as err:
        raise TlsFileError(f"{what} file {path} cannot be read: {err.strerror or err}") from None


def load_certificate(path: Path):
    from cryptography import x509

    raw = read_pem(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(raw)
    except ValueError:
        raise TlsFileError(f"certificate file {path} holds no PEM certificate "
                           "(-----BEGIN CERTIFICATE-----)") from None


def load_key(path: Path):
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    raw = read_pem(path, "key")
    try:
        return load_pem_private_key(raw, password=None)
    except TypeError:
        raise TlsFileError(f"key file {path} is encrypted: the proxy starts unattended, so it needs the key "
                           "without a passphrase (in a 0600 file)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFileError(f"key file {path} holds no PEM private key (-----BEGIN PRIVATE KEY-----)") from None


def key_matches(cert, key) -> bool:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    def spki(public) -> bytes:
        return public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    return spki(cert.public_key()) == spki(key.public_key())


def validity(cert) -> tuple[datetime.datetime, datetime.datetime]:
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def covered_names(cert) -> set[str]:
    """The IP addresses and DNS names of a certificate's subjectAltName (normalised)."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return ({str(a) for a in san.get_values_for_type(x509.IPAddress)}
            | {n.lower() for n in san.get_values_for_type(x509.DNSName)})


def covers(cert, address: str) -> bool:
    names = covered_names(cert)
    try:
        return str(ipaddress.ip_address(address)) in names
    except ValueError:
        address = address.lower()
        wildcard = "*." + address.partition(".")[2]
        return address in names or ("." in address and wildcard in names)


def fingerprint(der: bytes) -> str:
    """sha256 of a DER certificate, as openssl prints it (``AB:CD:...``)."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def file_fingerprint(path: Path) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    return fingerprint(load_certificate(path).public_bytes(Encoding.DER))


def _usable(pair: LocalPair, names: list[str]) -> bool:
    """A generated pair that can be served again: both files there, matching, valid for a while longer,
    covering exactly ``names``, and the key private to this user."""
    try:
        cert, key = load_certificate(pair.cert), load_key(pair.key)
        mode = pair.key.stat().st_mode & 0o777
    except (TlsFileError, OSError):
        return False
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = validity(cert)
    wanted = {str(ipaddress.ip_address(n)) if _is_ip(n) else n.lower() for n in names}
    return (mode == 0o600 and key_matches(cert, key) and start <= now and end - now > RENEW_BEFORE
            and covered_names(cert) == wanted)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


# --- generating -----------------------------------------------------------------------------------


def generate_self_signed(pair: LocalPair, names: list[str], common_name: str) -> None:
    """A new P-256 key and a self-signed server certificate for ``names``, written atomically: the key
    0600 from its creation, the folder 0700."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    alt = [x509.IPAddress(ipaddress.ip_address(n)) if _is_ip(n) else x509.DNSName(n) for n in names]
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    folder = pair.cert.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    _write_atomic(pair.key, key_pem, 0o600)
    _write_atomic(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# --- serving and connecting -----------------------------------------------------------------------


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The proxy's server context (TLS 1.2 and later). Raises :class:`TlsFileError`."""
    for path, what in ((cert_file, "certificate"), (key_file, "key")):
        read_pem(Path(path), what)  # names the file that is missing or unreadable (load_cert_chain does not)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as err:
        raise TlsFileError(f"certificate {cert_file} and key {key_file} cannot be served: {err.reason or err}") from None
    except OSError as err:
        raise TlsFileError(f"certificate {cert_file} or key {key_file} cannot be read: {err.strerror or err}") from None
    return context


def pinned_context(cert_file: str | os.PathLike) -> ssl.SSLContext:
    """A client context that trusts exactly this certificate: the proxy must present it (chain checks
    start and end at it), whatever name it is dialled by, since pinning one certificate already says
    which server this is."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert_file))
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a CA-issued leaf is the trust anchor itself
    context.check_hostname = False
    return context


class PlainHttp(Exception):
    """The server answers plain HTTP where TLS was expected."""


def answers_plain_http(address: str, port: int, timeout: float) -> bool:
    """Whether ``address:port`` answers a plain HTTP request with an HTTP status line (a TLS server
    closes the connection or answers with a TLS alert instead)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.sendall(b"HEAD /health HTTP/1.0\r\n\r\n")
            return sock.recv(5) == b"HTTP/"
    except OSError:
        return False


def served_certificate(address: str, port: int, timeout: float) -> bytes:
    """The DER certificate a TLS server at ``address:port`` presents (read without trusting it: the
    caller compares its fingerprint). Raises :class:`PlainHttp` when the server speaks plain HTTP, and
    ``OSError`` (``ssl.SSLError`` included) when there is no TLS answer."""
    if answers_plain_http(address, port, timeout):
        raise PlainHttp(f"{address}:{port} answers plain HTTP")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=None if _is_ip(address) else address) as sock:
            return sock.getpeercert(binary_form=True)
