"""dfget through the host's dfdaemon: the download is handed over on the daemon's
control socket (`dfdaemon/control.py`); the daemon fetches it as a long-lived peer (so
it stays cached and seeded after dfget exits) and streams the bytes back. dfget still
writes its own output atomically and checks `--digest` itself.

Blocking sockets and HTTP/1.0, so the daemon ends the body by Content-Length or by
closing (never chunked): a dfget that hands its download over loads neither trio nor
an HTTP library (`http.client` alone costs about 35 ms of start-up, `httpx` 80: most
of the budget of a warm download through the daemon, docs/benchmarks.md). The CLI
calls `hand_over`; the engine runs `Handoff.download` in a worker thread and calls
`Handoff.abort` when it is cancelled.

The engine's handoffs (`keep`: `dfget -r`, one download after another on each of its
jobs) speak HTTP/1.1 instead, asking for framed answers (`X-Dfget-Framed`: a length or
a descriptor, never chunks), and give the connection back once its answer is read
whole; the next handoff to the same daemon takes it (a connection, and the daemon's
accept and close, a file less). One the daemon closed while idle is dropped unused;
one that closes as the request goes is replaced once by a new connection.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dfget import passed
from dfget.errors import (
    DfgetError,
    DownloadTimeout,
    IntegrityError,
    NotAdmitted,
    OriginFailed,
    OutputError,
    SupernodeFailed,
    SupernodeUnavailable,
    UsageError,
)

if TYPE_CHECKING:  # loaded later: the CLI posts the request before it loads the rest
    from dfget.output import AtomicOutput
    from dfget.progress import Progress
    from dfget.request import DownloadRequest
    from dfget.results import DownloadResult
    from proto.digests import Hasher

CONNECT_TIMEOUT = 5.0
MAX_HEAD = 64 * 1024  # the daemon's answer head, and the body of an error or a summary
CHUNK = 1024 * 1024
SHORT_ANSWER = 10.0  # seconds for a summary, or an error's body, to come in whole
MAX_KEPT = 16  # idle kept connections to one daemon (dfget -r keeps one a job)
MAX_LISTING = 64 * 1024 * 1024  # bytes of a tree's listing from the daemon
LISTING_TIMEOUT = 300.0  # seconds for the daemon to list a tree (many index pages)
_BY_EXIT: dict[int, type[DfgetError]] = {
    error.exit_code: error
    for error in (
        UsageError,
        IntegrityError,
        SupernodeUnavailable,
        OutputError,
        SupernodeFailed,
        NotAdmitted,
    )
}


class DaemonUnreachable(Exception):
    """No daemon answers on the socket, or it broke off: dfget goes on without it."""


class _Stale(Exception):
    """A kept connection closed before any byte of its answer: ask on a new one."""


_kept_lock = threading.Lock()
_kept: dict[str, list[socket.socket]] = {}  # idle connections, by the daemon's socket path


def _kept_connection(path: str) -> socket.socket | None:
    """An idle connection to the daemon at `path` on which nothing came while it was
    kept (the daemon closes idle ones: those are dropped here), or None."""
    while True:
        with _kept_lock:
            idle = _kept.get(path)
            if not idle:
                return None
            sock = idle.pop()
        try:
            sock.settimeout(0)  # (with a timeout set, Python would wait for a byte)
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return sock  # quiet: usable
        except OSError:
            pass
        sock.close()  # closed by the daemon, or something came unasked


def _keep_connection(path: str, sock: socket.socket) -> None:
    with _kept_lock:
        idle = _kept.setdefault(path, [])
        if len(idle) < MAX_KEPT:
            idle.append(sock)
            return
    sock.close()


def request_fields(
    url: str,
    headers: Sequence[tuple[str, str]],
    digest: str | None,
    tag: str,
    filter_keys: Sequence[str],
) -> dict[str, object]:
    """The body of `POST /v1/downloads` (an S3 object's keys are added by the caller)."""
    return {
        "url": url,
        "headers": [list(h) for h in headers],
        "digest": digest,
        "tag": tag,
        "filter": list(filter_keys),
    }


class Answer:
    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        sock: socket.socket,
        early: bytes,
        passed: int | None = None,
        keeps: bool = False,
    ) -> None:
        self.status, self.headers = status, headers
        self.sock = sock  # the rest of the body is read from it
        self.early = early  # body bytes read with the head
        self.passed = passed  # the file's descriptor, when the daemon passed it over
        self.keeps = keeps  # HTTP/1.1, not closing: the connection outlives the answer


class Handoff:
    """One download handed to the daemon at `socket_path`."""

    def __init__(
        self,
        socket_path: Path,
        *,
        deadline: float | None = None,
        rate: float | None = None,
        keep: bool = False,
    ) -> None:
        self.socket_path = socket_path
        self.deadline = deadline  # time.monotonic() by which it must be done
        self.rate = rate  # bytes a second written at most (--rate-limit)
        self.keep = keep  # on a kept connection, given back when done (module docstring)
        self.aborted = False
        self._stopped = threading.Event()  # set by `abort`: ends a pause of the pacing
        self._socks: list[socket.socket] = []
        self._reused: set[socket.socket] = set()  # taken from the kept ones
        self._passed: list[int] = []  # descriptors the daemon passed over
        self._posted: socket.socket | None = None  # the download asked for, not answered
        self._request: tuple[str, str, bytes, tuple[tuple[str, str], ...]] | None = None

    def post(self, fields: dict[str, object], *, take_file: bool = False) -> None:
        """Ask the daemon for the download now (`download` reads the answer): the CLI
        does so before it loads the rest of itself, so the daemon works meanwhile.
        With `take_file`, a daemon holding the file complete may pass its descriptor
        over instead of its bytes (`x-dfget-take-file`; without --digest or
        --rate-limit, which need the bytes to pass through dfget). DaemonUnreachable if
        nothing answers on the socket."""
        extra = (("X-Dfget-Take-File", "1"),) if take_file else ()
        self._request = ("POST", "/v1/downloads", json.dumps(fields).encode(), extra)
        self._posted = self._send(*self._request)

    def post_listing(self, url: str, headers: Sequence[tuple[str, str]]) -> None:
        """Ask the daemon to list the tree at `url` (`POST /v1/listings`, for `dfget -r`:
        asked before dfget loads the rest; `listing` reads the answer). DaemonUnreachable
        if nothing answers on the socket."""
        fields = {"url": url, "headers": [list(h) for h in headers]}
        self._request = ("POST", "/v1/listings", json.dumps(fields).encode(), ())
        self._posted = self._send(*self._request)

    def listing(self) -> list[object]:
        """The files the daemon listed, as it sent them (each `[path parts, url, size,
        validator]`: the caller checks them). DaemonUnreachable if the daemon cannot
        list the tree (one without listings, or it says so), else the DfgetError the
        listing failed with."""
        assert self._posted is not None and self._request is not None
        answer = self._answer_to(self._posted, self._request, LISTING_TIMEOUT)
        raw = self._rest(answer, MAX_LISTING)
        if answer.status == 404:  # (an older daemon: no such route)
            raise DaemonUnreachable(f"{self._where()} does not list trees")
        if answer.status != 200:
            raise _error(answer.status, raw)
        try:
            entries = json.loads(raw)["entries"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise DaemonUnreachable(f"{self._where()} sent no listing: {exc}") from exc
        if not isinstance(entries, list):
            raise DaemonUnreachable(f"{self._where()} sent no listing")
        self._give_back(answer)
        return entries

    def abort(self) -> None:
        """Stop the download from another thread: its socket is shut, its next read
        ends and `download` raises DaemonUnreachable (with `aborted` set)."""
        self.aborted = True
        self._stopped.set()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def download(
        self, request: DownloadRequest, out: AtomicOutput, progress: Progress | None = None
    ) -> dict[str, object]:
        """Download through the daemon into `out` (not committed); the daemon's account
        of where the bytes came from. DaemonUnreachable, DownloadTimeout, or the
        DfgetError the daemon names."""
        if self._posted is None:
            fields = request_fields(
                request.url, request.headers, request.digest, request.tag, request.filter
            )
            if request.s3 is not None:  # the daemon's peer registers with them (as headers)
                fields["s3"] = request.s3._asdict()
            self.post(fields, take_file=not request.digest and not request.rate_limit)
        assert self._posted is not None and self._request is not None
        hasher = None
        if request.digest:
            from proto.digests import new_hasher  # (blake3: only for a digest)

            hasher = new_hasher(request.digest)
        answer = self._answer_to(self._posted, self._request)
        if answer.status != 200:
            raise _error(answer.status, self._rest(answer))
        length_text = answer.headers.get("content-length", "")
        length = _number(length_text)
        if "x-dfdaemon-file" in answer.headers:
            length = received = self._take(answer, out, progress)
        else:
            received = self._copy(answer, out, length, hasher, progress)
        if length is not None and received != length:
            raise DaemonUnreachable(f"{self._where()} sent {received} of {length} bytes")
        if hasher is not None and request.digest:
            from proto.digests import digest_matches

            if not digest_matches(request.digest, hasher):
                raise IntegrityError(f"content from dfdaemon does not match {request.digest}")
        summary = self._summary(answer)
        # Without a Content-Length the body ends by closing, whether the daemon's download
        # completed or failed half-way: only its own account tells the two apart.
        if summary.get("complete") is not True or summary.get("bytes") != received:
            raise DaemonUnreachable(f"{self._where()} broke off after {received} bytes")
        summary["bytes"] = received
        # Read whole: a body of the length named, or a passed file's answer (which has none)
        if _number(answer.headers.get("content-length", "")) is not None and not (
            answer.passed is not None and answer.early
        ):
            self._give_back(answer)
        return summary

    def _summary(self, answer: Answer) -> dict[str, object]:
        """The daemon's account of the download: in the answer's head when it held the
        file complete before it was asked, else asked for on a second connection."""
        status, text = 200, answer.headers.get("x-dfdaemon-summary")
        raw = text.encode() if text is not None else b""
        if text is None:
            key = answer.headers.get("x-dfdaemon-key", "")
            asked = ("GET", f"/v1/downloads/{key}", b"", ())
            result = self._answer_to(self._send(*asked), asked, SHORT_ANSWER)
            status, raw = result.status, self._rest(result)
            self._give_back(result)
        try:
            summary = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise DaemonUnreachable(f"{self._where()} sent no summary: {exc}") from exc
        if status != 200 or not isinstance(summary, dict):
            raise DaemonUnreachable(f"{self._where()} sent no summary ({status})")
        return summary

    def _where(self) -> str:
        return f"dfdaemon at {self.socket_path}"

    def _timeout(self, at_most: float | None) -> float | None:
        if self.aborted:
            raise DaemonUnreachable(f"{self._where()}: aborted")
        if self.deadline is None:
            return at_most
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DownloadTimeout("download did not finish within --timeout")
        return left if at_most is None else min(left, at_most)

    def _send(
        self,
        method: str,
        path: str,
        body: bytes,
        extra: Sequence[tuple[str, str]] = (),
        *,
        fresh: bool = False,
    ) -> socket.socket:
        """Send one request, for `_answer`: on a new connection, or (`keep`, unless
        `fresh`) on a kept one if there is one."""
        sock = None if fresh or not self.keep else _kept_connection(str(self.socket_path))
        reused = sock is not None
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socks.append(sock)
        version = "1.1" if self.keep else "1.0"
        head = f"{method} {path} HTTP/{version}\r\nHost: dfdaemon\r\n"
        if self.keep:
            head += "X-Dfget-Framed: 1\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in extra)
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        try:
            sock.settimeout(self._timeout(CONNECT_TIMEOUT))
            if not reused:
                sock.connect(str(self.socket_path))
            sock.sendall(head.encode() + b"\r\n" + body)
        except OSError as exc:  # (a connect timeout too)
            if reused:  # closed as the request went: once more, on a new connection
                return self._send(method, path, body, extra, fresh=True)
            raise DaemonUnreachable(f"{self._where()}: {exc}") from exc
        if reused:
            self._reused.add(sock)
        return sock

    def _answer_to(
        self,
        sock: socket.socket,
        request: tuple[str, str, bytes, Sequence[tuple[str, str]]],
        within: float | None = None,
    ) -> Answer:
        """`_answer(sock)` to `request`, asked again on a new connection if `sock` was
        a kept one that closed before any byte of the answer."""
        try:
            return self._answer(sock, within)
        except _Stale:
            return self._answer(self._send(*request, fresh=True), within)

    def _give_back(self, answer: Answer) -> None:
        """Keep the connection of an answer read whole, for the next handoff."""
        sock = answer.sock
        if not (self.keep and answer.keeps) or self.aborted or sock not in self._socks:
            return
        self._socks.remove(sock)
        self._reused.discard(sock)
        _keep_connection(str(self.socket_path), sock)

    def _answer(self, sock: socket.socket, within: float | None = None) -> Answer:
        """The status and head of the answer on `sock` (in `within` seconds, if given;
        the answer to the download itself may wait for an origin: no limit but
        --timeout's)."""
        taken: list[int] = []  # descriptors that came with the head
        try:
            sock.settimeout(self._timeout(within))
            raw = b""
            while b"\r\n\r\n" not in raw:
                if len(raw) > MAX_HEAD:
                    raise DaemonUnreachable(f"{self._where()}: answer head too large")
                try:
                    more = passed.receive(sock, CHUNK, taken)
                except ConnectionResetError:
                    if not raw and sock in self._reused:
                        raise _Stale() from None
                    raise
                if not more:
                    if not raw and sock in self._reused:
                        raise _Stale()
                    raise DaemonUnreachable(f"{self._where()} closed the connection")
                raw += more
        except TimeoutError as exc:
            passed.close_all(taken)
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise DownloadTimeout("download did not finish within --timeout") from exc
            raise DaemonUnreachable(f"{self._where()}: {exc}") from exc
        except BaseException as exc:
            passed.close_all(taken)
            if isinstance(exc, _Stale):
                self._socks.remove(sock)
                self._reused.discard(sock)
                sock.close()
            elif isinstance(exc, OSError):
                raise DaemonUnreachable(f"{self._where()}: {exc}") from exc
            raise
        if len(taken) > 1:
            passed.close_all(taken)
            raise DaemonUnreachable(f"{self._where()} passed {len(taken)} descriptors")
        self._passed.extend(taken)  # closed by `close`, whatever happens
        head_bytes, _, early = raw.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or _number(parts[1]) is None:
            raise DaemonUnreachable(f"{self._where()}: not an HTTP answer")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if self.keep and "transfer-encoding" in headers:  # (asked for framed answers)
            raise DaemonUnreachable(f"{self._where()} answered in chunks")
        keeps = parts[0] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        return Answer(int(parts[1]), headers, sock, early, taken[0] if taken else None, keeps)

    def _rest(self, answer: Answer, limit: int = MAX_HEAD) -> bytes:
        """A short body (an error, a summary, a listing of at most `limit` bytes), whole,
        within SHORT_ANSWER seconds: its Content-Length, or up to the close."""
        data = bytearray(answer.early)
        length = answer.headers.get("content-length", "")
        want = _number(length)
        want = want if want is not None and want <= limit else None
        try:
            answer.sock.settimeout(self._timeout(SHORT_ANSWER))
            while len(data) <= limit and (want is None or len(data) < want):
                more = answer.sock.recv(min(CHUNK, limit + 1 if want is None else want - len(data)))
                if not more:
                    break
                data += more
        except OSError as exc:
            raise DaemonUnreachable(f"{self._where()}: {exc}") from exc
        answer.keeps = answer.keeps and len(data) == want
        return bytes(data)

    def _copy(
        self,
        answer: Answer,
        out: AtomicOutput,
        length: int | None,
        hasher: Hasher | None,
        progress: Progress | None,
    ) -> int:
        """Write the body to `out` in order (paced by `rate`, fed to `hasher`)."""
        received, started = 0, time.monotonic()
        view = memoryview(bytearray(CHUNK))
        chunk: bytes | memoryview = answer.early
        while True:
            if chunk:
                out.write_at(received, chunk)
                if hasher is not None:
                    hasher.update(chunk)
                received += len(chunk)
                if progress is not None:
                    progress(received, length)
                if self.rate:
                    ahead = received / self.rate - (time.monotonic() - started)
                    if ahead > 0:  # (a slow rate pauses long: `abort` ends the pause)
                        self._stopped.wait(min(ahead, self._timeout(None) or ahead))
            if length is not None and received >= length:
                return received
            try:
                answer.sock.settimeout(self._timeout(None))
                count = answer.sock.recv_into(view)
            except TimeoutError as exc:
                raise DownloadTimeout("download did not finish within --timeout") from exc
            except OSError as exc:
                raise DaemonUnreachable(f"{self._where()} broke off: {exc}") from exc
            if not count:
                if self.aborted:
                    raise DaemonUnreachable(f"{self._where()}: aborted")
                return received
            chunk = view[:count]

    def _take(self, answer: Answer, out: AtomicOutput, progress: Progress | None) -> int:
        """Copy the file whose descriptor the daemon passed over (`x-dfdaemon-file`
        names its length; the answer has no body) into `out` (`dfget.passed`); the
        bytes copied."""
        fd, length = answer.passed, answer.headers["x-dfdaemon-file"]
        if fd is None or _number(length) is None:
            raise DaemonUnreachable(f"{self._where()} passed no file")
        try:
            return passed.copy(fd, int(length), out, progress, lambda: self._timeout(None))
        except passed.BadFile as exc:
            raise DaemonUnreachable(f"{self._where()} {exc}") from exc

    def close(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks.clear()
        passed.close_all(self._passed)
        self._passed.clear()


def _number(text: str) -> int | None:
    """A decimal number of ASCII digits (`"²".isdigit()` is true, `int("²")` fails)."""
    return int(text) if text.isascii() and text.isdigit() else None


def _error(status: int, raw: bytes) -> Exception:
    try:
        data = json.loads(raw)
        message, code = str(data["error"]), int(data.get("exit") or 1)  # (1e999: Overflow)
        origin_status = data.get("status")
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return DaemonUnreachable(f"dfdaemon answered {status} without an explanation")
    if data.get("fallback") is True:  # the daemon cannot serve this one: go on without it
        return DaemonUnreachable(f"dfdaemon: {message}")
    if code == OriginFailed.exit_code:
        return OriginFailed(message, origin_status if isinstance(origin_status, int) else None)
    return _BY_EXIT.get(code, DfgetError)(message)


def hand_over(
    request: DownloadRequest,
    progress: Progress | None = None,
    posted: Handoff | None = None,
    started: float | None = None,
) -> DownloadResult | None:
    """The CLI's download through the daemon, output committed; None if no daemon
    answers (said as a warning when the socket was given), for dfget to go on alone.
    `posted`: the same download already asked of the daemon (at `started`)."""
    assert request.daemon_socket is not None
    started = time.monotonic() if started is None else started
    handoff = posted or Handoff(request.daemon_socket)
    handoff.deadline = None if request.timeout is None else started + request.timeout
    handoff.rate = request.rate_limit
    return download_file(handoff, request, progress, started)


def download_file(
    handoff: Handoff,
    request: DownloadRequest,
    progress: Progress | None = None,
    started: float | None = None,
) -> DownloadResult | None:
    """`request` through `handoff` (closed after), its output committed; None if the
    daemon cannot serve it (said as a warning when its socket was named, unless the
    handoff was aborted), for dfget to go on without it."""
    import logging

    from common.urls import display_url
    from dfget.output import AtomicOutput
    from dfget.results import DownloadResult

    started = time.monotonic() if started is None else started
    log = logging.getLogger("dfget")
    try:
        task_id = request.task_id()  # UsageError (the daemon, if asked already, says 400)
        with AtomicOutput(request.output) as out:
            try:
                summary = handoff.download(request, out, progress)
            except DaemonUnreachable as exc:
                if not handoff.aborted:
                    warn = log.warning if request.daemon_warn else log.debug
                    warn("%s: %s: going on without it", display_url(request.url), exc)
                return None
            out.commit()
    finally:
        handoff.close()
    return DownloadResult.from_daemon(
        summary,
        task_id=task_id,
        url=request.url,
        output=str(request.output),
        seconds=time.monotonic() - started,
        daemon=str(request.daemon_socket),
    )


__all__ = ["DaemonUnreachable", "Handoff", "download_file", "hand_over"]
