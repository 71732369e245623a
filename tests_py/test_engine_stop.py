"""SyncEngine.stop: bounded by its timeout, and drain=True means "the queue emptied" (issue 13)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

import cpcsync as cs
from cpcsync.testing import SyncServer


def _until(predicate: object, seconds: float = 30.0) -> None:
    """Spin (no sleep) until predicate() is true; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"


def test_stop_is_bounded_while_a_worker_waits_for_sqlites_lock(tmp_path: Path) -> None:
    # Before: stop(timeout=1.0) counted only ops in flight, so it joined a worker that
    # was inside take() waiting on SQLite's lock (and then went on to send): it
    # returned True once the lock was gone, seconds past its timeout.
    path = tmp_path / "q.db"
    q = cs.SyncQueue.open(path)
    op = q.enqueue("set", {"v": 1}, key="a")
    monitor = cs.NetworkMonitor(connected=False)
    called = threading.Event()
    engine = cs.SyncEngine(q, lambda op: called.set(), monitor=monitor)
    engine.start()
    holder = sqlite3.connect(path, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        monitor.set_connected(True)  # the worker wakes; its take waits for the lock
        _until(lambda: engine.busy_workers == 1)
        started = time.monotonic()
        assert engine.stop(timeout=1.0) is False  # the worker is still busy
        assert time.monotonic() - started < 3.0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # The worker gets its take through, sees the stop and puts the op back unsent.
    _until(lambda: engine.busy_workers == 0)
    assert not called.is_set()
    got = q.get(op)
    assert got is not None and got.state == "pending"
    assert got.attempts == 0  # never sent: not an attempt
    q.close()


def test_stop_drain_waits_for_the_queue_to_empty_while_offline() -> None:
    # Before: drain=True returned True at once while the monitor said offline
    # ("offline" counted as idle), with every op still queued.
    q = cs.SyncQueue.in_memory()
    q.enqueue("set", {"v": 1}, key="a")
    monitor = cs.NetworkMonitor(connected=False)
    sent: list[int] = []
    engine = cs.SyncEngine(q, lambda op: sent.append(op.id), monitor=monitor)
    engine.start()
    started = time.monotonic()
    assert engine.stop(drain=True, timeout=0.3) is False
    assert time.monotonic() - started >= 0.3
    assert len(q) == 1 and sent == []
    q.close()


def test_stop_drain_delivers_once_the_network_comes_back() -> None:
    with SyncServer() as server:
        q = cs.SyncQueue.in_memory()
        for i in range(5):
            q.enqueue("set", {"i": i}, key=f"k{i}")
        monitor = cs.NetworkMonitor(connected=False)
        transport = cs.HttpTransport(server.url)
        engine = cs.SyncEngine(q, transport, monitor=monitor)
        engine.start()
        result: list[bool] = []
        stopper = threading.Thread(
            target=lambda: result.append(engine.stop(drain=True, timeout=60))
        )
        stopper.start()
        monitor.set_connected(True)
        stopper.join(90)
        assert result == [True]
        assert len(q) == 0 and len(server.applied) == 5
        transport.close()
        q.close()


def test_stop_drain_counts_retries_waiting_for_their_delay() -> None:
    clock = cs.VirtualClock(0.0)
    q = cs.SyncQueue.in_memory(clock=clock)
    q.enqueue("set", {"v": 1}, key="a")
    failures = [cs.TransientError("503")]

    def transport(op: cs.Operation) -> None:
        if failures:
            raise failures.pop()

    engine = cs.SyncEngine(q, transport, clock=clock, backoff=cs.ConstantBackoff(5.0))
    retried = threading.Event()
    engine.on("retry", lambda info: retried.set())
    engine.start()
    assert retried.wait(30)
    # The retry is 5 virtual seconds away: not drained, however long we wait for real.
    assert engine.stop(drain=True, timeout=1.0) is False
    assert len(q) == 1
    engine.start()
    result: list[bool] = []
    stopper = threading.Thread(target=lambda: result.append(engine.stop(drain=True, timeout=10.0)))
    stopper.start()
    clock.advance(5.0)  # the retry comes due; the worker delivers it
    stopper.join(60)
    assert result == [True] and len(q) == 0
    q.close()


def test_stop_drain_on_an_engine_never_started_reports_what_is_left() -> None:
    q = cs.SyncQueue.in_memory()
    engine = cs.SyncEngine(q, lambda op: None)
    assert engine.stop(drain=True, timeout=1.0) is True  # nothing queued
    q.enqueue("set", b"x")
    assert engine.stop(drain=True, timeout=1.0) is False  # nobody to deliver it
    q.close()


def test_a_second_start_and_a_second_engine_on_one_handle_are_refused() -> None:
    # Before: both were silently accepted; two engines on one handle deliver the same
    # ops twice over (and a second start() started no more workers).
    q = cs.SyncQueue.in_memory()
    first = cs.SyncEngine(q, lambda op: None)
    second = cs.SyncEngine(q, lambda op: None)
    first.start()
    try:
        with pytest.raises(cs.OperationStateError, match="already running"):
            first.start()
        with pytest.raises(cs.OperationStateError, match="another SyncEngine"):
            second.start()
        with pytest.raises(cs.OperationStateError, match="another SyncEngine"):
            second.process_once()
    finally:
        assert first.stop(timeout=10)
    second.start()  # the handle is free again
    assert second.stop(timeout=10)
    first.start()  # start after stop: allowed
    assert first.stop(timeout=10)
    q.close()
