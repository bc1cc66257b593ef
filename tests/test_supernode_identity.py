"""A supernode's identity: a peer pinned to it (`--supernode-identity`) sends nothing to
what answers at a supernode's address without signing the handshake with it. The
cluster token cannot say this: every admitted host holds it, and one answering at a
supernode's address (on the path, or on its port while it is down) proved the token,
read the requesters' sealed credentials and named the file's pieces."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trio
from conftest import PYTHON, Fetch, StartDaemon, StartSupernode, cli_env, until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from impostor import impostor, serving

from dfget.errors import SupernodeNotProven
from dfget.members import ask_members
from dfget.options import PeerOptions
from proto.admission import sign_identity, verify_identity
from proto.io import FramedStream
from proto.messages import ErrorReply
from proto.session import Session, Side
from supernode.keys import raw_public
from testkit.origin import FakeOrigin

TOKEN = b"correct horse battery staple"
AUTH = "Bearer s3cr3t-0f-th3-r3qu3st3r"
LOCAL = ("127.0.0.1", 0)


@pytest.mark.parametrize("signs", [True, False], ids=["its-own-key", "no-signature"])
async def test_a_token_holder_at_the_supernodes_address_gets_nothing_from_a_pinned_peer(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    nursery: trio.Nursery,
    signs: bool,
) -> None:
    origin.add("/private.bin", os.urandom(5000), require_auth=AUTH)
    node = await start_supernode(token=TOKEN)
    pinned = frozenset({raw_public(node.node.ticket_key)})
    key = Ed25519PrivateKey.generate() if signs else None
    address, received, ended = await impostor(nursery, True, TOKEN, key)
    peer = PeerOptions(listen=LOCAL, token=TOKEN, identities=pinned)
    asked = {"headers": (("Authorization", AUTH),), "peer": peer, "back_source": False}
    with pytest.raises(SupernodeNotProven, match="supernode-identity") as refused:
        await fetch(origin.url("/private.bin"), address, **asked)
    assert refused.value.exit_code == 9
    with pytest.raises(SupernodeNotProven):
        await ask_members(address, token=TOKEN, identities=pinned)
    await until(lambda: len(ended) >= 2, 10)
    assert received == []  # no Register (its sealed credentials), no MembersRequest
    # Without the pin the token alone passes it: what the pin is for.
    unpinned = PeerOptions(listen=LOCAL, token=TOKEN)
    with pytest.raises(Exception):  # noqa: B017 (it answers nothing after the Register)
        with trio.fail_after(10):
            await fetch(origin.url("/private.bin"), address, **{**asked, "peer": unpinned})
    assert received  # the Register went to it
    # The real supernode signs: the pinned peer downloads through it, and learns the
    # members from it.
    result = await fetch(origin.url("/private.bin"), node, **asked)
    assert result.from_cdn == 5000
    assert node.address in (await ask_members(node.address, token=TOKEN, identities=pinned)).peers


async def test_a_supernode_with_another_identity_is_not_proven(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    """Pinned to one supernode, another one (its own key, the same token) is not it."""
    origin.add("/f.bin", b"file")
    node = await start_supernode(token=TOKEN)
    other = frozenset({raw_public(Ed25519PrivateKey.generate())})
    peer = PeerOptions(listen=LOCAL, token=TOKEN, identities=other)
    with pytest.raises(SupernodeNotProven, match="supernode-identity"):
        await fetch(origin.url("/f.bin"), node, peer=peer, back_source=False)
    # Pinned without a cluster token (an open cluster): the identity alone is checked.
    open_node = await start_supernode(data_dir=tmp_path / "open")
    pinned = frozenset({raw_public(open_node.node.ticket_key)})
    result = await fetch(
        origin.url("/f.bin"), open_node, peer=PeerOptions(listen=LOCAL, identities=pinned)
    )
    assert result.from_cdn == 4


async def test_a_daemon_pinned_to_its_supernode_downloads_through_it(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon, fetch: Fetch
) -> None:
    data = os.urandom(1 << 20)
    origin.add("/f.bin", data)
    node = await start_supernode(token=TOKEN)
    identity = raw_public(node.node.ticket_key)
    daemon = await start_daemon(
        "host1", "http://127.0.0.1:1", node, token=TOKEN, identities=frozenset({identity})
    )
    result = await fetch(origin.url("/f.bin"), None, daemon_socket=daemon.socket_path)
    assert Path(result.output).read_bytes() == data
    assert result.from_cdn == len(data)


def test_the_supernode_prints_its_identity_and_the_clients_take_it(tmp_path: Path) -> None:
    argv = [PYTHON, "-m", "supernode", "--data-dir", str(tmp_path / "sn"), "--print-identity"]
    first = subprocess.run(argv, capture_output=True, text=True, env=cli_env(), check=True)
    again = subprocess.run(argv, capture_output=True, text=True, env=cli_env(), check=True)
    identity = first.stdout.strip()
    assert identity == again.stdout.strip() and len(bytes.fromhex(identity)) == 32
    assert (tmp_path / "sn" / "ticket-key.pem").stat().st_mode & 0o777 == 0o600
    for program in ("dfget", "dfdaemon"):
        bad = subprocess.run(
            [PYTHON, "-m", program, "--supernode-identity", identity[:-2], "--help"],
            capture_output=True,
            text=True,
            env=cli_env(),
            check=False,
        )
        assert bad.returncode == 2 and "not a supernode identity" in bad.stderr, bad.stderr
    config = tmp_path / "dfdaemon.toml"
    config.write_text(f'supernode_identities = ["{identity}", "xyz"]\n')
    bad = subprocess.run(
        [PYTHON, "-m", "dfdaemon", "--config", str(config), "--supernode", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        env=cli_env(),
        check=False,
        timeout=60,
    )
    assert bad.returncode != 0 and "supernode_identities" in bad.stderr, bad.stderr


def test_a_signature_vouches_for_its_own_transcript_and_pinned_key_alone() -> None:
    key = Ed25519PrivateKey.generate()
    identity = raw_public(key)
    peer, challenge, ours = os.urandom(32), os.urandom(32), os.urandom(32)
    signature = sign_identity(key, peer, challenge, ours)
    assert verify_identity({identity}, identity, peer, challenge, ours, signature)
    assert not verify_identity(set(), identity, peer, challenge, ours, signature)  # not pinned
    other = raw_public(Ed25519PrivateKey.generate())
    assert not verify_identity({other}, other, peer, challenge, ours, signature)
    for changed in (
        (os.urandom(32), challenge, ours),  # another peer's key: a replayed Welcome
        (peer, os.urandom(32), ours),  # another connection's challenge
        (peer, challenge, os.urandom(32)),  # the supernode's key swapped on the way
    ):
        assert not verify_identity({identity}, identity, *changed, signature)
    assert not verify_identity({identity}, identity, peer, challenge, ours, signature[:-1])
    assert not verify_identity({b"x" * 31}, b"x" * 31, peer, challenge, ours, signature)


async def test_a_supernode_that_cannot_sign_is_not_proven_and_says_why(
    origin: FakeOrigin, fetch: Fetch, nursery: trio.Nursery
) -> None:
    """A supernode from before identities refuses a Hello that asks for one (an unknown
    field to its codec): not proven, with the reason (not "the cluster token")."""

    async def older(stream: trio.SocketStream) -> None:
        framed = FramedStream(stream, Session(Side.SERVER))
        try:
            await framed.receive()  # (the Hello)
            await framed.send(
                ErrorReply(code="bad_request", message="hello.identity: unknown field")
            )
        finally:
            await framed.aclose()

    origin.add("/f.bin", b"file")
    address = await serving(nursery, older)
    peer = PeerOptions(listen=LOCAL, identities=frozenset({bytes(32)}))
    with pytest.raises(SupernodeNotProven, match="cannot sign with a supernode identity"):
        await fetch(origin.url("/f.bin"), address, peer=peer, back_source=False)


def test_pins_are_not_handed_to_a_daemon_that_could_not_keep_them(tmp_path: Path) -> None:
    argv = [PYTHON, "-m", "dfget", "http://127.0.0.1:1/f", "-o", str(tmp_path / "f")]
    argv += ["--supernode-identity", "ab" * 32, "--daemon-socket", str(tmp_path / "d.sock")]
    done = subprocess.run(argv, capture_output=True, text=True, env=cli_env(), check=False)
    assert done.returncode == 2 and "cannot be kept through --daemon-socket" in done.stderr
