"""The peer-facing TCP server: handshake, then a control or a piece session.

Every connection starts with Hello/Welcome. Its first request decides what it is: a
`Register` opens a control session, a `PieceRequest` a piece session on the CDN. A
connection that breaks the protocol gets a typed `ErrorReply` and is closed; nothing a
peer sends can take the server down or stall other connections.
"""

from __future__ import annotations

import contextlib
import logging

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proto.admission import new_challenge
from proto.errors import ConnectionLost, RemoteProtoError, UnexpectedMessage
from proto.io import FramedStream, RateLimiter, server_handshake
from proto.messages import PieceRequest, Register
from proto.session import Session, Side
from supernode import __version__
from supernode.cdn.service import Cdn
from supernode.cdn.uploads import CdnUploads
from supernode.control import ControlSession

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
IDLE_TIMEOUT = 600.0  # a connection must send its first request within this
AGENT = f"dragonfly-py-supernode/{__version__}"
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class PeerServer:
    def __init__(
        self,
        cdn: Cdn,
        ticket_key: Ed25519PrivateKey,
        *,
        ticket_ttl: float = 3600.0,
        upload_limiter: RateLimiter | None = None,
    ) -> None:
        self.cdn = cdn
        self.ticket_key = ticket_key
        self.ticket_ttl = ticket_ttl
        self.upload_limiter = upload_limiter
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
            await self._refuse(framed, exc)
        except Exception as exc:
            # A bug of ours must cost one connection, never the server.
            log.exception("connection from %s: internal error", peer)
            await self._refuse(framed, exc)
        finally:
            await framed.aclose()

    async def _refuse(self, framed: FramedStream, exc: Exception) -> None:
        """Tell the peer why we close, if the session still allows a word."""
        refusal = framed.session.refuse(exc)
        if refusal is not None:
            with trio.move_on_after(1), contextlib.suppress(*_GONE):
                await framed.stream.send_all(refusal)

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
                cdn=self.cdn,
                ticket_key=self.ticket_key,
                ticket_ttl=self.ticket_ttl,
            )
            await control.run(first)
        elif isinstance(first, PieceRequest):
            uploads = CdnUploads(
                framed,
                peer_id=hello.peer_id,
                cdn=self.cdn,
                ticket_public=self.ticket_key.public_key(),
                limiter=self.upload_limiter,
            )
            await uploads.run(first)
        else:
            raise UnexpectedMessage(f"{first.TAG} cannot open a session")


def _address(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"
