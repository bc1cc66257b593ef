"""Connections from this peer to a supernode or an uploader, with errors translated.

Everything that can go wrong while talking to a supernode leaves here as a dfget
error: unreachable or dropped → `SupernodeUnavailable` (the caller may go back to
source); a protocol violation → `SupernodeFailed`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Protocol

import trio

from dfget import __version__
from dfget.errors import SupernodeFailed, SupernodeNotProven, SupernodeUnavailable, UsageError
from proto.admission import verify_identity, verify_supernode
from proto.errors import ConnectionLost, ErrorCode, ProtoError, RemoteFailure
from proto.frames import Frame
from proto.io import FramedStream, client_handshake
from proto.messages import SEALED_REQUESTS, Message, Welcome

AGENT = f"dfget/{__version__}"
CONNECT_TIMEOUT = 5.0  # to an uploader (or the CDN, once its supernode answered)
# To a supernode's control port: the connect, then the handshake, each. A dead member
# costs a download this much at most (a refused connection nothing; a silent host or a
# frozen process the timeout), then the next member is tried. The last member a
# download can try gets CONNECT_TIMEOUT: nothing after it but the origin.
SUPERNODE_TIMEOUT = 1.0
SEND_TIMEOUT = 60.0  # for the other side to take one frame (they are small: requests)


class ControlStream(Protocol):
    """What a download's control session offers it: a `FramedStream` of its own
    (`connect`) or a line on a session it shares with other downloads
    (`dfget.sessions.TaskLine`)."""

    @property
    def welcome(self) -> Welcome | None: ...

    @property
    def hello_key(self) -> bytes: ...

    async def send(
        self,
        message: Message,
        payload: bytes | bytearray | memoryview | None = None,
        *,
        within: float | None = None,
        shield: bool = False,
    ) -> None: ...

    async def receive(self) -> Frame: ...


def check_supernode(
    control: ControlStream,
    token: bytes | None,
    address: str,
    identities: Collection[bytes] = (),
) -> None:
    """With a cluster `token`, that the supernode proved it knows it in its Welcome
    (protocol version 4, over our Hello's key); with pinned `identities`, that it signed
    the Welcome with one of them (any host with the token can prove the token):
    SupernodeNotProven otherwise, before anything is sent to it. Without either there
    is nothing to check."""
    if token is None and not identities:
        return
    welcome = control.welcome
    if welcome is None or welcome.version < SEALED_REQUESTS:
        raise _older(address, signing=token is None)
    if token is not None and not verify_supernode(
        token, control.hello_key, welcome.challenge, welcome.key, welcome.proof
    ):
        raise SupernodeNotProven(
            f"supernode {address} did not prove that it knows the cluster token (another "
            "process at its address, or a supernode with another token or none): "
            "nothing is sent to it"
        )
    if identities and not verify_identity(
        identities,
        welcome.identity,
        control.hello_key,
        welcome.challenge,
        welcome.key,
        welcome.signature,
    ):
        raise SupernodeNotProven(
            f"supernode {address} did not sign with an identity of --supernode-identity "
            "(another process or host at its address, or a supernode with another key): "
            "nothing is sent to it"
        )


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"bad supernode address {text!r} (want HOST:PORT)")
    return host.strip("[]"), int(port)


@contextmanager
def translate_errors(address: str) -> Iterator[None]:
    """Map wire and socket errors of one supernode connection to dfget errors."""
    try:
        yield
    except ConnectionLost as exc:
        raise SupernodeUnavailable(f"lost the connection to supernode {address}: {exc}") from exc
    except RemoteFailure as exc:
        raise SupernodeFailed(f"supernode {address} refused: {exc}") from exc
    except ProtoError as exc:
        raise SupernodeFailed(f"supernode {address} broke the protocol: {exc}") from exc


async def connect_stream(
    address: str,
    *,
    peer_id: str,
    max_payload: int,
    within: float = CONNECT_TIMEOUT,
    ask_proof: bool = False,
    ask_identity: bool = False,
) -> FramedStream:
    """An open, handshaken session to `address` (HOST:PORT); the caller closes it.

    `max_payload` is the largest payload it accepts: 0 on a control session (the
    supernode sends none there), one sealed piece of the task on a piece session.
    `within` bounds the connect, then the handshake (seconds each). With `ask_proof`
    the supernode is asked to prove the cluster token, with `ask_identity` to sign with
    its identity key (`check_supernode` checks them).
    """
    host, port = parse_address(address)
    try:
        with trio.fail_after(within):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, UnicodeError, trio.TooSlowError) as exc:  # (IDNA refuses `a..b`)
        raise SupernodeUnavailable(f"cannot reach {address}: {exc}") from exc
    asked = ask_proof or ask_identity
    with translate_errors(address), _older_refusing_the_proof(address, asked):
        with trio.move_on_after(within) as handshake:
            framed = await client_handshake(
                stream,
                role="peer",
                peer_id=peer_id,
                agent=AGENT,
                max_payload=max_payload,
                send_timeout=SEND_TIMEOUT,
                ask_proof=ask_proof,
                ask_identity=ask_identity,
            )
        if handshake.cancelled_caught:
            await stream.aclose()
            raise SupernodeUnavailable(f"{address} did not answer the handshake")
    return framed


# What an older codec says of a Hello's key (before version 4) or of its `identity`
# (a supernode that cannot sign with an identity key).
_OLDER_REFUSALS = frozenset({"hello.key: unknown field", "hello.identity: unknown field"})


@contextmanager
def _older_refusing_the_proof(address: str, ask_proof: bool) -> Iterator[None]:
    """A supernode before version 4 refuses a Hello that names a key (an unknown field
    to it): for a peer with a token, one that cannot prove it (SupernodeNotProven)."""
    try:
        yield
    except RemoteFailure as exc:
        if ask_proof and exc.code == ErrorCode.BAD_REQUEST and exc.message in _OLDER_REFUSALS:
            raise _older(address, signing=exc.message.startswith("hello.identity")) from exc
        raise


def _older(address: str, *, signing: bool = False) -> SupernodeNotProven:
    if signing:  # (asked for a signature: a supernode from before identities)
        return SupernodeNotProven(
            f"supernode {address} cannot sign with a supernode identity (a version before "
            "it): nothing is sent to it (upgrade the supernodes before pinning them)"
        )
    return SupernodeNotProven(
        f"supernode {address} speaks a protocol before version {SEALED_REQUESTS}: it cannot "
        "prove that it knows the cluster token, and nothing is sent to it (upgrade the "
        "supernodes before the peers that have a token)"
    )


@asynccontextmanager
async def connect(
    address: str,
    *,
    peer_id: str,
    within: float = SUPERNODE_TIMEOUT,
    ask_proof: bool = False,
    ask_identity: bool = False,
) -> AsyncIterator[FramedStream]:
    """A control session to a supernode (`connect_stream`, no payloads, its short
    timeout unless told), closed when the block ends; errors inside are translated."""
    framed = await connect_stream(
        address,
        peer_id=peer_id,
        max_payload=0,
        within=within,
        ask_proof=ask_proof,
        ask_identity=ask_identity,
    )
    try:
        with translate_errors(address):
            yield framed
    finally:
        await framed.aclose()
