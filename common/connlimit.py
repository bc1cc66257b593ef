"""How many connections a listening port holds at once, in total and per remote address.

Sans-IO bookkeeping: `ConnectionLimit.try_acquire(address)` says whether one more
connection from `address` fits; `release(address)` gives its place back. The servers
(`common.io.connections.serve_limited`) ask before they read a single byte of a new
connection and close the ones that do not fit at once, so a stranger who opens
thousands of sockets costs a file descriptor each for an instant, nothing more.

The share of one address is a fraction of the total (`per_address_share`, at least
`MIN_PER_ADDRESS`): one host can take a good part of a server, never all of it.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

DEFAULT_SHARE = 8  # one address may hold 1/8 of the total
MIN_PER_ADDRESS = 16


def host_group(host: str) -> str:
    """Who a remote address stands for, when counting: an IPv4 address is itself, an
    IPv6 address its /64 (one host or one site gets a whole /64 and can use any address
    in it), an IPv4-mapped one its IPv4 address. Anything else is returned as it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def per_address_share(total: int, share: int = DEFAULT_SHARE) -> int:
    """The per-address cap for `total` connections: total/share, at least
    MIN_PER_ADDRESS (and never more than the total)."""
    return min(total, max(MIN_PER_ADDRESS, total // share))


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    open: int  # connections held now
    addresses: int  # distinct remote addresses holding them
    refused: int  # connections closed at once since the start (no room)
    total_limit: int
    per_address_limit: int


class ConnectionLimit:
    """`total` connections at once, `per_address` of them from one address (a host, a
    local user), except from the `unshared` addresses, which only the total bounds."""

    def __init__(
        self, total: int, per_address: int | None = None, *, unshared: Collection[str] = ()
    ) -> None:
        if total < 1:
            raise ValueError(f"the connection limit must be at least 1, not {total}")
        self.total = total
        self.per_address = per_address if per_address is not None else per_address_share(total)
        if self.per_address < 1:
            raise ValueError(f"the per-address limit must be at least 1, not {self.per_address}")
        self.unshared = frozenset(unshared)
        self._open = 0
        self._by_address: Counter[str] = Counter()
        self._refused = 0

    def try_acquire(self, address: str) -> bool:
        """Take a place for one connection from `address`; False if none is left."""
        if self._open >= self.total or (
            self._by_address[address] >= self.per_address and address not in self.unshared
        ):
            self._refused += 1
            return False
        self._open += 1
        self._by_address[address] += 1
        return True

    def release(self, address: str) -> None:
        """Give back the place a `try_acquire(address)` took."""
        count = self._by_address[address]
        if count <= 0:
            raise ValueError(f"no connection from {address!r} to release")
        if count == 1:
            del self._by_address[address]
        else:
            self._by_address[address] = count - 1
        self._open -= 1

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            open=self._open,
            addresses=len(self._by_address),
            refused=self._refused,
            total_limit=self.total,
            per_address_limit=self.per_address,
        )


# On a loopback port, who only the total bounds: root (the daemon's own clients,
# dockerd and containerd, are root's, and root can take the port anyway), and every
# client at once where the kernel cannot name who owns a connection (they all have
# one address: `common.io.connections.remote_address`).
LOOPBACK_UNSHARED = ("uid:0", "127.0.0.1", "::1")


def listen_limit(total: int, host: str) -> ConnectionLimit:
    """The cap of a port listening on `host`: `total` connections, a share of it per
    client address; on a loopback address every client has the same address, so there
    the share is per local user (the owner of the client's socket, as the kernel
    names it), root's and unknown ones aside (`LOOPBACK_UNSHARED`)."""
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    unshared = LOOPBACK_UNSHARED if loopback else ()
    return ConnectionLimit(total, per_address_share(total), unshared=unshared)
