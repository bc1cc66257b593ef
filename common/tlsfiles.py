"""TLS files as the operator names them: a CA for one registry or origin
(`HOST=FILE`), a client certificate for one (`HOST=CERT,KEY`), a server certificate
for a listener; and the `ssl.SSLContext`s made from them.

Everything is read and checked at start, so a bad file is a usage error naming the
file and the flag (ValueError), not a TLS failure on the first pull. A per-host CA is
trusted on top of the system's (`SSL_CERT_FILE` included, as OpenSSL reads it): a
registry that redirects blobs to public storage keeps working.

Keys are `HOST` (any port) or `HOST:PORT`, lower case, as `?ns=` and `--plain-http`
name registries; `origin_patterns` turns them into httpx mount patterns.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from common import argtypes
from common.addresses import format_address, parse_listen
from common.urls import unsendable


@dataclass(frozen=True)
class OriginTls:
    """What one origin (registry) needs beyond the system's trust: a CA bundle, a
    client certificate and its key (mutual TLS)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


def host_key(text: str) -> str:
    """`HOST` or `HOST:PORT` (an IPv6 address in brackets), checked and lower case."""
    text = text.strip().lower()
    # "*" would be a wildcard in the httpx mount pattern: every host would get it.
    if not text or any(c in "/@*" or c.isspace() for c in text):
        raise ValueError(f"bad host {text!r} (want HOST or HOST:PORT)")
    _, sep, port = text.rpartition(":")
    if sep and "]" not in port:  # HOST:PORT
        parsed_host, parsed_port = parse_listen(text)
        if not parsed_host or parsed_port == 0:
            raise ValueError(f"bad host {text!r} (want HOST or HOST:PORT)")
        return _url_host(format_address(parsed_host, parsed_port))
    bracketed = text.startswith("[") and text.endswith("]") and len(text) > 2
    if ("[" in text or "]" in text) and not bracketed:
        raise ValueError(f"bad host {text!r} (an IPv6 address goes in brackets)")
    return _url_host(text)


def _url_host(key: str) -> str:
    """`key`, if httpx takes it as a URL's host (its mount pattern and proxy lookup are
    httpx URLs, made when a client starts): ValueError for what it refuses, such as an
    IPv4 address with leading zeros (`127.0.0.000`) or a name IDNA refuses (`xn--a`)."""
    if (why := unsendable(f"https://{key}/")) is not None:
        raise ValueError(f"bad host {key!r} ({why})")
    return key


def parse_ca(text: str) -> tuple[str, Path]:
    """`HOST=FILE` → (host key, CA file)."""
    host, sep, path = text.partition("=")
    if not sep or not path.strip():
        raise ValueError(f"bad value {text!r} (want HOST=FILE)")
    return host_key(host), Path(path.strip())


def parse_client_cert(text: str) -> tuple[str, Path, Path]:
    """`HOST=CERT,KEY` → (host key, certificate file, key file)."""
    host, sep, files = text.partition("=")
    cert, comma, key = files.partition(",")
    if not sep or not comma or not cert.strip() or not key.strip():
        raise ValueError(f"bad value {text!r} (want HOST=CERT,KEY)")
    return host_key(host), Path(cert.strip()), Path(key.strip())


def add_ca(table: dict[str, OriginTls], host: str, ca: Path) -> None:
    table[host] = replace(table.get(host, OriginTls()), ca=ca)


def add_client_cert(table: dict[str, OriginTls], host: str, cert: Path, key: Path) -> None:
    table[host] = replace(table.get(host, OriginTls()), cert=cert, key=key)


def tls_arguments(group: argparse._ActionsContainer, flag: str, what: str) -> None:
    """`--FLAG-ca HOST=FILE` and `--FLAG-client-cert HOST=CERT,KEY` (repeatable; unset
    they are None), for the daemon's registries and the supernode's origins; `what`
    names the hosts in the help. `tls_table` folds what they give into a table."""
    group.add_argument(
        f"--{flag}-ca",
        type=argtypes.argument_type(parse_ca, "HOST=FILE"),
        action="append",
        metavar="HOST[:PORT]=FILE",
        help=f"trust this CA bundle (PEM) for that {what}, on top of the system's and "
        "SSL_CERT_FILE (repeatable; HOST alone: any port)",
    )
    group.add_argument(
        f"--{flag}-client-cert",
        type=argtypes.argument_type(parse_client_cert, "HOST=CERT,KEY"),
        action="append",
        metavar="HOST[:PORT]=CERT,KEY",
        help=f"present this client certificate and key (PEM) to that {what}: mutual TLS "
        "(repeatable)",
    )


def tls_table(
    cas: Iterable[tuple[str, Path]] | None,
    certs: Iterable[tuple[str, Path, Path]] | None,
    table: Mapping[str, OriginTls] | None = None,
) -> dict[str, OriginTls]:
    """`table` (a config file's, say) with the flags' CAs and client certificates over
    it, host by host."""
    result = dict(table or {})
    for host, ca in cas or ():
        add_ca(result, host, ca)
    for host, cert, key in certs or ():
        add_client_cert(result, host, cert, key)
    return result


def client_context(tls: OriginTls, *, insecure: bool = False, what: str = "") -> ssl.SSLContext:
    """A client context: the system's CAs plus `tls.ca`, presenting `tls.cert` if
    given; with `insecure`, nothing is verified (the certificate is still presented).
    ValueError naming the file (and `what`: the flag and host) if one is unusable."""
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    where = f" ({what})" if what else ""
    if tls.ca is not None:
        _readable(tls.ca, where)
        try:
            context.load_verify_locations(cafile=str(tls.ca))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"CA file {tls.ca}{where}: not PEM certificates: {exc}") from exc
    if tls.cert is not None and tls.key is not None:
        load_chain(context, tls.cert, tls.key, where)
    return context


def server_context(cert: Path, key: Path, *, what: str = "") -> ssl.SSLContext:
    """A server context for a listener (TLS 1.2 at least, HTTP/1.1 by ALPN); ValueError
    naming the file if one is unreadable, not PEM, or the key does not match."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    load_chain(context, cert, key, f" ({what})" if what else "")
    return context


def load_chain(context: ssl.SSLContext, cert: Path, key: Path, where: str) -> None:
    """Load a certificate (chain) and its key into `context`, with errors that say
    which file is wrong and how."""
    _readable(cert, where)
    _readable(key, where)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise ValueError(f"key {key} does not match certificate {cert}{where}") from exc
        raise ValueError(
            f"certificate {cert} or key {key}{where}: not a PEM certificate and its "
            f"unencrypted key: {exc}"
        ) from exc
    except OSError as exc:
        raise ValueError(f"certificate {cert} or key {key}{where}: {exc}") from exc


def _readable(path: Path, where: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}{where}: {exc.strerror or exc}") from exc


def client_contexts(
    table: Mapping[str, OriginTls], *, insecure: bool = False, flag: str = "registry"
) -> dict[str, ssl.SSLContext]:
    """Host key → client context for every entry of `table` (ValueError if any file
    is unusable; `flag` says what the hosts are, in the error)."""
    return {
        host: client_context(tls, insecure=insecure, what=f"{flag} {host}")
        for host, tls in table.items()
    }


def origin_patterns(contexts: Mapping[str, ssl.SSLContext]) -> dict[str, ssl.SSLContext]:
    """httpx mount patterns for host-keyed contexts: `https://HOST` (any port) or
    `https://HOST:PORT`."""
    return {f"https://{host}": context for host, context in contexts.items()}
