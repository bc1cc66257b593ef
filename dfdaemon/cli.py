"""`dfdaemon`: the per-host agent. Flags override the `--config` file (TOML)."""

from __future__ import annotations

import argparse
import errno
import logging
import re
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

from common import argtypes
from common.addresses import format_address
from common.eviction import GcPolicy
from common.io.service import log_to_stderr, raise_open_files, serve_until_signalled
from common.ready import prepare_ready_file, ready_file_argument, write_ready_file
from common.tokens import read_token
from dfdaemon import __version__, cache
from dfdaemon.accessflags import (
    access_tls_arguments,
    access_tls_settings,
    check_access_tls,
)
from dfdaemon.app import Daemon, DaemonConfig, DataDirInUse
from dfdaemon.ca import CaError
from dfdaemon.cacli import add_hijack_arguments, ca_main, hijack_settings
from dfdaemon.configfile import DEFAULT_PORT, load_config
from dfdaemon.setup import cli as setup_cli
from dfdaemon.trust import origin_of, parse_allowed

log = logging.getLogger("dfdaemon")


EPILOG = """\
examples:
  dfdaemon --supernode 10.0.0.5:8002 --registry https://registry.example.com \\
           --data-dir /var/lib/dfdaemon
  dfdaemon --config /etc/dfdaemon/config.toml
  dfdaemon setup docker|containerd|podman [--dry-run] [--undo]   (see --help there)

Point docker at it with "registry-mirrors": ["http://127.0.0.1:65001"] in
/etc/docker/daemon.json, containerd with a hosts.toml (see docs/dfdaemon.md). Blob
downloads go P2P through the supernode; everything else is passed to the registry.
GET /metrics on the same port gives Prometheus metrics.

config file keys (TOML; flags win): listen, supernodes (list), registry,
allow_registries (list), data_dir, peer_listen, download_rate, upload_rate,
upload_slots, rules (list), plain_http (list), back_source (bool), insecure (bool),
token_file, supernode_identities (list), control_socket, cache_quota, cache_ttl,
max_connections, origin_allow (list), origin_deny (list), ready_file, log_level,
hijack (list), ca_cert, ca_key, proxy_auth_file, proxy_open (bool), tls_cert,
tls_key; [registries."HOST[:PORT]"] tables: ca, client_cert, client_key.

`dfdaemon ca [--data-dir DIR]` prints the CA certificate that --hijack's leaves are
signed with, for the clients' trust stores (generated if there is none yet).
"""


def _supernodes(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfdaemon",
        description="Per-host agent: registry mirror for docker and containerd, P2P peer.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--listen",
        type=argtypes.address(DEFAULT_PORT),
        metavar="HOST:PORT",
        help=f"the mirror's HTTP address (default 127.0.0.1:{DEFAULT_PORT})",
    )
    parser.add_argument(
        "--supernode",
        type=_supernodes,
        action="extend",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="supernodes to download through (repeatable); none: straight to the upstream",
    )
    parser.add_argument(
        "--registry",
        metavar="URL",
        help="the upstream registry when a request names none with ?ns= "
        "(default https://registry-1.docker.io)",
    )
    parser.add_argument(
        "--allow-registry",
        action="append",
        metavar="HOST[:PORT]",
        help="another registry a request may name with ?ns= (repeatable); any other ns= "
        "gets 403, so a hostile upstream cannot vouch for a cached private blob",
    )
    parser.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="the blob cache (default /var/lib/dfdaemon)"
    )
    argtypes.origin_policy_arguments(
        parser,
        "which addresses the daemon may connect to for its clients (registries, proxied "
        "URLs, CONNECT, the fallback to the upstream)",
    )
    parser.add_argument(
        "--peer-listen",
        type=argtypes.address(),
        metavar="HOST:PORT",
        help="where other peers fetch pieces from this host (default 0.0.0.0 on a free port)",
    )
    argtypes.rate_argument(parser, "--download-rate", "host-wide download cap", "100MiB")
    argtypes.rate_argument(parser, "--upload-rate", "host-wide upload cap to other peers", "50MiB")
    parser.add_argument(
        "--upload-slots", type=int, metavar="N", help="pieces uploaded at once (default 8)"
    )
    parser.add_argument(
        "--rule",
        action="append",
        metavar="REGEX",
        help="forward proxy: plain-HTTP GETs whose URL matches go P2P (repeatable)",
    )
    parser.add_argument(
        "--plain-http",
        action="append",
        metavar="HOST[:PORT]",
        help="a registry named by ?ns= that speaks plain http, not https (repeatable)",
    )
    parser.add_argument(
        "--no-back-source",
        dest="back_source",
        action="store_const",
        const=False,
        help="when P2P fails (or without --supernode), answer 503 instead of fetching a "
        "blob from the upstream",
    )
    parser.add_argument(
        "--insecure",
        action="store_const",
        const=True,
        help="do not verify the upstream's TLS certificate",
    )
    argtypes.token_arguments(parser)
    argtypes.identity_arguments(parser)
    parser.add_argument(
        "--cache-quota",
        type=argtypes.size,
        metavar="SIZE",
        help="disk quota for cached blobs, e.g. 50GiB: past 90%% of it, blobs no client is "
        "reading are evicted, least recently used first, down to 70%% (default: none)",
    )
    parser.add_argument(
        "--cache-ttl",
        type=float,
        metavar="SECONDS",
        help="evict cached blobs no client asked for in this long (default: never)",
    )
    parser.add_argument(
        "--control-socket",
        type=Path,
        metavar="PATH",
        help="the Unix socket dfget hands downloads to (default DATA_DIR/dfdaemon.sock)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="connections held at once on each of its ports: the HTTP port, the upload "
        "port and the control socket; one address (on the socket, one local user) may "
        "hold N/8 of them, at least 16 (on a loopback HTTP port, where every client is "
        "127.0.0.1, all N); past it new ones are closed at once (default 256)",
    )
    add_hijack_arguments(parser)
    access_tls_arguments(parser)
    ready_file_argument(parser, '"http" and "upload" (HOST:PORT) and "control_socket" (its path)')
    parser.add_argument("--config", type=Path, metavar="FILE", help="a TOML config file")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version=f"dfdaemon {__version__}")
    return parser


def resolve_config(args: argparse.Namespace) -> tuple[DaemonConfig, str]:
    """Flags over the config file over defaults; ValueError if unusable."""
    return config_from(settings_of(args))


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The flags over the config file's settings, by flag destination; ValueError if
    the file is unusable."""
    settings = load_config(args.config) if args.config else {}
    if args.token is not None:  # a token on the command line beats the file's token_file
        settings.pop("token_file", None)
    for name, value in vars(args).items():
        if value is not None and name != "config":
            settings[name] = value
    return settings


def config_from(settings: dict[str, Any]) -> tuple[DaemonConfig, str]:
    """The daemon's config and log level from `settings` over defaults; ValueError if
    unusable."""
    defaults = DaemonConfig()
    rules = tuple(settings.get("rule", ()))
    for rule in rules:
        try:
            re.compile(rule)
        except (re.error, OverflowError, RecursionError) as exc:  # a{4294967296}, (((((…
            raise ValueError(f"bad --rule {rule!r}: {exc}") from exc
    ttl = settings.get("cache_ttl")
    if ttl is not None and not ttl > 0:  # (NaN too: nothing would expire)
        raise ValueError("--cache-ttl must be a positive number of seconds")
    hijack = hijack_settings(settings)
    allowed = tuple(settings.get("allow_registry", ()))
    for entry in allowed:
        try:
            parse_allowed(entry)
        except ValueError as exc:
            raise ValueError(f"bad --allow-registry {entry!r}: {exc}") from exc
    max_connections = settings.get("max_connections", defaults.max_connections)
    if max_connections < 1:
        raise ValueError(f"--max-connections wants at least 1, not {max_connections}")
    token = read_token(settings.get("token"), settings.get("token_file"))
    access = access_tls_settings(settings)
    config = DaemonConfig(
        listen=settings.get("listen", defaults.listen),
        supernodes=tuple(settings.get("supernode", ())),
        registry=settings.get("registry", defaults.registry).rstrip("/"),
        data_dir=settings.get("data_dir", defaults.data_dir),
        peer_listen=settings.get("peer_listen", defaults.peer_listen),
        download_rate=settings.get("download_rate"),
        upload_rate=settings.get("upload_rate"),
        upload_slots=max(1, settings.get("upload_slots", defaults.upload_slots)),
        plain_http=frozenset(settings.get("plain_http", ())),
        allow_registries=allowed,
        max_connections=max_connections,
        origin_allow=tuple(settings.get("origin_allow", ())),
        origin_deny=tuple(settings.get("origin_deny", ())),
        back_source=settings.get("back_source", True),
        insecure=settings.get("insecure", False),
        token=token,
        identities=frozenset(settings.get("supernode_identity", ())),
        rules=rules,
        control_socket=settings.get("control_socket"),
        cache=GcPolicy(quota=settings.get("cache_quota"), ttl=settings.get("cache_ttl")),
        **hijack,
        **access,
    )
    check_access_tls(config)
    if not config.registry.startswith(("http://", "https://")):
        raise ValueError(f"--registry wants an http:// or https:// URL, not {config.registry!r}")
    try:
        origin_of(config.registry)
    except ValueError as exc:
        raise ValueError(f"--registry wants a URL with a host: {exc}") from exc
    return config, settings.get("log_level", "info")


async def serve(daemon: Daemon, ready_file: Path | None) -> None:
    """Run the daemon; once it listens, say where in `ready_file`."""
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(daemon.serve)
        ready = {
            "http": format_address(host, port),
            "upload": format_address(daemon.config.peer_listen[0], daemon.upload_port),
            "control_socket": str(daemon.socket_path.absolute()),
        }
        write_ready_file(ready_file, ready)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["setup"]:  # `dfdaemon setup CLIENT`: configure a client, then exit
        return setup_cli.main(argv[1:])
    if argv[:1] == ["ca"]:  # `dfdaemon ca`: print the interception CA's certificate
        return ca_main(argv[1:], load_config)
    args = build_parser().parse_args(argv)
    try:
        settings = settings_of(args)
        config, level = config_from(settings)
        ready_file = settings.get("ready_file")
        prepare_ready_file(ready_file)
    except ValueError as exc:
        print(f"dfdaemon: {exc}", file=sys.stderr)
        return 2
    log_to_stderr(level)
    if not config.supernodes:
        log.warning("no --supernode: every blob is fetched straight from the upstream")
    try:
        # Three ports' connections (HTTP, uploads, dfget's socket), two descriptors for
        # each download the caps allow (its file, and a connection while it downloads),
        # and room for the sessions and the rest.
        seeded = cache.MAX_URL_DOWNLOADS + cache.MAX_DIGEST_BLOBS
        raise_open_files(3 * config.max_connections + 2 * seeded + 1024)
        trio.run(serve_until_signalled, partial(serve, Daemon(config), ready_file))
    except KeyboardInterrupt:
        return 130
    except (DataDirInUse, CaError) as exc:
        print(f"dfdaemon: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = ""
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            (host, port), (peer_host, peer_port) = config.listen, config.peer_listen
            where = f" (listening on {host}:{port}, uploads on {peer_host}:{peer_port})"
        print(f"dfdaemon: {exc}{where}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
