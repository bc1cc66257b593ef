"""Cluster admission: a peer proves it knows the cluster token without sending it.

The supernode's Welcome carries a fresh random challenge; the peer's Register carries
HMAC-SHA256(token, context ‖ challenge ‖ peer id ‖ public key). Binding the peer's
X25519 key means the wrapped task key only ever goes to the peer that proved the token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

CHALLENGE_SIZE = 32
_CONTEXT = b"dragonfly-py admission v1\0"


def new_challenge() -> bytes:
    return secrets.token_bytes(CHALLENGE_SIZE)


def prove(token: bytes, challenge: bytes, peer_id: str, public_key: bytes) -> bytes:
    message = _CONTEXT + challenge + peer_id.encode() + b"\0" + public_key
    return hmac.new(token, message, hashlib.sha256).digest()


def verify(
    token: bytes, challenge: bytes, peer_id: str, public_key: bytes, proof: bytes | None
) -> bool:
    """Constant-time check of a proof; False for a missing one."""
    if proof is None or not challenge:
        return False
    return hmac.compare_digest(prove(token, challenge, peer_id, public_key), proof)
