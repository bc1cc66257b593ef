"""Preheat: warm the CDN before a roll-out (`POST /api/v1/preheats`).

A file preheat fetches one URL into the CDN, as a first `Register` would. An image
preheat reads a manifest URL (`https://registry/v2/<name>/manifests/<ref>`), resolves
an index to one platform's manifest (linux/amd64 unless told otherwise), then fetches
the config and every layer into the CDN as digest-named tasks, the tasks dfdaemon's
mirror asks for. Registry auth: the request's own headers (for example Basic
credentials) are sent; a `401` with a Bearer challenge is answered by fetching a token
from the challenge's realm and retrying. The Basic credentials go with the token
request only to a realm the registry cannot have picked to collect them (realms.py):
https on the registry's own host, the manifest URL's own origin (which got them
already), or a realm the operator named (`--preheat-realm`).
Elsewhere the token is asked for anonymously (public images still work).

Every connection goes through the supernode's origin policy (`common.io.origins`),
redirects included, and a manifest is read only up to `MAX_MANIFEST`.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard
from urllib.parse import urlsplit

import httpx
import trio

from common.io.capped import BodyTooLarge, EncodedBody, identity_headers, read_capped
from common.io.origins import checked_client
from common.origins import AddressDenied, OriginPolicy
from common.urls import display_url, move_credentials
from supernode.admin.realms import RealmHost, challenge_params, realm_gets_credentials
from supernode.cdn.task import CdnTask, TaskSpec
from supernode.errors import SupernodeError

log = logging.getLogger(__name__)

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = MANIFEST_TYPES[0], MANIFEST_TYPES[2]
MAX_MANIFEST = 4 * 1024 * 1024
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
MAX_TOKEN_ANSWER = 1024 * 1024  # a token server's JSON (JWTs are a few KiB)
KEEP = 1000  # preheats remembered: past this the oldest finished go, never a live one
MAX_RUNNING = 4  # preheats fetching at once; the others wait in the queue, "pending"


class PreheatError(Exception):
    """The preheat cannot go on (its message is shown in its state)."""


@dataclass
class Preheat:
    id: str
    type: str
    url: str
    headers: tuple[tuple[str, str], ...]
    tag: str = ""
    filter: tuple[str, ...] = ()
    platform: str = "linux/amd64"
    state: str = "pending"  # running, succeeded, failed
    error: str | None = None
    created: float = field(default_factory=time.time)
    tasks: list[CdnTask] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "url": display_url(self.url),
            "state": self.state,
            "error": self.error,
            "tasks": [
                {
                    "id": task.task_id,
                    "url": display_url(task.spec.url),
                    "state": str(task.state),
                    "pieces_ready": task.ready,
                    "piece_count": task.piece_count,
                    "length": task.length,
                }
                for task in self.tasks
            ],
        }


@dataclass
class _Answer:
    status: int
    headers: httpx.Headers
    body: bytes


class TaskOpener(Protocol):
    """Where a preheat's tasks go: the CDN (`Cdn.open_task`, as a first Register)."""

    async def open_task(self, spec: TaskSpec) -> CdnTask: ...


class Preheats:
    def __init__(
        self,
        cdn: TaskOpener,
        *,
        insecure: bool = False,
        policy: OriginPolicy | None = None,
        realms: Iterable[RealmHost] = (),
        origin_tls: Mapping[str, ssl.SSLContext] | None = None,
    ) -> None:
        self.cdn = cdn
        self.insecure = insecure
        self.origin_tls = origin_tls
        self.policy = policy if policy is not None else OriginPolicy()
        self.realms = tuple(realms)
        self.all: dict[str, Preheat] = {}
        self._send, self._recv = trio.open_memory_channel[Preheat](1024)
        self._slots = trio.CapacityLimiter(MAX_RUNNING)

    def submit(
        self, kind: str, url: str, headers: tuple[tuple[str, str], ...], **extra: Any
    ) -> Preheat:
        preheat = Preheat(secrets.token_hex(16), kind, url, headers, **extra)
        self._send.send_nowait(preheat)  # WouldBlock past 1024 waiting: the caller says 503
        self.all[preheat.id] = preheat
        if len(self.all) > KEEP:  # the oldest finished ones go; waiting and running stay
            ended = [id_ for id_, p in self.all.items() if p.state in ("succeeded", "failed")]
            for id_ in ended[: len(self.all) - KEEP]:
                del self.all[id_]
        return preheat

    def enqueue(self, preheat: Preheat) -> None:
        """Queue a preheat made elsewhere (a cluster job this member runs: jobs.py); it
        is not in `all`, which holds the ones accepted here."""
        self._send.send_nowait(preheat)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with (
            checked_client(
                self.policy, verify=not self.insecure, origin_tls=self.origin_tls, timeout=30.0
            ) as client,
            trio.open_nursery() as nursery,
        ):
            task_status.started()
            async for preheat in self._recv:
                # This preheat waits here for a slot, the ones behind it in the queue,
                # "pending" all; the queue's bound still turns away the 1025th (a 503).
                # Each run borrows its own (a cluster job taken back by this member may
                # run again, under its id, while its first run goes on).
                run = object()
                await self._slots.acquire_on_behalf_of(run)
                nursery.start_soon(self._run, client, preheat, run)

    async def _run(self, client: httpx.AsyncClient, preheat: Preheat, run: object) -> None:
        preheat.state = "running"
        try:
            if preheat.type == "file":
                specs = [
                    TaskSpec.from_request(
                        preheat.url, preheat.headers, tag=preheat.tag, filter_keys=preheat.filter
                    )
                ]
            else:
                specs = await self._image_specs(client, preheat)
            for spec in specs:
                preheat.tasks.append(await self.cdn.open_task(spec))
            for task in preheat.tasks:
                while not task.settled:
                    await task.wait_changed()
                if task.failed:
                    raise PreheatError(f"{display_url(task.spec.url)}: {task.error}")
            preheat.state = "succeeded"
            log.info("preheat %s: %d tasks in the CDN", preheat.id[:8], len(preheat.tasks))
        except (PreheatError, SupernodeError, ValueError) as exc:
            preheat.state, preheat.error = "failed", str(exc)
            log.warning("preheat %s failed: %s", preheat.id[:8], exc)
        except Exception:  # a bug of ours: this preheat fails, the supernode goes on
            log.exception("preheat %s: internal error", preheat.id[:8])
            preheat.state, preheat.error = "failed", "internal error"
        finally:
            self._slots.release_on_behalf_of(run)

    async def _image_specs(self, client: httpx.AsyncClient, preheat: Preheat) -> list[TaskSpec]:
        # user:pass@ in the URL becomes Basic auth, as for every other fetch: left in the
        # URL, httpx would put it back over the Bearer token the registry hands out.
        manifest_url, given = move_credentials(preheat.url, preheat.headers)
        parts = urlsplit(manifest_url)
        path = parts.path
        if "/v2/" not in path or "/manifests/" not in path:
            raise PreheatError("an image preheat wants https://REGISTRY/v2/NAME/manifests/REF")
        name = path.split("/v2/", 1)[1].rsplit("/manifests/", 1)[0]
        base = f"{parts.scheme}://{parts.netloc}"
        manifest, headers = await self._manifest(client, manifest_url, list(given))
        if is_index(manifest):
            digest = pick(manifest, preheat.platform)
            url = f"{base}/v2/{name}/manifests/{digest}"
            manifest, headers = await self._manifest(client, url, headers)
            if is_index(manifest):  # (an index in an index: not an image)
                raise PreheatError(f"the manifest for {preheat.platform} is an index")
        return [
            TaskSpec.from_request(f"{base}/v2/{name}/blobs/{digest}", tuple(headers), digest=digest)
            for digest in blob_digests(manifest)
        ]

    async def _manifest(
        self, client: httpx.AsyncClient, url: str, headers: list[tuple[str, str]]
    ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """The manifest at `url`, and the headers that got it (with a Bearer token if the
        registry asked for one)."""
        asked = [*headers, *(("accept", t) for t in MANIFEST_TYPES)]
        response = await _get(client, url, asked, cap=MAX_MANIFEST, what="manifest")
        withheld = ""
        if response.status == 401:
            token, withheld = await self._bearer_token(client, url, response, headers)
            if token is not None:
                headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
                headers.append(("authorization", f"Bearer {token}"))
                response = await _get(
                    client,
                    url,
                    [*headers, *(("accept", t) for t in MANIFEST_TYPES)],
                    cap=MAX_MANIFEST,
                    what="manifest",
                )
        if response.status != 200:
            raise PreheatError(
                f"registry answered {response.status} for {display_url(url)}{withheld}"
            )
        try:
            manifest = json.loads(response.body)
        except (ValueError, RecursionError) as exc:  # (nested past the parser: "[" * 10**5)
            raise PreheatError(f"manifest is not JSON: {exc}") from exc
        if not isinstance(manifest, dict):
            raise PreheatError("manifest is not a JSON object")
        return manifest, headers

    async def _bearer_token(
        self,
        client: httpx.AsyncClient,
        url: str,
        response: _Answer,
        headers: list[tuple[str, str]],
    ) -> tuple[str | None, str]:
        """The token a `WWW-Authenticate: Bearer realm=...,service=...,scope=...` asks
        for, and a note for the error message if the credentials were withheld."""
        challenge = response.headers.get("www-authenticate", "")
        scheme, rest = [*challenge.split(None, 1), "", ""][:2]  # (a space or a tab after it)
        if scheme.lower() != "bearer":
            return None, ""
        params = dict(challenge_params(rest))
        realm = params.pop("realm", None)
        if not realm:
            return None, ""
        basic = [
            (k, v)
            for k, v in headers
            if k.lower() == "authorization" and v.lower().startswith("basic ")
        ]
        withheld = ""
        if basic and not realm_gets_credentials(url, realm, self.realms):
            withheld = (
                f" (the credentials were not sent to the token realm {display_url(realm)}: "
                "it is not https on the registry's own host; the supernode's "
                "--preheat-realm HOST[:PORT] trusts a realm)"
            )
            log.warning("preheat: credentials withheld from token realm %s", display_url(realm))
            basic = []
        # The parameters join any query the realm has; a fragment goes (it is not sent).
        token_url = str(httpx.URL(realm).copy_with(fragment=None).copy_merge_params(params))
        answer = await _get(client, token_url, basic, cap=MAX_TOKEN_ANSWER, what="token")
        if answer.status != 200:
            raise PreheatError(f"token server answered {answer.status}{withheld}")
        try:
            data = json.loads(answer.body)
        except (ValueError, RecursionError) as exc:
            raise PreheatError(f"token server sent no JSON: {exc}") from exc
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        return (token if isinstance(token, str) else None), withheld


async def _get(
    client: httpx.AsyncClient,
    url: str,
    headers: list[tuple[str, str]],
    *,
    cap: int,
    what: str,
) -> _Answer:
    """GET `url` (redirects followed); the body of a 200, read only up to `cap` bytes
    (PreheatError past it: a registry cannot make us hold more)."""
    try:
        request = client.build_request("GET", url, headers=identity_headers(headers))
    except (httpx.InvalidURL, ValueError) as exc:  # (a header no client sends, an IDNA host)
        raise PreheatError(f"cannot request {display_url(url)}: {exc}") from exc
    try:
        answer = await client.send(request, stream=True, follow_redirects=True)
        try:
            body = b""
            if answer.status_code == 200:
                body = await read_capped(answer, cap)
            return _Answer(answer.status_code, answer.headers, body)
        finally:
            await answer.aclose()
    except BodyTooLarge as exc:
        raise PreheatError(f"{what} too large: {exc} (limit {cap})") from exc
    except EncodedBody as exc:
        raise PreheatError(f"{what} at {display_url(url)}: {exc}") from exc
    except AddressDenied as exc:
        raise PreheatError(f"refused to fetch {display_url(url)}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise PreheatError(f"cannot reach {display_url(url)}: {exc}") from exc
    except (httpx.InvalidURL, ValueError) as exc:  # a redirect's (IDNA: ValueErrors)
        raise PreheatError(
            f"{display_url(url)} redirected to a URL no client can send: {exc}"
        ) from exc


def is_index(manifest: Mapping[str, Any]) -> bool:
    """Whether a registry's manifest is an image index (a manifest list)."""
    return manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest


def pick(index: Mapping[str, Any], platform: str) -> str:
    """The digest of `platform`'s manifest (`OS/ARCH[/VARIANT]`) in an image index;
    PreheatError if it names none (entries of any other shape are passed over)."""
    os_name, _, rest = platform.partition("/")
    arch, _, variant = rest.partition("/")
    entries = index.get("manifests")
    for entry in entries if isinstance(entries, list) else ():
        p = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(p, dict):
            continue
        same = p.get("os") == os_name and p.get("architecture") == arch
        digest = entry.get("digest")
        if same and (not variant or p.get("variant") == variant) and _is_sha256(digest):
            return digest
    raise PreheatError(f"the index has no manifest (with a sha256 digest) for {platform}")


def blob_digests(manifest: Mapping[str, Any]) -> list[str]:
    """The digests of an image manifest's config and layers, in that order (what an
    image preheat fetches); PreheatError if any is missing or not `sha256:HEX`."""
    layers = manifest.get("layers", [])
    if not isinstance(layers, list):
        raise PreheatError(f"the manifest's layers are not a list: {layers!r:.200}")
    digests = []
    for blob in [manifest.get("config"), *layers]:
        if not isinstance(blob, dict):
            raise PreheatError(f"a manifest entry that is not an object: {blob!r:.200}")
        digests.append(_sha256(blob.get("digest"), "a manifest entry"))
    return digests


def _sha256(digest: object, what: str) -> str:
    if not _is_sha256(digest):
        raise PreheatError(f"{what} without a sha256 digest: {digest!r:.200}")
    return digest


def _is_sha256(digest: object) -> TypeGuard[str]:
    return isinstance(digest, str) and _SHA256.fullmatch(digest) is not None
