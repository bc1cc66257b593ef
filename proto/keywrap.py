"""Task keys wrapped for one peer's X25519 key (ECIES: X25519 + HKDF-SHA256 + AES-GCM).

Wrapped = ephemeral public key (32) ‖ AES-256-GCM(task key) (32 + 16). The context
(task id and generation) is bound into both the KDF and the AAD, so a wrapped key
cannot be replayed for another task or generation.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proto.errors import RemoteProtoError

_INFO = b"dragonfly-py key wrap v1\0"
_NONCE = bytes(12)  # the KEK is fresh for every wrap, so a fixed nonce is safe
WRAPPED_SIZE = 32 + 32 + 16


class BadWrappedKey(RemoteProtoError):
    """A wrapped task key did not open with our private key."""


class BadPublicKey(RemoteProtoError):
    """A peer's X25519 public key is unusable (a low-order point: no shared secret)."""


def wrap_context(task_id: str, generation: int) -> bytes:
    return task_id.encode("ascii") + generation.to_bytes(8, "big")


def raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()  # (the serialization module: not needed)


def _kek(shared: bytes, context: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + context).derive(
        shared
    )


def wrap_key(task_key: bytes, recipient_public: bytes, context: bytes) -> bytes:
    ephemeral = X25519PrivateKey.generate()
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_public))
    except ValueError as exc:
        raise BadPublicKey(f"cannot wrap a key for this public key: {exc}") from exc
    sealed = AESGCM(_kek(shared, context)).encrypt(_NONCE, task_key, context)
    return raw_public(ephemeral) + sealed


def unwrap_key(private: X25519PrivateKey, wrapped: bytes, context: bytes) -> bytes:
    if len(wrapped) != WRAPPED_SIZE:
        raise BadWrappedKey(f"wrapped key is {len(wrapped)} bytes, want {WRAPPED_SIZE}")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(wrapped[:32]))
        return AESGCM(_kek(shared, context)).decrypt(_NONCE, wrapped[32:], context)
    except (InvalidTag, ValueError):
        raise BadWrappedKey("wrapped key does not open with this peer's key") from None
