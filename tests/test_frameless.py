"""Errors kept to be raised again (`common.frameless`): a copy keeps the error's type,
message, attributes and chain, and none of the frames it came through, so what those
frames held (a download's buffers, a request's keys) goes when they end. Where they are
kept: a failed CDN task's (its waiters each raise their own copy), a failed blob's in a
daemon; a broken session's is in tests/test_sessions.py, and what a failed fetch's
error no longer holds in tests/test_cdn_parts.py."""

from __future__ import annotations

import errno
import gc
import socket
import weakref
from functools import partial

import pytest
import trio
from conftest import Fetch, StartDaemon, StartSupernode, until

from common.frameless import CHAIN, frameless
from dfdaemon.blob import Blob
from dfget.errors import OriginFailed
from proto.errors import ConnectionLost
from supernode.cdn.task import TaskSpec
from supernode.errors import ContentMismatch, OriginStatusError, SupernodeError
from testkit.origin import FakeOrigin


class Held:
    """Something a frame holds (a buffer, a request)."""


def fails_holding(held: Held) -> None:
    local = held  # noqa: F841 (in the frame, as a download's buffers are)
    raise OriginStatusError("http://origin/f.bin", 404, "Not Found")


def caught(held: Held) -> ContentMismatch:
    try:
        try:
            fails_holding(held)
        except OriginStatusError as exc:
            raise ContentMismatch("not the blob named") from exc
    except ContentMismatch as exc:
        return exc
    raise AssertionError("not raised")


def chain(exc: BaseException | None) -> list[BaseException]:
    out = []
    while exc is not None:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def test_a_copy_keeps_the_error_and_its_chain_without_a_traceback() -> None:
    original = caught(Held())
    copy = frameless(original)
    assert copy is not original and type(copy) is ContentMismatch
    assert str(copy) == "not the blob named" and copy.args == original.args
    cause = copy.__cause__
    assert isinstance(cause, OriginStatusError) and cause is not original.__cause__
    assert cause.status == 404 and str(cause) == str(original.__cause__)
    assert [e.__traceback__ for e in chain(copy)] == [None, None]
    # The original is left as it was (it may still be on its way up).
    assert all(e.__traceback__ is not None for e in chain(original))


def test_what_the_frames_held_goes_once_only_the_copy_is_kept() -> None:
    held = Held()
    gone = weakref.ref(held)
    original = caught(held)
    del held
    gc.collect()
    assert gone() is not None  # (the original's traceback holds the frame)
    kept = frameless(original)
    del original
    gc.collect()
    assert gone() is None
    assert str(kept) == "not the blob named"


def test_copies_raised_to_each_waiter_keep_none_of_each_others_frames() -> None:
    kept = frameless(caught(Held()))
    raised = []
    for _ in range(3):
        try:
            raise frameless(kept)
        except ContentMismatch as exc:
            raised.append(exc)
    assert len({id(exc) for exc in raised}) == 3
    assert kept.__traceback__ is None  # (raising copies adds nothing to it)
    depth = [len(list(_frames(exc.__traceback__))) for exc in raised]
    assert depth == [1, 1, 1]


def _frames(tb: object) -> list[object]:
    out = []
    while tb is not None:
        out.append(tb)
        tb = getattr(tb, "tb_next", None)
    return out


def test_errors_of_every_shape_are_copied_whole() -> None:
    lost = frameless(ConnectionLost("closed by the peer", clean=True))  # (keyword-only init)
    assert str(lost) == "closed by the peer" and lost.clean is True
    missing = frameless(FileNotFoundError(errno.ENOENT, "No such file", "/a/b"))
    assert str(missing) == "[Errno 2] No such file: '/a/b'" and missing.errno == errno.ENOENT
    group = frameless(ExceptionGroup("two", [ValueError(1), KeyError(2)]))
    assert [type(e) for e in group.exceptions] == [ValueError, KeyError]
    assert frameless(StopIteration(5)).value == 5  # (fields a built-in keeps of its own)
    assert frameless(SystemExit(3)).code == 3
    undecodable = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    assert str(frameless(undecodable)) == str(undecodable)
    noted = ValueError("x")
    noted.add_note("a note")
    copy = frameless(noted)
    copy.add_note("the copy's")
    assert copy.__notes__ == ["a note", "the copy's"] and noted.__notes__ == ["a note"]
    try:
        raise RuntimeError("during")
    except RuntimeError:
        try:
            raise ValueError("after")
        except ValueError as exc:
            context = frameless(exc).__context__
    assert isinstance(context, RuntimeError) and context.__traceback__ is None


class Picky(Exception):
    """Made only through its own `__new__`, with an argument it does not keep."""

    def __new__(cls, *args: object, secret: str = "") -> Picky:
        if secret != "open":
            raise TypeError("not like that")
        return super().__new__(cls, *args)

    def __init__(self, *args: object, secret: str = "") -> None:
        super().__init__(*args)


def test_an_error_that_cannot_be_copied_is_given_back_not_raised() -> None:
    picky = Picky("kept", secret="open")
    assert frameless(picky) is picky
    outer = ValueError("outer")
    outer.__cause__ = picky
    assert frameless(outer).__cause__ is picky  # (the rest of the chain is still copied)


def test_a_long_chain_is_cut() -> None:
    exc: BaseException = ValueError(0)
    for depth in range(1, 3 * CHAIN):
        exc, exc.__cause__ = ValueError(depth), exc
    assert len(chain(frameless(exc))) == CHAIN + 1
    assert len(chain(frameless(exc, 2))) == 3


async def test_trios_cancelled_keeps_its_fields() -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled) as cancelled:
            await trio.sleep(1)
    copy = frameless(cancelled.value)
    assert type(copy) is trio.Cancelled and copy.__traceback__ is None
    assert repr(copy) == repr(cancelled.value)


# -- where errors are kept ------------------------------------------------------------------


async def test_a_failed_tasks_waiters_each_raise_an_error_of_their_own(
    start_supernode: StartSupernode, nursery: trio.Nursery
) -> None:
    # An origin that answers nothing: it holds each connection until both requesters
    # wait for the task, then closes it (the task fails before its first piece).
    gate = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        await gate.wait()
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    node = await start_supernode()
    cdn = node.node.cdn
    spec = TaskSpec.from_request(f"http://127.0.0.1:{port}/f.bin", ())
    raised: list[BaseException] = []

    async def waiter() -> None:
        with pytest.raises(SupernodeError) as failed:
            await cdn.open_task(spec)
        raised.append(failed.value)

    async with trio.open_nursery() as waiting:
        waiting.start_soon(waiter)
        await until(lambda: spec.task_id in cdn.tasks)
        waiting.start_soon(waiter)
        await trio.sleep(0.2)  # (both waiting)
        gate.set()
    error = cdn.tasks[spec.task_id].error
    assert error is not None and error.__traceback__ is None
    # Nor its causes: an origin client's error holds its request, the requester's
    # headers with it, and a peer is told the kind and message alone.
    assert error.__cause__ is None and error.__context__ is None
    assert len({id(exc) for exc in [error, *raised]}) == 3
    assert {str(exc) for exc in raised} == {str(error)}


async def test_a_failed_blob_keeps_its_error_without_frames(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon, fetch: Fetch
) -> None:
    origin.add("/gone.bin", b"x", status=404)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    assert daemon.blobs is not None
    ended = []
    report = daemon.blobs.on_result

    def on_result(blob: Blob) -> None:
        ended.append(blob)
        report(blob)

    daemon.blobs.on_result = on_result
    with pytest.raises(OriginFailed):
        await fetch(origin.url("/gone.bin"), None, daemon_socket=daemon.socket_path)
    (blob,) = ended
    assert isinstance(blob.error, OriginFailed)
    assert chain(blob.error) == [blob.error] and blob.error.__traceback__ is None


async def test_a_failed_blob_keeps_no_cause_and_so_no_request_of_its_requester(
    start_daemon: StartDaemon, fetch: Fetch
) -> None:
    # The origin refuses the connection: the download's error is caused by the HTTP
    # client's, which holds its request, the requester's Authorization with it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/private.bin"
    daemon = await start_daemon("host1", "http://127.0.0.1:1", None)
    assert daemon.blobs is not None
    ended: list[Blob] = []
    daemon.blobs.on_result = ended.append
    headers = (("Authorization", "Bearer the-requesters-secret"),)
    with pytest.raises(OriginFailed):
        await fetch(url, None, daemon_socket=daemon.socket_path, headers=headers)
    (blob,) = ended
    assert isinstance(blob.error, OriginFailed) and "connect" in str(blob.error)
    assert blob.error.__cause__ is None and blob.error.__context__ is None
