"""Attacks around `MembersRequest`: a peer without the cluster token asks for the list,
a request out of place, and hostile supernodes that answer with lists a client must not
take (too many, too long, not addresses, a header too large to read)."""

from __future__ import annotations

import pytest
import trio
from conftest import StartSupernode
from rawwire import Answer, raw_connect, raw_frame, scripted_supernode, until_closed

from dfget.errors import NotAdmitted, SupernodeNotProven
from dfget.members import CONFIGURED, Directory, ask_members
from proto.io import FramedStream
from proto.messages import MAX_MEMBERS, ErrorReply, Members, Welcome


async def test_with_a_cluster_token_only_a_peer_that_proves_it_gets_the_list(
    start_supernode: StartSupernode,
) -> None:
    node = await start_supernode(token=b"t" * 32)
    assert (await ask_members(node.address, token=b"t" * 32)).peers == (node.address,)
    with pytest.raises(NotAdmitted):
        await ask_members(node.address)
    with pytest.raises(SupernodeNotProven):  # (another token: the supernode proves not ours)
        await ask_members(node.address, token=b"x" * 32)


@pytest.mark.parametrize(
    "frames",
    [
        [{"t": "members_request", "token_proof": b"short"}],  # breaks the field's rule
        [{"t": "members_request"}, {"t": "members_request"}],  # a second one: closed
        [{"t": "members", "peers": ["h:1"], "cluster": True}],  # a server's message
    ],
    ids=["bad-proof", "twice", "server-message"],
)
async def test_a_members_request_answers_once_and_closes(
    start_supernode: StartSupernode, frames: list[dict[str, object]]
) -> None:
    node = await start_supernode()
    stream = await raw_connect(node.address)
    await stream.send_all(b"".join(raw_frame(f) for f in [hello_header(), *frames]))
    messages = await until_closed(stream, 5)
    assert isinstance(messages[0], Welcome)
    answers = messages[1:]
    assert len(answers) == 1  # one answer, then the connection is closed
    if frames[0].get("token_proof") == b"short" or frames[0]["t"] == "members":
        assert isinstance(answers[0], ErrorReply) and answers[0].code == "bad_request"
    else:
        assert answers[0] == Members(peers=(node.address,), cluster=False)


def hello_header() -> dict[str, object]:
    return {"t": "hello", "versions": (1,), "role": "peer", "peer_id": "stranger", "agent": ""}


def raw_members(peers: list[str]) -> Answer:
    async def answer(framed: FramedStream) -> None:
        await framed.stream.send_all(raw_frame({"t": "members", "peers": peers, "cluster": True}))

    return answer


@pytest.mark.parametrize(
    "peers",
    [
        [f"198.18.0.{i % 250}:{1000 + i}" for i in range(MAX_MEMBERS + 1)],  # too many
        ["x" * 5000 + ":1"] * 12,  # too long
        ["no-port"],
        ["198.18.0.1:99999"],
        ["evil host:1"],
        ["a..b:8002"],  # (no resolver can be asked: IDNA refuses it before any lookup)
    ],
    ids=["too-many", "too-long", "no-port", "bad-port", "space", "idna"],
)
async def test_a_hostile_list_is_refused_and_the_next_member_asked(
    nursery: trio.Nursery,
    start_supernode: StartSupernode,
    peers: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    hostile = await scripted_supernode(nursery, raw_members(peers))
    directory = Directory([hostile])
    assert not await directory.refresh()  # refused: the list given stays
    assert directory.live == (hostile,) and directory.source == CONFIGURED
    assert "broke the protocol" in caplog.text
    honest = await start_supernode()
    directory = Directory([hostile, honest.address])
    assert await directory.refresh()
    assert directory.learned_from == honest.address


async def test_a_header_too_large_to_read_is_refused(nursery: trio.Nursery) -> None:
    hostile = await scripted_supernode(nursery, raw_members(["h:1"] * 20000))  # ~100 KiB
    directory = Directory([hostile])
    with trio.fail_after(5):
        assert not await directory.refresh()
