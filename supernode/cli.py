"""`supernode`: run the CDN and peer server."""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from pathlib import Path

import trio

from common import argtypes
from common.addresses import format_address
from common.eviction import GcPolicy
from common.io.service import log_to_stderr, raise_open_files, serve_until_signalled
from common.ready import prepare_ready_file, ready_file_argument, write_ready_file
from common.tlsfiles import client_contexts, tls_arguments, tls_table
from common.tokens import read_token
from proto.messages import PROTOCOL_VERSIONS
from supernode import __version__
from supernode.admin.realms import RealmHost
from supernode.app import DEFAULT_PORT, Supernode, SupernodeConfig, default_data_dir
from supernode.cdn.streams import MAX_STREAMS
from supernode.cluster.flags import check_cluster_flags, cluster_arguments
from supernode.compiled import scheduler_build
from supernode.errors import StoreError, SupernodeError
from supernode.keys import load_or_create_ticket_key, raw_public
from supernode.peers.server import DEFAULT_MAX_CONNECTIONS

EPILOG = """\
examples:
  supernode                                    # 0.0.0.0:8002, data in ~/.local/share
  supernode --listen 127.0.0.1:8002 --data-dir /var/lib/dfpy
  supernode --origin-rate-limit 100MiB         # cap back-to-source traffic

Peers (dfget, dfdaemon) connect with --supernode HOST:PORT. The CDN fetches each file
from its origin once, stores it as sealed pieces in DATA_DIR and serves them to peers;
the store survives restarts.
"""


ADMIN_PORT = 8001


def _admin_address(text: str) -> tuple[str, int] | None:
    return None if text.strip().lower() == "off" else argtypes.address(ADMIN_PORT)(text)


def _realm(text: str) -> str:
    RealmHost.parse(text)
    return text.strip()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, not {value}")
    return value


positive = argtypes.argument_type(_positive, "count")
realm = argtypes.argument_type(_realm, "realm host")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supernode",
        description="CDN and scheduler of the P2P distribution system.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--listen",
        default=f"0.0.0.0:{DEFAULT_PORT}",
        type=argtypes.address(DEFAULT_PORT),
        help="HOST:PORT for peers (default 0.0.0.0:%(const)s)".replace(
            "%(const)s", str(DEFAULT_PORT)
        ),
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"piece store and keys (default {default_data_dir()})",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify origin TLS certificates (default: verify with system CAs)",
    )
    tls_arguments(parser, "origin", "origin or registry")
    parser.add_argument(
        "--origin-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="connect/read timeout towards origins (default 30)",
    )
    parser.add_argument(
        "--origin-streams",
        type=positive,
        default=1,
        metavar="N",
        help="connections a file larger than 4 MiB comes from its origin over at once, "
        "in ranged GETs guarded by If-Range, when the origin answers ranges and names a "
        "validator: for origins that throttle each connection (object stores, many CDNs); "
        f"it costs CPU where one connection is as fast (default 1: one plain GET a file; "
        f"at most {MAX_STREAMS})",
    )
    argtypes.rate_argument(parser, "--origin-rate-limit", "cap back-to-source download", "100MiB")
    argtypes.rate_argument(
        parser, "--cdn-upload-limit", "cap what the CDN serves to peers", "50MiB"
    )
    argtypes.token_arguments(
        parser,
        "cluster token: peers must prove they know it to be admitted, and it proves it "
        "to those that have it; without one the cluster is open to anyone who reaches it",
    )
    parser.add_argument(
        "--admin-listen",
        type=_admin_address,
        default=("127.0.0.1", ADMIN_PORT),
        metavar="HOST:PORT",
        help=f"the admin HTTP API: health, metrics, tasks, peers (default 127.0.0.1:{ADMIN_PORT}; "
        "'off' for none)",
    )
    admin_token = parser.add_mutually_exclusive_group()
    admin_token.add_argument(
        "--admin-token",
        metavar="SECRET",
        help="admin API routes that change things (DELETE...) need 'Authorization: Bearer "
        "SECRET' (visible in ps: prefer --admin-token-file)",
    )
    admin_token.add_argument(
        "--admin-token-file", type=Path, metavar="PATH", help="read the admin token from a file"
    )
    admin_token.add_argument(
        "--admin-open",
        action="store_true",
        help="no admin token: anyone who reaches the admin API may evict tasks and start "
        "preheats (default: without --admin-token the supernode keeps one in DATA_DIR/"
        "admin-token)",
    )
    parser.add_argument(
        "--admin-protect-reads",
        action="store_true",
        help="with an admin token, the admin API's reads need it too",
    )
    parser.add_argument(
        "--admin-max-connections",
        type=positive,
        default=256,
        metavar="N",
        help="connections the admin API holds at once; one address gets an eighth, at "
        "least 16, except on a loopback address, where every client is 127.0.0.1 "
        "(default 256)",
    )
    origins = argtypes.origin_policy_arguments(
        parser, "which addresses the supernode may fetch from", default=[]
    )
    origins.add_argument(
        "--preheat-realm",
        type=realm,
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a token realm an image preheat may send the registry credentials to, over "
        "https (http://HOST:PORT: plain http too); by default only https on the "
        "registry's own host (repeatable)",
    )
    store = parser.add_argument_group(
        "store",
        "eviction of idle tasks (no fetch running, no peer in their swarm), least "
        "recently used first",
    )
    store.add_argument(
        "--store-quota",
        type=argtypes.size,
        metavar="SIZE",
        help="disk quota for the CDN's pieces files, for example 200GiB (default: none)",
    )
    store.add_argument(
        "--store-high-watermark",
        type=float,
        default=0.9,
        metavar="SHARE",
        help="usage (share of the quota) that starts an eviction (default 0.9)",
    )
    store.add_argument(
        "--store-low-watermark",
        type=float,
        default=0.7,
        metavar="SHARE",
        help="usage an eviction brings the store down to (default 0.7)",
    )
    store.add_argument(
        "--task-ttl",
        type=float,
        metavar="SECONDS",
        help="evict idle tasks unused for this long, whatever the usage (default: never)",
    )
    parser.add_argument(
        "--cdn-upload-slots",
        type=int,
        default=16,
        metavar="N",
        help="pieces the CDN uploads at once; past it peers are sent to other peers (default 16)",
    )
    parser.add_argument(
        "--swarm-log",
        type=Path,
        metavar="FILE",
        help="append a JSON line to FILE for every piece task handed out, every result "
        "reported and every piece the CDN stores, with the time: to take a slow swarm "
        "apart afterwards (~100 bytes a piece a peer; default: none)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help=f"connections the peer port holds at once (default {DEFAULT_MAX_CONNECTIONS}); "
        "one remote address (an IPv6 /64) may hold N/8 of them, at least 16 (512 of the "
        "default); past either, a new connection is closed at once. With a cluster token, "
        "a peer's control session leaves the count once admitted and registered",
    )
    parser.add_argument(
        "--min-peer-protocol",
        type=int,
        default=1,
        metavar="N",
        help="refuse peers that speak no protocol version from N up (default 1: every version "
        f"this supernode speaks, {min(PROTOCOL_VERSIONS)}-{max(PROTOCOL_VERSIONS)}). With a "
        "cluster token, 4 once every peer and daemon is upgraded: before version 4 a peer "
        "proves the token unsealed",
    )
    parser.add_argument(
        "--cdn-slots-per-requester",
        type=positive,
        default=None,
        metavar="N",
        help="CDN uploads one download (a peer in one task) may have at once "
        "(default: half of --cdn-upload-slots)",
    )
    limits = parser.add_argument_group("limits", "what admitted peers can make the supernode do")
    limits.add_argument(
        "--max-fetches",
        type=positive,
        default=64,
        metavar="N",
        help="origin fetches at once; past it a request for a new one is refused as busy "
        "(the peer tries another supernode or the origin) (default 64)",
    )
    limits.add_argument(
        "--max-task-size",
        type=argtypes.size,
        default=None,
        metavar="SIZE",
        help="largest task the CDN fetches, e.g. 50GiB; a body of unknown length is "
        "stopped past it (default: the --store-quota if set, else none)",
    )
    limits.add_argument(
        "--failed-task-ttl",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long a failed task is remembered (default 600)",
    )
    cluster_arguments(parser)
    ready_file_argument(
        parser, '"peer" (HOST:PORT), "admin" (HOST:PORT or null) and "identity" (hex)'
    )
    parser.add_argument(
        "--print-identity",
        action="store_true",
        help="print this supernode's identity (the public key of DATA_DIR/ticket-key.pem, "
        "made if there is none yet), for peers' --supernode-identity, and exit",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
    )
    version = f"supernode {__version__} (scheduler: {scheduler_build()})"
    parser.add_argument("--version", action="version", version=version)
    return parser


async def serve(node: Supernode, ready_file: Path | None) -> None:
    """Run the supernode; once it listens, say where in `ready_file`."""
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(node.serve)
        peer = format_address(host, port)
        identity = raw_public(node.ticket_key).hex()
        write_ready_file(
            ready_file, {"peer": peer, "admin": node.admin_address, "identity": identity}
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stderr(args.log_level)
    if args.print_identity:  # (the other flags play no part)
        data_dir = args.data_dir or default_data_dir()
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            print(raw_public(load_or_create_ticket_key(data_dir)).hex())
        except (OSError, StoreError) as exc:
            print(f"supernode: {exc}", file=sys.stderr)
            return 2
        return 0
    host, port = args.listen
    try:
        token = read_token(args.token, args.token_file)
        admin_token = read_token(args.admin_token, args.admin_token_file, "an admin token")
        if not args.failed_task_ttl > 0:
            raise ValueError("--failed-task-ttl must be positive")
        if not 0 < args.origin_timeout < math.inf:  # (NaN or none: no fetch could end)
            raise ValueError("--origin-timeout must be a positive number of seconds")
        if args.task_ttl is not None and not args.task_ttl > 0:  # (NaN: nothing expires)
            raise ValueError("--task-ttl must be a positive number of seconds")
        gc = GcPolicy(
            quota=args.store_quota,
            high=args.store_high_watermark,
            low=args.store_low_watermark,
            ttl=args.task_ttl,
        )
        origin_tls = tls_table(args.origin_ca, args.origin_client_cert)
        client_contexts(origin_tls, insecure=args.insecure, flag="origin")  # checks the files
        check_cluster_flags(args)
        prepare_ready_file(args.ready_file)
    except ValueError as exc:
        print(f"supernode: {exc}", file=sys.stderr)
        return 2
    if args.admin_open and args.admin_protect_reads:
        print(
            "supernode: --admin-protect-reads needs an admin token, not --admin-open",
            file=sys.stderr,
        )
        return 2
    if args.max_task_size == 0:
        print("supernode: --max-task-size must be more than 0", file=sys.stderr)
        return 2
    if args.origin_streams > MAX_STREAMS:
        print(f"supernode: --origin-streams is at most {MAX_STREAMS}", file=sys.stderr)
        return 2
    if args.max_connections < 1:
        print("supernode: --max-connections must be at least 1", file=sys.stderr)
        return 2
    if args.cdn_upload_slots < 0:  # (the scheduler's config refuses it: a traceback)
        print("supernode: --cdn-upload-slots must be at least 0", file=sys.stderr)
        return 2
    if not min(PROTOCOL_VERSIONS) <= args.min_peer_protocol <= max(PROTOCOL_VERSIONS):
        print(
            f"supernode: --min-peer-protocol is one of the versions it speaks, "
            f"{min(PROTOCOL_VERSIONS)} to {max(PROTOCOL_VERSIONS)}",
            file=sys.stderr,
        )
        return 2
    config = SupernodeConfig(
        host=host,
        port=port,
        data_dir=args.data_dir or default_data_dir(),
        insecure=args.insecure,
        origin_tls=origin_tls,
        origin_timeout=args.origin_timeout,
        origin_rate_limit=args.origin_rate_limit,
        origin_streams=args.origin_streams,
        cdn_upload_limit=args.cdn_upload_limit,
        token=token,
        cdn_upload_slots=args.cdn_upload_slots,
        cdn_slots_per_requester=args.cdn_slots_per_requester,
        max_fetches=args.max_fetches,
        max_task_size=args.max_task_size,
        failed_task_ttl=args.failed_task_ttl,
        admin_listen=args.admin_listen,
        admin_token=admin_token,
        admin_open=args.admin_open,
        admin_protect_reads=args.admin_protect_reads,
        admin_max_connections=args.admin_max_connections,
        origin_allow=tuple(args.origin_allow),
        origin_deny=tuple(args.origin_deny),
        preheat_realms=tuple(args.preheat_realm),
        gc=gc,
        max_connections=args.max_connections,
        min_peer_protocol=args.min_peer_protocol,
        cluster=args.cluster,
        cluster_password_file=args.cluster_password_file,
        cluster_heartbeat=args.cluster_heartbeat,
        cluster_advertise=args.cluster_advertise,
        swarm_log=args.swarm_log,
    )
    if args.swarm_log is not None:
        try:  # (a path it cannot write to stops it here, not once it serves)
            args.swarm_log.open("a").close()
        except OSError as exc:
            print(f"supernode: --swarm-log: {exc}", file=sys.stderr)
            return 2
    try:
        # Both ports' connections (a piece session holds a pieces file too: twice the
        # peer port's), and room for the admitted sessions, the store and origins.
        raise_open_files(2 * config.max_connections + config.admin_max_connections + 4096)
        trio.run(serve_until_signalled, partial(serve, Supernode(config), args.ready_file))
    except KeyboardInterrupt:
        return 130
    except SupernodeError as exc:
        print(f"supernode: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        admin = "off" if args.admin_listen is None else "{}:{}".format(*args.admin_listen)
        print(f"supernode: {exc} (listening on {host}:{port}, admin API {admin})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
