"""bench/mirror_lab.py's pure parts: the daemons' byte sources read from what a daemon's
/metrics really renders, and the floors of a round."""

from __future__ import annotations

from bench.mirror_lab import CORES, Round, downloaded, floors
from dfdaemon.metrics import Metrics

MiB = 1 << 20


def test_downloaded_reads_each_source_from_the_daemons_metrics() -> None:
    metrics = Metrics(cache_usage=lambda: (0, 0), active_tasks=lambda: 0, uploaded=lambda: 0)
    metrics.downloaded.labels(source="cdn").inc(3 * MiB)
    metrics.downloaded.labels(source="peers").inc(5 * MiB + 1)
    text = metrics.render().decode()
    assert downloaded(text) == {"cdn": 3 * MiB, "peers": 5 * MiB + 1, "upstream": 0.0}


def test_downloaded_is_zero_for_a_daemon_that_fetched_nothing() -> None:
    metrics = Metrics(cache_usage=lambda: (0, 0), active_tasks=lambda: 0, uploaded=lambda: 0)
    assert downloaded(metrics.render().decode()) == dict.fromkeys(("cdn", "peers", "upstream"), 0.0)


def test_floors_are_the_image_over_the_registry_link_and_the_cpu_over_the_cores() -> None:
    run = Round([3.0, 4.0], registry_bytes=0, link_bytes=0, busy=10.0, cpu={})
    assert floors(run, 100 * MiB, 50 * MiB) == (2.0, 10.0 / CORES)
    assert run.wall == 4.0
