"""Upload tickets: the supernode's signed permission for one peer to fetch from another.

A ticket is `msgpack([version, task_id, requester, uploader, expires]) ‖ Ed25519
signature`. Uploaders verify it against the supernode's public key (learned in
`Registered`), that it names the task asked for, the requester on the connection and
themselves, and that it has not expired. `now` is passed in: this module reads no clock.
"""

from __future__ import annotations

import functools

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from proto.errors import BadTicket

TICKET_VERSION = 1
SIGNATURE_SIZE = 64
CDN_UPLOADER = "cdn"  # the uploader name the supernode's CDN uses in its tickets


def issue_ticket(
    key: Ed25519PrivateKey,
    *,
    task_id: str,
    requester: str,
    uploader: str,
    expires: float,
) -> bytes:
    body: bytes = msgpack.packb([TICKET_VERSION, task_id, requester, uploader, float(expires)])
    return body + key.sign(body)


def verify_ticket(
    public_key: Ed25519PublicKey,
    ticket: bytes,
    *,
    task_id: str,
    requester: str,
    uploader: str,
    now: float,
) -> None:
    """Raise BadTicket unless `ticket` lets `requester` fetch `task_id` from `uploader` now."""
    _check(
        _open(public_key, ticket), task_id=task_id, requester=requester, uploader=uploader, now=now
    )


class TicketVerifier:
    """`verify_ticket` for one uploader that remembers the tickets whose signature it
    has verified. The supernode hands a requester the same ticket for an uploader for a
    while (see `TicketIssuer`), so a piece session verifies one signature, not one per
    piece; what a ticket names and its expiry are still checked on every request. It
    remembers the `capacity` tickets used last (under 1 KiB each); a forged one raises,
    so it is never remembered."""

    def __init__(
        self,
        public_key: Ed25519PublicKey,
        capacity: int = 1024,
        *,
        issuer: TicketIssuer | None = None,
    ) -> None:
        self.public_key = public_key
        self._open = functools.lru_cache(maxsize=capacity)(functools.partial(_open, public_key))
        # The supernode's CDN takes tickets its own issuer signed: one it still remembers
        # issuing (the very bytes) needs no signature checked.
        self._issuer = issuer

    def verify(
        self, ticket: bytes, *, task_id: str, requester: str, uploader: str, now: float
    ) -> None:
        fields = self._issuer.issued(ticket) if self._issuer is not None else None
        if fields is None:
            fields = self._open(ticket)
        _check(fields, task_id=task_id, requester=requester, uploader=uploader, now=now)


class TicketIssuer:
    """The supernode's side: `issue_ticket` that hands out the same ticket for a (task,
    requester, uploader) until half its lifetime is gone, so uploaders can verify it once
    (a signature costs the supernode ~30 us and each uploader ~100 us per piece). It
    remembers the `capacity` tickets issued last (under 1 KiB each)."""

    def __init__(self, key: Ed25519PrivateKey, ttl: float, capacity: int = 16384) -> None:
        self.key = key
        self.ttl = ttl
        self.capacity = capacity
        self._issued: dict[tuple[str, str, str], tuple[bytes, float]] = {}
        self._fields: dict[bytes, _Fields] = {}  # the same tickets, by their bytes

    def ticket(self, task_id: str, requester: str, uploader: str, *, now: float) -> bytes:
        names = (task_id, requester, uploader)
        known = self._issued.get(names)
        if known is not None and known[1] - now > self.ttl / 2:
            return known[0]
        expires = now + self.ttl
        ticket = issue_ticket(
            self.key, task_id=task_id, requester=requester, uploader=uploader, expires=expires
        )
        self._forget(names)  # re-inserted last: the oldest stay first
        if len(self._issued) >= self.capacity:
            self._forget(next(iter(self._issued)))
        self._issued[names] = ticket, expires
        self._fields[ticket] = (task_id, requester, uploader, expires)
        return ticket

    def issued(self, ticket: bytes) -> _Fields | None:
        """What `ticket` names, if these very bytes are one this issuer still remembers
        signing (then no signature need be checked); None otherwise."""
        return self._fields.get(ticket)

    def _forget(self, names: tuple[str, str, str]) -> None:
        known = self._issued.pop(names, None)
        if known is not None:
            del self._fields[known[0]]


_Fields = tuple[str, str, str, float]  # task id, requester, uploader, expires


def _open(public_key: Ed25519PublicKey, ticket: bytes) -> _Fields:
    """The fields of a ticket whose signature verifies (BadTicket otherwise)."""
    if len(ticket) <= SIGNATURE_SIZE:
        raise BadTicket("no ticket")
    body, signature = ticket[:-SIGNATURE_SIZE], ticket[-SIGNATURE_SIZE:]
    try:
        public_key.verify(signature, body)
    except InvalidSignature:
        raise BadTicket("ticket signature does not verify") from None
    try:
        version, t_task, t_requester, t_uploader, expires = msgpack.unpackb(body, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise BadTicket("ticket body is malformed") from None
    if version != TICKET_VERSION:
        raise BadTicket(f"ticket version {version!r} unsupported")
    if not isinstance(expires, float):
        raise BadTicket("ticket expiry is malformed")
    return t_task, t_requester, t_uploader, expires


def _check(fields: _Fields, *, task_id: str, requester: str, uploader: str, now: float) -> None:
    t_task, t_requester, t_uploader, expires = fields
    if (t_task, t_requester, t_uploader) != (task_id, requester, uploader):
        raise BadTicket("ticket is for another task, requester or uploader")
    if now > expires:
        raise BadTicket("ticket expired")
