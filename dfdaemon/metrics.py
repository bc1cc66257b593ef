"""The daemon's Prometheus metrics (`GET /metrics`), one registry per daemon."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(
        self,
        *,
        cache_usage: Callable[[], tuple[int, int]],
        active_tasks: Callable[[], int],
        uploaded: Callable[[], int],
        directory: Callable[[], dict[str, object]] | None = None,
        sessions: Callable[[], int] = lambda: 0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "dfdaemon_requests",
            "Requests answered, by kind: blob (P2P), passthrough (sent to the upstream as "
            "is), proxy_p2p, proxy_passthrough, connect, metrics, bad_request, untrusted (a "
            "registry the daemon does not trust: 403), dfget (on the control socket), listing "
            "(a tree listed on it), hijack (a "
            "CONNECT intercepted: --hijack), hijack_passthrough (a request in one, outside /v2/), "
            "proxy_unauthorized (a proxy request without valid credentials: 407, or 503 "
            "when too many checks wait)",
            ["kind"],
            registry=self.registry,
        )
        self.downloaded = Counter(
            "dfdaemon_downloaded_bytes",
            "Blob bytes downloaded, by source: cdn (the supernode), peers (other hosts), "
            "upstream (straight from the registry or origin, after P2P failed or without "
            "a supernode)",
            ["source"],
            registry=self.registry,
        )
        self.resumed = Counter(
            "dfdaemon_resumed_bytes",
            "Blob bytes a download took from its partial file kept across a restart "
            "(each piece checked against its digest again), not downloaded",
            registry=self.registry,
        )
        self.served = Counter(
            "dfdaemon_served_bytes",
            "Body bytes sent to clients, by kind (blob, passthrough, proxy, dfget)",
            ["kind"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "dfdaemon_fallbacks",
            "Blobs fetched from the upstream by the daemon because P2P failed",
            registry=self.registry,
        )
        self.failures = Counter(
            "dfdaemon_blob_failures",
            "Blob requests not served from P2P, by reason: denied (the upstream refused this "
            "client), upstream (unreachable for the access check), download (P2P and the "
            "fallback failed), digest_mismatch, length_mismatch (the upstream announced "
            "another length: that answer failed)",
            ["reason"],
            registry=self.registry,
        )
        self.hijack_failures = Counter(
            "dfdaemon_hijack_failures",
            "CONNECTs to intercept that came to nothing, by reason: busy (too many at once: "
            "503), minting (a new host past the minting budget: 503), "
            "handshake (the client's TLS failed, as when it does not trust the CA), "
            "timeout (no TLS handshake in time)",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(_CacheCollector(cache_usage))
        Gauge(
            "dfdaemon_active_tasks",
            "Downloads running or seeding",
            registry=self.registry,
        ).set_function(active_tasks)
        Gauge(
            "dfdaemon_supernode_sessions",
            "Control sessions open to supernodes, shared by the downloads and seeded blobs",
            registry=self.registry,
        ).set_function(sessions)
        Gauge(
            "dfdaemon_uploaded_bytes",
            "Sealed piece bytes uploaded to other peers since the start",
            registry=self.registry,
        ).set_function(uploaded)
        if directory is not None:
            self.registry.register(_DirectoryCollector(directory))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CacheCollector(Collector):
    """The cache's two gauges from one look at the cache per scrape."""

    def __init__(self, usage: Callable[[], tuple[int, int]]) -> None:
        self.usage = usage

    def collect(self) -> Iterator[GaugeMetricFamily]:
        blobs, size = self.usage()
        yield GaugeMetricFamily(
            "dfdaemon_cache_bytes", "Bytes of complete blobs in the cache", value=size
        )
        yield GaugeMetricFamily("dfdaemon_cache_blobs", "Complete blobs in the cache", value=blobs)


class _DirectoryCollector(Collector):
    """The live supernodes as the daemon knows them (`dfget.members.Directory.status`)."""

    def __init__(self, status: Callable[[], dict[str, object]]) -> None:
        self.status = status

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = self.status()
        live = status["supernodes"]
        backed_off = status["backed_off"]
        assert isinstance(live, list) and isinstance(backed_off, list)
        yield GaugeMetricFamily(
            "dfdaemon_supernodes",
            "Live supernodes the downloads rank (learned from a member of the cluster, or "
            "the --supernode list)",
            value=len(live),
        )
        yield GaugeMetricFamily(
            "dfdaemon_supernodes_backed_off",
            "Supernodes that failed lately, tried last until their back-off passes",
            value=len(backed_off),
        )
        members = GaugeMetricFamily(
            "dfdaemon_supernode",
            "Each live supernode (peer address): 1, or 0 while it is backed off",
            labels=["peer"],
        )
        for address in live:
            members.add_metric([str(address)], 0 if address in backed_off else 1)
        yield members
