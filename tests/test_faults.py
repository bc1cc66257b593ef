"""Origin faults, a missing supernode, corrupt pieces and hostile peers."""

from __future__ import annotations

import base64
import logging
import os
import struct
from pathlib import Path

import pytest
import trio
from conftest import Fetch, RunningSupernode, StartSupernode, downloads, flip_byte
from rawwire import next_message, raw_connect

from dfget.errors import (
    DownloadTimeout,
    IntegrityError,
    OriginFailed,
    SupernodeUnavailable,
)
from proto import ErrorReply, FrameDecoder, Hello, Message, PieceRefused, PieceRequest, encode
from proto.io import open_session
from proto.pieces import MiB
from testkit.origin import FakeOrigin

AUTH = "Basic " + base64.b64encode(b"user:secret").decode()


async def test_origin_404_reaches_dfget_with_its_status(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    origin.add("/gone.bin", b"x", status=404)
    with pytest.raises(OriginFailed) as info:
        await fetch(origin.url("/gone.bin"), supernode)
    assert info.value.status == 404
    assert downloads(tmp_path) == []
    with pytest.raises(OriginFailed) as info:
        await fetch(origin.url("/never-added.bin"), supernode)
    assert info.value.status == 404


async def test_auth_headers_are_passed_on_and_required_for_cached_copies(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    data = os.urandom(MiB + 3)
    origin.add("/private.bin", data, require_auth=AUTH)
    with pytest.raises(OriginFailed) as info:
        await fetch(origin.url("/private.bin"), supernode, name="anon")
    assert info.value.status == 401
    result = await fetch(
        origin.url("/private.bin"), supernode, headers=(("Authorization", AUTH),), name="ok"
    )
    assert Path(result.output).read_bytes() == data
    # Now cached on the CDN: a peer without credentials still gets the origin's 401.
    with pytest.raises(OriginFailed) as info:
        await fetch(origin.url("/private.bin"), supernode, name="anon2")
    assert info.value.status == 401
    assert downloads(tmp_path) == ["ok"]


async def test_origin_refused(
    supernode: RunningSupernode, fetch: Fetch, tmp_path: Path, refused_address: str
) -> None:
    with pytest.raises(OriginFailed, match="reach"):
        await fetch(f"http://{refused_address}/f.bin", supernode)
    assert downloads(tmp_path) == []


async def test_origin_timeout(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    node = await start_supernode(origin_timeout=0.5)
    origin.add("/hang.bin", b"x" * 100, hang=True)
    with pytest.raises(OriginFailed, match="timed out"):
        await fetch(origin.url("/hang.bin"), node)
    assert downloads(tmp_path) == []


async def test_dropped_origin_is_resumed_with_range(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    data = os.urandom(5 * MiB + 11)
    origin.add("/drop.bin", data, drop_after=2 * MiB + 5, drop_times=2)
    result = await fetch(origin.url("/drop.bin"), supernode)
    assert Path(result.output).read_bytes() == data
    ranges = [dict(h).get("range") for m, h in origin.stats["/drop.bin"].requests if m == "GET"]
    # Resumed twice, each time where the bytes that reached the supernode ended (a
    # dropped connection may lose what was still in flight, never more).
    assert ranges[0] is None and len(ranges) == 3
    starts = [int(r.removeprefix("bytes=").rstrip("-")) for r in ranges[1:] if r]
    assert 0 < starts[0] <= 2 * MiB + 5 < starts[1] <= 4 * MiB + 10


async def test_dropped_origin_without_validators_fails_cleanly_then_recovers(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB)
    origin.add("/drop.bin", data, drop_after=MiB + 1, etag=False, last_modified=False)
    with pytest.raises(OriginFailed, match="cut short"):
        await fetch(origin.url("/drop.bin"), supernode)
    assert downloads(tmp_path) == []
    # The failed task is not kept: the next download fetches again, and succeeds.
    result = await fetch(origin.url("/drop.bin"), supernode)
    assert Path(result.output).read_bytes() == data


async def test_origin_that_keeps_dropping_gives_up(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    node = await start_supernode(max_resumes=2)
    origin.add("/drop.bin", os.urandom(2 * MiB), drop_after=1000, drop_times=100)
    with pytest.raises(OriginFailed, match="gave up after 2 resumes"):
        await fetch(origin.url("/drop.bin"), node)
    assert downloads(tmp_path) == []


async def test_supernode_down_goes_back_to_source_with_a_warning(
    origin: FakeOrigin, fetch: Fetch, caplog: pytest.LogCaptureFixture, refused_address: str
) -> None:
    data = os.urandom(2 * MiB + 1)
    origin.add("/f.bin", data)
    with caplog.at_level(logging.WARNING):
        result = await fetch(origin.url("/f.bin"), refused_address)
    assert Path(result.output).read_bytes() == data
    assert result.from_source == len(data) and result.from_cdn == 0
    assert "straight from the origin" in caplog.text


async def test_supernode_down_without_back_source_is_an_error(
    origin: FakeOrigin, fetch: Fetch, tmp_path: Path, refused_address: str
) -> None:
    origin.add("/f.bin", b"data")
    with pytest.raises(SupernodeUnavailable):
        await fetch(origin.url("/f.bin"), refused_address, back_source=False)
    assert downloads(tmp_path) == []
    assert origin.stats["/f.bin"].requests == []


async def test_second_supernode_takes_over(
    origin: FakeOrigin, supernode: RunningSupernode, tmp_path: Path, refused_address: str
) -> None:
    from dfget.engine import DownloadRequest, download

    data = os.urandom(MiB)
    origin.add("/f.bin", data)
    request = DownloadRequest(
        url=origin.url("/f.bin"),
        output=tmp_path / "f.bin",
        supernodes=(refused_address, supernode.address),
        back_source=False,
    )
    result = await download(request)
    assert result.supernode == supernode.address and result.from_cdn == len(data)


async def test_corrupted_piece_on_disk_is_detected_and_never_written(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB)
    origin.add("/f.bin", data)
    first = await fetch(origin.url("/f.bin"), supernode, name="first")
    pieces = supernode.node.store.pieces_path(first.task_id, 1)
    flip_byte(pieces, MiB + 16 + 1000, 0xFF)  # one byte inside piece 1
    with pytest.raises(IntegrityError, match="piece 1"):
        await fetch(origin.url("/f.bin"), supernode, name="second")
    assert downloads(tmp_path) == ["first"]


async def test_dfget_timeout_leaves_nothing(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    origin.add("/stuck.bin", os.urandom(3 * MiB), gate_after=MiB + 5, gate=trio.Event())
    with pytest.raises(DownloadTimeout):
        await fetch(origin.url("/stuck.bin"), supernode, timeout=1.0)
    assert downloads(tmp_path) == []


# -- hostile bytes on the supernode's port ---------------------------------------------


async def read_reply(stream: trio.SocketStream) -> Message | None:
    """The frame the server sends before closing, or None if it just closes."""
    with trio.fail_after(5):
        return await next_message(stream, FrameDecoder())


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        struct.pack(">I", 0xFFFFFFF0),  # a 4 GiB header
        struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1",
        encode(PieceRequest(task_id="0" * 64, generation=1, index=0, ticket=b"")),  # no Hello
    ],
    ids=["http", "huge-header", "bad-msgpack", "no-hello"],
)
async def test_garbage_gets_an_error_and_others_are_still_served(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, garbage: bytes
) -> None:
    half = await raw_connect(supernode.address)  # a half frame, then silence
    await half.send_all(struct.pack(">I", 100) + b"\x85")
    bad = await raw_connect(supernode.address)
    await bad.send_all(garbage)
    reply = await read_reply(bad)
    assert isinstance(reply, ErrorReply) and reply.code == "bad_request"
    origin.add("/f.bin", b"still serving")
    result = await fetch(origin.url("/f.bin"), supernode)
    assert Path(result.output).read_bytes() == b"still serving"
    assert supernode.node.server.protocol_errors >= 1
    await half.aclose()


async def test_wrong_version_is_refused(supernode: RunningSupernode) -> None:
    stream = await raw_connect(supernode.address)
    await stream.send_all(encode(Hello(versions=(42,), role="peer", peer_id="future")))
    reply = await read_reply(stream)
    assert isinstance(reply, ErrorReply) and reply.code == "version"


async def test_piece_request_without_a_valid_ticket_is_refused(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    origin.add("/f.bin", os.urandom(MiB))
    result = await fetch(origin.url("/f.bin"), supernode)
    for ticket in (b"", b"x" * 100):
        stream = await raw_connect(supernode.address)
        async with open_session(stream, role="peer", peer_id="intruder") as framed:
            request = PieceRequest(task_id=result.task_id, generation=1, index=0, ticket=ticket)
            await framed.send(request)
            reply = (await framed.receive()).message
        assert isinstance(reply, PieceRefused) and reply.code == "bad_ticket"
