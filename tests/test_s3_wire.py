"""A Register whose `s3` field is malformed (a peer of another version, with a field
more or less) is refused; the refusal, logged by the supernode and sent back, never
quotes the credentials it carried."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from collections.abc import Callable
from functools import partial

import msgpack
import pytest
import trio

from dfget.errors import DfgetError
from dfget.tree.entries import ListLimits
from proto.codec import TYPE_KEY, decode_header
from proto.errors import ProtoError
from proto.messages import Register

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"


@pytest.mark.parametrize(
    "s3",
    [
        ["http://s3:9", "us-east-1", "AKIDEXAMPLE", SECRET],  # no session token
        ["http://s3:9", "us-east-1", "AKIDEXAMPLE", SECRET, TOKEN, "extra"],
        ["http://s3:9", "eu", "AKIDEXAMPLE", SECRET, 7],
    ],
    ids=["a-field-less", "a-field-more", "a-wrong-type"],
)
def test_a_malformed_s3_field_is_refused_without_quoting_it(s3: list[object]) -> None:
    header = {
        TYPE_KEY: Register.TAG,
        "url": "http://s3:9/bucket/key",
        "public_key": bytes(32),
        "upload_port": 0,
        "s3": s3,
    }
    with pytest.raises(ProtoError) as refused:
        decode_header(msgpack.packb(header, use_bin_type=True))
    text = f"{refused.value} {refused.value!r}"
    assert "s3" in text
    for secret in (SECRET, TOKEN, SECRET[:8], "AKIDEXAMPLE"):
        assert secret not in text, text


ENDLESS_PAGE = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Name>bucket</Name><Prefix>p/</Prefix><KeyCount>%d</KeyCount><MaxKeys>1000</MaxKeys>
<IsTruncated>true</IsTruncated><NextContinuationToken>%s</NextContinuationToken>%s
</ListBucketResult>"""


@pytest.mark.parametrize("marker", [False, True], ids=["empty-pages", "folder-markers"])
async def test_an_endless_listing_ends_with_an_error(nursery: trio.Nursery, marker: bool) -> None:
    """A store that says every page is truncated, each with a new token, but lists
    nothing (or only folder markers, which are left out) must not be listed forever."""
    from dfget.s3 import S3Target
    from dfget.s3list import S3PrefixLister
    from dfget.tree.entries import ListingError, ListLimits, TreeTooLarge

    asked = 0

    async def answer(stream: trio.SocketStream) -> None:
        nonlocal asked
        asked += 1
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some()
        contents = b"<Contents><Key>p/d%d/</Key><Size>0</Size></Contents>" % asked
        body = ENDLESS_PAGE % (int(marker), b"t%d" % asked, contents if marker else b"")
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n"
        head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        await stream.send_all(head + body)
        await stream.aclose()

    (listener,) = await nursery.start(partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
    port = listener.socket.getsockname()[1]
    target = S3Target(f"http://127.0.0.1:{port}", "us-east-1", None)
    lister = S3PrefixLister(target, "bucket", "p/", limits=ListLimits(max_entries=50))
    with trio.fail_after(30), pytest.raises((TreeTooLarge, ListingError)):
        await lister.list_all()
    assert asked <= 51


LAST_PAGE = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Name>bucket</Name><Prefix>p/</Prefix><IsTruncated>false</IsTruncated>%s
</ListBucketResult>"""


async def one_page_store(nursery: trio.Nursery, contents: bytes) -> int:
    """A store on 127.0.0.1 that answers every listing with one last page; its port."""

    async def answer(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some()
        body = LAST_PAGE % contents
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n"
        head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        await stream.send_all(head + body)
        await stream.aclose()

    (listener,) = await nursery.start(partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
    port: int = listener.socket.getsockname()[1]
    return port


def contents(key: str, size: str) -> bytes:
    return f"<Contents><Key>{key}</Key><Size>{size}</Size></Contents>".encode()


async def test_a_lying_listing_yields_only_what_is_under_the_prefix(
    nursery: trio.Nursery,
) -> None:
    """Keys outside the prefix are left out (not cut into other names); sizes that are
    not plain short numbers are unknown, not a crash."""
    from dfget.s3 import S3Target
    from dfget.s3list import S3PrefixLister

    page = contents("p/ok.bin", "²") + contents("other.txt", "3")
    page += contents("p/big.bin", "9" * 5000) + contents("p/d/", "0")
    port = await one_page_store(nursery, page)
    target = S3Target(f"http://127.0.0.1:{port}", "us-east-1", None)
    entries = await S3PrefixLister(target, "bucket", "p/").list_all()
    assert sorted((e.path, e.size) for e in entries) == [(("big.bin",), None), (("ok.bin",), None)]


async def test_a_listing_deeper_than_the_limit_ends_with_an_error(nursery: trio.Nursery) -> None:
    from dfget.s3 import S3Target
    from dfget.s3list import S3PrefixLister
    from dfget.tree.entries import ListLimits, TreeTooLarge

    port = await one_page_store(nursery, contents("p/" + "d/" * 40 + "f.bin", "1"))
    target = S3Target(f"http://127.0.0.1:{port}", "us-east-1", None)
    lister = S3PrefixLister(target, "bucket", "p/", limits=ListLimits(max_depth=32))
    with pytest.raises(TreeTooLarge):
        await lister.list_all()


async def scripted_store(
    nursery: trio.Nursery, answer: Callable[[int], tuple[bytes, bytes, float]]
) -> tuple[int, list[bytes]]:
    """A store on 127.0.0.1 whose n-th answer (from 1) is `answer(n)`: the head's lines
    after the status line's, the body, and seconds to pause between the body's bytes;
    its port, and the requests it got."""
    requests: list[bytes] = []

    async def serve(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some()
        requests.append(request)
        head, body, pause = answer(len(requests))
        await stream.send_all(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        for i in range(0, len(body), 1 if pause else len(body) or 1):
            await stream.send_all(body[i : i + 1] if pause else body)
            await trio.sleep(pause)
        await stream.aclose()

    (listener,) = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    return int(listener.socket.getsockname()[1]), requests


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n"


def same_token(n: int) -> tuple[bytes, bytes, float]:
    return OK, ENDLESS_PAGE % (1, b"again", contents(f"p/f{n}.bin", "1")), 0.0


def long_names(n: int) -> tuple[bytes, bytes, float]:
    return OK, ENDLESS_PAGE % (1, b"t%d" % n, contents(f"p/{'n' * 1000}{n}.bin", "1")), 0.0


def slow(n: int) -> tuple[bytes, bytes, float]:
    return OK, LAST_PAGE % contents("p/f.bin", "1"), 0.05


def compressed(n: int) -> tuple[bytes, bytes, float]:
    head = OK + b"Content-Encoding: gzip, gzip\r\n"
    return head, gzip.compress(gzip.compress(bytes(16 << 20))), 0.0


def huge_token(n: int) -> tuple[bytes, bytes, float]:
    return OK, ENDLESS_PAGE % (1, b"t" * 3_000_000, contents("p/f.bin", "1")), 0.0


def tagged(key: str, etag: str) -> bytes:
    return f"<Contents><Key>{key}</Key><Size>1</Size><ETag>{etag}</ETag></Contents>".encode()


def huge_etag(n: int) -> tuple[bytes, bytes, float]:
    return OK, LAST_PAGE % tagged("p/f.bin", '"' + "e" * 2000 + '"'), 0.0


def long_etags(n: int) -> tuple[bytes, bytes, float]:  # (kept as validators: budgeted)
    return OK, ENDLESS_PAGE % (1, b"t%d" % n, tagged(f"p/f{n}", '"' + "e" * 1000 + '"')), 0.0


def no_namespace(n: int) -> tuple[bytes, bytes, float]:
    page = LAST_PAGE % contents("p/f.bin", "1")
    return OK, page.replace(b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"', b""), 0.0


def error_as_200(n: int) -> tuple[bytes, bytes, float]:
    return OK, b"<Error><Code>SlowDown</Code><Message>later</Message></Error>", 0.0


def redirect(n: int) -> tuple[bytes, bytes, float]:
    body = b"<Error><Code>PermanentRedirect</Code><Message>use another endpoint</Message></Error>"
    return b"HTTP/1.1 301 Moved Permanently\r\nContent-Type: application/xml\r\n", body, 0.0


@pytest.mark.parametrize(
    ("answer", "limits", "error", "message"),
    [
        (same_token, ListLimits(), "ListingError", "a continuation token it gave before"),
        (long_names, ListLimits(max_names=20_000), "TreeTooLarge", "bytes of names and URLs"),
        (slow, ListLimits(max_seconds=0.5), "TreeTooLarge", "takes more than 0.5s to list"),
        (compressed, ListLimits(), "ListingError", "encoded"),
        (redirect, ListLimits(), "ListingError", "answered 301"),
        (huge_token, ListLimits(), "ListingError", "a continuation token over"),
        (huge_etag, ListLimits(), "ListingError", "an ETag over"),
        (long_etags, ListLimits(max_names=20_000), "TreeTooLarge", "bytes of names and URLs"),
        (no_namespace, ListLimits(), "ListingError", "not a ListObjectsV2 answer"),
        (error_as_200, ListLimits(), "ListingError", "not a ListObjectsV2 answer"),
    ],
    ids=[
        "repeated-token",
        "names",
        "a-byte-at-a-time",
        "gzip-in-gzip",
        "redirect",
        "huge-token",
        "huge-etag",
        "etags-kept",
        "no-namespace",
        "error-as-200",
    ],
)
async def test_a_hostile_listing_is_bounded(
    nursery: trio.Nursery,
    answer: Callable[[int], tuple[bytes, bytes, float]],
    limits: object,
    error: str,
    message: str,
) -> None:
    """What bounds an HTTP index bounds an S3 listing too: the same token again (the
    same pages forever), names past the bytes allowed, a store sending a byte at a
    time, a page compressed twice (refused before it unpacks: the request asks for it
    as it is), an answer that is not a listing (a redirect to another region's
    endpoint is not an empty prefix)."""
    from dfget.s3 import S3Target
    from dfget.s3list import S3PrefixLister

    assert isinstance(limits, ListLimits)
    port, requests = await scripted_store(nursery, answer)
    target = S3Target(f"http://127.0.0.1:{port}", "us-east-1", None)
    lister = S3PrefixLister(target, "bucket", "p/", limits=limits)
    with trio.fail_after(30), pytest.raises(DfgetError, match=message) as raised:
        await lister.list_all()
    assert type(raised.value).__name__ == error
    assert len(requests) <= 30
    assert all(b"accept-encoding: identity" in request.lower() for request in requests)


_BOMB = (
    b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY e "' + b"k" * 2500 + b'">]>'
    b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    + b"<Contents><Key>&e;</Key></Contents>" * 2000
    + b"</ListBucketResult>"
)


@pytest.mark.parametrize(
    ("page", "message"),
    [
        (_BOMB, "a document type declaration"),
        (
            _BOMB.decode().replace("?>", ' encoding="UTF-16"?>', 1).encode("utf-16"),
            "document type",
        ),
        (LAST_PAGE % contents("p/" + "k" * 1030, "1"), "a key over 1024 bytes"),
        (b"<ListBucketResult", "not a ListObjectsV2 answer"),
    ],
    ids=["entities", "entities-in-utf-16", "key-too-long", "cut-short"],
)
def test_a_listing_page_that_is_not_s3s_is_refused_before_it_grows(
    page: bytes, message: str
) -> None:
    """A page that declares entities would expand a hundredfold in memory as it is
    parsed (a 4 MiB page to hundreds of MiB): S3 never sends a document type, so one is
    refused before anything is expanded, whatever the page's encoding."""
    from dfget.s3list import _parse_page
    from dfget.tree.entries import ListingError

    tracemalloc.start()
    try:
        with pytest.raises(ListingError, match=message):
            _parse_page(page, "s3://bucket/p/")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(page) + (1 << 20)
    keys, token = _parse_page(LAST_PAGE % contents("p/fine.bin", "3"), "s3://bucket/p/")
    assert (keys, token) == ([("p/fine.bin", 3, None)], None)


def test_a_register_naming_an_s3_object_by_a_digest_is_refused_for_its_task() -> None:
    """A digest-named task is read without the origin's say: a supernode takes none for
    an S3 object, whose task its URL names (each requester's keys checked). Refused for
    that task (a BAD_REQUEST answer), not as a broken protocol: an older peer's session
    and its other downloads go on."""
    from supernode.cdn.task import TaskSpec

    header = {
        TYPE_KEY: Register.TAG,
        "url": "http://s3:9/bucket/key",
        "digest": "sha256:" + "0" * 64,
        "headers": [],
        "tag": "",
        "filter": [],
        "public_key": bytes(32),
        "upload_port": 0,
        "s3": ["http://s3:9", "us-east-1", "AKIDEXAMPLE", SECRET, TOKEN],
    }
    register, _ = decode_header(msgpack.packb(header, use_bin_type=True))
    assert isinstance(register, Register)
    with pytest.raises(ValueError, match="named by its url"):
        TaskSpec.from_request(register.url, (), digest=register.digest, s3=register.s3)
    assert TaskSpec.from_request(register.url, (), s3=register.s3).digest is None


@pytest.mark.parametrize(
    ("url", "filter_keys"),
    [("http://s3:9/bucket/key?partNumber=1", ("partNumber",)), ("http://s3:9/bucket/key", ("x",))],
    ids=["a-part-filtered-out", "a-filter"],
)
def test_an_s3_object_named_with_a_query_or_a_filter_is_refused_for_its_task(
    url: str, filter_keys: tuple[str, ...]
) -> None:
    """`?partNumber=1` with that key filtered out would give a part the whole object's
    task id (and S3 answers it with the object's ETag): refused for that task, as a
    digest is (BAD_REQUEST), and by the daemon for its client."""
    from dfdaemon.control import BadInput, _parse
    from proto.messages import S3Access
    from supernode.cdn.task import TaskSpec

    access = S3Access("http://s3:9", "us-east-1", "AKIDEXAMPLE", SECRET, TOKEN)
    with pytest.raises(ValueError, match="no query and takes no filter"):
        TaskSpec.from_request(url, (), filter_keys=filter_keys, s3=access)
    assert TaskSpec.from_request(url.split("?")[0], (), s3=access).filter == ()
    fields = {"url": url, "filter": list(filter_keys), "s3": access._asdict()}
    with pytest.raises(BadInput, match=r"s3: the url has no query|filter: not for an S3"):
        _parse(json.dumps(fields).encode())
