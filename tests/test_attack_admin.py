"""Attacks on the supernode's admin API and preheats (issue 12, items 7 and 8): a web
page's "simple" POST, an admin port with no token, query values that broke handlers,
a stranger holding connections, a registry that names a token realm elsewhere or sends
an endless manifest."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
import trio
from adminapi import admin_client, preheat_ended
from conftest import RunningSupernode, StartSupernode, until
from fakenet import FakeNetwork
from prometheus_client import CollectorRegistry
from rawwire import raw_connect

from proto.pieces import MiB
from supernode.admin.api import AdminApi
from supernode.admin.asgi import Request
from supernode.admin.view import AdminSettings
from testkit.origin import FakeOrigin


def admin_connections(node: RunningSupernode) -> int:
    """Connections the admin port holds now."""
    return node.node.admin.connections.statistics().open


# -- a web page in a browser on the host -------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
async def test_a_browser_simple_post_cannot_start_a_preheat(
    origin: FakeOrigin, start_supernode: StartSupernode, content_type: str | None
) -> None:
    """What a page on any web site can make a browser send to 127.0.0.1:8001 without a
    CORS preflight: a POST whose body is JSON but whose type is not. Even on an admin
    port the operator opened (--admin-open), it must not start anything."""
    node = await start_supernode(admin_listen=("127.0.0.1", 0), admin_open=True)
    origin.add("/big.iso", os.urandom(MiB))
    body = json.dumps({"type": "file", "url": origin.url("/big.iso")}).encode()
    headers = {"origin": "https://evil.example", "content-type": content_type or ""}
    async with admin_client(node, token=False) as client:
        answer = await client.post("/api/v1/preheats", content=body, headers=headers)
    assert answer.status_code == 415, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert "application/json" in answer.json()["detail"]
    assert node.node.preheats.all == {}
    assert origin.stats["/big.iso"].requests == []


async def test_a_preheat_naming_its_url_twice_is_refused(
    origin: FakeOrigin, start_supernode: StartSupernode
) -> None:
    """A gateway in front of the admin API that reads the first `url` (to allow it)
    while the supernode read the last would preheat what was never allowed: 400."""
    node = await start_supernode(admin_listen=("127.0.0.1", 0))
    origin.add("/allowed.bin", os.urandom(MiB))
    origin.add("/other.bin", os.urandom(MiB))
    body = (
        f'{{"type": "file", "url": "{origin.url("/allowed.bin")}", '
        f'"url": "{origin.url("/other.bin")}"}}'
    ).encode()
    async with admin_client(node) as client:
        answer = await client.post(
            "/api/v1/preheats", content=body, headers={"content-type": "application/json"}
        )
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"] == "the body names the key 'url' twice"
    assert node.node.preheats.all == {}
    assert origin.stats["/other.bin"].requests == origin.stats["/allowed.bin"].requests == []


async def test_mutations_are_never_open_unless_the_operator_says_so(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="supernode.admin.api")
    data_dir = tmp_path / "sn"
    origin.add("/f.bin", os.urandom(MiB))
    body = {"type": "file", "url": origin.url("/f.bin")}
    node = await start_supernode(data_dir=data_dir, admin_listen=("127.0.0.1", 0))
    async with admin_client(node, token=False) as client:
        anonymous = await client.post("/api/v1/preheats", json=body)
        evict = await client.delete("/api/v1/tasks/" + "a" * 64)
    assert anonymous.status_code == evict.status_code == 401, anonymous.text
    assert node.node.preheats.all == {}
    # The token the supernode made for itself: in the data dir, 0600, logged by path only.
    token_file = data_dir / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert str(token_file) in caplog.text and token not in caplog.text
    async with admin_client(node, token=False) as client:
        allowed = await client.post(
            "/api/v1/preheats", json=body, headers={"authorization": f"Bearer {token}"}
        )
    assert allowed.status_code == 202
    # A restart keeps it.
    await node.stop()
    again = await start_supernode(data_dir=data_dir, admin_listen=("127.0.0.1", 0))
    assert token_file.read_text().strip() == token
    async with admin_client(again, token=False) as client:
        anonymous = await client.post("/api/v1/preheats", json=body)
        allowed = await client.post(
            "/api/v1/preheats", json=body, headers={"authorization": f"Bearer {token}"}
        )
    assert (anonymous.status_code, allowed.status_code) == (401, 202)


# -- query values and bodies that broke handlers -------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "limit=" + quote("²"),  # str.isdigit() but not a number int() takes
        "offset=" + quote("⁵"),
        "limit=" + quote("١٠"),  # Arabic-Indic digits
        "limit=" + quote("１"),  # a fullwidth digit
        "limit=" + "9" * 5000,  # past int()'s digit limit
        "offset=" + "9" * 5000,
        "offset=" + "9" * 30,
        "limit=%FF%FE",  # not UTF-8
        "limit=%",  # bad percent-encoding
        "state=%ZZ",
        "limit=1&limit=2",
        "offset=-0",
        "limit=1e3",
    ],
)
async def test_bad_query_values_get_400_not_500(
    start_supernode: StartSupernode, query: str
) -> None:
    node = await start_supernode(admin_listen=("127.0.0.1", 0))
    async with admin_client(node, token=False) as client:
        answer = await client.get(f"/api/v1/tasks?{query}")
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,  # nested deeper than the JSON parser goes
        b'{"type": "file", "url": "http://[not-an-address/x"}',
        b'{"type": "file", "url": "http://host:99999999/x"}',
        b'{"type": "file", "url": "http:///nohost"}',
        b'{"type": "file", "url": "http://127.0.0.000/x"}',
        b'{"type": "file", "url": "http://xn--a/x"}',
        b'{"type": "image", "url": "http://198.18.0.1:x/v2/a/manifests/1"}',
        b'{"type": "file", "url": "http://198.18.0.1/x", "headers": {"A": "Bearer \\u00e9"}}',
        b'{"type": "file", "url": "http://198.18.0.1/x", "headers": [["X-A", "a\\r\\nX-B: b"]]}',
        b'{"type": "file", "url": "http://198.18.0.1/' + b"x" * 9000 + b'"}',
        b'{"type": "file", "url": "http://198.18.0.1/x", '
        b'"headers": {"Authorization": "Basic YTpi", "authorization": "Basic Yzpk"}}',
        b'{"type": "file", "url": "http://198.18.0.1/x", '
        b'"headers": [["Authorization", "Basic YTpi"], ["AUTHORIZATION", "Basic Yzpk"]]}',
    ],
    ids=[
        "deep",
        "bad-ipv6",
        "bad-port",
        "no-host",
        "zeros",
        "bad-idna",
        "port-x",
        "non-ascii-header",
        "header-line-break",
        "url-past-8192",
        "header-twice-by-case",
        "header-twice-listed",
    ],
)
async def test_bad_preheat_bodies_get_400_not_500(
    start_supernode: StartSupernode, body: bytes
) -> None:
    node = await start_supernode(admin_listen=("127.0.0.1", 0))
    headers = {"content-type": "application/json"}
    async with admin_client(node) as client:
        answer = await client.post("/api/v1/preheats", content=body, headers=headers)
    assert answer.status_code == 400, answer.text
    assert node.node.preheats.all == {}


# -- strangers holding connections ---------------------------------------------------------


async def open_raw(node: RunningSupernode, receive_buffer: int | None = None) -> trio.SocketStream:
    assert node.node.admin_address is not None
    return await raw_connect(node.node.admin_address, receive_buffer=receive_buffer)


async def read_all(stream: trio.SocketStream, seconds: float = 10.0) -> bytes:
    """Everything until the server closes (a reset counts as a close)."""
    received = b""
    with trio.fail_after(seconds):
        while True:
            try:
                chunk = await stream.receive_some(1 << 16)
            except trio.BrokenResourceError:
                return received
            if not chunk:
                return received
            received += chunk


async def test_the_admin_port_caps_its_connections(start_supernode: StartSupernode) -> None:
    node = await start_supernode(admin_listen=("127.0.0.1", 0), admin_max_connections=4)
    held = [await open_raw(node) for _ in range(4)]
    for stream in held:  # a request head that never ends
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    await until(lambda: admin_connections(node) == 4)
    extra = await open_raw(node)
    with contextlib.suppress(trio.BrokenResourceError):
        await extra.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert await read_all(extra) == b""  # closed before a byte was read: no answer
    await extra.aclose()
    await held.pop().aclose()  # its place is free as soon as the server sees the close
    await until(lambda: admin_connections(node) == 3)
    async with admin_client(node, token=False) as client:
        assert (await client.get("/healthz")).status_code == 200  # room again
    for stream in held:
        await stream.aclose()


async def test_a_client_dripping_a_request_head_is_dropped(
    start_supernode: StartSupernode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AdminApi, "keep_alive_timeout", 1.0)
    node = await start_supernode(admin_listen=("127.0.0.1", 0))
    stream = await open_raw(node)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 1000
    began = trio.current_time()
    with trio.move_on_after(10), contextlib.suppress(trio.BrokenResourceError):
        for byte in head:  # a byte every 50 ms: never idle long
            await stream.send_all(bytes([byte]))
            await trio.sleep(0.05)
    assert await read_all(stream) == b""
    assert trio.current_time() - began < 5  # hypercorn's default would be 5 s and more
    await stream.aclose()


async def test_a_client_dripping_a_body_gets_a_408(
    start_supernode: StartSupernode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AdminApi, "body_timeout", 1.0)
    node = await start_supernode(admin_listen=("127.0.0.1", 0), admin_open=True)
    stream = await open_raw(node)
    head = (
        b"POST /api/v1/preheats HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    await stream.send_all(head)
    answer = b""
    with trio.move_on_after(10):  # the fix answers after about 1 s; none would hang here
        async with trio.open_nursery() as nursery:

            async def drip() -> None:
                while True:  # a byte every 100 ms: never idle long enough for a timeout
                    await stream.send_all(b" ")
                    await trio.sleep(0.1)

            nursery.start_soon(drip)
            answer = await stream.receive_some(1 << 16)
            nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    await stream.aclose()


async def test_a_client_that_never_reads_is_cut_off(
    start_supernode: StartSupernode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AdminApi, "send_timeout", 1.0)
    node = await start_supernode(admin_listen=("127.0.0.1", 0))
    stream = await open_raw(node, receive_buffer=4096)  # a small window
    # ~5 MB of status pages: more than the socket buffers hold (at most 4 MiB to send),
    # under hypercorn's 1000 requests a connection.
    count = 990
    requests = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * count
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(requests)

        nursery.start_soon(send)
        # The fix closes the connection once a write waits 1 s; without it the server
        # waits forever.
        await until(lambda: admin_connections(node) == 1)
        await until(lambda: admin_connections(node) == 0)
        received = await read_all(stream, seconds=30)
        nursery.cancel_scope.cancel()
    answered = received.count(b"HTTP/1.1 200")
    assert answered < count, "the server kept a connection nobody read for good"


async def test_the_admin_port_speaks_no_http2(start_supernode: StartSupernode) -> None:
    """hypercorn switches to HTTP/2 on its preface or an `Upgrade: h2c`: a hundred
    requests a connection, each reading its body before the token is checked, streams
    waiting on flow control where no send deadline sees them. The port speaks
    HTTP/1.1 alone: the preface is no route, the upgrade is answered in HTTP/1.1."""
    node = await start_supernode(admin_listen=("127.0.0.1", 0))
    stream = await open_raw(node)
    # The preface, then a SETTINGS frame (empty) as an HTTP/2 client sends it.
    await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
    answer = await read_all(stream)
    assert answer.startswith(b"HTTP/1.1 4"), answer[:100]  # (HTTP/2 answers with SETTINGS)
    await stream.aclose()
    stream = await open_raw(node)
    await stream.send_all(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    with trio.fail_after(10):
        answer = await stream.receive_some(1 << 16)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]  # (not 101 Switching Protocols)
    await stream.aclose()


@pytest.mark.parametrize("token", [False, True])
async def test_a_body_is_not_read_before_its_token_and_length_are_checked(
    start_supernode: StartSupernode, token: bool
) -> None:
    """A POST is refused on its head: without the token (401), or naming a body over the
    limit (413), before a byte of the body is read (it was read first, all of it)."""
    node = await start_supernode(admin_listen=("127.0.0.1", 0))
    stream = await open_raw(node)
    length = 100 if not token else 2 * 1024 * 1024
    secret = node.node.admin.token
    assert secret is not None
    auth = f"Authorization: Bearer {secret.decode()}\r\n" if token else ""
    await stream.send_all(
        b"POST /api/v1/preheats HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + auth.encode()
        + f"Content-Length: {length}\r\n\r\n".encode()
    )
    with trio.fail_after(5):  # (no byte of the body ever comes)
        answer = await stream.receive_some(1 << 16)
    assert answer.startswith(b"HTTP/1.1 413" if token else b"HTTP/1.1 401"), answer[:100]
    await stream.aclose()


# -- preheat: token realms and manifests ---------------------------------------------------


async def test_a_preheat_keeps_registry_credentials_from_a_foreign_token_realm(
    nursery: trio.Nursery, start_supernode: StartSupernode, tmp_path: Path
) -> None:
    """The registry's 401 names a realm on another host, over plain http: the Basic
    credentials must not go there, unless the operator trusts that realm."""
    net = FakeNetwork().install()
    registry, realm = FakeOrigin(), FakeOrigin()
    await nursery.start(registry.serve)
    await nursery.start(realm.serve)
    net.names["registry.test"] = net.names["auth.test"] = ["127.0.0.1"]
    basic = "Basic " + base64.b64encode(b"ci:secret-pass").decode()
    realm_url = f"http://auth.test:{realm.port}/token"
    challenge = f'Bearer realm="{realm_url}",service="registry",scope="repository:team/app:pull"'
    realm.add("/token", json.dumps({"token": "t0ken"}).encode())
    registry.add(
        "/v2/team/app/manifests/1", b"{}", require_auth="Bearer t0ken", challenge=challenge
    )
    url = f"http://registry.test:{registry.port}/v2/team/app/manifests/1"

    async def preheat(node: RunningSupernode) -> dict[str, Any]:
        async with admin_client(node) as client:
            created = await client.post(
                "/api/v1/preheats",
                json={"type": "image", "url": url, "headers": {"Authorization": basic}},
            )
            assert created.status_code == 202, created.text
            return await preheat_ended(client, f"/api/v1/preheats/{created.json()['id']}")

    def sent_to_realm() -> list[str | None]:
        return [dict(h).get("authorization") for _, h in realm.stats["/token"].requests]

    wary = await start_supernode(data_dir=tmp_path / "wary", admin_listen=("127.0.0.1", 0))
    await preheat(wary)
    assert sent_to_realm() == [None]  # asked anonymously: the credentials stayed home
    trusting = await start_supernode(
        data_dir=tmp_path / "trusting",
        admin_listen=("127.0.0.1", 0),
        preheat_realms=(f"http://auth.test:{realm.port}",),
    )
    await preheat(trusting)
    assert sent_to_realm() == [None, basic]


async def image_preheat(
    origin: FakeOrigin, start_supernode: StartSupernode, manifest: bytes, **fault: Any
) -> dict[str, Any]:
    """An image preheat of a registry (`origin`) whose manifest is `manifest`: its end."""
    origin.add("/v2/team/app/manifests/1", manifest, **fault)
    node = await start_supernode(admin_listen=("127.0.0.1", 0))
    async with admin_client(node) as client:
        created = await client.post(
            "/api/v1/preheats",
            json={"type": "image", "url": origin.url("/v2/team/app/manifests/1")},
        )
        return await preheat_ended(client, f"/api/v1/preheats/{created.json()['id']}")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_preheat_stops_reading_a_huge_manifest(
    origin: FakeOrigin, start_supernode: StartSupernode, chunked: bool
) -> None:
    size = 48 * MiB  # the cap is 4 MiB
    state = await image_preheat(origin, start_supernode, b" " * size, chunked=chunked)
    assert state["state"] == "failed" and "too large" in state["error"]
    # Stopped near the cap: what the origin wrote is the cap plus socket buffers.
    assert origin.stats["/v2/team/app/manifests/1"].bytes_sent < 24 * MiB


async def test_a_manifest_nested_past_the_parser_fails_its_preheat_plainly(
    origin: FakeOrigin, start_supernode: StartSupernode, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON nested deeper than Python's parser goes raises RecursionError, not
    ValueError: it was an "internal error" with a traceback in the log."""
    state = await image_preheat(origin, start_supernode, b"[" * 200_000)
    assert state["state"] == "failed" and "manifest is not JSON" in state["error"]
    assert not [record for record in caplog.records if record.exc_info]


def test_a_page_of_tasks_walks_the_swarm_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`GET /api/v1/tasks?limit=1000` (open to anyone unless reads are protected) looked
    through every peer of the swarm for each task listed, on the event loop: a thousand
    tasks and 20,000 peers (peer ids cost nothing) held it 2 s. One pass now."""
    monkeypatch.setattr(CollectorRegistry, "register", lambda self, collector: None)
    walks = 0

    class Peers(dict[str, SimpleNamespace]):
        def items(self) -> Any:
            nonlocal walks
            walks += 1
            return super().items()

    ids = [f"{n:064x}" for n in range(50)]
    tasks = {
        task_id: SimpleNamespace(
            task_id=task_id, spec=SimpleNamespace(url=f"http://o/{n}"), generation=1,
            state="done", length=1, piece_size=1, ready=1, piece_count=1, bytes_from_origin=0,
            bytes_served=0, error=None, on_disk=None, adoption=None, created=n,
        )
        for n, task_id in enumerate(ids)
    }  # fmt: skip
    peers = Peers({f"peer-{n}": SimpleNamespace(tasks={ids[n], ids[n + 1]}) for n in range(40)})
    view = SimpleNamespace(
        cdn=SimpleNamespace(tasks=tasks),
        swarm=SimpleNamespace(peers=peers),
        scheduler=SimpleNamespace(task_statistics=lambda task_id: None),
        cluster=SimpleNamespace(owner=lambda task_id: SimpleNamespace(id="m", peer="p")),
    )
    api = AdminApi(view, AdminSettings(data_dir=tmp_path, open=True))  # type: ignore[arg-type]
    answer = trio.run(api.tasks, Request("GET", "/api/v1/tasks", {"limit": ["1000"]}, {}))
    listed = json.loads(answer.body)["tasks"]
    assert walks == 1
    assert [task["peers"] for task in listed[:3]] == [
        ["peer-0"],
        ["peer-0", "peer-1"],
        ["peer-1", "peer-2"],
    ]
    assert listed[45]["peers"] == [] and listed[40]["peers"] == ["peer-39"]


async def test_an_empty_body_named_by_its_length_is_read_not_refused(
    start_supernode: StartSupernode,
) -> None:
    """`Content-Length: 0` is a body of no bytes, not one past the limit (413)."""
    node = await start_supernode(admin_listen=("127.0.0.1", 0), admin_open=True)
    stream = await open_raw(node)
    await stream.send_all(
        b"POST /api/v1/preheats HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    with trio.fail_after(5):
        answer = await stream.receive_some(1 << 16)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]  # (no JSON object: a 400)
    await stream.aclose()
