"""The engine with conflict resolvers, and end to end over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import cpcsync as cs
from cpcsync.testing import SyncServer

HLC = cs.HybridLogicalClock


@pytest.fixture
def queue() -> Iterator[cs.SyncQueue]:
    q = cs.SyncQueue.in_memory(clock=cs.VirtualClock(start=1_000.0))
    yield q
    q.close()


class ConflictOnce:
    """Raises one ConflictError carrying a remote value, then accepts."""

    def __init__(self, remote: Any, remote_hlc: int, version: int = 7) -> None:
        self.remote, self.remote_hlc, self.version = remote, remote_hlc, version
        self.sent: list[tuple[bytes, int | None]] = []

    def __call__(self, op: cs.Operation) -> None:
        self.sent.append((op.payload, op.base_version))
        if len(self.sent) == 1:
            raise cs.ConflictError(self.remote, self.remote_hlc, self.version)


def test_last_write_wins_resends_a_newer_local_write(queue: cs.SyncQueue) -> None:
    queue.enqueue("set", {"currency": "BTC"}, key="user:42")
    older = HLC.pack(1, 0)  # the server's write is older than ours
    transport = ConflictOnce({"currency": "EUR"}, older)
    engine = cs.SyncEngine(queue, transport)  # default resolver: LastWriteWins
    summary = engine.drain(timeout=30)
    assert summary.conflicts == 1 and summary.successful == 1
    assert [json.loads(p) for p, _ in transport.sent] == [{"currency": "BTC"}] * 2
    assert transport.sent[1][1] == 7  # resent against the remote version


def test_last_write_wins_supersedes_an_older_local_write(queue: cs.SyncQueue) -> None:
    queue.enqueue("set", {"currency": "BTC"}, key="user:42")
    newer = HLC.pack(10**12, 0)  # the server's write is newer
    transport = ConflictOnce({"currency": "EUR"}, newer)
    engine = cs.SyncEngine(queue, transport)
    superseded: list[dict[str, Any]] = []
    engine.on("superseded", superseded.append)
    summary = engine.drain(timeout=30)
    assert summary.superseded == 1 and len(transport.sent) == 1
    assert json.loads(superseded[0]["remote"]) == {"currency": "EUR"}
    assert len(queue) == 0
    queue.enqueue("set", {"currency": "USD"}, key="user:42")
    assert queue.peek(1)[0].hlc > newer  # the remote stamp was observed into the HLC


def test_field_merge_resends_the_merged_payload(queue: cs.SyncQueue) -> None:
    queue.enqueue("set", {"currency": "BTC", "lang": "en"}, key="user:42")
    transport = ConflictOnce({"currency": "EUR", "tz": "UTC"}, HLC.pack(1, 0))
    engine = cs.SyncEngine(queue, transport, resolver=cs.FieldMerge())
    engine.drain(timeout=30)
    assert json.loads(transport.sent[1][0]) == {"currency": "BTC", "lang": "en", "tz": "UTC"}


def test_server_wins_and_a_custom_python_resolver(queue: cs.SyncQueue) -> None:
    queue.enqueue("set", {"n": 1}, key="a")
    engine = cs.SyncEngine(queue, ConflictOnce({"n": 2}, HLC.pack(1, 0)), resolver=cs.ServerWins())
    assert engine.drain(timeout=30).superseded == 1

    calls: list[tuple[int, bytes]] = []

    def resolver(local: cs.Operation, remote: cs.Remote) -> cs.Resolution:
        calls.append((local.id, remote.value))
        return cs.Resolution.merge({"n": 3})

    op = queue.enqueue("set", {"n": 1}, key="b")
    transport = ConflictOnce({"n": 2}, HLC.pack(1, 0))
    cs.SyncEngine(queue, transport, resolver=resolver).drain(timeout=30)
    assert calls == [(op, b'{"n":2}')]
    assert json.loads(transport.sent[1][0]) == {"n": 3}


def test_seed_happy_path_over_http() -> None:
    with SyncServer() as server, cs.HttpTransport(server.url) as transport:
        q = cs.SyncQueue.in_memory()
        for i in range(1000):
            q.enqueue("add_item", {"i": i}, key=f"cart:{i}", priority=cs.Priority.LOW)
        q.enqueue("set_currency", {"currency": "BTC"}, key="user:42", priority=cs.Priority.CRITICAL)
        monitor = cs.NetworkMonitor(connected=False)
        engine = cs.SyncEngine(q, transport, monitor=monitor)
        engine.start()
        try:
            monitor.set_connected(True)
            assert engine.wait_idle(timeout=120)
        finally:
            engine.stop(timeout=30)
        first = server.received[0]
        assert first["kind"] == "set_currency" and first["payload"] == {"currency": "BTC"}
        assert len(server.received) == 1001
        assert server.applied["user:42"]["value"] == {"currency": "BTC"}
        assert len(q) == 0
        q.close()


def test_http_503_with_retry_after_is_retried_after_that_delay() -> None:
    clock = cs.VirtualClock(start=0.0)
    with SyncServer() as server, cs.HttpTransport(server.url) as transport:
        q = cs.SyncQueue.in_memory(clock=clock)
        q.enqueue("set", {"v": 1}, key="k")
        server.fail_next(1, status=503, retry_after=7)
        engine = cs.SyncEngine(q, transport)
        assert engine.process_once().retried[0][1] == 7.0
        clock.advance(7.0)
        assert engine.process_once().successful == 1
        assert server.applied["k"]["version"] == 1
        q.close()
