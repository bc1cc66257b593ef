"""argparse `type=` converters from the parsers the programs share (ValueError → a
usage error that names the bad value)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from common.addresses import parse_listen
from common.units import parse_rate, parse_size

T = TypeVar("T")


def argument_type(parse: Callable[[str], T], name: str) -> Callable[[str], T]:
    """`parse` as an argparse type; `name` is what argparse calls it in errors."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = name
    return convert


rate = argument_type(parse_rate, "rate")
size = argument_type(parse_size, "size")


def address(default_port: int | None = None) -> Callable[[str], tuple[str, int]]:
    """HOST:PORT (`HOST` alone takes `default_port`, if there is one)."""
    return argument_type(partial(parse_listen, default_port=default_port), "address")


def _cidr(text: str) -> str:
    from common.origins import parse_network  # (ipaddress, dataclasses: not for dfget)

    parse_network(text)  # ValueError: a usage error naming the value
    return text.strip()


cidr = argument_type(_cidr, "CIDR")
"""A network for --origin-allow / --origin-deny (`10.0.0.0/8`, `fe80::/10`, one address)."""


def origin_policy_arguments(
    parser: argparse.ArgumentParser, what: str, default: list[str] | None = None
) -> argparse._ArgumentGroup:
    """The "origins" group (`--origin-allow`, `--origin-deny`) of a program that connects
    out for others (the supernode, dfdaemon): `what` says where to ("which addresses the
    supernode may fetch from"). The group is returned, for the program's own additions."""
    origins = parser.add_argument_group(
        "origins",
        f"{what}: the most specific matching rule wins (a tie is a deny); link-local and "
        "cloud-metadata addresses are denied by default, everything else is allowed",
    )
    for flag, verb, example in (
        ("--origin-allow", "allow", "169.254.169.254/32"),
        ("--origin-deny", "refuse", "10.0.0.0/8"),
    ):
        origins.add_argument(
            flag,
            type=cidr,
            action="append",
            default=default,
            metavar="CIDR",
            help=f"{verb} connections to this network, e.g. {example} (repeatable)"
            + (
                "; '--origin-deny 0.0.0.0/0 --origin-deny ::/0' with --origin-allow makes "
                "an allow-list"
                if flag == "--origin-deny"
                else ""
            ),
        )
    return origins


def token_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    what: str = "the cluster token: the supernodes must prove they know it (else they get "
    "nothing, and the download goes on without them), and the session is sealed",
) -> None:
    """`--token SECRET` and `--token-file PATH`, one or the other: the cluster token of
    the three programs (read with `common.tokens.read_token`)."""
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--token",
        metavar="SECRET",
        help=f"{what}; make it random (openssl rand -hex 32); visible to every user in "
        "ps: prefer --token-file",
    )
    token.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="read the cluster token from this file (surrounding whitespace ignored)",
    )


def parse_identity(text: str) -> bytes:
    """A supernode identity: its Ed25519 public key, 64 hex digits (`supernode
    --print-identity`); ValueError otherwise."""
    try:
        identity = bytes.fromhex(text.strip())
    except ValueError:
        identity = b""
    if len(identity) != 32:
        raise ValueError(f"not a supernode identity (64 hex digits): {text[:80]!r}")
    return identity


def identity_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--supernode-identity HEX` (repeatable): identities one of which every supernode
    must sign its Welcome with."""
    parser.add_argument(
        "--supernode-identity",
        action="append",
        type=argument_type(parse_identity, "supernode identity"),
        metavar="HEX",
        help="a supernode's identity (its public key: `supernode --print-identity`); each "
        "supernode must sign its handshake with one of those given (else it gets nothing: "
        "no credentials, no request), where a cluster token only says a host of the "
        "cluster answered; repeatable (one a member, or one key all members share)",
    )


def rate_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    what: str,
    example: str = "20MiB",
) -> None:
    """A rate cap flag (`--rate-limit`, `--upload-rate`...): a RATE such as 20MiB or
    500KB (`common.units.parse_rate`), none by default."""
    parser.add_argument(
        flag,
        type=rate,
        default=None,
        metavar="RATE",
        help=f"{what}, e.g. {example} (default: none)",
    )
