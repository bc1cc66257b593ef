"""`s3://BUCKET/KEY`: which object, on which endpoint, read with whose credentials.

An S3 object is fetched path-style, `ENDPOINT/BUCKET/KEY`: that URL is what the task
is named by (endpoint, bucket and key; never a signature, a date or a credential), so
two peers with different credentials for one object share one task. Credentials are
found as AWS tools find them, by botocore's chain less the metadata services: the
environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), then
AWS_PROFILE's entry in the shared files (~/.aws/credentials, ~/.aws/config, or
AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE), including its credential_process.
dfget never asks an instance or container metadata service (a download tool must not
stall probing one on every host that is not a cloud VM): on such a VM, export the
credentials or name a profile. None found: the request goes unsigned (public objects).

Region: --s3-region, else AWS_REGION, AWS_DEFAULT_REGION, the profile's, else
us-east-1. Endpoint: --s3-endpoint, else AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else
AWS's own for the region.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.s3sign import object_url
from common.urls import unsendable
from dfget.errors import UsageError
from proto.messages import S3Access

DEFAULT_REGION = "us-east-1"
# botocore's providers that ask the network (instance and container metadata).
_NETWORK_PROVIDERS = ("iam-role", "container-role")


@dataclass(frozen=True)
class S3Object:
    """`s3://bucket/key` (a key ending in `/`, or empty: a prefix, for `-r`)."""

    bucket: str
    key: str


def parse_s3_url(url: str) -> S3Object:
    """The bucket and key of `s3://BUCKET/KEY`; UsageError if it is not one."""
    parts = urlsplit(url)
    bucket, key = parts.netloc, parts.path.removeprefix("/")
    if parts.scheme.lower() != "s3" or parts.query or parts.fragment:
        raise UsageError(f"not an s3://BUCKET/KEY URL: {url[:200]!r}")
    if not 3 <= len(bucket) <= 63 or not all(c.isalnum() or c in "-._" for c in bucket):
        raise UsageError(f"not a bucket name: {bucket[:80]!r}")
    if len(key.encode()) > 1024:
        raise UsageError("an S3 key is at most 1024 bytes")
    return S3Object(bucket, key)


@dataclass(frozen=True)
class S3Target:
    """Where an s3:// URL is read from, and with what."""

    endpoint: str  # scheme://host[:port]
    region: str
    access: S3Access | None  # None: no credentials found, requests go unsigned

    def url_of(self, bucket: str, key: str) -> str:
        """The object's path-style URL: what is fetched, and what names the task."""
        return object_url(self.endpoint, bucket, key)


def check_endpoint(endpoint: str) -> str:
    """`endpoint` as `scheme://host[:port]`; UsageError if it is not an http(s) URL."""
    stripped = endpoint.strip()
    if unsendable(stripped) is not None:  # (`http://[::1` too: then urlsplit reads it)
        raise UsageError(f"--s3-endpoint: want an http(s) URL, not {endpoint[:200]!r}")
    parts = urlsplit(stripped)
    if parts.path.strip("/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise UsageError(f"--s3-endpoint: want scheme://host[:port] only, not {endpoint[:200]!r}")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def resolve(endpoint: str | None = None, region: str | None = None) -> S3Target:
    """The endpoint, region and credentials for this user, as AWS tools find them
    (see the module's doc); UsageError for a bad endpoint or a broken profile."""
    import botocore.exceptions
    import botocore.session

    profile = os.environ.get("AWS_PROFILE") or None
    session = botocore.session.Session(profile=profile)
    try:
        region = (
            region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or session.get_scoped_config().get("region")
            or DEFAULT_REGION
        )
        resolver = session.get_component("credential_provider")
        for name in _NETWORK_PROVIDERS:
            resolver.remove(name)
        found = resolver.load_credentials()
    except botocore.exceptions.BotoCoreError as exc:  # a named profile that is not there...
        raise UsageError(f"AWS credentials: {exc}") from exc
    given = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    endpoint = check_endpoint(given) if given else f"https://s3.{region}.amazonaws.com"
    access = None
    if found is not None:
        frozen = found.get_frozen_credentials()
        if frozen.access_key and frozen.secret_key:
            access = S3Access(
                endpoint, region, frozen.access_key, frozen.secret_key, frozen.token or ""
            )
            try:
                access.check()
            except ValueError as exc:
                raise UsageError(str(exc)) from exc
    return S3Target(endpoint, region, access)


def object_request(
    url: str, endpoint: str | None = None, region: str | None = None
) -> tuple[str, S3Access | None]:
    """For `s3://BUCKET/KEY`: the object's path-style URL and the credentials to sign
    with (None: unsigned); UsageError for a bad URL, endpoint or profile."""
    wanted = parse_s3_url(url)
    if not wanted.key or wanted.key.endswith("/"):
        raise UsageError(f"{url[:200]}: names a prefix, not an object (use -r for a prefix)")
    target = resolve(endpoint, region)
    return target.url_of(wanted.bucket, wanted.key), target.access
