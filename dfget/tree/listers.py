"""Which lister reads the tree at an http(s) URL. (An `s3://` prefix is listed by
`dfget.s3list`, chosen in `dfget.tree.command`: it needs the S3 flags, and its files
are fetched with the lister's credentials.)"""

from __future__ import annotations

from urllib.parse import urlsplit

from dfget.engine import DownloadRequest
from dfget.errors import UsageError
from dfget.tree.entries import Lister


def lister_for(request: DownloadRequest) -> Lister:
    """The lister of the tree at `request.url` (a folder), with the request's headers
    and TLS choice."""
    scheme = urlsplit(request.url).scheme.lower()
    if scheme in ("http", "https"):
        from dfget.tree.httpindex import HttpIndexLister

        return HttpIndexLister(request.url, headers=request.headers, insecure=request.insecure)
    raise UsageError(f"-r cannot list {scheme or 'a URL without a scheme'}:// trees")


__all__ = ["lister_for"]
