"""A Register's secrets, sealed for the supernode that answered the handshake.

A Register names a URL and carries what the requester would send its origin: its
headers (`Authorization`, cookies) and an S3 object's credentials. From protocol
version 4 the supernode's `Welcome` names an X25519 key of its own for the connection,
and the peer seals those two fields for it: X25519(peer key, that key) → HKDF-SHA256
(salt: the Welcome's challenge; info: a context and the URL) → AES-256-GCM with a fresh
nonce, the URL as associated data. Only the process holding the connection's private
key opens them; an observer of the connection sees the URL, never the credentials.

Whether that process is the supernode is what `Welcome.proof` answers, in a cluster
with a token (proto/admission.py): a peer that knows the token checks the proof before
it sends anything (dfget.connect). In an open cluster nothing proves who answers.

The plaintext is a `RequestSecrets` header (proto/codec.py), so it is read back with
every check a Register's own headers and credentials get.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proto.codec import decode_header, encode_header
from proto.errors import ProtoError, RemoteProtoError, TooLargeToSend
from proto.messages import MAX_SEALED, Headers, RequestSecrets, S3Access

_INFO = b"dragonfly-py request seal v1\0"
_NONCE_BYTES = 12
_TAG_BYTES = 16


class BadSeal(RemoteProtoError):
    """A Register's sealed part did not open, or held something else than its secrets."""


def _key(shared: bytes, challenge: bytes, url: str) -> AESGCM:
    kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=challenge, info=_INFO + url.encode())
    return AESGCM(kdf.derive(shared))


def seal_secrets(
    private: X25519PrivateKey,
    supernode_key: bytes,
    challenge: bytes,
    url: str,
    headers: Headers,
    s3: S3Access | None,
) -> bytes:
    """`headers` and `s3` sealed for the supernode's `Welcome.key` (raises
    LocalProtoError for values a Register could not carry, TooLargeToSend for more than
    it can seal;
    ValueError for a bad key)."""
    plain = encode_header(RequestSecrets(headers=headers, s3=s3))
    if _NONCE_BYTES + len(plain) + _TAG_BYTES > MAX_SEALED:
        raise TooLargeToSend(
            f"the request's headers and credentials take {len(plain)} bytes, over the "
            f"{MAX_SEALED} a Register seals"
        )
    shared = private.exchange(X25519PublicKey.from_public_bytes(supernode_key))
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + _key(shared, challenge, url).encrypt(nonce, plain, url.encode())


def open_secrets(
    private: X25519PrivateKey, peer_key: bytes, challenge: bytes, url: str, sealed: bytes
) -> tuple[Headers, S3Access | None]:
    """The headers and S3 credentials a peer sealed for `private` (BadSeal otherwise)."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_key))
        box = _key(shared, challenge, url)
        plain = box.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], url.encode())
    except (InvalidTag, ValueError):
        raise BadSeal("the Register's sealed part does not open for this session") from None
    try:
        secrets, payload = decode_header(plain)
    except ProtoError as exc:
        raise BadSeal(f"the Register's sealed part is not its secrets: {exc}") from None
    if not isinstance(secrets, RequestSecrets) or payload:
        raise BadSeal(f"the Register's sealed part holds a {secrets.TAG}, not its secrets")
    return secrets.headers, secrets.s3
