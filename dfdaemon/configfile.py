"""dfdaemon's TOML config file: its keys, the flag each stands for, and their checks
(`load_config`). Flags win over the file (dfdaemon/cli.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from common.addresses import parse_listen
from common.argtypes import parse_identity
from common.origins import parse_network
from common.units import parse_rate, parse_size
from dfdaemon.accessflags import registry_tables

DEFAULT_PORT = 65001

# Config-file keys and the flag each stands for.
CONFIG_KEYS = {
    "listen": "listen",
    "supernodes": "supernode",
    "registry": "registry",
    "allow_registries": "allow_registry",
    "data_dir": "data_dir",
    "peer_listen": "peer_listen",
    "download_rate": "download_rate",
    "upload_rate": "upload_rate",
    "upload_slots": "upload_slots",
    "rules": "rule",
    "plain_http": "plain_http",
    "back_source": "back_source",
    "insecure": "insecure",
    "token_file": "token_file",
    "supernode_identities": "supernode_identity",
    "control_socket": "control_socket",
    "cache_quota": "cache_quota",
    "cache_ttl": "cache_ttl",
    "max_connections": "max_connections",
    "origin_allow": "origin_allow",
    "origin_deny": "origin_deny",
    "ready_file": "ready_file",
    "log_level": "log_level",
    "hijack": "hijack",
    "ca_cert": "ca_cert",
    "ca_key": "ca_key",
    "proxy_auth_file": "proxy_auth_file",
    "proxy_open": "proxy_open",
    "tls_cert": "tls_cert",
    "tls_key": "tls_key",
    "registries": "registry_tls",
}


_STRING_KEYS = {
    "listen",
    "registry",
    "data_dir",
    "peer_listen",
    "download_rate",
    "upload_rate",
    "token_file",
    "control_socket",
    "ready_file",
    "log_level",
    "ca_cert",
    "ca_key",
    "proxy_auth_file",
    "tls_cert",
    "tls_key",
}


_PATH_KEYS = frozenset(
    {"data_dir", "token_file", "control_socket", "ready_file", "proxy_auth_file", "tls_cert"}
    | {"tls_key", "ca_cert", "ca_key"}
)


def load_config(path: Path) -> dict[str, Any]:
    """The config file's settings, by flag destination; ValueError if unusable."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, ValueError) as exc:  # UnicodeError, TOMLDecodeError, 5,000 digits
        raise ValueError(f"cannot read the config file {path}: {exc}") from exc
    except RecursionError as exc:  # (tomllib recurses into arrays and inline tables)
        raise ValueError(f"cannot read the config file {path}: nested too deeply") from exc
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {', '.join(unknown)}")
    settings: dict[str, Any] = {}
    for key, value in data.items():
        dest = CONFIG_KEYS[key]
        try:
            if key in _STRING_KEYS and not isinstance(value, str):
                raise ValueError("want a string")
            if key in ("listen",):
                value = parse_listen(str(value), DEFAULT_PORT)
            elif key == "peer_listen":
                value = parse_listen(str(value))
            elif key in ("download_rate", "upload_rate"):
                value = parse_rate(str(value))
            elif key == "cache_quota":
                value = parse_size(str(value))
            elif key == "cache_ttl" and (
                not isinstance(value, int | float) or isinstance(value, bool)
            ):
                raise ValueError("want a number of seconds")
            elif key in _PATH_KEYS:
                value = Path(str(value))
            elif key == "registries":
                value = registry_tables(value)
            elif key in ("supernodes", "rules", "plain_http", "allow_registries", "hijack"):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError("want a list of strings")
            elif key == "supernode_identities":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError("want a list of identities (64 hex digits each)")
                value = [parse_identity(v) for v in value]
            elif key in ("origin_allow", "origin_deny"):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError("want a list of networks (CIDR strings)")
                for network in value:
                    parse_network(network)
            elif key in ("back_source", "insecure", "proxy_open") and not isinstance(value, bool):
                raise ValueError("want true or false")
            elif key in ("upload_slots", "max_connections") and (
                not isinstance(value, int) or isinstance(value, bool)
            ):
                raise ValueError("want a number")
            elif key == "log_level" and value not in ("debug", "info", "warning", "error"):
                raise ValueError("want debug, info, warning or error")
        except ValueError as exc:
            raise ValueError(f"{path}: {key}: {exc}") from exc
        settings[dest] = value
    return settings
