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
        if path.exists():
            key = load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise StoreError(f"{path} is not an Ed25519 key")
            return key
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        temp = path.with_suffix(".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        os.replace(temp, path)
        return key
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot load or create {path}: {exc}") from exc


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
