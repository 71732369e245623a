"""Clocks, and the spdlog -> Python logging bridge."""

from __future__ import annotations

import logging
import threading

import pytest

import cpcsync as cs
from cpcsync import _core


def test_virtual_clock_moves_only_when_advanced() -> None:
    clock = cs.VirtualClock(start=100.0)
    assert clock.now() == 100.0
    assert clock.is_virtual
    clock.advance(2.5)
    assert clock.now() == 102.5
    clock.advance_to(50.0)  # never backwards
    assert clock.now() == 102.5
    with pytest.raises(cs.InvalidArgumentError):
        clock.advance(-1.0)
    with pytest.raises(cs.InvalidArgumentError):
        clock.advance(float("nan"))


def test_system_clock_wall_is_wall_time_and_now_is_monotonic() -> None:
    import time

    clock = cs.SystemClock()
    assert not clock.is_virtual
    assert abs(clock.wall() - time.time()) < 5.0
    # now() is the monotonic boot-time clock (anchored once per boot): it moves with
    # time.monotonic(), whatever the wall clock does.
    before_now, before_mono = clock.now(), time.monotonic()
    later_now, later_mono = clock.now(), time.monotonic()
    assert later_now >= before_now
    assert abs((later_now - before_now) - (later_mono - before_mono)) < 1.0


def test_virtual_clock_step_wall_moves_only_the_wall_reading() -> None:
    clock = cs.VirtualClock(start=100.0)
    assert clock.wall() == clock.now() == 100.0
    clock.step_wall(-20.0)
    assert (clock.now(), clock.wall()) == (100.0, 80.0)
    clock.advance(2.0)
    assert (clock.now(), clock.wall()) == (102.0, 82.0)
    assert "wall=82" in repr(clock)
    with pytest.raises(cs.InvalidArgumentError):
        clock.step_wall(float("inf"))


def test_queue_wait_wakes_when_virtual_time_passes_a_delay() -> None:
    clock = cs.VirtualClock()
    q = cs.SyncQueue.in_memory(clock=clock)
    q.enqueue("k", b"x", delay=30.0)
    result: list[bool] = []
    waiting = threading.Thread(target=lambda: result.append(q.wait(timeout=None)))
    waiting.start()
    assert not q.wait(timeout=0.0)  # not due yet
    clock.advance(30.0)
    waiting.join(timeout=30)
    assert result == [True]
    q.close()


def test_cxx_logs_reach_python_logging_from_any_thread(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cpcsync")
    cs.set_log_level("debug")
    try:
        threads = [
            threading.Thread(target=_core._log, args=("warning", f"from thread {i}"))
            for i in range(4)
        ]
        for t in threads:
            t.start()
        _core._log("info", "from the main thread")
        for t in threads:
            t.join()
        cs.flush_logs()
    finally:
        cs.set_log_level("warning")
    messages = {r.getMessage() for r in caplog.records if r.name == "cpcsync"}
    assert {f"from thread {i}" for i in range(4)} | {"from the main thread"} <= messages
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    assert levels["from the main thread"] == logging.INFO


def test_log_level_filters_in_cxx(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cpcsync")
    cs.set_log_level("error")
    try:
        _core._log("warning", "filtered out")
        _core._log("error", "kept")
        cs.flush_logs()
    finally:
        cs.set_log_level("warning")
    messages = [r.getMessage() for r in caplog.records]
    assert "kept" in messages
    assert "filtered out" not in messages
    with pytest.raises(ValueError):
        cs.set_log_level("loud")
