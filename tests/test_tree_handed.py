"""`dfget -r` through a daemon (`dfget/tree/handed.py`): the daemon lists the tree and
serves its files to worker threads, with neither trio nor an HTTP library loaded in
dfget; what the daemon cannot do is left to the in-process run, and what it says is
checked like any listing (nothing is written outside DIR)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import PYTHON, RequestReader, RunningSupernode, StartDaemon, cli_env, until
from registry import needs_nginx
from test_tree import FILES, Site, site, summary_of, tree_of  # noqa: F401 (a fixture)

from dfget import handoff

pytestmark = needs_nginx
RUN_TIMEOUT = 60.0
Route = Callable[[str, bytes], Awaitable[bytes | None]]  # (path, body) -> answer, or close


async def dfget_r(
    url: str, out: Path, sock: Path, *flags: str, python: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[bytes]:
    """`dfget -r URL -o OUT --json` with the daemon at `sock`, no supernode."""
    argv = [PYTHON, *python, "-m", "dfget", "-r", url, "-o", str(out), "--json", *flags]
    argv += ["--supernode", "", "--daemon-socket", str(sock)]
    with trio.fail_after(RUN_TIMEOUT):
        return await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, check=False, env=cli_env()
        )


async def fake_daemon(nursery: trio.Nursery, path: Path, route: Route) -> None:
    """A control socket at `path` answering each request (HTTP/1.1, kept alive) with
    what `route(path, body)` makes of it: a whole answer, or None to close."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(16)

    async def one(stream: trio.SocketStream) -> None:
        async with stream:
            requests = RequestReader(stream)
            while (request := await requests.next()) is not None:
                line, body = request
                answer = await route(line.split(" ")[1], body)
                if answer is None:
                    return
                await stream.send_all(answer)

    nursery.start_soon(trio.serve_listeners, one, [trio.SocketListener(sock)])


def answer(status: int, body: bytes, *headers: str) -> bytes:
    head = f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n"
    return (head + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode() + body


def listing(entries: list[list[Any]]) -> bytes:
    return answer(200, json.dumps({"entries": entries}).encode())


def file_answer(data: bytes) -> bytes:
    summary = json.dumps({"bytes": len(data), "complete": True})
    return answer(200, data, f"x-dfdaemon-summary: {summary}")


FALLBACK = answer(409, json.dumps({"error": "not here", "exit": 1, "fallback": True}).encode())


async def test_the_daemon_lists_the_tree_and_serves_it_without_trio_in_dfget(
    site: Site,  # noqa: F811
    tmp_path: Path,
    supernode: RunningSupernode,
    start_daemon: StartDaemon,
) -> None:
    daemon = await start_daemon("host1", "http://127.0.0.1:1", supernode)
    out = tmp_path / "out"
    done = await dfget_r(site.url("json"), out, daemon.socket_path, python=("-X", "importtime"))
    summary = summary_of(done)
    assert tree_of(out) == FILES
    assert summary["listed"] == summary["done"] == len(FILES)
    assert {f["download"]["daemon"] for f in summary["files"]} == {str(daemon.socket_path)}
    loaded = {line.split("|")[-1].strip() for line in done.stderr.decode().splitlines()}
    assert "dfget.tree.handed" in loaded
    assert not {"trio", "httpx", "dfget.engine"} & loaded
    # A re-run skips what is complete and unchanged; a change upstream is fetched again.
    again = summary_of(await dfget_r(site.url("json"), out, daemon.socket_path))
    assert again["skipped"] == len(FILES) and again["done"] == 0
    changed = site.root / "sub" / "b.json"
    changed.write_bytes(b'{"b": 2}')
    later = changed.stat().st_mtime_ns + 5 * 10**9
    os.utime(changed, ns=(later, later))
    third = summary_of(await dfget_r(site.url("json"), out, daemon.socket_path))
    assert [f["path"] for f in third["files"] if f["status"] == "done"] == ["sub/b.json"]
    assert (out / "sub" / "b.json").read_bytes() == b'{"b": 2}'


async def test_an_html_tree_rerun_asks_its_heads_in_process(
    site: Site,  # noqa: F811
    tmp_path: Path,
    supernode: RunningSupernode,
    start_daemon: StartDaemon,
) -> None:
    """HTML index pages name no versions: a re-run's files are left to the in-process
    run, which asks each one's HEAD before it skips it."""
    daemon = await start_daemon("host1", "http://127.0.0.1:1", supernode)
    out = tmp_path / "out"
    first = summary_of(await dfget_r(site.url("html"), out, daemon.socket_path))
    assert first["done"] == len(FILES) and tree_of(out) == FILES
    again = summary_of(await dfget_r(site.url("html"), out, daemon.socket_path))
    assert again["listed"] == again["skipped"] == len(FILES)
    assert len(site.connections("HEAD")) >= len(FILES)


NOT_LISTED = {
    # an older daemon, without listings
    "none": answer(404, b'{"error": "no such route: POST /v1/listings"}'),
    "garbled": listing([[1, 2, 3, 4]]),
    # files on another host, where the user's -H headers would go: as dfget's own
    # lister keeps them, a listing's files must be below the tree asked for
    "elsewhere": listing([[["a.txt"], "http://127.0.0.1:1/a.txt", 5, None]]),
}


@pytest.mark.parametrize("kind", list(NOT_LISTED))
async def test_a_daemon_that_does_not_list_the_tree_leaves_it_to_dfget(
    site: Site,  # noqa: F811
    tmp_path: Path,
    nursery: trio.Nursery,
    kind: str,
) -> None:
    async def unlisted(path: str, body: bytes) -> bytes | None:
        if path == "/v1/listings":
            return NOT_LISTED[kind]
        return None  # (downloads: it breaks off, dfget goes on without it)

    await fake_daemon(nursery, tmp_path / "d.sock", unlisted)
    out = tmp_path / "out"
    done = await dfget_r(site.url("json"), out, tmp_path / "d.sock", "-H", "Authorization: x")
    summary = summary_of(done)
    assert tree_of(out) == FILES and summary["done"] == len(FILES)
    assert summary["from_source"] == sum(len(data) for data in FILES.values())
    assert (b"not one" in done.stderr) is (kind != "none")


async def test_files_the_daemon_cannot_serve_are_left_to_the_in_process_run(
    site: Site,  # noqa: F811
    tmp_path: Path,
    nursery: trio.Nursery,
) -> None:
    base = site.url("json")
    asked: list[str] = []

    async def picky(path: str, body: bytes) -> bytes | None:
        if path == "/v1/listings":
            return listing([[name.split("/"), base + name, None, None] for name in FILES])
        url = json.loads(body)["url"]
        asked.append(url)
        name = url.removeprefix(base)
        return FALLBACK if name == "a.txt" else file_answer(FILES[name])

    await fake_daemon(nursery, tmp_path / "d.sock", picky)
    summary = summary_of(await dfget_r(base, tmp_path / "out", tmp_path / "d.sock"))
    assert tree_of(tmp_path / "out") == FILES
    assert summary["listed"] == summary["done"] == len(FILES)
    by_name = {f["path"]: f["download"] for f in summary["files"]}
    assert by_name["a.txt"]["daemon"] is None and by_name["a.txt"]["from_source"] == 5
    assert all(by_name[name]["daemon"] for name in FILES if name != "a.txt")
    assert asked.count(base + "a.txt") == 2  # (handed, then once more by the engine)


async def test_a_hostile_listing_from_the_daemon_writes_nothing_outside_dir(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    base = "http://127.0.0.1:1/t/"
    served: list[str] = []

    async def hostile(path: str, body: bytes) -> bytes | None:
        if path == "/v1/listings":
            return listing(
                [
                    [["..", "escaped.txt"], base + "x", 1, None],
                    [["sub", "..", "..", "escaped.txt"], base + "y", 1, None],
                    [["/etc", "passwd"], base + "z", 1, None],
                    [[".dfget-tree.json"], base + "m", 1, None],
                    [["ok.txt"], base + "ok.txt", 2, "v1"],
                    [["ok.txt"], base + "ok-again.txt", 2, "v1"],
                ]
            )
        url = json.loads(body)["url"]
        served.append(url)
        return file_answer(b"ok")

    await fake_daemon(nursery, tmp_path / "d.sock", hostile)
    out = tmp_path / "deep" / "out"
    done = await dfget_r(base, out, tmp_path / "d.sock")
    summary = json.loads(done.stdout)
    assert done.returncode != 0 and "Traceback" not in done.stderr.decode()
    assert summary["refused"] == 5 and summary["done"] == 1
    assert served == [base + "ok.txt"]
    assert sorted(os.listdir(tmp_path)) == ["d.sock", "deep"]
    assert sorted(os.listdir(tmp_path / "deep")) == ["out"]
    assert (out / "ok.txt").read_bytes() == b"ok"


async def test_a_folder_swapped_for_a_symlink_while_the_daemon_serves_takes_nothing_out(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The same swap as test_tree's, with the file handed over by a daemon: dfget writes
    it into the folder it checked, never through the symlink."""
    base = "http://127.0.0.1:1/t/"
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"

    async def swapping(path: str, body: bytes) -> bytes | None:
        if path == "/v1/listings":
            return listing([[["sub", "f.txt"], base + "sub/f.txt", 8, "v1"]])
        (out / "sub").rename(out / "moved")  # dfget has made and checked `sub`
        (out / "sub").symlink_to(outside)
        return file_answer(b"the file")

    await fake_daemon(nursery, tmp_path / "d.sock", swapping)
    done = await dfget_r(base, out, tmp_path / "d.sock")
    summary = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr.decode()
    assert summary["done"] == 1
    assert summary["files"][0]["download"]["output"] == str(out / "sub" / "f.txt")
    assert os.listdir(outside) == []
    assert (out / "moved" / "f.txt").read_bytes() == b"the file"


async def test_the_daemons_listing_error_is_dfgets(
    site: Site,  # noqa: F811
    tmp_path: Path,
    supernode: RunningSupernode,
    start_daemon: StartDaemon,
) -> None:
    """An index that answers 404 to the daemon fails as it would in dfget: exit 3."""
    daemon = await start_daemon("host1", "http://127.0.0.1:1", supernode)
    done = await dfget_r(f"{site.base}/json/nothing-here/", tmp_path / "out", daemon.socket_path)
    assert done.returncode == 3, done.stderr.decode()
    assert b"answered 404" in done.stderr and b"Traceback" not in done.stderr


def test_a_kept_connection_with_a_timeout_is_taken_without_waiting(tmp_path: Path) -> None:
    """A kept connection's check is a peek that must not wait for a byte, whatever
    timeout its last answer left on the socket."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ours.settimeout(30)
        key = str(tmp_path / "d.sock")
        handoff._keep_connection(key, ours)
        taken: list[socket.socket | None] = []
        worker = threading.Thread(target=lambda: taken.append(handoff._kept_connection(key)))
        worker.start()
        worker.join(5)
        assert not worker.is_alive() and taken == [ours]
        handoff._keep_connection(key, ours)
        theirs.close()  # closed while kept: dropped, not taken
        assert handoff._kept_connection(key) is None
    finally:
        ours.close()
        theirs.close()


async def test_to_stdout_a_download_through_the_daemon_streams_unframed(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """`-o -` through the daemon asks as before (HTTP/1.0, no framing asked): the daemon
    streams a file of unknown length as it comes, not once it is whole."""
    heads: list[bytes] = []

    async def streaming(stream: trio.SocketStream) -> None:
        async with stream:
            heads.append(await stream.receive_some())
            summary = json.dumps({"bytes": 3, "complete": True})
            await stream.send_all(
                f"HTTP/1.0 200 OK\r\nx-dfdaemon-summary: {summary}\r\n\r\nabc".encode()
            )

    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(tmp_path / "d.sock"))
    sock.listen(4)
    nursery.start_soon(trio.serve_listeners, streaming, [trio.SocketListener(sock)])
    argv = [PYTHON, "-m", "dfget", "http://127.0.0.1:1/f.bin", "-o", "-", "--supernode", ""]
    argv += ["--daemon-socket", str(tmp_path / "d.sock")]
    with trio.fail_after(RUN_TIMEOUT):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, env=cli_env())
    assert done.stdout == b"abc", done.stderr
    assert heads and heads[0].split(b"\r\n")[0].endswith(b"HTTP/1.0")
    assert b"x-dfget-framed" not in heads[0].lower()


def test_a_worker_that_meets_the_unexpected_records_a_failure(tmp_path: Path) -> None:
    """A bug, or a daemon's answer nothing expected, fails that file; the other files
    go on and the exit code says so (the in-process run would have crashed)."""
    from dfget.request import DownloadRequest
    from dfget.tree.entries import Entry
    from dfget.tree.handed import _Runner
    from dfget.tree.results import TreeResult

    template = DownloadRequest(url="http://h/t/", output=tmp_path, daemon_socket=tmp_path / "s")
    outcome = TreeResult(url=template.url, root=str(tmp_path))
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    runner = _Runner(template, tmp_path, root_fd, None, outcome)
    entries = [Entry(("a",), "http://h/t/a"), Entry(("b",), "http://h/t/b")]

    def one(entry: Entry) -> None:
        if entry.name == "a":
            raise ValueError("unexpected")
        return None  # (left over)

    runner._one = one  # type: ignore[method-assign]
    try:
        assert runner.run(entries, 1) == [entries[1]]
    finally:
        os.close(root_fd)
    assert [(f.name, f.status) for f in outcome.files] == [("a", "failed")]
    assert outcome.exit_code == 1 and "unexpected" in (outcome.files[0].error or "")


def test_numbers_in_a_daemons_answer_are_ascii_digits() -> None:
    assert handoff._number("123") == 123
    assert handoff._number("²") is None and handoff._number("١٢") is None
    assert handoff._number("") is None and handoff._number("-1") is None


def test_a_listed_url_must_be_a_file_below_the_tree() -> None:
    from dfget.tree.handed import _entries

    root = "http://h:8080/tree/"

    def ok(url: str, size: object = 1) -> bool:
        return _entries([[["f"], url, size, None]], root) is not None

    assert ok("http://h:8080/tree/f") and ok("HTTP://H:8080/tree/sub/f") and ok(root + "f", None)
    for url in (
        "http://h:8080/tree/",  # the folder itself
        "http://h:8080/other/f",
        "http://h/tree/f",  # another port
        "http://x@h:8080/tree/f",  # userinfo: another authority
        "https://h:8080/tree/f",
        "http://h:8080/tree/../admin/secret",
        "http://h:8080/tree/%2e%2E/admin",
        "http://h:8080/tree/sub/./f",
        "http://h:8080/tree/a\\..\\b",
        "http://other:8080/tree/f",
    ):
        assert not ok(url), url
    assert not ok(root + "f", True) and not ok(root + "f", -1) and not ok(root + "f", "1")


def test_a_daemons_listing_beyond_the_tree_limits_is_not_taken() -> None:
    # (a daemon lists within ListLimits; one that lies must not have dfget make folders
    # 200 deep or 150,000 files: dfget lists the tree itself, within them)
    from dfget.tree.entries import ListLimits
    from dfget.tree.handed import _entries

    root, limits = "http://h/t/", ListLimits()
    deepest = ["d"] * limits.max_depth + ["f"]
    assert _entries([[deepest, root + "/".join(deepest), 1, None]], root) is not None
    deeper = ["d"] * (limits.max_depth + 1) + ["f"]
    assert _entries([[deeper, root + "/".join(deeper), 1, None]], root) is None
    count = limits.max_entries + 1
    many: list[object] = [[[f"f{i}"], f"{root}f{i}", 1, None] for i in range(count)]
    assert _entries(many, root) is None
    assert _entries(many[:-1], root) is not None


async def test_ctrl_c_stops_the_workers_and_leaves_no_partial_file(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Ctrl-C while files are being handed over: the workers' downloads are aborted,
    dfget exits 130, the files already in place are recorded in the manifest and no
    temp file is left in DIR."""
    base = "http://127.0.0.1:1/t/"
    names = [f"f{n}.bin" for n in range(8)]
    asked = trio.Event()
    stalled = 0

    async def slow(path: str, body: bytes) -> bytes | None:
        nonlocal stalled
        if path == "/v1/listings":
            return listing([[[name], base + name, 4, f"v-{name}"] for name in names])
        url = json.loads(body)["url"]
        if url == base + "f0.bin":
            return file_answer(b"done")
        stalled += 1
        if stalled == 2:  # two jobs waiting on the daemon: interrupt now
            asked.set()
        await trio.sleep_forever()
        return None

    await fake_daemon(nursery, tmp_path / "d.sock", slow)
    out = tmp_path / "out"
    # SIGINT as a terminal's Ctrl-C delivers it: not ignored nor blocked, whatever this
    # process inherited (a shell ignores it in the jobs it starts in the background).
    launcher = (
        "import os, signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT});"
        " signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.executable, sys.argv[1:])"
    )
    argv = [PYTHON, "-c", launcher, PYTHON, "-m", "dfget", "-r", base, "-o", str(out), "-j", "2"]
    argv += ["--json", "--supernode", "", "--daemon-socket", str(tmp_path / "d.sock")]
    proc = await trio.lowlevel.open_process(
        argv, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        with trio.fail_after(RUN_TIMEOUT):
            await asked.wait()
        signals = [
            line
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            if line.startswith("Sig")
        ]
        proc.send_signal(signal.SIGINT)
        with trio.move_on_after(RUN_TIMEOUT / 2):
            code = await proc.wait()
        assert proc.returncode is not None, f"no exit after SIGINT; its signals: {signals}"
        assert proc.stderr is not None
        stderr = await proc.stderr.receive_some(65536)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 130, stderr
    assert b"interrupted" in stderr and b"Traceback" not in stderr
    assert sorted(os.listdir(out)) == [".dfget-tree.json", "f0.bin"]
    assert (out / "f0.bin").read_bytes() == b"done"
    assert json.loads((out / ".dfget-tree.json").read_text())["files"].keys() == {"f0.bin"}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b'{"url": "file:///etc/passwd"}', 400),
        (b'{"url": "http://h/t/", "unknown": 1}', 400),
        (b'{"url": "http://h/t/", "headers": [["x", "' + b"y" * 70_000 + b'"]]}', 413),
    ],
    ids=["garbage", "not-http", "unknown-field", "oversized"],
)
async def test_the_listing_route_refuses_bad_input_before_any_fetch(
    start_daemon: StartDaemon, body: bytes, status: int
) -> None:
    """A local stranger's bad listing request is refused as bad input (exit 2), the body
    read up to 64 KiB at most."""
    import httpx

    daemon = await start_daemon("host1", "http://127.0.0.1:1", None)
    transport = httpx.AsyncHTTPTransport(uds=str(daemon.socket_path))
    async with httpx.AsyncClient(transport=transport, timeout=30) as client:
        answer = await client.post("http://daemon/v1/listings", content=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["exit"] == 2


async def test_parses_of_listings_their_clients_left_stay_within_the_listing_places(
    nursery: trio.Nursery, start_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client that leaves its listing while the daemon parses a page frees its turn at
    # once, but the parse runs on in its worker thread: those threads took trio's default
    # places (every blob read, piece write and DNS lookup of the daemon waits on them)
    # beyond LISTINGS_AT_ONCE, as many as a local user's connect-and-leave rounds made.
    from test_attack_supernode import MiniOrigin

    import dfget.tree.httpindex as httpindex
    from dfdaemon.control import LISTINGS_AT_ONCE
    from dfget.tree import index

    lock = threading.Lock()
    running = most = started = 0
    parsing = trio.to_thread.current_default_thread_limiter()
    real = index.parse_page
    default_places_taken = 0

    def counted(*args: Any) -> Any:
        nonlocal running, most, started, default_places_taken
        with lock:
            running += 1
            started += 1
            most = max(most, running)
        try:
            return real(*args)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(httpindex, "parse_page", counted)  # (the name it calls)

    async def page(method: str, headers: dict[str, str]) -> tuple[int, list[Any], bytes]:
        return 200, [("content-type", "text/html")], b"<p>" * 200_000  # (~0.5 s to parse)

    server = MiniOrigin(page)
    await nursery.start(server.serve)
    daemon = await start_daemon("host", "http://127.0.0.1:1", None)
    body = json.dumps({"url": server.url("/tree/")}).encode()
    head = b"POST /v1/listings HTTP/1.1\r\nHost: d\r\nContent-Length: %d\r\n\r\n" % len(body)
    for _ in range(LISTINGS_AT_ONCE + 2):
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.connect(str(daemon.socket_path))
        await sock.send(head + body)
        before = started
        with trio.move_on_after(2):  # (its parse starts, or waits for a place)
            await until(lambda: started > before, 3)  # noqa: B023 (read at once)
        default_places_taken = max(default_places_taken, parsing.borrowed_tokens)
        sock.close()  # it leaves: its turn is given back at once
        await trio.sleep(0.05)
    await until(lambda: running == 0, 60)  # (let them end before the test does)
    assert 1 <= most <= LISTINGS_AT_ONCE
    assert default_places_taken == 0


async def test_a_listings_answer_is_made_off_the_event_loop(
    nursery: trio.Nursery, start_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (100,000 rows took the daemon's loop a quarter of a second to encode)
    from test_attack_supernode import MiniOrigin

    from dfdaemon import control

    made_on_loop: list[bool] = []
    real = control._listing_body

    def body(entries: Any) -> bytes:
        made_on_loop.append(threading.current_thread() is threading.main_thread())
        return real(entries)

    monkeypatch.setattr(control, "_listing_body", body)

    async def page(method: str, headers: dict[str, str]) -> tuple[int, list[Any], bytes]:
        return 200, [("content-type", "text/html")], b'<a href="a.bin">a</a><a href="b">b</a>'

    server = MiniOrigin(page)
    await nursery.start(server.serve)
    daemon = await start_daemon("host", "http://127.0.0.1:1", None)
    listing = handoff.Handoff(daemon.socket_path)
    listing.post_listing(server.url("/tree/"), [])
    try:
        entries = await trio.to_thread.run_sync(listing.listing)
    finally:
        listing.close()
    assert [entry[0] for entry in entries] == [["a.bin"], ["b"]]  # type: ignore[index]
    assert made_on_loop == [False]
