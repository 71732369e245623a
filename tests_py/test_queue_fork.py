"""A process forked from the consumer (without exec) never holds the consumer role."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cpcsync as cs


def test_forked_child_does_not_keep_the_consumer_lock(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.db")
    q = cs.SyncQueue.open(path)
    q.enqueue("k", b"x")
    assert len(q.take(1)) == 1
    release_r, release_w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # the child only waits to be told to exit
        try:
            os.read(release_r, 1)
        finally:
            os._exit(0)
    try:
        q.close()  # the parent gives the role up while the child still lives
        with cs.SyncQueue.open(path) as q2:
            q2.acquire_consumer()
            ops = q2.take(1)
            assert [op.attempts for op in ops] == [2]  # the closed consumer's lease came back
    finally:
        os.write(release_w, b"x")
        os.waitpid(pid, 0)
        os.close(release_r)
        os.close(release_w)


def test_drop_lowest_cannot_make_room_when_in_flight_ops_alone_overflow(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.db")
    with cs.SyncQueue.open(path, max_bytes=100) as consumer:
        consumer.enqueue("k", b"x" * 50)
        assert len(consumer.take(1)) == 1
        with cs.SyncQueue.open(path, max_bytes=10, overflow="drop_lowest") as producer:
            before = producer.stats()
            try:
                producer.enqueue("k", b"y")
            except cs.QueueFullError:
                pass
            else:
                raise AssertionError("enqueue must fail: in-flight ops alone exceed max_bytes")
            after = producer.stats()
            assert (after["pending"], after["dead"]) == (before["pending"], before["dead"])
