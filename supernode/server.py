"""The peer-facing TCP server: handshake, then a control or a piece session.

Every connection starts with Hello/Welcome. Its first request decides what it is: a
`Register` opens a control session, a `PieceRequest` a piece session on the CDN. A
connection that breaks the protocol gets a typed `ErrorReply` and is closed; nothing a
peer sends can take the server down or stall other connections.
"""

from __future__ import annotations

import logging

import trio

from proto.admission import new_challenge
from proto.errors import ConnectionLost, RemoteProtoError, UnexpectedMessage
from proto.io import FramedStream, RateLimiter, server_handshake
from proto.messages import PieceRequest, Register
from proto.session import Session, Side
from proto.tickets import TicketVerifier
from supernode import __version__
from supernode.cdn.service import Cdn
from supernode.cdn.uploads import CdnUploads
from supernode.control import ControlSession
from supernode.swarm import Swarm

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
IDLE_TIMEOUT = 600.0  # a connection must send its first request within this
AGENT = f"dragonfly-py-supernode/{__version__}"


class PeerServer:
    def __init__(
        self, cdn: Cdn, swarm: Swarm, *, upload_limiter: RateLimiter | None = None
    ) -> None:
        self.cdn = cdn
        self.swarm = swarm
        self.upload_limiter = upload_limiter
        # The CDN's uploads, every task's: room for one ticket per peer per task at scale.
        self.tickets = TicketVerifier(swarm.ticket_key.public_key(), capacity=16384)
        self.connections = 0
        self.protocol_errors = 0

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
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        framed = FramedStream(stream, Session(Side.SERVER))
        peer = _address(stream)
        try:
            await self._converse(framed)
        except ConnectionLost:
            pass
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
        with trio.fail_after(HELLO_TIMEOUT):
            hello = await server_handshake(
                framed, role="supernode", agent=AGENT, challenge=challenge
            )
        with trio.fail_after(IDLE_TIMEOUT):
            first = (await framed.receive()).message
        if isinstance(first, Register):
            control = ControlSession(
                framed,
                peer_id=hello.peer_id,
                peer_host=_host(framed.stream),
                challenge=challenge,
                cdn=self.cdn,
                swarm=self.swarm,
            )
            await control.run(first)
        elif isinstance(first, PieceRequest):
            uploads = CdnUploads(
                framed,
                peer_id=hello.peer_id,
                cdn=self.cdn,
                tickets=self.tickets,
                limiter=self.upload_limiter,
            )
            await uploads.run(first)
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
