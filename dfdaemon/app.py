"""The daemon: one HTTP port (registry mirror, /metrics), one upload port for other
peers, and the blob cache with the downloads that fill and seed it."""

from __future__ import annotations

import fcntl
import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import trio

from common.connlimit import ConnectionLimit, listen_limit
from common.eviction import GcPolicy
from common.io import RateLimiter
from common.origins import OriginPolicy
from common.tlsfiles import OriginTls, client_contexts, server_context
from dfdaemon.blob import Blob
from dfdaemon.ca import Authority, LeafCache, data_dir_authority, load_authority
from dfdaemon.cache import BlobStore
from dfdaemon.control import SOCKET_NAME, ControlApi
from dfdaemon.downloads import DownloadSettings
from dfdaemon.hijack import Hijacker
from dfdaemon.httpserver import Reply, Request, serve_http
from dfdaemon.metrics import CONTENT_TYPE, Metrics
from dfdaemon.mirror import Mirror
from dfdaemon.proxy import Proxy
from dfdaemon.proxyauth import ProxyAuth, admit, load_htpasswd
from dfdaemon.trust import Trust
from dfdaemon.upstream import Upstream
from dfget.members import REFRESH_PERIOD, Directory
from dfget.options import SharedServer
from dfget.sessions import Sessions
from dfget.sources import PiecePool
from dfget.uploads import PieceServer
from proto.admission import proof_key

log = logging.getLogger(__name__)


@dataclass
class DaemonConfig:
    listen: tuple[str, int] = ("127.0.0.1", 65001)
    supernodes: tuple[str, ...] = ()
    registry: str = "https://registry-1.docker.io"
    data_dir: Path = Path("/var/lib/dfdaemon")
    peer_listen: tuple[str, int] = ("0.0.0.0", 0)
    download_rate: float | None = None
    upload_rate: float | None = None
    upload_slots: int = 8
    plain_http: frozenset[str] = frozenset()  # registries spoken to over http (ns=HOST)
    # Registries besides --registry that the mirror and the control socket take a
    # client's access check from (HOST[:PORT]): any other ns= gets 403.
    allow_registries: tuple[str, ...] = ()
    # Connections held at once on each port: HTTP, the control socket, uploads.
    max_connections: int = 256
    # Networks upstreams may (not) be in, over the built-in denials of link-local and
    # cloud-metadata addresses (common/origins.py): --origin-allow, --origin-deny.
    origin_allow: tuple[str, ...] = ()
    origin_deny: tuple[str, ...] = ()
    back_source: bool = True  # fetch a blob from the upstream when P2P fails
    insecure: bool = False  # do not verify upstream TLS certificates
    token: bytes | None = None
    identities: frozenset[bytes] = frozenset()  # --supernode-identity
    rules: tuple[str, ...] = field(default_factory=tuple)
    control_socket: Path | None = None  # default: DATA_DIR/dfdaemon.sock
    cache: GcPolicy = field(default_factory=GcPolicy)  # the blob cache's quota and TTL
    reseed_delay: float = 5.0  # before announcing a blob again when its seeding ended
    # HTTPS interception: CONNECT hosts to end TLS for (regexes), with leaves signed by
    # the CA in these files (none: one generated in DATA_DIR/ca/).
    hijack: tuple[str, ...] = ()
    ca_cert: Path | None = None
    ca_key: Path | None = None
    # Issue 15's access and TLS settings (dfdaemon/proxyauth.py, common/tlsfiles.py):
    proxy_auth_file: Path | None = None  # htpasswd (bcrypt): the proxy answers 407 without
    proxy_open: bool = False  # the CLI's consent to an open proxy off loopback
    tls_cert: Path | None = None  # with tls_key: the HTTP port speaks https
    tls_key: Path | None = None
    registry_tls: dict[str, OriginTls] = field(default_factory=dict)  # HOST[:PORT] → CA, cert
    supernode_refresh: float = REFRESH_PERIOD  # seconds between asks for the live list


class DataDirInUse(Exception):
    """Another dfdaemon runs on the same data dir."""


def private_data_dir(data_dir: Path) -> None:
    """Create the data dir 0700 (whatever the umask); an existing one loses any read
    or write permission of others (a 0711 one stays: other users' dfget reach the
    control socket in it, as the systemd unit in docs/dfdaemon.md sets it up)."""
    try:
        mode = data_dir.stat().st_mode & 0o7777
    except FileNotFoundError:
        data_dir.mkdir(parents=True, mode=0o700)
        os.chmod(data_dir, 0o700)
        return
    if mode & 0o066:
        os.chmod(data_dir, mode & ~0o066)
        log.info("data dir %s: mode %o made %o", data_dir, mode, mode & ~0o066)


def lock_data_dir(data_dir: Path) -> int:
    """Hold DATA_DIR/lock for the life of the process (closing the fd drops it)."""
    fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise DataDirInUse(f"data dir {data_dir} is in use by another dfdaemon") from exc
    return fd


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.upload = PieceServer(
            slots=config.upload_slots,
            limiter=RateLimiter(config.upload_rate),
            connections=ConnectionLimit(config.max_connections),
        )
        self.trust = Trust(config.registry, config.allow_registries)
        self.http_limit = listen_limit(config.max_connections, config.listen[0])
        self.origin_policy = OriginPolicy(
            config.origin_allow, config.origin_deny, allow_flag="dfdaemon's --origin-allow"
        )
        # ValueError here if a TLS or htpasswd file is unusable (the CLI checked them).
        self.origin_tls = client_contexts(config.registry_tls, insecure=config.insecure)
        self.tls = (
            server_context(config.tls_cert, config.tls_key, what="--tls-cert/--tls-key")
            if config.tls_cert is not None and config.tls_key is not None
            else None
        )
        self.proxy_auth = (
            ProxyAuth(load_htpasswd(config.proxy_auth_file)) if config.proxy_auth_file else None
        )
        self.upstream = Upstream(
            insecure=config.insecure, policy=self.origin_policy, origin_tls=self.origin_tls
        )
        self.directory = Directory(
            config.supernodes, token=config.token, identities=config.identities
        )
        if config.token is not None:
            proof_key(config.token)  # (stretched once, here: not in the first download)
        self.blobs: BlobStore | None = None
        self.metrics: Metrics | None = None
        self.mirror: Mirror | None = None
        self.proxy: Proxy | None = None
        self.control: ControlApi | None = None
        self.leaves: LeafCache | None = None  # with --hijack
        self.socket_path = config.control_socket or config.data_dir / SOCKET_NAME
        self.address = ""
        self.upload_port = 0  # once listening

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        config = self.config
        private_data_dir(config.data_dir)
        lock = lock_data_dir(config.data_dir)
        try:
            authority = self._authority() if config.hijack else None  # before listening
            async with trio.open_nursery() as nursery:
                host, port = config.peer_listen
                upload_port = await nursery.start(self.upload.serve, host, port)
                self.upload_port = upload_port
                if config.supernodes:  # the live list, learned before the first download
                    await nursery.start(self.directory.run, config.supernode_refresh)
                # To the supernodes, for all downloads (which prove the token they have).
                sessions = Sessions(
                    nursery,
                    ask_proof=config.token is not None,
                    ask_identity=bool(config.identities),
                )
                settings = DownloadSettings(
                    supernodes=config.supernodes,
                    server=SharedServer(self.upload, upload_port),
                    limiter=RateLimiter(config.download_rate),
                    back_source=config.back_source,
                    insecure=config.insecure,
                    token=config.token,
                    identities=config.identities,
                    upload_slots=config.upload_slots,
                    gc=config.cache,
                    reseed_delay=config.reseed_delay,
                    origin_policy=self.origin_policy,
                    origin_tls=tuple(self.origin_tls.items()),
                    directory=self.directory if config.supernodes else None,
                    sessions=sessions,
                    pieces=PiecePool(nursery),
                )
                blobs = self.blobs = BlobStore(config.data_dir, settings)
                await nursery.start(blobs.run)
                metrics = self.metrics = Metrics(
                    cache_usage=blobs.usage,
                    active_tasks=lambda: len(blobs.running) + len(blobs.running_urls),
                    uploaded=lambda: self.upload.bytes_uploaded,
                    directory=self.directory.status,
                    sessions=sessions.count,
                )
                blobs.on_result = self._count
                self.mirror = Mirror(
                    registry=config.registry,
                    plain_http=config.plain_http,
                    upstream=self.upstream,
                    blobs=blobs,
                    metrics=metrics,
                    trust=self.trust,
                )
                hijack = None
                if authority is not None:
                    self.leaves = LeafCache(authority)
                    log.info(
                        "intercepting CONNECT to hosts matching %s, CA certificate %s",
                        " or ".join(config.hijack),
                        authority.cert_path,
                    )
                    hijack = Hijacker(
                        patterns=config.hijack,
                        leaves=self.leaves,
                        mirror=self.mirror,
                        upstream=self.upstream,
                        metrics=metrics,
                    )
                self.proxy = Proxy(
                    rules=config.rules,
                    upstream=self.upstream,
                    blobs=blobs,
                    metrics=metrics,
                    hijack=hijack,
                )
                self.control = ControlApi(
                    blobs=blobs,
                    upstream=self.upstream,
                    metrics=metrics,
                    trust=self.trust,
                    limit=ConnectionLimit(config.max_connections),  # a share per local user
                )
                await nursery.start(self.control.serve, self.socket_path)
                host, port = config.listen
                bound = await nursery.start(
                    functools.partial(
                        serve_http,
                        host,
                        port,
                        self.handle,
                        limit=self.http_limit,
                        ssl_context=self.tls,
                    )
                )
                self.address = f"{host}:{bound}"
                log.info(
                    "dfdaemon listening on %s (uploads on port %d, dfget on %s), registry %s, "
                    "supernodes %s",
                    self.address,
                    upload_port,
                    self.socket_path,
                    config.registry,
                    ",".join(config.supernodes) or "none (straight to the upstream)",
                )
                task_status.started((host, bound))
        finally:
            with trio.CancelScope(shield=True):
                await self.upstream.aclose()
            os.close(lock)

    def _authority(self) -> Authority:
        """The CA that signs intercepted hosts' leaves: --ca-cert/--ca-key, or the data
        dir's (generated on the first start). CaError if unusable."""
        config = self.config
        if config.ca_cert is not None and config.ca_key is not None:
            return load_authority(config.ca_cert, config.ca_key)
        return data_dir_authority(config.data_dir)

    def _count(self, blob: Blob) -> None:
        assert self.metrics is not None
        result = blob.result
        if result is None:
            return
        self.metrics.downloaded.labels("cdn").inc(result.from_cdn)
        self.metrics.downloaded.labels("peers").inc(result.from_peers)
        self.metrics.downloaded.labels("upstream").inc(result.from_source)
        resumed = result.sources.get("local")
        self.metrics.resumed.inc(resumed.bytes if resumed is not None else 0)
        if blob.fell_back:
            self.metrics.fallbacks.inc()
        log.info(
            "blob %s: %d bytes: %d from the CDN, %d from peers, %d from the upstream",
            blob.hex[:12],
            result.bytes,
            result.from_cdn,
            result.from_peers,
            result.from_source,
        )

    async def handle(self, request: Request, reply: Reply) -> None:
        assert self.mirror is not None and self.metrics is not None
        assert self.proxy is not None
        if request.method == "CONNECT" or request.target.startswith(("http://", "https://")):
            if self.proxy_auth is not None and not await admit(self.proxy_auth, request, reply):
                self.metrics.requests.labels("proxy_unauthorized").inc()
                return
            await self.proxy.handle(request, reply)  # a forward-proxy request
            return
        try:
            path = urlsplit(request.target).path
        except ValueError:  # "//[...": what urlsplit takes for a bad IPv6 host
            await reply.simple(400, b"bad request target\n", "text/plain")
            return
        if request.method == "GET" and path == "/metrics":
            self.metrics.requests.labels("metrics").inc()
            await reply.simple(200, self.metrics.render(), CONTENT_TYPE)
        elif path == "/v2" or path.startswith("/v2/"):
            try:
                await self.mirror.handle(request, reply)
            finally:
                log.debug(
                    "%s %s %s -> %d (%d bytes)",
                    request.client,
                    request.method,
                    request.target[:300],
                    reply.status,
                    reply.bytes_sent,
                )
        else:
            await reply.simple(404, b"not found: this is a registry mirror (/v2/)\n", "text/plain")
