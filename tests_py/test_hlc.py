"""Hybrid logical clock: stamps on every op, merge with remote stamps, monotonicity."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import cpcsync as cs

HLC = cs.HybridLogicalClock


def test_packs_milliseconds_and_counter() -> None:
    hlc = HLC(clock=cs.VirtualClock(start=1.5))
    a, b = hlc.now(), hlc.now()
    assert (HLC.physical_ms(a), HLC.logical(a)) == (1500, 0)
    assert (HLC.physical_ms(b), HLC.logical(b)) == (1500, 1)
    assert HLC.pack(1500, 1) == b


def test_monotonic_when_the_wall_clock_jumps_back() -> None:
    ahead = HLC(clock=cs.VirtualClock(start=1_000.0))
    last = ahead.now()
    behind = HLC(clock=cs.VirtualClock(start=10.0), last=last)  # wall clock went back 990 s
    stamps = [behind.now() for _ in range(5)]
    assert stamps[0] > last
    assert all(x < y for x, y in itertools.pairwise(stamps))


def test_observe_moves_past_a_remote_stamp() -> None:
    hlc = HLC(clock=cs.VirtualClock(start=1.0))
    remote = HLC.pack(9_999_999, 42)  # a server far ahead
    hlc.observe(remote)
    assert hlc.last == remote
    assert hlc.now() > remote


def test_queue_stamps_follow_observed_remote_stamps() -> None:
    q = cs.SyncQueue.in_memory(clock=cs.VirtualClock(start=5.0))
    first = q.enqueue("k", b"a")
    remote = HLC.pack(10_000_000, 7)
    q.observe_hlc(remote)
    second = q.enqueue("k", b"b")
    stamps = {op.id: op.hlc for op in q.peek(10)}
    assert stamps[first] < remote < stamps[second]
    assert q.last_hlc == stamps[second]
    q.close()


def test_queue_stamps_are_monotonic_across_reopen_with_a_clock_behind(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    with cs.SyncQueue.open(path, clock=cs.VirtualClock(start=5_000.0)) as q:
        q.observe_hlc(HLC.pack(6_000_000, 3))
        q.enqueue("k", b"a")
    with cs.SyncQueue.open(path, clock=cs.VirtualClock(start=1.0)) as q:
        q.enqueue("k", b"b")
        stamps = [op.hlc for op in q.peek(10)]
    assert stamps[0] > HLC.pack(6_000_000, 3)
    assert stamps[1] > stamps[0]


def test_concurrent_enqueues_get_stamps_in_id_order(tmp_path: Path) -> None:
    with cs.SyncQueue.open(str(tmp_path / "q.db"), durability="off") as q:

        def produce() -> None:
            for _ in range(100):
                q.enqueue("k", b"x", key="same")

        threads = [threading.Thread(target=produce) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ops = sorted(q.peek(1000), key=lambda op: op.id)
    assert len(ops) == 400
    assert all(a.hlc < b.hlc for a, b in itertools.pairwise(ops))
