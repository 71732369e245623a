"""Wall-clock steps on a VirtualClock (``step_wall``): nothing that waits may notice.

NTP correcting a device without a real-time clock steps its wall clock by seconds or
years. Every wait, retry, TTL, interval and age runs on the clock's monotonic
timeline (``now()``); only HLC stamps read the wall (``wall()``). The same is checked
on real processes with libfaketime in test_faketime.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import cpcsync as cs
from _helpers import TimedProbe

PATIENCE = 30.0  # seconds a test waits for another thread before failing (never a sleep)
START = 1.7e9
STEPS = [pytest.param(-20.0, id="back20"), pytest.param(60.0, id="fwd60")]


@pytest.fixture
def clock() -> cs.VirtualClock:
    return cs.VirtualClock(start=START)


@pytest.fixture(params=["memory", "sqlite"])
def queue(request: pytest.FixtureRequest, clock: cs.VirtualClock, tmp_path: Path) -> Iterator:
    if request.param == "memory":
        q = cs.SyncQueue.in_memory(clock=clock)
    else:
        q = cs.SyncQueue.open(tmp_path / "q.db", clock=clock)
    yield q
    q.close()


def elapsed_while_stepping(
    clock: cs.VirtualClock, step: float, call: Callable[[], object], unblock: Callable[[], None]
) -> tuple[float, object] | None:
    """Runs ``call`` (a wait with a 2 s timeout) on a thread while this thread steps the
    wall clock by ``step`` and advances time by 0.25 s, again and again, until the call
    returns: the wall clock moves while the call waits, whenever the thread got to
    start it. Returns (monotonic seconds the call took, its result), or None if it had
    not returned after 40 rounds (10 s: it was waiting on the wall clock); ``unblock``
    then ends it. The short real-time wait per round only paces the rounds."""
    out: list[tuple[float, object]] = []
    done = threading.Event()

    def run() -> None:
        begin = clock.now()
        try:
            result = call()
            out.append((clock.now() - begin, result))
        except cs.SyncError:  # unblocked after a failure
            pass
        finally:
            done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    for _ in range(40):
        clock.step_wall(step)
        clock.advance(0.25)
        if done.wait(0.02):
            break
    if not done.is_set():
        unblock()
    t.join(PATIENCE)
    return out[0] if out else None


@pytest.mark.parametrize("step", STEPS)
def test_retry_delay_ignores_wall_steps(queue, clock: cs.VirtualClock, step: float) -> None:
    op_id = queue.enqueue("k", b"x")
    assert queue.take(1)
    queue.retry(op_id, 2.0, error="503")
    clock.step_wall(step)
    assert queue.take(1) == [], "a wall step made a 2 s retry due early"
    clock.advance(1.999)
    assert queue.take(1) == []
    clock.advance(0.001)
    assert [op.id for op in queue.take(1)] == [op_id], "a 2 s retry was not due 2 s later"


@pytest.mark.parametrize("step", STEPS)
def test_wait_timeout_ignores_wall_steps(queue, clock: cs.VirtualClock, step: float) -> None:
    queue.enqueue("k", b"x", delay=1000.0)
    queue.take(0)  # become the consumer
    r = elapsed_while_stepping(clock, step, lambda: queue.wait(2.0), queue.close)
    assert r is not None, "q.wait(2) did not return 2 s later"  # 22 s after a -20 s step
    elapsed, ready = r
    assert ready is False
    assert 2.0 <= elapsed < 5.0  # at once after a forward step


def test_ttl_is_monotonic_while_the_process_runs(queue, clock: cs.VirtualClock) -> None:
    kept = queue.enqueue("k", b"x", ttl=30.0)
    clock.step_wall(60.0)  # it was dead-lettered as expired at once
    assert [op.id for op in queue.take(1)] == [kept]
    queue.ack(kept)
    assert queue.dead_letters() == []

    expired = queue.enqueue("k", b"y", ttl=30.0)
    clock.step_wall(-120.0)  # a step back does not extend it
    clock.advance(30.0)
    assert queue.take(1) == []
    assert [op.id for op in queue.dead_letters()] == [expired]


@pytest.mark.parametrize("step", [-60.0, 60.0])
def test_stored_times_and_ages_are_on_the_monotonic_timeline(
    queue, clock: cs.VirtualClock, step: float
) -> None:
    clock.step_wall(step)
    op_id = queue.enqueue("k", b"x", delay=5.0)
    (op,) = queue.peek(1)
    assert op.id == op_id
    assert (op.created_at, op.next_attempt_at) == (START, START + 5.0)
    assert cs.HybridLogicalClock.physical_ms(op.hlc) == int((START + step) * 1000)
    clock.step_wall(-step)
    stats = queue.stats()
    assert stats["oldest_pending_age"] == 0.0  # it showed -60 s
    assert stats["next_due_in"] == 5.0
    clock.advance(1.5)
    assert queue.stats()["oldest_pending_age"] == 1.5


def test_oldest_pending_age_is_never_negative(tmp_path: Path) -> None:
    # A time stored by a process whose clock was ahead (or before a restart): the age
    # from this clock's timeline would be negative; it is 0.
    ahead = cs.VirtualClock(start=START + 60.0)
    with cs.SyncQueue.open(tmp_path / "q.db", clock=ahead) as q:
        q.enqueue("k", b"x")
    behind = cs.VirtualClock(start=START)
    with cs.SyncQueue.open(tmp_path / "q.db", clock=behind) as q:
        assert q.stats()["oldest_pending_age"] == 0.0
        engine = cs.SyncEngine(q, lambda op: None, clock=behind)
        assert engine.stats()["oldest_pending_age"] == 0.0


def test_engine_retry_and_drain_ignore_wall_steps(queue, clock: cs.VirtualClock) -> None:
    calls: list[float] = []

    def transport(op: cs.Operation) -> None:
        calls.append(clock.now())
        if len(calls) == 1:
            raise cs.TransientError("503")

    engine = cs.SyncEngine(queue, transport, backoff=cs.ConstantBackoff(2.0), clock=clock)
    queue.enqueue("k", b"x")
    assert len(engine.process_once().retried) == 1
    clock.step_wall(-20.0)
    clock.advance(2.0)
    assert engine.process_once().successful == 1, "a 2 s retry was not due 2 s later"
    assert calls == [START, START + 2.0]

    queue.enqueue("k", b"later", delay=1000.0)
    for step in (-20.0, 60.0):
        r = elapsed_while_stepping(clock, step, lambda: engine.drain(2.0), queue.close)
        assert r is not None, f"drain(2) did not return 2 s later ({step:+g} s steps)"
        elapsed, summary = r
        assert summary.successful == 0
        assert 2.0 <= elapsed < 5.0, step


@pytest.mark.parametrize("step", STEPS)
def test_monitor_interval_ignores_wall_steps(clock: cs.VirtualClock, step: float) -> None:
    probe = TimedProbe(clock)
    m = cs.NetworkMonitor(probe=probe, interval=0.2, clock=clock)
    try:
        m.start()
        assert probe.wait_calls(1, PATIENCE)
        assert m.wait_for_probes(1)  # its result applied: advancing cannot time it out
        for n in (2, 3):
            clock.step_wall(step)
            clock.advance(0.2)
            assert probe.wait_calls(n, PATIENCE), f"no probe 0.2 s after a {step:+g} s wall step"
            assert m.wait_for_probes(n)
    finally:
        m.stop()
    assert probe.times[:3] == [START, START + 0.2, START + 0.2 + 0.2]
