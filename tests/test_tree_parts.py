"""`dfget -r`'s pure parts: index pages, safe paths, --include/--exclude, the manifest."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from dfget.errors import OutputError
from dfget.output import AtomicOutput
from dfget.tree import manifest
from dfget.tree.entries import Entry
from dfget.tree.globs import Selection
from dfget.tree.index import Link, PageTooLarge, is_json, parse_page
from dfget.tree.paths import UnsafePath, make_root, place, unsafe_part, unsafe_path
from dfget.tree.results import TreeResult
from dfget.tree.steps import take

PAGE = "http://127.0.0.1:8080/data/"

# What nginx 1.22 writes for `autoindex on` (HTML), a parent link and sort links added.
NGINX_HTML = b"""<html>
<head><title>Index of /data/</title></head>
<body>
<h1>Index of /data/</h1><hr><pre><a href="../">../</a>
<a href="?C=N;O=D">Name</a>
<a href="sub/">sub/</a>                                               03-Dec-2026 08:13       -
<a href="a%20b.txt">a b.txt</a>                                        03-Dec-2026 08:13       5
<a href="%C3%BCn%C3%AF%20%E2%82%AC.txt">\xc3\xbcn\xc3\xaf \xe2\x82\xac.txt</a>  03-Dec-2026 08:13  3
<a href="x&amp;y.bin">x&amp;y.bin</a>                                        03-Dec-2026 08:13  3
</pre><hr></body>
</html>
"""


def test_html_index_lists_direct_children_decoded() -> None:
    page = parse_page(NGINX_HTML, "text/html", PAGE)
    assert page.links == [
        Link("sub", PAGE + "sub/", True),
        Link("a b.txt", PAGE + "a%20b.txt", False),
        Link("ünï €.txt", PAGE + "%C3%BCn%C3%AF%20%E2%82%AC.txt", False),
        Link("x&y.bin", PAGE + "x&y.bin", False),
    ]
    assert not page.hostile  # the parent and sort links are no attack


def test_json_index_lists_files_and_folders_with_validators() -> None:
    body = json.dumps(
        [
            {"name": "sub", "type": "directory", "mtime": "Thu, 03 Dec 2026 08:13:00 GMT"},
            {
                "name": "a b.txt",
                "type": "file",
                "mtime": "Thu, 03 Dec 2026 08:13:00 GMT",
                "size": 5,
            },
            {"name": "fifo", "type": "other", "mtime": "Thu, 03 Dec 2026 08:13:00 GMT"},
        ]
    ).encode()
    page = parse_page(body, "application/json", PAGE)
    assert page.links == [
        Link("sub", PAGE + "sub/", True),
        Link("a b.txt", PAGE + "a%20b.txt", False, 5, "mtime=Thu, 03 Dec 2026 08:13:00 GMT;size=5"),
    ]
    assert page.dropped == [("fifo", "type 'other'")]


def test_json_detected_by_body_when_content_type_says_nothing() -> None:
    assert is_json("", b" [{}]")
    assert is_json("application/json; charset=utf-8", b"")
    assert not is_json("text/html", b"[")


@pytest.mark.parametrize(
    "href",
    [
        "../escape.txt",
        "/etc/passwd",
        "http://127.0.0.2:8080/data/x.txt",
        "https://127.0.0.1:8080/data/x.txt",
        "//other.example/data/x.txt",
        "sub/deeper/x.txt",
        "sub/../../x.txt",
        "http://[::1/x.txt",  # (no URL: urljoin raises; the rest of the page still counts)
        "//[::1",
    ],
)
def test_html_links_that_leave_the_folder_are_dropped_as_hostile(href: str) -> None:
    body = f'<a href="{href}">x</a><a href="fine.txt">y</a>'.encode()
    page = parse_page(body, "text/html", PAGE)
    assert [link.name for link in page.links] == ["fine.txt"]
    assert [h for h, _ in page.hostile] == [href]


def test_encoded_dot_dot_is_a_name_for_paths_to_refuse() -> None:
    """`%2e%2e%2f` is not a path step to the parser: it decodes to a NAME `../`, which
    `paths` refuses (it holds a `/`)."""
    page = parse_page(b'<a href="%2e%2e%2fx.txt">x</a><a href="%2e%2e/">up</a>', "", PAGE)
    assert [(link.name, link.is_dir) for link in page.links] == [("../x.txt", False), ("..", True)]
    assert all(unsafe_part(link.name) for link in page.links)


def test_not_an_index() -> None:
    with pytest.raises(ValueError):
        parse_page(b'{"name": "x"}', "application/json", PAGE)
    with pytest.raises(ValueError):
        parse_page(b'[{"type": "file"}]', "application/json", PAGE)


@pytest.mark.parametrize(
    "part",
    [
        *("", ".", "..", "a/b", "a\\b", "a\0b", "x" * 256, "\udcff"),
        # What a terminal takes as commands: a listed name must not retitle the window or
        # print "saved" lines of its own.
        *("\x1b]0;pwned\x07", "ok\rdfget: saved evil", "a\nb", "\x9b2K", "a\x7f"),
    ],
)
def test_unsafe_parts(part: str) -> None:
    assert unsafe_part(part)


@pytest.mark.parametrize(
    "part", ["a b.txt", "ünï €", "...", ".hidden", "x" * 255, "a:b", "a\u00a0b"]
)
def test_safe_parts(part: str) -> None:
    assert unsafe_part(part) is None


def test_a_file_name_leaves_room_for_its_temp_file() -> None:
    """With the temp file's 21 bytes more, a file name over 234 bytes could never be
    written (it failed at every run); a folder's may be 255."""
    assert unsafe_path(("x" * 255, "y" * 234)) is None
    assert unsafe_path(("x" * 255, "y" * 235)) == "a file name longer than 234 bytes"
    assert unsafe_path(("x" * 256, "y")) == "a name longer than 255 bytes"


@pytest.mark.parametrize(
    "path", [(manifest.NAME,), (manifest.NAME, "x"), (manifest.NAME, "d", "x")]
)
def test_the_manifests_name_is_refused_for_a_file_or_a_folder(path: tuple[str, ...]) -> None:
    """A folder of the manifest's name would keep the manifest from being written: every
    re-run would download every file again."""
    outcome = TreeResult("http://h/", "/out")
    wanted: dict[str, Entry] = {}
    file = take(Entry(path, "http://h/x", 1, None), Selection(), wanted, outcome)
    assert file is not None and file.status == "refused" and not wanted


def test_place_makes_folders_and_never_goes_through_a_symlink(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    with place(root, ("a", "b c", "ü.txt")) as made:
        assert made.real == root / "a" / "b c" / "ü.txt"
        assert made.path.parent.resolve() == root / "a" / "b c"
    assert (root / "a" / "b c").is_dir()
    (root / "link").symlink_to(outside)
    (root / "a" / "inner").symlink_to(root / "a")  # inside DIR, but a symlink all the same
    (root / "file").symlink_to(outside / "file")
    for parts in [("link", "x"), ("link", "new", "x"), ("a", "inner", "x"), ("file",)]:
        with pytest.raises(UnsafePath):
            place(root, parts)
    (root / "plain").write_bytes(b"")
    with pytest.raises(OutputError):
        place(root, ("plain", "x"))  # a file where a folder must go
    assert os.listdir(outside) == []


def test_a_folder_swapped_for_a_symlink_after_the_check_takes_nothing_out(
    tmp_path: Path,
) -> None:
    """Another user who can write into DIR swaps a checked folder for a symlink pointing
    out, between `place` and the write: the file still goes into the folder checked
    (moved aside by that user), never through the symlink."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    with place(root, ("a", "b", "f.txt")) as made:
        (root / "a").rename(root / "moved")
        (root / "a").symlink_to(outside)
        (outside / "b").mkdir()
        with AtomicOutput(made.path) as out:
            out.write_at(0, b"mine")
            out.commit()
        assert made.shown(f"cannot write {made.path}") == f"cannot write {made.real}"
    assert made.fd is None  # (closed with the block)
    assert list(outside.rglob("*")) == [outside / "b"]
    assert (root / "moved" / "b" / "f.txt").read_bytes() == b"mine"


def test_a_tree_deeper_than_a_path_may_be_long_is_written_through_its_folders(
    tmp_path: Path,
) -> None:
    """17 folders of 250 bytes: a path past PATH_MAX (4096), which no call by path
    takes, is written through the open folder; its messages name it under DIR."""
    root = tmp_path / "root"
    root.mkdir()
    parts = (*(f"{i:02d}" + "d" * 248 for i in range(17)), "f.txt")
    with place(root, parts) as made:
        with AtomicOutput(made.path) as out:
            out.write_at(0, b"deep")
            out.commit()
        assert manifest.local_state(made.path) is not None
        shown = made.shown(f"x {made.path.parent}: y {made.path.parent}1")
        assert shown == f"x {made.real.parent}: y {made.path.parent}1"  # (not fd 41's)
    assert made.fd is None
    folder = os.open(root, os.O_RDONLY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=folder)
            os.close(folder)
            folder = inner
        with open(os.open("f.txt", os.O_RDONLY, dir_fd=folder), "rb") as file:
            assert file.read() == b"deep"
    finally:
        os.close(folder)


def test_selection() -> None:
    every = Selection()
    assert every.wants("a/b.txt")
    json_only = Selection(include=("*.json",))
    assert json_only.wants("a.json") and json_only.wants("sub/b.json")
    assert not json_only.wants("a.txt")
    no_sub = Selection(include=("*.json", "sub/*"), exclude=("sub/deeper/*",))
    assert no_sub.wants("sub/x.bin") and no_sub.wants("top.json")
    assert not no_sub.wants("sub/deeper/c.json")  # exclude wins


def test_manifest_round_trip_and_what_counts_as_current(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello")
    state = manifest.local_state(path)
    assert state is not None
    record = manifest.record_of("http://h/f.txt", state, "v1")
    manifest.save(tmp_path, {"f.txt": record})
    loaded = manifest.load(tmp_path)
    assert loaded == {"f.txt": record}
    assert manifest.is_current(record, "http://h/f.txt", path, "v1")
    assert not manifest.is_current(record, "http://h/f.txt", path, "v2")  # changed upstream
    assert not manifest.is_current(record, "http://h/f.txt", path, None)  # cannot tell
    assert not manifest.is_current(record, "http://h/other", path, "v1")
    os.utime(path, ns=(state[1] + 10**9, state[1] + 10**9))
    assert not manifest.is_current(record, "http://h/f.txt", path, "v1")  # touched locally
    # Rewritten in place, its mtime set back as it was (`touch -r`): the ctime tells.
    path.write_bytes(b"HELLO")
    os.utime(path, ns=(state.mtime_ns, state.mtime_ns))
    assert manifest.local_state(path)[:2] == state[:2]  # type: ignore[index]
    assert not manifest.is_current(record, "http://h/f.txt", path, "v1")
    # A record of an older dfget (no ctime, no inode) vouches for nothing: downloaded once.
    older = dataclasses.replace(record, ctime_ns=None, ino=None)
    assert not manifest.may_be_current(older, "http://h/f.txt", path)


def test_a_manifest_keeps_no_password_of_an_earlier_run(tmp_path: Path) -> None:
    """A run before URLs were recorded without user info wrote them with it: read
    back, the records lose it (and are written back so), for files listed or not."""
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello")
    state = manifest.local_state(path)
    assert state is not None
    old = manifest.record_of("http://u:s3cr3t@h/f.txt", state, "v1")
    manifest.save(tmp_path, {"f.txt": old, "gone.txt": old})
    loaded = manifest.load(tmp_path)
    assert {record.url for record in loaded.values()} == {"http://h/f.txt"}
    manifest.save(tmp_path, loaded)
    assert b"s3cr3t" not in (tmp_path / manifest.NAME).read_bytes()


def test_a_broken_or_symlinked_manifest_is_ignored(tmp_path: Path) -> None:
    (tmp_path / manifest.NAME).write_text("{not json")
    assert manifest.load(tmp_path) == {}
    (tmp_path / manifest.NAME).unlink()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"version": 1, "files": {}}))
    (tmp_path / manifest.NAME).symlink_to(elsewhere)
    assert manifest.load(tmp_path) == {}


def test_a_hostile_manifest_is_ignored(tmp_path: Path) -> None:
    """Nested a hundred thousand deep (json raises RecursionError), or a FIFO (opening
    one for reading waits for a writer forever): ignored, never a crash or a hang."""
    (tmp_path / manifest.NAME).write_text("[" * 100_000 + "]" * 100_000)
    assert manifest.load(tmp_path) == {}
    (tmp_path / manifest.NAME).write_text('{"version": 1, "files": ' + "[" * 100_000)
    assert manifest.load(tmp_path) == {}
    (tmp_path / manifest.NAME).unlink()
    os.mkfifo(tmp_path / manifest.NAME)
    assert manifest.load(tmp_path) == {}


def test_a_json_index_nested_deep_is_not_an_index() -> None:
    """json raises RecursionError for an array nested a hundred thousand deep: a hostile
    index page must end the listing with a clear error (ValueError here), not a crash."""
    with pytest.raises(ValueError):
        parse_page(b"[" * 100_000 + b"]" * 100_000, "application/json", PAGE)


@pytest.mark.parametrize("kind", ["text/html", "application/json"])
def test_a_page_whose_links_outgrow_the_listings_names_budget_stops(kind: str) -> None:
    """Each link repeats its page's URL: a small page deep under long folder names makes
    a great deal of it. Parsing stops as soon as the links pass the budget."""
    page_url = "http://h/" + "/".join("d" * 250 for _ in range(10)) + "/"
    names = [f"f{n}" for n in range(400)]
    if kind == "text/html":
        body = "".join(f'<a href="{name}">{name}</a>' for name in names).encode()
    else:
        body = json.dumps([{"name": name, "type": "file"} for name in names]).encode()
    whole = parse_page(body, kind, page_url)
    assert len(whole.links) == 400 and whole.size > 400 * len(page_url)
    with pytest.raises(PageTooLarge):
        parse_page(body, kind, page_url, max_size=100 * len(page_url))
    assert parse_page(body, kind, page_url, max_size=whole.size).size == whole.size


def test_a_page_naming_too_many_links_stops_before_reading_them_all() -> None:
    """Links dropped cost their parse as much as kept ones: a page may name no more
    than a tree's entries, and only the first few dropped ones are kept to be named."""
    body = b"".join(b'<a href="/elsewhere/%d">x</a>' % n for n in range(1000))
    page = parse_page(body, "text/html", "http://h/d/")
    assert page.links == [] and page.hostile_count == 1000 and len(page.hostile) == 10
    with pytest.raises(PageTooLarge, match="more than 999 links"):
        parse_page(body, "text/html", "http://h/d/", max_links=999)


def test_a_validator_and_every_name_count_in_bytes() -> None:
    """What a link holds is counted as UTF-8 bytes, its validator included."""
    body = json.dumps([{"name": "€" * 10, "type": "file", "size": 1, "mtime": "m" * 50}])
    url = "http://h/d/"
    page = parse_page(body.encode(), "application/json", url)
    (link,) = page.links
    assert page.size == len(link.url) + 30 + len(link.validator or "")
    with pytest.raises(PageTooLarge):
        parse_page(body.encode(), "application/json", url, max_size=page.size - 1)


def test_a_dir_others_may_write_into_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another user who can write into DIR could swap a folder for a symlink while a file
    is written there: what `place` cannot stop is said, at the start of the run."""
    mine = tmp_path / "mine"
    os.close(make_root(mine))  # (made)
    assert mine.is_dir() and "another user" not in caplog.text
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    os.close(make_root(shared))
    assert "another user may write into it" in caplog.text
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OutputError, match="cannot make"):
        make_root(tmp_path / "file" / "x")


def test_dir_is_held_from_its_check_to_the_last_file_and_the_manifest(tmp_path: Path) -> None:
    # Whoever can rename entries in DIR's parent (a shared folder) renamed DIR and put a
    # symlink in its place in the middle of a run: the later files, and the manifest,
    # went where it pointed (DIR was opened by its name for each file).
    shared, elsewhere = tmp_path / "shared", tmp_path / "victim"
    shared.mkdir()
    elsewhere.mkdir()
    root = shared / "dl"
    root_fd = make_root(root)
    try:
        with place(root, ("a.txt",), root_fd) as first:
            Path(first.path).write_text("one")
        os.rename(root, shared / "dl.old")
        os.symlink(elsewhere, root)
        with place(root, ("sub", "b.txt"), root_fd) as second:
            Path(second.path).write_text("two")
            assert second.real == root / "sub" / "b.txt"  # (as the user named it)
        record = manifest.Record(url="http://h/b.txt", size=3, mtime_ns=1, validator="v")
        manifest.save(root, {"sub/b.txt": record}, root_fd)
        assert manifest.load(root, root_fd) == {"sub/b.txt": record}
    finally:
        os.close(root_fd)
    assert os.listdir(elsewhere) == []
    kept = shared / "dl.old"
    assert (kept / "sub" / "b.txt").read_text() == "two"
    assert sorted(os.listdir(kept)) == [manifest.NAME, "a.txt", "sub"]
