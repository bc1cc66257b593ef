"""The supernode's cluster flags (`--cluster` and its companions), kept here so that
`supernode/cli.py` only adds the group and checks it."""

from __future__ import annotations

import argparse
from pathlib import Path

from common import argtypes
from supernode.cluster.settings import DEFAULT_HEARTBEAT, cluster_settings, parse_cluster_url


def _cluster_url(text: str) -> str:
    parse_cluster_url(text)  # ValueError: a usage error naming the URL
    return text.strip()


def cluster_arguments(parser: argparse.ArgumentParser) -> None:
    cluster = parser.add_argument_group(
        "cluster", "several supernodes: membership in a Redis they share (docs/cluster.md)"
    )
    cluster.add_argument(
        "--cluster",
        type=argtypes.argument_type(_cluster_url, "Redis URL"),
        metavar="redis://[:PASSWORD@]HOST:PORT/DB",
        help="join the cluster whose members register in this Redis; GET /api/v1/supernodes "
        "lists the live ones (a password in the URL is visible in ps: prefer "
        "--cluster-password-file) (default: this supernode alone, no Redis)",
    )
    cluster.add_argument(
        "--cluster-password-file",
        type=Path,
        metavar="FILE",
        help="the Redis password, the file's first line",
    )
    cluster.add_argument(
        "--cluster-heartbeat",
        type=float,
        default=DEFAULT_HEARTBEAT,
        metavar="SECONDS",
        help="seconds between two heartbeats; a member silent for three is gone from every "
        f"view (default {DEFAULT_HEARTBEAT:g})",
    )
    cluster.add_argument(
        "--cluster-advertise",
        metavar="HOST",
        help="the host name or address other supernodes and clients reach this one at "
        "(default: the --listen host, or the machine's host name if that is 0.0.0.0 or ::)",
    )


def check_cluster_flags(args: argparse.Namespace) -> None:
    """ValueError (exit 2) if the cluster flags cannot be used: a password file that
    cannot be read, a password twice, a heartbeat out of range."""
    if args.cluster is not None:
        cluster_settings(args.cluster, args.cluster_password_file, args.cluster_heartbeat)
    elif args.cluster_password_file is not None:
        raise ValueError("--cluster-password-file needs --cluster")
