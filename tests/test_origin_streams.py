"""The CDN fetches a large file over several origin connections (supernode/cdn/streams.py):
ranged GETs guarded by If-Range, put back in order; one plain GET where that is not safe."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from conftest import Fetch, RunningSupernode, StartSupernode, until

from dfget.errors import DfgetError, OriginFailed
from proto.pieces import MiB
from proto.taskid import task_id_for
from supernode.cdn.streams import CHUNK
from supernode.cdn.task import CdnTask, TaskState
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


def _ranged(
    data: bytes, chunk: Callable[[Seen, int, int], Answer | None] = lambda seen, start, end: None
) -> Callable[[Seen], Answer]:
    """A ranged origin (ETag "v1") whose answer to a range other than the first chunk's
    is `chunk(seen, start, end)` when that gives one."""

    def answer(seen: Seen) -> Answer:
        spec = seen.headers.get("range", "").removeprefix("bytes=")
        if not spec:
            return Answer(200, [("etag", '"v1"')], data)
        first, _, last = spec.partition("-")
        start, end = int(first), min(int(last) + 1, len(data)) if last else len(data)
        scripted = chunk(seen, start, end) if start else None
        if scripted is not None:
            return scripted
        headers = [("etag", '"v1"'), ("content-range", f"bytes {start}-{end - 1}/{len(data)}")]
        return Answer(206, headers, data[start:end])

    return answer


async def _fetch_from(
    answer: Callable[[Seen], Answer], supernode: RunningSupernode, fetch: Fetch, **fields: object
) -> tuple[ScriptedOrigin, bytes | None, CdnTask | None]:
    """Download from a ScriptedOrigin: (the origin, the output or None if dfget failed,
    the CDN's task)."""
    server = ScriptedOrigin(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        url = server.url("/big.bin")
        try:
            output: bytes | None = Path((await fetch(url, supernode, **fields)).output).read_bytes()
        except DfgetError:  # (failing is fine; wrong bytes are not)
            output = None
        nursery.cancel_scope.cancel()
    return server, output, supernode.node.cdn.current(task_id_for(url))


def _cdn_chunks(server: ScriptedOrigin) -> list[str]:
    """The ranges the CDN asked for past the first chunk (dfget's own GETs left out)."""
    return [seen.headers["range"] for seen in server.seen if "if-range" in seen.headers]


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

    def chunk(seen: Seen, start: int, end: int) -> Answer:
        return Answer(206, [("etag", '"v1"'), ("content-range", lie(start, end))], data[start:end])

    server, output, task = await _fetch_from(_ranged(data, chunk), supernode, fetch)
    assert output in (None, data)  # dfget may fall back to the origin itself
    assert task is not None and task.state is TaskState.FAILED
    assert str(task.error).startswith("origin answered bytes")
    asked = _cdn_chunks(server)
    assert len(asked) == len(set(asked)) <= STREAMS  # at once, never asked again


async def test_a_chunk_of_another_version_fails_the_task(
    supernode: RunningSupernode, fetch: Fetch
) -> None:
    """An origin that ignores If-Range and answers a chunk of new content: its other
    ETag gives it away, and nothing of it is used."""
    data, other = os.urandom(SIZE), os.urandom(SIZE)

    def chunk(seen: Seen, start: int, end: int) -> Answer:
        headers = [("etag", '"v2"'), ("content-range", f"bytes {start}-{end - 1}/{SIZE}")]
        return Answer(206, headers, other[start:end])

    _, output, task = await _fetch_from(_ranged(data, chunk), supernode, fetch, back_source=False)
    assert output is None
    assert task is not None and task.state is TaskState.FAILED
    assert "changed upstream" in str(task.error)


async def test_a_chunk_refused_once_is_asked_again(
    supernode: RunningSupernode, fetch: Fetch
) -> None:
    data = os.urandom(SIZE)
    refused: list[int] = []

    def chunk(seen: Seen, start: int, end: int) -> Answer | None:
        if start == 2 * CHUNK and not refused:
            refused.append(start)
            return Answer(503, [], b"slow down")
        return None

    server, output, task = await _fetch_from(_ranged(data, chunk), supernode, fetch)
    assert output == data and refused
    assert task is not None and task.state is TaskState.DONE
    asked = _cdn_chunks(server)
    assert asked.count(f"bytes={2 * CHUNK}-{3 * CHUNK - 1}") == 2 and len(asked) == 5


@pytest.mark.parametrize("location", ["http://[::1", "http://xn--a/x", "http://127.0.0.1:0/x"])
async def test_a_chunk_redirected_where_no_client_can_go_fails_the_task_at_once(
    supernode: RunningSupernode, fetch: Fetch, location: str
) -> None:
    """A redirect to a URL no client can send is the origin's answer, as for the first
    GET: not a hiccup asked again `max_resumes` times (seconds of pauses)."""
    data = os.urandom(SIZE)

    def chunk(seen: Seen, start: int, end: int) -> Answer:
        return Answer(302, [("location", location)])

    server, output, task = await _fetch_from(_ranged(data, chunk), supernode, fetch)
    assert output in (None, data)  # dfget may fall back to the origin itself
    assert task is not None and task.state is TaskState.FAILED
    assert "redirected to a" in str(task.error)  # (a bad URL, one no client can send)
    asked = _cdn_chunks(server)
    assert len(asked) == len(set(asked)) <= STREAMS  # never asked again


async def test_an_absurd_total_costs_nothing_that_grows_with_it(
    supernode: RunningSupernode, fetch: Fetch
) -> None:
    """A first answer that claims 10^19 bytes: the fetch keeps nothing per chunk of that
    (it would be 2.4 * 10^12 entries), and fails at the first chunk the origin cannot
    give."""
    total = 9_999_999_999_999_999_999
    head = os.urandom(CHUNK)

    def answer(seen: Seen) -> Answer:
        if seen.headers.get("range") == f"bytes=0-{CHUNK - 1}":
            headers = [("etag", '"v1"'), ("content-range", f"bytes 0-{CHUNK - 1}/{total}")]
            return Answer(206, headers, head)
        return Answer(416, [("content-range", f"bytes */{total}")])

    with trio.fail_after(30):
        _, output, task = await _fetch_from(answer, supernode, fetch, back_source=False)
    assert output is None
    assert task is not None and task.state is TaskState.FAILED
    assert "416" in str(task.error)


async def test_a_first_answer_of_unknown_length_gets_one_plain_get(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    """A chunked 206 could run on past the range it names: closed, one plain GET instead."""
    data = os.urandom(SIZE)
    origin.add("/big.bin", data, chunked=True)
    result = await fetch(origin.url("/big.bin"), supernode)
    assert Path(result.output).read_bytes() == data
    assert ["range" in g for g in _gets(origin, "/big.bin")] == [True, False]


async def test_a_digest_named_file_is_checked_whole_over_several_streams(
    origin: FakeOrigin,
    supernode: RunningSupernode,
    start_supernode: StartSupernode,
    fetch: Fetch,
    tmp_path: Path,
) -> None:
    data = os.urandom(SIZE)
    origin.add("/big.bin", data)
    named = f"sha256:{hashlib.sha256(data).hexdigest()}"
    result = await fetch(origin.url("/big.bin"), supernode, digest=named)
    assert Path(result.output).read_bytes() == data
    assert len(_gets(origin, "/big.bin")) == 5
    # The same name for content whose last chunk differs, on a supernode of its own (the
    # first one holds that name's content already): the whole file's digest fails.
    origin.add("/other.bin", data[:-1] + bytes([data[-1] ^ 1]))
    other = await start_supernode(data_dir=tmp_path / "other", origin_streams=STREAMS)
    with pytest.raises(DfgetError, match="does not match sha256:"):
        await fetch(origin.url("/other.bin"), other, digest=named, back_source=False)
    assert len(_gets(origin, "/other.bin")) == 5


async def _stopped_mid_fetch(
    nursery: trio.Nursery, node: RunningSupernode, fetch: Fetch, url: str, **fields: object
) -> None:
    """A first download of `url` through `node`, the supernode stopped once its CDN has
    five pieces (the download fails with it)."""
    failures: list[Exception] = []

    async def first() -> None:
        try:
            await fetch(url, node, name="first", back_source=False, **fields)
        except DfgetError as exc:  # its supernode goes away
            failures.append(exc)

    nursery.start_soon(first)
    await until(lambda: any(t.ready >= 5 for t in node.node.cdn.tasks.values()))
    await node.stop()  # mid-fetch
    await until(lambda: bool(failures))


async def test_a_fetch_stopped_mid_stream_resumes_after_a_restart(
    nursery: trio.Nursery, start_supernode: StartSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    """The pieces in order are kept; chunks fetched ahead of them are lost with the
    process, and the restarted fetch asks from the first piece it lacks."""
    slow = FakeOrigin(rate_limit=4 * MiB)
    await nursery.start(slow.serve)
    data = os.urandom(SIZE)
    slow.add("/f.bin", data)
    node = await start_supernode(data_dir=tmp_path / "store", origin_streams=STREAMS)
    await _stopped_mid_fetch(nursery, node, fetch, slow.url("/f.bin"))
    again = await start_supernode(data_dir=tmp_path / "store", origin_streams=STREAMS)
    result = await fetch(slow.url("/f.bin"), again, name="second")
    assert Path(result.output).read_bytes() == data
    resumed = [dict(h).get("range", "") for m, h in slow.stats["/f.bin"].requests if m == "GET"]
    assert resumed[-1].startswith("bytes=") and not resumed[-1].startswith("bytes=0-")


async def test_a_requester_refused_after_a_restart_leaves_the_kept_pieces_for_the_next(
    nursery: trio.Nursery, start_supernode: StartSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    """A fetch stopped by a shutdown resumes for the next requester the origin says yes
    to: one it refuses (no credentials) threw the kept pieces away, and the next one's
    fetch started from byte 0 (a stranger could make the CDN fetch a file again)."""
    auth = "Basic " + base64.b64encode(b"alice:secret").decode()
    slow = FakeOrigin(rate_limit=4 * MiB)
    await nursery.start(slow.serve)
    data = os.urandom(SIZE)
    slow.add("/f.bin", data, require_auth=auth)
    credentials = (("Authorization", auth),)
    node = await start_supernode(data_dir=tmp_path / "store")
    await _stopped_mid_fetch(nursery, node, fetch, slow.url("/f.bin"), headers=credentials)
    again = await start_supernode(data_dir=tmp_path / "store")
    with pytest.raises(OriginFailed) as refused:
        await fetch(slow.url("/f.bin"), again, name="stranger", back_source=False)
    assert refused.value.status == 401
    result = await fetch(slow.url("/f.bin"), again, name="second", headers=credentials)
    assert Path(result.output).read_bytes() == data
    gets = [dict(h).get("range", "") for m, h in slow.stats["/f.bin"].requests if m == "GET"]
    assert gets[-1].startswith("bytes=") and not gets[-1].startswith("bytes=0-"), gets


@pytest.mark.parametrize("streams", [1, STREAMS])
async def test_a_part_answered_for_the_whole_file_fails_the_task(
    start_supernode: StartSupernode, fetch: Fetch, streams: int
) -> None:
    """An origin that answers a plain GET with 206 and a part (as S3 does for
    `?partNumber=1`, which a requester may filter out of the task id), with the whole
    file's ETag: nothing of it is stored as the file, whose later requesters would
    revalidate against that ETag and take the part for the whole."""
    node = await start_supernode(origin_streams=streams)
    data = os.urandom(SIZE)
    part = data[: SIZE // 2]

    def answer(seen: Seen) -> Answer:
        headers = [("etag", '"whole"'), ("content-range", f"bytes 0-{len(part) - 1}/{SIZE}")]
        return Answer(206, headers, part)

    task = await _failed_task(answer, node, fetch)
    assert "206" in str(task.error)


async def test_a_206_that_names_the_whole_file_is_the_file(
    start_supernode: StartSupernode, fetch: Fetch
) -> None:
    """Some origins answer a plain GET with 206 and `bytes 0-N-1/N`: all of it."""
    node = await start_supernode()
    data = os.urandom(SIZE)

    def answer(seen: Seen) -> Answer:
        if seen.headers.get("range"):
            return Answer(416)
        headers = [("etag", '"whole"'), ("content-range", f"bytes 0-{SIZE - 1}/{SIZE}")]
        return Answer(206, headers, data)

    _, output, task = await _fetch_from(answer, node, fetch, back_source=False)
    assert output == data
    assert task is not None and task.state is TaskState.DONE


@pytest.mark.parametrize(
    ("sent", "framing"),
    [(SIZE // 2, "length"), (SIZE // 2, "chunked"), (SIZE + 4096, "chunked")],
    ids=["half-by-its-length", "half-chunked", "more-chunked"],
)
async def test_a_206_that_names_the_whole_file_and_sends_other_bytes_fails_the_task(
    start_supernode: StartSupernode, fetch: Fetch, sent: int, framing: str
) -> None:
    """The whole file named, less or more of it sent: never stored as a file of what
    came (a body without a length is held to the length the 206 names)."""
    node = await start_supernode()
    data = os.urandom(SIZE + 4096)

    def answer(seen: Seen) -> Answer:
        headers = [("etag", '"whole"'), ("content-range", f"bytes 0-{SIZE - 1}/{SIZE}")]
        if framing == "chunked":
            headers.append(("transfer-encoding", "chunked"))
        return Answer(206, headers, data[:sent])

    task = await _failed_task(answer, node, fetch)
    assert task.length in (None, SIZE)


async def test_a_range_the_origin_ignores_is_the_origins_failure(
    start_supernode: StartSupernode, fetch: Fetch
) -> None:
    """A ranged task answered 200 with the whole file: the origin failed it (dfget exit
    3, as for any origin failure), not the requester (a usage error)."""
    node = await start_supernode()
    data = os.urandom(SIZE)

    def answer(seen: Seen) -> Answer:
        return Answer(200, [("etag", '"whole"')], data)

    server = ScriptedOrigin(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        url = server.url("/big.bin")
        with pytest.raises(DfgetError) as failed:
            await fetch(url, node, headers=(("Range", "bytes=0-99"),), back_source=False)
        nursery.cancel_scope.cancel()
    assert failed.value.exit_code == 3
    assert "ignored the Range header" in str(failed.value)


async def _failed_task(
    answer: Callable[[Seen], Answer], node: RunningSupernode, fetch: Fetch
) -> CdnTask:
    """The CDN's task of a download from a ScriptedOrigin answering `answer`: failed,
    and dfget (without going to the origin itself) with no output."""
    _, output, task = await _fetch_from(answer, node, fetch, back_source=False)
    assert output is None
    assert task is not None and task.state is TaskState.FAILED
    return task
