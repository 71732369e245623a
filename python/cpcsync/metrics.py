"""Prometheus metrics for a SyncEngine (optional extra: ``pip install cpcsync[metrics]``).

``EngineCollector(engine)`` reads ``engine.stats()`` at every scrape, so nothing runs
between scrapes and the figures are never stale::

    from prometheus_client import REGISTRY, start_http_server
    from cpcsync.metrics import EngineCollector

    REGISTRY.register(EngineCollector(engine, name="outbox"))
    start_http_server(9108)

Metrics (all labelled ``queue=<name>``):

- ``cpcsync_delivered_total``, ``cpcsync_retried_total``, ``cpcsync_dead_lettered_total``,
  ``cpcsync_conflicts_total``, ``cpcsync_superseded_total``,
  ``cpcsync_callback_errors_total`` (counters, since the engine was built);
- ``cpcsync_in_flight``, ``cpcsync_pending`` (gauges);
- ``cpcsync_pending_by_priority{priority="100"}`` (gauge per priority);
- ``cpcsync_oldest_pending_age_seconds`` (gauge; 0 when nothing is pending);
- ``cpcsync_delivery_latency_seconds{quantile="0.5|0.9|0.99"}`` (recent deliveries,
  created -> acknowledged);
- ``cpcsync_running`` (1 while the workers run).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["EngineCollector"]

_COUNTERS = (
    ("delivered", "Operations delivered."),
    ("retried", "Deliveries scheduled for a retry."),
    ("dead_lettered", "Operations dead-lettered."),
    ("conflicts", "Conflicts resolved."),
    ("superseded", "Operations completed by taking the server's value."),
    ("callback_errors", "Exceptions raised by event listeners (logged and counted)."),
)


class EngineCollector(Collector):
    """A prometheus_client collector over one engine's ``stats()``.

    ``name`` labels every sample (``queue=name``), so several engines can share one
    registry. ``prefix`` starts every metric name (default ``cpcsync``).
    """

    def __init__(self, engine: Any, name: str = "default", prefix: str = "cpcsync") -> None:
        self._engine = engine
        self._name = name
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        """Called by the registry at each scrape."""
        s = self._engine.stats()
        p, labels = self._prefix, ["queue"]
        for key, doc in _COUNTERS:
            c = CounterMetricFamily(f"{p}_{key}", doc, labels=labels)
            c.add_metric([self._name], float(s[key]))
            yield c
        for key, doc in (
            ("in_flight", "Operations being delivered now."),
            ("pending", "Operations waiting to be delivered."),
        ):
            g = GaugeMetricFamily(f"{p}_{key}", doc, labels=labels)
            g.add_metric([self._name], float(s[key]))
            yield g
        g = GaugeMetricFamily(
            f"{p}_pending_by_priority",
            "Pending operations per priority.",
            labels=[*labels, "priority"],
        )
        for prio, n in sorted(s["depth_by_priority"].items()):
            g.add_metric([self._name, str(prio)], float(n))
        yield g
        age = s["oldest_pending_age"]
        g = GaugeMetricFamily(
            f"{p}_oldest_pending_age_seconds",
            "Age of the oldest pending operation (0 when none).",
            labels=labels,
        )
        g.add_metric([self._name], float(age or 0.0))
        yield g
        g = GaugeMetricFamily(
            f"{p}_delivery_latency_seconds",
            "Delivery latency of recent operations (created -> acked).",
            labels=[*labels, "quantile"],
        )
        for q, key in (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99")):
            g.add_metric([self._name, q], float(s["latency"][key]))
        yield g
        g = GaugeMetricFamily(f"{p}_running", "1 while the engine's workers run.", labels=labels)
        g.add_metric([self._name], 1.0 if s["running"] else 0.0)
        yield g
