"""The supernode's long-lived Ed25519 key, which signs upload tickets.

Kept in the data dir (mode 0600) so that tickets stay valid across a restart.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from supernode.errors import StoreError

KEY_FILE = "ticket-key.pem"


def load_or_create_ticket_key(data_dir: Path) -> Ed25519PrivateKey:
    path = data_dir / KEY_FILE
    try:
        if not path.exists():
            _create(path)
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot load or create {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise StoreError(f"{path} is not an Ed25519 key")
    return key


def _create(path: Path) -> None:
    """Write a new key; if another process wins the race, keep its key instead."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
        out.flush()
        os.fsync(out.fileno())
    try:
        os.link(temp, path)  # fails if the key exists: never replace a key in use
    except FileExistsError:
        pass
    finally:
        temp.unlink()


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
