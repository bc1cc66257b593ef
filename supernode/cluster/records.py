"""What a member keeps in Redis, and reading back what others (or anyone with write
access to that Redis) put there.

- `dragonfly-py:supernode:ID`: the member's record, JSON (`Member`), written with a
  TTL of three heartbeat periods at every heartbeat: a member that stops is gone once
  it expires, by Redis' clock alone.
- `dragonfly-py:supernodes`: the set of member ids, so that the list is one SMEMBERS
  and not a SCAN of a database others may share; an id whose record has expired is
  taken out by whoever reads it.

A record is data from the network: bounded in size, checked field by field; anything
else is ignored (`decode_member` returns None), never trusted or a crash.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

PREFIX = "dragonfly-py"
MEMBERS_KEY = f"{PREFIX}:supernodes"
MAX_RECORD = 4096  # bytes of one record's JSON
MAX_MEMBERS = 256  # ids read from the set at most (a cluster is a few supernodes)
MAX_ADDRESS = 300  # characters of HOST:PORT
_ID = re.compile(r"[0-9a-f]{8,64}")


def member_key(member_id: str) -> str:
    return f"{PREFIX}:supernode:{member_id}"


def valid_id(member_id: str) -> bool:
    return _ID.fullmatch(member_id) is not None


@dataclass(frozen=True)
class Member:
    """A supernode of the cluster as it registers itself: its id, where peers reach it
    (`peer`, HOST:PORT), its admin API (`admin`, or None), when it started (Unix time)
    and how long its record lives (`ttl`, seconds: three heartbeat periods)."""

    id: str
    peer: str
    admin: str | None
    started: float
    ttl: float
    version: str = ""

    def encode(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "peer": self.peer,
                "admin": self.admin,
                "started": self.started,
                "ttl": self.ttl,
                "version": self.version,
            },
            separators=(",", ":"),
        ).encode()


def decode_member(member_id: str, raw: bytes | None) -> Member | None:
    """The record stored under `member_id`'s key, or None if there is none or it is not
    one of ours (malformed, oversized, for another id)."""
    if raw is None or len(raw) > MAX_RECORD or not valid_id(member_id):
        return None
    try:
        fields = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(fields, dict) or fields.get("id") != member_id:
        return None
    peer, admin, version = fields.get("peer"), fields.get("admin"), fields.get("version", "")
    started, ttl = finite_number(fields.get("started")), finite_number(fields.get("ttl"))
    if not isinstance(peer, str) or not _address(peer):
        return None
    if admin is not None and not (isinstance(admin, str) and _address(admin)):
        return None
    if started is None or ttl is None or ttl <= 0:
        return None
    if not isinstance(version, str) or len(version) > 64:
        return None
    return Member(member_id, peer, admin, started, ttl, version)


def _address(value: str) -> bool:
    return 0 < len(value) <= MAX_ADDRESS and value.isprintable()


def finite_number(value: Any) -> float | None:
    """A finite JSON number as a float (not a bool, nor an integer too large for one);
    None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # (JSON integers have no bound: 10**400 is one)
        return None
    return number if math.isfinite(number) else None
