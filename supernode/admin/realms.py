"""Registry token realms: which may be sent the registry's credentials, and the
parameters of a `WWW-Authenticate: Bearer` challenge (an image preheat's auth, preheat.py).

A registry that answers 401 names the realm to ask a token from; the Basic credentials
go with that request only where the registry cannot have picked the realm to collect
them (`realm_gets_credentials`): https on the registry's own host, the manifest URL's
own origin (which got them already), or a realm the operator trusts (`RealmHost`,
`--preheat-realm`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.urls import unsendable

MAX_CHALLENGE = 4096  # characters of a Bearer challenge's parameters (a registry's: ~100)


@dataclass(frozen=True)
class RealmHost:
    """A token realm the operator trusts with registry credentials (`--preheat-realm
    HOST[:PORT]`: over https; `http://HOST:PORT`: over plain http too)."""

    host: str
    port: int | None = None  # None: any port
    plain_http: bool = False

    @classmethod
    def parse(cls, text: str) -> RealmHost:
        scheme, _, rest = text.strip().rpartition("://")
        if scheme not in ("", "http", "https"):
            raise ValueError(f"{text!r}: a realm host is HOST[:PORT] or http://HOST[:PORT]")
        try:
            parts = urlsplit(f"//{rest}")
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise ValueError(f"{text!r} is not HOST[:PORT]: {exc}") from exc
        if not host or parts.path or parts.query or parts.username is not None:
            raise ValueError(f"{text!r} is not HOST[:PORT]")
        return cls(host.lower(), port, plain_http=scheme == "http")

    def matches(self, scheme: str, host: str, port: int) -> bool:
        return (
            host == self.host
            and self.port in (None, port)
            and (scheme == "https" or (scheme == "http" and self.plain_http))
        )


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def realm_gets_credentials(
    manifest_url: str, realm_url: str, trusted: Iterable[RealmHost] = ()
) -> bool:
    """Whether the registry's credentials may go with a token request to `realm_url`,
    a URL the registry named: only where they cannot leak to a stranger or in clear."""
    try:
        registry, realm = urlsplit(manifest_url), urlsplit(realm_url)
        realm_port = realm.port or _default_port(realm.scheme)
        registry_port = registry.port or _default_port(registry.scheme)
    except ValueError:  # a port that is not a number
        return False
    host = (realm.hostname or "").lower()
    if not host:
        return False
    if any(t.matches(realm.scheme, host, realm_port) for t in trusted):
        return True
    if realm.scheme == "https" and host == (registry.hostname or "").lower():
        return True  # the registry's own host, over TLS
    # The manifest URL's own origin: the first manifest request sent them there already.
    same = (realm.scheme, host, realm_port)
    return same == (registry.scheme, (registry.hostname or "").lower(), registry_port)


def challenge_params(text: str) -> list[tuple[str, str]]:
    """`realm="https://auth",service="registry",scope="repository:a:pull"` → pairs, names
    in lower case, quoted strings unquoted (RFC 9110 5.6.4: `\\"` stands for `"`).

    A registry writes these: a `realm` that is not an http(s) URL with a host a token
    request can be sent to (`http://[::1`, control characters, `/token`) is left out,
    and a challenge longer than MAX_CHALLENGE gives none (its token request's URL, the
    other parameters in its query, could be too long to send)."""
    if len(text) > MAX_CHALLENGE:
        return []
    pairs = []
    for item in _split_quoted(text):
        key, _, value = item.partition("=")
        key, value = key.strip().lower(), _unquoted(value.strip())
        if key != "realm" or not value or unsendable(value) is None:
            pairs.append((key, value))
    return pairs


def _split_quoted(text: str) -> list[str]:
    items, current, quoted, escaped = [], "", False, False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        items.append(current)
    return items


def _unquoted(value: str) -> str:
    """A quoted string's content, its escapes undone; any other value without quotes
    around it (as leniently as ever: `a"`, `"a`)."""
    if not value.startswith('"'):
        return value.strip('"')
    content, escaped = [], False
    for char in value[1:]:
        if escaped or char not in '\\"':
            content.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            break  # the closing quote
    return "".join(content)
