"""Simulation: deterministic runs of engine + queue + monitor + FaultyTransport."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

import cpcsync as cs
from cpcsync.testing import FaultyTransport, Scenario, Simulation


def _build(
    path: Path, seed: int = 3, max_attempts: int = 50, **ft_kwargs: object
) -> tuple[Simulation, cs.SyncQueue, FaultyTransport]:
    clock = cs.VirtualClock()
    q = cs.SyncQueue.open(path, clock=clock, durability="off")
    m = cs.NetworkMonitor(connected=True, clock=clock)
    ft = FaultyTransport(clock=clock, seed=seed, **ft_kwargs)  # type: ignore[arg-type]
    e = cs.SyncEngine(
        q,
        ft,
        monitor=m,
        clock=clock,
        backoff=cs.ExponentialBackoff(
            base=0.5, factor=2.0, max_delay=30.0, jitter="full", seed=seed
        ),
        max_attempts=max_attempts,
    )
    return Simulation(e, monitor=m, transport=ft), q, ft


def _trace(ft: FaultyTransport) -> list[tuple[float, int, str]]:
    return [(a.time, a.op_id, a.outcome) for a in ft.history]


def _run_scenario(path: Path) -> list[tuple[float, int, str]]:
    sim, q, ft = _build(path, failure_rate=0.3, latency=0.2, jitter=0.1)
    for i in range(60):
        q.enqueue("set", {"i": i}, key=f"k{i % 7}", priority=(25, 50, 75, 100)[i % 4])
    sim.apply(Scenario().wait(3).flap(period=2.0, count=5).partition(10).http_errors(4))
    assert sim.run_until_idle()
    q.close()
    return _trace(ft)


def test_the_same_scenario_replays_identically(tmp_path: Path) -> None:
    first = _run_scenario(tmp_path / "a.db")
    second = _run_scenario(tmp_path / "b.db")
    assert first == second
    assert sum(1 for *_, outcome in first if outcome == "delivered") == 60
    assert any(outcome != "delivered" for *_, outcome in first)


def test_an_hour_of_retries_runs_in_virtual_time(tmp_path: Path) -> None:
    sim, q, ft = _build(tmp_path / "q.db", max_attempts=100_000)
    q.enqueue("set", {"v": 1}, key="a")
    ft.fail_for(3600, "network")
    assert sim.run_until_idle()
    assert sim.now >= 3600
    times = [a.time for a in ft.history]
    assert times == sorted(times)
    assert len(times) > 100  # retried all hour long, capped at 30 s apart
    assert max(b - a for a, b in itertools.pairwise(times)) <= 30.0
    assert ft.outcomes()[-1] == "delivered"


def test_run_for_ends_exactly_and_keeps_pending_work(tmp_path: Path) -> None:
    sim, q, ft = _build(tmp_path / "q.db")
    q.enqueue("set", {"v": 1})
    ft.set_partitioned(True)
    sim.run_for(100.0)
    assert sim.now == 100.0
    assert len(q) == 1
    assert ft.outcomes() and set(ft.outcomes()) == {"network"}
    ft.set_partitioned(False)
    assert sim.run_until_idle()


def test_offline_without_a_scheduled_reconnect_reports_not_idle(tmp_path: Path) -> None:
    sim, q, ft = _build(tmp_path / "q.db")
    assert sim.monitor is not None
    sim.monitor.set_connected(False)
    q.enqueue("set", {"v": 1})
    assert sim.run_until_idle() is False  # nothing else can happen
    assert ft.history == []
    sim.after(50, lambda: sim.monitor.set_connected(True))  # type: ignore[union-attr]
    assert sim.run_until_idle()
    assert ft.history[0].time == 50.0


def test_limit_bounds_a_run(tmp_path: Path) -> None:
    sim, q, ft = _build(tmp_path / "q.db")
    q.enqueue("set", {"v": 1})
    ft.fail_for(1000, "transient")
    assert sim.run_until_idle(limit=60) is False
    assert sim.now <= 60
    assert len(q) == 1


def test_actions_run_in_time_then_schedule_order(tmp_path: Path) -> None:
    sim, _, _ = _build(tmp_path / "q.db")
    seen: list[str] = []
    sim.at(5, lambda: seen.append("b"))
    sim.at(2, lambda: seen.append("a"))
    sim.at(5, lambda: seen.append("c"))
    sim.run_until(10)
    assert seen == ["a", "b", "c"]
    assert sim.pending_actions == 0


def test_latency_moves_virtual_time_during_a_run(tmp_path: Path) -> None:
    sim, q, ft = _build(tmp_path / "q.db", latency=1.5)
    for i in range(4):
        q.enqueue("set", {"i": i}, key="a")
    assert sim.run_until_idle()
    assert [a.time for a in ft.history] == [0.0, 1.5, 3.0, 4.5]
    assert sim.now == 6.0
    assert sim.clock.auto_advance is False  # restored after the run


def test_refuses_a_real_clock_and_a_started_engine(tmp_path: Path) -> None:
    q = cs.SyncQueue.open(tmp_path / "q.db")
    e = cs.SyncEngine(q, FaultyTransport())
    with pytest.raises(cs.InvalidArgumentError):
        Simulation(e)
    clock = cs.VirtualClock()
    q2 = cs.SyncQueue.open(tmp_path / "q2.db", clock=clock)
    e2 = cs.SyncEngine(q2, FaultyTransport(clock=clock), clock=clock)
    e2.start()
    try:
        with pytest.raises(cs.InvalidArgumentError):
            Simulation(e2)
    finally:
        e2.stop()


def test_a_lease_held_elsewhere_leaves_the_run_not_idle(tmp_path: Path) -> None:
    sim, q, ft = _build(tmp_path / "q.db")
    q.enqueue("set", {"v": 1}, key="a")
    q.enqueue("set", {"v": 2}, key="a")
    q.enqueue("set", {"v": 3}, key="b")
    (leased,) = q.take(1)  # op 1 leased outside the engine and never acked
    assert sim.run_until_idle() is False  # lane "a" waits behind its in-flight head
    assert [a.op_id for a in ft.history] == [3]
    q.ack(leased.id)
    assert sim.run_until_idle()
    assert [a.op_id for a in ft.history] == [3, 2]


def test_a_timeout_fault_takes_its_timeout_in_virtual_time(tmp_path: Path) -> None:
    sim, q, ft = _build(tmp_path / "q.db", timeout=7.5)
    q.enqueue("set", {"v": 1})
    ft.fail_next(1, TimeoutError())
    assert sim.run_until_idle()
    first, second = ft.history
    assert (first.outcome, first.latency) == ("network", 7.5)
    assert "timed out" in first.error or "TimeoutError" in first.error
    assert second.time > 7.5  # the retry starts after the timeout and the backoff
