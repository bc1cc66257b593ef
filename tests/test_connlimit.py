"""Connection caps: total and per remote address, checked before a byte is read."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio
from conftest import until

from common.connlimit import MIN_PER_ADDRESS, ConnectionLimit, per_address_share
from common.io import connections, remote_address, serve_limited


def test_the_total_and_each_address_have_a_cap() -> None:
    limit = ConnectionLimit(4, per_address=2)
    assert limit.try_acquire("a") and limit.try_acquire("a")
    assert not limit.try_acquire("a")  # its share is used up
    assert limit.try_acquire("b") and limit.try_acquire("c")
    assert not limit.try_acquire("d")  # the total is used up
    limit.release("a")
    assert limit.try_acquire("d")
    stats = limit.statistics()
    assert (stats.open, stats.addresses, stats.refused) == (4, 4, 2)


def test_releasing_what_was_never_taken_is_a_bug() -> None:
    with pytest.raises(ValueError):
        ConnectionLimit(2).release("nobody")
    with pytest.raises(ValueError):
        ConnectionLimit(0)


def test_the_share_of_one_address() -> None:
    assert per_address_share(1024) == 128
    assert per_address_share(64) == MIN_PER_ADDRESS
    assert per_address_share(4) == 4


async def test_connections_past_the_cap_are_closed_unread(nursery: trio.Nursery) -> None:
    limit = ConnectionLimit(10, per_address=2)
    served: list[bytes] = []
    release = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        served.append(await stream.receive_some(10))
        await release.wait()
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await nursery.start(serve_limited, handler, listeners, limit)
    clients = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
    for client in clients:
        await client.send_all(b"hi")
    await until(lambda: len(served) == 2)
    extra = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(5):
        try:
            await extra.send_all(b"hi")
            assert await extra.receive_some(10) == b""
        except trio.BrokenResourceError:
            pass  # reset: closed without being read
    assert served == [b"hi", b"hi"]
    assert limit.statistics().open == 2 and limit.statistics().refused == 1
    release.set()
    await until(lambda: limit.statistics().open == 0)
    for client in [*clients, extra]:
        await client.aclose()


def test_an_ipv6_host_counts_by_its_64() -> None:
    """A host with a /64 can use any of its 2^64 addresses: each must not be a new
    share (found by review)."""
    from common.connlimit import host_group

    assert host_group("2001:db8:1:2::7") == host_group("2001:db8:1:2:ffff::1")
    assert host_group("2001:db8:1:2::7") == "2001:db8:1:2::/64"
    assert host_group("::ffff:10.0.0.7") == "10.0.0.7" == host_group("10.0.0.7")
    assert host_group("uid:1000") == "uid:1000"


async def test_the_uids_of_a_subordinate_range_count_as_its_owner(
    monkeypatch: pytest.MonkeyPatch, short_dir: Path
) -> None:
    """A user with a subordinate uid range (rootless containers) can connect to a Unix
    socket as any uid of it: each counts as that user, one share for all (root runs
    the connecting processes as those uids)."""
    subuid = short_dir / "subuid"
    subuid.write_text(
        "nobody-such-user:300000:65536\n4242:200000:65536\nbroken line\n"
        "bad:\u00b2:10\nnul\0name:400000:10\n"  # (not a number; a name no lookup takes)
    )
    monkeypatch.setattr(connections, "SUBUID", str(subuid))
    os.chmod(short_dir, 0o755)  # (the connecting uids reach the socket)
    path = short_dir / "s.sock"
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen(4)
    os.chmod(path, 0o777)
    uids = (200007, 265535, 265536, 300001, 400001)  # 4242's, its last, past it, none
    seen = await addresses_of(listener, uids, CONNECT_AND_WAIT, str(path))
    listener.close()
    assert seen == ["uid:4242", "uid:4242", "uid:265536", "uid:300001", "uid:400001"]
    subuid.write_text("4242:100:10\n")  # read again once it changes
    assert connections.local_user(105) == 4242 and connections.local_user(200007) == 200007


async def addresses_of(
    listener: trio.socket.SocketType, uids: tuple[int, ...], script: str, *args: str
) -> list[str]:
    """How `remote_address` names a client of `listener` run as each of `uids` (the
    system Python running `script` with `args`, which connects and waits)."""
    seen = []
    for uid in uids:
        child = await trio.lowlevel.open_process([SYSTEM_PYTHON, "-c", script, *args], user=uid)
        try:
            with trio.fail_after(10):
                sock, _ = await listener.accept()
            with sock:
                seen.append(remote_address(trio.SocketStream(sock)))
        finally:
            child.kill()
            await child.wait()
    return seen


SYSTEM_PYTHON = "/usr/bin/python3"  # (any user may run it; the tests' venv is root's)
CONNECT_AND_WAIT = """
import socket, sys, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
time.sleep(30)
"""


CONNECT_TCP_AND_WAIT = """
import socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
sock = socket.socket(family, socket.SOCK_STREAM)
sock.connect((sys.argv[1], int(sys.argv[2])))
time.sleep(30)
"""


@pytest.mark.parametrize(
    ("listen", "connect"),
    [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("::", "127.0.0.1")],
    ids=["ipv4", "ipv6", "ipv4-mapped"],
)
async def test_a_loopback_tcp_client_counts_as_the_user_that_owns_its_socket(
    monkeypatch: pytest.MonkeyPatch, short_dir: Path, listen: str, connect: str
) -> None:
    """On loopback every client has one address: the kernel's socket diagnostics name
    the uid that owns the client's socket instead (a subordinate range's as its owner),
    so that each local user gets a share of a loopback port, as on the control socket."""
    from common import sockdiag

    assert sockdiag.works()  # (Linux with inet_diag: what CI and users run)
    subuid = short_dir / "subuid"
    subuid.write_text("4242:200000:65536\n")
    monkeypatch.setattr(connections, "SUBUID", str(subuid))
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    listener = trio.socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, listen != "::")
    await listener.bind((listen, 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    uids = (65534, 200007, 0)
    seen = await addresses_of(listener, uids, CONNECT_TCP_AND_WAIT, connect, str(port))
    listener.close()
    assert seen == ["uid:65534", "uid:4242", "uid:0"]
    # A socket that is not there: nobody is named.
    assert sockdiag.tcp_owner(local=("127.0.0.1", port), peer=("127.0.0.1", 1)) is None
    assert sockdiag.tcp_owner(local=("198.18.0.1", port), peer=("198.18.0.2", 1)) is None


CONNECT_SEND_CLOSE = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.connect(("127.0.0.1", int(sys.argv[1])))
sock.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
sock.close()
print("closed", flush=True)
time.sleep(30)
"""


async def test_a_client_that_sent_and_closed_before_the_accept_is_not_taken_for_root() -> None:
    """What the kernel keeps of a socket its process closed (a time-wait record, an
    orphan) is named as uid 0: a user who sends a request and closes before the server
    accepts it must not count as root, whom only the total bounds (found by review: a
    user of uid 65534 so held 224 of 256 places as `uid:0`)."""
    from common.connlimit import listen_limit

    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    child = await trio.lowlevel.open_process(
        [SYSTEM_PYTHON, "-c", CONNECT_SEND_CLOSE, str(port)], user=65534, stdout=-1
    )
    try:
        assert child.stdout is not None
        with trio.fail_after(10):
            said = b""
            while not said.endswith(b"\n"):  # (a pipe may hand over part of a line)
                chunk = await child.stdout.receive_some(100)
                assert chunk, "the child ended without a word"
                said += chunk
            assert said == b"closed\n"
            sock, _ = await listener.accept()
        with sock:
            address = remote_address(trio.SocketStream(sock))
    finally:
        child.kill()
        await child.wait()
        listener.close()
    assert address == "uid:?"
    limit = listen_limit(256, "127.0.0.1")
    assert "uid:?" not in limit.unshared  # (a share, as any one user's)


def test_root_and_unknown_loopback_clients_are_bounded_by_the_total_alone() -> None:
    from common.connlimit import listen_limit

    limit = listen_limit(20, "127.0.0.1")
    assert limit.per_address == 16
    assert all(limit.try_acquire("uid:1000") for _ in range(16))
    assert not limit.try_acquire("uid:1000")  # its share is used up
    assert all(limit.try_acquire("uid:0") for _ in range(4))  # root: the total only
    assert not limit.try_acquire("uid:0") and not limit.try_acquire("uid:1001")
    assert listen_limit(20, "198.18.0.1").unshared == frozenset()


def test_a_kernel_that_names_no_owner_leaves_loopback_clients_to_the_total(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without TCP diagnostics every lookup answers "no such socket" (ENOENT), which a
    made-up socket's lookup answers too: the probe asks about a connection of this
    process's own, so such a kernel is known for one (its loopback clients counted as
    one address, which the total alone bounds, as before); and a no is asked again
    later, not kept for the life of the process (found by review). No kernel without
    inet_diag runs here: the lookup is made to fail."""
    from common import sockdiag

    assert sockdiag.works()
    monkeypatch.setattr(sockdiag, "_works", False)
    real = sockdiag.tcp_owner
    monkeypatch.setattr(sockdiag, "tcp_owner", lambda **_: None)
    assert not sockdiag.works()
    monkeypatch.setattr(sockdiag, "tcp_owner", real)
    assert not sockdiag.works()  # (asked again only after RETRY_PROBE)
    monkeypatch.setattr(sockdiag, "_failed_at", sockdiag._failed_at - sockdiag.RETRY_PROBE)
    assert sockdiag.works()
