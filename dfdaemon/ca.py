"""The daemon's certificate authority for HTTPS interception (`--hijack`): loaded from
`--ca-cert`/`--ca-key`, or generated once in the data dir; and the leaf certificates
it mints on the fly, one per intercepted host, cached in memory.

A generated CA is an ECDSA P-256 key (what Go, OpenSSL, NSS and rustls clients all
accept) and a self-signed certificate valid for ten years, limited to signing end
certificates (`pathLenConstraint` 0). Its two files are written into a fresh folder
that is then renamed into place (`DATA_DIR/ca/`), so a daemon and `dfdaemon ca`
starting at once never pair one's certificate with the other's key; the key is 0600.
What is found there is used only as the daemon would have left it: a real folder and
files (no symbolic link to follow), the daemon's user's, closed to others. Anything
else (a CA planted before the first start, whose key someone knows) is refused. An
operator's `--ca-key` others can read is used, with a warning (a mounted secret).

A leaf is valid for LEAF_LIFETIME (three days) and minted again once less than
LEAF_RENEW of it is left: minting costs well under a millisecond, while a short life
bounds what a leaf taken from the daemon's memory (a core dump, swap) is worth, since
nothing can revoke it. Its key is never written to a file system: the certificate
chain reaches OpenSSL through an anonymous memory file (memfd), the one way
`ssl.SSLContext` takes a key. At most LEAF_CACHE hosts are kept, least recently used
dropped first. Minting costs about a millisecond of the loop (a key, a signature,
a TLS context), so new leaves come from a budget: MINT_RATE a second, MINT_BURST at
once; a host whose leaf is cached costs nothing.
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
import logging
import os
import ssl
import stat
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.ratelimit import TokenBucket

log = logging.getLogger(__name__)

CA_DIR = "ca"  # in the data dir
CERT_FILE = "ca.crt"
KEY_FILE = "ca.key"
CA_LIFETIME = datetime.timedelta(days=3650)
LEAF_LIFETIME = datetime.timedelta(days=3)
LEAF_RENEW = datetime.timedelta(days=1)  # minted again when less than this is left
CLOCK_SKEW = datetime.timedelta(hours=1)  # a leaf is valid from this long before now
LEAF_CACHE = 1024  # hosts whose leaf is kept
MINT_RATE = 50.0  # new leaves a second, on average (5% of a core)...
MINT_BURST = 100.0  # ...and at once

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class CaError(Exception):
    """The CA's files cannot be read, written or used."""


class MintingBusy(Exception):
    """The minting budget is spent: no new leaf now."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Authority:
    """A CA certificate and its key; `cert_path` is where the certificate is."""

    cert: x509.Certificate
    key: SigningKey
    cert_path: Path

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def mint(
        self, host: str, now: datetime.datetime | None = None
    ) -> tuple[x509.Certificate, bytes]:
        """A leaf certificate for `host` (a name, or an IP address: its SAN) and its
        key in PEM; the key exists only in the returned bytes."""
        now = now or _now()
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            san = x509.DNSName(host)
        ca_key = self.cert.public_key()
        if not isinstance(
            ca_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
        ):
            raise CaError("unsupported CA key type")
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(max(now - CLOCK_SKEW, self.cert.not_valid_before_utc))
            .not_valid_after(min(now + LEAF_LIFETIME, self.cert.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
            .sign(self.key, _hash(self.key))
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert, key_pem


def _hash(key: SigningKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def load_authority(cert_path: Path, key_path: Path) -> Authority:
    """The CA in these PEM files (the operator's: a key others can read is logged);
    CaError if they cannot be read, the certificate is not a CA's, or the key is not
    its key."""
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
        mode = key_path.stat().st_mode
    except OSError as exc:
        raise CaError(f"cannot load the CA from {cert_path} and {key_path}: {exc}") from exc
    if mode & 0o077:
        log.warning(
            "CA key %s is readable by others (mode %o): whoever reads it can intercept "
            "what the daemon intercepts; make it 0600",
            key_path,
            stat.S_IMODE(mode),
        )
    return _authority(cert_pem, key_pem, cert_path, key_path)


def _authority(cert_pem: bytes, key_pem: bytes, cert_path: Path, key_path: Path) -> Authority:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CaError(f"cannot load the CA from {cert_path} and {key_path}: {exc}") from exc
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise CaError(f"{key_path}: want an EC, RSA or Ed25519 key")
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise CaError(f"{key_path} is not the key of the certificate in {cert_path}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound as exc:
        raise CaError(f"{cert_path}: not a CA certificate ({exc})") from exc
    if not constraints.ca:
        raise CaError(f"{cert_path}: not a CA certificate (basicConstraints CA:FALSE)")
    if cert.not_valid_after_utc <= _now():
        raise CaError(f"{cert_path}: expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    return Authority(cert, key, cert_path)


def new_authority(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A fresh self-signed CA: an ECDSA P-256 key and its certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dfdaemon"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def data_dir_authority(data_dir: Path) -> Authority:
    """The CA kept in DATA_DIR/ca/, generated there if there is none (the data dir
    must exist); CaError if it cannot be read or written, or is not as the daemon
    leaves it (a symbolic link, another user's, open to others)."""
    folder = data_dir / CA_DIR
    if not _lexists(folder):
        _generate(data_dir, folder)
    _private(folder, stat.S_ISDIR, "folder", 0o022)
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    cert_pem = _read_private(cert_path, 0o022)
    key_pem = _read_private(key_path, 0o077)
    return _authority(cert_pem, key_pem, cert_path, key_path)


def _lexists(path: Path) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise CaError(f"cannot use the CA in {path}: {exc}") from exc
    return True


def _private(path: Path, kind: Callable[[int], bool], what: str, closed: int) -> None:
    """CaError unless PATH itself (not a link's target) is a `kind` (a folder, a
    regular file) of this user's, with none of the `closed` mode bits."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise CaError(f"cannot use the CA in {path}: {exc}") from exc
    _check(path, info, kind, what, closed)


def _check(
    path: Path, info: os.stat_result, kind: Callable[[int], bool], what: str, closed: int
) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise CaError(f"{path} is a symbolic link: the daemon's CA is in a {what} of its own")
    if not kind(info.st_mode):
        raise CaError(f"{path} is not a {what}")
    if info.st_uid != os.geteuid():
        raise CaError(f"{path} is owned by uid {info.st_uid}, not the daemon's user")
    if info.st_mode & closed:
        kind_of = "readable by others" if closed & 0o044 else "open to others"
        raise CaError(f"{path} is {kind_of} (mode {stat.S_IMODE(info.st_mode):o})")


def _read_private(path: Path, closed: int) -> bytes:
    """A file of the CA folder, read without following a symbolic link and checked
    on the very file read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CaError(
                f"{path} is a symbolic link: the daemon's CA is in a file of its own"
            ) from exc
        raise CaError(f"cannot use the CA in {path}: {exc}") from exc
    with os.fdopen(fd, "rb") as f:
        _check(path, os.fstat(fd), stat.S_ISREG, "file", closed)
        return f.read()


def _generate(data_dir: Path, folder: Path) -> None:
    cert, key = new_authority(
        f"dfdaemon interception CA {os.uname().nodename} {os.urandom(4).hex()}"
    )
    try:
        scratch = Path(tempfile.mkdtemp(prefix=".ca-", dir=data_dir))  # 0700
    except OSError as exc:
        raise CaError(f"cannot write a CA in {data_dir}: {exc}") from exc
    try:
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write(scratch / KEY_FILE, key_pem, 0o600)
        _write(scratch / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        try:
            os.rename(scratch, folder)  # atomic; fails if another process got there first
        except OSError:
            if not _lexists(folder):
                raise
    except OSError as exc:
        raise CaError(f"cannot write a CA in {folder}: {exc}") from exc
    finally:
        for leftover in (scratch / KEY_FILE, scratch / CERT_FILE):
            leftover.unlink(missing_ok=True)
        if scratch.exists():
            scratch.rmdir()


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def server_context(cert: x509.Certificate, key_pem: bytes) -> ssl.SSLContext:
    """A TLS server context presenting `cert` with its key, HTTP/1.1 only: the key
    goes to OpenSSL through an anonymous memory file, never a file system."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    fd = os.memfd_create("dfdaemon-leaf", os.MFD_CLOEXEC)
    try:
        os.write(fd, key_pem + cert.public_bytes(serialization.Encoding.PEM))
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return context


class LeafCache:
    """TLS server contexts for intercepted hosts, each with a leaf minted by
    `authority`; at most `size` hosts, least recently used dropped first."""

    def __init__(self, authority: Authority, size: int = LEAF_CACHE) -> None:
        self.authority = authority
        self.size = size
        # Full from the start, as if idle for a burst's time.
        self.bucket = TokenBucket(
            MINT_RATE, MINT_BURST, now=time.monotonic() - MINT_BURST / MINT_RATE
        )
        self.minted = 0  # leaves minted since the start
        self._leaves: OrderedDict[str, tuple[ssl.SSLContext, x509.Certificate]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._leaves)

    def context(self, host: str, now: datetime.datetime | None = None) -> ssl.SSLContext:
        """The server context for `host` (normalised by the caller), minted if there is
        none or the one cached has less than LEAF_RENEW left; MintingBusy if a new one
        is needed and the budget is spent (a cached one still valid is used then)."""
        now = now or _now()
        cached = self._leaves.get(host)
        if cached is not None and cached[1].not_valid_after_utc - now > LEAF_RENEW:
            self._leaves.move_to_end(host)
            return cached[0]
        if not self.bucket.try_take(1, time.monotonic()):
            if cached is not None and cached[1].not_valid_after_utc - now > CLOCK_SKEW:
                return cached[0]
            raise MintingBusy(host)
        cert, key_pem = self.authority.mint(host, now)
        context = server_context(cert, key_pem)
        self.minted += 1
        self._leaves[host] = (context, cert)
        self._leaves.move_to_end(host)
        while len(self._leaves) > self.size:
            self._leaves.popitem(last=False)
        return context

    def certificate(self, host: str) -> x509.Certificate | None:
        """The leaf cached for `host`, if any (for tests and logs)."""
        cached = self._leaves.get(host)
        return cached[1] if cached else None
