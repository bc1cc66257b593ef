"""What answers at a supernode's address and is not the supernode: a server that speaks
the handshake and keeps whatever a peer sends it after its Welcome (for the tests of
what a peer sends to what it cannot trust)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proto.admission import new_challenge
from proto.errors import ConnectionLost
from proto.io import FramedStream, server_handshake
from proto.messages import Welcome
from proto.session import Session, Side


async def serving(nursery: trio.Nursery, handle: Callable[[trio.SocketStream], Any]) -> str:
    """`handle` serving each connection on a port of 127.0.0.1: its HOST:PORT."""
    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def impostor(
    nursery: trio.Nursery,
    keyed: bool,
    token: bytes | None,
    identity: Ed25519PrivateKey | None = None,
) -> tuple[str, list[object], list[None]]:
    """A server at a supernode's address that speaks the handshake (with `token`, a key
    of its own and, to a peer that asks, a signature with `identity`; without a key, as
    a supernode of version 3) and keeps whatever it is sent after its Welcome; and one
    entry for each connection it has done with."""
    received: list[object] = []
    ended: list[None] = []

    async def handle(stream: trio.SocketStream) -> None:
        framed = FramedStream(stream, Session(Side.SERVER))
        try:
            if not keyed:
                await framed.receive()  # (the Hello)
                await framed.send(Welcome(version=3, role="supernode", challenge=new_challenge()))
            else:
                await server_handshake(
                    framed,
                    role="supernode",
                    challenge=new_challenge(),
                    keyed=True,
                    token=token,
                    identity=identity,
                )
            with trio.move_on_after(5):
                received.append((await framed.receive()).message)
        except ConnectionLost:
            pass
        finally:
            await framed.aclose()
            ended.append(None)

    return await serving(nursery, handle), received, ended
