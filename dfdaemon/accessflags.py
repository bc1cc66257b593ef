"""The daemon's access and TLS flags: who may use the proxy (`--proxy-auth-file`,
`--proxy-open`), the listener's certificate (`--tls-cert`, `--tls-key`), and each
registry's TLS (`--registry-ca`, `--registry-client-cert`, or a config table per
registry). Parsed and checked here, so that a bad file stops the daemon at start
(exit 2) with a message naming it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.tlsfiles import (
    OriginTls,
    add_ca,
    add_client_cert,
    client_contexts,
    host_key,
    server_context,
    tls_arguments,
    tls_table,
)
from dfdaemon.proxyauth import check_open_proxy, load_htpasswd

if TYPE_CHECKING:
    from dfdaemon.app import DaemonConfig

_REGISTRY_KEYS = {"ca", "client_cert", "client_key"}


def access_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """The "access and TLS" group of dfdaemon's flags."""
    group = parser.add_argument_group("access and TLS")
    group.add_argument(
        "--proxy-auth-file",
        type=Path,
        metavar="FILE",
        help="an htpasswd file of bcrypt entries (htpasswd -B): the forward proxy and "
        "CONNECT answer 407 to clients without its credentials (Proxy-Authorization: "
        "Basic); mirror requests (/v2/) and /metrics need none",
    )
    group.add_argument(
        "--proxy-open",
        action="store_const",
        const=True,
        help="allow --listen on a non-loopback address without --proxy-auth-file: "
        "anyone who reaches it may use the proxy (default: refuse to start)",
    )
    group.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="serve the mirror and proxy over https with this certificate (PEM, chain "
        "after it); needs --tls-key",
    )
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="the key of --tls-cert (PEM)")
    tls_arguments(group, "registry", "registry")


def registry_tables(value: object) -> dict[str, OriginTls]:
    """The config file's `[registries."HOST"]` tables (`ca`, `client_cert`,
    `client_key`); ValueError if malformed."""
    if not isinstance(value, dict):
        raise ValueError('want tables: [registries."HOST[:PORT]"] with ca, client_cert, client_key')
    table: dict[str, OriginTls] = {}
    for host, entry in value.items():
        if not isinstance(entry, dict) or not set(entry) <= _REGISTRY_KEYS:
            raise ValueError(f"{host}: want only the keys ca, client_cert and client_key")
        if not all(isinstance(v, str) for v in entry.values()):
            raise ValueError(f"{host}: want file paths (strings)")
        key = host_key(host)
        if "ca" in entry:
            add_ca(table, key, Path(entry["ca"]))
        if ("client_cert" in entry) != ("client_key" in entry):
            raise ValueError(f"{host}: client_cert and client_key go together")
        if "client_cert" in entry:
            add_client_cert(table, key, Path(entry["client_cert"]), Path(entry["client_key"]))
    return table


def access_tls_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """DaemonConfig's access and TLS fields from flags over the config file."""
    table = tls_table(
        settings.get("registry_ca"),
        settings.get("registry_client_cert"),
        settings.get("registry_tls"),
    )
    return {
        "proxy_auth_file": settings.get("proxy_auth_file"),
        "proxy_open": bool(settings.get("proxy_open", False)),
        "tls_cert": settings.get("tls_cert"),
        "tls_key": settings.get("tls_key"),
        "registry_tls": table,
    }


def check_access_tls(config: DaemonConfig) -> None:
    """ValueError, naming the flag and file, if the daemon must not start so: an open
    proxy off loopback, half a certificate, a file that cannot be used."""
    check_open_proxy(config.listen[0], config.proxy_auth_file, config.proxy_open)
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if config.tls_cert is not None and config.tls_key is not None:
        server_context(config.tls_cert, config.tls_key, what="--tls-cert/--tls-key")
    if config.proxy_auth_file is not None:
        load_htpasswd(config.proxy_auth_file)
    client_contexts(config.registry_tls, insecure=config.insecure)
