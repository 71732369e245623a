"""FaultyTransport from Python: fault specs, raising when called, engines, history."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest

import cpcsync as cs
from cpcsync.testing import FaultyTransport


@pytest.fixture
def clock() -> cs.VirtualClock:
    return cs.VirtualClock(start=100.0)


@pytest.fixture
def queue(clock: cs.VirtualClock) -> Iterator[cs.SyncQueue]:
    q = cs.SyncQueue.in_memory(clock=clock)
    yield q
    q.close()


def _one_op(queue: cs.SyncQueue, key: str = "a", priority: int = 50) -> cs.Operation:
    queue.enqueue("set", {"v": 1}, key=key, priority=priority)
    (op,) = queue.take(1)
    return op


@pytest.mark.parametrize(
    ("spec", "raised"),
    [
        (False, cs.TransientError),
        ("transient", cs.TransientError),
        ("network", cs.NetworkError),
        ("timeout", cs.NetworkError),
        ("reset", cs.NetworkError),
        ("permanent", cs.PermanentError),
        (cs.PermanentError("HTTP 400"), cs.PermanentError),
        (TimeoutError, cs.NetworkError),
        (ConnectionResetError("peer"), cs.NetworkError),
        (cs.TransientError("HTTP 503"), cs.TransientError),
    ],
)
def test_called_directly_a_fault_raises_what_a_transport_would(
    queue: cs.SyncQueue, spec: object, raised: type[Exception]
) -> None:
    ft = FaultyTransport()
    ft.fail_next(1, spec)
    op = _one_op(queue)
    with pytest.raises(raised):
        ft(op)
    ft(op)  # the fault was used up: delivered, nothing raised
    assert ft.outcomes()[-1] == "delivered"


def test_retry_after_and_conflict_round_trip_their_data(queue: cs.SyncQueue) -> None:
    ft = FaultyTransport()
    ft.fail_next(1, cs.RetryAfter(12.5))
    ft.fail_next(1, cs.ConflictError({"v": 9}, remote_timestamp=77, remote_version=4))
    op = _one_op(queue)
    with pytest.raises(cs.RetryAfter) as ra:
        ft(op)
    assert ra.value.seconds == 12.5
    with pytest.raises(cs.ConflictError) as ce:
        ft(op)
    assert (ce.value.remote, ce.value.remote_timestamp, ce.value.remote_version) == (
        {"v": 9},
        77,
        4,
    )


def test_messages_of_injected_exceptions_reach_last_error(queue: cs.SyncQueue) -> None:
    ft = FaultyTransport(pattern=[cs.TransientError("HTTP 503 from the edge")])
    e = cs.SyncEngine(queue, ft, backoff=cs.ConstantBackoff(1.0), max_attempts=3)
    queue.enqueue("set", {"v": 1}, key="a")
    e.process_once()
    (op,) = queue.peek(1)
    assert "HTTP 503 from the edge" in op.last_error


@pytest.mark.parametrize(
    "bad",
    ["explode", 3.5, object(), ["transient"]],
)
def test_bad_fault_specs_are_refused(bad: object) -> None:
    ft = FaultyTransport()
    with pytest.raises((TypeError, cs.InvalidArgumentError)):
        ft.fail_next(1, bad)
    with pytest.raises((TypeError, cs.InvalidArgumentError)):
        FaultyTransport(pattern=[bad])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_rate": 1.5},
        {"failure_rate": -0.1},
        {"latency": -1.0},
        {"latency": float("nan")},
        {"jitter": float("inf")},
    ],
)
def test_bad_options_raise_invalid_argument(kwargs: dict[str, float]) -> None:
    with pytest.raises(cs.InvalidArgumentError):
        FaultyTransport(**kwargs)  # type: ignore[arg-type]


def test_a_success_spec_is_not_a_failure() -> None:
    with pytest.raises(cs.InvalidArgumentError):
        FaultyTransport().fail_next(1, "ok")
    with pytest.raises(cs.InvalidArgumentError):
        FaultyTransport().fail_next(-1)


def test_wraps_a_python_transport_and_records_each_attempt(
    queue: cs.SyncQueue, clock: cs.VirtualClock
) -> None:
    sent: list[tuple[int, object]] = []
    ft = FaultyTransport(lambda op: sent.append((op.id, op.json())), clock=clock)
    e = cs.SyncEngine(queue, ft, backoff=cs.ConstantBackoff(5.0), clock=clock)
    ids = [queue.enqueue("set", {"n": i}, key="k", priority=cs.Priority.HIGH) for i in range(3)]
    ft.fail_next(1, "reset")
    e.process_once()  # id 0 fails; the lane waits for its retry
    clock.advance(5)
    e.drain()
    assert sent == [(ids[0], {"n": 0}), (ids[1], {"n": 1}), (ids[2], {"n": 2})]
    h = ft.history
    assert [(a.op_id, a.outcome, a.time) for a in h] == [
        (ids[0], "network", 100.0),
        (ids[0], "delivered", 105.0),
        (ids[1], "delivered", 105.0),
        (ids[2], "delivered", 105.0),
    ]
    assert all(a.key == "k" and a.priority == cs.Priority.HIGH for a in h)
    assert "reset" in h[0].error
    ft.clear_history()
    assert ft.history == []


def test_inner_exceptions_are_classified_like_any_transport(queue: cs.SyncQueue) -> None:
    def refuse(op: cs.Operation) -> None:
        raise cs.PermanentError("HTTP 422")

    ft = FaultyTransport(refuse)
    e = cs.SyncEngine(queue, ft)
    queue.enqueue("set", {"v": 1})
    summary = e.process_once()
    assert len(summary.failed) == 1
    assert ft.outcomes() == ["permanent"]
    assert "HTTP 422" in ft.history[0].error


def test_partition_context_manager_restores_even_on_error(clock: cs.VirtualClock) -> None:
    ft = FaultyTransport(clock=clock)
    with pytest.raises(RuntimeError), ft.partition():
        assert ft.partitioned
        raise RuntimeError("boom")
    assert not ft.partitioned


def test_scheduled_partition_and_flap_follow_the_clock(clock: cs.VirtualClock) -> None:
    ft = FaultyTransport(clock=clock)
    ft.add_partition(110.0, 120.0)
    ft.flap(period=2.0, count=2, start=130.0)
    states = {}
    for t in (100, 110, 119.5, 120, 130, 132, 134, 136):
        clock.advance_to(t)
        states[t] = ft.partitioned
    assert states == {
        100: False,
        110: True,
        119.5: True,
        120: False,
        130: True,
        132: False,
        134: True,
        136: False,
    }


def test_same_seed_same_faults(queue: cs.SyncQueue) -> None:
    op = _one_op(queue)

    def run(seed: int) -> list[str]:
        ft = FaultyTransport(failure_rate=0.5, seed=seed)
        for _ in range(200):
            with contextlib.suppress(cs.TransientError):
                ft(op)
        return ft.outcomes()

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_latency_holds_a_threaded_engine_until_the_clock_moves(
    queue: cs.SyncQueue, clock: cs.VirtualClock
) -> None:
    ft = FaultyTransport(latency=3.0, clock=clock)
    e = cs.SyncEngine(queue, ft, clock=clock)
    delivered = threading.Event()
    e.on("delivered", lambda info: delivered.set())
    queue.enqueue("set", {"v": 1})
    e.start()
    try:
        assert ft.wait_for_calls(1, timeout=10)  # the call began at t=100
        clock.advance(2.0)
        assert not delivered.is_set()
        assert ft.history == []  # the call is still waiting: recorded when it ends
        clock.advance(1.0)
        assert delivered.wait(10)
        assert ft.history[0].latency == 3.0
    finally:
        ft.close()
        e.stop()


def test_close_releases_a_worker_stuck_in_latency(
    queue: cs.SyncQueue, clock: cs.VirtualClock
) -> None:
    ft = FaultyTransport(latency=1e9, clock=clock)
    e = cs.SyncEngine(queue, ft, clock=clock)
    queue.enqueue("set", {"v": 1})
    e.start()
    ft.close()
    assert e.stop(drain=True, timeout=10)
    assert len(queue) == 0


def test_heal_and_failure_rate_setters(queue: cs.SyncQueue) -> None:
    ft = FaultyTransport()
    ft.set_failure_rate(1.0, "permanent")
    op = _one_op(queue)
    with pytest.raises(cs.PermanentError):
        ft(op)
    ft.heal()
    ft(op)
    assert ft.outcomes() == ["permanent", "delivered"]
