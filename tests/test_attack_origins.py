"""Attacks on "origins the operator allows" (issue 12, item 7): a peer, a redirect, a
DNS answer or a preheat that points the supernode at a cloud metadata service.

The test network (`fakenet.py`) routes 169.254.169.254:80 to a real server on
127.0.0.1 holding a "credential", as a cloud VM's network routes it to the metadata
service: an attack that works shows up as that credential downloaded. Each test also
checks that nothing even tried to connect to the refused address.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trio
from adminapi import admin_client, preheat_ended
from conftest import (
    CREDENTIAL_PATH,
    METADATA_IP,
    METADATA_URL,
    PYTHON,
    SECRET,
    Fetch,
    RunningSupernode,
    StartSupernode,
    cli_env,
    downloads,
)
from fakenet import FakeNetwork

from dfget.errors import OriginFailed
from proto.pieces import MiB
from testkit.origin import FakeOrigin


def requests(server: FakeOrigin) -> int:
    """Requests the server got, on any path."""
    return sum(len(stats.requests) for stats in server.stats.values())


def untouched(net: FakeNetwork, metadata: FakeOrigin) -> None:
    """Nothing tried to connect to the metadata service's address, and it got no request."""
    assert not net.tried(METADATA_IP)
    assert requests(metadata) == 0


def refusal(error: BaseException | str) -> str:
    """The refusal's message, which must name the address and the flag that allows it."""
    message = str(error)
    assert METADATA_IP in message and "--origin-allow" in message, message
    return message


async def test_a_peer_cannot_make_the_supernode_fetch_cloud_metadata(
    net: FakeNetwork,
    metadata: FakeOrigin,
    supernode: RunningSupernode,
    fetch: Fetch,
    tmp_path: Path,
) -> None:
    with pytest.raises(OriginFailed) as refused:
        await fetch(METADATA_URL, supernode)  # back to source allowed: it must not go there
    assert "refused to fetch" in refusal(refused.value)
    untouched(net, metadata)  # neither the supernode nor dfget itself
    assert downloads(tmp_path) == []


@pytest.mark.parametrize("spelling", ["::ffff:169.254.169.254", "metadata.test"])
async def test_other_spellings_of_the_metadata_address_are_refused_too(
    net: FakeNetwork,
    metadata: FakeOrigin,
    supernode: RunningSupernode,
    fetch: Fetch,
    spelling: str,
) -> None:
    host = f"[{spelling}]" if ":" in spelling else spelling
    net.routes[(spelling, 80)] = ("127.0.0.1", metadata.port)  # the mapped form's route
    with pytest.raises(OriginFailed) as refused:
        await fetch(f"http://{host}{CREDENTIAL_PATH}", supernode, back_source=False)
    refusal(refused.value)
    assert not net.tried(spelling) and not net.tried(METADATA_IP)
    assert requests(metadata) == 0


async def test_a_name_resolving_to_metadata_and_a_good_address_connects_only_to_the_good_one(
    net: FakeNetwork,
    metadata: FakeOrigin,
    origin: FakeOrigin,
    supernode: RunningSupernode,
    fetch: Fetch,
) -> None:
    """A DNS answer mixing the metadata address (first) with the real origin's: the
    supernode must skip the refused one, not try it first as happy eyeballs would."""
    data = os.urandom(MiB)
    origin.add("/f.bin", data)
    metadata.add("/f.bin", SECRET)
    net.names["mixed.test"] = [METADATA_IP, "127.0.0.1"]
    net.routes[(METADATA_IP, origin.port)] = ("127.0.0.1", metadata.port)
    result = await fetch(f"http://mixed.test:{origin.port}/f.bin", supernode)
    assert Path(result.output).read_bytes() == data
    untouched(net, metadata)


@pytest.mark.parametrize("lean", [True, False], ids=["lean-path", "httpx-path"])
@pytest.mark.parametrize("target", [METADATA_URL, f"http://metadata.test{CREDENTIAL_PATH}"])
async def test_a_redirect_to_metadata_is_refused(
    net: FakeNetwork,
    metadata: FakeOrigin,
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    lean: bool,
    target: str,
) -> None:
    node = await start_supernode(lean_http=lean)
    origin.add("/innocent.bin", b"x", redirect_to=target)
    with pytest.raises(OriginFailed) as refused:
        await fetch(origin.url("/innocent.bin"), node)
    refusal(refused.value)
    untouched(net, metadata)


async def test_a_revalidation_redirected_to_metadata_is_refused(
    net: FakeNetwork,
    metadata: FakeOrigin,
    origin: FakeOrigin,
    supernode: RunningSupernode,
    fetch: Fetch,
) -> None:
    """A cached URL task without validators is revalidated with a HEAD (httpx); the
    origin now redirects it to the metadata service."""
    data = os.urandom(MiB)
    origin.add("/f.bin", data, etag=False, last_modified=False)
    first = await fetch(origin.url("/f.bin"), supernode)
    assert Path(first.output).read_bytes() == data
    origin.add("/f.bin", data, etag=False, last_modified=False, redirect_to=METADATA_URL)
    with pytest.raises(OriginFailed) as refused:
        await fetch(origin.url("/f.bin"), supernode)
    refusal(refused.value)
    untouched(net, metadata)


async def test_preheats_cannot_reach_metadata(
    net: FakeNetwork, metadata: FakeOrigin, start_supernode: StartSupernode
) -> None:
    node = await start_supernode(admin_listen=("127.0.0.1", 0))
    bodies = [
        {"type": "file", "url": METADATA_URL},
        {"type": "image", "url": "http://metadata.test/v2/team/app/manifests/1"},
    ]
    async with admin_client(node) as client:
        ids = []
        for body in bodies:
            created = await client.post("/api/v1/preheats", json=body)
            assert created.status_code == 202, created.text
            ids.append(created.json()["id"])
        states = [await preheat_ended(client, f"/api/v1/preheats/{id_}") for id_ in ids]
    for state in states:
        assert state["state"] == "failed", state
        refusal(state["error"])
    untouched(net, metadata)


async def test_the_operators_rules_decide(
    net: FakeNetwork,
    metadata: FakeOrigin,
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    tmp_path: Path,
) -> None:
    data = os.urandom(MiB)
    origin.add("/f.bin", data)
    # A deny rule closes the loopback origin...
    closed = await start_supernode(data_dir=tmp_path / "closed", origin_deny=("127.0.0.0/8",))
    with pytest.raises(OriginFailed, match=r"--origin-deny 127\.0\.0\.0/8"):
        await fetch(origin.url("/f.bin"), closed, back_source=False)
    assert requests(origin) == 0
    # ... an allow rule more specific than the default opens one metadata address...
    opened = await start_supernode(
        data_dir=tmp_path / "opened", origin_allow=(f"{METADATA_IP}/32",)
    )
    result = await fetch(METADATA_URL, opened)
    assert Path(result.output).read_bytes() == SECRET
    # ... and deny-all plus allow makes an allow-list (127.0.0.2 is loopback too).
    listed = await start_supernode(
        data_dir=tmp_path / "listed",
        origin_deny=("0.0.0.0/0", "::/0"),
        origin_allow=("127.0.0.1/32",),
    )
    result = await fetch(origin.url("/f.bin"), listed)
    assert Path(result.output).read_bytes() == data
    net.names["other.test"] = ["127.0.0.2"]
    with pytest.raises(OriginFailed, match=r"127\.0\.0\.2.*--origin-deny 0\.0\.0\.0/0"):
        await fetch(f"http://other.test:{origin.port}/f.bin", listed, back_source=False)
    assert not net.tried("127.0.0.2")


async def test_through_a_proxy_a_literal_metadata_address_is_refused_before_the_proxy(
    metadata: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With http_proxy set, the proxy connects to the origin: the supernode checks the
    proxy's address, and the URL's host when it is an address; names are the proxy's to
    resolve (and police)."""
    proxy = FakeOrigin()  # answers absolute-form requests by their path: a forward proxy
    await nursery.start(proxy.serve)
    data = os.urandom(MiB)
    proxy.add("/f.bin", data)
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    node = await start_supernode()
    with pytest.raises(OriginFailed) as refused:
        await fetch(METADATA_URL, node, back_source=False)
    refusal(refused.value)
    assert requests(proxy) == 0 and requests(metadata) == 0
    result = await fetch("http://origin.test/f.bin", node, back_source=False)
    assert Path(result.output).read_bytes() == data  # a name goes to the proxy
    _, headers = proxy.stats["/f.bin"].requests[0]
    assert headers[0] == (":path", "http://origin.test/f.bin")


async def test_dfget_exits_3_and_says_which_flag_allows_it(
    metadata: FakeOrigin, supernode: RunningSupernode, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "creds.json"
    out.parent.mkdir()
    argv = [PYTHON, "-m", "dfget", METADATA_URL, "-o", str(out), "--supernode", supernode.address]
    with trio.fail_after(60):
        done: subprocess.CompletedProcess[bytes] = await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, check=False, env=cli_env()
        )
    stderr = done.stderr.decode()
    assert done.returncode == 3, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("dfget: error:") and "Traceback" not in stderr
    refusal(last)
    assert "straight from the origin" not in stderr  # no back-to-source attempt
    assert not out.exists() and os.listdir(out.parent) == []
    assert requests(metadata) == 0
