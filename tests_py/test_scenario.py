"""Scenario: building timelines and applying them on the virtual clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import cpcsync as cs
from cpcsync.testing import FaultyTransport, Scenario, Simulation, Step


def test_steps_follow_the_cursor_and_absolute_times() -> None:
    s = (
        Scenario()
        .offline(30)
        .flap(period=2, count=2)
        .http_errors(3, status=503)
        .partition(30, at=60)
        .latency(0.3, duration=60)
        .wait(5)
        .resets(1)
    )
    assert s.steps == [
        Step(0, "offline"),
        Step(30, "online"),
        Step(30, "offline"),
        Step(32, "online"),
        Step(34, "offline"),
        Step(36, "online"),
        Step(38, "http_errors", (3, 503)),
        Step(60, "partition"),
        Step(90, "heal"),
        Step(90, "latency", (0.3, 0.0)),
        Step(150, "latency", (0.0, 0.0)),
        Step(155, "reset", (1.0,)),
        Step(156, "unreset"),
    ]
    assert s.duration == 156


@pytest.mark.parametrize(
    "build",
    [
        lambda s: s.offline(-1),
        lambda s: s.offline(float("nan")),
        lambda s: s.flap(period=0, count=3),
        lambda s: s.flap(period=1, count=-1),
        lambda s: s.flap(period=1, count=2.5),
        lambda s: s.http_errors(3, status=200),
        lambda s: s.http_errors(-1),
        lambda s: s.latency(-0.1),
        lambda s: s.wait("soon"),
        lambda s: s.partition(5, at=-3),
        lambda s: s.fail_next(True),
    ],
)
def test_bad_steps_raise_invalid_argument(build: Any) -> None:
    with pytest.raises(cs.InvalidArgumentError):
        build(Scenario())


def _sim(
    tmp_path: Path, with_monitor: bool = True
) -> tuple[Simulation, cs.SyncQueue, FaultyTransport]:
    clock = cs.VirtualClock()
    q = cs.SyncQueue.open(tmp_path / "q.db", clock=clock, durability="off")
    m = cs.NetworkMonitor(connected=True, clock=clock) if with_monitor else None
    ft = FaultyTransport(clock=clock)
    e = cs.SyncEngine(
        q, ft, monitor=m, clock=clock, backoff=cs.ConstantBackoff(1.0), max_attempts=1000
    )
    return Simulation(e, monitor=m, transport=ft), q, ft


def test_offline_windows_see_no_attempts_and_online_resumes(tmp_path: Path) -> None:
    sim, q, ft = _sim(tmp_path)
    for i in range(5):
        q.enqueue("set", {"i": i}, key=f"k{i}")
    sim.apply(Scenario().offline(30).wait(0.5).flap(period=3, count=4))
    sim.at(0.5, lambda: q.enqueue("set", {"late": True}))  # arrives mid-flap
    assert sim.run_until_idle()
    windows = [(0, 30)] + [(30.5 + 6 * i, 33.5 + 6 * i) for i in range(4)]
    for a in ft.history:
        assert not any(lo <= a.time < hi for lo, hi in windows), a
    assert ft.outcomes().count("delivered") == 6
    assert ft.history[0].time == 30.0


def test_partition_fails_calls_and_the_monitor_is_not_told(tmp_path: Path) -> None:
    sim, q, ft = _sim(tmp_path)
    q.enqueue("set", {"v": 1})
    sim.apply(Scenario().partition(10))
    assert sim.run_until_idle()
    assert sim.monitor is not None and sim.monitor.is_connected
    assert ft.outcomes()[:10] == ["network"] * 10  # attempts at t=0..9, 1 s apart
    assert ft.outcomes()[-1] == "delivered"
    assert ft.history[-1].time == 10.0


def test_http_errors_5xx_retry_and_4xx_dead_letter(tmp_path: Path) -> None:
    sim, q, ft = _sim(tmp_path)
    q.enqueue("set", {"v": 1}, key="a")
    sim.apply(Scenario().http_errors(2, status=503))
    assert sim.run_until_idle()
    assert ft.outcomes() == ["transient", "transient", "delivered"]
    assert "HTTP 503" in ft.history[0].error

    q.enqueue("set", {"v": 2}, key="a")
    sim.apply(Scenario().http_errors(1, status=422))
    assert sim.run_until_idle()
    assert ft.outcomes()[-1] == "permanent"
    assert [d.id for d in q.dead_letters()] == [2]


def test_latency_and_resets_windows(tmp_path: Path) -> None:
    sim, q, ft = _sim(tmp_path)
    sim.apply(Scenario().latency(2.0, duration=10).resets(3))
    for i in range(3):
        sim.at(i * 4.0, lambda i=i: q.enqueue("set", {"i": i}))
    sim.at(11.0, lambda: q.enqueue("set", {"i": 99}))
    sim.run_until(20)  # run_until_idle would stop at the first empty queue
    assert len(q) == 0
    by_time = [(a.time, a.latency, a.outcome) for a in ft.history]
    assert by_time[0] == (0.0, 2.0, "delivered")
    assert (11.0, 0.0, "network") in by_time  # inside the reset window
    assert by_time[-1][2] == "delivered" and by_time[-1][0] >= 13.0


def test_fail_next_step_uses_any_fault_spec(tmp_path: Path) -> None:
    sim, q, ft = _sim(tmp_path)
    q.enqueue("set", {"v": 1})
    sim.apply(Scenario().fail_next(1, cs.RetryAfter(7)))
    assert sim.run_until_idle()
    assert ft.outcomes() == ["retry_after", "delivered"]
    assert ft.history[1].time == 7.0


def test_transport_steps_need_a_transport(tmp_path: Path) -> None:
    clock = cs.VirtualClock()
    q = cs.SyncQueue.open(tmp_path / "q.db", clock=clock)
    e = cs.SyncEngine(q, FaultyTransport(clock=clock), clock=clock)
    sim = Simulation(e)  # no transport given to the simulation
    sim.apply(Scenario().partition(5))
    with pytest.raises(cs.InvalidArgumentError, match="transport"):
        sim.run_for(1)


def test_offline_without_a_monitor_partitions_the_transport(tmp_path: Path) -> None:
    sim, q, ft = _sim(tmp_path, with_monitor=False)
    q.enqueue("set", {"v": 1})
    sim.apply(Scenario().offline(4))
    assert sim.run_until_idle()
    assert ft.outcomes() == ["network"] * 4 + ["delivered"]


def test_played_in_real_time_against_a_fault_proxy(sync_server: Any, fault_proxy: Any) -> None:
    """The same timeline drives a real proxy: every step is applied in order (proxy
    disabled and enabled, toxics added and removed), a 503 burst is armed on the
    server, and it all ends healed."""
    host, port = fault_proxy.address
    url = f"http://{host}:{port}/ops"
    s = Scenario().offline(0.3).http_errors(2, status=503).latency(0.05, duration=0.2).resets(0.1)
    player = s.play(fault_proxy, server=sync_server)
    assert player.wait(timeout=30)
    assert player.errors == []
    assert [st.action for st in player.applied] == [st.action for st in s.steps]
    assert fault_proxy.enabled and fault_proxy.toxics == []
    # The 503 burst is still armed on the server: the next two POSTs get it.
    with cs.HttpTransport(url, timeout=5.0) as t:
        q = cs.SyncQueue.in_memory()
        q.enqueue("set", {"v": 1}, key="a")
        (op,) = q.take(1)
        for _ in range(2):
            with pytest.raises(cs.TransientError):
                t(op)
        t(op)
    assert sync_server.applied["a"]["value"] == {"v": 1}


def test_play_refuses_steps_a_proxy_cannot_do(fault_proxy: Any) -> None:
    with pytest.raises(cs.InvalidArgumentError, match="FaultyTransport"):
        Scenario().fail_next(1).play(fault_proxy)
    with pytest.raises(cs.InvalidArgumentError, match="server"):
        Scenario().http_errors(1).play(fault_proxy)


def test_player_stop_cuts_the_timeline_short(fault_proxy: Any) -> None:
    with Scenario().offline(0.01).wait(3600).online().play(fault_proxy) as player:
        pass  # leaving the block stops the player long before the last step's hour
    assert player.done.is_set()
    assert len(player.applied) < 3
