"""What the daemon serves, as `dfdaemon setup` configures clients for it: the mirror's
URL, its default registry (`--registry`: where requests without `?ns=` go) and the
other registries it trusts (`--allow-registry`), and which of them speak plain http.
Read from the daemon's TOML config file and setup's own flags (flags win); other keys
of that file are not setup's business and are left alone."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common.addresses import format_address, parse_listen
from dfdaemon.setup.files import SetupError
from dfdaemon.trust import DOCKER_HUB, DOCKER_HUB_HOST, origin_of, parse_allowed

DEFAULT_REGISTRY = f"https://{DOCKER_HUB_HOST}"
DEFAULT_PORT = 65001
HUB = "docker.io"  # how clients name Docker Hub


@dataclass(frozen=True)
class Registry:
    """A registry as clients name it (`docker.io`, `HOST[:PORT]`) and its URL."""

    name: str
    url: str

    @property
    def hub(self) -> bool:
        return self.name == HUB

    @property
    def plain_http(self) -> bool:
        return self.url.startswith("http://")


@dataclass(frozen=True)
class Target:
    mirror: str  # http(s)://HOST:PORT
    default: Registry  # the daemon's --registry
    others: tuple[Registry, ...]  # its --allow-registry entries

    @property
    def registries(self) -> tuple[Registry, ...]:
        return (self.default, *self.others)

    @property
    def mirror_host(self) -> str:
        """HOST:PORT of the mirror, as registries.conf and insecure-registries name it."""
        return urlsplit(self.mirror).netloc

    @property
    def mirror_loopback(self) -> bool:
        host = urlsplit(self.mirror).hostname or ""
        return host == "localhost" or host.startswith("127.") or host == "::1"


def _name(url: str) -> str:
    """How clients name the registry at URL: docker.io for Hub, else HOST[:PORT] as
    written (no port for the scheme's default)."""
    origin = origin_of(url)
    if origin.host in DOCKER_HUB:
        return HUB
    return urlsplit(url).netloc.lower()


def _string_list(data: dict[str, Any], key: str, path: Path) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SetupError(f"{path}: {key}: want a list of strings")
    return value


def target_of(
    config: Path | None,
    *,
    mirror: str | None = None,
    registry: str | None = None,
    allow: list[str] | None = None,
    plain_http: list[str] | None = None,
) -> Target:
    """The daemon's target from its config file (if any) and the flags; SetupError
    if unusable."""
    data: dict[str, Any] = {}
    if config is not None:
        try:
            data = tomllib.loads(config.read_text())
        except (OSError, ValueError) as exc:  # UnicodeError, TOMLDecodeError, huge integer
            raise SetupError(f"cannot read the daemon's config file {config}: {exc}") from exc
        except RecursionError as exc:
            raise SetupError(f"cannot read the daemon's config file {config}: too deep") from exc
    path = config or Path("--config")
    if mirror is None:
        listen = data.get("listen", f"127.0.0.1:{DEFAULT_PORT}")
        try:
            host, port = parse_listen(str(listen), DEFAULT_PORT)
        except ValueError as exc:
            raise SetupError(f"{path}: listen: {exc}") from exc
        if host in ("0.0.0.0", "", "::"):  # listening everywhere: this host reaches it here
            host = "127.0.0.1"
        scheme = "https" if data.get("tls_cert") else "http"
        mirror = f"{scheme}://{format_address(host, port)}"
    mirror = mirror.rstrip("/")
    try:
        named = urlsplit(mirror)  # ValueError: "[...]" not an IP address
        hostname = named.hostname if named.port != 0 else None  # port: ValueError if junk
    except ValueError:
        hostname = None
    bare = (
        hostname is not None
        and not named.path
        and not named.query
        and not named.fragment
        and not named.username
        and not named.password
        and mirror.isascii()
        and mirror.isprintable()  # (a line break would go into a systemd drop-in)
    )
    if not mirror.startswith(("http://", "https://")) or not bare:
        raise SetupError(
            f"--mirror wants the daemon's http:// or https:// URL, SCHEME://HOST[:PORT] "
            f"alone, not {mirror!r}"
        )
    default_url = (registry or str(data.get("registry", DEFAULT_REGISTRY))).rstrip("/")
    try:
        default = Registry(_name(default_url), default_url)
    except ValueError as exc:
        raise SetupError(f"bad registry {default_url!r}: {exc}") from exc
    plain = set(_string_list(data, "plain_http", path) + (plain_http or []))
    others: list[Registry] = []
    for entry in _string_list(data, "allow_registries", path) + (allow or []):
        try:
            allowed = parse_allowed(entry)
        except ValueError as exc:
            raise SetupError(f"bad allowed registry {entry!r}: {exc}") from exc
        name = HUB if allowed.host == DOCKER_HUB_HOST else entry.strip().lower()
        if name == default.name or any(r.name == name for r in others):
            continue
        scheme = "http" if entry.strip() in plain else "https"
        url = DEFAULT_REGISTRY if name == HUB else f"{scheme}://{name}"
        others.append(Registry(name, url))
    return Target(mirror, default, tuple(others))
