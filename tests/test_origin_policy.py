"""The origin policy's rules (common/origins.py), the checked connect
(common/io/origins.py), and the preheat's rule for token realms."""

from __future__ import annotations

import gzip
import ssl
import tracemalloc

import httpx
import pytest
import trio
from fakenet import FakeNetwork

from common.io.origins import checked_client, numeric_address, open_checked_tcp_stream
from common.origins import AddressDenied, OriginPolicy, parse_address, parse_network
from supernode.admin.realms import RealmHost, realm_gets_credentials
from testkit.origin import FakeOrigin, self_signed_tls
from testkit.scripted import Answer, ScriptedOrigin, Seen


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),  # loopback: the tests' origins, local mirrors
        ("::1", True),
        ("10.1.2.3", True),
        ("192.168.0.10", True),
        ("93.184.215.14", True),
        ("2001:db8::1", True),
        ("169.254.169.254", False),  # AWS, GCP, Azure, OpenStack metadata
        ("169.254.170.2", False),  # ECS task credentials
        ("::ffff:169.254.169.254", False),  # the same, IPv4-mapped
        ("64:ff9b::a9fe:a9fe", False),  # the same through NAT64
        ("2002:a9fe:a9fe::", False),  # and 6to4
        ("fe80::1", False),
        ("fe80::1%2", False),  # with a scope
        ("fd00:ec2::254", False),  # AWS metadata over IPv6
        ("100.100.100.200", False),  # Alibaba
        ("168.63.129.16", False),  # Azure WireServer
        ("0.0.0.0", False),  # reaches this host
        ("::", False),
    ],
)
def test_the_defaults_refuse_link_local_and_metadata_addresses(address: str, allowed: bool) -> None:
    assert OriginPolicy().allows(address) is allowed


def test_the_most_specific_rule_wins_and_a_tie_is_a_deny() -> None:
    one_hole = OriginPolicy(allow=["169.254.169.254/32"])
    assert one_hole.allows("169.254.169.254") and one_hole.allows("::ffff:169.254.169.254")
    assert not one_hole.allows("169.254.169.253")
    allow_list = OriginPolicy(deny=["0.0.0.0/0", "::/0"], allow=["10.1.0.0/16"])
    assert allow_list.allows("10.1.200.3") and allow_list.allows("::ffff:10.1.0.1")
    assert not allow_list.allows("10.2.0.1") and not allow_list.allows("127.0.0.1")
    assert not allow_list.allows("2001:db8::1")
    # ::/0 covers IPv4 too (one address space), and the defaults still hold inside an
    # allowed network unless a rule as specific opens them.
    assert not OriginPolicy(deny=["::/0"]).allows("8.8.8.8")
    assert not OriginPolicy(allow=["169.254.0.0/16"]).allows("169.254.169.254")  # tie
    assert OriginPolicy(allow=["169.254.0.0/15"]).allows("127.0.0.1")
    assert not OriginPolicy(allow=["127.0.0.1"], deny=["127.0.0.1/32"]).allows("127.0.0.1")
    assert OriginPolicy(defaults=False).allows("169.254.169.254")


def test_a_refusal_names_the_address_the_rule_and_the_flag() -> None:
    policy = OriginPolicy(deny=["10.0.0.0/8"], allow_flag="the supernode's --origin-allow")
    with pytest.raises(AddressDenied) as refused:
        policy.check("db.internal", [parse_address("10.3.4.5")])
    assert str(refused.value) == (
        "origin db.internal resolves to 10.3.4.5: refused by --origin-deny 10.0.0.0/8; "
        "the supernode's --origin-allow 10.3.4.5/32 allows it"
    )
    with pytest.raises(AddressDenied, match=r"^origin address 169\.254\.169\.254: .*built-in"):
        OriginPolicy().check("::ffff:169.254.169.254", [parse_address("::ffff:169.254.169.254")])
    mixed = [parse_address("169.254.169.254"), parse_address("127.0.0.1")]
    assert OriginPolicy().check("mixed", mixed) == [parse_address("127.0.0.1")]


@pytest.mark.parametrize("text", ["10.1.2.3/8", "10.0.0.0/33", "example.com", "", "::/129"])
def test_a_bad_cidr_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="not a CIDR"):
        parse_network(text)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("example.test", None),
    ],
)
def test_numeric_hosts_in_every_spelling_the_os_takes(host: str, address: str | None) -> None:
    found = numeric_address(host)
    assert (str(found) if found else None) == address


async def test_a_connect_falls_through_to_the_next_allowed_address(
    nursery: trio.Nursery,
) -> None:
    net = FakeNetwork().install()
    origin = FakeOrigin()
    await nursery.start(origin.serve)
    # 127.0.0.2 is loopback too, but nothing listens there on that port: refused.
    net.names["two.test"] = ["169.254.169.254", "127.0.0.2", "127.0.0.1"]
    with trio.fail_after(10):
        stream = await open_checked_tcp_stream(OriginPolicy(), "two.test", origin.port)
    async with stream:
        assert stream.socket.getpeername()[:2] == ("127.0.0.1", origin.port)
    assert net.connects == [("127.0.0.2", origin.port), ("127.0.0.1", origin.port)]
    with pytest.raises(AddressDenied):
        net.names["meta.test"] = ["169.254.169.254", "fe80::1"]
        await open_checked_tcp_stream(OriginPolicy(), "meta.test", 80)
    with pytest.raises(OSError, match=r"resolve|not known"):
        net.names["none.test"] = []
        await open_checked_tcp_stream(OriginPolicy(), "none.test", 80)


async def test_the_checked_client_keeps_the_name_for_tls_and_checks_every_hop(
    nursery: trio.Nursery,
) -> None:
    """What dfdaemon's upstream client will be: connects to the checked address, while
    SNI, the certificate check and Host use the name; a redirect is checked again."""
    net = FakeNetwork().install()
    server_tls, cert_pem = self_signed_tls("secure.test")
    client_tls = ssl.create_default_context(cadata=cert_pem.decode())
    origin = FakeOrigin(tls=server_tls)
    await nursery.start(origin.serve)
    origin.add("/f.bin", b"hello")
    origin.add("/away", b"", redirect_to="http://169.254.169.254/latest/meta-data/")
    net.names["secure.test"] = ["169.254.169.254", "127.0.0.1"]
    url = f"https://secure.test:{origin.port}"
    async with checked_client(OriginPolicy(), verify=client_tls, follow_redirects=True) as client:
        answer = await client.get(f"{url}/f.bin")
        assert answer.status_code == 200 and answer.content == b"hello"
        with pytest.raises(AddressDenied, match=r"169\.254\.169\.254"):
            await client.get(f"{url}/away")
    _, headers = origin.stats["/f.bin"].requests[0]
    assert ("host", f"secure.test:{origin.port}") in headers
    assert net.connects == [("127.0.0.1", origin.port)]  # one connection, reused


REGISTRY = "https://registry.example.com/v2/team/app/manifests/1"


@pytest.mark.parametrize(
    ("manifest", "realm", "trusted", "sent"),
    [
        (REGISTRY, "https://registry.example.com/token", (), True),  # own host, TLS
        (REGISTRY, "https://registry.example.com:8443/token", (), True),  # any port
        (REGISTRY, "http://registry.example.com/token", (), False),  # in clear
        (REGISTRY, "https://auth.example.com/token", (), False),  # another host
        (REGISTRY, "https://registry.example.com.evil.test/t", (), False),
        (REGISTRY, "https://auth.example.com/token", ("auth.example.com",), True),
        (REGISTRY, "https://auth.example.com:444/t", ("auth.example.com:443",), False),
        (REGISTRY, "http://auth.example.com/token", ("auth.example.com",), False),
        (REGISTRY, "http://auth.example.com/token", ("http://auth.example.com",), True),
        # A plain-http registry: its own origin got the credentials already.
        ("http://reg.lan:5000/v2/a/manifests/1", "http://reg.lan:5000/token", (), True),
        ("http://reg.lan:5000/v2/a/manifests/1", "http://reg.lan:5001/token", (), False),
        ("http://reg.lan:5000/v2/a/manifests/1", "https://reg.lan/token", (), True),
        (REGISTRY, "not a url", (), False),
        (REGISTRY, "https://registry.example.com:x/t", (), False),
    ],
)
def test_credentials_go_only_to_a_realm_that_cannot_be_a_strangers(
    manifest: str, realm: str, trusted: tuple[str, ...], sent: bool
) -> None:
    hosts = [RealmHost.parse(text) for text in trusted]
    assert realm_gets_credentials(manifest, realm, hosts) is sent


@pytest.mark.parametrize("text", ["", "ftp://h", "h/path", "user@h", "h:port", "[::1"])
def test_a_bad_realm_host_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        RealmHost.parse(text)


async def test_a_shared_client_keeps_no_requesters_cookie_for_another(
    nursery: trio.Nursery,
) -> None:
    """The supernode's and the daemon's clients ask for every requester: an origin's
    `Set-Cookie` for Alice's credentials must not go with Bob's requests (his own
    `Cookie` header still goes with his)."""
    seen: list[dict[str, str]] = []

    def origin(request: Seen) -> Answer:
        seen.append(request.headers)
        if request.headers.get("authorization") == "Basic alice":
            return Answer(200, [("set-cookie", "session=alice; Path=/")])
        if "session=alice" in request.headers.get("cookie", ""):
            return Answer(200)  # (a session cookie opens the door as the credentials do)
        return Answer(401)

    server = ScriptedOrigin(origin)
    await nursery.start(server.serve)
    async with checked_client(OriginPolicy()) as client:
        alice = await client.head(server.url("/f"), headers={"authorization": "Basic alice"})
        bob = await client.head(server.url("/f"))
        own = await client.head(server.url("/f"), headers={"cookie": "mine=1"})
    assert (alice.status_code, bob.status_code, own.status_code) == (200, 401, 401)
    assert "cookie" not in seen[1] and seen[2]["cookie"] == "mine=1"


async def test_a_redirect_whose_body_is_a_bomb_is_not_followed(nursery: trio.Nursery) -> None:
    """httpx reads a redirect's body whole, decoded, before it follows it: 200-odd
    bytes of gzip inside gzip would be 64 MiB in memory (the preheat's, the daemon's
    access checks', dfget's own GET)."""
    bomb = gzip.compress(gzip.compress(bytes(64 << 20)))

    def origin(request: Seen) -> Answer:
        if request.path == "/r":
            headers = [("location", "/f"), ("content-encoding", "gzip, gzip")]
            return Answer(302, headers, bomb)
        return Answer(200, body=b"fine")

    server = ScriptedOrigin(origin)
    await nursery.start(server.serve)
    async with checked_client(OriginPolicy(), follow_redirects=True) as client:
        tracemalloc.start()
        try:
            with pytest.raises(httpx.DecodingError, match="redirect"):
                await client.get(server.url("/r"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert (await client.get(server.url("/f"))).content == b"fine"
    assert peak < 8 << 20, f"{peak >> 20} MiB"


async def test_credentials_stay_on_their_origin_through_a_shared_clients_redirects(
    nursery: trio.Nursery,
) -> None:
    """The daemon's access checks follow a registry's redirects with this client: httpx
    alone would keep every header but Authorization on a hop to another host (an S3
    session token, a cookie). A hop on the same origin keeps them."""
    seen: dict[str, dict[str, str]] = {}

    def elsewhere(request: Seen) -> Answer:
        seen["other"] = request.headers
        return Answer(200)

    other = ScriptedOrigin(elsewhere)
    await nursery.start(other.serve)

    def origin(request: Seen) -> Answer:
        seen[request.path] = request.headers
        if request.path == "/away":
            return Answer(302, [("location", other.url("/x"))])
        if request.path == "/here":
            return Answer(302, [("location", "/x")])
        return Answer(200)

    server = ScriptedOrigin(origin)
    await nursery.start(server.serve)
    secret = {"x-amz-security-token": "t", "authorization": "Bearer a", "cookie": "c=1"}
    async with checked_client(OriginPolicy(), follow_redirects=True) as client:
        assert (await client.head(server.url("/here"), headers=secret)).status_code == 200
        assert (await client.head(server.url("/away"), headers=secret)).status_code == 200
    assert seen["/x"]["x-amz-security-token"] == "t"  # (the same origin)
    assert not set(secret) & set(seen["other"])
