"""A Register's credentials are sealed for the supernode, and a peer with the cluster
token sends nothing to what cannot prove the token (protocol version 4)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import struct
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from conftest import (
    Fetch,
    RunningSupernode,
    RunningSupernodeAddress,
    StartDaemon,
    StartSupernode,
    until,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from impostor import impostor, serving
from rawwire import raw_connect, until_closed

import supernode.cli
from dfget.errors import DfgetError, SupernodeFailed, SupernodeNotProven, UsageError
from dfget.options import PeerOptions
from dfget.results import DownloadResult
from proto import ErrorReply, PieceRequest, Registered, admission
from proto.admission import (
    new_challenge,
    proof_key,
    prove_supernode,
    stretch_soon,
    verify_supernode,
)
from proto.errors import (
    ErrorCode,
    FrameTooLarge,
    LocalProtoError,
    MalformedFrame,
)
from proto.frames import MAX_HEADER, encode
from proto.framesealing import SealedFrameError, frame_keys
from proto.io import FramedStream, client_handshake
from proto.keywrap import raw_public
from proto.messages import (
    PROTOCOL_VERSIONS,
    Hello,
    KeepAlive,
    Leave,
    Register,
    S3Access,
    Welcome,
)
from proto.requestseal import BadSeal, _key, open_secrets, seal_secrets
from proto.session import Session, Side, negotiate
from testkit.origin import FakeOrigin

LOCAL = ("127.0.0.1", 0)
TOKEN = b"correct horse battery"
AUTH = "Bearer s3cr3t-0f-th3-r3qu3st3r"
S3 = S3Access("http://127.0.0.1:9", "us-east-1", "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG")
URL = "http://origin.example/blob"


def sealed_pair() -> tuple[X25519PrivateKey, X25519PrivateKey, bytes]:
    return X25519PrivateKey.generate(), X25519PrivateKey.generate(), new_challenge()


def test_sealed_secrets_open_for_the_supernode_only() -> None:
    peer, supernode, challenge = sealed_pair()
    headers = (("Authorization", AUTH), ("Cookie", "session=1"))
    sealed = seal_secrets(peer, raw_public(supernode), challenge, URL, headers, S3)
    assert AUTH.encode() not in sealed and S3.secret_access_key.encode() not in sealed
    opened = open_secrets(supernode, raw_public(peer), challenge, URL, sealed)
    assert opened == (headers, S3)
    stranger = X25519PrivateKey.generate()
    with pytest.raises(BadSeal):  # another key (what answered without being the supernode)
        open_secrets(stranger, raw_public(peer), challenge, URL, sealed)
    with pytest.raises(BadSeal):  # moved to another URL
        open_secrets(supernode, raw_public(peer), challenge, URL + "2", sealed)
    with pytest.raises(BadSeal):  # another connection's challenge
        open_secrets(supernode, raw_public(peer), new_challenge(), URL, sealed)
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(BadSeal):
        open_secrets(supernode, raw_public(peer), challenge, URL, bytes(flipped))
    with pytest.raises(BadSeal):
        open_secrets(supernode, raw_public(peer), challenge, URL, b"short")


def _sealed_raw(
    peer: X25519PrivateKey, supernode: X25519PrivateKey, challenge: bytes, plain: bytes
) -> bytes:
    """What a hostile peer may seal: any plaintext, rightly encrypted."""
    shared = peer.exchange(supernode.public_key())
    nonce = os.urandom(12)
    return nonce + _key(shared, challenge, URL).encrypt(nonce, plain, URL.encode())


@pytest.mark.parametrize(
    "plain",
    [
        msgpack.packb({"t": "request_secrets", "headers": [["Evil\r\nHost", "x"]]}),
        msgpack.packb({"t": "request_secrets", "headers": [], "extra": 1}),
        msgpack.packb({"t": "keepalive"}),
        b"\xc1 not msgpack",
    ],
    ids=["header-injection", "unknown-field", "another-message", "garbage"],
)
def test_a_sealed_part_holding_anything_but_valid_secrets_is_refused(plain: bytes) -> None:
    peer, supernode, challenge = sealed_pair()
    sealed = _sealed_raw(peer, supernode, challenge, plain)
    with pytest.raises(BadSeal):
        open_secrets(supernode, raw_public(peer), challenge, URL, sealed)


def fresh_key() -> bytes:
    return raw_public(X25519PrivateKey.generate())


def test_the_supernodes_proof_binds_the_token_the_peers_key_and_its_own() -> None:
    key, challenge, nonce = fresh_key(), new_challenge(), fresh_key()
    hello = Hello(versions=(3, 4), role="peer", peer_id="p", key=nonce)
    welcome = negotiate(hello, "supernode", challenge=challenge, key=key, token=TOKEN)
    assert welcome.version == 4 and welcome.key == key
    assert verify_supernode(TOKEN, nonce, challenge, key, welcome.proof)
    assert not verify_supernode(b"another token", nonce, challenge, key, welcome.proof)
    assert not verify_supernode(TOKEN, fresh_key(), challenge, key, welcome.proof)  # replayed
    assert not verify_supernode(TOKEN, nonce, challenge, fresh_key(), welcome.proof)
    # No token, or no nonce asked for: no proof; a version-3 peer: a version-3 Welcome.
    assert negotiate(hello, "supernode", challenge=challenge, key=key).proof == b""
    bare = Hello(versions=(3, 4), role="peer", peer_id="p")
    assert negotiate(bare, "supernode", challenge=challenge, key=key, token=TOKEN).proof == b""
    old = Hello(versions=(1, 2, 3), role="peer", peer_id="p", key=nonce)
    old_welcome = negotiate(old, "supernode", challenge=challenge, key=key, token=TOKEN)
    assert (old_welcome.version, old_welcome.key, old_welcome.proof) == (3, b"", b"")


Change = Callable[[bytearray, int], None]  # (a chunk, its offset in the stream)


class Relay:
    """A TCP relay on 127.0.0.1 in front of `target`: every byte clients send, kept;
    what the server sends may be changed on the way (`changer`)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.sent = bytearray()  # client to server, every connection

    async def serve(self, nursery: trio.Nursery) -> str:
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"

    def changer(self, hello: bytes) -> Change | None:
        """How to change what the server sends on a connection that began with `hello`."""
        return None

    async def _handle(self, client: trio.SocketStream) -> None:
        host, port = self.target.rsplit(":", 1)
        server = await trio.open_tcp_stream(host, int(port))
        async with client, server, trio.open_nursery() as nursery:
            hello = await client.receive_some(1 << 16)  # (the Hello, whole: a small frame)
            self.sent += hello
            await server.send_all(hello)
            scope = nursery.cancel_scope
            nursery.start_soon(self._pump, client, server, scope, True, None)
            nursery.start_soon(self._pump, server, client, scope, False, self.changer(hello))

    async def _pump(
        self,
        src: trio.SocketStream,
        dst: trio.SocketStream,
        scope: trio.CancelScope,
        keep: bool,
        change: Change | None,
    ) -> None:
        offset = 0
        try:
            while data := await src.receive_some(1 << 16):
                if keep:
                    self.sent += data
                chunk = bytearray(data)
                if change is not None:
                    change(chunk, offset)
                offset += len(chunk)
                await dst.send_all(chunk)
        except trio.BrokenResourceError:
            pass
        scope.cancel()


async def private_behind_a_relay(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    nursery: trio.Nursery,
    token: bytes | None,
    size: int,
) -> tuple[bytes, Relay, str]:
    """A private file (its origin wants AUTH) and a supernode (with `token`) behind a
    relay: the file's bytes, the relay and its address."""
    data = os.urandom(size)
    origin.add("/private.bin", data, require_auth=AUTH)
    node = await start_supernode(token=token)
    relay = Relay(node.address)
    return data, relay, await relay.serve(nursery)


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "token"])
async def test_a_requesters_credentials_cross_the_wire_sealed(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    nursery: trio.Nursery,
    token: bytes | None,
) -> None:
    data, relay, address = await private_behind_a_relay(
        origin, start_supernode, nursery, token, 3 << 20
    )
    result = await fetch(
        origin.url("/private.bin"),
        address,
        headers=(("Authorization", AUTH),),
        peer=PeerOptions(listen=LOCAL, token=token),
        back_source=False,
    )
    assert Path(result.output).read_bytes() == data
    assert result.from_cdn == len(data)  # the supernode read it with the sealed header
    # In an open cluster the relay reads the Register but for its sealed part; with a
    # token the whole session after the handshake is sealed: not even the URL shows.
    assert (b"/private.bin" in relay.sent) is (token is None)
    assert AUTH.encode() not in relay.sent
    assert b"s3cr3t" not in relay.sent


async def _fetch_with_token(fetch: Fetch, url: str, address: str, **fields: Any) -> DownloadResult:
    """`url` through the supernode at `address`, as a peer with the cluster token, never
    from the origin itself."""
    return await fetch(
        url, address, peer=PeerOptions(listen=LOCAL, token=TOKEN), back_source=False, **fields
    )


@pytest.mark.parametrize("who", ["another-token", "no-token", "version-3"], ids=lambda who: who)
async def test_a_peer_with_the_token_sends_nothing_to_what_cannot_prove_it(
    origin: FakeOrigin, fetch: Fetch, nursery: trio.Nursery, who: str
) -> None:
    origin.add("/private.bin", b"private bytes", require_auth=AUTH)
    token = {"another-token": b"guessed", "no-token": None, "version-3": TOKEN}[who]
    # (a Welcome without a key is what a supernode before version 4 sends)
    address, received, ended = await impostor(nursery, who != "version-3", token)
    asked = {"headers": (("Authorization", AUTH),), "peer": PeerOptions(listen=LOCAL, token=TOKEN)}
    with pytest.raises(SupernodeNotProven, match="cluster token") as refused:
        await fetch(origin.url("/private.bin"), address, back_source=False, **asked)
    assert refused.value.exit_code == 9
    # As without that supernode: the next one, here the origin.
    result = await fetch(origin.url("/private.bin"), address, **asked)
    assert result.from_source == len(b"private bytes")
    await until(lambda: len(ended) >= 2, 10)
    assert received == []  # not a Register, nor anything else


async def test_a_sealed_register_that_does_not_open_fails_its_task_not_the_session(
    origin: FakeOrigin, supernode: RunningSupernode
) -> None:
    origin.add("/private.bin", b"private bytes", require_auth=AUTH)
    url = origin.url("/private.bin")
    peer = X25519PrivateKey.generate()
    stream = await raw_connect(supernode.address)
    framed = await client_handshake(stream, role="peer", peer_id="p-sealed", max_payload=0)
    try:
        welcome = framed.welcome
        assert welcome is not None and welcome.version >= 4 and len(welcome.key) == 32
        forged = seal_secrets(
            X25519PrivateKey.generate(), welcome.key, welcome.challenge, url, (), None
        )  # (sealed with a key other than the one the Register names)

        def register(sealed: bytes) -> Register:
            return Register(
                url=url,
                headers=(),
                digest=None,
                tag="",
                filter=(),
                public_key=raw_public(peer),
                sealed=sealed,
            )

        await framed.send(register(forged))
        with trio.fail_after(10):
            refused = (await framed.receive()).message
        assert isinstance(refused, ErrorReply) and refused.code == ErrorCode.BAD_REQUEST
        assert "sealed" in refused.message
        good = seal_secrets(
            peer, welcome.key, welcome.challenge, url, (("Authorization", AUTH),), None
        )
        await framed.send(register(good))
        with trio.fail_after(10):
            answer = (await framed.receive()).message
        assert isinstance(answer, Registered)  # the origin said yes to the sealed header
    finally:
        await framed.aclose()


async def test_a_peer_without_the_proof_asked_gets_a_version_4_welcome_without_one(
    start_supernode: StartSupernode,
) -> None:
    node = await start_supernode(token=TOKEN)
    stream = await raw_connect(node.address)
    framed = await client_handshake(stream, role="peer", peer_id="p-plain", max_payload=0)
    try:
        welcome = framed.welcome
        assert welcome is not None and welcome.version >= 4
        assert len(welcome.key) == 32 and welcome.proof == b""
    finally:
        await framed.aclose()
    asked = await client_handshake(
        await raw_connect(node.address), role="peer", peer_id="p", max_payload=0, ask_proof=True
    )
    try:
        assert asked.welcome is not None
        assert verify_supernode(
            TOKEN,
            asked.hello_key,
            asked.welcome.challenge,
            asked.welcome.key,
            asked.welcome.proof,
        )
    finally:
        await asked.aclose()


def test_a_hello_without_a_key_is_the_frame_older_supernodes_read() -> None:
    from proto.codec import encode_header

    header = msgpack.unpackb(encode_header(Hello(versions=(4,), role="peer", peer_id="p")))
    assert "key" not in header
    header = msgpack.unpackb(
        encode_header(Hello(versions=(4,), role="peer", peer_id="p", key=fresh_key()))
    )
    assert len(header["key"]) == 32


async def test_a_members_request_with_the_token_goes_only_to_a_proven_supernode(
    start_supernode: StartSupernode, nursery: trio.Nursery
) -> None:
    from dfget.members import ask_members

    address, received, ended = await impostor(nursery, True, None)
    with pytest.raises(SupernodeNotProven):
        await ask_members(address, token=TOKEN)
    await until(lambda: len(ended) >= 1, 10)
    assert received == []
    node = await start_supernode(token=TOKEN)
    members = await ask_members(node.address, token=TOKEN)
    assert node.address in members.peers


def sealed_sessions() -> tuple[Session, Session]:
    """A client and a server session past their handshake, frames sealed both ways."""
    client, server = Session(Side.CLIENT), Session(Side.SERVER)
    peer, supernode, challenge = sealed_pair()
    hello = Hello(versions=(4,), role="peer", peer_id="p", key=raw_public(peer))
    server.receive_data(client.send(hello))
    assert server.next_frame() is not None
    welcome = negotiate(hello, "supernode", challenge=challenge, key=raw_public(supernode))
    client.receive_data(server.send(welcome))
    assert client.next_frame() is not None
    args = (raw_public(peer), raw_public(supernode), challenge)
    peer_sends, supernode_sends = frame_keys(supernode, raw_public(peer), *args)
    assert frame_keys(peer, raw_public(supernode), *args) == (peer_sends, supernode_sends)
    client.seal_frames(peer_sends, supernode_sends)
    server.seal_frames(supernode_sends, peer_sends)
    return client, server


def test_sealed_frames_cannot_be_read_changed_replayed_or_dropped() -> None:
    client, server = sealed_sessions()
    first, second = KeepAlive(), Leave(task_id="a" * 64)
    wire = client.send(first)
    assert b"keepalive" not in wire
    server.receive_data(wire)
    frame = server.next_frame()
    assert frame is not None and frame.message == first
    answer = server.send(KeepAlive())
    client.receive_data(answer)
    assert client.next_frame() is not None
    # Each of these, on its own session, breaks it: the frame does not open.
    for attack in ("flip", "replay", "drop", "plain", "reflect"):
        client, server = sealed_sessions()
        one, two = client.send(first), client.send(second)
        wire = {
            "flip": one[:-1] + bytes([one[-1] ^ 1]),
            "replay": one + one,
            "drop": two,
            "plain": encode(first),
            "reflect": server.send(KeepAlive()),  # its own frame, sent back to it
        }[attack]
        with pytest.raises(SealedFrameError):
            server.receive_data(wire)
            while server.next_frame() is not None:
                pass
    with pytest.raises(LocalProtoError):  # (no payload rides a sealed session)
        client.send(first, payload_length=1)


def test_a_sealed_frame_over_the_header_limit_is_refused_before_it_is_read() -> None:
    _, server = sealed_sessions()
    server.receive_data(struct.pack(">I", MAX_HEADER + 16))  # (the largest, sealed)
    assert server.next_frame() is None
    _, server = sealed_sessions()
    with pytest.raises(FrameTooLarge):
        server.receive_data(struct.pack(">I", MAX_HEADER + 17))


class Tamperer(Relay):
    """A relay that flips one bit in the first frame the supernode sends after its
    Welcome, on each connection whose Hello asked for sealed frames (the members
    request and the control session of a peer with the token)."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.flipped = 0

    def changer(self, hello: bytes) -> Change | None:
        if b"\xa3key" not in hello:
            return None
        head = bytearray()

        def flip(chunk: bytearray, offset: int) -> None:
            head.extend(chunk[: max(0, 4 - len(head))])
            if len(head) == 4:
                target = 4 + int.from_bytes(head, "big") + 8  # (in the next frame)
                if offset <= target < offset + len(chunk):
                    chunk[target - offset] ^= 0x10
                    self.flipped += 1

        return flip


async def test_a_supernodes_answer_changed_on_the_way_ends_the_session(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    data = os.urandom(1 << 20)
    origin.add("/f.bin", data)
    node = await start_supernode(token=TOKEN)
    relay = Tamperer(node.address)
    address = await relay.serve(nursery)
    with pytest.raises(DfgetError, match="sealed frame does not open"):
        await _fetch_with_token(fetch, origin.url("/f.bin"), address, name="tampered")
    assert relay.flipped >= 1


async def test_a_hello_key_without_a_shared_secret_is_refused(supernode: RunningSupernode) -> None:
    stream = await raw_connect(supernode.address)
    low_order = Hello(versions=(4,), role="peer", peer_id="p-zero", key=bytes(32))
    await stream.send_all(encode(low_order))
    [refusal] = await until_closed(stream, 10)
    assert isinstance(refusal, ErrorReply) and refusal.code == ErrorCode.BAD_REQUEST
    assert "hello.key" in refusal.message
    await stream.aclose()


async def test_a_welcome_key_without_a_shared_secret_fails_the_supernode(
    fetch: Fetch, origin: FakeOrigin, nursery: trio.Nursery
) -> None:
    origin.add("/f.bin", b"bytes")

    async def handle(stream: trio.SocketStream) -> None:
        framed = FramedStream(stream, Session(Side.SERVER))
        async with stream:
            await framed.receive()
            await framed.send(
                Welcome(version=4, role="supernode", challenge=new_challenge(), key=bytes(32))
            )
            await trio.sleep(5)

    address = await serving(nursery, handle)
    with pytest.raises(SupernodeFailed, match=r"welcome\.key"):
        await _fetch_with_token(fetch, origin.url("/f.bin"), address)


async def test_a_daemon_with_the_token_seals_its_shared_sessions(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
    nursery: trio.Nursery,
) -> None:
    data, relay, address = await private_behind_a_relay(
        origin, start_supernode, nursery, TOKEN, 2 << 20
    )
    daemon = await start_daemon(
        "host1", "http://127.0.0.1:1", RunningSupernodeAddress(address), token=TOKEN
    )
    result = await fetch(
        origin.url("/private.bin"),
        None,
        daemon_socket=daemon.socket_path,
        headers=(("Authorization", AUTH),),
    )
    assert result.daemon == str(daemon.socket_path)
    assert Path(result.output).read_bytes() == data
    assert relay.sent  # (the daemon's sessions went through the relay)
    assert b"/private.bin" not in relay.sent and AUTH.encode() not in relay.sent


async def test_a_supernode_before_version_4_is_not_proven_not_broken(
    fetch: Fetch, origin: FakeOrigin, nursery: trio.Nursery
) -> None:
    """What a supernode of version 3 answers a Hello that names a key (an unknown field
    to its codec): a peer with the token reads it as a supernode that cannot prove it."""
    origin.add("/f.bin", b"bytes")

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(1 << 16)
            refusal = ErrorReply(code="bad_request", message="hello.key: unknown field")
            await stream.send_all(encode(refusal))

    address = await serving(nursery, handle)
    with pytest.raises(SupernodeNotProven, match="upgrade the supernodes"):
        await _fetch_with_token(fetch, origin.url("/f.bin"), address)


async def test_a_supernode_refusing_versions_before_4_gets_no_unsealed_proof(
    start_supernode: StartSupernode,
    fetch: Fetch,
    origin: FakeOrigin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`--min-peer-protocol 4`: a peer of version 3 is refused at its Hello, before it
    has sent the Register that carries its proof of the token in the clear; peers of
    version 4 download as before. A token shorter than 24 characters is warned of."""
    caplog.set_level(logging.WARNING, logger="supernode.app")
    node = await start_supernode(token=TOKEN, min_peer_protocol=4)
    assert "the cluster token is 21 characters" in caplog.text  # (TOKEN: a passphrase)
    stream = await raw_connect(node.address)
    await stream.send_all(encode(Hello(versions=(1, 2, 3), role="peer", peer_id="p-v3")))
    [refusal] = await until_closed(stream, 10)
    assert isinstance(refusal, ErrorReply) and refusal.code == ErrorCode.VERSION
    assert f"we speak {list(range(4, max(PROTOCOL_VERSIONS) + 1))}" in refusal.message
    await stream.aclose()
    origin.add("/f.bin", b"version 4 bytes")
    result = await _fetch_with_token(fetch, origin.url("/f.bin"), node.address)
    assert result.from_cdn == len(b"version 4 bytes")


@pytest.mark.parametrize("version", ["0", str(max(PROTOCOL_VERSIONS) + 1)])
def test_a_min_peer_protocol_the_supernode_does_not_speak_stops_it(
    version: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--data-dir", str(tmp_path), "--min-peer-protocol", version]
    assert supernode.cli.main(argv) == 2
    speaks = f"1 to {max(PROTOCOL_VERSIONS)}"
    assert (
        f"--min-peer-protocol is one of the versions it speaks, {speaks}" in capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []  # (stopped before anything was made)


async def test_plaintext_behind_a_handshake_does_not_pass_as_sealed(
    supernode: RunningSupernode, nursery: trio.Nursery
) -> None:
    # A client that pipelines a plaintext Register behind its Hello: refused, in a
    # frame sealed for it.
    ours = X25519PrivateKey.generate()
    client = Session(Side.CLIENT)
    hello = Hello(versions=(4,), role="peer", peer_id="p-pipe", key=raw_public(ours))
    register = Register(
        url="http://127.0.0.1:1/x", headers=(), digest=None, tag="", filter=(), public_key=bytes(32)
    )
    stream = await raw_connect(supernode.address)
    await stream.send_all(client.send(hello) + encode(register))
    answers: list[object] = []
    with trio.fail_after(10):
        while data := await stream.receive_some(1 << 16):
            client.receive_data(data)
            while (frame := client.next_frame()) is not None:
                answers.append(frame.message)
                if isinstance(frame.message, Welcome):
                    welcome = frame.message
                    keys = frame_keys(
                        ours, welcome.key, raw_public(ours), welcome.key, welcome.challenge
                    )
                    client.seal_frames(*keys)
    await stream.aclose()
    assert [type(answer) for answer in answers] == [Welcome, ErrorReply]
    refusal = answers[1]
    assert isinstance(refusal, ErrorReply) and "sealed frame does not open" in refusal.message

    # A server that sends a plaintext frame in the Welcome's segment: the client refuses it.
    async def handle(server: trio.SocketStream) -> None:
        async with server:
            framed = FramedStream(server, Session(Side.SERVER))
            hello = (await framed.receive()).message
            assert isinstance(hello, Hello)
            welcome = negotiate(
                hello, "supernode", challenge=new_challenge(), key=fresh_key(), token=TOKEN
            )
            await server.send_all(encode(welcome) + encode(KeepAlive()))
            await trio.sleep(5)

    port = int((await serving(nursery, handle)).rsplit(":", 1)[1])
    framed = await client_handshake(
        await trio.open_tcp_stream("127.0.0.1", port),
        role="peer",
        peer_id="p",
        max_payload=0,
        ask_proof=True,
    )
    async with framed.stream:
        assert framed.session.sealed
        with pytest.raises(SealedFrameError):
            await framed.receive()


async def test_a_sealed_session_opens_no_piece_download(
    supernode: RunningSupernode, caplog: pytest.LogCaptureFixture
) -> None:
    framed = await client_handshake(
        await raw_connect(supernode.address),
        role="peer",
        peer_id="p-piece",
        max_payload=0,
        ask_proof=True,
    )
    try:
        await framed.send(PieceRequest(task_id="a" * 64, generation=1, index=0, ticket=b"t"))
        with trio.fail_after(10):
            refusal = (await framed.receive()).message
        assert isinstance(refusal, ErrorReply) and refusal.code == ErrorCode.BAD_REQUEST
        assert "sealed session" in refusal.message
    finally:
        await framed.aclose()
    assert "internal error" not in caplog.text


async def test_headers_too_large_to_seal_are_a_usage_error(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    origin.add("/f.bin", b"bytes")
    headers = tuple((f"X-Big-{i}", "v" * 15000) for i in range(5))  # (75 kB)
    with pytest.raises(UsageError, match="cannot be sent"):
        await fetch(origin.url("/f.bin"), supernode, headers=headers, back_source=False)


async def test_a_register_over_the_frames_bound_is_a_usage_error(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    """Headers that seal within their bound, beside a URL that takes the Register past
    the 64 KiB a frame header may hold: the user's request, not the supernode."""
    url = origin.url("/f.bin?" + "q" * 7900)
    headers = tuple((f"X-Big-{i}", "v" * 14900) for i in range(4))  # (59.6 kB)
    with pytest.raises(UsageError, match="over the limit"):
        await fetch(url, supernode, headers=headers, back_source=False)


def test_the_supernodes_proof_is_keyed_by_the_token_stretched() -> None:
    """A stranger's Hello gets a proof it may test guesses against: each guess costs a
    scrypt (n=2^14, r=8), not one HMAC."""
    peer_key, challenge, key = fresh_key(), new_challenge(), fresh_key()
    proof = prove_supernode(TOKEN, peer_key, challenge, key)
    message = b"dragonfly-py supernode v1\0" + peer_key + challenge + key
    stretched = hashlib.scrypt(
        TOKEN, salt=b"dragonfly-py supernode proof key v1", n=2**14, r=8, p=1, dklen=32
    )
    assert proof == hmac.new(stretched, message, hashlib.sha256).digest()
    assert proof != hmac.new(TOKEN, message, hashlib.sha256).digest()


def test_a_token_stretched_in_the_background_is_the_same_key_waited_for() -> None:
    """dfget stretches its token in a thread while it starts (`stretch_soon`); whoever
    asks for the key meanwhile waits for that thread rather than stretching it again,
    and gets what a stretch on the spot gives."""
    token = os.urandom(32).hex().encode()
    expected = hashlib.scrypt(
        token, salt=b"dragonfly-py supernode proof key v1", n=2**14, r=8, p=1, dklen=32
    )
    stretched_before = admission._stretched.cache_info().misses
    stretch_soon(token)
    thread = admission._stretching[token]
    stretch_soon(token)  # (one thread a token)
    assert admission._stretching[token] is thread
    assert proof_key(token) == expected  # (asked at once: the thread is still at it)
    assert not thread.is_alive() and token not in admission._stretching
    assert proof_key(token) == expected
    assert admission._stretched.cache_info().misses == stretched_before + 1  # one scrypt


def test_a_stretch_that_fails_in_its_thread_fails_where_the_key_is_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The thread says nothing of its error (no traceback on dfget's stderr): whoever
    asks for the key meets it, once."""
    calls = []

    class Failing:
        def __init__(self, **_: object) -> None:
            pass

        def derive(self, token: bytes) -> bytes:
            calls.append(token)
            raise MemoryError("scrypt: no memory")

    monkeypatch.setattr("proto.admission.Scrypt", Failing)
    unhandled: list[object] = []
    monkeypatch.setattr(threading, "excepthook", unhandled.append)
    token = os.urandom(32).hex().encode()
    stretch_soon(token)
    with pytest.raises(MemoryError, match="no memory"):
        proof_key(token)
    assert calls == [token, token]  # (the thread's, then the asker's own)
    assert unhandled == [] and "Traceback" not in capsys.readouterr().err


_FUZZ_KEYS = sealed_pair()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.binary(max_size=64))
def test_hostile_bytes_as_a_sealed_frame_or_part_fail_one_typed_way(
    sealed: bytes, prefix: bytes
) -> None:
    """Whatever arrives where a sealed frame or a Register's sealed part should be, the
    only error is the typed one (a protocol error for the connection or the task)."""
    peer, supernode, challenge = _FUZZ_KEYS
    with pytest.raises(BadSeal):
        open_secrets(supernode, raw_public(peer), challenge, URL, sealed)
    _, server = sealed_sessions()
    with pytest.raises((SealedFrameError, FrameTooLarge, MalformedFrame)):
        server.receive_data(struct.pack(">I", len(sealed) + 1) + b"\0" + sealed + prefix)
        while server.next_frame() is not None:
            pass
        pytest.fail("a hostile frame opened")
