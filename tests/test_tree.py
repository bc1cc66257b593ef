"""`dfget -r`: trees from a real nginx's autoindex pages (HTML and JSON), through the
command and through a supernode; hostile indexes from a scripted server."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import PYTHON, RunningSupernode, StartDaemon, StartSupernode, cli_env
from registry import needs_nginx

from dfget.engine import DownloadRequest
from dfget.errors import DfgetError
from dfget.options import PeerOptions
from dfget.tree import manifest
from dfget.tree.entries import Entry, ListingError, ListLimits
from dfget.tree.globs import Selection
from dfget.tree.httpindex import HttpIndexLister
from dfget.tree.run import TreeRequest, download_tree
from testkit.nginx import nginx
from testkit.scripted import Answer, ScriptedOrigin, Seen

RUN_TIMEOUT = 60.0
FILES = {
    "a.txt": b"hello",
    "empty.bin": b"",
    "with space.txt": b"spaced out",
    "ünï €.txt": "unicode ✓".encode(),
    "sub/b.json": b'{"b": 1}',
    "sub/deeper/c.bin": os.urandom(300_000),
    "sub/deeper/d.json": b"[]",
}


@dataclass
class Site:
    root: Path
    base: str  # http://127.0.0.1:PORT
    log: Path  # nginx's access log: `METHOD URI STATUS BYTES CONNECTION` a line

    def url(self, style: str) -> str:
        """The tree's folder URL: its index pages in `style` (html or json)."""
        return f"{self.base}/{style}/"

    def gets(self) -> list[str]:
        """The files (not index pages) GET so far, by URI."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [
            line.split()[1]
            for line in lines
            if line.startswith("GET ") and not line.split()[1].endswith("/")
        ]

    def connections(self, method: str) -> list[str]:
        """The connection of each `method` request so far (nginx's serial numbers)."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [line.split()[-1] for line in lines if line.startswith(f"{method} ")]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    root = tmp_path / "www"
    for name, body in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body)
    extra = (
        f"        location /html/ {{ alias {root}/; autoindex on; }}\n"
        f"        location /json/ {{ alias {root}/; autoindex on; autoindex_format json; }}"
    )
    work = tmp_path / "nginx"
    with nginx(root, work, server_extra=extra, access_log=True) as base:
        yield Site(root, base, work / "access.log")


async def dfget_r(url: str, out: Path, *flags: str) -> subprocess.CompletedProcess[bytes]:
    """`dfget -r URL -o OUT FLAGS --json`, with no supernode and no daemon (straight
    from the origin): a real process."""
    argv = [PYTHON, "-m", "dfget", "-r", url, "-o", str(out), "--json", *flags]
    argv += ["--supernode", "", "--daemon-socket", ""]
    with trio.fail_after(RUN_TIMEOUT):
        return await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, check=False, env=cli_env()
        )


def summary_of(done: subprocess.CompletedProcess[bytes], code: int = 0) -> dict[str, Any]:
    assert done.returncode == code, done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()
    summary = json.loads(done.stdout)
    assert isinstance(summary, dict)
    return summary


def tree_of(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` but the manifest, by relative path."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and path.name != manifest.NAME
    }


pytestmark = needs_nginx


def through(supernode: RunningSupernode, url: str, out: Path) -> DownloadRequest:
    """A tree's template that takes every file from `supernode` (never the origin)."""
    return DownloadRequest(
        url=url,
        output=out,
        supernodes=(supernode.address,),
        back_source=False,
        peer=PeerOptions(listen=("127.0.0.1", 0)),
    )


@pytest.mark.parametrize("style", ["html", "json"])
async def test_a_tree_downloads_whole_then_a_rerun_skips_it(
    site: Site, tmp_path: Path, style: str
) -> None:
    out = tmp_path / "out"
    summary = summary_of(await dfget_r(site.url(style), out))
    assert tree_of(out) == FILES
    assert (summary["done"], summary["skipped"], summary["failed"]) == (len(FILES), 0, 0)
    assert summary["bytes"] == sum(len(body) for body in FILES.values())
    assert {file["path"] for file in summary["files"]} == set(FILES)
    assert not [name for name in os.listdir(out) if name.endswith(".dfget-part")]
    fetched = len(site.gets())
    assert fetched == len(FILES)
    # The validators kept come with the download itself: no HEAD before it.
    assert site.connections("HEAD") == []

    again = summary_of(await dfget_r(site.url(style), out))
    assert (again["done"], again["skipped"], again["bytes"]) == (0, len(FILES), 0)
    assert len(site.gets()) == fetched  # not one file's bytes asked for again
    assert tree_of(out) == FILES


@pytest.mark.parametrize("style", ["html", "json"])
async def test_a_file_changed_upstream_or_locally_is_fetched_again(
    site: Site, tmp_path: Path, style: str
) -> None:
    out = tmp_path / "out"
    summary_of(await dfget_r(site.url(style), out))
    changed = site.root / "sub" / "b.json"
    changed.write_bytes(b'{"b": 2}')  # same size: only the mtime tells
    later = changed.stat().st_mtime_ns + 5 * 10**9
    os.utime(changed, ns=(later, later))
    touched = out / "a.txt"
    touched.write_bytes(b"HELLO")  # a local edit: no longer what was verified
    again = summary_of(await dfget_r(site.url(style), out))
    redone = {file["path"] for file in again["files"] if file["status"] == "done"}
    assert redone == {"sub/b.json", "a.txt"}
    assert (out / "sub" / "b.json").read_bytes() == b'{"b": 2}'
    assert touched.read_bytes() == b"hello"


async def test_include_and_exclude(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "out"
    flags = ("--include", "*.json", "--include", "a.*", "--exclude", "sub/deeper/*")
    summary = summary_of(await dfget_r(site.url("html"), out, *flags))
    assert set(tree_of(out)) == {"a.txt", "sub/b.json"}
    assert (summary["listed"], summary["excluded"]) == (len(FILES), len(FILES) - 2)


async def test_include_needs_r(tmp_path: Path) -> None:
    argv = [PYTHON, "-m", "dfget", "http://127.0.0.1:9/x", "-o", str(tmp_path / "x")]
    done = await trio.run_process(
        [*argv, "--include", "*"], capture_stderr=True, check=False, env=cli_env()
    )
    assert done.returncode == 2 and b"go with -r" in done.stderr


async def test_seeding_for_a_while_cannot_go_with_r(tmp_path: Path) -> None:
    """Each file would seed in its place of -j, recorded in the manifest only after (an
    edit meanwhile then taken as verified), Ctrl-C ending one file's seeding: refused,
    before anything is listed or made."""
    argv = [PYTHON, "-m", "dfget", "-r", "http://127.0.0.1:9/d/", "-o", str(tmp_path / "d")]
    done = await trio.run_process(
        [*argv, "--seed-for", "60"], capture_stderr=True, check=False, env=cli_env()
    )
    assert done.returncode == 2 and b"--seed-for cannot go with -r" in done.stderr
    assert os.listdir(tmp_path) == []


async def test_stdout_cannot_take_a_tree(tmp_path: Path) -> None:
    """`-r -o -` is refused: not a folder named `-` made in the working directory."""
    argv = [PYTHON, "-m", "dfget", "-r", "http://127.0.0.1:9/d/", "-o", "-"]
    done = await trio.run_process(
        argv, capture_stderr=True, check=False, env=cli_env(), cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr.decode()
    assert os.listdir(tmp_path) == []


class CountingLister(HttpIndexLister):
    """The nginx lister, counting the files being worked on at once (on a re-run
    `validator` is asked inside each file's -j slot: HTML pages carry no validator)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.now = self.most = 0

    async def validator(self, entry: Entry) -> str | None:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await trio.sleep(0.05)  # long enough for the other slots to fill
            return await super().validator(entry)
        finally:
            self.now -= 1


@pytest.mark.parametrize("jobs", [1, 3])
async def test_jobs_bound_the_files_at_once(site: Site, tmp_path: Path, jobs: int) -> None:
    lister = CountingLister(site.url("html"))
    template = DownloadRequest(url=lister.url, output=tmp_path / "out", supernodes=())
    first = await download_tree(TreeRequest(lister, template.output, template, jobs=jobs))
    assert first.count("done") == len(FILES)
    assert lister.most == 0  # (no HEAD before a first download)
    result = await download_tree(TreeRequest(lister, template.output, template, jobs=jobs))
    assert result.count("skipped") == len(FILES)
    assert lister.most == jobs


async def test_a_trees_heads_share_one_client_closed_with_the_tree(
    site: Site, tmp_path: Path
) -> None:
    """HTML pages carry no validator: on a re-run each file's HEAD goes on the lister's
    one client, kept alive across the files (not a client and a connection a file),
    closed at the end."""
    template = DownloadRequest(url=site.url("html"), output=tmp_path / "out", supernodes=())
    first = await download_tree(
        TreeRequest(HttpIndexLister(template.url), template.output, template)
    )
    assert first.count("done") == len(FILES)
    assert site.connections("HEAD") == []  # (the downloads carried the validators)
    lister = HttpIndexLister(site.url("html"))
    result = await download_tree(TreeRequest(lister, template.output, template, jobs=1))
    assert result.count("skipped") == len(FILES)
    heads = site.connections("HEAD")
    assert len(heads) == len(FILES) and len(set(heads)) == 1, heads
    assert lister._heads is None  # closed with the tree


@pytest.mark.parametrize("style", ["html", "json"])
async def test_files_go_through_the_supernode(
    site: Site, tmp_path: Path, supernode: RunningSupernode, style: str
) -> None:
    """Each file is a task of its own on the supernode: its CDN fetched it from nginx,
    dfget got the bytes over P2P, none from the origin. The origin's validators came
    with the pieces (no HEAD of dfget's own), and a re-run skips every file."""
    url = site.url(style)
    template = through(supernode, url, tmp_path / "out")
    request = TreeRequest(HttpIndexLister(url), template.output, template, Selection(), jobs=4)
    result = await download_tree(request)
    assert tree_of(template.output) == FILES
    assert result.exit_code == 0
    downloads = [file.download for file in result.files]
    assert all(d is not None and d.supernode == supernode.address for d in downloads)
    assert all(d is not None and d.from_source == 0 for d in downloads)
    assert sum(d.from_cdn + d.from_peers for d in downloads if d) == result.bytes
    assert len({d.task_id for d in downloads if d}) == len(FILES)  # a task a file
    assert site.connections("HEAD") == []
    again = await download_tree(TreeRequest(HttpIndexLister(url), template.output, template))
    assert again.count("skipped") == len(FILES)


# A hostile index: every trick to write outside DIR, beside one honest file.
HOSTILE_HTML = {
    "/d/": [
        "../",
        "?C=N;O=D",
        "../escape-1.txt",
        "/escape-2.txt",
        "http://127.0.0.2:1/escape-3.txt",
        "%2e%2e%2fescape-4.txt",
        "%2e%2e/",
        "a%5Cb.txt",
        "planted/",
        "link.txt",
        "good.txt",
        "j/",
    ],
    "/d/planted/": ["x.txt"],
}
HOSTILE_JSON = [
    {"name": "../escape-5.txt", "type": "file", "mtime": "x", "size": 4},
    {"name": "..", "type": "directory", "mtime": "x"},
    {"name": "a/b.txt", "type": "file", "mtime": "x", "size": 4},
    {"name": ".", "type": "file", "mtime": "x", "size": 4},
    {"name": "fine.txt", "type": "file", "mtime": "x", "size": 4},
]


def hostile(seen: Seen) -> Answer:
    if seen.path in HOSTILE_HTML:
        links = "".join(f'<a href="{href}">x</a>\n' for href in HOSTILE_HTML[seen.path])
        return Answer(200, [("content-type", "text/html")], links.encode())
    if seen.path == "/d/j/":
        return Answer(
            200, [("content-type", "application/json")], json.dumps(HOSTILE_JSON).encode()
        )
    return Answer(200, [("content-type", "text/plain")], b"evil")


async def test_a_folder_swapped_for_a_symlink_mid_run_takes_no_file_out(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Another local user who can write into DIR swaps a folder dfget has checked for a
    symlink pointing out, before the file is written (here while dfget asks the origin,
    with a HEAD, whether the copy of an earlier run is current): the file goes into the
    folder dfget checked (wherever it was moved), nothing outside DIR is written, and
    the summary names the file's path under DIR."""
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    pages = {"/d/": ["sub/"], "/d/sub/": ["f.txt"]}
    version = [b"first"]

    def swapping(seen: Seen) -> Answer:
        if seen.path in pages:
            links = "".join(f'<a href="{href}">x</a>\n' for href in pages[seen.path])
            return Answer(200, [("content-type", "text/html")], links.encode())
        if seen.method == "HEAD":  # dfget has made and checked `sub`: swap it
            (out / "sub").rename(out / "moved")
            (out / "sub").symlink_to(outside)
            return Answer(404)  # (the version unknown: downloaded again)
        return Answer(200, [("etag", '"' + version[0].decode() + '"')], version[0])

    server = ScriptedOrigin(swapping)
    await nursery.start(server.serve)
    template = DownloadRequest(url=server.url("/d/"), output=out, supernodes=())
    request = TreeRequest(HttpIndexLister(template.url), out, template)
    first = await download_tree(request)
    assert [(file.name, file.status) for file in first.files] == [("sub/f.txt", "done")]
    version[0] = b"second"
    result = await download_tree(request)
    assert [(file.name, file.status) for file in result.files] == [("sub/f.txt", "done")]
    assert [seen.method for seen in server.seen if seen.path == "/d/sub/f.txt"] == [
        "GET",
        "HEAD",
        "GET",
    ]
    assert os.listdir(outside) == []
    assert (out / "moved" / "f.txt").read_bytes() == b"second"
    download = result.files[0].download
    assert download is not None and download.output == str(out / "sub" / "f.txt")


async def test_a_hostile_index_writes_nothing_outside_dir(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = ScriptedOrigin(hostile)
    await nursery.start(server.serve)
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "box" / "out"
    out.mkdir(parents=True)
    (out / "planted").symlink_to(outside)  # left in DIR, pointing out
    (out / "link.txt").symlink_to(outside / "link.txt")
    template = DownloadRequest(url=server.url("/d/"), output=out, supernodes=())
    caplog.set_level(logging.WARNING)
    result = await download_tree(TreeRequest(HttpIndexLister(template.url), out, template))
    by_name = {file.name: file.status for file in result.files}
    assert by_name == {
        "../escape-4.txt": "refused",
        "..": "refused",
        "a\\b.txt": "refused",
        "planted/x.txt": "refused",
        "link.txt": "refused",
        "good.txt": "done",
        "j/../escape-5.txt": "refused",
        "j/..": "refused",
        "j/a/b.txt": "refused",
        "j/.": "refused",
        "j/fine.txt": "done",
    }
    assert result.exit_code == 7  # an output error: refused to write them
    assert os.listdir(outside) == []
    assert sorted(os.listdir(tmp_path / "box")) == ["out"]
    assert sorted(os.listdir(tmp_path)) == ["box", "outside"]
    assert (out / "good.txt").read_bytes() == b"evil"
    assert (out / "j" / "fine.txt").read_bytes() == b"evil"
    warned = caplog.text
    for href in ("../escape-1.txt", "/escape-2.txt", "http://127.0.0.2:1/escape-3.txt"):
        assert repr(href) in warned
    # Nothing but the index pages, the honest files and their HEADs was asked for.
    asked = {seen.path for seen in server.seen}
    assert asked == {"/d/", "/d/planted/", "/d/j/", "/d/good.txt", "/d/j/fine.txt"}


class Versions:
    """An origin whose one file changes version on demand; its HEAD may lie (an ETag
    other than its GET's). HTML index pages, as nginx's default."""

    def __init__(self) -> None:
        self.version = 1
        self.head_lies = False
        self.head_delay = 0.0  # seconds a HEAD's answer takes
        self.mark = ""  # in its ETags (sent as UTF-8)
        self.change_after_get = False  # the next version is up as soon as a GET ends

    def __call__(self, seen: Seen) -> Answer:
        if seen.path == "/d/":
            return Answer(200, [("content-type", "text/html")], b'<a href="f.txt">f.txt</a>')
        etag = f'"v{self.version}{self.mark}"'
        body = f"version {self.version}".encode()
        if seen.method == "HEAD":
            lied = '"not-the-gets"' if self.head_lies else etag
            headers = [("etag", lied), ("content-length", str(len(body)))]
            return Answer(200, headers, delay=self.head_delay)
        if self.change_after_get:
            self.version += 1
        return Answer(200, [("etag", etag)], body)


async def versions_tree(
    nursery: trio.Nursery, tmp_path: Path
) -> tuple[Versions, ScriptedOrigin, Path, Callable[[], Awaitable[list[str]]]]:
    """A `Versions` origin serving, its server, the tree's output folder, and a run of
    `dfget -r` of it straight from the origin (each file's status)."""
    origin = Versions()
    server = ScriptedOrigin(origin)
    await nursery.start(server.serve)
    out = tmp_path / "out"
    template = DownloadRequest(url=server.url("/d/"), output=out, supernodes=())

    async def run() -> list[str]:
        result = await download_tree(TreeRequest(HttpIndexLister(template.url), out, template))
        return [file.status for file in result.files]

    return origin, server, out, run


async def test_a_tree_records_the_validator_of_the_bytes_it_wrote(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The validator kept comes with the very bytes written: a file that changed
    upstream right after it was downloaded is fetched again next time, never skipped
    as current; a HEAD that disagrees with what the GET said gets no file skipped."""
    origin, server, out, run = await versions_tree(nursery, tmp_path)
    origin.change_after_get = True
    assert await run() == ["done"]
    assert (out / "f.txt").read_bytes() == b"version 1"  # v2 is up now
    origin.change_after_get = False
    assert await run() == ["done"]  # the HEAD says v2: not what was written
    assert (out / "f.txt").read_bytes() == b"version 2"
    assert await run() == ["skipped"]
    (out / ".dfget-tree.json").unlink()  # a first run again: the GET's ETag is kept
    assert await run() == ["done"]
    origin.head_lies = True
    assert await run() == ["done"]
    assert (out / "f.txt").read_bytes() == b"version 2"
    assert [
        seen.headers.get("accept-encoding") for seen in server.seen if seen.method == "HEAD"
    ] == ["identity"] * 3  # (a HEAD asks for the bytes as a download gets them, not compressed)


async def test_a_head_that_takes_too_long_does_not_hold_the_tree(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-run's HEAD of a file (is it still what was written?) was bounded only by
    httpx's timeout of each read, outside the file's own deadline: an origin that drips
    its answer held the tree for as long as it liked. Past HEAD_SECONDS the file is
    downloaded again instead."""
    monkeypatch.setattr("dfget.tree.entries.HEAD_SECONDS", 0.5)
    origin, _, out, run = await versions_tree(nursery, tmp_path)
    assert await run() == ["done"]
    origin.head_delay = 30.0
    with trio.fail_after(10):
        assert await run() == ["done"]  # asked again, not waited for
    assert (out / "f.txt").read_bytes() == b"version 1"


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "httpx"])
async def test_a_validator_past_ascii_lets_a_rerun_through_the_supernode_skip(
    nursery: trio.Nursery, tmp_path: Path, start_supernode: StartSupernode, lean: bool
) -> None:
    """A UTF-8 ETag: the supernode reads validators' bytes as Latin-1, and dfget's HEAD
    read them as httpx does (UTF-8): they never matched, and every re-run downloaded
    the file again. Both read the bytes alike now."""
    origin = Versions()
    origin.mark = "-\u00e9t\u00e9"
    server = ScriptedOrigin(origin)
    await nursery.start(server.serve)
    node = await start_supernode(lean_http=lean)
    out = tmp_path / "out"
    template = through(node, server.url("/d/"), out)

    async def run() -> list[str]:
        result = await download_tree(TreeRequest(HttpIndexLister(template.url), out, template))
        return [file.status for file in result.files]

    assert await run() == ["done"]
    assert await run() == ["skipped"]


def endless(seen: Seen) -> Answer:
    """Every folder holds one more folder and two files: an index with no bottom."""
    return Answer(200, [("content-type", "text/html")], b'<a href="a/">a</a><a href="f">f</a>')


@pytest.mark.parametrize(
    ("limits", "error"),
    [
        (ListLimits(max_depth=5), "more than 5 folders deep"),
        (ListLimits(max_entries=7), "more than 7 entries"),
        (ListLimits(max_page=16), "larger than 16 bytes"),
        (ListLimits(max_names=300), "more than 300 bytes of names and URLs"),
        (ListLimits(max_seconds=0), "takes more than 0s to list"),
    ],
)
async def test_a_runaway_index_ends_with_a_clear_error(
    nursery: trio.Nursery, tmp_path: Path, limits: ListLimits, error: str
) -> None:
    server = ScriptedOrigin(endless)
    await nursery.start(server.serve)
    lister = HttpIndexLister(server.url("/d/"), limits=limits)
    template = DownloadRequest(url=lister.url, output=tmp_path / "out", supernodes=())
    with pytest.raises(DfgetError, match=error):
        await download_tree(TreeRequest(lister, template.output, template))
    assert not [seen for seen in server.seen if not seen.path.endswith("/")]  # no file fetched


def gzip_bomb() -> Answer:
    """An index page of 64 MiB of zeros inside gzip inside gzip: a few hundred bytes on
    the wire, sent whatever the request asked for."""
    page = gzip.compress(gzip.compress(bytes(64 << 20)))
    return Answer(200, [("content-type", "text/html"), ("content-encoding", "gzip, gzip")], page)


async def test_a_compressed_index_page_is_refused_before_it_unpacks(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A page's bound counts the bytes as sent: decoded by the HTTP client, 64 MiB of
    zeros in 200-odd bytes would be in memory before a bound could be checked (and a
    page of gigabytes in one read). The request asks for the page unencoded; a page
    encoded anyway is refused."""
    bomb = gzip_bomb()
    server = ScriptedOrigin(lambda seen: bomb)
    await nursery.start(server.serve)
    lister = HttpIndexLister(server.url("/d/"))
    tracemalloc.start()
    try:
        with pytest.raises(ListingError, match="encoded"):
            await lister.list_all()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak >> 20} MiB in memory for a 4 MiB page bound"
    assert server.seen[0].headers.get("accept-encoding") == "identity"


async def test_a_missing_index_is_an_origin_error(site: Site, tmp_path: Path) -> None:
    done = await dfget_r(f"{site.base}/html/nothing-here/", tmp_path / "out")
    assert done.returncode == 3
    assert b"answered 404" in done.stderr


async def test_files_go_through_the_daemon_when_one_answers(
    site: Site, tmp_path: Path, supernode: RunningSupernode, start_daemon: StartDaemon
) -> None:
    """As a single-file dfget does: each file handed to the host's dfdaemon."""
    daemon = await start_daemon("host1", "http://127.0.0.1:1", supernode)
    url = site.url("html")
    template = DownloadRequest(
        url=url, output=tmp_path / "out", supernodes=(), daemon_socket=daemon.socket_path
    )
    result = await download_tree(TreeRequest(HttpIndexLister(url), template.output, template))
    assert tree_of(template.output) == FILES
    assert {f.download.daemon for f in result.files if f.download} == {str(daemon.socket_path)}
    assert result.count("done") == len(FILES)
    # The daemon's answer carried the origin's validators: dfget asked no HEAD, and a
    # re-run skips every file; after a change upstream, that file is fetched again.
    assert site.connections("HEAD") == []
    again = await download_tree(TreeRequest(HttpIndexLister(url), template.output, template))
    assert again.count("skipped") == len(FILES)
    changed = site.root / "a.txt"
    changed.write_bytes(b"HELLO")
    later = changed.stat().st_mtime_ns + 5 * 10**9
    os.utime(changed, ns=(later, later))
    third = await download_tree(TreeRequest(HttpIndexLister(url), template.output, template))
    assert [f.name for f in third.files if f.status == "done"] == ["a.txt"]
    assert (template.output / "a.txt").read_bytes() == b"HELLO"


async def test_a_trees_files_share_the_connections_to_the_supernode(
    site: Site, tmp_path: Path, supernode: RunningSupernode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files of a tree downloaded here share one upload server, control sessions,
    piece connections and the supernodes' directory, as a daemon's downloads do: each
    file opened its own (a members request, a control session and a piece connection,
    each a connection with its handshake, and a listening socket)."""
    from dfget import connect, members, sessions, sources, uploads

    opened: list[str] = []
    asked: list[str] = []
    listening: list[int] = []

    def counting(module: Any, name: str, into: list[Any]) -> None:
        original = getattr(module, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            into.append(module.__name__)
            return await original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for module in (connect, sessions, sources):
        counting(module, "connect_stream", opened)
    counting(members, "ask_members", asked)
    counting(uploads.PieceServer, "serve", listening)
    url = site.url("json")
    template = through(supernode, url, tmp_path / "out")
    request = TreeRequest(HttpIndexLister(url), template.output, template, Selection(), jobs=2)
    result = await download_tree(request)
    assert tree_of(template.output) == FILES
    assert result.count("done") == len(FILES) >= 5
    assert len(asked) == 1 and len(listening) == 1
    # A members request, then a control session for each file at once (2: each under
    # a peer id of its own) and piece connections, kept by source and peer id (up to 2
    # each); a file used to open its own of all three (21 here).
    assert opened.count("dfget.connect") == 1, opened
    assert opened.count("dfget.sessions") <= 2, opened
    assert opened.count("dfget.sources") <= 4, opened


async def test_a_trees_spent_sessions_close_and_are_not_counted(
    site: Site, tmp_path: Path, supernode: RunningSupernode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session kept open between files takes no task once it has left LEFT_KEPT:
    it closed only with the tree, and counted among the supernode's sessions, so that
    past eight of them every file queued its Register on the one left (found by review:
    ~25 dead connections for 100,000 files, one slow origin holding up all the rest)."""
    from dfget import sessions

    monkeypatch.setattr(sessions, "LEFT_KEPT", 2)
    seen: list[sessions.Sessions] = []
    most = [0]
    open_session = sessions.Sessions._open

    async def opening(self: sessions.Sessions, *args: Any, **kwargs: Any) -> Any:
        seen.append(self)
        opened = await open_session(self, *args, **kwargs)
        most[0] = max(most[0], self.count())
        return opened

    monkeypatch.setattr(sessions.Sessions, "_open", opening)
    url = site.url("json")
    template = through(supernode, url, tmp_path / "out")
    request = TreeRequest(HttpIndexLister(url), template.output, template, Selection(), jobs=1)
    result = await download_tree(request)
    assert result.count("done") == len(FILES)
    assert len(seen) >= 3  # (a new session every two files)
    assert most[0] <= 2  # the spent one ended: (it, and the new one not yet counted)


async def test_a_busy_upload_port_is_a_usage_error_not_a_traceback(
    site: Site, tmp_path: Path
) -> None:
    """The files of a tree share one upload server, set up before the first file: a
    port already taken is exit 2 with the reason, not an exception group's traceback
    (found by review)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        argv = [PYTHON, "-m", "dfget", "-r", site.url("json"), "-o", str(tmp_path / "out")]
        argv += ["--supernode", "127.0.0.1:1", "--daemon-socket", "", "--no-back-source"]
        argv += ["--peer-listen", f"127.0.0.1:{port}"]
        with trio.fail_after(RUN_TIMEOUT):
            done = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False, env=cli_env()
            )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert "cannot listen for uploads" in stderr and "Traceback" not in stderr


async def test_a_password_in_the_trees_url_is_written_nowhere(site: Site, tmp_path: Path) -> None:
    """`dfget -r http://user:password@host/dir/`: each file's URL kept its user info, in
    the manifest (0644) and in `--json`; and a new password fetched every file again."""
    out = tmp_path / "out"
    url = site.url("json").replace("http://", "http://alice:s3cr3t-pw@", 1)
    done = await dfget_r(url, out)
    summary = summary_of(done)
    assert summary["done"] == len(FILES)
    assert b"s3cr3t-pw" not in done.stdout
    assert b"s3cr3t-pw" not in (out / manifest.NAME).read_bytes()
    again = summary_of(await dfget_r(url.replace("s3cr3t-pw", "rotated"), out))
    assert (again["done"], again["skipped"]) == (0, len(FILES))
