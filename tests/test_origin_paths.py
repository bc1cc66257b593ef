"""Both back-to-source paths (the lean HTTP/1.1 body reader and httpx) behave alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from conftest import Fetch, StartSupernode, downloads

from common.io.origins import open_checked_tcp_stream
from common.origins import OriginPolicy
from dfdaemon.probe import ProbeFailed
from dfdaemon.probe import _request as probe_request
from dfget.errors import DfgetError, OriginFailed
from proto.pieces import MiB
from proto.taskid import task_id_for
from supernode.cdn import lean as lean_module
from supernode.cdn.lean import _request as lean_request
from supernode.cdn.response import header_bytes
from supernode.cdn.task import TaskState
from supernode.errors import BadRequest
from testkit.origin import FakeOrigin
from testkit.scripted import Answer, ScriptedOrigin, Seen

pytestmark = pytest.mark.parametrize("lean", [True, False], ids=["lean", "httpx"])


async def test_plain_chunked_and_ranged_bodies(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, lean: bool
) -> None:
    node = await start_supernode(lean_http=lean)
    data = os.urandom(5 * MiB + 3)
    origin.add("/plain.bin", data)
    origin.add("/chunked.bin", data, chunked=True)
    for path in ("/plain.bin", "/chunked.bin"):
        result = await fetch(origin.url(path), node)
        assert Path(result.output).read_bytes() == data
    ranged = await fetch(origin.url("/plain.bin"), node, headers=(("Range", "bytes=7-1048583"),))
    assert Path(ranged.output).read_bytes() == data[7:1048584]


async def test_resume_after_drops(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, lean: bool
) -> None:
    node = await start_supernode(lean_http=lean)
    data = os.urandom(4 * MiB)
    origin.add("/drop.bin", data, drop_after=MiB + 17, drop_times=2)
    origin.add("/drop-chunked.bin", data, drop_after=MiB + 17, chunked=True)
    for path in ("/drop.bin", "/drop-chunked.bin"):
        result = await fetch(origin.url(path), node)
        assert Path(result.output).read_bytes() == data
    gets = [h for m, h in origin.stats["/drop.bin"].requests if m == "GET"]
    # Every resumed GET is guarded by If-Range with the strong ETag.
    assert len(gets) == 3 and all(dict(h).get("if-range", "").startswith('"') for h in gets[1:])


async def test_status_timeout_and_stall(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, lean: bool, tmp_path: Path
) -> None:
    node = await start_supernode(lean_http=lean, origin_timeout=0.5, max_resumes=0)
    origin.add("/forbidden.bin", b"x", status=403)
    with pytest.raises(OriginFailed) as info:
        await fetch(origin.url("/forbidden.bin"), node)
    assert info.value.status == 403
    origin.add("/hang.bin", b"x", hang=True)
    with pytest.raises(OriginFailed, match="timed out"):
        await fetch(origin.url("/hang.bin"), node)
    # A body that stops mid-way (and cannot be resumed: max_resumes=0) fails too.
    origin.add("/stall.bin", os.urandom(2 * MiB), gate_after=MiB + 1, gate=trio.Event())
    with pytest.raises(OriginFailed, match="stalled"):
        await fetch(origin.url("/stall.bin"), node)
    assert downloads(tmp_path) == []


async def test_redirect_to_another_origin_drops_credentials(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    nursery: trio.Nursery,
    lean: bool,
) -> None:
    other = FakeOrigin()
    await nursery.start(other.serve)
    data = os.urandom(MiB + 1)
    other.add("/real.bin", data)
    origin.add("/here.bin", data)
    origin.add("/moved-here.bin", b"", redirect_to="/here.bin")
    origin.add("/moved-away.bin", b"", redirect_to=other.url("/real.bin"))
    node = await start_supernode(lean_http=lean)
    # (an S3 session token too: a credential that httpx, following redirects itself,
    # passed on to any host)
    secret = (("Authorization", "Bearer s3cret"), ("Cookie", "c=1"), ("X-Amz-Security-Token", "t"))
    same = await fetch(origin.url("/moved-here.bin"), node, headers=secret)
    assert Path(same.output).read_bytes() == data
    assert ("authorization", "Bearer s3cret") in origin.stats["/here.bin"].requests[0][1]
    away = await fetch(origin.url("/moved-away.bin"), node, headers=secret)
    assert Path(away.output).read_bytes() == data
    _, sent = other.stats["/real.bin"].requests[0]
    assert not any(k in ("authorization", "cookie", "x-amz-security-token") for k, _ in sent)


async def test_back_to_source_redirected_elsewhere_takes_no_credentials(
    origin: FakeOrigin, fetch: Fetch, nursery: trio.Nursery, lean: bool
) -> None:
    """dfget's own GET (no supernode) follows redirects with httpx, which keeps every
    header but Authorization: a session token or a cookie must not go to another host."""
    other = FakeOrigin()
    await nursery.start(other.serve)
    data = os.urandom(MiB + 5)
    other.add("/real.bin", data)
    origin.add("/moved-away.bin", b"", redirect_to=other.url("/real.bin"))
    secret = (("Authorization", "Bearer s3cret"), ("Cookie", "c=1"), ("X-Amz-Security-Token", "t"))
    away = await fetch(origin.url("/moved-away.bin"), None, headers=secret)
    assert Path(away.output).read_bytes() == data
    assert ("x-amz-security-token", "t") in origin.stats["/moved-away.bin"].requests[0][1]
    _, sent = other.stats["/real.bin"].requests[0]
    assert not any(k in ("authorization", "cookie", "x-amz-security-token") for k, _ in sent)


async def test_redirect_to_https_leaves_the_lean_path(
    origin: FakeOrigin,
    tls_origin: tuple[FakeOrigin, bytes],
    start_supernode: StartSupernode,
    fetch: Fetch,
    lean: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plain-HTTP origin redirects to an HTTPS one: the lean path hands the https URL
    to httpx, and never connects to the HTTPS origin itself (not even to try TLS)."""
    secure, _ = tls_origin
    data = os.urandom(MiB + 3)
    secure.add("/x.bin", data)
    origin.add("/to-tls.bin", b"", redirect_to=secure.url("/x.bin"))
    lean_connects: list[tuple[str, int]] = []

    async def connect(policy: OriginPolicy, host: str, port: int) -> trio.SocketStream:
        lean_connects.append((host, port))
        return await open_checked_tcp_stream(policy, host, port)

    monkeypatch.setattr(lean_module, "open_checked_tcp_stream", connect)
    node = await start_supernode(lean_http=lean, insecure=True)  # the certificate: self-signed
    assert Path((await fetch(origin.url("/to-tls.bin"), node)).output).read_bytes() == data
    # The lean path took the first hop (when on), and only that one.
    assert set(lean_connects) == ({("127.0.0.1", origin.port)} if lean else set())


async def test_credentials_in_the_url_are_basic_auth(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, lean: bool
) -> None:
    import base64

    data = os.urandom(MiB + 2)
    origin.add("/private.bin", data, require_auth="Basic " + base64.b64encode(b"u:p w").decode())
    node = await start_supernode(lean_http=lean)
    url = origin.url("/private.bin").replace("http://", "http://u:p%20w@")
    assert Path((await fetch(url, node)).output).read_bytes() == data
    _, sent = origin.stats["/private.bin"].requests[0]
    assert dict(sent)["host"] == f"127.0.0.1:{origin.port}"  # no user info in Host


async def test_non_ascii_paths_are_percent_encoded(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, lean: bool
) -> None:
    origin.add("/dir/ä b.bin", b"umlaut")
    node = await start_supernode(lean_http=lean)
    result = await fetch(origin.url("/dir/ä b.bin"), node)
    assert Path(result.output).read_bytes() == b"umlaut"


@pytest.mark.parametrize(
    "location",
    [
        "http://[::1",
        "http://127.0.0.1:x/a",
        "http://127.0.0.1:99999/a",
        "http://127.0.0.000/a",
        "http://xn--a/a",
        "ftp://127.0.0.1/a",
        "http:///a",
        "http://a b/a",
    ],
)
async def test_a_redirect_to_a_url_no_client_can_send_fails_as_the_origins(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, lean: bool, location: str
) -> None:
    """The origin's failure (a download error naming the redirect), not the supernode's
    internal error; and the supernode serves the next download as before."""
    node = await start_supernode(lean_http=lean, max_resumes=0)
    origin.add("/bad-move.bin", b"", redirect_to=location)
    with pytest.raises(OriginFailed) as info:
        await fetch(origin.url("/bad-move.bin"), node)
    assert "internal" not in str(info.value).lower()
    data = os.urandom(MiB)
    origin.add("/fine.bin", data)
    assert Path((await fetch(origin.url("/fine.bin"), node)).output).read_bytes() == data


async def test_port_0_is_no_url_to_fetch_not_port_80(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, lean: bool
) -> None:
    # (the lean path read `:0` as no port: a redirect to 127.0.0.1:0 fetched port 80)
    node = await start_supernode(lean_http=lean, max_resumes=0)
    origin.add("/to-zero.bin", b"", redirect_to="http://127.0.0.1:0/x")
    with pytest.raises(OriginFailed, match="port 0" if lean else None):  # (httpx: refused)
        await fetch(origin.url("/to-zero.bin"), node)


def test_the_lean_request_and_the_probe_refuse_port_0(lean: bool) -> None:
    with pytest.raises(BadRequest, match="port 0"):
        lean_request("http://127.0.0.1:0/x", [])
    with pytest.raises(ProbeFailed, match="port 0"):
        probe_request("http://127.0.0.1:0/x", [])


async def test_a_resumed_body_of_another_version_is_never_spliced(
    start_supernode: StartSupernode, fetch: Fetch, lean: bool
) -> None:
    """A body cut short is resumed with If-Range; an origin that ignores it and sends
    the rest of a newer version (another ETag) ends the task, where the CDN stored the
    old version's first half and the new one's second as one file, for every peer."""
    node = await start_supernode(lean_http=lean)
    size, cut = 3 * MiB, MiB + MiB // 2
    old, new = os.urandom(size), os.urandom(size)

    def answer(seen: Seen) -> Answer:
        asked = seen.headers.get("range")
        if asked is None:  # version "a", cut short
            return Answer(200, [("etag", '"a"'), ("content-length", str(size))], old[:cut])
        start = int(asked.removeprefix("bytes=").partition("-")[0])
        headers = [("etag", '"b"'), ("content-range", f"bytes {start}-{size - 1}/{size}")]
        return Answer(206, headers, new[start:])

    server = ScriptedOrigin(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        url = server.url("/changing.bin")
        with pytest.raises(DfgetError):
            await fetch(url, node, back_source=False)
        nursery.cancel_scope.cancel()
    task = node.node.cdn.current(task_id_for(url))
    assert task is not None and task.state is TaskState.FAILED
    assert "changed upstream" in str(task.error)
    resumed = [seen for seen in server.seen if "range" in seen.headers]
    assert resumed and all(seen.headers.get("if-range") == '"a"' for seen in resumed)


@pytest.mark.parametrize(
    ("span", "chunked"),
    [((0, 99), False), ((100, 149), True), ((100, 299), True), ((100, 149), False)],
    ids=["other-start", "short-chunked", "long-chunked", "short"],
)
async def test_a_range_answered_with_another_span_fails_the_task(
    start_supernode: StartSupernode,
    fetch: Fetch,
    lean: bool,
    span: tuple[int, int],
    chunked: bool,
) -> None:
    """A ranged task's 206 must be the span asked for: bytes 0-99 for `bytes=100-199`
    (a cache in front of the origin that got it wrong) were stored as that range, and
    so were a chunked 206 of bytes 100-149 or 100-299."""
    node = await start_supernode(lean_http=lean)
    data = os.urandom(1000)
    first, last = span

    def answer(seen: Seen) -> Answer:
        headers: list[tuple[str, str | bytes]] = [("etag", '"a"')]
        headers.append(("content-range", f"bytes {first}-{last}/1000"))
        if chunked:
            headers.append(("transfer-encoding", "chunked"))
        return Answer(206, headers, data[first : last + 1])

    server = ScriptedOrigin(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        url = server.url("/ranged.bin")
        with pytest.raises(DfgetError):
            await fetch(url, node, back_source=False, headers=(("Range", "bytes=100-199"),))
        nursery.cancel_scope.cancel()
    [task] = [t for t in node.node.cdn.tasks.values() if t.spec.url == url]
    assert task.state is TaskState.FAILED
    assert "wrong span" in str(task.error) or "for a range of" in str(task.error)


async def test_a_resumed_body_with_the_same_etag_and_another_date_is_the_same_file(
    start_supernode: StartSupernode, fetch: Fetch, lean: bool
) -> None:
    """If-Range held (the same strong ETag): the same version, whatever the date beside
    it says (backends behind a balancer may date one file differently)."""
    node = await start_supernode(lean_http=lean)
    size, cut = 3 * MiB, MiB + MiB // 2
    data = os.urandom(size)

    def answer(seen: Seen) -> Answer:
        asked = seen.headers.get("range")
        if asked is None:
            headers = [("etag", '"a"'), ("last-modified", "Thu, 01 Jan 2026 00:00:00 GMT")]
            return Answer(200, [*headers, ("content-length", str(size))], data[:cut])
        start = int(asked.removeprefix("bytes=").partition("-")[0])
        headers = [("etag", '"a"'), ("last-modified", "Fri, 02 Jan 2026 00:00:00 GMT")]
        headers.append(("content-range", f"bytes {start}-{size - 1}/{size}"))
        return Answer(206, headers, data[start:])

    server = ScriptedOrigin(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        result = await fetch(server.url("/f.bin"), node, back_source=False)
        nursery.cancel_scope.cancel()
    assert Path(result.output).read_bytes() == data


async def test_an_etag_past_ascii_goes_back_as_it_came(
    start_supernode: StartSupernode, fetch: Fetch, lean: bool
) -> None:
    """An origin's ETag with bytes past ASCII (UTF-8 here): the second download's
    revalidation sends it back in If-None-Match byte for byte, where the request could
    not be built (h11 and httpx take ASCII strs) and the download was a usage error."""
    node = await start_supernode(lean_http=lean)
    data = os.urandom(MiB)
    etag = '"caf\u00e9"'.encode()

    def answer(seen: Seen) -> Answer:
        if seen.headers.get("if-none-match", "").encode("latin-1") == etag:
            return Answer(304, [("etag", etag)])
        if "range" in seen.headers:
            return Answer(
                206, [("etag", etag), ("content-range", f"bytes 0-0/{len(data)}")], data[:1]
            )
        return Answer(200, [("etag", etag)], data)

    server = ScriptedOrigin(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        url = server.url("/f.bin")
        for name in ("first", "second"):
            result = await fetch(url, node, name=name, back_source=False)
            assert Path(result.output).read_bytes() == data
        nursery.cancel_scope.cancel()
    assert any("if-none-match" in seen.headers for seen in server.seen)
    assert len([seen for seen in server.seen if "range" not in seen.headers]) == 1  # fetched once


def test_a_validator_stored_past_latin_1_goes_out_as_its_utf_8_bytes(lean: bool) -> None:
    """A task stored before values were read as Latin-1 holds the ETag as httpx read it
    (UTF-8: '"café-€"'): its revalidation could not be built (a usage error for every
    later requester until the task expired); it goes out as the bytes it was read from."""
    etag = '"caf\u00e9-\u20ac"'
    assert header_bytes(etag) == etag.encode("utf-8")
    assert header_bytes('"caf\u00e9"') == b'"caf\xe9"'  # (Latin-1, as read now)
    _, _, request = lean_request("http://127.0.0.1:9/f.bin", [("If-None-Match", etag)])
    assert (b"if-none-match", etag.encode("utf-8")) in list(request.headers)
