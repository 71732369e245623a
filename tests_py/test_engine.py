"""SyncEngine: delivery, order, retries, dead letters, conflicts, events, threads."""

from __future__ import annotations

import asyncio
import faulthandler
import json
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import cpcsync as cs


class Recorder:
    """A transport that records every call and fails as scripted."""

    def __init__(self, clock: cs.Clock | None = None) -> None:
        self.calls: list[tuple[float, int, str | None, int]] = []
        self.script: dict[int, list[BaseException | None]] = {}  # op id -> outcomes in order
        self.default: BaseException | None = None
        self.clock = clock
        self.lock = threading.Lock()

    def __call__(self, op: cs.Operation) -> None:
        now = self.clock.now() if self.clock else 0.0
        with self.lock:
            self.calls.append((now, op.id, op.key, op.priority))
            plan = self.script.get(op.id)
            outcome = plan.pop(0) if plan else self.default
        if outcome is not None:
            raise outcome

    @property
    def ids(self) -> list[int]:
        return [c[1] for c in self.calls]


@pytest.fixture
def clock() -> cs.VirtualClock:
    return cs.VirtualClock(start=1_000.0)


@pytest.fixture
def queue(clock: cs.VirtualClock) -> Iterator[cs.SyncQueue]:
    q = cs.SyncQueue.in_memory(clock=clock)
    yield q
    q.close()


def test_seed_happy_path_critical_first_after_reconnect(queue: cs.SyncQueue) -> None:
    for i in range(1000):
        queue.enqueue("add_item", {"i": i}, key=f"cart:{i}", priority=cs.Priority.LOW)
    critical = queue.enqueue(
        "set_currency", {"currency": "BTC"}, key="user:42", priority=cs.Priority.CRITICAL
    )
    monitor = cs.NetworkMonitor(connected=False)
    transport = Recorder()
    engine = cs.SyncEngine(queue, transport, monitor=monitor)
    engine.start()
    try:
        assert engine.wait_idle(timeout=30)  # offline: idle, nothing sent
        assert transport.calls == []
        monitor.set_connected(True)
        assert engine.wait_idle(timeout=60)
    finally:
        assert engine.stop(timeout=30)
    assert transport.ids[0] == critical
    assert len(transport.calls) == 1001
    assert len(queue) == 0
    assert engine.stats()["delivered"] == 1001


def test_retry_gaps_are_exactly_the_backoff_delays(
    queue: cs.SyncQueue, clock: cs.VirtualClock
) -> None:
    op = queue.enqueue("k", b"x")
    transport = Recorder(clock)
    fail = cs.TransientError("503")
    transport.script[op] = [fail, fail, fail, None]
    backoff = cs.ExponentialBackoff(base=1.0, factor=2.0, max_delay=60.0, jitter="none")
    engine = cs.SyncEngine(queue, transport, backoff=backoff)
    delays: list[float] = []
    for _ in range(4):
        summary = engine.process_once()
        delays += [d for _, d in summary.retried]
        if delays:
            clock.advance(delays[-1])
    times = [c[0] - 1_000.0 for c in transport.calls]
    assert times == [0.0, 1.0, 3.0, 7.0]
    assert delays == [1.0, 2.0, 4.0]
    assert len(queue) == 0


def test_priority_then_fifo_and_per_key_order(queue: cs.SyncQueue) -> None:
    a1 = queue.enqueue("k", b"1", key="a", priority=25)
    b1 = queue.enqueue("k", b"1", key="b", priority=50)
    a2 = queue.enqueue("k", b"2", key="a", priority=100)  # lifts lane a (inheritance)
    c1 = queue.enqueue("k", b"1", priority=75)
    transport = Recorder()
    engine = cs.SyncEngine(queue, transport)
    engine.drain(timeout=30)
    assert transport.ids == [a1, a2, c1, b1]


def test_per_key_order_with_concurrency_4() -> None:
    q = cs.SyncQueue.in_memory()
    expected: dict[str, list[int]] = {}
    for i in range(400):
        key = f"k{i % 8}"
        expected.setdefault(key, []).append(q.enqueue("k", {"i": i}, key=key))
    seen: dict[str, list[int]] = {}
    lock = threading.Lock()

    def transport(op: cs.Operation) -> None:
        with lock:
            seen.setdefault(op.key or "", []).append(op.id)

    engine = cs.SyncEngine(q, transport, concurrency=4)
    engine.start()
    try:
        assert engine.wait_idle(timeout=60)
    finally:
        engine.stop(timeout=30)
    assert seen == expected
    q.close()


def test_poison_op_is_dead_lettered_without_blocking_other_keys(queue: cs.SyncQueue) -> None:
    poison = queue.enqueue("k", b"bad", key="a")
    after = queue.enqueue("k", b"ok", key="a")
    other = queue.enqueue("k", b"ok", key="b")
    transport = Recorder()
    transport.script[poison] = [cs.PermanentError("400 bad request")]
    engine = cs.SyncEngine(queue, transport)
    summary = engine.drain(timeout=30)
    assert summary.successful == 2
    assert [f[0] for f in summary.failed] == [poison]
    assert set(transport.ids) == {poison, after, other}
    (dead,) = queue.dead_letters()
    assert dead.id == poison and "400 bad request" in (dead.last_error or "")


def test_max_attempts_dead_letters_with_the_error_chain(
    queue: cs.SyncQueue, clock: cs.VirtualClock
) -> None:
    op = queue.enqueue("k", b"x")
    transport = Recorder()
    try:
        raise ConnectionResetError("peer reset")
    except ConnectionResetError as cause:
        err = cs.TransientError("upstream failed")
        err.__cause__ = cause
    transport.default = err
    engine = cs.SyncEngine(queue, transport, max_attempts=3, backoff=cs.ConstantBackoff(1.0))
    for _ in range(3):
        engine.process_once()
        clock.advance(1.0)
    assert len(transport.calls) == 3
    (dead,) = queue.dead_letters()
    assert dead.id == op
    assert "gave up after 3 attempts" in (dead.last_error or "")
    assert "ConnectionResetError: peer reset" in (dead.last_error or "")


def test_retry_after_is_honoured_exactly(queue: cs.SyncQueue) -> None:
    op = queue.enqueue("k", b"x")
    transport = Recorder()
    transport.script[op] = [cs.RetryAfter(5.0)]
    engine = cs.SyncEngine(queue, transport, backoff=cs.ConstantBackoff(100.0))
    summary = engine.process_once()
    assert summary.retried == [(op, 5.0)]


def test_network_errors_tell_the_monitor(queue: cs.SyncQueue, clock: cs.VirtualClock) -> None:
    queue.enqueue("k", b"x")
    monitor = cs.NetworkMonitor(connected=True, clock=clock)
    transport = Recorder()
    transport.default = ConnectionRefusedError("refused")
    engine = cs.SyncEngine(queue, transport, monitor=monitor)
    engine.process_once()
    assert monitor.stats()["passive_failures"] == 1


def test_nothing_is_sent_while_disconnected(queue: cs.SyncQueue) -> None:
    queue.enqueue("k", b"x")
    monitor = cs.NetworkMonitor(connected=False)
    transport = Recorder()
    engine = cs.SyncEngine(queue, transport, monitor=monitor)
    assert engine.process_once().successful == 0
    assert transport.calls == []
    monitor.set_connected(True)
    assert engine.process_once().successful == 1


def test_events_fire_and_a_raising_listener_is_counted(queue: cs.SyncQueue) -> None:
    ok = queue.enqueue("k", b"x")
    bad = queue.enqueue("k", b"y")
    transport = Recorder()
    transport.script[bad] = [cs.PermanentError("no")]
    engine = cs.SyncEngine(queue, transport)
    events: list[tuple[str, int]] = []
    engine.on("delivered", lambda info: events.append(("delivered", info["op"].id)))
    engine.on("dead_letter", lambda info: events.append(("dead_letter", info["op"].id)))

    def boom(info: dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    engine.on("delivered", boom)
    engine.drain(timeout=30)
    assert ("delivered", ok) in events and ("dead_letter", bad) in events
    assert engine.stats()["callback_errors"] == 1
    with pytest.raises(cs.InvalidArgumentError):
        engine.on("no-such-event", lambda info: None)


def test_stop_and_restart(queue: cs.SyncQueue) -> None:
    transport = Recorder()
    engine = cs.SyncEngine(queue, transport)
    for _ in range(2):
        engine.start()
        assert engine.running
        queue.enqueue("k", b"x")
        assert engine.wait_idle(timeout=30)
        assert engine.stop(timeout=30)
        assert not engine.running
    assert len(transport.calls) == 2


def test_stop_returns_while_a_transport_is_blocked() -> None:
    release = threading.Event()
    entered = threading.Event()

    def stuck(op: cs.Operation) -> None:
        entered.set()
        release.wait(60)

    queue = cs.SyncQueue.in_memory(clock=cs.SystemClock())
    queue.enqueue("k", b"x")
    engine = cs.SyncEngine(queue, stuck, clock=cs.SystemClock())  # real clocks may differ
    engine.start()
    assert entered.wait(30)
    assert engine.stop(timeout=0.2) is False  # the worker is still inside the transport
    release.set()
    queue.close()


def test_an_engine_refuses_a_clock_other_than_its_queues_virtual_clock(
    queue: cs.SyncQueue,
) -> None:
    # Deadlines on one clock and waits on the other: drain(timeout) never returned.
    with pytest.raises(cs.InvalidArgumentError, match="the queue's clock"):
        cs.SyncEngine(queue, lambda op: None, clock=cs.VirtualClock(0.0))
    with pytest.raises(cs.InvalidArgumentError, match="the queue's clock"):
        cs.SyncEngine(queue, lambda op: None, clock=cs.SystemClock())
    assert cs.SyncEngine(queue, lambda op: None, clock=queue.clock).clock is queue.clock


def test_async_transport_on_the_engines_own_loop(queue: cs.SyncQueue) -> None:
    sent: list[int] = []

    async def transport(op: cs.Operation) -> None:
        await asyncio.sleep(0)
        sent.append(op.id)

    ids = [queue.enqueue("k", {"n": n}) for n in range(5)]
    engine = cs.SyncEngine(queue, transport)
    engine.drain(timeout=30)
    assert sent == ids


def test_async_transport_on_a_users_loop_and_wait_idle_async() -> None:
    q = cs.SyncQueue.in_memory()
    sent: list[int] = []

    async def main() -> None:
        async def transport(op: cs.Operation) -> None:
            sent.append(op.id)

        engine = cs.SyncEngine(q, transport, loop=asyncio.get_running_loop())
        engine.start()
        try:
            q.enqueue("k", b"1")
            q.enqueue("k", b"2")
            assert await engine.wait_idle_async(30)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    asyncio.run(main())
    assert len(sent) == 2
    q.close()


def test_batch_transport_gets_one_result_per_op(queue: cs.SyncQueue) -> None:
    class Batcher:
        def __init__(self) -> None:
            self.batches: list[list[int]] = []

        def __call__(self, op: cs.Operation) -> None:
            raise AssertionError("send_batch should be used")

        def send_batch(self, ops: list[cs.Operation]) -> list[BaseException | None]:
            self.batches.append([op.id for op in ops])
            return [cs.PermanentError("odd") if op.id % 2 else None for op in ops]

    ids = [queue.enqueue("k", b"x") for _ in range(10)]
    transport = Batcher()
    engine = cs.SyncEngine(queue, transport, batch_size=4)
    summary = engine.drain(timeout=30)
    assert sorted(i for b in transport.batches for i in b) == ids
    assert max(len(b) for b in transport.batches) == 4
    assert summary.successful == 5 and len(summary.failed) == 5


def test_stress_threads_enqueue_while_engine_delivers_and_monitor_flaps() -> None:
    faulthandler.dump_traceback_later(120, exit=True)  # a deadlock dumps stacks and fails
    try:
        q = cs.SyncQueue.in_memory()
        monitor = cs.NetworkMonitor(connected=True)
        delivered: list[int] = []
        lock = threading.Lock()

        def transport(op: cs.Operation) -> None:
            if random.random() < 0.05:
                raise cs.TransientError("flaky")
            with lock:
                delivered.append(op.id)

        engine = cs.SyncEngine(
            q, transport, monitor=monitor, concurrency=3, backoff=cs.ConstantBackoff(0.0)
        )
        engine.on("delivered", lambda info: None)
        monitor.subscribe(lambda connected: None)
        engine.start()
        produced: list[int] = []

        def produce(n: int) -> None:
            for i in range(n):
                op = q.enqueue("k", json.dumps({"i": i}), key=f"k{i % 7}")
                with lock:
                    produced.append(op)

        producers = [threading.Thread(target=produce, args=(300,)) for _ in range(4)]
        for t in producers:
            t.start()
        for i in range(50):
            monitor.set_connected(i % 2 == 1)
        for t in producers:
            t.join()
        monitor.set_connected(True)
        assert engine.wait_idle(timeout=60)
        deadline_ok = engine.stop(drain=True, timeout=60)
        assert deadline_ok
        assert sorted(delivered) == sorted(produced)
        q.close()
    finally:
        faulthandler.cancel_dump_traceback_later()


def test_max_elapsed_dead_letters_once_the_first_attempt_is_old(
    queue: cs.SyncQueue, clock: cs.VirtualClock
) -> None:
    op = queue.enqueue("k", b"x")
    transport = Recorder()
    transport.default = cs.TransientError("down")
    engine = cs.SyncEngine(
        queue, transport, max_attempts=100, max_elapsed=10.0, backoff=cs.ConstantBackoff(4.0)
    )
    for _ in range(4):  # attempts at t = 0, 4, 8, 12 (12 - 0 >= 10: give up)
        engine.process_once()
        clock.advance(4.0)
    assert len(transport.calls) == 4
    (dead,) = queue.dead_letters()
    assert dead.id == op and "max_elapsed" in (dead.last_error or "")


def test_network_event_on_monitor_transitions(queue: cs.SyncQueue) -> None:
    monitor = cs.NetworkMonitor(connected=False)
    engine = cs.SyncEngine(queue, Recorder(), monitor=monitor)
    seen: list[bool] = []
    engine.on("network", lambda info: seen.append(info["connected"]))
    monitor.set_connected(True)
    monitor.set_connected(False)
    assert seen == [True, False]


def test_client_wins_resends_against_the_remote_version(queue: cs.SyncQueue) -> None:
    op = queue.enqueue("set", {"v": "mine"}, key="k")
    sent: list[tuple[bytes, int | None]] = []

    def transport(o: cs.Operation) -> None:
        sent.append((o.payload, o.base_version))
        if len(sent) == 1:
            raise cs.ConflictError({"v": "theirs"}, cs.HybridLogicalClock.pack(10**12, 0), 3)

    summary = cs.SyncEngine(queue, transport, resolver=cs.ClientWins()).drain(timeout=30)
    assert summary.conflicts == 1 and summary.successful == 1
    assert sent == [(b'{"v":"mine"}', None), (b'{"v":"mine"}', 3)]
    assert queue.get(op) is None
