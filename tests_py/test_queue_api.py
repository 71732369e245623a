"""The Python surface of cs.SyncQueue (DESIGN.md, docs/queue-semantics.md).

Most tests run against both storages (``in_memory`` and ``open`` on a file in
tmp_path) through the ``make_queue`` / ``queue`` fixtures, on a VirtualClock.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import cpcsync as cs
from _helpers import (
    child_read_only_inspect,
    file_mode,
    is_uuid4,
    op_tuple,
    queue_snapshot,
    recv,
)

START = 1000.0

MakeQueue = Callable[..., Any]


@pytest.fixture
def clock() -> cs.VirtualClock:
    return cs.VirtualClock(start=START)


@pytest.fixture(params=["memory", "sqlite"])
def make_queue(
    request: pytest.FixtureRequest, tmp_path: Path, clock: cs.VirtualClock
) -> Iterator[MakeQueue]:
    """Opens queues of the parametrized storage on the test's clock; closes them after."""
    opened: list[Any] = []

    def make(**kwargs: Any) -> Any:
        if request.param == "memory":
            q = cs.SyncQueue.in_memory(clock=clock, **kwargs)
        else:
            path = tmp_path / f"queue{len(opened)}.db"
            q = cs.SyncQueue.open(str(path), clock=clock, durability="normal", **kwargs)
        opened.append(q)
        return q

    yield make
    for q in opened:
        q.close()


@pytest.fixture
def queue(make_queue: MakeQueue) -> Any:
    return make_queue()


def ids(ops: Any) -> list[int]:
    return [op.id for op in ops]


def take_one(q: Any) -> Any:
    ops = q.take(1)
    assert len(ops) == 1, ops
    return ops[0]


# ------------------------------------------------------------------ payloads


def test_bytes_payload_is_stored_as_is(queue: Any) -> None:
    raw = bytes(range(256))
    queue.enqueue("blob", raw)
    (op,) = queue.peek(10)
    assert isinstance(op.payload, bytes)
    assert op.payload == raw


def test_str_payload_is_stored_as_utf8(queue: Any) -> None:
    queue.enqueue("note", "héllo ✓ 𝄞")
    (op,) = queue.peek(10)
    assert isinstance(op.payload, bytes)
    assert op.payload == "héllo ✓ 𝄞".encode()


@pytest.mark.parametrize(
    "value",
    [
        {"currency": "BTC", "amount": 3, "note": "Zoë", "a": [1, 2, {"x": None}]},
        [1, "two", 3.5, True, None],
        42,
    ],
)
def test_json_payload_is_compact_utf8_json(queue: Any, value: Any) -> None:
    queue.enqueue("set", value)
    (op,) = queue.take(1)
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert op.payload == expected  # key order kept, no spaces, non-ASCII not escaped
    assert op.json() == value


def test_op_json_decodes_a_str_payload_holding_json(queue: Any) -> None:
    queue.enqueue("set", '{"a": [1, 2]}')
    (op,) = queue.peek(1)
    assert op.json() == {"a": [1, 2]}


# ------------------------------------------------------- idempotency, priority


def test_idempotency_key_is_generated_uuid4(queue: Any) -> None:
    a = queue.enqueue("k", b"1")
    b = queue.enqueue("k", b"1")
    ops = {op.id: op for op in queue.peek(10)}
    assert is_uuid4(ops[a].idempotency_key), ops[a].idempotency_key
    assert is_uuid4(ops[b].idempotency_key), ops[b].idempotency_key
    assert ops[a].idempotency_key != ops[b].idempotency_key


def test_idempotency_key_given_is_kept(queue: Any) -> None:
    queue.enqueue("k", b"1", idempotency_key="order-17/charge")
    (op,) = queue.take(1)
    assert op.idempotency_key == "order-17/charge"


def test_priority_constants() -> None:
    assert int(cs.Priority.CRITICAL) == 100
    assert int(cs.Priority.HIGH) == 75
    assert int(cs.Priority.MEDIUM) == 50
    assert int(cs.Priority.LOW) == 25


def test_priority_default_enum_and_any_int(queue: Any) -> None:
    default = queue.enqueue("k", b"")
    high = queue.enqueue("k", b"", priority=cs.Priority.HIGH)
    zero = queue.enqueue("k", b"", priority=0)
    top = queue.enqueue("k", b"", priority=255)
    prio = {op.id: op.priority for op in queue.peek(10)}
    assert prio == {default: 50, high: 75, zero: 0, top: 255}
    assert all(isinstance(p, int) for p in prio.values())


# ---------------------------------------------------------- op attributes


def test_operation_attributes(queue: Any) -> None:
    op_id = queue.enqueue("set_currency", {"currency": "BTC"}, key="user:42", delay=2.5)
    assert isinstance(op_id, int) and op_id == 1
    (op,) = queue.peek(1)
    assert op.id == op_id
    assert op.kind == "set_currency"
    assert op.key == "user:42"
    assert op.payload == b'{"currency":"BTC"}'
    assert op.priority == 50
    assert isinstance(op.idempotency_key, str)
    assert isinstance(op.hlc, int) and op.hlc > 0
    assert op.created_at == START
    assert op.attempts == 0
    assert op.next_attempt_at == START + 2.5
    assert op.last_error is None
    assert op.state == "pending"
    queue.enqueue("other", b"")
    assert [o.key for o in queue.peek(10)] == ["user:42", None]


def test_hlc_is_wall_clock_milliseconds_in_high_48_bits() -> None:
    with cs.SyncQueue.in_memory() as q:  # SystemClock
        before_ms = int(time.time() * 1000)
        q.enqueue("k", b"")
        after_ms = int(time.time() * 1000)
        (op,) = q.peek(1)
    physical = op.hlc >> 16
    assert 0 <= op.hlc < 2**64
    assert before_ms - 5_000 <= physical <= after_ms + 5_000, (physical, before_ms)


def test_hlc_strictly_increases_even_when_the_clock_stands_still(queue: Any) -> None:
    for _ in range(20):
        queue.enqueue("k", b"")
    hlcs = [op.hlc for op in queue.peek(100)]
    assert len(hlcs) == 20
    assert all(a < b for a, b in itertools.pairwise(hlcs)), hlcs


def test_hlc_never_goes_backwards_across_reopen_with_a_clock_behind(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    with cs.SyncQueue.open(path, clock=cs.VirtualClock(start=2_000_000.0)) as q:
        q.enqueue("k", b"")
        (first,) = q.peek(1)
    with cs.SyncQueue.open(path, clock=cs.VirtualClock(start=1_000_000.0)) as q:  # skewed back
        q.enqueue("k", b"")
        hlcs = [op.hlc for op in q.peek(10)]
    assert hlcs[0] == first.hlc
    assert hlcs[1] > first.hlc


def test_state_values_through_the_lifecycle(queue: Any) -> None:
    a = queue.enqueue("k", b"a")
    queue.enqueue("k", b"b")
    assert [o.state for o in queue.peek(10)] == ["pending", "pending"]
    taken = take_one(queue)
    assert (taken.id, taken.state) == (a, "in_flight")
    queue.dead_letter(a, "nope")
    assert [o.state for o in queue.dead_letters()] == ["dead"]


# ------------------------------------------------------ take / ack / retry


def test_take_leases_and_counts_attempts(queue: Any) -> None:
    a = queue.enqueue("k", b"a")
    b = queue.enqueue("k", b"b")
    ops = queue.take(10)
    assert ids(ops) == [a, b]
    assert [o.state for o in ops] == ["in_flight", "in_flight"]
    assert [o.attempts for o in ops] == [1, 1]
    assert queue.peek(10) == []
    assert len(queue) == 2
    stats = queue.stats()
    assert (stats["pending"], stats["in_flight"]) == (0, 2)
    assert queue.take(10) == []


def test_ack_deletes(queue: Any) -> None:
    a = queue.enqueue("k", b"a")
    queue.take(1)
    queue.ack(a)
    assert len(queue) == 0
    assert queue.stats()["in_flight"] == 0
    assert queue.peek(10) == [] and queue.dead_letters() == []


def test_retry_delay_follows_the_virtual_clock(queue: Any, clock: cs.VirtualClock) -> None:
    a = queue.enqueue("k", b"a")
    take_one(queue)
    queue.retry(a, 5.0, error="HTTP 503")
    (pending,) = queue.peek(1)
    assert (pending.state, pending.attempts, pending.last_error) == ("pending", 1, "HTTP 503")
    assert pending.next_attempt_at == START + 5.0
    assert queue.take(1) == []
    clock.advance(4.5)
    assert queue.take(1) == []
    clock.advance(0.5)
    again = take_one(queue)
    assert again.id == a
    assert again.attempts == 2
    assert again.last_error == "HTTP 503"


def test_retry_without_error_clears_it(queue: Any) -> None:
    a = queue.enqueue("k", b"a")
    take_one(queue)
    queue.retry(a, 0.0, error="boom")
    take_one(queue)
    queue.retry(a, 0.0)
    assert queue.peek(1)[0].last_error is None


def test_enqueue_delay(queue: Any, clock: cs.VirtualClock) -> None:
    late = queue.enqueue("k", b"late", delay=3.0)
    now = queue.enqueue("k", b"now")
    assert ids(queue.take(10)) == [now]
    clock.advance(2.5)
    assert queue.take(10) == []
    clock.advance(0.5)
    assert ids(queue.take(10)) == [late]


def test_take_orders_by_priority_then_id(queue: Any) -> None:
    k1 = queue.enqueue("k", b"", key="k1", priority=50)
    k2 = queue.enqueue("k", b"", key="k2", priority=100)
    k3 = queue.enqueue("k", b"", key="k3", priority=50)
    k4 = queue.enqueue("k", b"", key="k4", priority=75)
    n1 = queue.enqueue("k", b"", priority=75)
    assert ids(queue.peek(10)) == [k2, k4, n1, k1, k3]
    assert ids(queue.take(3)) == [k2, k4, n1]
    assert ids(queue.take(3)) == [k1, k3]


# ------------------------------------------------------------ dead letters


def test_dead_letter_pending_and_in_flight(queue: Any) -> None:
    a = queue.enqueue("k", b"a", key="x")
    b = queue.enqueue("k", b"b", key="x", priority=75)
    c = queue.enqueue("k", b"c", key="x")
    take_one(queue)
    queue.dead_letter(a, "HTTP 400")  # in flight -> dead; lane moves on
    queue.dead_letter(c, "manual")  # pending -> dead
    dead = queue.dead_letters()
    assert [(o.id, o.state, o.last_error) for o in dead] == [
        (a, "dead", "HTTP 400"),
        (c, "dead", "manual"),
    ]
    assert dead[0].attempts == 1 and dead[0].payload == b"a"  # everything else kept
    assert len(queue) == 1
    assert queue.stats()["dead"] == 2
    assert ids(queue.take(10)) == [b]


def test_requeue_dead_goes_to_the_tail_under_new_ids(queue: Any) -> None:
    a = queue.enqueue("put", {"v": 1}, key="doc", priority=75, idempotency_key="idem-a")
    b = queue.enqueue("put", {"v": 2}, key="doc")
    take_one(queue)
    queue.retry(a, 0.0, error="e1")
    take_one(queue)
    queue.dead_letter(a, "gave up")
    new_ids = queue.requeue_dead()
    assert len(new_ids) == 1
    (new,) = new_ids
    assert new > b
    assert queue.dead_letters() == []
    pending = queue.peek(10)
    assert ids(pending) == [b, new]  # tail of its lane
    op = pending[1]
    assert (op.kind, op.key, op.payload, op.priority, op.idempotency_key) == (
        "put",
        "doc",
        b'{"v":1}',
        75,
        "idem-a",
    )
    assert (op.attempts, op.last_error, op.state) == (0, None, "pending")


def test_requeue_dead_given_ids_only(queue: Any) -> None:
    a = queue.enqueue("k", b"a")
    b = queue.enqueue("k", b"b")
    c = queue.enqueue("k", b"c")
    for op_id in (a, b, c):
        queue.dead_letter(op_id, "x")
    new_ids = queue.requeue_dead([a, c])
    assert len(new_ids) == 2 and new_ids[0] < new_ids[1] and new_ids[0] > c
    assert ids(queue.dead_letters()) == [b]
    assert [o.payload for o in queue.peek(10)] == [b"a", b"c"]


def test_purge_dead_returns_count_and_ids_are_never_reused(queue: Any) -> None:
    a = queue.enqueue("k", b"a")
    b = queue.enqueue("k", b"b")
    queue.dead_letter(a, "x")
    queue.dead_letter(b, "x")
    assert queue.purge_dead() == 2
    assert queue.dead_letters() == []
    assert queue.stats()["dead"] == 0
    assert queue.purge_dead() == 0
    assert queue.enqueue("k", b"c") == b + 1


def test_ids_are_not_reused_after_purge_and_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    with cs.SyncQueue.open(path) as q:
        for _ in range(3):
            q.enqueue("k", b"")
        q.dead_letter(3, "x")
        assert q.purge_dead() == 1
    with cs.SyncQueue.open(path) as q:
        assert q.enqueue("k", b"") == 4


def test_low_water_is_the_lowest_id_that_may_still_be_sent(queue: Any) -> None:
    assert queue.low_water == 1  # nothing held: the id the next enqueue gets
    a, b, c = (queue.enqueue("k", b"") for _ in range(3))
    assert queue.low_water == a
    assert ids(queue.take(3)) == [a, b, c]
    assert queue.low_water == a  # in flight
    queue.ack(b)
    assert queue.low_water == a  # a gap in the middle does not move it
    queue.ack(a)
    assert queue.low_water == c
    queue.dead_letter(c, "rejected")
    assert queue.low_water == c  # dead letters can be requeued: they count
    (again,) = queue.requeue_dead()
    assert again > c  # the same idempotency key under a new id
    assert queue.low_water == again
    queue.dead_letter(again, "rejected")
    assert queue.purge_dead() == 1
    assert queue.low_water == again + 1  # empty: the next id, never a used one
    assert queue.enqueue("k", b"") == again + 1


def test_low_water_after_everything_was_acked_and_reopened(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    with cs.SyncQueue.open(path) as q:
        for _ in range(3):
            q.enqueue("k", b"")
        for op in q.take(3):
            q.ack(op.id)
        assert q.low_water == 4
    with cs.SyncQueue.open(path) as q:
        assert q.low_water == 4  # AUTOINCREMENT's sequence, not max(id) + 1 of an empty table
        assert q.enqueue("k", b"") == 4


# ------------------------------------------------------------- peek, stats


def test_peek_takes_nothing(queue: Any) -> None:
    a = queue.enqueue("k", b"a", key="x")
    b = queue.enqueue("k", b"b")
    first = [op_tuple(o) for o in queue.peek(10)]
    second = [op_tuple(o) for o in queue.peek(10)]
    assert first == second and [t[0] for t in first] == [a, b]
    assert all(o.attempts == 0 for o in queue.peek(10))
    assert len(queue.peek(1)) == 1
    assert queue.stats()["in_flight"] == 0
    assert ids(queue.take(10)) == [a, b]


def test_peek_shows_successors_of_an_in_flight_head(queue: Any) -> None:
    a = queue.enqueue("k", b"a", key="x")
    b = queue.enqueue("k", b"b", key="x")
    take_one(queue)
    assert ids(queue.peek(10)) == [b]
    assert queue.take(10) == []  # but b is not deliverable while a is in flight
    queue.ack(a)
    assert ids(queue.take(10)) == [b]


def test_stats_keys_and_values(queue: Any) -> None:
    a = queue.enqueue("k", b"12345", priority=75)
    b = queue.enqueue("k", b"123", priority=25)
    c = queue.enqueue("k", b"1", priority=25)
    queue.take(1)
    queue.dead_letter(c, "x")
    stats = queue.stats()
    for key in ("pending", "in_flight", "dead", "bytes", "by_priority"):
        assert key in stats, key
    assert (stats["pending"], stats["in_flight"], stats["dead"]) == (1, 1, 1)
    assert stats["bytes"] == 5 + 3  # payload bytes of pending + in flight
    assert hasattr(stats["by_priority"], "items")
    assert [o.id for o in queue.peek(10)] == [b] and a < b


def test_len_counts_pending_and_in_flight_not_dead(queue: Any) -> None:
    assert len(queue) == 0
    a = queue.enqueue("k", b"")
    b = queue.enqueue("k", b"")
    queue.enqueue("k", b"")
    assert len(queue) == 3
    take_one(queue)
    assert len(queue) == 3
    queue.dead_letter(b, "x")
    assert len(queue) == 2
    queue.ack(a)
    assert len(queue) == 1


# ------------------------------------------------------- context manager


def test_context_manager_closes_memory_queue() -> None:
    with cs.SyncQueue.in_memory() as q:
        q.enqueue("k", b"")
        assert len(q) == 1
    with pytest.raises(cs.QueueClosedError):
        q.enqueue("k", b"")


def test_context_manager_closes_file_queue_and_releases_the_consumer_lock(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    with cs.SyncQueue.open(path) as q:
        a = q.enqueue("k", b"")
        take_one(q)
    with pytest.raises(cs.QueueClosedError):
        q.take(1)
    with cs.SyncQueue.open(path) as q2:
        op = take_one(q2)  # the lock was released, the in-flight op is pending again
        assert (op.id, op.attempts) == (a, 2)


def test_close_is_idempotent(tmp_path: Path) -> None:
    q = cs.SyncQueue.open(str(tmp_path / "q.db"))
    q.close()
    q.close()
    m = cs.SyncQueue.in_memory()
    m.close()
    m.close()


# ------------------------------------------------------------------- ttl


def test_ttl_expiry_is_swept_by_take(queue: Any, clock: cs.VirtualClock) -> None:
    short = queue.enqueue("k", b"short", ttl=5.0, key="a")
    keep = queue.enqueue("k", b"keep", key="b", delay=6.0)
    clock.advance(4.5)
    assert ids(queue.peek(10)) == [short, keep]
    clock.advance(0.5)
    assert ids(queue.peek(10)) == [keep]  # peek skips an expired op
    assert queue.take(10) == []  # keep is not due yet; short is swept
    (dead,) = queue.dead_letters()
    assert (dead.id, dead.last_error, dead.state) == (short, "expired", "dead")
    assert queue.stats()["dead"] == 1
    assert len(queue) == 1


def test_expired_ops_do_not_lend_their_priority_to_their_lane(
    queue: Any, clock: cs.VirtualClock
) -> None:
    # peek skips an expired op and take sweeps it, so it must not raise its lane's
    # effective priority either: peek shows the order take(1)+ack cycles deliver in.
    loose = queue.enqueue("put", b"", priority=0)
    head = queue.enqueue("put", b"", key="k", priority=0)
    queue.enqueue("put", b"", key="k", priority=cs.Priority.HIGH, ttl=1.0)
    clock.advance(1.0)
    peeked = ids(queue.peek(10))
    delivered = []
    while ops := queue.take(1):
        delivered.append(ops[0].id)
        queue.ack(ops[0].id)
    assert delivered == [loose, head]
    assert peeked == delivered


def test_in_flight_op_does_not_expire_until_retried(queue: Any, clock: cs.VirtualClock) -> None:
    a = queue.enqueue("k", b"", ttl=1.0)
    take_one(queue)
    clock.advance(10.0)
    assert queue.take(10) == []
    assert queue.dead_letters() == [] and queue.stats()["in_flight"] == 1
    queue.retry(a, 0.0, error="e")
    assert queue.take(10) == []
    (dead,) = queue.dead_letters()
    assert (dead.id, dead.last_error) == (a, "expired")


# -------------------------------------------------------------- capacity


def test_capacity_reject_max_ops(make_queue: MakeQueue) -> None:
    q = make_queue(max_ops=2)
    q.enqueue("k", b"a")
    q.enqueue("k", b"b")
    before = queue_snapshot(q)
    with pytest.raises(cs.QueueFullError) as info:
        q.enqueue("k", b"c")
    assert isinstance(info.value, cs.SyncError)
    assert queue_snapshot(q) == before


def test_capacity_reject_max_bytes(make_queue: MakeQueue) -> None:
    q = make_queue(max_bytes=10)
    q.enqueue("k", b"12345")
    q.enqueue("k", b"12345")
    before = queue_snapshot(q)
    with pytest.raises(cs.QueueFullError):
        q.enqueue("k", b"1")
    assert queue_snapshot(q) == before


def test_capacity_counts_in_flight_not_dead(make_queue: MakeQueue) -> None:
    q = make_queue(max_ops=1)
    a = q.enqueue("k", b"a")
    take_one(q)
    with pytest.raises(cs.QueueFullError):
        q.enqueue("k", b"b")
    q.dead_letter(a, "x")
    q.enqueue("k", b"b")  # dead ops do not count
    assert len(q) == 1


def test_capacity_drop_lowest(make_queue: MakeQueue) -> None:
    q = make_queue(max_ops=2, overflow="drop_lowest")
    low = q.enqueue("k", b"low", priority=cs.Priority.LOW)
    high = q.enqueue("k", b"high", priority=cs.Priority.HIGH)
    med = q.enqueue("k", b"med", priority=cs.Priority.MEDIUM)
    assert ids(q.dead_letters()) == [low]
    low2 = q.enqueue("k", b"low2", priority=cs.Priority.LOW)  # the new op itself is the lowest
    med2 = q.enqueue("k", b"med2", priority=cs.Priority.MEDIUM)  # newest first among equals
    dead = q.dead_letters()
    assert [(o.id, o.last_error) for o in dead] == [
        (low, "overflow"),
        (low2, "overflow"),
        (med2, "overflow"),
    ]
    assert ids(q.peek(10)) == [high, med]
    assert len(q) == 2


def test_capacity_drop_lowest_never_drops_in_flight(make_queue: MakeQueue) -> None:
    q = make_queue(max_ops=1, overflow="drop_lowest")
    low = q.enqueue("k", b"low", priority=0)
    take_one(q)
    high = q.enqueue("k", b"high", priority=255)
    assert [(o.id, o.last_error) for o in q.dead_letters()] == [(high, "overflow")]
    assert q.stats()["in_flight"] == 1
    q.ack(low)
    assert len(q) == 0


@pytest.mark.parametrize("overflow", ["reject", "drop_lowest"])
def test_requeue_dead_keeps_the_capacity_bound(make_queue: MakeQueue, overflow: str) -> None:
    # "max_ops bounds pending + in flight": requeueing dead letters must not break it
    # (whether it refuses with QueueFullError or applies the overflow policy).
    q = make_queue(max_ops=1, overflow=overflow)
    a = q.enqueue("k", b"a")
    q.dead_letter(a, "x")
    q.enqueue("k", b"b")
    before = queue_snapshot(q)
    try:
        q.requeue_dead()
    except cs.QueueFullError:
        assert queue_snapshot(q) == before
    assert len(q) <= 1


# ----------------------------------------------------------- enqueue_many


def test_enqueue_many_returns_ids_in_order(queue: Any) -> None:
    got = queue.enqueue_many(
        [
            {"kind": "a", "payload": b"1", "key": "x", "priority": 75},
            {"kind": "b", "payload": "2"},
            {"kind": "c", "payload": {"v": 3}, "key": "x", "idempotency_key": "i-3"},
        ]
    )
    assert list(got) == [1, 2, 3]
    ops = {o.id: o for o in queue.peek(10)}
    assert (ops[1].kind, ops[1].key, ops[1].payload, ops[1].priority) == ("a", "x", b"1", 75)
    assert (ops[2].kind, ops[2].key, ops[2].payload, ops[2].priority) == ("b", None, b"2", 50)
    assert (ops[3].payload, ops[3].idempotency_key) == (b'{"v":3}', "i-3")


@pytest.mark.parametrize(
    ("bad_item", "error"),
    [
        ({"kind": "k", "payload": b"x", "priority": 300}, cs.InvalidArgumentError),
        ({"kind": "", "payload": b"x"}, cs.InvalidArgumentError),
        ({"kind": "k", "payload": b"x", "delay": -1.0}, cs.InvalidArgumentError),
        ({"kind": "k", "payload": {1, 2}}, TypeError),
    ],
)
def test_enqueue_many_is_atomic_on_a_bad_item(
    queue: Any, bad_item: dict[str, Any], error: type
) -> None:
    queue.enqueue("k", b"existing")
    before = queue_snapshot(queue)
    batch = [{"kind": "k", "payload": b"1"}, {"kind": "k", "payload": b"2", "key": "a"}, bad_item]
    with pytest.raises(error):
        queue.enqueue_many(batch)
    assert queue_snapshot(queue) == before


def test_enqueue_many_is_atomic_on_capacity(make_queue: MakeQueue) -> None:
    q = make_queue(max_ops=3)
    q.enqueue("k", b"existing")
    before = queue_snapshot(q)
    with pytest.raises(cs.QueueFullError):
        q.enqueue_many([{"kind": "k", "payload": str(i)} for i in range(3)])
    assert queue_snapshot(q) == before
    assert len(q.enqueue_many([{"kind": "k", "payload": "ok"}] * 2)) == 2


# -------------------------------------------------- durability, persistence


@pytest.mark.parametrize("durability", ["full", "normal", "off"])
def test_durability_levels(tmp_path: Path, durability: str) -> None:
    path = str(tmp_path / "q.db")
    with cs.SyncQueue.open(path, durability=durability) as q:
        op_id = q.enqueue("k", {"d": durability}, key="x")
    with cs.SyncQueue.open(path, durability=durability) as q:
        (op,) = q.peek(10)
        assert (op.id, op.json()) == (op_id, {"d": durability})


def test_default_durability_persists(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    with cs.SyncQueue.open(path) as q:
        q.enqueue("k", b"x")
    with cs.SyncQueue.open(path) as q:
        assert len(q) == 1


def test_persistence_across_reopen_keeps_every_attribute(
    tmp_path: Path, clock: cs.VirtualClock
) -> None:
    path = str(tmp_path / "q.db")
    with cs.SyncQueue.open(path, clock=clock) as q:
        q.enqueue(
            "set", {"v": 1}, key="user:1", priority=cs.Priority.CRITICAL, idempotency_key="i1"
        )
        q.enqueue("note", "text", delay=7.5, ttl=100.0)
        b = q.enqueue("blob", b"\x00\x01", key="user:2", priority=3)
        q.enqueue("gone", b"", key="user:3")
        assert take_one(q).id == 1
        clock.advance(1.0)
        q.dead_letter(4, "HTTP 422")
        assert take_one(q).id == b
        q.retry(b, 2.0, error="timeout")
        before = queue_snapshot(q)
        next_id = 5
    with cs.SyncQueue.open(path, clock=clock) as q:
        after = queue_snapshot(q)
        # op 1 was in flight: after the close it is pending again; the rest is unchanged
        assert after["len"] == before["len"] == 3
        assert after["dead"] == before["dead"]
        by_id = {t[0]: t for t in after["peek"]}
        for t in before["peek"]:
            assert by_id[t[0]] == t
        assert by_id[1][8] == 1 and by_id[1][11] == "pending"
        assert q.enqueue("k", b"") == next_id


def test_in_flight_ops_are_pending_again_after_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    q = cs.SyncQueue.open(path)
    a = q.enqueue("k", b"a", key="x")
    b = q.enqueue("k", b"b", key="y")
    assert ids(q.take(10)) == [a, b]
    q.retry(b, 0.0, error="e")
    q.take(10)
    q.close()
    with cs.SyncQueue.open(path) as q2:
        assert q2.stats()["in_flight"] == 0
        pending = {o.id: o for o in q2.peek(10)}
        assert (pending[a].state, pending[a].attempts) == ("pending", 1)
        assert (pending[b].state, pending[b].attempts, pending[b].last_error) == ("pending", 2, "e")
        assert ids(q2.take(10)) == [a, b]


def test_open_accepts_a_path_object(tmp_path: Path) -> None:
    with cs.SyncQueue.open(tmp_path / "q.db") as q:
        q.enqueue("k", b"")
    assert (tmp_path / "q.db").exists()


def test_files_are_private_0600(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    old = os.umask(0o022)
    try:
        q = cs.SyncQueue.open(str(path))
        try:
            q.enqueue("k", b"secret")
            for suffix in ("", "-wal", "-shm"):
                f = Path(str(path) + suffix)
                assert f.exists(), f"{f.name} missing (WAL mode?)"
                assert file_mode(f) == 0o600, f"{f.name}: {oct(file_mode(f))}"
        finally:
            q.close()
    finally:
        os.umask(old)
    assert file_mode(path) == 0o600


# -------------------------------------------------------------- read-only


def test_read_only_handle_inspects_while_another_handle_consumes(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    with cs.SyncQueue.open(path) as q:
        a = q.enqueue("k", b"a")
        b = q.enqueue("k", b"b")
        c = q.enqueue("k", b"c")
        assert ids(q.take(1)) == [a]
        q.dead_letter(b, "x")
        with cs.SyncQueue.open(path, read_only=True) as ro:
            assert len(ro) == 2
            stats = ro.stats()
            assert (stats["pending"], stats["in_flight"], stats["dead"]) == (1, 1, 1)
            assert ids(ro.peek(10)) == [c]
            assert ids(ro.dead_letters()) == [b]
            before = queue_snapshot(ro)
            with pytest.raises(cs.SyncError):
                ro.enqueue("k", b"d")
            with pytest.raises(cs.SyncError):
                ro.take(1)
            with pytest.raises(cs.SyncError):
                ro.purge_dead()
            assert queue_snapshot(ro) == before
            q.ack(a)  # the consumer carries on; the read-only handle sees it
            assert ids(q.take(1)) == [c]
            assert len(ro) == 1
            assert ro.stats()["in_flight"] == 1


def test_read_only_inspection_from_another_process(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    ctx = multiprocessing.get_context("spawn")
    with cs.SyncQueue.open(path) as q:
        a = q.enqueue("k", b"a")
        b = q.enqueue("k", b"b")
        c = q.enqueue("k", b"c")
        take_one(q)
        q.dead_letter(b, "x")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=child_read_only_inspect, args=(path, child))
        proc.start()
        child.close()
        try:
            msg = recv(parent)
        finally:
            proc.join(30)
            parent.close()
        assert proc.exitcode == 0
        proc.close()
        assert msg == ("inspected", 2, {"pending": 1, "in_flight": 1, "dead": 1}, [c], [b])
        q.ack(a)  # still the consumer
        assert ids(q.take(1)) == [c]


def test_read_only_open_of_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(cs.SyncError):
        cs.SyncQueue.open(str(path), read_only=True)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ order


def test_priority_inheritance(queue: Any) -> None:
    a1 = queue.enqueue("w", b"a1", key="user:1", priority=cs.Priority.LOW)
    a2 = queue.enqueue("w", b"a2", key="user:1", priority=cs.Priority.LOW)
    a3 = queue.enqueue("w", b"a3", key="user:1", priority=cs.Priority.CRITICAL)
    b1 = queue.enqueue("w", b"b1", key="other", priority=cs.Priority.HIGH)
    c1 = queue.enqueue("w", b"c1", priority=cs.Priority.MEDIUM)
    # user:1's effective priority is CRITICAL: its LOW writes do not keep a3 waiting
    assert ids(queue.peek(10)) == [a1, a2, a3, b1, c1]
    delivered = []
    for _ in range(5):
        op = take_one(queue)
        delivered.append(op.id)
        queue.ack(op.id)
    assert delivered == [a1, a2, a3, b1, c1]


def test_per_key_order_is_strict(queue: Any) -> None:
    x1 = queue.enqueue("w", b"1", key="k", priority=cs.Priority.LOW)
    x2 = queue.enqueue("w", b"2", key="k", priority=cs.Priority.CRITICAL)
    x3 = queue.enqueue("w", b"3", key="k", priority=cs.Priority.HIGH)
    assert ids(queue.take(10)) == [x1]  # only the head; the rest waits for its ack
    assert queue.take(10) == []
    queue.retry(x1, 0.0, error="e")
    assert ids(queue.take(10)) == [x1]  # a retried head stays the head
    queue.ack(x1)
    assert ids(queue.take(10)) == [x2]
    queue.ack(x2)
    assert ids(queue.take(10)) == [x3]


def test_no_head_of_line_blocking_across_keys(queue: Any, clock: cs.VirtualClock) -> None:
    stuck = queue.enqueue("w", b"a1", key="a", priority=cs.Priority.CRITICAL)
    behind = queue.enqueue("w", b"a2", key="a", priority=cs.Priority.CRITICAL)
    others = [queue.enqueue("w", b"b", key="b") for _ in range(3)]
    loose = queue.enqueue("w", b"n")
    take_one(queue)
    queue.retry(stuck, 100.0, error="HTTP 503")
    delivered = []
    for _ in range(4):
        clock.advance(1.0)
        op = take_one(queue)
        delivered.append(op.id)
        queue.ack(op.id)
    assert sorted(delivered) == sorted([*others, loose])
    assert [i for i in delivered if i in others] == others
    assert queue.take(10) == []
    assert len(queue) == 2
    clock.advance(100.0)
    op = take_one(queue)
    assert op.id == stuck
    queue.dead_letter(stuck, "gave up")  # a dead head lets its lane move on
    assert ids(queue.take(10)) == [behind]


# --------------------------------------------------------------- coalesce


def test_coalesce_replaces_the_pending_last_op_in_place(queue: Any, clock: cs.VirtualClock) -> None:
    first = queue.enqueue("set", {"v": 1}, key="doc", priority=cs.Priority.HIGH)
    other = queue.enqueue("set", {"v": 9}, key="other")
    (old,) = [o for o in queue.peek(10) if o.id == first]
    clock.advance(1.0)
    got = queue.enqueue(
        "set", {"v": 2}, key="doc", coalesce=True, priority=cs.Priority.LOW, delay=2.0
    )
    assert got == first
    assert len(queue) == 2
    (new,) = [o for o in queue.peek(10) if o.id == first]
    assert new.payload == b'{"v":2}'
    assert new.priority == 75  # the higher of the two
    assert new.idempotency_key != old.idempotency_key and is_uuid4(new.idempotency_key)
    assert new.hlc > old.hlc
    assert new.next_attempt_at == START + 1.0 + 2.0
    assert ids(queue.peek(10)) == [first, other]  # position kept
    got = queue.enqueue("set", {"v": 3}, key="doc", coalesce=True, idempotency_key="mine")
    assert got == first
    assert queue.peek(1)[0].idempotency_key == "mine"


def test_coalesce_resets_attempts(queue: Any) -> None:
    a = queue.enqueue("set", {"v": 1}, key="doc")
    take_one(queue)
    queue.retry(a, 0.0, error="e")
    assert queue.enqueue("set", {"v": 2}, key="doc", coalesce=True) == a
    (op,) = queue.peek(10)
    assert (op.id, op.attempts, op.payload) == (a, 0, b'{"v":2}')


def test_coalesce_appends_when_the_last_op_is_in_flight_or_of_another_kind(queue: Any) -> None:
    a = queue.enqueue("set", {"v": 1}, key="doc")
    take_one(queue)
    b = queue.enqueue("set", {"v": 2}, key="doc", coalesce=True)  # a is in flight
    assert b != a
    c = queue.enqueue("delete", None, key="doc", coalesce=True)  # last op is a "set"
    assert c not in (a, b)
    d = queue.enqueue("set", {"v": 3}, key="doc", coalesce=True)  # last op is the "delete"
    assert d not in (a, b, c)
    assert len(queue) == 4
    queue.dead_letter(d, "x")
    e = queue.enqueue("set", {"v": 4}, key="doc", coalesce=True)  # dead ops are not coalesced into
    assert e > d
    assert ids(queue.peek(10)) == [b, c, e]
