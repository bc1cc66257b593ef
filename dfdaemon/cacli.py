"""The command line of HTTPS interception: the daemon's `--hijack`, `--ca-cert` and
`--ca-key` flags, and `dfdaemon ca`, which prints the CA certificate for the clients'
trust stores (generating the CA in the data dir if there is none yet, as the daemon's
first start with `--hijack` would)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfdaemon.app import DaemonConfig, private_data_dir
from dfdaemon.ca import CA_DIR, CERT_FILE, KEY_FILE, CaError, data_dir_authority, load_authority


def add_hijack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hijack",
        action="append",
        metavar="REGEX",
        help="HTTPS proxy: a CONNECT to a host this fully matches (lower case, no port) is "
        "intercepted: TLS ends here with a certificate signed by the daemon's CA, and the "
        "requests are served as the mirror's for that registry (repeatable)",
    )
    _ca_arguments(parser)


def _ca_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ca-cert",
        type=Path,
        metavar="FILE",
        help="the CA certificate (PEM) that signs intercepted hosts' certificates "
        "(default: one generated in DATA_DIR/ca/ on the first start with --hijack)",
    )
    parser.add_argument(
        "--ca-key", type=Path, metavar="FILE", help="the key of --ca-cert (PEM, unencrypted)"
    )


def hijack_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """DaemonConfig's hijack, ca_cert and ca_key from `settings`; ValueError if unusable."""
    patterns = tuple(settings.get("hijack", ()))
    for pattern in patterns:
        try:
            re.compile(pattern)
        except (re.error, OverflowError, RecursionError) as exc:  # a{4294967296}, (((((…
            raise ValueError(f"bad --hijack {pattern!r}: {exc}") from exc
    cert, key = settings.get("ca_cert"), settings.get("ca_key")
    if (cert is None) != (key is None):
        raise ValueError("--ca-cert and --ca-key go together")
    return {"hijack": patterns, "ca_cert": cert, "ca_key": key}


def ca_main(argv: list[str], load_config: Callable[[Path], dict[str, Any]]) -> int:
    """`dfdaemon ca`: the CA certificate on stdout, where it is on stderr."""
    parser = argparse.ArgumentParser(
        prog="dfdaemon ca",
        description="Print the CA certificate (PEM) that the daemon's --hijack signs "
        "intercepted hosts' certificates with, for the clients' trust stores; without "
        "--ca-cert, the data dir's, generated there if there is none yet.",
    )
    parser.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="the daemon's (default /var/lib/dfdaemon)"
    )
    _ca_arguments(parser)
    parser.add_argument("--config", type=Path, metavar="FILE", help="the daemon's config file")
    args = parser.parse_args(argv)
    try:
        settings = load_config(args.config) if args.config else {}
        for name in ("data_dir", "ca_cert", "ca_key"):
            if getattr(args, name) is not None:
                settings[name] = getattr(args, name)
        ca = hijack_settings(settings)
    except ValueError as exc:
        print(f"dfdaemon ca: {exc}", file=sys.stderr)
        return 2
    try:
        if ca["ca_cert"] is not None:
            authority = load_authority(ca["ca_cert"], ca["ca_key"])
            where = f"the CA certificate is {authority.cert_path} (from --ca-cert)"
        else:
            data_dir = settings.get("data_dir", DaemonConfig().data_dir)
            folder = data_dir / CA_DIR
            new = not (folder / CERT_FILE).exists()
            private_data_dir(data_dir)
            authority = data_dir_authority(data_dir)
            where = (
                f"{'generated: ' if new else ''}the CA certificate is {authority.cert_path} "
                f"(its key {folder / KEY_FILE}, mode 0600)"
            )
    except (CaError, OSError) as exc:
        print(f"dfdaemon ca: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(authority.pem)
    sys.stdout.flush()
    print(f"dfdaemon ca: {where}; add it to the clients' trust (docs/dfdaemon.md)", file=sys.stderr)
    return 0
