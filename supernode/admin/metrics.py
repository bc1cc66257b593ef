"""The supernode's Prometheus metrics, read from its parts (view.py) at each scrape."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from supernode.admin.view import SupernodeView
from supernode.cdn.task import TaskState


class SupernodeCollector(Collector):
    def __init__(self, view: SupernodeView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        view = self.view
        cdn = view.cdn.statistics()
        states = Counter(str(task.state) for task in view.cdn.tasks.values())
        tasks = GaugeMetricFamily(
            "supernode_tasks", "Tasks known to the CDN, by state", labels=["state"]
        )
        for state in TaskState:
            tasks.add_metric([state.value], states.get(state.value, 0))
        yield tasks
        yield GaugeMetricFamily(
            "supernode_peers", "Peers in the swarm", value=len(view.swarm.peers)
        )
        yield CounterMetricFamily(
            "supernode_origin_bytes", "Body bytes fetched from origins", value=cdn.bytes_from_origin
        )
        yield CounterMetricFamily(
            "supernode_origin_fetches", "Back-to-source fetches started", value=cdn.origin_fetches
        )
        yield CounterMetricFamily(
            "supernode_cdn_uploaded_bytes",
            "Sealed piece bytes the CDN sent to peers",
            value=cdn.bytes_served,
        )
        from_cdn, from_peers = view.scheduler.reported_bytes(view.cdn.tasks)
        reported = GaugeMetricFamily(
            "supernode_reported_bytes",
            "Plaintext bytes downloaders reported verified, by source, for tasks in the swarm",
            labels=["source"],
        )
        reported.add_metric(["cdn"], from_cdn)
        reported.add_metric(["peers"], from_peers)
        yield reported
        scheduler = view.scheduler.statistics()
        yield CounterMetricFamily(
            "supernode_scheduler_assignments",
            "Piece assignments handed out by the scheduler",
            value=scheduler.assignments,
        )
        outcomes = CounterMetricFamily(
            "supernode_scheduler_reports",
            "Transfer outcomes reported by downloaders",
            labels=["outcome"],
        )
        for outcome, count in scheduler.decisions_by_outcome.items():
            outcomes.add_metric([outcome], count)
        yield outcomes
        latency = SummaryMetricFamily(
            "supernode_scheduler_decision_seconds",
            "Time to answer a piece-task request (scheduler decisions and tickets)",
            count_value=view.swarm.decisions,
            sum_value=view.swarm.decision_seconds,
        )
        yield latency
        errors = CounterMetricFamily(
            "supernode_origin_errors",
            "Back-to-source fetches that failed, by error code",
            labels=["code"],
        )
        for code, count in sorted(view.cdn.origin_errors.items()):
            errors.add_metric([code], count)
        yield errors
        yield GaugeMetricFamily(
            "supernode_assignments_in_flight",
            "Assignments not reported yet",
            value=scheduler.assignments_in_flight,
        )
        yield GaugeMetricFamily(
            "supernode_store_bytes",
            "Bytes of origin content in the CDN store (complete and running tasks)",
            value=sum(task.length or 0 for task in view.cdn.tasks.values() if not task.failed),
        )
        cluster = view.cluster
        yield GaugeMetricFamily(
            "supernode_cluster_members",
            "Live supernodes of the cluster as this one sees them (itself included)",
            value=len(cluster.live()),
        )
        yield GaugeMetricFamily(
            "supernode_cluster_redis_up",
            "1 if the last heartbeat reached the cluster's Redis, 0 if not (or no --cluster)",
            value=1 if cluster.health == "up" else 0,
        )
        yield CounterMetricFamily(
            "supernode_cluster_heartbeat_failures",
            "Heartbeats that could not reach the cluster's Redis",
            value=cluster.heartbeat_failures,
        )
        yield CounterMetricFamily(
            "supernode_cluster_failovers",
            "Tasks this supernode adopted from the state a dead owner left in Redis",
            value=cluster.failovers,
        )
        yield CounterMetricFamily(
            "supernode_cluster_task_state_failures",
            "Periods whose task state could not be written to the cluster's Redis",
            value=cluster.task_state_failures,
        )
        owned = sum(1 for task_id in view.cdn.tasks if cluster.owner(task_id).id == cluster.id)
        yield GaugeMetricFamily(
            "supernode_cluster_tasks_owned",
            "Tasks in this CDN that this supernode owns (rendezvous over the live members)",
            value=owned,
        )
