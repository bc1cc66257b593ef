"""Attacks on "origins the operator allows" through dfdaemon (issue 12, item 7): a local
client making the daemon reach a cloud metadata service through its forward proxy, a
CONNECT tunnel, a registry or the fallback to the upstream.

The test network (`fakenet.py`) routes 169.254.169.254:80 to a real server on
127.0.0.1 holding a "credential", as a cloud VM's network routes it to the metadata
service: an attack that works shows up as that credential downloaded, and every test
checks that nothing even tried to connect to the refused address.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
import trio
from conftest import (
    CREDENTIAL_PATH,
    METADATA_IP,
    METADATA_URL,
    SECRET,
    StartDaemon,
    StartSupernode,
)
from fakenet import FakeNetwork

from testkit.origin import FakeOrigin


def untouched(net: FakeNetwork, server: FakeOrigin) -> None:
    assert not net.tried(METADATA_IP)
    assert sum(len(stats.requests) for stats in server.stats.values()) == 0


def names_the_flag(text: str) -> None:
    assert METADATA_IP in text and "dfdaemon's --origin-allow" in text, text


async def test_the_forward_proxy_does_not_fetch_cloud_metadata(
    net: FakeNetwork, metadata: FakeOrigin, start_daemon: StartDaemon
) -> None:
    daemon = await start_daemon("host", "http://127.0.0.1:1", None, rules=(r"meta-data",))
    async with httpx.AsyncClient(proxy=f"http://{daemon.address}", timeout=30) as client:
        for url in (
            METADATA_URL,
            f"http://metadata.test{CREDENTIAL_PATH}",
            "http://169.254.169.254/",
        ):
            answer = await client.get(url)
            assert answer.status_code == 403, (url, answer.status_code, answer.text)
            assert SECRET not in answer.content
            names_the_flag(answer.text)
    untouched(net, metadata)


async def test_a_connect_tunnel_to_cloud_metadata_is_refused(
    net: FakeNetwork, metadata: FakeOrigin, start_daemon: StartDaemon
) -> None:
    daemon = await start_daemon("host", "http://127.0.0.1:1", None)
    host, port = daemon.address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(b"CONNECT 169.254.169.254:80 HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 403"), answer
    untouched(net, metadata)


async def test_a_registry_at_a_metadata_address_is_refused_until_the_operator_allows_it(
    net: FakeNetwork, metadata: FakeOrigin, start_daemon: StartDaemon
) -> None:
    metadata.add("/v2/", b"{}")
    # The operator named it as a registry (trusted), but its address is link-local.
    refused = await start_daemon("refused", f"http://{METADATA_IP}", None)
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.get(f"http://{refused.address}/v2/")
        blob = await client.get(f"http://{refused.address}/v2/x/blobs/sha256:{'a' * 64}")
    assert answer.status_code == 403 and blob.status_code == 403
    names_the_flag(json.loads(answer.content)["errors"][0]["message"])
    untouched(net, metadata)
    allowed = await start_daemon(
        "allowed", f"http://{METADATA_IP}", None, origin_allow=(f"{METADATA_IP}/32",)
    )
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.get(f"http://{allowed.address}/v2/")
    assert answer.status_code == 200 and answer.content == b"{}"
    assert net.tried(METADATA_IP)


async def test_the_fallback_to_the_upstream_does_not_fetch_cloud_metadata(
    net: FakeNetwork, metadata: FakeOrigin, start_daemon: StartDaemon
) -> None:
    # No supernode: a dfget's download through the control socket goes to the upstream.
    daemon = await start_daemon("host", "http://127.0.0.1:1", None)
    body = json.dumps({"url": METADATA_URL, "headers": []}).encode()
    sock = daemon.socket_path
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock))) as client:
        answer = await client.post("http://daemon/v1/downloads", content=body, timeout=30)
    assert answer.status_code >= 400 and SECRET not in answer.content
    error = answer.json()
    assert error["exit"] == 3
    names_the_flag(error["error"])
    untouched(net, metadata)


async def test_the_policy_in_the_config_file(tmp_path: Path) -> None:
    from dfdaemon.cli import build_parser, resolve_config

    config = tmp_path / "dfdaemon.toml"
    config.write_text('origin_allow = ["169.254.169.254/32"]\norigin_deny = ["10.0.0.0/8"]\n')
    args = build_parser().parse_args(["--config", str(config), "--origin-deny", "::/0"])
    daemon, _ = resolve_config(args)
    assert daemon.origin_allow == ("169.254.169.254/32",)
    assert daemon.origin_deny == ("::/0",)  # the flag wins over the file's key
    config.write_text('origin_deny = ["not-a-network"]\n')
    with pytest.raises(ValueError, match="origin_deny"):
        resolve_config(build_parser().parse_args(["--config", str(config)]))
    assert os.path.exists(config)


async def test_p2p_url_downloads_follow_the_daemons_policy_too(
    nursery: trio.Nursery, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    """Found by review: a proxied `--rule` URL and a control-socket URL download went to
    the supernode, which fetched them under its own policy: an origin the daemon's
    operator denied was one hop away."""
    origin = FakeOrigin()
    await nursery.start(origin.serve)
    data = os.urandom(1 << 20)
    origin.add("/internal.bin", data)
    node = await start_supernode()
    daemon = await start_daemon(
        "host1", "http://127.0.0.1:1", node, origin_deny=("127.0.0.0/8",), rules=(r"\.bin$",)
    )
    url = origin.url("/internal.bin")
    async with httpx.AsyncClient(proxy=f"http://{daemon.address}", timeout=30) as client:
        p2p = await client.get(url)
    assert p2p.status_code == 403 and data not in p2p.content
    body = json.dumps({"url": url, "headers": []}).encode()
    transport = httpx.AsyncHTTPTransport(uds=str(daemon.socket_path))
    async with httpx.AsyncClient(transport=transport) as client:
        answer = await client.post("http://daemon/v1/downloads", content=body, timeout=30)
    assert answer.status_code >= 400 and data not in answer.content
    assert answer.json()["exit"] == 3 and "--origin-allow" in answer.json()["error"]
    assert not node.node.cdn.tasks  # nothing reached the supernode
    assert sum(len(stats.requests) for stats in origin.stats.values()) == 0


async def test_a_tree_listing_does_not_reach_cloud_metadata(
    net: FakeNetwork, metadata: FakeOrigin, start_daemon: StartDaemon
) -> None:
    """`POST /v1/listings` (for `dfget -r`) reads index pages under the daemon's policy,
    connection by connection: a name with an allowed address beside the metadata one
    passes the first check, and must still never lead to the metadata service."""
    daemon = await start_daemon("host", "http://127.0.0.1:1", None)
    net.names["twofaced.test"] = [METADATA_IP, "127.0.0.3"]  # (nothing listens on the 2nd)
    sock = daemon.socket_path
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock))) as client:
        for url in (
            "http://169.254.169.254/latest/",
            "http://metadata.test/latest/",
            "http://twofaced.test/latest/",
        ):
            body = json.dumps({"url": url, "headers": []}).encode()
            answer = await client.post("http://daemon/v1/listings", content=body, timeout=30)
            assert answer.status_code == 502 and SECRET not in answer.content, answer.text
            assert answer.json()["exit"] == 3
    untouched(net, metadata)


async def test_a_name_rebound_after_the_check_is_refused_as_it_connects(
    net: FakeNetwork, metadata: FakeOrigin, start_daemon: StartDaemon
) -> None:
    """A name that resolves to an allowed address when the listing is checked and to
    the metadata address when it connects (a rebinding DNS) is refused at the connect,
    and the daemon says so as an origin refusal (502, exit 3), not an internal error."""
    daemon = await start_daemon("host", "http://127.0.0.1:1", None)
    answers = iter([["127.0.0.3"]])
    resolve = net.resolve_name

    def rebinding(name: str) -> list[str] | None:
        return next(answers, [METADATA_IP]) if name == "rebind.test" else resolve(name)

    net.resolve_name = rebinding  # type: ignore[method-assign]
    body = json.dumps({"url": "http://rebind.test/latest/", "headers": []}).encode()
    sock = daemon.socket_path
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock))) as client:
        answer = await client.post("http://daemon/v1/listings", content=body, timeout=30)
    assert answer.status_code == 502 and answer.json()["exit"] == 3, answer.text
    assert METADATA_IP in answer.json()["error"]
    untouched(net, metadata)
