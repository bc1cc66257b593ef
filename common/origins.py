"""Which addresses an origin request may connect to: the operator's CIDR rules.

Sans-IO policy: `OriginPolicy.check(address)` says whether a connection to one IP
address is allowed, and why not. The I/O side (`common.io.origins`) resolves names
itself, asks about every address it could connect to, and connects only to an
allowed one (the very address checked, so nothing can change between the check and
the connect); it does so again for every redirect hop.

Semantics:
- Rules are CIDR networks, each an allow or a deny. The built-in defaults are deny
  rules for link-local and cloud-metadata addresses (`DEFAULT_DENY`); the operator adds
  `--origin-allow CIDR` and `--origin-deny CIDR` (repeatable).
- For an address, the most specific matching rule wins (longest prefix); between an
  allow and a deny of the same network, the deny wins. An address no rule matches is
  allowed (loopback and private networks included: internal origins are the norm).
- IPv4 and IPv6 share one space: an IPv4 address is matched as its IPv4-mapped IPv6
  form (`::ffff:a.b.c.d`, which is where a dual-stack socket sends it), so a rule
  written either way covers both spellings, and `::/0` covers IPv4 too.

So `--origin-allow 169.254.169.254/32` opens one metadata address (a /32 beats the
default /16), and `--origin-deny 0.0.0.0/0 --origin-deny ::/0 --origin-allow
10.1.0.0/16` makes an allow-list.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # IPv4-mapped IPv6 addresses
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known NAT64 prefix

# The built-in deny rules: (network, why). Each IPv4 network is also denied in its
# NAT64 (64:ff9b::/96) and 6to4 (2002::/16) forms, which reach it through a gateway.
_DEFAULTS_V4 = (
    ("169.254.0.0/16", "link-local, where cloud metadata services answer"),
    ("100.100.100.200/32", "Alibaba Cloud metadata service"),
    ("168.63.129.16/32", "Azure WireServer"),
    ("0.0.0.0/8", "'this host': a connection to it reaches the local machine"),
)
_DEFAULTS_V6 = (
    ("fe80::/10", "IPv6 link-local"),
    ("fd00:ec2::254/128", "AWS metadata service (IPv6)"),
    ("::/128", "unspecified: a connection to it reaches the local machine"),
)


def _derived(text: str) -> list[str]:
    """`text` and the NAT64 and 6to4 forms of an IPv4 network."""
    network = ipaddress.IPv4Network(text)
    base, bits = int(network.network_address), network.prefixlen
    nat64 = ipaddress.IPv6Network((int(_NAT64.network_address) | base, 96 + bits))
    six_to_four = ipaddress.IPv6Network(((0x2002 << 112) | (base << 80), 16 + bits))
    return [text, str(nat64), str(six_to_four)]


DEFAULT_DENY: tuple[tuple[str, str], ...] = (
    *((form, why) for text, why in _DEFAULTS_V4 for form in _derived(text)),
    *_DEFAULTS_V6,
)


def parse_network(text: str) -> IPNetwork:
    """A CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address; ValueError otherwise,
    including host bits set below the prefix (`10.1.2.3/8`: did you mean 10.0.0.0/8?)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a CIDR network: {exc}") from exc


def parse_address(text: str) -> IPAddress:
    """An IP address as a socket reports it (an IPv6 scope such as `%eth0` is kept:
    a link-local address is only reachable with it)."""
    return ipaddress.ip_address(text)


def _unified(network: IPNetwork) -> ipaddress.IPv6Network:
    """The network in the shared IPv6 space (IPv4 as IPv4-mapped)."""
    if isinstance(network, ipaddress.IPv4Network):
        start = int(_MAPPED.network_address) | int(network.network_address)
        return ipaddress.IPv6Network((start, 96 + network.prefixlen))
    return network


def _unified_address(address: IPAddress) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(int(_MAPPED.network_address) | int(address))
    return address


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it is; anything else as is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class Rule:
    network: ipaddress.IPv6Network  # in the shared space
    allow: bool
    text: str  # as written
    source: str  # "--origin-allow", "--origin-deny", or "built-in"
    why: str = ""  # for the built-in ones

    def describe(self) -> str:
        if self.source == "built-in":
            return f"the built-in rule denying {self.text} ({self.why})"
        return f"{self.source} {self.text}"


class AddressDenied(OSError):
    """No address the origin's host resolves to may be connected to.

    An OSError, so that code which treats connection failures as such stays safe; the
    callers that know it translate it into their own refusal (the supernode's
    `origin_denied`, a 403 from dfdaemon)."""

    def __init__(self, host: str, refused: list[tuple[IPAddress, Rule]], allow_flag: str) -> None:
        address, rule = refused[0]
        plain = _plain(address)
        bits = 32 if isinstance(plain, ipaddress.IPv4Address) else 128
        named = str(plain)
        where = (
            f"address {named}"
            if _same_host(host, plain)
            else f"{host} resolves to {', '.join(str(_plain(a)) for a, _ in refused)}"
        )
        super().__init__(
            f"origin {where}: refused by {rule.describe()}; {allow_flag} {named}/{bits} allows it"
        )
        self.host = host
        self.address = plain
        self.rule = rule
        self.refused = refused


def _same_host(host: str, address: IPAddress) -> bool:
    try:
        return _plain(parse_address(host.strip("[]"))) == address
    except ValueError:
        return False


class OriginPolicy:
    """The rules, asked about one address at a time (pure, no I/O). `allow_flag` is how
    refusals name the flag that would allow an address (say, which program's)."""

    def __init__(
        self,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        *,
        defaults: bool = True,
        allow_flag: str = "--origin-allow",
    ) -> None:
        self.allow_flag = allow_flag
        rules = [
            Rule(_unified(parse_network(text)), False, text, "built-in", why)
            for text, why in (DEFAULT_DENY if defaults else ())
        ]
        rules += [Rule(_unified(parse_network(t)), False, t, "--origin-deny") for t in deny]
        rules += [Rule(_unified(parse_network(t)), True, t, "--origin-allow") for t in allow]
        # Longest prefix first; at equal length a deny before an allow (a tie is a deny).
        self.rules = sorted(rules, key=lambda r: (-r.network.prefixlen, r.allow))

    def rule_for(self, address: IPAddress | str) -> Rule | None:
        """The rule that decides for `address`; None: no rule matches (allowed)."""
        if isinstance(address, str):
            address = parse_address(address)
        unified = _unified_address(address)
        return next((rule for rule in self.rules if unified in rule.network), None)

    def allows(self, address: IPAddress | str) -> bool:
        rule = self.rule_for(address)
        return rule is None or rule.allow

    def partition(
        self, addresses: Iterable[IPAddress]
    ) -> tuple[list[IPAddress], list[tuple[IPAddress, Rule]]]:
        """(allowed, refused with the rule that refused each), in the given order."""
        allowed: list[IPAddress] = []
        refused: list[tuple[IPAddress, Rule]] = []
        for address in addresses:
            rule = self.rule_for(address)
            if rule is None or rule.allow:
                allowed.append(address)
            else:
                refused.append((address, rule))
        return allowed, refused

    def check(self, host: str, addresses: Iterable[IPAddress]) -> list[IPAddress]:
        """The addresses of `host` that may be connected to; AddressDenied if none."""
        candidates = list(addresses)
        allowed, refused = self.partition(candidates)
        if not allowed and refused:
            raise AddressDenied(host, refused, self.allow_flag)
        return allowed

    def describe(self) -> list[str]:
        """The rules, most specific first, one line each (for a log line at start)."""
        return [f"{'allow' if r.allow else 'deny'} {r.text} ({r.source})" for r in self.rules]


__all__ = [
    "DEFAULT_DENY",
    "AddressDenied",
    "IPAddress",
    "OriginPolicy",
    "Rule",
    "parse_address",
    "parse_network",
]
