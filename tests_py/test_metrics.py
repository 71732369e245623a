"""Prometheus export of engine stats (cpcsync.metrics, optional extra)."""

from __future__ import annotations

import pytest

import cpcsync as cs

prometheus_client = pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from cpcsync.metrics import EngineCollector  # noqa: E402
from cpcsync.testing import FaultyTransport  # noqa: E402


def _scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_scrapes_follow_the_engine() -> None:
    clock = cs.VirtualClock(start=1000.0)
    q = cs.SyncQueue.in_memory(clock=clock)
    ft = FaultyTransport(clock=clock)
    e = cs.SyncEngine(q, ft, clock=clock, backoff=cs.ConstantBackoff(1.0))
    registry = CollectorRegistry()
    registry.register(EngineCollector(e, name="outbox"))
    q.enqueue("pay", {"n": 1}, priority=cs.Priority.CRITICAL)
    q.enqueue("log", {"n": 2}, priority=cs.Priority.LOW)
    clock.advance(30)
    m = _scrape(registry)
    lbl = (("queue", "outbox"),)
    assert m[("cpcsync_pending", lbl)] == 2
    assert m[("cpcsync_pending_by_priority", (("priority", "100"), ("queue", "outbox")))] == 1
    assert m[("cpcsync_oldest_pending_age_seconds", lbl)] == 30
    assert m[("cpcsync_delivered_total", lbl)] == 0

    ft.fail_next(1)
    e.process_once()  # the critical op fails once
    e.process_once()  # the low one is delivered
    clock.advance(1)
    e.process_once()
    m = _scrape(registry)
    assert m[("cpcsync_delivered_total", lbl)] == 2
    assert m[("cpcsync_retried_total", lbl)] == 1
    assert m[("cpcsync_pending", lbl)] == 0
    assert m[("cpcsync_oldest_pending_age_seconds", lbl)] == 0
    assert m[("cpcsync_delivery_latency_seconds", (("quantile", "0.99"), ("queue", "outbox")))] > 0
    assert m[("cpcsync_running", lbl)] == 0


def test_two_engines_share_a_registry_by_label() -> None:
    registry = CollectorRegistry()
    for name in ("a", "b"):
        q = cs.SyncQueue.in_memory()
        q.enqueue("k", {"v": 1})
        registry.register(EngineCollector(cs.SyncEngine(q, FaultyTransport()), name=name))
    m = _scrape(registry)
    assert m[("cpcsync_pending", (("queue", "a"),))] == 1
    assert m[("cpcsync_pending", (("queue", "b"),))] == 1
