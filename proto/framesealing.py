"""A control session's frames sealed both ways (protocol version 4, asked by the peer).

A peer with the cluster token puts a fresh X25519 key in its `Hello`; a version-4
supernode answers with one of its own in the `Welcome` (and its proof of the token
over both, proto/admission.py). From the next frame on, each side seals every frame it
sends and opens every frame it receives:

    keys    = HKDF-SHA256(X25519(ours, theirs), salt = challenge,
                          info = context ‖ peer key ‖ supernode key), 64 bytes:
              the first 32 seal what the peer sends, the last 32 what the supernode sends
    a frame = u32 length of the sealed header ‖ AES-256-GCM(header), nonce = the
              frame's number in its direction (4 zero bytes ‖ u64), the prefix as
              associated data

So a frame cannot be read, changed, dropped, replayed or moved without the other side
noticing (the next frame fails to open and the connection ends): what the supernode
says (the wrapped task key, digests, tickets) is what the supernode said, not what
someone on the path wrote. Sealed sessions carry no payloads (control sessions never
do). Piece sessions are not sealed this way: their pieces are sealed by the task key.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proto.errors import MalformedFrame

_INFO = b"dragonfly-py control frames v1\0"
_NONCE = struct.Struct(">4xQ")
_PREFIX = struct.Struct(">I")
TAG_BYTES = 16


class SealedFrameError(MalformedFrame):
    """A sealed frame did not open: changed, replayed, out of order, or not sealed."""


def frame_keys(
    private: X25519PrivateKey, other: bytes, peer_key: bytes, supernode_key: bytes, challenge: bytes
) -> tuple[bytes, bytes]:
    """(what the peer sends, what the supernode sends): the two sealing keys of a
    session, from our private key and the other side's public one (ValueError for a key
    that yields no shared secret)."""
    shared = private.exchange(X25519PublicKey.from_public_bytes(other))
    info = _INFO + peer_key + supernode_key
    keys = HKDF(algorithm=hashes.SHA256(), length=64, salt=challenge, info=info).derive(shared)
    return keys[:32], keys[32:]


class FrameSealer:
    """Seals the frames one side sends, numbering them."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._sent = 0

    def seal(self, frame: bytes) -> bytes:
        """`frame` (prefix and header, as `encode_frame` makes it) sealed."""
        header = memoryview(frame)[_PREFIX.size :]
        prefix = _PREFIX.pack(len(header) + TAG_BYTES)
        sealed = self._aead.encrypt(_NONCE.pack(self._sent), header, prefix)
        self._sent += 1
        return prefix + sealed


class FrameOpener:
    """Opens the frames one side receives, in the order they were sealed."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._received = 0

    def open(self, sealed: bytes | bytearray) -> bytes:
        """The header inside a sealed frame's body (SealedFrameError if it does not open)."""
        prefix = _PREFIX.pack(len(sealed))
        try:
            header = self._aead.decrypt(_NONCE.pack(self._received), bytes(sealed), prefix)
        except InvalidTag:
            raise SealedFrameError("a sealed frame does not open") from None
        self._received += 1
        return header
