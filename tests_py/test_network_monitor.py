"""cs.NetworkMonitor and cs.TcpProbe from Python: transitions, observers, probing, GIL safety."""

from __future__ import annotations

import faulthandler
import gc
import itertools
import json
import logging
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import cpcsync as cs

PATIENCE = 30.0  # seconds a test waits for another thread before failing (never a sleep)


@pytest.fixture
def watchdog() -> Iterator[None]:
    """Dumps every thread's stack and exits if the test deadlocks."""
    faulthandler.dump_traceback_later(60, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


class Recorder:
    """An observer recording (state, clock time) of each notification."""

    def __init__(self, clock: cs.Clock) -> None:
        self.clock = clock
        self.events: list[tuple[bool, float]] = []
        self.cond = threading.Condition()

    def __call__(self, connected: bool) -> None:
        with self.cond:
            self.events.append((connected, self.clock.now()))
            self.cond.notify_all()

    def wait_for(self, n: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.events) >= n, timeout=PATIENCE)


class ScriptedProbe:
    """A callable probe answering from a script (the last answer repeats)."""

    def __init__(self, script: list[bool | BaseException]) -> None:
        self.script = script
        self.calls = 0
        self.threads: set[int] = set()

    def __call__(self) -> bool:
        answer = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        self.threads.add(threading.get_ident())
        if isinstance(answer, BaseException):
            raise answer
        return answer


# --------------------------------------------------------------------------- manual state


def test_manual_transitions_notify_only_on_change_in_subscription_order() -> None:
    m = cs.NetworkMonitor()
    assert not m.is_connected
    calls: list[str] = []
    m.subscribe(lambda c: calls.append(f"a:{c}"))
    token_b = m.subscribe(lambda c: calls.append(f"b:{c}"))
    m.subscribe(lambda c: calls.append(f"c:{c}"))
    m.set_connected(False)
    assert calls == []
    m.set_connected(True)
    m.set_connected(True)
    assert m.is_connected
    assert calls == ["a:True", "b:True", "c:True"]
    assert m.unsubscribe(token_b)
    assert not m.unsubscribe(token_b)
    m.set_connected(False)
    assert calls == ["a:True", "b:True", "c:True", "a:False", "c:False"]
    stats = m.stats()
    assert stats["transitions"] == 2
    assert stats["observer_calls"] == 5
    assert stats["probing"] is False
    assert stats["pending"] is None
    assert repr(m).startswith("NetworkMonitor(connected=False")


def test_raising_observer_is_logged_and_counted_and_the_others_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="cpcsync")
    m = cs.NetworkMonitor(connected=True)
    seen: list[bool] = []

    def broken(connected: bool) -> None:
        raise RuntimeError("observer bug")

    m.subscribe(broken)
    m.subscribe(seen.append)
    m.set_connected(False)  # must not raise
    m.set_connected(True)
    assert seen == [False, True]
    assert m.observer_errors == 2
    assert m.stats()["observer_errors"] == 2
    cs.flush_logs()
    messages = [r.getMessage() for r in caplog.records if r.name == "cpcsync"]
    assert any("observer bug" in msg and "RuntimeError" in msg for msg in messages), messages


def test_observers_may_call_back_into_the_monitor() -> None:
    m = cs.NetworkMonitor()
    seen: list[bool] = []

    def observer(connected: bool) -> None:
        seen.append(connected)
        assert m.is_connected == connected
        m.unsubscribe(m.subscribe(lambda c: None))
        if connected:
            m.set_connected(False)  # nested: delivered after this round

    m.subscribe(observer)
    m.set_connected(True)
    assert seen == [True, False]


def test_observers_subscribed_and_notified_from_many_threads(watchdog: None) -> None:
    m = cs.NetworkMonitor()
    threads_n, toggles = 6, 300
    barrier = threading.Barrier(threads_n)
    per_observer: dict[int, list[bool]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def make_observer(index: int) -> Callable[[bool], None]:
        def observer(connected: bool) -> None:
            # Takes the monitor's lock with the GIL held: fine, since the monitor
            # never waits for the GIL while holding it.
            m.stats()
            with lock:
                per_observer[index].append(connected)

        return observer

    def worker(index: int) -> None:
        try:
            with lock:
                per_observer[index] = []
            barrier.wait()
            token = m.subscribe(make_observer(index))
            rng = random.Random(index)
            for i in range(toggles):
                m.set_connected(rng.random() < 0.5)
                if i % 50 == 25:  # churn: a short-lived observer
                    m.unsubscribe(m.subscribe(lambda c: None))
            assert m.unsubscribe(token)
        except BaseException as e:
            errors.append(e)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(PATIENCE)
        assert not t.is_alive()
    assert errors == []
    stats = m.stats()
    assert stats["transitions"] > 0
    for seen in per_observer.values():
        # Each observer saw a contiguous run of the transitions: alternating states.
        assert all(a != b for a, b in itertools.pairwise(seen)), seen
    assert stats["observer_errors"] == 0


# --------------------------------------------------------------------------- waiting


def test_wait_until_times_out_on_virtual_time(watchdog: None) -> None:
    clock = cs.VirtualClock()
    m = cs.NetworkMonitor(clock=clock)
    assert m.wait_until(False, timeout=0)
    assert not m.wait_until(True, timeout=0)
    result: list[tuple[bool, float, float]] = []
    done = threading.Event()

    def waiter() -> None:
        start = clock.now()
        reached = m.wait_until(True, timeout=5.0)
        result.append((reached, start, clock.now()))
        done.set()

    t = threading.Thread(target=waiter)
    t.start()
    # Virtual time moves only when we move it; step until the waiter gives up.
    while not done.is_set():
        clock.advance(0.25)
    t.join(PATIENCE)
    reached, start, end = result[0]
    assert not reached
    assert end - start >= 5.0

    woken: list[bool] = []
    t2 = threading.Thread(target=lambda: woken.append(m.wait_until(True)))
    t2.start()
    m.set_connected(True)
    t2.join(PATIENCE)
    assert woken == [True]
    with pytest.raises(cs.InvalidArgumentError):
        m.wait_until(True, timeout=-1.0)


# --------------------------------------------------------------------------- probing


def test_python_probe_hysteresis_on_virtual_clock() -> None:
    clock = cs.VirtualClock(start=100.0)
    probe = ScriptedProbe([True, True, False, False, True, False, False, False, True, True])
    m = cs.NetworkMonitor(probe=probe, interval=5.0, up_after=2, down_after=3, clock=clock)
    rec = Recorder(clock)
    m.subscribe(rec)
    m.start()
    assert m.probing
    assert m.wait_for_probes(1)
    assert not m.is_connected
    for i in range(1, 10):
        clock.advance(5.0)
        assert m.wait_for_probes(i + 1)
    assert probe.calls == 10
    assert threading.get_ident() not in probe.threads  # probes run on C++ threads
    assert rec.events == [(True, 105.0), (False, 135.0), (True, 145.0)]
    stats = m.stats()
    assert stats["probes"] == 10
    assert stats["probe_failures"] == 5
    assert stats["last_transition_at"] == 145.0
    m.stop()
    assert not m.probing
    clock.advance(60.0)
    assert probe.calls == 10


def test_raising_probe_counts_as_failure_and_probing_goes_on() -> None:
    clock = cs.VirtualClock()
    probe = ScriptedProbe([ValueError("probe bug"), True])
    m = cs.NetworkMonitor(connected=True, probe=probe, clock=clock)
    m.start()
    assert m.wait_for_probes(1)
    assert not m.is_connected
    clock.advance(5.0)
    assert m.wait_for_probes(2)
    assert m.is_connected
    assert m.stats()["probe_failures"] == 1
    m.stop()


def test_report_failure_probes_at_once() -> None:
    clock = cs.VirtualClock()
    probe = ScriptedProbe([True, False, True])
    m = cs.NetworkMonitor(probe=probe, interval=60.0, clock=clock)
    m.report_failure()  # not probing yet: counted only
    assert probe.calls == 0
    m.start()
    assert m.wait_for_probes(1)
    assert m.is_connected
    m.report_failure()
    assert m.wait_for_probes(2)  # without moving the clock
    assert not m.is_connected
    m.report_success()
    assert m.wait_for_probes(3)
    assert m.is_connected
    assert clock.now() == 0.0
    stats = m.stats()
    assert (stats["passive_failures"], stats["passive_successes"]) == (2, 1)
    m.stop()


def test_without_a_probe_only_set_connected_changes_the_state() -> None:
    clock = cs.VirtualClock()
    m = cs.NetworkMonitor(connected=True, clock=clock)
    m.start()  # no-op
    assert not m.probing
    for _ in range(3):
        m.report_failure()
    clock.advance(100.0)
    assert m.is_connected
    assert m.stats()["transitions"] == 0


def test_hung_python_probe_times_out_on_the_virtual_clock(watchdog: None) -> None:
    clock = cs.VirtualClock()
    entered, release = threading.Event(), threading.Event()

    def probe() -> bool:
        entered.set()
        release.wait(PATIENCE)
        return True

    m = cs.NetworkMonitor(connected=True, probe=probe, probe_timeout=2.0, clock=clock)
    m.start()
    assert entered.wait(PATIENCE)
    clock.advance(2.0)
    assert m.wait_for_probes(1)
    assert not m.is_connected
    assert m.stats()["probe_timeouts"] == 1
    m.stop()
    release.set()


def test_stop_returns_promptly_during_a_blocked_python_probe(watchdog: None) -> None:
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()

    def probe() -> bool:
        entered.set()
        release.wait(PATIENCE)
        finished.set()
        return True

    m = cs.NetworkMonitor(probe=probe, interval=0.05)  # SystemClock
    m.start()
    assert entered.wait(PATIENCE)
    started = time.monotonic()
    m.stop()
    assert time.monotonic() - started < 2.0
    assert not m.probing
    assert not m.is_connected  # the abandoned check's answer is ignored
    release.set()
    assert finished.wait(PATIENCE)
    del m
    gc.collect()


def test_dropping_a_probing_monitor_stops_its_thread(watchdog: None) -> None:
    calls = threading.Semaphore(0)

    def probe() -> bool:
        calls.release()
        return True

    seen: list[bool] = []
    # probe_timeout well above the interval: under load a 1 ms timeout (the default,
    # the interval) would count slow answers as failures and flip the state.
    m = cs.NetworkMonitor(probe=probe, interval=0.001, probe_timeout=30.0)
    m.subscribe(seen.append)
    m.start()
    for _ in range(5):
        assert calls.acquire(timeout=PATIENCE)
    del m  # joins the monitor's thread with the GIL released
    gc.collect()
    assert seen == [True]


def test_flap_damping_defers_and_bounds_notifications() -> None:
    clock = cs.VirtualClock()
    m = cs.NetworkMonitor(clock=clock, min_transition_interval=10.0)
    rec = Recorder(clock)
    token = m.subscribe(rec)
    m.set_connected(True)
    clock.advance_to(1.0)
    m.set_connected(False)
    assert m.is_connected
    assert m.stats()["pending"] is False
    clock.advance_to(10.0)  # the window ends: the monitor's thread applies it
    assert m.wait_until(False)
    assert rec.wait_for(2)
    assert rec.events == [(True, 0.0), (False, 10.0)]

    # The spacing is checked on the monitor's own transition times: an observer reading
    # the clock when it runs may run late (a slow machine, ASan) while this thread
    # keeps advancing the clock, and so see two transitions closer than they were.
    class TransitionTime:
        def now(self) -> float:
            return float(m.stats()["last_transition_at"])

    applied = Recorder(TransitionTime())  # type: ignore[arg-type]
    m.unsubscribe(token)
    m.subscribe(applied)
    rng = random.Random(3)
    last = False
    for _ in range(500):  # 50 s of flapping every 0.1 s
        last = rng.random() < 0.5
        m.set_connected(last)
        clock.advance(0.1)
        # every transition applied so far is delivered before time moves on
        assert applied.wait_for(m.stats()["transitions"] - 2)
    clock.advance(10.0)
    assert m.wait_until(last)
    assert applied.wait_for(m.stats()["transitions"] - 2)
    times = [10.0, *(t for _, t in applied.events)]
    assert len(times) <= int(clock.now() / 10.0) + 1  # span from t=0, window 10 s
    assert all(b - a >= 10.0 - 1e-9 for a, b in itertools.pairwise(times)), times
    assert m.stats()["damped"] >= 2


def test_bad_arguments() -> None:
    with pytest.raises(TypeError):
        cs.NetworkMonitor(connected=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cs.NetworkMonitor(probe=42)  # type: ignore[arg-type]
    for kwargs in (
        {"interval": 0.0},
        {"up_after": 0},
        {"down_after": 0},
        {"min_transition_interval": -1.0},
        {"probe_timeout": 0.0},
    ):
        with pytest.raises(cs.InvalidArgumentError):
            cs.NetworkMonitor(**kwargs)  # type: ignore[arg-type]
    m = cs.NetworkMonitor()
    with pytest.raises(TypeError):
        m.subscribe(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        m.set_connected(None)  # type: ignore[arg-type]
    with pytest.raises(cs.InvalidArgumentError):
        cs.TcpProbe("127.0.0.1", 0)
    with pytest.raises(cs.InvalidArgumentError):
        cs.TcpProbe("127.0.0.1", 80, timeout=0)


# --------------------------------------------------------------------------- TcpProbe


def _listener() -> tuple[socket.socket, int]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    return srv, srv.getsockname()[1]


def test_tcp_probe_against_a_socket_opened_then_closed() -> None:
    srv, port = _listener()
    probe = cs.TcpProbe("127.0.0.1", port, timeout=2.0)
    assert isinstance(probe, cs.Probe)
    assert (probe.host, probe.port, probe.timeout) == ("127.0.0.1", port, 2.0)
    assert probe()
    assert probe.check(2.0)
    assert f"{port}" in repr(probe)
    srv.close()
    started = time.monotonic()
    assert not probe()  # refused
    assert time.monotonic() - started < 2.0


def test_tcp_probe_drives_a_monitor() -> None:
    srv, port = _listener()
    clock = cs.VirtualClock()
    m = cs.NetworkMonitor(probe=cs.TcpProbe("127.0.0.1", port), clock=clock)
    rec = Recorder(clock)
    m.subscribe(rec)
    m.start()
    assert m.wait_for_probes(1)
    assert m.is_connected
    srv.close()
    m.report_failure()  # probe at once
    assert m.wait_for_probes(2)
    assert not m.is_connected
    assert rec.events == [(True, 0.0), (False, 0.0)]
    m.stop()


# --------------------------------------------------------------------------- issue 13


def test_observers_of_two_monitors_calling_each_other_from_two_threads_do_not_deadlock() -> None:
    # Each thread delivers its own monitor's transition and, inside that round, changes
    # the other monitor, whose round the other thread is running. Waiting for that
    # delivery deadlocked both on the first try.
    a = cs.NetworkMonitor(connected=False)
    b = cs.NetworkMonitor(connected=False)
    barrier = threading.Barrier(2, timeout=PATIENCE)

    def crossing(other: cs.NetworkMonitor) -> Callable[[bool], None]:
        first = [True]

        def observer(connected: bool) -> None:
            if not first[0]:
                return
            first[0] = False
            barrier.wait()  # both threads are inside an observer now
            other.set_connected(False)

        return observer

    a.subscribe(crossing(b))
    b.subscribe(crossing(a))
    threads = [threading.Thread(target=m.set_connected, args=(True,), daemon=True) for m in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(PATIENCE)  # bounded: a regression fails here instead of hanging the suite
    assert not any(t.is_alive() for t in threads), "set_connected() deadlocked"
    assert a.wait_until(False, timeout=0.0) and b.wait_until(False, timeout=0.0)
    assert a.stats()["transitions"] == b.stats()["transitions"] == 2


def test_interval_below_one_millisecond_is_refused() -> None:
    for bad in (1e-9, 0.0009):
        with pytest.raises(cs.InvalidArgumentError, match="interval"):
            cs.NetworkMonitor(probe=lambda: True, interval=bad)
    cs.NetworkMonitor(probe=lambda: True, interval=0.001)


_SPIN_CHILD = """
import json, sys
import cpcsync as cs
sys.path.insert(0, sys.argv[1])
from _helpers import TimedProbe

clock = cs.VirtualClock(start=1e17)
probe = TimedProbe(clock)
m = cs.NetworkMonitor(probe=probe, interval=1.0, clock=clock)
m.start()
assert probe.wait_calls(1, 30.0)
# No second probe while time stands still (a spinning monitor shows itself within
# this bounded wait).
probe.wait_calls(2, 0.3)
print(json.dumps(probe.times[:2]), flush=True)
assert m.wait_for_probes(1)
clock.advance(16.0)  # one step of the double
assert probe.wait_calls(2, 30.0)
m.stop()
print(json.dumps(probe.times), flush=True)
"""


def _text(data: bytes | str | None) -> str:
    return data.decode() if isinstance(data, bytes) else (data or "")


def test_probe_times_strictly_advance_on_a_clock_where_now_plus_interval_is_now() -> None:
    # At 1e17 s a double has steps of 16 s: now + 1 == now. The monitor spun at 100%
    # CPU holding its mutex (so nothing could stop it), probing again and again at one
    # instant. In a child process, so a regression fails (timeout) instead of hanging.
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _SPIN_CHILD, str(Path(__file__).parent)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        out, err, hung = proc.stdout, proc.stderr, False
    except subprocess.TimeoutExpired as e:  # the child is killed
        out, err, hung = _text(e.stdout), _text(e.stderr), True
    lines = out.splitlines()
    assert lines, err
    first = json.loads(lines[0])
    assert len(first) == 1, f"probed twice at t={first[0]:g} without time moving"
    assert not hung and proc.returncode == 0, err
    times = json.loads(lines[-1])
    assert len(times) >= 2
    assert all(x < y for x, y in itertools.pairwise(times)), times
