"""dfget through a real supernode from a real origin: cold, warm, sizes, integrity."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import Fetch, RunningSupernode, StartSupernode, downloads

from dfget.engine import DownloadRequest, download
from dfget.errors import IntegrityError
from proto.pieces import MiB
from testkit.origin import FakeOrigin


def blob(size: int, seed: int = 1) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size] if size else b""


def random_blob(size: int) -> bytes:
    return os.urandom(size)


@pytest.mark.parametrize(
    "size",
    [0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB + 12345],
    ids=["empty", "1-byte", "under-a-piece", "one-piece", "piece-plus-one", "ragged"],
)
async def test_cold_download_of_every_shape(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, tmp_path: Path, size: int
) -> None:
    data = random_blob(size)
    origin.add("/f.bin", data)
    result = await fetch(origin.url("/f.bin"), supernode, name="f.bin")
    assert (tmp_path / "downloads" / "f.bin").read_bytes() == data
    assert result.bytes == size == result.from_cdn
    assert result.from_source == 0 and result.from_peers == 0
    assert result.pieces == -(-size // MiB)
    assert downloads(tmp_path) == ["f.bin"]  # no temp file left behind
    summary = result.summary()
    for key in ("task_id", "url", "output", "bytes", "seconds", "from_source", "from_cdn"):
        assert key in summary


async def test_warm_download_comes_from_the_store(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    data = random_blob(5 * MiB)
    origin.add("/f.bin", data)
    for _ in range(5):
        result = await fetch(origin.url("/f.bin"), supernode)
        assert Path(result.output).read_bytes() == data
    stats = origin.stats["/f.bin"]
    assert stats.from_start == 1  # one body from the origin for five downloads
    conditional = [h for _, h in stats.requests if any(k == "if-none-match" for k, _ in h)]
    assert len(conditional) == 4  # each warm download revalidated, none refetched
    assert supernode.node.cdn.statistics().origin_fetches == 1


async def test_concurrent_cold_downloads_share_one_origin_fetch(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    data = random_blob(6 * MiB + 7)
    origin.add("/f.bin", data, rate=30 * MiB)
    results = []

    async def one() -> None:
        results.append(await fetch(origin.url("/f.bin"), supernode))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(one)
    assert len(results) == 4
    assert all(Path(r.output).read_bytes() == data for r in results)
    assert origin.stats["/f.bin"].from_start == 1


async def test_cold_download_streams_before_the_origin_finishes(
    origin: FakeOrigin, supernode: RunningSupernode, tmp_path: Path
) -> None:
    data = random_blob(8 * MiB)
    gate = trio.Event()
    origin.add("/slow.bin", data, gate_after=3 * MiB, gate=gate)
    seen_early = trio.Event()
    progress: list[int] = []

    def on_progress(done: int, total: int | None) -> None:
        progress.append(done)
        if done >= 2 * MiB and not gate.is_set():
            seen_early.set()

    request = DownloadRequest(
        url=origin.url("/slow.bin"), output=tmp_path / "slow.bin", supernodes=(supernode.address,)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: download(request, progress=on_progress))
        with trio.fail_after(20):
            await seen_early.wait()  # dfget wrote 2 MiB while the origin is held at 3 MiB
        assert not (tmp_path / "slow.bin").exists()  # nothing at OUT until it is complete
        gate.set()
    assert (tmp_path / "slow.bin").read_bytes() == data
    assert progress[-1] == len(data)


async def test_digest_checked_and_wrong_digest_leaves_nothing(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    data = random_blob(2 * MiB + 3)
    origin.add("/f.bin", data)
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    result = await fetch(origin.url("/f.bin"), supernode, digest=good, name="good")
    assert Path(result.output).read_bytes() == data
    bad = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(IntegrityError):
        await fetch(origin.url("/f.bin"), supernode, digest=bad, name="bad")
    assert downloads(tmp_path) == ["good"]


async def test_blake3_digest(origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch) -> None:
    import blake3

    data = random_blob(MiB + 5)
    origin.add("/f.bin", data)
    digest = "blake3:" + blake3.blake3(data).hexdigest()
    result = await fetch(origin.url("/f.bin"), supernode, digest=digest)
    assert Path(result.output).read_bytes() == data


async def test_store_survives_a_restart(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    data = random_blob(3 * MiB)
    origin.add("/f.bin", data)
    first = await start_supernode(data_dir=tmp_path / "store")
    await fetch(origin.url("/f.bin"), first)
    await first.stop()
    second = await start_supernode(data_dir=tmp_path / "store")
    result = await fetch(origin.url("/f.bin"), second)
    assert Path(result.output).read_bytes() == data
    assert result.from_cdn == len(data)
    assert origin.stats["/f.bin"].from_start == 1


async def test_changed_content_gets_a_new_generation(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    old, new = random_blob(2 * MiB), random_blob(2 * MiB)
    origin.add("/f.bin", old)
    assert Path((await fetch(origin.url("/f.bin"), supernode)).output).read_bytes() == old
    origin.add("/f.bin", new)  # new ETag and Last-Modified
    assert Path((await fetch(origin.url("/f.bin"), supernode)).output).read_bytes() == new
    task = supernode.node.cdn.current(await _task_id(origin.url("/f.bin")))
    assert task is not None and task.generation == 2
    stats = origin.stats["/f.bin"]
    assert stats.from_start == 2  # the old and the new content, once each
    assert stats.bytes_sent <= 4 * MiB + 1  # plus one byte for the revalidation


async def _task_id(url: str) -> str:
    from proto.taskid import task_id_for

    return task_id_for(url)


async def test_origin_without_validators_is_cached_and_checked_with_head(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    data = random_blob(MiB + 1)
    origin.add("/plain.bin", data, etag=False, last_modified=False)
    for _ in range(3):
        assert Path((await fetch(origin.url("/plain.bin"), supernode)).output).read_bytes() == data
    stats = origin.stats["/plain.bin"]
    assert stats.from_start == 1
    assert [m for m, _ in stats.requests].count("HEAD") == 2


async def test_headers_reach_the_origin_and_range_is_a_task_of_its_own(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    data = random_blob(3 * MiB)
    origin.add("/f.bin", data)
    headers = (("Cookie", "session=abc"), ("X-Trace", "42"), ("Range", "bytes=100-2000099"))
    result = await fetch(origin.url("/f.bin"), supernode, headers=headers)
    assert Path(result.output).read_bytes() == data[100:2000100]
    _, got = origin.stats["/f.bin"].requests[0]
    assert ("cookie", "session=abc") in got and ("x-trace", "42") in got
    whole = await fetch(origin.url("/f.bin"), supernode)
    assert Path(whole.output).read_bytes() == data
    assert whole.task_id != result.task_id


async def test_redirects_are_followed(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    data = random_blob(MiB + 9)
    origin.add("/real.bin", data)
    origin.add("/moved.bin", b"", redirect_to="/real.bin")
    result = await fetch(origin.url("/moved.bin"), supernode)
    assert Path(result.output).read_bytes() == data


async def test_unknown_length_chunked_body(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    data = random_blob(9 * MiB + 77)  # unknown length: 4 MiB pieces, a short last one
    # (no ranges: a 206 would name the whole length in its Content-Range)
    origin.add("/chunked.bin", data, chunked=True, ranges=False)
    result = await fetch(origin.url("/chunked.bin"), supernode)
    assert Path(result.output).read_bytes() == data
    assert result.piece_size == 4 * MiB and result.pieces == 3


async def test_rate_limit_paces_the_download(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    data = random_blob(5 * MiB)
    origin.add("/f.bin", data)
    await fetch(origin.url("/f.bin"), supernode)  # warm the CDN: only dfget's pace counts
    started = trio.current_time()
    result = await fetch(origin.url("/f.bin"), supernode, rate_limit=8 * MiB)
    elapsed = trio.current_time() - started
    assert Path(result.output).read_bytes() == data
    # 5 MiB at 8 MiB/s with a quarter-second burst (2 MiB): at least 3 MiB / 8 MiB/s.
    assert elapsed >= 0.37


@pytest.mark.parametrize("pieces", [1, 3])
async def test_pieces_all_in_flight_ask_for_no_more(
    origin: FakeOrigin,
    supernode: RunningSupernode,
    fetch: Fetch,
    monkeypatch: pytest.MonkeyPatch,
    pieces: int,
) -> None:
    """Once every missing piece is in flight only a second source could be given (the
    endgame): a download whose pieces land within ENDGAME_AFTER asks the scheduler once
    (it asked twice, the second request held until the last piece's report, then
    answered with nothing: two frames and a scheduler pass a small file)."""
    from dfget import transfers
    from proto.io.framed import FramedStream
    from proto.messages import PieceTasksRequest, Register

    monkeypatch.setattr(transfers, "ENDGAME_AFTER", 30.0)  # (however slow the machine)

    data = random_blob(pieces * MiB - 5)
    origin.add("/f.bin", data)
    await fetch(origin.url("/f.bin"), supernode)  # warm: the CDN holds every piece
    asked: list[int] = []
    send = FramedStream.send

    async def counting(self: FramedStream, message: object, *args: object, **kw: object) -> None:
        # (version 5: the first request goes with the Register)
        if isinstance(message, PieceTasksRequest | Register) and message.want:
            asked.append(message.want)
        await send(self, message, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(FramedStream, "send", counting)
    result = await fetch(origin.url("/f.bin"), supernode)
    assert Path(result.output).read_bytes() == data
    assert asked == [8]


async def test_an_etag_longer_than_the_wire_takes_is_not_sent(
    nursery: trio.Nursery, supernode: RunningSupernode, fetch: Fetch
) -> None:
    """An origin may send an ETag of up to 64 KiB, TaskDone carries 1024 characters:
    the encoder refused it and that ended the peer's whole control session (every task
    of a daemon's on it), at each Register of the file (found by review). It is sent
    as no validator now."""
    from testkit.scripted import Answer, ScriptedOrigin, Seen

    data = random_blob(MiB + 3)
    long_etag = '"' + "e" * 2000 + '"'

    def answer(seen: Seen) -> Answer:
        return Answer(200, [("etag", long_etag), ("content-type", "application/x")], data)

    origin = ScriptedOrigin(answer)
    await nursery.start(origin.serve)
    for _ in range(2):  # cold, then warm (the task done as it registers)
        result = await fetch(origin.url("/f.bin"), supernode, back_source=False)
        assert Path(result.output).read_bytes() == data
        assert result.from_cdn == len(data)
        assert result.validators is not None and result.validators[0] == ""


async def test_a_piece_task_request_handled_while_registered_is_still_going_is_answered(
    origin: FakeOrigin,
    supernode: RunningSupernode,
    fetch: Fetch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The peer asks for piece tasks the moment it has Registered; on a busy session
    the supernode may take that request before the task that sent Registered resumes
    after its send. The request took the task for one not registered yet and its
    answer was dropped: the download waited 120 s for it, then went to the origin
    (found measuring `dfget -r`, whose files share sessions: 1 cold run in 4)."""
    from proto.io.framed import FramedStream

    send_together = FramedStream.send_together

    async def slow_to_resume(self: FramedStream, messages: Any, **kw: Any) -> None:
        await send_together(self, messages, **kw)
        await trio.sleep(0.3)  # (other tasks of the session run first, as when busy)

    monkeypatch.setattr(FramedStream, "send_together", slow_to_resume)
    data = random_blob(MiB + 1)
    origin.add("/f.bin", data, rate=MiB)  # cold: the request is held for the first piece
    result = await fetch(origin.url("/f.bin"), supernode, back_source=False, timeout=10)
    assert Path(result.output).read_bytes() == data
