"""Cluster admission: a peer proves it knows the cluster token without sending it.

The supernode's Welcome carries a fresh random challenge; the peer's Register carries
HMAC-SHA256(token, context ‖ challenge ‖ peer id ‖ public key). Binding the peer's
X25519 key means the wrapped task key only ever goes to the peer that proved the token.

The other way (protocol version 4): the peer's Hello carries a fresh X25519 key, and the
supernode's Welcome carries HMAC-SHA256(token, another context ‖ that key ‖ challenge ‖
the supernode's X25519 key for the connection). A peer that knows the token checks it
before it sends a Register: whoever answers at a supernode's address without the token
(a local user on a free port, a host on the path) gets neither the peer's credentials
nor the chance to name a file's pieces; and the session's frames, sealed both ways
under keys drawn from the two X25519 keys (proto/framesealing.py), cannot be read or
rewritten on the way.

The token is shared by every admitted host, so its proof says "a host of the cluster",
not "the supernode": a peer pinned to supernode identities (`--supernode-identity`)
also asks (`Hello.identity`) for the supernode's Ed25519 signature over the same
transcript (the Hello's key, the challenge, the Welcome's key), made with a key only
the supernodes hold (`sign_identity`, `verify_identity`): then no other host of the
cluster can answer in its place.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import secrets
import threading
from collections.abc import Collection

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

CHALLENGE_SIZE = 32
KEY_SIZE = 32  # X25519 public keys
_CONTEXT = b"dragonfly-py admission v1\0"
_SUPERNODE_CONTEXT = b"dragonfly-py supernode v1\0"
_IDENTITY_CONTEXT = b"dragonfly-py supernode identity v1\0"
IDENTITY_SIZE = 32  # an Ed25519 public key
SIGNATURE_SIZE = 64
# The supernode's proof goes to whoever sends a Hello with a key, before they prove
# anything: it lets them test guesses of the token offline, so it is keyed by the token
# stretched (scrypt, 16 MiB and tens of milliseconds a guess), not the token itself.
# The peer's own proof goes only to a supernode that proved the token first.
_STRETCH_SALT = b"dragonfly-py supernode proof key v1"
_STRETCH_N = 2**14


def new_challenge() -> bytes:
    return secrets.token_bytes(CHALLENGE_SIZE)


def proof_key(token: bytes) -> bytes:
    """The key of a supernode's proof: `token` stretched (once a process: call it at
    start, or `stretch_soon`; the first call takes tens of milliseconds)."""
    stretching = _stretching.get(token)
    if stretching is not None:
        stretching.join()
        _stretching.pop(token, None)
    return _stretched(token)  # (the thread's, or, if it failed, the error here)


def stretch_soon(token: bytes) -> None:
    """Start stretching `token` in a thread of its own (scrypt lets go of the
    interpreter): a process that starts up meanwhile, as dfget imports its modules and
    connects, finds `proof_key` ready or nearly so. Without a thread to be had, the
    stretch is left to `proof_key`."""
    if token in _stretching:
        return
    thread = threading.Thread(target=_stretch_quietly, args=(token,), name="stretch", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # (no thread to be had: a process limit)
        return
    _stretching[token] = thread


_stretching: dict[bytes, threading.Thread] = {}


def _stretch_quietly(token: bytes) -> None:
    with contextlib.suppress(BaseException):  # (`proof_key` meets the error itself)
        _stretched(token)


@functools.cache
def _stretched(token: bytes) -> bytes:
    return Scrypt(salt=_STRETCH_SALT, length=32, n=_STRETCH_N, r=8, p=1).derive(token)


def prove_supernode(token: bytes, peer_key: bytes, challenge: bytes, key: bytes) -> bytes:
    message = _SUPERNODE_CONTEXT + peer_key + challenge + key
    return hmac.new(proof_key(token), message, hashlib.sha256).digest()


def verify_supernode(
    token: bytes, peer_key: bytes, challenge: bytes, key: bytes, proof: bytes
) -> bool:
    """Constant-time check of a supernode's proof over our Hello's key, `peer_key`."""
    if len(peer_key) != KEY_SIZE or len(challenge) != CHALLENGE_SIZE or len(key) != KEY_SIZE:
        return False
    return hmac.compare_digest(prove_supernode(token, peer_key, challenge, key), proof)


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


def sign_identity(
    identity: Ed25519PrivateKey, peer_key: bytes, challenge: bytes, key: bytes
) -> bytes:
    """The supernode's signature over our Hello's key, the challenge and the Welcome's key."""
    return identity.sign(_IDENTITY_CONTEXT + peer_key + challenge + key)


def verify_identity(
    pinned: Collection[bytes],
    identity: bytes,
    peer_key: bytes,
    challenge: bytes,
    key: bytes,
    signature: bytes,
) -> bool:
    """Whether `identity` is one of the `pinned` keys and signed this transcript."""
    if identity not in pinned or len(identity) != IDENTITY_SIZE:
        return False
    if len(peer_key) != KEY_SIZE or len(challenge) != CHALLENGE_SIZE or len(key) != KEY_SIZE:
        return False
    try:
        public = Ed25519PublicKey.from_public_bytes(identity)
        public.verify(signature, _IDENTITY_CONTEXT + peer_key + challenge + key)
    except (InvalidSignature, ValueError):
        return False
    return True
