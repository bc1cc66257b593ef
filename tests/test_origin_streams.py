"""The CDN fetches a large file over several origin connections (supernode/cdn/streams.py):
ranged GETs guarded by If-Range, put back in order; one plain GET where that is not safe."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from conftest import Fetch, RunningSupernode, StartSupernode, until

from proto.pieces import MiB
from proto.taskid import task_id_for
from supernode.cdn.streams import CHUNK
from supernode.cdn.task import TaskState
from testkit.origin import FakeOrigin
from testkit.scripted import Answer, ScriptedOrigin, Seen

SIZE = 4 * CHUNK + 12345  # five chunks, the last one ragged
STREAMS = 4


@pytest.fixture
async def supernode(start_supernode: StartSupernode) -> RunningSupernode:
    """A supernode that fetches over STREAMS connections (`--origin-streams`; the
    default is 1)."""
    return await start_supernode(origin_streams=STREAMS)


def _gets(origin: FakeOrigin, path: str) -> list[dict[str, str]]:
    return [dict(headers) for method, headers in origin.stats[path].requests if method == "GET"]


async def test_a_large_file_comes_in_ranges_at_once_and_in_order(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    data = os.urandom(SIZE)
    gate = trio.Event()
    origin.add("/big.bin", data, gate_after=0, gate=gate)  # every body waits for the gate
    async with trio.open_nursery() as nursery:
        results = []

        async def run() -> None:
            results.append(await fetch(origin.url("/big.bin"), supernode))

        nursery.start_soon(run)
        # STREAMS connections are all open before a byte of any body has come (the
        # first GET's and 3 more): the chunks are asked for at once, and no more than
        # that (a fifth once the first answer is read).
        await until(lambda: len(_gets(origin, "/big.bin")) >= STREAMS)
        await trio.sleep(0.2)
        assert len(_gets(origin, "/big.bin")) == STREAMS
        gate.set()
    assert Path(results[0].output).read_bytes() == data
    stats = origin.stats["/big.bin"]
    assert stats.bytes_sent == SIZE and stats.from_start == 1  # one copy, no byte twice
    gets = _gets(origin, "/big.bin")
    assert gets[0]["range"] == f"bytes=0-{CHUNK - 1}" and "if-range" not in gets[0]
    etag = origin.etag("/big.bin")
    asked = sorted(g["range"] for g in gets[1:])
    assert asked == sorted(
        f"bytes={at}-{min(at + CHUNK, SIZE) - 1}" for at in range(CHUNK, SIZE, CHUNK)
    )
    assert all(g["if-range"] == etag for g in gets[1:])


async def test_by_default_a_file_is_one_plain_get(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    supernode = await start_supernode()  # --origin-streams 1
    data = os.urandom(SIZE)
    origin.add("/big.bin", data)
    assert Path((await fetch(origin.url("/big.bin"), supernode)).output).read_bytes() == data
    assert ["range" in g for g in _gets(origin, "/big.bin")] == [False]


@pytest.mark.parametrize(
    ("fault", "requests"),
    [
        ({"ranges": False}, 1),  # the first GET answered 200: it is the plain GET
        ({"etag": False, "last_modified": False}, 2),  # 206 with no validator: one GET more
    ],
    ids=["no-ranges", "no-validator"],
)
async def test_an_origin_that_cannot_guard_ranges_gets_one_get(
    origin: FakeOrigin,
    supernode: RunningSupernode,
    fetch: Fetch,
    fault: dict[str, bool],
    requests: int,
) -> None:
    data = os.urandom(SIZE)
    origin.add("/big.bin", data, **fault)
    assert Path((await fetch(origin.url("/big.bin"), supernode)).output).read_bytes() == data
    assert len(_gets(origin, "/big.bin")) == requests
    stats = origin.stats["/big.bin"]
    assert stats.full_bodies == 1
    assert stats.bytes_sent <= SIZE + CHUNK  # the first chunk's answer, closed, at most


async def test_an_empty_file_answered_416_is_fetched_with_a_plain_get(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    origin.add("/empty.bin", b"")
    result = await fetch(origin.url("/empty.bin"), supernode)
    assert Path(result.output).read_bytes() == b"" and result.bytes == 0
    assert ["range" in g for g in _gets(origin, "/empty.bin")] == [True, False]


async def test_a_chunk_cut_short_is_asked_again_from_where_it_stopped(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    data = os.urandom(SIZE)
    # Each of the first three bodies is cut after 1 MiB: the first chunk's and two more.
    origin.add("/big.bin", data, drop_after=MiB, drop_times=3)
    assert Path((await fetch(origin.url("/big.bin"), supernode)).output).read_bytes() == data
    stats = origin.stats["/big.bin"]
    assert len(_gets(origin, "/big.bin")) == 5 + 3
    assert stats.bytes_sent == SIZE  # the cut bodies' bytes were kept, none asked twice


async def test_content_changed_between_chunks_is_never_mixed(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = os.urandom(SIZE), os.urandom(SIZE)
    gate = trio.Event()
    origin.add("/big.bin", old, gate_after=0, gate=gate)
    url = origin.url("/big.bin")
    async with trio.open_nursery() as nursery:
        outputs: list[bytes | Exception] = []

        async def run() -> None:
            try:
                outputs.append(Path((await fetch(url, supernode)).output).read_bytes())
            except Exception as exc:
                outputs.append(exc)

        nursery.start_soon(run)
        await until(lambda: len(_gets(origin, "/big.bin")) >= STREAMS)
        origin.add("/big.bin", new)  # the first answer was the old one; the chunks' If-Range
        gate.set()  # now fails: the origin answers them 200, with the new content
    # The old generation failed at the first chunk answered 200 (nothing of the new
    # content went into it); the download went on with a new one, all new content.
    assert "the content changed upstream during the fetch" in caplog.text
    assert outputs == [new]
    task = supernode.node.cdn.current(task_id_for(url))
    assert task is not None and task.generation == 2 and task.state is TaskState.DONE


def _liar(data: bytes, etag: str, lie: Callable[[int, int], str]) -> Callable[[Seen], Answer]:
    """A ranged origin whose answers to the chunks after the first carry the
    Content-Range `lie(start, end)` (their bodies the bytes asked for)."""

    def answer(seen: Seen) -> Answer:
        spec = seen.headers.get("range", "").removeprefix("bytes=")
        if not spec:
            return Answer(200, [("etag", etag)], data)
        first, _, last = spec.partition("-")
        start, end = int(first), min(int(last) + 1, len(data)) if last else len(data)
        content_range = f"bytes {start}-{end - 1}/{len(data)}" if start == 0 else lie(start, end)
        headers = [("etag", etag), ("content-range", content_range)]
        return Answer(206, headers, data[start:end])

    return answer


@pytest.mark.parametrize(
    "lie",
    [
        lambda start, end: f"bytes {start + 1}-{end}/{SIZE}",  # another place
        lambda start, end: f"bytes {start}-{end - 1}/{SIZE + 1}",  # another length
        lambda start, end: f"bytes {start}-{end - 2}/{SIZE}",  # fewer bytes than asked
    ],
    ids=["moved", "other-length", "short"],
)
async def test_a_chunk_that_is_not_the_one_asked_for_fails_the_task(
    supernode: RunningSupernode, fetch: Fetch, lie: Callable[[int, int], str]
) -> None:
    data = os.urandom(SIZE)
    server = ScriptedOrigin(_liar(data, '"v1"', lie))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        url = server.url("/big.bin")
        try:
            result = await fetch(url, supernode)
        except Exception:  # (failing is fine; wrong bytes are not)
            result = None
        if result is not None:
            assert Path(result.output).read_bytes() == data
            assert result.from_source == SIZE  # dfget went to the origin itself
        task = supernode.node.cdn.current(task_id_for(url))
        assert task is not None and task.state is TaskState.FAILED
        assert str(task.error).startswith("origin answered bytes")  # at once, not retried
        assert len(server.seen) <= 5
        nursery.cancel_scope.cancel()
