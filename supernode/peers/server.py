"""The peer-facing TCP server: handshake, then a control or a piece session.

Every connection starts with Hello/Welcome. Its first request decides what it is: a
`Register` opens a control session, a `PieceRequest` a piece session on the CDN, a
`MembersRequest` gets the cluster's live members and the connection closes. A
connection that breaks the protocol gets a typed `ErrorReply` and is closed; nothing a
peer sends can take the server down or stall other connections.

What a stranger can cost is bounded before anything is read: connections are capped
in total and per remote address (`ConnectionLimit`), a connection must say Hello
within `hello_timeout` (a small one: its first header may be 4 KiB at most) and send
its first request within `first_request_timeout`; neither side of a session ever
receives a payload here. After that, a piece session idle for `piece_idle` and a
control session silent for `control_idle` are closed, and every frame sent must be
taken by the peer within `send_timeout` (a piece: see `CdnUploads`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from common.connlimit import ConnectionLimit
from common.io import RateLimiter, serve_limited
from proto.admission import new_challenge
from proto.errors import ConnectionLost, RemoteProtoError, UnexpectedMessage
from proto.io import FramedStream, server_handshake
from proto.messages import MembersRequest, PieceRequest, Register
from proto.session import Session, Side
from proto.tickets import TicketVerifier
from supernode import __version__
from supernode.cdn.service import Cdn
from supernode.cdn.uploads import MIN_PIECE_SEND, MIN_SEND_RATE, CdnUploads
from supernode.peers.control import ControlSession
from supernode.peers.members import answer_members
from supernode.peers.swarm import Swarm

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0  # from accepting a connection to its Hello
FIRST_REQUEST_TIMEOUT = 15.0  # from Welcome to the first request (dfget sends it at once)
CONTROL_IDLE = 120.0  # a control session with no frame from the peer (dfget: keepalives)
PIECE_IDLE = 60.0  # a piece session with no request (dfget drops idle ones after 30 s)
SEND_TIMEOUT = 60.0  # for the peer to take one frame other than a piece
DEFAULT_MAX_CONNECTIONS = 4096
AGENT = f"dragonfly-py-supernode/{__version__}"


class PeerServer:
    """The peer port. The deadlines are attributes (tests lower them); `connections`
    caps the connections held at once (default: DEFAULT_MAX_CONNECTIONS in total,
    `per_address_share` of it per remote address)."""

    def __init__(
        self,
        cdn: Cdn,
        swarm: Swarm,
        *,
        upload_limiter: RateLimiter | None = None,
        connections: ConnectionLimit | None = None,
    ) -> None:
        self.cdn = cdn
        self.swarm = swarm
        self.upload_limiter = upload_limiter
        self.limit = connections or ConnectionLimit(DEFAULT_MAX_CONNECTIONS)
        # The CDN's uploads, every task's: room for one ticket per peer per task at scale.
        self.tickets = TicketVerifier(
            swarm.ticket_key.public_key(), capacity=16384, issuer=swarm.tickets
        )
        self.hello_timeout = HELLO_TIMEOUT
        # Peers that speak no protocol version from this one up are refused at their
        # Hello (--min-peer-protocol: 4 once every peer is, so that none proves the
        # cluster token unsealed).
        self.oldest_version = 1
        self.first_request_timeout = FIRST_REQUEST_TIMEOUT
        self.control_idle = CONTROL_IDLE
        self.piece_idle = PIECE_IDLE
        self.send_timeout = SEND_TIMEOUT
        # A piece's send deadline: max(min_piece_send, 2 × sealed size / min_send_rate).
        self.min_piece_send = MIN_PIECE_SEND
        self.min_send_rate: float = MIN_SEND_RATE
        self.connections = 0
        self.protocol_errors = 0
        # `MembersRequest`: the live members' peer addresses, and whether we run in a
        # cluster (the app sets it from its membership; alone: nobody known yet).
        self.members: Callable[[], tuple[Sequence[str], bool]] = lambda: ((), False)

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = listeners[0].socket.getsockname()
        log.info("peer server listening on %s:%d", sockname[0], sockname[1])
        task_status.started((sockname[0], sockname[1]))
        await serve_limited(self._handle, listeners, self.limit, what="peer server")

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        # A server's session: a small Hello first, never a payload (server_decoder).
        framed = FramedStream(stream, Session(Side.SERVER), send_timeout=self.send_timeout)
        peer = _address(stream)
        try:
            await self._converse(framed)
        except ConnectionLost as exc:
            log.debug("connection from %s: %s", peer, exc)
        except trio.TooSlowError:
            log.info("connection from %s timed out", peer)
        except RemoteProtoError as exc:
            self.protocol_errors += 1
            log.info("connection from %s broke the protocol: %s", peer, exc)
            await framed.refuse(exc)
        except Exception as exc:
            # A bug of ours must cost one connection, never the server.
            log.exception("connection from %s: internal error", peer)
            await framed.refuse(exc)
        finally:
            await framed.aclose()

    async def _converse(self, framed: FramedStream) -> None:
        challenge = new_challenge()
        # Keyed: a version-4 peer gets a key of this connection, for which it seals its
        # Register's credentials, and with a cluster token our proof that we know it;
        # a peer pinned to supernode identities gets our signature (the ticket key's).
        with trio.fail_after(self.hello_timeout):
            hello = await server_handshake(
                framed,
                role="supernode",
                agent=AGENT,
                challenge=challenge,
                keyed=True,
                token=self.swarm.token,
                identity=self.swarm.ticket_key,  # (signs for a peer pinned to it)
                oldest=self.oldest_version,
            )
        with trio.fail_after(self.first_request_timeout):
            first = (await framed.receive()).message
        if framed.session.sealed and not isinstance(first, Register | MembersRequest):
            # (a sealed session carries no payload: pieces go on sessions of their own)
            raise UnexpectedMessage(f"{first.TAG} cannot open a sealed session")
        if isinstance(first, Register):
            control = ControlSession(
                framed,
                peer_id=hello.peer_id,
                peer_host=_host(framed.stream),
                challenge=challenge,
                key=framed.own_key,
                cdn=self.cdn,
                swarm=self.swarm,
                idle_timeout=self.control_idle,
            )
            await control.run(first)
        elif isinstance(first, PieceRequest):
            uploads = CdnUploads(
                framed,
                peer_id=hello.peer_id,
                cdn=self.cdn,
                tickets=self.tickets,
                limiter=self.upload_limiter,
                idle_timeout=self.piece_idle,
                min_send_timeout=self.min_piece_send,
                min_send_rate=self.min_send_rate,
            )
            await uploads.run(first)
        elif isinstance(first, MembersRequest):
            await answer_members(
                framed,
                first,
                peer_id=hello.peer_id,
                challenge=challenge,
                swarm=self.swarm,
                members=self.members,
            )
        else:
            raise UnexpectedMessage(f"{first.TAG} cannot open a session")


def _host(stream: trio.abc.Stream) -> str:
    """The peer's IP address as this connection sees it."""
    assert isinstance(stream, trio.SocketStream)
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return ""


def _address(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"
