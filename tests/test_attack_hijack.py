"""An attacker's HTTPS interception (`--hijack`): the leaf and the upstream follow the
CONNECT host, never the SNI, the Host header or an absolute target; hosts no
certificate can name are not intercepted; minting for new hosts is rate-bounded;
a slowloris inside the tunnel is timed out; renegotiation is refused. No registry:
the hosts need not resolve (the test network answers nothing for them)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
from functools import partial
from typing import Any

import pytest
import trio
from conftest import StartDaemon, metric, until
from cryptography import x509
from fakenet import FakeNetwork
from rawwire import connect_through

from common.ratelimit import TokenBucket
from dfdaemon import httpserver
from dfdaemon.app import Daemon
from dfdaemon.ca import LeafCache
from dfdaemon.hijack import intercepted_name

NAME = "a.test"  # the one host --hijack matches
OPENSSL = shutil.which("openssl")


async def hijacking(start_daemon: StartDaemon, net: FakeNetwork, **config: Any) -> Daemon:
    config.setdefault("hijack", (r"a\.test",))
    return await start_daemon("host1", "https://elsewhere.test", None, **config)


def ca_pem(daemon: Daemon) -> str:
    return (daemon.config.data_dir / "ca" / "ca.crt").read_text()


def leaves(daemon: Daemon) -> LeafCache:
    assert daemon.leaves is not None
    return daemon.leaves


async def tls_to(daemon: Daemon, target: str, sni: str) -> trio.SSLStream[trio.SocketStream]:
    """TLS through CONNECT `target`, sending `sni`, trusting the daemon's CA but not
    checking the name (the test looks at what was presented)."""
    stream, head = await connect_through(daemon.address, target)
    assert head.startswith(b"HTTP/1.1 200"), head
    context = ssl.create_default_context(cadata=ca_pem(daemon))
    context.check_hostname = False
    tls = trio.SSLStream(stream, context, server_hostname=sni)
    with trio.fail_after(10):
        await tls.do_handshake()
    return tls


def names(tls: trio.SSLStream[Any]) -> list[str]:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    sans = x509.load_der_x509_certificate(der).extensions
    return sans.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


async def exchange(tls: trio.SSLStream[Any], raw: bytes) -> bytes:
    """Send `raw` (requests), read until the daemon closes or says nothing for 2 s."""
    await tls.send_all(raw)
    answer = b""
    with trio.fail_after(20):
        while True:
            with trio.move_on_after(2) as quiet:
                try:
                    data = await tls.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
            if quiet.cancelled_caught or not data:
                return answer
            answer += data


# -- the names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("A.Test", "a.test"),
        ("a.test.", "a.test"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("fe80::1%eth0", None),  # a zone: no certificate names it, no URL carries it
        ("a..test", None),
        ("b\u00fccher.test", None),  # IDNA: the client sends the xn-- form
        ("xn--bcher-kva.test", "xn--bcher-kva.test"),
        ("a" * 64 + ".test", None),
        (".".join(["a" * 63] * 4), None),  # 255 characters
        ("a.test/evil", None),
        ("a.test\r\nx", None),
        ("-a.test", None),
    ],
)
def test_the_intercepted_name(host: str, name: str | None) -> None:
    assert intercepted_name(host) == name


async def test_the_leaf_follows_the_connect_host_not_the_sni(
    start_daemon: StartDaemon, net: FakeNetwork
) -> None:
    daemon = await hijacking(start_daemon, net)
    tls = await tls_to(daemon, f"{NAME}:443", sni="evil.test")
    assert names(tls) == [NAME]
    await tls.aclose()
    tls = await tls_to(daemon, "A.TEST.:443", sni="evil.test")  # the same host, normalised
    assert names(tls) == [NAME]
    await tls.aclose()
    assert leaves(daemon).minted == 1
    assert leaves(daemon).certificate("evil.test") is None


async def test_inside_the_tunnel_the_host_header_and_absolute_targets_change_nothing(
    start_daemon: StartDaemon, net: FakeNetwork
) -> None:
    daemon = await hijacking(start_daemon, net)
    tls = await tls_to(daemon, f"{NAME}:443", sni=NAME)
    answer = await exchange(
        tls,
        b"GET /v2/ HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n"  # the trusted one, by Host
        b"GET /token HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n"
        b"GET https://elsewhere.test/v2/ HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n"
        b"CONNECT elsewhere.test:443 HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n",
    )
    statuses = [int(part[:3]) for part in answer.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [403, 502, 400, 400]
    assert b"--allow-registry a.test" in answer  # the CONNECT host is the one asked about
    assert b"https://a.test/token" in answer  # and the one relayed to
    assert b"elsewhere.test/" not in answer
    assert metric(daemon, "dfdaemon_requests_total", kind="untrusted") == 1


async def test_content_length_with_chunked_is_refused_inside_the_tunnel(
    start_daemon: StartDaemon, net: FakeNetwork
) -> None:
    """Both framings at once is how requests are smuggled past a proxy: refused."""
    daemon = await hijacking(start_daemon, net)
    tls = await tls_to(daemon, f"{NAME}:443", sni=NAME)
    answer = await exchange(
        tls,
        b"POST /token HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1  # nothing more read from that connection


async def test_a_slowloris_inside_the_tunnel_is_timed_out(
    start_daemon: StartDaemon, net: FakeNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpserver, "HEAD_TIMEOUT", 1.0)
    daemon = await hijacking(start_daemon, net)
    tls = await tls_to(daemon, f"{NAME}:443", sni=NAME)
    await tls.send_all(b"GET /v2/ HTTP/1.1\r\n")
    start = trio.current_time()
    with trio.move_on_after(10):
        try:
            while True:
                await tls.send_all(b"X-a: b\r\n")  # a header line now and then
                await trio.sleep(0.2)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    assert trio.current_time() - start < 5
    assert daemon.proxy is not None and daemon.proxy.hijack is not None
    hijack = daemon.proxy.hijack
    await until(lambda: hijack.slots.borrowed_tokens == 0)


# -- what a stranger can cost ---------------------------------------------------------------


async def test_minting_for_new_hosts_is_rate_bounded(
    start_daemon: StartDaemon, net: FakeNetwork
) -> None:
    """Each new host costs a key, a signature and a TLS context (about a millisecond
    in the loop), for a CONNECT line that costs the client nothing: a client churning
    names gets 503 past the budget; hosts already minted are still served."""
    daemon = await hijacking(start_daemon, net, hijack=(r".*\.test",))
    cache = leaves(daemon)
    cache.bucket = TokenBucket(1.0, 5.0, now=time.monotonic() - 5.0)  # 5 held, 1 a second
    tls = await tls_to(daemon, f"{NAME}:443", sni=NAME)  # one minted before the flood
    await tls.aclose()
    statuses = []
    for number in range(30):
        stream, head = await connect_through(daemon.address, f"h{number}.test:443")
        statuses.append(int(head.split()[1]))
        await stream.aclose()
    assert statuses.count(200) <= 6  # the burst left, and what a second refilled
    assert statuses.count(503) >= 24
    assert cache.minted <= 7
    assert metric(daemon, "dfdaemon_hijack_failures_total", reason="minting") >= 24
    tls = await tls_to(daemon, f"{NAME}:443", sni=NAME)  # cached: no token needed
    assert names(tls) == [NAME]
    await tls.aclose()


@pytest.mark.skipif(OPENSSL is None, reason="openssl is installed by `make test`")
async def test_client_renegotiation_is_refused(start_daemon: StartDaemon, net: FakeNetwork) -> None:
    """TLS 1.2 renegotiation costs the server a handshake for a few client bytes: the
    daemon's OpenSSL refuses it (and the contexts must keep it so)."""
    assert OPENSSL
    daemon = await hijacking(start_daemon, net)
    ca = daemon.config.data_dir / "ca" / "ca.crt"
    argv = [OPENSSL, "s_client", "-proxy", daemon.address, "-connect", f"{NAME}:443"]
    argv += ["-servername", NAME, "-CAfile", str(ca), "-tls1_2"]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
            )
            assert process.stdin is not None and process.stdout is not None
            out = b""
            while b"Verify return code" not in out:
                out += await process.stdout.receive_some(65536)
            await process.stdin.send_all(b"R\n")  # "R" alone on a line: renegotiate
            while data := await process.stdout.receive_some(65536):
                out += data
            await process.stdin.aclose()
    assert b"Verify return code: 0" in out, out
    assert b"RENEGOTIATING" in out
    assert b"no renegotiation" in out, out
