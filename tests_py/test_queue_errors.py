"""Bad input and bad files: each gets a clear, typed Python exception and changes nothing.

"Changes nothing" is checked with ``_helpers.queue_snapshot`` (len, pending ops with
all attributes, dead letters, counts) before and after, and for files by comparing
their bytes and mtime.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import random
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import cpcsync as cs
from _helpers import (
    child_try_consume,
    existing_sidecars,
    file_fingerprint,
    is_root,
    queue_snapshot,
    recv,
)

ERROR_CLASSES = [
    "InvalidArgumentError",
    "QueueFullError",
    "OperationStateError",
    "QueueClosedError",
    "QueueLockedError",
    "NotAQueueError",
    "CorruptDatabaseError",
    "StorageError",
]


@pytest.fixture(params=["memory", "sqlite"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A queue with a little of everything: an in-flight op, pending ops, a dead letter."""
    clock = cs.VirtualClock(start=100.0)
    if request.param == "memory":
        q = cs.SyncQueue.in_memory(clock=clock)
    else:
        q = cs.SyncQueue.open(str(tmp_path / "q.db"), clock=clock, durability="normal")
    try:
        q.enqueue("seed", b"in flight", key="a")
        q.enqueue("seed", {"n": 1}, key="a", priority=75)
        q.enqueue("seed", "text", ttl=30.0)
        dead = q.enqueue("seed", b"dead")
        assert [op.id for op in q.take(1)] == [1]
        q.dead_letter(dead, "x")
        yield q
    finally:
        q.close()


def assert_unchanged(q: Any, fn: Callable[[], Any], expected: Any) -> BaseException:
    """Runs ``fn``, which must raise ``expected``; the queue must be exactly as before."""
    before = queue_snapshot(q)
    with pytest.raises(expected) as info:
        fn()
    assert queue_snapshot(q) == before
    return info.value


# ----------------------------------------------------------------- hierarchy


def test_error_classes_form_one_hierarchy() -> None:
    assert issubclass(cs.SyncError, Exception)
    for name in ERROR_CLASSES:
        cls = getattr(cs, name)
        assert issubclass(cls, cs.SyncError), name
    assert issubclass(cs.InvalidArgumentError, ValueError)


# ----------------------------------------------------------------- enqueue


@pytest.mark.parametrize(
    "payload",
    [object(), {1, 2}, {"a": object()}, [1, {2}], frozenset()],
    ids=["object", "set", "dict-with-object", "list-with-set", "frozenset"],
)
def test_payload_json_cannot_encode_is_a_type_error(queue: Any, payload: object) -> None:
    assert_unchanged(queue, lambda: queue.enqueue("k", payload), TypeError)


@pytest.mark.parametrize("priority", [-1, 256, 1000, -(2**70), 2**70])
def test_priority_out_of_range(queue: Any, priority: int) -> None:
    err = assert_unchanged(
        queue, lambda: queue.enqueue("k", b"", priority=priority), cs.InvalidArgumentError
    )
    assert isinstance(err, ValueError)


@pytest.mark.parametrize("priority", [1.5, 50.0, "high", True, False], ids=repr)
def test_priority_not_an_int(queue: Any, priority: object) -> None:
    assert_unchanged(
        queue,
        lambda: queue.enqueue("k", b"", priority=priority),
        (TypeError, cs.InvalidArgumentError),
    )


BAD_NUMBERS = [math.nan, -1.0, -1e-9, math.inf, -math.inf]


@pytest.mark.parametrize("delay", BAD_NUMBERS, ids=repr)
def test_bad_delay(queue: Any, delay: float) -> None:
    err = assert_unchanged(
        queue, lambda: queue.enqueue("k", b"", delay=delay), cs.InvalidArgumentError
    )
    assert isinstance(err, ValueError) and isinstance(err, cs.SyncError)


@pytest.mark.parametrize("ttl", BAD_NUMBERS, ids=repr)
def test_bad_ttl(queue: Any, ttl: float) -> None:
    err = assert_unchanged(queue, lambda: queue.enqueue("k", b"", ttl=ttl), cs.InvalidArgumentError)
    assert isinstance(err, ValueError)


@pytest.mark.parametrize("delay", BAD_NUMBERS, ids=repr)
def test_bad_retry_delay_keeps_the_op_in_flight(queue: Any, delay: float) -> None:
    assert_unchanged(queue, lambda: queue.retry(1, delay, error="e"), cs.InvalidArgumentError)
    assert queue.stats()["in_flight"] == 1
    queue.ack(1)  # still in flight, so still ackable


@pytest.mark.parametrize(
    "key", ["", "x" * 1025, "é" * 513], ids=["empty", "1025-ascii", "1026-bytes-utf8"]
)
def test_bad_key(queue: Any, key: str) -> None:
    assert_unchanged(queue, lambda: queue.enqueue("k", b"", key=key), cs.InvalidArgumentError)


@pytest.mark.parametrize("key", [5, b"bytes-key"], ids=repr)
def test_key_of_wrong_type(queue: Any, key: object) -> None:
    assert_unchanged(
        queue, lambda: queue.enqueue("k", b"", key=key), (TypeError, cs.InvalidArgumentError)
    )


@pytest.mark.parametrize(
    "kind", ["", "k" * 257, "é" * 129], ids=["empty", "257-ascii", "258-bytes-utf8"]
)
def test_bad_kind(queue: Any, kind: str) -> None:
    assert_unchanged(queue, lambda: queue.enqueue(kind, b""), cs.InvalidArgumentError)


@pytest.mark.parametrize("kind", [None, 7], ids=repr)
def test_kind_of_wrong_type(queue: Any, kind: object) -> None:
    assert_unchanged(queue, lambda: queue.enqueue(kind, b""), (TypeError, cs.InvalidArgumentError))


@pytest.mark.parametrize("idem", ["", "i" * 257], ids=["empty", "257"])
def test_bad_idempotency_key(queue: Any, idem: str) -> None:
    assert_unchanged(
        queue, lambda: queue.enqueue("k", b"", idempotency_key=idem), cs.InvalidArgumentError
    )


def test_coalesce_requires_a_key(queue: Any) -> None:
    assert_unchanged(
        queue, lambda: queue.enqueue("seed", b"", coalesce=True), cs.InvalidArgumentError
    )


def test_limits_themselves_are_accepted(queue: Any) -> None:
    before = len(queue)
    queue.enqueue(
        "k" * 256, b"", key="é" * 512, idempotency_key="i" * 256, priority=255, delay=0.0, ttl=0.0
    )
    queue.enqueue("é" * 128, b"", key="x" * 1024, priority=0)
    assert len(queue) == before + 2
    kinds = {op.kind for op in queue.peek(100)}
    assert "é" * 128 in kinds


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (5, TypeError),
        ([5], (TypeError, cs.InvalidArgumentError)),
        ([{"payload": b"x"}], cs.InvalidArgumentError),
        ([{"kind": "k", "payload": b"x"}, {"kind": "k"}], cs.InvalidArgumentError),
        ([{"kind": "k", "payload": b"x", "priorty": 100}], cs.InvalidArgumentError),
        (
            [{"kind": "k", "payload": b"x"}, {"kind": "k", "payload": b"x", "key": ""}],
            cs.InvalidArgumentError,
        ),
        ([{"kind": "k", "payload": b"x"}, {"kind": "k", "payload": object()}], TypeError),
    ],
    ids=[
        "not-a-list",
        "item-not-a-dict",
        "no-kind",
        "no-payload",
        "unknown-field",
        "bad-key",
        "bad-payload",
    ],
)
def test_enqueue_many_bad_batches(queue: Any, items: Any, expected: Any) -> None:
    assert_unchanged(queue, lambda: queue.enqueue_many(items), expected)


# -------------------------------------------------------- operation states


def test_ack_unknown_id(queue: Any) -> None:
    err = assert_unchanged(queue, lambda: queue.ack(999), cs.OperationStateError)
    assert isinstance(err, cs.SyncError)


def test_ack_twice(queue: Any) -> None:
    queue.ack(1)
    assert_unchanged(queue, lambda: queue.ack(1), cs.OperationStateError)


def test_ack_of_a_pending_or_dead_op(queue: Any) -> None:
    assert_unchanged(queue, lambda: queue.ack(2), cs.OperationStateError)  # pending
    assert_unchanged(queue, lambda: queue.ack(4), cs.OperationStateError)  # dead


def test_retry_of_an_op_not_in_flight(queue: Any) -> None:
    assert_unchanged(queue, lambda: queue.retry(2, 1.0, error="e"), cs.OperationStateError)
    assert_unchanged(queue, lambda: queue.retry(4, 1.0), cs.OperationStateError)
    assert_unchanged(queue, lambda: queue.retry(999, 1.0), cs.OperationStateError)


def test_dead_letter_of_a_dead_or_unknown_op(queue: Any) -> None:
    assert_unchanged(queue, lambda: queue.dead_letter(4, "again"), cs.OperationStateError)
    assert_unchanged(queue, lambda: queue.dead_letter(999, "x"), cs.OperationStateError)


# ------------------------------------------------------------ closed queue

CLOSED_CALLS: dict[str, Callable[[Any], Any]] = {
    "enqueue": lambda q: q.enqueue("k", b""),
    "enqueue_many": lambda q: q.enqueue_many([{"kind": "k", "payload": b""}]),
    "take": lambda q: q.take(1),
    "peek": lambda q: q.peek(1),
    "ack": lambda q: q.ack(1),
    "retry": lambda q: q.retry(1, 0.0),
    "dead_letter": lambda q: q.dead_letter(2, "x"),
    "dead_letters": lambda q: q.dead_letters(),
    "requeue_dead": lambda q: q.requeue_dead(),
    "purge_dead": lambda q: q.purge_dead(),
    "stats": lambda q: q.stats(),
    "len": lambda q: len(q),
}


@pytest.mark.parametrize("call", sorted(CLOSED_CALLS))
def test_operations_on_a_closed_queue(queue: Any, call: str) -> None:
    queue.close()
    with pytest.raises(cs.QueueClosedError) as info:
        CLOSED_CALLS[call](queue)
    assert isinstance(info.value, cs.SyncError)


def test_closing_a_file_queue_loses_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    q = cs.SyncQueue.open(path)
    q.enqueue("k", b"a")
    q.enqueue("k", b"b")
    q.close()
    with pytest.raises(cs.QueueClosedError):
        q.enqueue("k", b"c")
    with pytest.raises(cs.QueueClosedError):
        q.wait(0.0)
    with cs.SyncQueue.open(path) as again:
        assert [op.payload for op in again.peek(10)] == [b"a", b"b"]


# ---------------------------------------------------------- opener arguments


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"durability": "fast"}, cs.InvalidArgumentError),
        ({"durability": ""}, cs.InvalidArgumentError),
        ({"overflow": "bogus"}, cs.InvalidArgumentError),
        ({"max_ops": -1}, (cs.InvalidArgumentError, TypeError)),
        ({"max_bytes": -5}, (cs.InvalidArgumentError, TypeError)),
    ],
    ids=["durability-fast", "durability-empty", "overflow", "max_ops", "max_bytes"],
)
def test_bad_opener_arguments_create_no_file(
    tmp_path: Path, kwargs: dict[str, Any], expected: Any
) -> None:
    path = tmp_path / "q.db"
    with pytest.raises(expected):
        cs.SyncQueue.open(str(path), **kwargs)
    assert list(tmp_path.iterdir()) == []
    if "durability" not in kwargs:
        with pytest.raises(expected):
            cs.SyncQueue.in_memory(**kwargs)


# ------------------------------------------------------------------ files


def test_directory_path(tmp_path: Path) -> None:
    target = tmp_path / "a-directory"
    target.mkdir()
    with pytest.raises((cs.StorageError, cs.NotAQueueError)) as info:
        cs.SyncQueue.open(str(target))
    assert info.value.__cause__ is not None, "the SQLite/OS error should be chained as __cause__"
    assert list(target.iterdir()) == []
    assert existing_sidecars(target) == []


@pytest.mark.skipif(is_root(), reason="root bypasses directory permissions")
def test_path_in_a_read_only_directory(tmp_path: Path) -> None:
    ro_dir = tmp_path / "ro"
    ro_dir.mkdir()
    ro_dir.chmod(0o500)
    try:
        with pytest.raises(cs.StorageError) as info:
            cs.SyncQueue.open(str(ro_dir / "q.db"))
        assert info.value.__cause__ is not None
        assert list(ro_dir.iterdir()) == []
    finally:
        ro_dir.chmod(0o700)


def test_path_under_a_missing_directory(tmp_path: Path) -> None:
    # (also the stand-in for the read-only-directory case when the tests run as root)
    path = tmp_path / "missing" / "q.db"
    with pytest.raises(cs.StorageError) as info:
        cs.SyncQueue.open(str(path))
    assert info.value.__cause__ is not None, "the SQLite/OS error should be chained as __cause__"
    assert not (tmp_path / "missing").exists()


def test_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"hello world" * 100)
    before = file_fingerprint(path)
    with pytest.raises(cs.NotAQueueError) as info:
        cs.SyncQueue.open(str(path))
    assert isinstance(info.value, cs.SyncError)
    assert file_fingerprint(path) == before
    assert existing_sidecars(path) == []
    with pytest.raises(cs.NotAQueueError):
        cs.SyncQueue.open(str(path), read_only=True)
    assert file_fingerprint(path) == before


def test_a_sqlite_file_of_another_schema(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(str(path))) as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT INTO customers (name) VALUES (?)", [("ann",), ("bob",)])
        db.commit()
    before = file_fingerprint(path)
    with pytest.raises(cs.NotAQueueError):
        cs.SyncQueue.open(str(path))
    assert file_fingerprint(path) == before  # bytes and mtime: not even the journal mode changed
    assert existing_sidecars(path) == []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        assert db.execute("SELECT name FROM customers ORDER BY id").fetchall() == [
            ("ann",),
            ("bob",),
        ]


def _corrupt_middle(path: Path, seed: int) -> None:
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = len(data) // page_size
    assert pages >= 8, f"the test queue should span several pages, has {pages}"
    start = max(1, pages // 4) * page_size  # page 1 (the schema) stays intact
    end = (3 * pages // 4) * page_size
    rng = random.Random(seed)
    data[start:end] = rng.randbytes(end - start)
    path.write_bytes(bytes(data))


def test_a_corrupt_queue_file(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with cs.SyncQueue.open(str(path)) as q:
        q.enqueue_many(
            [{"kind": "k", "payload": bytes([i]) * 600, "key": f"k{i % 7}"} for i in range(200)]
        )
        q.take(3)
    wal = Path(str(path) + "-wal")
    # precondition: everything is in the main file (else the WAL could mask the damage)
    assert not wal.exists() or wal.stat().st_size == 0
    _corrupt_middle(path, seed=7)
    before = file_fingerprint(path)
    try:
        q = cs.SyncQueue.open(str(path))
    except (cs.CorruptDatabaseError, cs.StorageError):
        assert file_fingerprint(path) == before, "a failed open changed the file"
        return
    try:
        with pytest.raises((cs.CorruptDatabaseError, cs.StorageError)):
            q.peek(10_000)
            q.dead_letters()
            q.take(1000)
    finally:
        with contextlib.suppress(cs.SyncError):
            q.close()


# --------------------------------------------------------------- consumers


def test_second_consumer_in_the_same_process(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    first = cs.SyncQueue.open(path)
    second = cs.SyncQueue.open(path)
    try:
        a = first.enqueue("k", b"a", key="x")
        first.enqueue("k", b"b", key="y")
        assert [op.id for op in first.take(1)] == [a]
        before = queue_snapshot(first)
        for call in (
            lambda: second.take(1),
            lambda: second.ack(a),
            lambda: second.retry(a, 0.0),
            lambda: second.dead_letter(a, "x"),
            lambda: second.purge_dead(),
            lambda: second.requeue_dead(),
            lambda: second.acquire_consumer(),
        ):
            with pytest.raises(cs.QueueLockedError) as info:
                call()
            assert isinstance(info.value, cs.SyncError)
        assert queue_snapshot(first) == before
        c = second.enqueue("k", b"c", key="z")  # producing is always allowed
        assert c in [op.id for op in first.peek(10)]
        first.close()  # releases the lock; its in-flight op is pending again
        ops = second.take(10)
        by_id = {op.id: op for op in ops}
        assert a in by_id and by_id[a].attempts == 2
    finally:
        first.close()
        second.close()


def test_second_consumer_in_another_process(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    ctx = multiprocessing.get_context("spawn")

    def run_child() -> list[Any]:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=child_try_consume, args=(path, child))
        proc.start()
        child.close()
        try:
            msgs = [recv(parent), recv(parent)]
        finally:
            proc.join(30)
            parent.close()
        assert proc.exitcode == 0
        proc.close()
        return msgs

    with cs.SyncQueue.open(path) as q:
        a = q.enqueue("k", b"a")
        assert [op.id for op in q.take(1)] == [a]
        (enqueued, raised) = run_child()
        assert enqueued[0] == "enqueued"
        assert raised[0] == "raised", raised
        assert raised[1:3] == ("QueueLockedError", True)
        assert raised[3] == raised[4] == 2  # the failed take changed nothing
        assert q.stats()["in_flight"] == 1
        assert [op.id for op in q.peek(10)] == [enqueued[1]]
    # the consumer closed: another process may consume now
    (_, took) = run_child()
    assert took == ("took", 2)
    assert os.path.exists(path)
