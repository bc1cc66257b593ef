"""What dfget reads from a daemon it hands a download to (`dfget.handoff`, a parser of
HTTP answers written by hand, and `dfget.passed`): whatever the answer on the control
socket (its status line, headers, body, a descriptor passed with it, the summary asked
for after), dfget ends with the file written whole as the daemon's account says, or
with `None` (it goes on without the daemon) or a `DfgetError`, and then leaves no file
and no temporary file behind, nor a descriptor open.

The daemon is a thread on a real Unix socket answering each connection's request with
the fuzzed bytes (and descriptor); dfget runs `download_file` as its CLI does.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from fuzz_strategies import byte_mutations, fuzz_settings, mutate
from hypothesis import example, given
from hypothesis import strategies as st

from dfget.errors import DfgetError
from dfget.handoff import hand_over
from dfget.request import DownloadRequest
from dfget.results import DownloadResult

CONTENT = b"the file, as the daemon holds it\n" * 3  # 99 bytes


def summary(size: int, complete: bool = True) -> dict[str, object]:
    return {
        "bytes": size,
        "complete": complete,
        "cached": True,
        "from_cdn": size,
        "from_peers": 0,
        "from_source": 0,
        "supernode": "127.0.0.1:8002",
        "piece_size": 4 << 20,
        "pieces": 1,
    }


def head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


# Answers a daemon could send, right and wrong: a body, a passed file, an error.
def good_body() -> bytes:
    key = [("X-Dfdaemon-Key", "ab" * 32), ("Content-Length", str(len(CONTENT)))]
    return head(200, key) + CONTENT


def good_passed() -> bytes:
    fields = [("X-Dfdaemon-File", str(len(CONTENT))), ("Content-Length", "0")]
    fields.append(("X-Dfdaemon-Summary", json.dumps(summary(len(CONTENT)))))
    return head(200, fields)


def error_answer(status: int, body: dict[str, object]) -> bytes:
    raw = json.dumps(body).encode()
    return head(status, [("Content-Length", str(len(raw)))]) + raw


SEEDS = [
    good_body(),
    good_passed(),
    error_answer(502, {"error": "origin answered 404", "exit": 3, "status": 404}),
    error_answer(409, {"error": "busy", "exit": 1, "fallback": True}),
    error_answer(400, {"error": "bad", "exit": 2}),
    head(200, [("X-Dfdaemon-Key", "00")]) + CONTENT,  # no length: the body ends by closing
    head(200, [("Transfer-Encoding", "chunked")]) + b"5\r\nhello\r\n0\r\n\r\n",
]
TRAPS = [
    b"",
    b"HTTP/1.1 200",
    b"HTTP/1.1 2\xc2\xb200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: \xc2\xb2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n" + CONTENT,
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n" + CONTENT,
    b"HTTP/1.1 200 OK\r\nX-Dfdaemon-File: 99\r\n\r\n",  # a file named, none passed
    b"HTTP/1.1 200 OK\r\nX-Dfdaemon-File: 5\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Dfdaemon-Summary: [1e999]\r\nContent-Length: 99\r\n\r\n" + CONTENT,
    b"HTTP/1.1 502 X\r\nContent-Length: 30\r\n\r\n" + b'{"error": "x", "exit": 1e999}',
    b"HTTP/1.1 502 X\r\nContent-Length: 25\r\n\r\n" + b'{"error": [], "exit": "7"}',
    b"HTTP/1.1 502 X\r\n\r\n" + b"[" * 50_000,
    b"X" * 70_000,  # a head past its bound
    b"HTTP/1.1 200 OK\r\n" + b"A: b\r\n" * 20_000 + b"\r\n",
]
SUMMARIES = [
    head(200, [("Content-Length", "100")]) + json.dumps(summary(99)).encode().ljust(100),
    error_answer(200, summary(99, complete=False)),
    error_answer(200, summary(98)),
    error_answer(404, {"error": "no such download"}),
    head(200, [("Content-Length", "9")]) + b"[1, 2, 3]",
    b"HTTP/1.1 200 OK\r\n\r\n" + b"{" * 30_000,
]


@dataclass
class Passed:
    """What goes with the answer's head: nothing, a file of `size` bytes of CONTENT (its
    first), a folder, or a pipe."""

    kind: str  # "none", "file", "folder", "pipe", "two"
    size: int = len(CONTENT)


passed_things = st.sampled_from(["none", "file", "file", "folder", "pipe", "two"]).flatmap(
    lambda kind: st.builds(Passed, st.just(kind), st.sampled_from([len(CONTENT), 0, 50, 200]))
)
answers = (
    st.sampled_from(SEEDS + TRAPS)
    | st.builds(mutate, st.sampled_from(SEEDS), byte_mutations)
    | st.builds(
        lambda status, headers, body: head(status, headers) + body,
        st.sampled_from([200, 200, 404, 409, 502, 100, 999]),
        st.lists(
            st.tuples(
                st.sampled_from(
                    [
                        "Content-Length",
                        "X-Dfdaemon-File",
                        "X-Dfdaemon-Summary",
                        "X-Dfdaemon-Key",
                        "Connection",
                        "Transfer-Encoding",
                    ]
                ),
                st.sampled_from(["0", "5", "99", "100", "", "x", "close", "ab" * 32])
                | st.just(json.dumps(summary(99)))
                | st.text(max_size=12),
            ),
            max_size=5,
        ),
        st.sampled_from([b"", CONTENT, CONTENT[:50], CONTENT + b"x"]),
    )
)


def descriptors(passed: Passed, work: Path) -> list[int]:
    """The descriptors to pass (the caller closes them after sending)."""
    if passed.kind == "none":
        return []
    if passed.kind == "folder":
        return [os.open(work, os.O_RDONLY)]
    if passed.kind == "pipe":
        read, write = os.pipe()
        os.write(write, CONTENT)
        os.close(write)
        return [read]
    path = work / "held"
    path.write_bytes((CONTENT * 3)[: passed.size])
    fd = os.open(path, os.O_RDONLY)
    return [fd, os.dup(fd)] if passed.kind == "two" else [fd]


class FakeDaemon:
    """A daemon on a Unix socket: each POST answered with `answer` (and the passed
    descriptors), each GET with `summary_answer`; then the connection is closed."""

    def __init__(self, path: Path, answer: bytes, fds: list[int], summary_answer: bytes) -> None:
        self.answer, self.fds, self.summary_answer = answer, fds, summary_answer
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.listener.settimeout(0.01)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:
                    more = conn.recv(65536)
                    if not more:
                        break
                    request += more
                if request.startswith(b"POST"):
                    rights = array.array("i", self.fds).tobytes()
                    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)] if self.fds else []
                    first = self.answer[:4096] or b""
                    conn.sendmsg([first], ancillary)
                    conn.sendall(self.answer[4096:])
                else:
                    conn.sendall(self.summary_answer)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.listener.close()


def account(answer: bytes, summary_answer: bytes) -> dict[str, object]:
    """The daemon's account of the download, as it sent it: its answer's
    `X-Dfdaemon-Summary` (the last one), else the summary answer's body."""
    raw = summary_answer.partition(b"\r\n\r\n")[2]
    for line in answer.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "x-dfdaemon-summary":
            raw = value.strip().encode("latin-1")
    try:
        said = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return said if isinstance(said, dict) else {}


def open_descriptors() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.mark.parametrize("answer", SEEDS + TRAPS)
@pytest.mark.parametrize("kind", ["none", "file"])
def test_each_known_answer_ends_in_a_whole_file_or_a_clean_failure(
    answer: bytes, kind: str
) -> None:
    check(answer, Passed(kind), SUMMARIES[0])


@fuzz_settings(250, deadline_ms=None)
@given(answer=answers, passed=passed_things, summary_answer=st.sampled_from(SUMMARIES))
@example(answer=good_passed(), passed=Passed("two"), summary_answer=SUMMARIES[0])
@example(answer=good_passed(), passed=Passed("file", 200), summary_answer=SUMMARIES[0])
@example(answer=good_passed(), passed=Passed("pipe"), summary_answer=SUMMARIES[0])
@example(answer=good_passed(), passed=Passed("folder"), summary_answer=SUMMARIES[0])
@example(answer=good_body(), passed=Passed("none"), summary_answer=SUMMARIES[2])
def test_dfget_takes_only_a_whole_file_from_the_daemon(
    answer: bytes, passed: Passed, summary_answer: bytes
) -> None:
    check(answer, passed, summary_answer)


def check(answer: bytes, passed: Passed, summary_answer: bytes) -> None:
    work = Path(tempfile.mkdtemp(prefix="dfh-", dir="/tmp"))
    try:
        before = open_descriptors()
        fds = descriptors(passed, work)
        daemon = FakeDaemon(work / "d.sock", answer, fds, summary_answer)
        for fd in fds:  # (the daemon's copies travel in the message)
            os.close(fd)
        out = work / "out" / "file"
        out.parent.mkdir()
        request = DownloadRequest(
            url="http://198.18.0.1/file", output=out, daemon_socket=work / "d.sock", timeout=10
        )
        try:
            result = hand_over(request)
        except DfgetError:
            result = None
        finally:
            daemon.stop()
        if result is None:
            assert list(out.parent.iterdir()) == []  # no file, no temporary one
        else:
            # Only bytes the daemon sent, in order: its body (after the head) or the
            # file it passed; as many as its account says.
            assert isinstance(result, DownloadResult)
            written = out.read_bytes()
            sent = answer.partition(b"\r\n\r\n")[2]
            held = (CONTENT * 3)[: passed.size] if passed.kind in ("file", "two") else None
            assert written == sent[: len(written)] or written == held
            assert result.bytes == len(written)
            said = account(answer, summary_answer)  # (whole, as the daemon said: not cut)
            assert said.get("complete") is True and said.get("bytes") == len(written)
            assert [p.name for p in out.parent.iterdir()] == ["file"]
        assert open_descriptors() <= before  # dfget closed what it was passed
    finally:
        shutil.rmtree(work, ignore_errors=True)
