"""Issue 13, in the queue file: the HLC high-water mark, stamps out of range, network
failures that are not attempts, and due times after the wall clock went back across
a restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cpcsync as cs

HLC = cs.HybridLogicalClock
HOUR = 3600.0


def remote_ahead(seconds: float, start: float) -> int:
    """An HLC stamp from a server whose clock is `seconds` ahead of `start`."""
    return HLC.pack(int((start + seconds) * 1000), 0)


# ------------------------------------------------------------ the high-water mark


def test_observed_hlc_reaches_a_producer_handle_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    clock = cs.VirtualClock(start=1_000.0)
    remote = remote_ahead(HOUR, 1_000.0)
    with (
        cs.SyncQueue.open(path, clock=clock) as consumer,
        cs.SyncQueue.open(path, clock=clock) as producer,
    ):
        consumer.take(1)  # the consumer role, as an engine holds it
        consumer.observe_hlc(remote)
        op_id = producer.enqueue("k", b"edit")
        assert producer.get(op_id).hlc > remote


def test_observed_hlc_reaches_another_process(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    remote = remote_ahead(HOUR, 1_000.0)
    with cs.SyncQueue.open(path, clock=cs.VirtualClock(start=1_000.0)) as consumer:
        consumer.observe_hlc(remote)
        child = (
            "import sys, cpcsync as cs\n"
            "with cs.SyncQueue.open(sys.argv[1], clock=cs.VirtualClock(start=1000.0)) as q:\n"
            "    print(q.get(q.enqueue('k', b'from the child')).hlc)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", child, str(path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert int(out.stdout) > remote


def test_observed_hlc_survives_a_reopen_with_nothing_enqueued(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    remote = remote_ahead(HOUR, 1_000.0)
    with cs.SyncQueue.open(path, clock=cs.VirtualClock(start=1_000.0)) as q:
        q.observe_hlc(remote)
    with cs.SyncQueue.open(path, clock=cs.VirtualClock(start=1_001.0)) as q:
        assert q.last_hlc >= remote
        assert q.get(q.enqueue("k", b"x")).hlc > remote


def test_last_write_wins_newer_local_edit_after_restart_beats_older_remote(
    tmp_path: Path,
) -> None:
    """The issue's data loss: the engine saw a remote write (from a server whose clock is
    an hour ahead) in a conflict; after a restart the user edits the entity again. That
    edit is newer than the remote write and must win under LastWriteWins."""
    path = tmp_path / "q.db"
    clock = cs.VirtualClock(start=1_000.0)
    remote = remote_ahead(HOUR, 1_000.0)

    def transport(op: cs.Operation) -> None:
        raise cs.ConflictError({"v": "server"}, remote_timestamp=remote)

    with cs.SyncQueue.open(path, clock=clock) as q:
        q.enqueue("set", {"v": "before"}, key="doc")
        engine = cs.SyncEngine(q, transport, resolver=cs.LastWriteWins(), clock=clock)
        summary = engine.process_once()
        assert summary.conflicts == 1  # the remote write was newer: it stands
        engine.stop()
        assert len(q) == 0
    clock.advance(5.0)  # restart; the user edits the document after seeing the server's value
    with cs.SyncQueue.open(path, clock=clock) as q:
        op = q.get(q.enqueue("set", {"v": "newer local edit"}, key="doc"))
        assert op.hlc > remote
        decision = cs.LastWriteWins().resolve(op, cs.Remote({"v": "server"}, hlc=remote))
        assert decision.kind == "use_local"


def test_in_memory_queue_stamps_above_an_observed_stamp() -> None:
    q = cs.SyncQueue.in_memory(clock=cs.VirtualClock(start=1_000.0))
    remote = remote_ahead(HOUR, 1_000.0)
    q.observe_hlc(remote)
    assert q.get(q.enqueue("k", b"x")).hlc > remote
    q.close()


# ------------------------------------------------------------ stamps out of range


@pytest.mark.parametrize("bad", [2**64 - 1, HLC.pack(2**48 - 1, 0), 2**64, -1, 2**80])
def test_observe_refuses_stamps_out_of_range(bad: int) -> None:
    hlc = HLC(clock=cs.VirtualClock(start=1.0))
    before = hlc.now()
    with pytest.raises(cs.InvalidArgumentError):
        hlc.observe(bad)
    after = hlc.now()
    assert before < after < HLC.pack(10_000, 0)  # no wrap, no jump to the refused value
    q = cs.SyncQueue.in_memory(clock=cs.VirtualClock(start=1.0))
    with pytest.raises(cs.InvalidArgumentError):
        q.observe_hlc(bad)
    q.close()


def test_observe_accepts_the_largest_valid_stamp_and_keeps_increasing() -> None:
    hlc = HLC(clock=cs.VirtualClock(start=1.0))
    top = HLC.pack(253_402_300_799_999, 0xFFFF)  # 9999-12-31T23:59:59.999Z
    hlc.observe(top)
    a, b = hlc.now(), hlc.now()
    assert top < a < b < 2**64
    with pytest.raises(TypeError):
        hlc.observe(True)  # type: ignore[arg-type]


# ------------------------------------------------------------ network failures


@pytest.fixture(params=["memory", "sqlite"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> cs.SyncQueue:
    clock = cs.VirtualClock(start=100.0)
    if request.param == "memory":
        q = cs.SyncQueue.in_memory(clock=clock)
    else:
        q = cs.SyncQueue.open(tmp_path / "q.db", clock=clock)
    request.addfinalizer(q.close)
    return q


def test_network_failures_are_not_attempts(queue: cs.SyncQueue) -> None:
    op_id = queue.enqueue("k", b"x", key="a")
    for _ in range(3):
        [op] = queue.take(1)
        queue.retry(op.id, 0.0, error="connection refused", network=True)
    op = queue.get(op_id)
    assert (op.attempts, op.network_failures) == (0, 3)
    [op] = queue.take(1)
    queue.retry(op.id, 0.0, error="HTTP 503")
    op = queue.get(op_id)
    assert (op.attempts, op.network_failures) == (1, 3)
    assert "network_failures=3" in repr(op)
    assert op.to_dict()["network_failures"] == 3
    assert queue.stats()["network_failures"] == 3
    with pytest.raises(TypeError):
        queue.retry(op_id, 0.0, "e", True)  # type: ignore[misc]  # keyword only


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_taken_at_is_the_time_of_the_take_that_returned_the_op(kind: str, tmp_path: Path) -> None:
    clock = cs.VirtualClock(start=100.0)
    if kind == "memory":
        q = cs.SyncQueue.in_memory(clock=clock)
    else:
        q = cs.SyncQueue.open(tmp_path / "q.db", clock=clock)
    with q:
        op_id = q.enqueue("k", b"x", key="a")
        clock.advance(2.0)
        [op] = q.take(1)
        assert (op.taken_at, op.first_attempt_at) == (102.0, 102.0)
        q.retry(op.id, 0.0, error="HTTP 503")
        clock.advance(3.0)
        [op] = q.take(1)
        assert (op.taken_at, op.first_attempt_at) == (105.0, 102.0)
        # not stored: a read of the same op outside a take has none
        assert q.get(op_id).taken_at is None
        q.retry(op.id, 0.0, error="HTTP 503")
        assert [o.taken_at for o in q.peek(10)] == [None]


# ------------------------------------------------------------ clock back across a restart


def test_reopen_with_the_clock_an_hour_earlier_keeps_due_times(tmp_path: Path) -> None:
    """Before: a retry due in 5 s was due in 3,605 s after the reopen."""
    path = tmp_path / "q.db"
    t0 = 1_000_000.0
    with cs.SyncQueue.open(path, clock=cs.VirtualClock(start=t0)) as q:
        retried = q.enqueue("k", b"r")
        delayed = q.enqueue("k", b"d", delay=10.0)
        ttl = q.enqueue("k", b"t", key="t", ttl=30.0)
        [op] = q.take(1)
        assert op.id == retried
        q.retry(retried, 5.0, error="HTTP 503")
    clock = cs.VirtualClock(start=t0 - HOUR)
    with cs.SyncQueue.open(path, clock=clock) as q:
        assert q.take(0) == []  # become the consumer
        now = clock.now()
        assert q.get(retried).next_attempt_at == pytest.approx(now + 5.0)
        assert q.get(delayed).next_attempt_at == pytest.approx(now + 10.0)
        assert q.get(ttl).expires_at == pytest.approx(now + 30.0)
        stats = q.stats()
        assert stats["oldest_pending_age"] >= 0.0
        assert stats["next_due_in"] == pytest.approx(5.0)
        assert [o.id for o in q.take(10)] == [ttl]
        clock.advance(5.0)
        assert [o.id for o in q.take(10)] == [retried]
        clock.advance(5.0)
        assert [o.id for o in q.take(10)] == [delayed]


def test_ages_are_never_negative_on_a_read_only_handle(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with cs.SyncQueue.open(path, clock=cs.VirtualClock(start=5_000.0)) as q:
        q.enqueue("k", b"x")
    with cs.SyncQueue.open(path, clock=cs.VirtualClock(start=1_000.0)) as q:
        assert q.stats()["oldest_pending_age"] == 0.0
