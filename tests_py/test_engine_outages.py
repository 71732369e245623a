"""Outages are not the op's fault; Retry-After and repeated conflicts are bounded (issue 13).

DESIGN.md, "Outages are not the op's fault": a failure where no server answered never
dead-letters an op by itself; answered failures (5xx, TransientError, PermanentError,
409 loops) count toward max_attempts as before.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import pytest

import cpcsync as cs
from cpcsync.testing import FaultProxy, FaultyTransport, Simulation, SyncServer


def _engine(
    path: Path | None,
    transport: Any,
    *,
    clock: cs.VirtualClock,
    max_attempts: int = 3,
    backoff: cs.BackoffStrategy | None = None,
    **kwargs: Any,
) -> tuple[cs.SyncEngine, cs.SyncQueue]:
    q = (
        cs.SyncQueue.open(path, clock=clock, durability="off")
        if path is not None
        else cs.SyncQueue.in_memory(clock=clock)
    )
    # drain() on this thread owns time: its waits jump the clock (see VirtualClock)
    clock.auto_advance = True
    e = cs.SyncEngine(
        q,
        transport,
        clock=clock,
        backoff=backoff or cs.ExponentialBackoff(base=0.5, max_delay=30.0, jitter="none"),
        max_attempts=max_attempts,
        **kwargs,
    )
    return e, q


def test_a_ten_minute_outage_dead_letters_nothing_and_delivers_everything_after(
    tmp_path: Path,
) -> None:
    clock = cs.VirtualClock(1_000.0)
    ft = FaultyTransport(clock=clock)
    engine, q = _engine(tmp_path / "q.db", ft, clock=clock, max_attempts=3)
    ids = [q.enqueue("set", {"i": i}, key=f"k{i % 5}") for i in range(20)]
    ft.fail_for(600, "network")  # no monitor, no probe: only the transport knows
    sim = Simulation(engine, transport=ft)
    assert sim.run_until_idle()
    assert q.dead_letters() == []
    delivered = [a.op_id for a in ft.history if a.outcome == "delivered"]
    assert sorted(delivered) == ids
    assert all(a.time >= 1_600.0 for a in ft.history if a.outcome == "delivered")
    # The whole engine backed off: one probe per backoff step (0.5, 1, 2, ... 30, 30, ...
    # seconds over 600 s is about 25 steps), not 20 ops each failing at its own pace.
    failed = [a for a in ft.history if a.outcome != "delivered"]
    assert 10 <= len(failed) <= 40, len(failed)
    stats = engine.stats()
    assert stats["network_failures"] == len(failed)
    assert stats["dead_lettered"] == 0
    assert stats["outage"]["consecutive_failures"] == 0  # the answer opened the gate
    q.close()


def test_a_server_answering_500_still_dead_letters_at_max_attempts() -> None:
    clock = cs.VirtualClock(1_000.0)
    ft = FaultyTransport(clock=clock)
    engine, q = _engine(None, ft, clock=clock, max_attempts=3)
    op = q.enqueue("set", {"v": 1}, key="a")
    ft.fail_for(600, "transient")  # an answer: 5xx
    assert Simulation(engine, transport=ft).run_until_idle()
    [dead] = q.dead_letters()
    assert dead.id == op
    assert dead.last_error is not None and "gave up after 3 attempts" in dead.last_error
    assert len(ft.history) == 3
    assert engine.stats()["network_failures"] == 0


def test_answered_and_network_failures_mixed_count_only_the_answered() -> None:
    clock = cs.VirtualClock(1_000.0)

    outcomes: list[BaseException | None] = [
        ConnectionRefusedError("refused"),
        cs.TransientError("503"),
        TimeoutError("read timed out"),
        ConnectionResetError("reset"),
        cs.TransientError("502"),
        None,
    ]

    def transport(op: cs.Operation) -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    engine, q = _engine(None, transport, clock=clock, max_attempts=3)
    q.enqueue("set", {"v": 1}, key="a")
    retries: list[dict[str, Any]] = []
    engine.on("retry", retries.append)
    summary = engine.drain(timeout=3600)
    assert summary.successful == 1 and summary.failed == []
    assert [r["network"] for r in retries] == [True, False, True, True, False]
    assert q.dead_letters() == []
    stats = engine.stats()
    assert (stats["retried"], stats["network_failures"]) == (5, 3)


def test_outage_through_a_disabled_fault_proxy_loses_nothing() -> None:
    # The reproduction: HttpTransport through a disabled FaultProxy with
    # ConstantBackoff(0.05): 20 enqueued, 0 applied, 20 dead before the fix.
    with SyncServer() as server:
        host, port = "127.0.0.1", server.port
        with FaultProxy(upstream=(host, port)) as proxy:
            phost, pport = proxy.address
            transport = cs.HttpTransport(f"http://{phost}:{pport}/ops", timeout=2.0)
            q = cs.SyncQueue.in_memory()
            engine = cs.SyncEngine(q, transport, backoff=cs.ConstantBackoff(0.05), max_attempts=3)
            enough_failures = threading.Event()

            def on_retry(info: dict[str, Any]) -> None:
                if engine.stats()["network_failures"] >= 10:
                    enough_failures.set()

            engine.on("retry", on_retry)
            proxy.disable()
            for i in range(20):
                q.enqueue("set", {"i": i}, key=f"k{i}")
            engine.start()
            try:
                assert enough_failures.wait(60), engine.stats()
                proxy.enable()
                assert engine.stop(drain=True, timeout=60)
            finally:
                engine.stop(timeout=10)
                transport.close()
            assert q.dead_letters() == []
            assert len(server.applied) == 20
            q.close()


# --------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(("seconds", "gap"), [(0.0, 2.0), (1e-9, 0.1), (0.5, 0.5)])
def test_a_zero_or_tiny_retry_after_never_makes_a_tight_loop(seconds: float, gap: float) -> None:
    clock = cs.VirtualClock(1_000.0)
    calls: list[float] = []

    def transport(op: cs.Operation) -> None:
        calls.append(clock.now())
        raise cs.RetryAfter(seconds)

    engine, q = _engine(
        None, transport, clock=clock, max_attempts=10, backoff=cs.ConstantBackoff(2.0)
    )
    q.enqueue("set", {"v": 1}, key="a")
    summary = engine.drain(timeout=3600)
    assert len(summary.failed) == 1  # an answered failure: counted
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    # zero waits the backoff (2 s); below 0.1 s waits 0.1 s; anything else exactly
    assert gaps == pytest.approx([gap] * 9), gaps


def test_a_zero_retry_after_never_loops_even_with_a_zero_backoff() -> None:
    clock = cs.VirtualClock(1_000.0)
    calls: list[float] = []

    def transport(op: cs.Operation) -> None:
        calls.append(clock.now())
        raise cs.RetryAfter(0)

    engine, q = _engine(
        None, transport, clock=clock, max_attempts=10, backoff=cs.ConstantBackoff(0.0)
    )
    q.enqueue("set", {"v": 1}, key="a")
    engine.drain(timeout=3600)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(gaps) == 9 and min(gaps) >= 0.1 - 1e-9, gaps


def test_a_huge_retry_after_is_clamped_to_max_retry_after() -> None:
    clock = cs.VirtualClock(1_000.0)
    raised = [cs.RetryAfter(1e20), None]

    def transport(op: cs.Operation) -> None:
        outcome = raised.pop(0)
        if outcome is not None:
            raise outcome

    engine, q = _engine(None, transport, clock=clock, max_retry_after=120.0)
    op = q.enqueue("set", {"v": 1}, key="a")
    summary = engine.process_once()
    assert summary.retried == [(op, 120.0)]
    got = q.get(op)
    assert got is not None and got.next_attempt_at == pytest.approx(1_120.0)
    with pytest.raises(cs.InvalidArgumentError, match="max_retry_after"):
        _engine(None, transport, clock=clock, max_retry_after=0.0)


def test_a_429_with_a_past_http_date_backs_off_end_to_end() -> None:
    # Before: parse -> 0.0 -> RetryAfter(0) -> 10 attempts in ~10 ms, then dead.
    with SyncServer() as server:
        server.fail_next(3, status=429, retry_after="Thu, 01 Jan 2015 00:00:00 GMT")
        transport = cs.HttpTransport(server.url, timeout=5.0)
        clock = cs.VirtualClock(1_000.0)
        calls: list[float] = []

        def counting(op: cs.Operation) -> None:
            calls.append(clock.now())
            transport(op)

        engine, q = _engine(
            None, counting, clock=clock, max_attempts=10, backoff=cs.ConstantBackoff(1.5)
        )
        q.enqueue("set", {"v": 1}, key="a")
        summary = engine.drain(timeout=3600)
        transport.close()
        assert summary.successful == 1
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        assert gaps == pytest.approx([1.5, 1.5, 1.5])


# --------------------------------------------------------- repeated conflicts


def test_a_server_that_keeps_reporting_a_conflict_is_backed_off_then_named() -> None:
    clock = cs.VirtualClock(1_000.0)
    calls: list[float] = []

    def transport(op: cs.Operation) -> None:
        calls.append(clock.now())
        # an older remote value: LastWriteWins keeps the local one and resends
        raise cs.ConflictError({"v": 0}, remote_timestamp=1, remote_version=7)

    engine, q = _engine(
        None, transport, clock=clock, max_attempts=4, backoff=cs.ConstantBackoff(3.0)
    )
    op = q.enqueue("set", {"v": 1}, key="a")
    engine.drain(timeout=3600)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    # the first conflict is resolved and resent at once; the server answering the
    # resend with a conflict again is an answered failure: backed off
    assert gaps == pytest.approx([0.0, 3.0, 3.0]), gaps
    [dead] = q.dead_letters()
    assert dead.id == op
    assert dead.last_error == (
        "gave up after 4 attempts: the server kept reporting a conflict (version 7)"
    )


def test_the_op_keeps_its_network_failures_apart_from_its_attempts(tmp_path: Path) -> None:
    clock = cs.VirtualClock(1_000.0)
    outcomes: list[BaseException] = [ConnectionRefusedError("refused"), cs.TransientError("503")]

    def transport(op: cs.Operation) -> None:
        raise outcomes.pop(0)

    engine, q = _engine(tmp_path / "q.db", transport, clock=clock, max_attempts=5)
    op = q.enqueue("set", {"v": 1}, key="a")
    engine.process_once()
    got = q.get(op)
    assert got is not None and (got.attempts, got.network_failures) == (0, 1)
    clock.advance(3600)
    engine.process_once()
    got = q.get(op)
    assert got is not None and (got.attempts, got.network_failures) == (1, 1)
    assert q.stats()["network_failures"] == 1
    q.close()
