"""The session state table: who may send what, when; version negotiation."""

from __future__ import annotations

import pytest

from proto import (
    ErrorReply,
    Hello,
    LocalProtoError,
    Message,
    PieceRequest,
    Register,
    Registered,
    Session,
    Side,
    UnexpectedMessage,
    VersionMismatch,
    Welcome,
    encode,
)
from proto.session import State, negotiate

TID = "cd" * 32
HELLO = Hello(versions=(1,), role="peer", peer_id="p")
REQUEST = PieceRequest(task_id=TID, generation=1, index=0, ticket=b"t")


def deliver(sender: Session, receiver: Session, message: Message) -> Message:
    receiver.receive_data(sender.send(message))
    frame = receiver.next_frame()
    assert frame is not None
    return frame.message


def test_handshake_then_requests_and_answers() -> None:
    client, server = Session(Side.CLIENT), Session(Side.SERVER)
    assert deliver(client, server, HELLO) == HELLO
    assert server.state is State.NEGOTIATING and server.peer_hello == HELLO
    welcome = negotiate(HELLO, role="supernode")
    deliver(server, client, welcome)
    assert client.state is State.OPEN and client.version == 1 == server.version
    deliver(client, server, REQUEST)


def test_client_cannot_send_before_hello() -> None:
    with pytest.raises(LocalProtoError):
        Session(Side.CLIENT).send(REQUEST)


def test_server_rejects_a_request_before_hello() -> None:
    server = Session(Side.SERVER)
    server.receive_data(encode(REQUEST))
    with pytest.raises(UnexpectedMessage):
        server.next_frame()


def test_client_must_not_send_server_messages() -> None:
    client, server = Session(Side.CLIENT), Session(Side.SERVER)
    deliver(client, server, HELLO)
    deliver(server, client, negotiate(HELLO, role="supernode"))
    registered = Registered(
        task_id=TID,
        generation=1,
        length=1,
        piece_size=1 << 20,
        wrapped_key=b"",
        ticket_key=b"k" * 32,
        cdn_ticket=b"",
    )
    with pytest.raises(LocalProtoError):
        client.send(registered)


def test_server_rejects_a_second_hello() -> None:
    client, server = Session(Side.CLIENT), Session(Side.SERVER)
    deliver(client, server, HELLO)
    deliver(server, client, negotiate(HELLO, role="supernode"))
    server.receive_data(encode(HELLO))
    with pytest.raises(UnexpectedMessage):
        server.next_frame()


def test_wrong_version_gets_a_typed_refusal() -> None:
    hello = Hello(versions=(99, 100), role="peer", peer_id="p")
    server = Session(Side.SERVER)
    client = Session(Side.CLIENT)
    deliver(client, server, hello)
    with pytest.raises(VersionMismatch) as info:
        negotiate(hello, role="supernode")
    refusal = server.refuse(info.value)
    assert refusal is not None and server.state is State.CLOSED
    client.receive_data(refusal)
    frame = client.next_frame()
    assert frame is not None and isinstance(frame.message, ErrorReply)
    assert frame.message.code == "version"
    assert client.state is State.CLOSED


def test_negotiate_picks_the_highest_common_version() -> None:
    assert negotiate(Hello(versions=(1, 7), role="peer", peer_id="p"), role="s") == Welcome(
        version=1, role="s"
    )


def test_register_is_a_client_message_only() -> None:
    client, server = Session(Side.CLIENT), Session(Side.SERVER)
    deliver(client, server, HELLO)
    deliver(server, client, negotiate(HELLO, role="supernode"))
    register = Register(
        url="http://x/y", headers=(), digest=None, tag="", filter=(), public_key=bytes(32)
    )
    deliver(client, server, register)
    with pytest.raises(LocalProtoError):
        server.send(register)
