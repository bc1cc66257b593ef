"""Upload tickets: the supernode's signed permission for one peer to fetch from another.

A ticket is `msgpack([version, task_id, requester, uploader, expires]) ‖ Ed25519
signature`. Uploaders verify it against the supernode's public key (learned in
`Registered`), that it names the task asked for, the requester on the connection and
themselves, and that it has not expired. `now` is passed in: this module reads no clock.
"""

from __future__ import annotations

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
    if (t_task, t_requester, t_uploader) != (task_id, requester, uploader):
        raise BadTicket("ticket is for another task, requester or uploader")
    if not isinstance(expires, float) or now > expires:
        raise BadTicket("ticket expired")
