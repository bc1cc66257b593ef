"""A Register's credentials are sealed for the supernode, and a peer with the cluster
token sends nothing to what cannot prove the token (protocol version 4)."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import msgpack
import pytest
import trio
from conftest import Fetch, RunningSupernode, StartSupernode
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from rawwire import raw_connect

from dfget.errors import SupernodeNotProven
from dfget.options import PeerOptions
from proto import ErrorReply, Registered
from proto.admission import new_challenge, new_nonce, verify_supernode
from proto.errors import ConnectionLost, ErrorCode
from proto.io import FramedStream, client_handshake, server_handshake
from proto.keywrap import raw_public
from proto.messages import Hello, Register, S3Access
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


def test_the_supernodes_proof_binds_the_token_the_nonce_and_its_key() -> None:
    key, challenge, nonce = raw_public(X25519PrivateKey.generate()), new_challenge(), new_nonce()
    hello = Hello(versions=(3, 4), role="peer", peer_id="p", nonce=nonce)
    welcome = negotiate(hello, "supernode", challenge=challenge, key=key, token=TOKEN)
    assert welcome.version == 4 and welcome.key == key
    assert verify_supernode(TOKEN, nonce, challenge, key, welcome.proof)
    assert not verify_supernode(b"another token", nonce, challenge, key, welcome.proof)
    assert not verify_supernode(TOKEN, new_nonce(), challenge, key, welcome.proof)  # replayed
    other_key = raw_public(X25519PrivateKey.generate())
    assert not verify_supernode(TOKEN, nonce, challenge, other_key, welcome.proof)
    # No token, or no nonce asked for: no proof; a version-3 peer: a version-3 Welcome.
    assert negotiate(hello, "supernode", challenge=challenge, key=key).proof == b""
    bare = Hello(versions=(3, 4), role="peer", peer_id="p")
    assert negotiate(bare, "supernode", challenge=challenge, key=key, token=TOKEN).proof == b""
    old = Hello(versions=(1, 2, 3), role="peer", peer_id="p", nonce=nonce)
    old_welcome = negotiate(old, "supernode", challenge=challenge, key=key, token=TOKEN)
    assert (old_welcome.version, old_welcome.key, old_welcome.proof) == (3, b"", b"")


class Relay:
    """A TCP relay on 127.0.0.1 in front of `target`: every byte that crosses it, kept."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.sent = bytearray()  # client to server, every connection

    async def serve(self, nursery: trio.Nursery) -> str:
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"

    async def _handle(self, client: trio.SocketStream) -> None:
        host, port = self.target.rsplit(":", 1)
        server = await trio.open_tcp_stream(host, int(port))
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server, True, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, False, nursery.cancel_scope)

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, keep: bool, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await src.receive_some(1 << 16):
                if keep:
                    self.sent += data
                await dst.send_all(data)
        except trio.BrokenResourceError:
            pass
        scope.cancel()


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "token"])
async def test_a_requesters_credentials_cross_the_wire_sealed(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    nursery: trio.Nursery,
    token: bytes | None,
) -> None:
    data = os.urandom(3 << 20)
    origin.add("/private.bin", data, require_auth=AUTH)
    node = await start_supernode(token=token)
    relay = Relay(node.address)
    address = await relay.serve(nursery)
    result = await fetch(
        origin.url("/private.bin"),
        address,
        headers=(("Authorization", AUTH),),
        peer=PeerOptions(listen=LOCAL, token=token),
        back_source=False,
    )
    assert Path(result.output).read_bytes() == data
    assert result.from_cdn == len(data)  # the supernode read it with the sealed header
    assert b"/private.bin" in relay.sent  # (the relay saw the Register: its URL)
    assert AUTH.encode() not in relay.sent
    assert b"s3cr3t" not in relay.sent


async def _impostor(
    nursery: trio.Nursery, welcome_key: bytes, token: bytes | None, versions: tuple[int, ...]
) -> tuple[str, list[object]]:
    """A server at a supernode's address that speaks the handshake (with `token`, a key
    of its own, at most `versions`) and keeps whatever it is sent after its Welcome."""
    received: list[object] = []

    async def handle(stream: trio.SocketStream) -> None:
        framed = FramedStream(stream, Session(Side.SERVER))
        try:
            hello = await server_handshake(
                framed,
                role="supernode",
                challenge=new_challenge(),
                key=welcome_key,
                token=token,
            )
            assert max(set(hello.versions) & set(versions)) >= 1
            with trio.move_on_after(5):
                received.append((await framed.receive()).message)
        except ConnectionLost:
            pass
        finally:
            await framed.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}", received


@pytest.mark.parametrize("who", ["another-token", "no-token", "version-3"], ids=lambda who: who)
async def test_a_peer_with_the_token_sends_nothing_to_what_cannot_prove_it(
    origin: FakeOrigin, fetch: Fetch, nursery: trio.Nursery, who: str
) -> None:
    origin.add("/private.bin", b"private bytes", require_auth=AUTH)
    key = raw_public(X25519PrivateKey.generate())
    token = {"another-token": b"guessed", "no-token": None, "version-3": TOKEN}[who]
    if who == "version-3":
        key = b""  # (a Welcome without key is what a supernode before version 4 sends)
    address, received = await _impostor(nursery, key, token, (1, 2, 3, 4))
    with pytest.raises(SupernodeNotProven, match="cluster token"):
        await fetch(
            origin.url("/private.bin"),
            address,
            headers=(("Authorization", AUTH),),
            peer=PeerOptions(listen=LOCAL, token=TOKEN),
        )
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
        assert welcome is not None and welcome.version == 4 and len(welcome.key) == 32
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
        assert welcome is not None and welcome.version == 4
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
            asked.hello_nonce,
            asked.welcome.challenge,
            asked.welcome.key,
            asked.welcome.proof,
        )
    finally:
        await asked.aclose()


def test_a_hello_without_a_nonce_is_the_frame_older_supernodes_read() -> None:
    from proto.codec import encode_header

    header = msgpack.unpackb(encode_header(Hello(versions=(4,), role="peer", peer_id="p")))
    assert "nonce" not in header
    header = msgpack.unpackb(
        encode_header(Hello(versions=(4,), role="peer", peer_id="p", nonce=new_nonce()))
    )
    assert len(header["nonce"]) == 32


async def test_a_members_request_with_the_token_goes_only_to_a_proven_supernode(
    start_supernode: StartSupernode, nursery: trio.Nursery
) -> None:
    from dfget.members import ask_members

    address, received = await _impostor(
        nursery, raw_public(X25519PrivateKey.generate()), None, (1, 2, 3, 4)
    )
    with pytest.raises(SupernodeNotProven):
        await ask_members(address, token=TOKEN)
    assert received == []
    node = await start_supernode(token=TOKEN)
    members = await ask_members(node.address, token=TOKEN)
    assert node.address in members.peers
