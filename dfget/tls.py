"""The TLS context dfget's own requests to origins use (back-to-source, index pages, S3
listings): made once a process. Loading the CA bundle costs about 30 ms, more than a
small file's request, and httpx would make one for every client (`dfget -r` makes many)."""

from __future__ import annotations

import ssl

import httpx

_CONTEXTS: dict[bool, ssl.SSLContext] = {}


def tls_context(insecure: bool) -> ssl.SSLContext:
    """The context for origins: verifying (system or SSL_CERT_FILE CAs, as httpx reads
    them), or not at all with `insecure` (--insecure)."""
    if insecure not in _CONTEXTS:
        _CONTEXTS[insecure] = httpx.create_ssl_context(verify=not insecure)
    return _CONTEXTS[insecure]


__all__ = ["tls_context"]
