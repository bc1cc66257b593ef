"""How a peer takes part in the swarm: `PeerOptions` (from dfget's flags or a daemon),
and `SharedServer`, the seam through which a daemon shares one upload server among all
its downloads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dfget.defaults import DEFAULT_MAX_CONNECTIONS

if TYPE_CHECKING:  # the upload server (trio, the wire) is loaded by the peer that runs it
    from dfget.sessions import Sessions
    from dfget.sources import PiecePool
    from dfget.uploads import PieceServer


@dataclass(frozen=True)
class SharedServer:
    """A running upload server and the port it listens on."""

    server: PieceServer
    port: int


class PeerOptions:
    """How this peer takes part in the swarm (from the CLI or a daemon)."""

    def __init__(
        self,
        *,
        listen: tuple[str, int] = ("0.0.0.0", 0),
        upload_slots: int = 8,
        upload_rate: float | None = None,
        seed_for: float = 0.0,
        token: bytes | None = None,
        identities: frozenset[bytes] = frozenset(),
        server_factory: type[PieceServer] | None = None,
        server: SharedServer | None = None,
        signals_end_seeding: bool = False,
        adopt: bool = False,
        check_only: bool = False,
        in_order: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        sessions: Sessions | None = None,
        pieces: PiecePool | None = None,
    ) -> None:
        self.listen = listen
        self.max_connections = max_connections  # of this download's own upload server
        self.upload_slots = upload_slots
        self.upload_rate = upload_rate
        self.seed_for = seed_for
        self.token = token
        # Supernode identities (Ed25519 public keys) one of which must sign each
        # supernode's Welcome (`--supernode-identity`): the token alone says "a host of
        # the cluster", not "a supernode".
        self.identities = identities
        self.server_factory = server_factory  # None: PieceServer; tests swap in fakes
        # A daemon's one upload server, already listening, shared by all its downloads;
        # without it each download starts its own (from `listen` and `server_factory`).
        self.server = server
        # A daemon's control sessions, shared by its downloads (`dfget.sessions`): each
        # download takes a line on one instead of a connection of its own.
        self.sessions = sessions
        # A daemon's idle piece connections (`dfget.sources.PiecePool`): a download
        # takes one kept by an earlier download of the same source and peer id, and
        # leaves its own there when it is done.
        self.pieces = pieces
        # The output already holds the whole file (a daemon's cache after a restart):
        # check it piece by piece against the supernode's digests and announce it, so
        # the swarm can fetch from it, instead of downloading.
        self.adopt = adopt
        # With `adopt`: only check the copy against the supernode's digests, as they
        # are for this request's headers (the supernode revalidates the URL with them):
        # nothing claimed, nothing served, no seeding. A daemon asks this of a copy it
        # keeps and seeds in another session, before sending it to a new client.
        self.check_only = check_only
        # Ask the scheduler for pieces in index order: a reader streams the file while
        # it downloads (dfdaemon), so the front matters more than spreading rare pieces.
        self.in_order = in_order
        # SIGTERM/SIGINT while seeding end the seeding, not the (finished) download: the
        # CLI sets this, so `kill` on a seeding dfget still exits 0 with its summary.
        self.signals_end_seeding = signals_end_seeding


__all__ = ["PeerOptions", "SharedServer"]
