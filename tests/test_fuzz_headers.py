"""Header values from untrusted parties fuzzed (Hypothesis): a registry's
`WWW-Authenticate: Bearer` challenge, a client's `Proxy-Authorization: Basic`, a
CONNECT target, an origin's `Content-Range`, `Content-Length`, validators and
`Content-Encoding`, registry blob paths. Random and adversarial values: mutations of
real ones, quoted strings with escapes, commas inside quotes, missing quotes,
duplicate and empty parameters, any Unicode, control characters, huge numbers, IPv6
literals, `host:port` with junk, base64 with bad padding or not UTF-8 once decoded.

Each raises nothing but the typed error its callers handle (or says None, or
refuses), and what it accepts keeps its promise:

- `challenge_params` never raises and reads back every challenge the grammar writes
  (RFC 9110 auth-params: tokens, quoted strings with escapes); an image preheat's
  token request (`Preheats._bearer_token`, on a mock transport) raises only what the
  preheat reports as its failure (`PreheatError`, `ValueError`), goes to the realm as
  an http(s) URL, and carries the registry's Basic credentials only where httpx
  connects to the registry's own host over https, the manifest URL's origin or a
  trusted realm.
- `Proxy-Authorization`: the credentials are the base64 of `user:password` split at
  the first colon, the user UTF-8, else None; `ProxyAuth.check` admits only the right
  password and never raises.
- A CONNECT target (`Proxy._tunnel`, with no connection made) is a 400, or a
  non-empty host and a port in 1..65535 that the target names; an intercepted name
  (`intercepted_name`) is lower case, canonical (read again it is the same), one a
  certificate can carry, and the URL the hijacker builds from it names that origin.
- The CDN's reading of an origin's answer (`OriginResponse.span`, `.length`,
  `Validators`, `check_resumed`, `split_length`, `_whole`, revalidation's total)
  raises only `OriginBroken`; numbers are ASCII digits (at most 19); a Content-Range
  accepted lies inside the length; If-Range carries no weak ETag.
- The capped reader (`common.io.capped`) raises only `BodyTooLarge` and
  `EncodedBody` (a redirect: httpx's `DecodingError`), returns at most `cap` bytes,
  and refuses every encoding but identity.
- dfdaemon's "a yes names a length" (`announced_length`) holds only where
  `Validators.of` reads a length.
- `blob_digest` raises only `BadReference`; a blob it names is that very path; the
  origin `resolve` checks trust with is the one httpx connects to.

Inputs name only 127.x, 198.18.0.0/15 or made-up hosts; nothing goes on the network.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import bcrypt
import httpx
import pytest
import trio
from fuzz_strategies import FUZZ, fuzz_settings
from hypothesis import example, given
from hypothesis import strategies as st

from common.addresses import format_address, parse_listen
from common.io.capped import (
    MAX_REDIRECT_BODY,
    BodyTooLarge,
    EncodedBody,
    bounded_redirect,
    read_capped,
)
from dfdaemon import proxy as proxy_module
from dfdaemon.hijack import Hijacker, intercepted_name
from dfdaemon.httpserver import Request
from dfdaemon.proxy import Proxy
from dfdaemon.proxyauth import MAX_HEADER, ProxyAuth, Verdict, _credentials
from dfdaemon.registry import NAME, BadReference, blob_digest, resolve
from dfdaemon.trust import DEFAULT_PORTS, normal_host, origin_of
from dfdaemon.upstream import HOP_BY_HOP, announced_length, forwardable
from dfdaemon.validators import Validators as DaemonValidators
from supernode.admin.preheat import PreheatError, Preheats, _Answer
from supernode.admin.realms import RealmHost, challenge_params
from supernode.cdn.fetch import _whole
from supernode.cdn.response import OriginResponse, Validators, check_resumed
from supernode.cdn.revalidate import _total_length
from supernode.cdn.streams import CHUNK, split_length
from supernode.errors import OriginBroken

# Text as an attacker would send it, weighted towards what header parsers care about.
SPECIAL = '"\\,;=:/?#@[]% \t\x00\x01\x7f\x85\u2028'
any_text = st.text(st.sampled_from(SPECIAL) | st.characters(exclude_categories=["Cs"]), max_size=30)
# A header value as a client library hands it over: no CR, LF or NUL (h11 refuses
# them), any other character (httpx decodes UTF-8, else latin-1).
header_text = st.text(
    st.sampled_from(SPECIAL.replace("\x00", "")) | st.characters(exclude_categories=["Cs"]),
    max_size=40,
).map(lambda t: t.replace("\x00", "").replace("\r", "").replace("\n", ""))
latin1_text = st.binary(max_size=60).map(lambda b: b.decode("latin-1"))
digits = st.integers(0, 10**25).map(str) | st.integers(0, 10**5).map(str)
huge_digits = st.integers(20, 6000).map(lambda n: "9" * n) | st.just("0" * 5000 + "1")
odd_numbers = st.sampled_from(["", "-1", "+5", " 5", "5 ", "0x10", "١٢", "²", "５", "1e3", "1.0"])
numbers = digits | huge_digits | odd_numbers


@st.composite
def mutated(draw: st.DrawFn, seeds: list[str], inserts: st.SearchStrategy[str] = any_text) -> str:
    """One of `seeds`, edited a few times: a slice dropped, text inserted, a slice
    repeated (a parameter given twice), two slices swapped."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(text)))
        end = draw(st.integers(at, min(len(text), at + 12)))
        edit = draw(st.integers(0, 3))
        if edit == 0:
            text = text[:at] + text[end:]
        elif edit == 1:
            text = text[:at] + draw(inserts) + text[at:]
        elif edit == 2:
            text = text[:end] + text[at:end] + text[end:]
        else:
            text = text[end:] + text[at:end] + text[:at]
    return text


def run(function: Callable[..., Any], *args: Any) -> Any:
    return trio.run(function, *args)


# -- WWW-Authenticate: Bearer (an image preheat's token) -------------------------------

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(st.sampled_from(TCHAR), min_size=1, max_size=12)
# What a quoted-string may hold (RFC 9110 5.6.4: qdtext and quoted-pairs): tabs,
# spaces, visible characters, anything past ASCII; quotes and backslashes escaped.
quoted_content = st.text(
    st.sampled_from('"\\, =;\t') | st.characters(exclude_categories=["Cs", "Cc"]), max_size=20
)


@st.composite
def written_params(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    """A challenge's auth-params as a registry may write them, and what they say."""
    pairs = draw(
        st.lists(
            st.tuples(tokens.filter(lambda t: t.lower() != "realm"), quoted_content | tokens),
            max_size=5,
        )
    )
    items = []
    for name, value in pairs:
        if re.fullmatch(f"[{re.escape(TCHAR)}]+", value) and draw(st.booleans()):
            written = value  # a token, unquoted
        else:
            escape_all = draw(st.booleans())  # (a quoted-pair may escape any character)
            written = '"' + "".join(f"\\{c}" if c in '"\\' or escape_all else c for c in value)
            written += '"'
        space = draw(st.sampled_from(["", " ", "\t"]))
        items.append(f"{name}{space}={space}{written}")
    return draw(st.sampled_from([",", ", ", " ,\t"])).join(items), pairs


@FUZZ
@given(case=written_params())
@example(case=('scope="a\\"b,c",service=registry', [("scope", 'a"b,c'), ("service", "registry")]))
@example(case=('scope="a\\\\",service=registry', [("scope", "a\\"), ("service", "registry")]))
def test_challenge_params_read_back_what_the_grammar_writes(
    case: tuple[str, list[tuple[str, str]]],
) -> None:
    text, pairs = case
    assert challenge_params(text) == [(name.lower(), value) for name, value in pairs]


REGISTRY = "https://127.0.0.1:5000/v2/a/b/manifests/latest"
REAL_CHALLENGE = (
    'Bearer realm="https://127.0.0.1:5000/token",service="registry",scope="repository:a/b:pull"'
)
REALMS = [
    "https://127.0.0.1:5000/token",
    "http://127.0.0.1:5000/token",
    "https://127.0.0.1/token",
    "https://auth.registry.test/token",
    "https://[::1]:5000/token",
    "http://127.0.0.3:8080/token",
    "https://127.0.0.1:5000\\@198.18.0.1/token",
    "https://127.0.0.1:5000@198.18.0.1/token",
    "https://198.18.0.1#@127.0.0.1:5000/",
    "https://127.0.0.1:5000%2f@198.18.0.1/",
    "https://127.0.0.1\t@198.18.0.1/",
    "https://127.0.0.1:0/token",
    "https://127.0.0.1:99999/token",
    "https://127.0.0.1:+5000/token",
    "HTTPS://127.0.0.1.:5000/token",
    "https://[::1/token",
    "http://[::1]x/token",
    "https:127.0.0.1/token",
    "//127.0.0.1:5000/token",
    "/token",
    "ftp://127.0.0.1/token",
    "https://127.0.0.1/\x01token",
    "https://ｒegistry.test/token",
]
realms = mutated(REALMS) | any_text
quoted_realms = realms.map(lambda r: '"' + r.replace("\\", "\\\\").replace('"', '\\"') + '"')
challenges = st.one_of(
    mutated([REAL_CHALLENGE, 'Bearer realm="",service="registry"', "Basic realm=x"]),
    st.builds(
        lambda scheme, realm, rest: f"{scheme} realm={realm}{rest}",
        st.sampled_from(["Bearer", "bearer", "BEARER", "Bearer ", "Basic", "Bearerx"]),
        realms | quoted_realms,
        st.sampled_from(["", ',service="registry"', ",realm=", ',realm="/x"', ",,", ",scope"])
        | written_params().map(lambda case: "," + case[0]),
    ),
    st.builds(
        lambda realm, scope: f'Bearer realm="{realm}",scope="{scope}"',
        st.sampled_from(REALMS[:2]),
        st.integers(0, 70_000).map(lambda n: "%\u00e9" * n),  # 9 URL characters a pair
    ),
    header_text.map(lambda t: "Bearer " + t),
)
TRUSTED = RealmHost("127.0.0.3", 8080, plain_http=True)
BASIC = "Basic " + base64.b64encode(b"user:pass").decode()  # the registry's credentials


class _Body(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


async def token_requests(
    challenge: str, manifest: str, trusted: tuple[RealmHost, ...]
) -> tuple[str | None, list[httpx.Request]]:
    """What `_bearer_token` makes of a 401 with `challenge` to a request with Basic
    credentials, and the token requests it sent (to a mock transport)."""
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, stream=_Body(json.dumps({"token": "t0k"}).encode()))

    preheats = Preheats(SimpleNamespace(), realms=trusted)  # (no CDN: never asked)
    # (As bytes: httpx reads a header UTF-8, else latin-1, as off the network.)
    response = _Answer(401, httpx.Headers([(b"www-authenticate", challenge.encode())]), b"")
    basic = [("authorization", BASIC)]
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer), trust_env=False) as client:
        token, _ = await preheats._bearer_token(client, manifest, response, basic)
    return token, sent


def _may_get_credentials(manifest: str, url: httpx.URL, trusted: tuple[RealmHost, ...]) -> bool:
    """realms.py's rule, applied to the URL httpx connects to (not to a parse of it)."""
    registry = httpx.URL(manifest)
    host, port = url.host.lower(), url.port or DEFAULT_PORTS[url.scheme]
    if any(t.matches(url.scheme, host, port) for t in trusted):
        return True
    if url.scheme == "https" and host == registry.host:
        return True
    registry_port = registry.port or DEFAULT_PORTS[registry.scheme]
    return (url.scheme, host, port) == (registry.scheme, registry.host, registry_port)


@fuzz_settings(400)
@given(
    challenge=challenges,
    manifest=st.sampled_from(
        [REGISTRY, "http://127.0.0.1:5000/v2/a/manifests/1", "https://[::1]/v2/a/manifests/1"]
    ),
    trust=st.booleans(),
)
@example(challenge='Bearer realm="http://[::1"', manifest=REGISTRY, trust=False)
@example(challenge='Bearer realm="https://127.0.0.1/\x01t"', manifest=REGISTRY, trust=False)
@example(challenge='Bearer realm="http://[::1]x/t"', manifest=REGISTRY, trust=False)
@example(
    challenge=f'Bearer realm="https://127.0.0.1/t",scope="{"%" * 30_000}"',
    manifest=REGISTRY,
    trust=False,
)
def test_a_bearer_challenge_sends_the_token_request_only_where_it_may(
    challenge: str, manifest: str, trust: bool
) -> None:
    trusted = (TRUSTED,) if trust else ()
    try:
        token, sent = run(token_requests, challenge, manifest, trusted)
    except (PreheatError, ValueError):  # the preheat fails with this message
        return
    assert token in (None, "t0k") and len(sent) <= 1
    rest = challenge.strip().split(None, 1)[1] if len(challenge.split()) > 1 else ""
    realm = dict(challenge_params(rest)).get("realm")
    for request in sent:
        assert realm and request.url.scheme in ("http", "https") and request.url.host
        if request.headers.get("authorization") == BASIC:  # (not user info of the realm's)
            assert _may_get_credentials(manifest, request.url, trusted), (challenge, request.url)


def test_a_token_request_keeps_the_realms_query_and_names_its_scope() -> None:
    # A tab after the scheme; a realm with a query of its own and a fragment (which is
    # not sent: the parameters must not land in it).
    challenge = 'Bearer\trealm="https://127.0.0.1/t?x=1#f",service="r",scope="repository:a:pull"'
    token, sent = run(token_requests, challenge, REGISTRY, ())
    assert token == "t0k" and len(sent) == 1
    url = sent[0].url
    assert (url.path, url.fragment) == ("/t", "")
    assert dict(url.params) == {"x": "1", "service": "r", "scope": "repository:a:pull"}


@FUZZ
@given(text=mutated([REAL_CHALLENGE.removeprefix("Bearer ")]) | header_text | any_text)
def test_challenge_params_never_raises_and_any_realm_is_an_http_url(text: str) -> None:
    pairs = challenge_params(text)
    assert all(name == name.strip().lower() for name, _ in pairs)
    for name, value in pairs:
        if name == "realm" and value:
            url = httpx.URL(value)
            assert url.scheme in ("http", "https") and url.host


# -- Proxy-Authorization: Basic ----------------------------------------------------------

PASSWORD = b"s3cr:et\xff" + b"x" * 80  # a colon, not UTF-8, past bcrypt's 72 bytes
USERS = {
    "alice": bcrypt.hashpw(PASSWORD[:72], bcrypt.gensalt(4)),
    "b\u00f6b": bcrypt.hashpw(b"other", bcrypt.gensalt(4)),
}
REAL_BASIC = "Basic " + base64.b64encode(b"alice:" + PASSWORD).decode()
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


@st.composite
def basic_headers(draw: st.DrawFn) -> str:
    """`Basic BASE64` with a random scheme spelling, spacing and padding."""
    raw = draw(
        st.binary(max_size=40)
        | st.builds(
            lambda user, password: user.encode() + b":" + password,
            st.sampled_from(["alice", "b\u00f6b", "", "alice:x"])
            | st.text(st.characters(exclude_categories=["Cs"]), max_size=6),
            st.sampled_from([PASSWORD, PASSWORD[:72], b"", b":"]) | st.binary(max_size=12),
        )
    )
    token = base64.b64encode(raw).decode()
    cut = draw(st.sampled_from(["", "=", "==", "A"]))
    token = draw(st.sampled_from([token, token.rstrip("="), token + cut, token[1:]]))
    scheme = draw(st.sampled_from(["Basic", "basic", "BASIC", "Bearer", "Basic\t", "", "Basicx"]))
    space = draw(st.sampled_from([" ", "  ", "\t", ""]))
    return f"{scheme}{space}{token}{draw(st.sampled_from(['', ' ', ',']))}"


proxy_auth_headers = st.one_of(
    basic_headers(),
    mutated(
        [REAL_BASIC], st.text(st.sampled_from(B64 + " \t:,\x85\xff"), max_size=3) | latin1_text
    ),
    latin1_text.map(lambda t: "Basic " + t),
    latin1_text,
)


@FUZZ
@given(header=proxy_auth_headers | any_text)
@example(header="Basic " + base64.b64encode(b"a:b:c").decode())
@example(header="Basic " + base64.b64encode(b"\xff:pw").decode())  # not UTF-8
@example(header="Basic dXNlcjpwdw")  # no padding
@example(header="Basic d\u00e9XNlcjpwdw==")  # not ASCII
def test_basic_credentials_split_at_the_first_colon(header: str) -> None:
    credentials = _credentials(header)
    if credentials is None:
        return
    user, password = credentials
    scheme, _, token = header.strip().partition(" ")
    assert scheme.lower() == "basic" and ":" not in user
    assert base64.b64decode(token.strip(), validate=True) == user.encode() + b":" + password


async def check_all(auth: ProxyAuth, headers: list[str | None]) -> list[Verdict]:
    return [await auth.check(header) for header in headers]


@fuzz_settings(60)
@given(
    headers=st.lists(
        st.none() | proxy_auth_headers | st.just(REAL_BASIC) | st.just(REAL_BASIC + "=" * 2000),
        min_size=1,
        max_size=4,
    )
)
def test_proxy_auth_admits_only_the_right_password(headers: list[str | None]) -> None:
    verdicts = run(check_all, ProxyAuth(USERS), headers)
    for header, verdict in zip(headers, verdicts, strict=True):
        if verdict is not Verdict.ADMITTED:
            assert verdict is Verdict.REFUSED
            continue
        assert header is not None and len(header) <= MAX_HEADER
        user, password = _credentials(header) or ("", b"")
        assert user == "alice" and password[:72] == PASSWORD[:72]  # (bcrypt reads 72 bytes)


# -- CONNECT targets and intercepted names -----------------------------------------------

VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))  # what h11 lets into a request target
hosts = st.one_of(
    st.sampled_from(
        [
            "127.0.0.1",
            "registry.test",
            "REGISTRY.Test.",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "::1",
            "[fe80::1%25eth0]",
            "[fe80::1%eth0]",
            "[127.0.0.1]",
            "[]",
            "[::1",
            "::1]",
            "a..test",
            "-a.test",
            "a_b.test",
            "0x7f.1",
            "2130706433",
            "127.1",
            "u@registry.test",
            "registry.test/x",
            "a" * 64 + ".test",
            ".".join(["a" * 63] * 4),
            "",
        ]
    ),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.text(st.sampled_from(VCHAR), max_size=20),
)
ports = numbers | st.integers(0, 70_000).map(str)
connect_targets = st.one_of(
    st.builds(lambda host, port: f"{host}:{port}", hosts, ports),
    st.builds(
        format_address,
        st.ip_addresses().map(str)
        | st.from_regex(r"[A-Za-z0-9-]{1,9}(\.[a-z0-9-]{1,5}){0,2}\.?", fullmatch=True),
        st.integers(0, 65536),
    ),
    mutated(["registry.test:443", "[::1]:5000", "127.0.0.1:1"], st.text(st.sampled_from(VCHAR))),
    st.text(st.sampled_from(VCHAR), max_size=30),
    hosts,
)


class _Hijack(Hijacker):
    """A hijacker for names starting a to m or a digit, and IPv6 addresses: it notes
    what it would intercept, and does not."""

    def __init__(self) -> None:
        self.patterns = [re.compile(r"[a-m0-9].*|.*:.*")]
        self.intercepted: list[tuple[str, int]] = []

    async def intercept(self, request: Request, reply: Any, name: str, port: int) -> None:
        self.intercepted.append((name, port))


class _Reply:
    def __init__(self) -> None:
        self.statuses: list[int] = []

    async def simple(self, status: int, body: bytes, content_type: str, *_: Any) -> None:
        self.statuses.append(status)


async def connect(target: str) -> tuple[list[int], list[tuple[str, int]], list[tuple[str, int]]]:
    """`Proxy._tunnel` for `CONNECT target`, no connection made: the answers, what it
    intercepted, what it tried to connect to."""
    tunnel = Proxy.__new__(Proxy)
    tunnel.hijack = hijack = _Hijack()
    tunnel.upstream = SimpleNamespace(policy=None)  # type: ignore[assignment]  # (never used)
    tried: list[tuple[str, int]] = []

    async def refuse(policy: object, host: str, port: int) -> trio.SocketStream:
        tried.append((host, port))
        raise OSError("no connections from the fuzz tests")

    request = Request("CONNECT", target, [("host", target)], "127.0.0.1:1", lambda: _no_body())
    reply = _Reply()
    with mock.patch.object(proxy_module, "open_checked_tcp_stream", refuse):
        await tunnel._tunnel(request, reply)  # type: ignore[arg-type]  # (a stub reply)
    return reply.statuses, hijack.intercepted, tried


async def _no_body() -> AsyncIterator[bytes]:
    return
    yield b""


@FUZZ
@given(target=connect_targets)
@example(target="registry.test:0")
@example(target="registry.test:65536")
@example(target=":443")
@example(target="[]:443")
@example(target="[::1]x:443")
@example(target="registry.test:٤٤٣")
def test_a_connect_target_is_refused_or_names_a_host_and_a_port(target: str) -> None:
    statuses, intercepted, tried = run(connect, target)
    if ":" not in target:  # a host or a port alone: CONNECT wants both
        assert (statuses, intercepted, tried) == ([400], [], [])
        return
    if statuses == [400]:
        assert not intercepted and not tried
        return
    assert len(intercepted) + len(tried) == 1 and statuses in ([], [502])
    name_or_host, port = (intercepted or tried)[0]
    assert 1 <= port <= 65535 and target.strip().endswith(f":{port}")
    host = target.strip().removesuffix(f":{port}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    assert host and "[" not in host and "]" not in host
    name = intercepted_name(host)
    if intercepted:
        assert name_or_host == name
    else:
        assert name_or_host == host
        assert name is None or not re.fullmatch(r"[a-m0-9].*|.*:.*", name)


def test_a_connect_target_without_a_host_is_refused() -> None:
    assert run(connect, "443") == ([400], [], [])


DNS_NAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)


@FUZZ
@given(
    host=hosts.map(lambda h: h[1:-1] if h.startswith("[") else h) | any_text,
    port=st.integers(1, 65535),
)
@example(host="\u212a.test", port=443)  # KELVIN SIGN: lower() makes it "k.test"
@example(host="::ffff:127.0.0.1", port=443)
@example(host="a.", port=443)
def test_an_intercepted_name_is_canonical_and_names_its_origin(host: str, port: int) -> None:
    name = intercepted_name(host)
    if name is None:
        return
    assert intercepted_name(name) == name  # canonical: read again, the same
    assert name == name.lower() and name.isascii() and not name.endswith(".")
    try:
        assert str(ipaddress.ip_address(name)) == name
    except ValueError:
        assert DNS_NAME.fullmatch(name), name
    base = f"https://{format_address(name, port)}"  # as Hijacker._serve builds it
    origin = origin_of(base)
    assert (origin.host, origin.port) == (normal_host(name), port)
    assert parse_listen(format_address(name, port)) == (name, port)


# -- an origin's answer, as the CDN reads it ---------------------------------------------


class _Head(OriginResponse):
    """An origin's answer with these headers (names in lower case), and no body."""

    def __init__(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status, self.reason, self.url = status, "", "http://127.0.0.1/x"
        self.headers = headers

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


NUMBER = re.compile(r"[0-9]{1,19}")
spans = st.tuples(st.integers(0, 1 << 40), st.integers(0, 1 << 40), st.integers(0, 1 << 40)) | (
    st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(0, 20))
)
content_ranges = st.one_of(
    st.builds(
        lambda unit, first, last, total: f"{unit} {first}-{last}/{total}",
        st.sampled_from(["bytes", "bytes", "Bytes", "items", "", "bytes "]),
        numbers,
        numbers,
        numbers | st.just("*"),
    ),
    spans.map(lambda s: f"bytes {s[0]}-{s[1]}/{s[2]}"),
    spans.map(lambda s: f"bytes {s[0]}-{s[0] + s[1]}/{s[0] + s[1] + s[2] + 1}"),
    mutated(
        [
            "bytes 0-1/2",
            "bytes */5",
            "bytes 0-0/1",
            "bytes 5-9/10",
            f"bytes 0-{CHUNK - 1}/{3 * CHUNK}",
        ],
        st.sampled_from(["-", "/", " ", "*", ",", "0", "9", "٣", "²"]),
    ),
    header_text,
)
lengths = numbers | st.integers(0, 1 << 40).map(str) | header_text
validators = st.sampled_from(['"v1"', 'W/"v1"', 'w/"v1"', "", "W/", '"', "Tue, 15 Nov 1994"])
origin_heads = st.builds(
    lambda status, pairs: _Head(status, [(k, v) for k, v in pairs if v is not None]),
    st.sampled_from([200, 206, 206, 304, 416]),
    st.tuples(
        st.tuples(st.just("content-range"), st.none() | content_ranges),
        st.tuples(st.just("content-length"), st.none() | lengths),
        st.tuples(st.just("transfer-encoding"), st.none() | st.sampled_from(["chunked", "gzip"])),
        st.tuples(st.just("etag"), st.none() | validators | header_text),
        st.tuples(st.just("last-modified"), st.none() | validators | header_text),
    ),
)


@st.composite
def first_chunks(draw: st.DrawFn) -> _Head:
    """A 206 to the first GET of a fetch in several chunks, often what it should be."""
    total = draw(st.integers(0, 3 * CHUNK) | st.sampled_from([CHUNK - 1, CHUNK, CHUNK + 1]))
    end = min(CHUNK, total) - 1 + draw(st.sampled_from([0, 0, 0, -1, 1]))
    first = draw(st.sampled_from([0, 0, 0, 1]))
    headers = [("content-range", f"bytes {first}-{end}/{total}")]
    headers.append(("content-length", str(end + 1 + draw(st.sampled_from([0, 0, 1])))))
    if draw(st.booleans()):
        headers.append(("etag", draw(validators)))
    return _Head(draw(st.sampled_from([206, 206, 200])), headers)


origin_heads = origin_heads | first_chunks()


@fuzz_settings(500)
@given(answer=origin_heads)
@example(answer=_Head(200, [("content-length", "٣")]))
@example(answer=_Head(200, [("content-length", "²")]))
@example(answer=_Head(200, [("content-length", "9" * 5000)]))
@example(answer=_Head(200, [("content-length", "1" + "0" * 19)]))  # (was taken as none)
@example(answer=_Head(206, [("content-range", "bytes 0-0/²")]))
def test_the_cdn_reads_an_origins_numbers_as_ascii_digits(answer: _Head) -> None:
    content_range, length = answer.header("content-range"), answer.header("content-length")
    span = answer.span
    if span is not None:
        assert content_range is not None and content_range.startswith("bytes ")
        whole = re.fullmatch(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19})", content_range)
        if whole:
            assert span == tuple(int(n) for n in whole.groups())
        assert all(n is None or 0 <= n < 10**19 for n in span)
    chunked = "chunked" in (answer.header("transfer-encoding") or "")
    if length is not None and NUMBER.fullmatch(length) and not chunked:
        assert answer.length == int(length)
    elif length is not None and length.isascii() and length.isdigit() and not chunked:
        assert answer.length is not None and answer.length >= 10**19  # (too large: refused)
    else:
        assert answer.length is None
    total = _total_length(answer)  # revalidation: the whole length, or None
    assert total is None or 0 <= total <= 10**19  # (10**19: more digits than any length)


@fuzz_settings(500)
@given(answer=origin_heads, start=st.integers(0, 10) | st.integers(0, 1 << 40))
@example(answer=_Head(206, [("content-range", "bytes 5-1/3")]), start=5)
@example(answer=_Head(206, [("content-range", "bytes 5-9/5")]), start=5)
@example(answer=_Head(206, [("content-range", "bytes 0-0/0")]), start=0)
def test_a_resumed_range_accepted_lies_inside_the_length(answer: _Head, start: int) -> None:
    try:
        check_resumed(answer, start, Validators(None, None))
    except OriginBroken:
        pass
    else:
        assert answer.status == 206 and answer.span is not None and answer.span[0] == start
        _, last, total = answer.span
        assert last is None or start <= last, answer.content_range
        assert total is None or (start < total and (last is None or last < total))
    total = split_length(answer)  # the first chunk of a fetch in several: the whole length
    if total is not None:
        end = min(CHUNK, total) - 1
        assert answer.span == (0, end, total) and answer.length == end + 1 and total > 0
    whole = _whole(answer)  # a 206 for the whole file
    if whole is not None:
        assert answer.span == (0, whole - 1, whole) and answer.length in (None, whole)


@FUZZ
@given(etag=st.none() | validators | header_text, modified=st.none() | validators | header_text)
def test_if_range_never_carries_a_weak_etag(etag: str | None, modified: str | None) -> None:
    guard = Validators(etag, modified).if_range
    if etag:  # (RFC 9110 13.1.5: a date only where there is no entity tag)
        assert guard == "" or (guard == etag and not etag.startswith("W/"))
    else:
        assert guard == (modified or "")


# -- the capped reader -------------------------------------------------------------------

encodings = (
    st.sampled_from(
        ["", "identity", " Identity ", "gzip", "gzip, gzip", "br", "IDENTITY, gzip", "x" * 100]
    )
    | header_text
)


def _over(length: str | None, bound: int) -> bool:
    """Whether a Content-Length names a number (ASCII digits) over `bound`."""
    if not length or not (length.isascii() and length.isdigit()):
        return False
    digits = length.lstrip("0")
    return len(digits) > len(str(bound)) or int(digits or "0") > bound


def http_answer(status: int, headers: list[tuple[str, str]], body: bytes) -> httpx.Response:
    """An httpx response as the network would give it (header values as bytes:
    httpx decodes them as it would read them), its body not read yet."""
    raw = [(k.encode(), v.encode()) for k, v in headers]
    request = httpx.Request("GET", "http://127.0.0.1/x")
    return httpx.Response(status, headers=raw, stream=_Body(body), request=request)


@fuzz_settings(400)
@given(
    encoding=st.none() | encodings,
    length=st.none() | lengths,
    body=st.binary(max_size=50),
    cap=st.integers(0, 60),
)
@example(encoding=None, length="9" * 5000, body=b"", cap=10)
@example(encoding=None, length="0" * 5000 + "1", body=b"x", cap=10)
def test_the_capped_reader_refuses_only_with_its_errors(
    encoding: str | None, length: str | None, body: bytes, cap: int
) -> None:
    headers = [] if encoding is None else [("content-encoding", encoding)]
    headers += [] if length is None else [("content-length", length)]
    answer = http_answer(200, headers, body)
    encoded = encoding is not None and encoding.strip().lower() not in ("", "identity")
    try:
        got = run(read_capped, answer, cap)
    except EncodedBody:
        assert encoded
        return
    except BodyTooLarge:
        assert not encoded
        assert len(body) > cap or _over(length, cap)
        return
    assert not encoded and got == body and len(got) <= cap


@fuzz_settings(400)
@given(
    status=st.sampled_from([200, 301, 302, 303, 307, 308]),
    encoding=st.none() | encodings,
    length=st.none() | lengths,
)
@example(status=302, encoding=None, length="9" * 5000)
def test_a_redirect_followed_has_a_small_plain_body(
    status: int, encoding: str | None, length: str | None
) -> None:
    headers = [("location", "http://127.0.0.1/y")]
    headers += [] if encoding is None else [("content-encoding", encoding)]
    headers += [] if length is None else [("content-length", length)]
    answer = http_answer(status, headers, b"")
    try:
        run(bounded_redirect, answer)
    except httpx.DecodingError:
        assert status != 200
        return
    if status != 200:  # a redirect httpx follows, reading its body whole
        assert encoding is None or encoding.strip().lower() in ("", "identity")
        assert not _over(length, MAX_REDIRECT_BODY)


# -- dfdaemon: a yes names a length --------------------------------------------------------


@fuzz_settings(400)
@given(
    status=st.sampled_from([200, 206, 302, 401]),
    length=st.none() | lengths,
    content_range=st.none() | content_ranges,
)
@example(status=206, length=None, content_range="bytes 0-0/*")
@example(status=206, length="1", content_range="junk")
def test_a_yes_names_a_length_the_daemon_can_read(
    status: int, length: str | None, content_range: str | None
) -> None:
    headers = [] if length is None else [("content-length", length)]
    headers += [] if content_range is None else [("content-range", content_range)]
    answer = http_answer(status, headers, b"")
    if announced_length(answer) is not None:
        assert status in (200, 206)
        assert DaemonValidators.of(answer).length is not None, (length, content_range)


HEADER_NAMES = [
    "connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "transfer_encoding",
    "content_length",
    "content-length",
    "x-a",
    "x_a",
    "authorization",
    "host",
    "upgrade",
    "proxy-authorization",
]
header_names = st.sampled_from(HEADER_NAMES) | st.text(
    st.sampled_from(TCHAR.lower()), min_size=1, max_size=8
)


@FUZZ
@given(
    headers=st.lists(
        st.tuples(header_names, header_text)
        | st.tuples(st.just("connection"), mutated(["x-a, keep-alive", "close", " X-A ,te"])),
        max_size=8,
    )
)
def test_no_hop_by_hop_header_is_passed_on(headers: list[tuple[str, str]]) -> None:
    named = {t.strip().lower() for k, v in headers if k == "connection" for t in v.split(",")}
    passed = forwardable(headers)
    assert passed == [h for h in headers if h in passed]  # in order, as they came
    for name, _ in headers:
        framing = name.replace("_", "-") in HOP_BY_HOP | {"content-length"} and "_" in name
        dropped = name in HOP_BY_HOP or name in named or framing
        assert all(k != name for k, _ in passed) if dropped else any(k == name for k, _ in passed)


# -- registry references and blob paths -----------------------------------------------------

HEX64 = "0123456789abcdef" * 4
BLOB = f"/v2/library/alpine/blobs/sha256:{HEX64}"
path_inserts = st.text(st.sampled_from("/:.-_%@AZaz09\n ") | st.characters(), max_size=3)
blob_paths = st.one_of(
    mutated(
        [
            BLOB,
            f"/v2/a/b-c/d__e/blobs/sha256:{HEX64}",
            f"/v2/a/blobs/sha512:{'a' * 128}",
            f"/v2/a/blobs/uploads/{HEX64}",
            f"/v2/a/blobs/blobs/sha256:{HEX64}",
            "/v2/a/manifests/latest",
        ],
        path_inserts,
    ),
    any_text.map(lambda t: "/v2/" + t),
    st.builds(
        lambda name, hexits: f"/v2/{name}/blobs/sha256:{hexits}",
        st.from_regex(r"[a-z0-9._/-]{1,20}", fullmatch=True),
        st.text("0123456789abcdef", min_size=64, max_size=64)
        | st.text("0123456789abcdefA", min_size=63, max_size=65),
    ),
)


@fuzz_settings(500)
@given(path=blob_paths)
@example(path=f"/v2/library/alpine/blobs/sha256:{HEX64.upper()}")
@example(path=f"/v2/library/alpine/blobs/sha256:{HEX64}\n")
@example(path=f"/v2/Library/alpine/blobs/sha256:{HEX64}")
@example(path=f"/v2/../blobs/sha256:{HEX64}")
@example(path=f"/v2/a/blobs/sha256%3A{HEX64}")
def test_a_blob_named_is_that_very_path(path: str) -> None:
    try:
        blob = blob_digest(path)
    except BadReference as exc:
        assert exc.code in ("NAME_INVALID", "DIGEST_INVALID")
        return
    if blob is None:
        return
    name, hex_digest = blob
    assert path == f"/v2/{name}/blobs/sha256:{hex_digest}"
    assert re.fullmatch(r"[0-9a-f]{64}", hex_digest) and name.isascii() and NAME.fullmatch(name)
    assert "/blobs/uploads" not in path and ".." not in name.split("/")


ns_hosts = st.one_of(
    mutated(
        ["127.0.0.1:5000", "registry.test", "[::1]:5000", "docker.io", "127.0.0.1:0"],
        st.text(st.sampled_from("[]:.-%09azAZ@/"), max_size=3),
    ),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]:443"),
    st.text(st.sampled_from(VCHAR), max_size=15),
)


@fuzz_settings(400)
@given(
    ns=st.none() | ns_hosts,
    path=blob_paths.filter(
        lambda p: p.startswith("/v2/") and re.fullmatch(f"[{re.escape(VCHAR)}]+", p)
    ),
    registry=st.sampled_from(
        ["https://127.0.0.1:5000", "http://127.0.0.1:5000", "https://[::1]", "https://docker.io"]
    ),
    plain=st.booleans(),
)
def test_the_origin_trusted_is_the_one_connected_to(
    ns: str | None, path: str, registry: str, plain: bool
) -> None:
    target = path if ns is None else f"{path}?ns={ns}"
    try:
        resolved = resolve(target, registry, frozenset({ns}) if plain and ns else frozenset())
    except BadReference as exc:
        assert exc.code == "NAME_INVALID"
        return
    assert resolved.origin == origin_of(resolved.url)
    url = httpx.URL(resolved.url)  # what the daemon's client connects to
    port = url.port or DEFAULT_PORTS[url.scheme]
    assert (normal_host(url.host), port) == (resolved.origin.host, resolved.origin.port)
    assert urlsplit(resolved.url).path == resolved.path


upstream_urls = st.one_of(
    mutated(
        [
            "https://127.0.0.1:5000/v2/",
            "http://registry.test/v2/a/blobs/x",
            "https://[::1]:5000/v2/",
            "https://[::ffff:127.0.0.1]/",
            "https://127.0.0.1:0/",
            "https://u:p@REGISTRY.test.:443/x?y#z",
            "https://registry.test\\@198.18.0.1/",
            "https://[fe80::1%25eth0]/",
        ],
        st.text(st.sampled_from("[]:@%.\\/#?09az") | st.characters(), max_size=3),
    ),
    any_text,
)


@fuzz_settings(500)
@given(url=upstream_urls)
@example(url="https://127.0.0.1:99999/")
@example(url="https://[127.0.0.1]/")
def test_an_origin_is_the_host_and_port_connected_to(url: str) -> None:
    try:
        origin = origin_of(url)
    except ValueError:
        return
    assert origin.scheme in ("http", "https") and 1 <= origin.port <= 65535
    assert normal_host(origin.host) == origin.host  # normalised once and for all
    again = origin_of(f"{origin.scheme}://{origin.host}:{origin.port}/")
    assert again == origin
    try:
        client = httpx.URL(url)  # what httpx connects to, where it can send the URL
    except (httpx.InvalidURL, ValueError):
        return
    if client.host.isascii() and origin.host.isascii():
        port = client.port or DEFAULT_PORTS[client.scheme]
        assert (normal_host(client.host), port) == (origin.host, origin.port), url


def test_an_ns_the_client_cannot_read_is_a_bad_name() -> None:
    # (ipaddress refuses leading zeros: httpx could not connect where the trust check
    # looked)
    with pytest.raises(BadReference, match="bad ns parameter"):
        resolve("/v2/a/blobs/x?ns=0000.0.0.0:5000", "https://127.0.0.1:5000")
