"""URL helpers shared by every HTTP client of the project: what logs may show, and
credentials in the URL turned into the header they stand for."""

from __future__ import annotations

from base64 import b64encode
from urllib.parse import unquote, urlsplit, urlunsplit

Headers = tuple[tuple[str, str], ...]


def display_url(url: str) -> str:
    """The URL as logs and error messages may show it: no user info, no query (it may
    hold signatures). Never raises, whatever the URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:  # e.g. a port that is not a number
        return "<unparsable URL>"
    query = "…" if parts.query else ""
    if not parts.netloc and "@" in parts.path:
        # No authority as urlsplit reads it, yet lenient parsers (browsers, curl, the
        # WHATWG URL standard) find one in `http:u:pw@h/x`, `http:////u:pw@h/x` or
        # `u:pw@h/x`: whatever comes before an @ may be user info (the "scheme" too).
        return "…@" + parts.path.rpartition("@")[2] + (f"?{query}" if query else "")
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def move_credentials(url: str, headers: Headers) -> tuple[str, Headers]:
    """`http://user:pass@host/x` → (`http://host/x`, headers + Basic auth).

    The user info is always dropped from the URL; it becomes an Authorization header
    unless one is given already (an explicit header wins, as with curl). Every client
    then sends the same thing, whichever HTTP library carries the request. Raises
    ValueError for a URL that does not parse.
    """
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, headers
    netloc = parts.netloc.rpartition("@")[2]
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    if any(name.lower() == "authorization" for name, _ in headers):
        return bare, headers
    credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    token = b64encode(credentials.encode()).decode()
    return bare, (*headers, ("Authorization", f"Basic {token}"))


def without_user_info(url: str) -> str:
    """`url` without its user info (`http://u:pw@h/x` → `http://h/x`), the rest as it is:
    what may be written beside the files it named (a manifest, `--json`). Never raises
    (a URL that does not parse: as logs show it)."""
    try:
        return move_credentials(url, ())[0]
    except ValueError:
        return display_url(url)


def unsendable(url: str) -> str | None:
    """Why an HTTP client cannot send a request to `url`, or None if it can: not http(s)
    with a host, or httpx's reason (a host such as `127.0.0.000` or `xn--a`, a port that
    is no number). The one check of it wherever a URL is kept or about to be used."""
    import httpx  # (only where a request is about to be made)

    try:
        parsed = httpx.URL(url)
        host = parsed.host  # (an `xn--` name is decoded only here)
        # What httpx takes and the standard library does not: a port past 65535, an
        # unclosed `[` (httpx reads `http://[x/` as the host `[x`).
        port = urlsplit(url).port
    except (httpx.InvalidURL, ValueError) as exc:  # (idna's and ipaddress' ValueErrors)
        return str(exc)
    if port == 0:
        return "port 0 (no connection goes there)"
    if parsed.scheme not in ("http", "https") or not host:
        return "not an http(s) URL with a host"
    return None
