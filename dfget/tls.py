"""The TLS context dfget's own requests to origins use (back-to-source, index pages, S3
listings): made once a process. Loading the CA bundle costs 30-45 ms, more than a
small file's request, and httpx would make one for every client (`dfget -r` makes many);
the verifying context loads it only when its first TLS connection starts, so a run that
speaks only plain HTTP never pays for it."""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any

_CONTEXTS: dict[bool, ssl.SSLContext] = {}


class _CasOnFirstUse(ssl.SSLContext):
    """A verifying client context (certificates and host names checked, as
    `ssl.create_default_context` makes it) whose CAs are loaded as httpx would load
    them (SSL_CERT_FILE, SSL_CERT_DIR, else certifi's bundle) just before its first
    connection is wrapped. Until then it has no CA: it could verify nothing."""

    _lock = threading.Lock()
    _loaded = False

    def _load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            if os.environ.get("SSL_CERT_FILE"):
                self.load_verify_locations(cafile=os.environ["SSL_CERT_FILE"])
            elif os.environ.get("SSL_CERT_DIR"):
                self.load_verify_locations(capath=os.environ["SSL_CERT_DIR"])
            else:
                import certifi

                self.load_verify_locations(cafile=certifi.where())
            self._loaded = True

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load()
        return super().wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load()
        return super().wrap_socket(*args, **kwargs)


def tls_context(insecure: bool) -> ssl.SSLContext:
    """The context for origins: verifying (SSL_CERT_FILE, SSL_CERT_DIR or certifi's
    CAs, as httpx reads them), or not at all with `insecure` (--insecure)."""
    if insecure not in _CONTEXTS:
        if insecure:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = _CasOnFirstUse(ssl.PROTOCOL_TLS_CLIENT)  # hostnames and certs checked
        _CONTEXTS[insecure] = context
    return _CONTEXTS[insecure]


__all__ = ["tls_context"]
