"""Proxy authentication (`--proxy-auth-file`): the forward proxy and CONNECT answer
407 to a client without valid `Proxy-Authorization: Basic` credentials, checked
against an htpasswd file of bcrypt entries (`htpasswd -B`).

bcrypt is slow on purpose, so what a stranger can make the daemon spend is bounded:

- a check runs in a worker thread, CHECKS_AT_ONCE at a time; past MAX_WAITING checks
  waiting for one, a new one is answered 503 at once, without a check;
- a header that passed is remembered (by its SHA-256, never the password) for
  GOOD_TTL, one that failed for BAD_TTL, in two bounded LRU tables (a flood of wrong
  passwords cannot push out the good ones): a client costs one bcrypt per
  credentials, not per request, and the same wrong password again costs nothing;
- the same credentials asked at once (parallel connections) share one check;
- a wrong password is answered 407 and the connection closed, so the next guess
  costs a new connection, under the port's per-address cap;
- an unknown user, a malformed header or one longer than MAX_HEADER is refused
  without a check (user names are not secret here: Basic credentials cross the
  network in the clear unless the listener has TLS).

Mirror requests (`/v2/...` on the daemon's own port) and `/metrics` are not proxy
requests and need no credentials: docker and containerd cannot send them to a mirror.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import ipaddress
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import trio

from dfdaemon.httpserver import Reply, Request

REALM = "dfdaemon"
CHALLENGE = ("proxy-authenticate", f'Basic realm="{REALM}"')
MAX_FILE = 1 << 20  # an htpasswd file larger than this is refused at start
MAX_HEADER = 1024  # a longer Proxy-Authorization is refused without a check
MAX_COST = 16  # bcrypt cost factor: 2**16 rounds is ~4 s a check; more is refused
CHECKS_AT_ONCE = 2  # bcrypt checks running at once (threads)
MAX_WAITING = 64  # checks waiting for a thread; past it: 503, no check
GOOD_TTL = 300.0  # seconds credentials that passed are remembered
BAD_TTL = 60.0  # seconds credentials that failed are remembered
CACHE_SIZE = 1024  # entries in each of the two tables
BCRYPT_MAX_PASSWORD = 72  # bcrypt reads this many bytes; Apache's htpasswd as well

# Cost, then salt (22 characters of bcrypt's base64, the last one holding 2 bits: one of
# `.Oeu`; bcrypt refuses any other at every check) and hash (31).
_ENTRY = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{21}[.Oeu][./A-Za-z0-9]{31}$")


def load_htpasswd(path: Path) -> dict[str, bytes]:
    """User → bcrypt hash from an htpasswd file (blank lines and `#` comments
    skipped); ValueError naming the line if it is not one of bcrypt entries."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read --proxy-auth-file {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_FILE:
        raise ValueError(f"--proxy-auth-file {path}: larger than {MAX_FILE} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"--proxy-auth-file {path}: not UTF-8 text") from exc
    users: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"--proxy-auth-file {path} line {number}"
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise ValueError(f"{where}: want USER:HASH (as htpasswd -B writes)")
        entry = _ENTRY.match(hashed)
        if entry is None:
            raise ValueError(
                f"{where}: user {user!r}: only bcrypt entries ($2y$, $2b$) are supported "
                "(make them with htpasswd -B)"
            )
        if not 4 <= int(entry[1]) <= MAX_COST:
            raise ValueError(
                f"{where}: user {user!r}: bcrypt cost {entry[1]} (want 4 to {MAX_COST})"
            )
        if user in users:
            raise ValueError(f"{where}: user {user!r} appears twice")
        users[user] = hashed.encode("ascii")
    if not users:
        raise ValueError(f"--proxy-auth-file {path}: no users")
    return users


class Verdict(enum.Enum):
    ADMITTED = "admitted"
    REFUSED = "refused"  # no, malformed or wrong credentials: 407
    BUSY = "busy"  # too many checks waiting: 503, nothing checked


@dataclass(frozen=True)
class AuthStatistics:
    checks: int  # bcrypt checks run so far
    running: int  # checks in a thread now
    waiting: int  # checks waiting for a thread
    remembered_good: int
    remembered_bad: int


class _Table:
    """A bounded LRU table of header digests with an expiry each."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size, self.ttl = size, ttl
        self.entries: OrderedDict[bytes, float] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        expires = self.entries.get(key)
        if expires is None:
            return False
        if expires <= trio.current_time():
            del self.entries[key]
            return False
        self.entries.move_to_end(key)
        return True

    def add(self, key: bytes) -> None:
        self.entries[key] = trio.current_time() + self.ttl
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


class ProxyAuth:
    """Checks `Proxy-Authorization` headers against `users` (user → bcrypt hash)."""

    def __init__(
        self,
        users: dict[str, bytes],
        *,
        checks_at_once: int = CHECKS_AT_ONCE,
        max_waiting: int = MAX_WAITING,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self.users = users
        self.max_waiting = max_waiting
        self._limiter = trio.CapacityLimiter(checks_at_once)
        self._good = _Table(cache_size, GOOD_TTL)
        self._bad = _Table(cache_size, BAD_TTL)
        self._running: dict[bytes, trio.Event] = {}
        self._checks = 0

    def statistics(self) -> AuthStatistics:
        limiter = self._limiter.statistics()
        return AuthStatistics(
            checks=self._checks,
            running=limiter.borrowed_tokens,
            waiting=limiter.tasks_waiting,
            remembered_good=len(self._good.entries),
            remembered_bad=len(self._bad.entries),
        )

    async def check(self, header: str | None) -> Verdict:
        """Whether `header` (a Proxy-Authorization value) carries valid credentials."""
        if header is None or len(header) > MAX_HEADER:
            return Verdict.REFUSED
        key = hashlib.sha256(header.encode("latin-1")).digest()
        while True:
            if key in self._good:
                return Verdict.ADMITTED
            if key in self._bad:
                return Verdict.REFUSED
            running = self._running.get(key)
            if running is None:
                break
            await running.wait()  # the same credentials, being checked: share the answer
        credentials = _credentials(header)
        if credentials is None or credentials[0] not in self.users:
            self._bad.add(key)
            return Verdict.REFUSED
        if self._limiter.statistics().tasks_waiting >= self.max_waiting:
            return Verdict.BUSY
        user, password = credentials
        done = self._running[key] = trio.Event()
        try:
            self._checks += 1
            ok = await trio.to_thread.run_sync(
                bcrypt.checkpw,
                password[:BCRYPT_MAX_PASSWORD],
                self.users[user],
                limiter=self._limiter,
            )
            (self._good if ok else self._bad).add(key)
        finally:
            del self._running[key]
            done.set()
        return Verdict.ADMITTED if ok else Verdict.REFUSED


def _credentials(header: str) -> tuple[str, bytes] | None:
    """(user, password) of `Basic BASE64(user:password)`; None if malformed."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


async def admit(auth: ProxyAuth, request: Request, reply: Reply) -> bool:
    """True if `request` may use the proxy; else it has been answered (407, or 503
    when too many checks wait) and the caller stops there."""
    verdict = await auth.check(request.header("proxy-authorization"))
    if verdict is Verdict.ADMITTED:
        return True
    if verdict is Verdict.BUSY:
        headers: tuple[tuple[str, str], ...] = (("retry-after", "1"), ("connection", "close"))
        await reply.simple(503, b"proxy authentication busy: try again\n", "text/plain", headers)
        return False
    headers = (CHALLENGE,)
    if request.header("proxy-authorization") is not None:
        headers += (("connection", "close"),)  # a wrong guess: the next one needs a new connection
    await reply.simple(407, b"proxy authentication required\n", "text/plain", headers)
    return False


def check_open_proxy(listen_host: str, auth_file: Path | None, proxy_open: bool) -> None:
    """ValueError if the daemon would be an open proxy to more than this host: on a
    non-loopback address without --proxy-auth-file, unless --proxy-open says so."""
    if auth_file is not None or proxy_open or _loopback(listen_host):
        return
    raise ValueError(
        f"--listen {listen_host} is not a loopback address: anyone who reaches it could "
        "use the daemon as an open proxy (forward requests and CONNECT). Give "
        "--proxy-auth-file FILE (htpasswd -B), or --proxy-open if that is what you want, "
        "or listen on 127.0.0.1"
    )


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything
