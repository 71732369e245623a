"""cpcsync.server.Receiver called directly, on each backend (SqliteBackend, and
PostgresBackend on a fresh database: the tests marked ``postgres``): results, exactly
once, versions, last-write-wins by HLC, hooks, the changes feed, pruning, an unavailable
database. What only one backend has (a file's mode, SQLite's write lock) is tested on
it alone; PostgreSQL under concurrency, crashes and outages: test_receiver_postgres.py.
(Over HTTP: test_receiver_http.py; the reference server: test_sync_server.py.)"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cpcsync as cs
from cpcsync.server import Backend, ProtocolError, Receiver, SqliteBackend

HLC = cs.HybridLogicalClock
NOW = 1_800_000_000.0  # the receiver's wall clock in these tests


def stamp(seconds: float, counter: int = 0) -> int:
    return int(HLC.pack(int(seconds * 1000), counter))


def op(ikey: str, key: str | None = "k", payload: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "set",
        "key": key,
        "payload": {"v": ikey} if payload is None else payload,
        "idempotency_key": ikey,
        "hlc": stamp(NOW - 10),
        "base_version": None,
    }
    body.update(extra)
    return body


@pytest.fixture
def clock() -> cs.VirtualClock:
    return cs.VirtualClock(start=NOW)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        with SqliteBackend(tmp_path / "server.db") as b:
            yield b
        return
    from cpcsync.server import PostgresBackend

    with PostgresBackend(request.getfixturevalue("cpcsync_postgres_db"), pool_size=4) as pb:
        yield pb


def sql(backend: Backend, statement: str) -> str:
    """``statement`` in the backend's parameter style (written with ``?``)."""
    return statement if isinstance(backend, SqliteBackend) else statement.replace("?", "%s")


@pytest.fixture
def rx(backend: Backend, clock: cs.VirtualClock) -> Receiver:
    return Receiver(backend, clock=clock)


def test_results_in_order_one_per_op(rx: Receiver) -> None:
    results = rx.apply_batch(
        [op("a", hlc=stamp(NOW - 5)), op("b", key="other"), "not an op", op("a")]
    )
    assert [r["status"] for r in results] == ["applied", "applied", "rejected", "duplicate"]
    assert results[0] == {"status": "applied", "version": 1, "hlc": stamp(NOW - 5)}
    assert results[3] == dict(results[0], status="duplicate")  # the first result replayed
    assert results[2]["reason"] == "an op must be a JSON object"
    assert rx.get("k") == {
        "value": {"v": "a"},
        "version": 1,
        "hlc": stamp(NOW - 5),
        "deleted": False,
    }


def test_same_idempotency_key_with_another_body_is_rejected(rx: Receiver) -> None:
    rx.apply_batch([op("a", payload=1)])
    [r] = rx.apply_batch([op("a", payload=2)])
    assert r["status"] == "rejected"
    assert "another body" in r["reason"]
    assert rx.get("k")["value"] == 1  # type: ignore[index]


def test_stale_base_version_is_a_conflict_and_does_not_use_up_the_key(rx: Receiver) -> None:
    rx.apply_batch([op("a"), op("b")])
    [r] = rx.apply_batch([op("c", base_version=1, payload="mine")])
    assert r == {
        "status": "conflict",
        "value": {"v": "b"},
        "version": 2,
        "hlc": stamp(NOW - 10),
        "deleted": False,
    }
    [r] = rx.apply_batch([op("c", base_version=2, payload="mine")])
    assert (r["status"], r["version"]) == ("applied", 3)


def test_without_base_version_an_older_hlc_is_a_conflict(rx: Receiver) -> None:
    rx.apply_batch([op("new", hlc=stamp(NOW - 1), payload="new")])
    [r] = rx.apply_batch([op("old", hlc=stamp(NOW - 60), payload="old")])
    assert (r["status"], r["value"], r["hlc"]) == ("conflict", "new", stamp(NOW - 1))
    [r] = rx.apply_batch([op("newer", hlc=stamp(NOW - 1, 1), payload="newer")])
    assert r["status"] == "applied"
    assert rx.get("k")["value"] == "newer"  # type: ignore[index]


def test_an_hlc_too_far_ahead_is_rejected_with_its_reason(backend: Backend) -> None:
    clock = cs.VirtualClock(start=NOW)
    rx = Receiver(backend, clock=clock, max_clock_skew=300.0)
    [r] = rx.apply_batch([op("a", hlc=stamp(NOW + 301))])
    assert r["status"] == "rejected"
    assert "301.0 s ahead" in r["reason"] and "max_clock_skew" in r["reason"]
    [r] = rx.apply_batch([op("b", hlc=stamp(NOW + 299))])
    assert r["status"] == "applied"
    # the receiver's clock observed it: an op without a stamp is stamped after it
    [r] = rx.apply_batch([op("c", key="x", hlc=None)])
    assert r["hlc"] > stamp(NOW + 299)


def test_delete_kind_marks_the_key_deleted(rx: Receiver) -> None:
    rx.apply_batch([op("a")])
    [r] = rx.apply_batch([{"kind": "delete", "key": "k", "idempotency_key": "d", "hlc": 1}])
    assert r["status"] == "conflict"  # hlc 1 is older than the value's
    [r] = rx.apply_batch([{"kind": "delete", "key": "k", "idempotency_key": "d2"}])
    assert r["status"] == "applied"
    assert rx.get("k") == {"value": None, "version": 2, "hlc": r["hlc"], "deleted": True}


def test_concurrent_writers_never_both_succeed_on_one_base_version(tmp_path: Path) -> None:
    # SQLite: eight receivers, each on its own connection to one file (as processes
    # would be), all writing key "k" against base_version 0 at once. (PostgreSQL:
    # test_receiver_postgres.py, from threads and from processes.)
    path = tmp_path / "shared.db"
    backends = [SqliteBackend(path, busy_timeout=30.0) for _ in range(8)]
    receivers = [Receiver(b) for b in backends]
    barrier = threading.Barrier(len(receivers))
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def write(i: int) -> None:
        barrier.wait()
        [r] = receivers[i].apply_batch([op(f"w{i}", base_version=0, hlc=None)])
        with lock:
            results.append(r)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(receivers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        statuses = sorted(r["status"] for r in results)
        assert statuses == ["applied"] + ["conflict"] * 7
        assert receivers[0].get("k")["version"] == 1  # type: ignore[index]
    finally:
        for b in backends:
            b.close()


# ----------------------------------------------------------------------- hooks


def test_apply_hook_writes_in_the_same_transaction(
    backend: Backend, clock: cs.VirtualClock
) -> None:
    backend.run(lambda tx: tx.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, qty INT)"))
    insert = sql(backend, "INSERT INTO orders (id, qty) VALUES (?, ?)")

    def apply(tx: Any, body: dict[str, Any]) -> None:
        qty = body["payload"]["qty"]
        if qty < 0:
            raise cs.PermanentError("qty must be >= 0")
        if qty == 13:
            raise RuntimeError("unlucky, try later")
        tx.execute(insert, (body["key"], qty))

    committed: list[list[dict[str, Any]]] = []
    rx = Receiver(backend, apply=apply, on_commit=committed.append, clock=clock)
    results = rx.apply_batch(
        [
            op("ok", key="o1", payload={"qty": 2}),
            op("neg", key="o2", payload={"qty": -1}),
            op("13", key="o3", payload={"qty": 13}),
        ]
    )
    assert [r["status"] for r in results] == ["applied", "rejected", "retry_later"]
    assert "qty must be >= 0" in results[1]["reason"]
    assert "RuntimeError" in results[2]["reason"]
    rows = backend.run(lambda tx: tx.execute("SELECT id, qty FROM orders").fetchall())
    assert rows == [("o1", 2)]
    assert rx.get("o2") is None and rx.get("o3") is None
    assert committed == [[results[0]]]
    # the retried op is not used up
    [r] = rx.apply_batch([op("13", key="o3", payload={"qty": 13})])
    assert r["status"] == "retry_later"


def test_authorize_refusal_rejects_only_that_op(backend: Backend, clock: cs.VirtualClock) -> None:
    seen: list[Any] = []

    def authorize(request: Any, body: dict[str, Any]) -> bool:
        seen.append(request)
        return not str(body["key"]).startswith("admin:")

    rx2 = Receiver(backend, authorize=authorize, clock=clock)
    results = rx2.apply_batch([op("a", key="admin:x"), op("b", key="user:x")])
    assert [r["status"] for r in results] == ["rejected", "applied"]
    assert results[0]["reason"] == "forbidden"
    assert seen == [None, None]  # a direct call has no HTTP request


def test_on_commit_failure_does_not_undo_the_commit(
    backend: Backend, clock: cs.VirtualClock
) -> None:
    def boom(results: list[dict[str, Any]]) -> None:
        raise RuntimeError("outbox down")

    rx = Receiver(backend, on_commit=boom, clock=clock)
    assert rx.apply_batch([op("a")])[0]["status"] == "applied"
    assert rx.get("k") is not None


# ---------------------------------------------------------------- changes feed


def test_changes_feed_in_commit_order_with_cursor_and_limit(rx: Receiver) -> None:
    rx.apply_batch([op("a", key="x"), op("b", key="y"), op("c", key=None, payload=[1])])
    rx.apply_batch([op("d", key="x")])
    page = rx.changes(limit=2)
    assert [c["idempotency_key"] for c in page["changes"]] == ["a", "b"]
    page2 = rx.changes(page["cursor"], limit=10)
    assert [c["idempotency_key"] for c in page2["changes"]] == ["c", "d"]
    assert page2["changes"][1] == {
        "key": "x",
        "kind": "set",
        "value": {"v": "d"},
        "version": 2,
        "hlc": stamp(NOW - 10),
        "deleted": False,
        "idempotency_key": "d",
    }
    assert page2["changes"][0]["version"] is None  # no key, no version
    empty = rx.changes(page2["cursor"])
    assert empty == {"changes": [], "cursor": page2["cursor"]}
    # a duplicate, a conflict and a rejection add no change
    rx.apply_batch([op("d", key="x"), op("e", key="x", base_version=0), "junk"])
    assert rx.changes(page2["cursor"])["changes"] == []


def test_long_poll_wakes_on_a_commit(rx: Receiver) -> None:
    cursor = rx.changes()["cursor"]
    got: list[dict[str, Any]] = []
    polling = threading.Event()

    def poll() -> None:
        polling.set()
        got.append(rx.changes(cursor, wait=60.0))

    t = threading.Thread(target=poll)
    t.start()
    polling.wait()
    rx.apply_batch([op("late")])
    t.join(30)
    assert not t.is_alive()
    assert [c["idempotency_key"] for c in got[0]["changes"]] == ["late"]


def test_long_poll_times_out_empty(rx: Receiver) -> None:
    assert rx.changes(wait=0.05)["changes"] == []


@pytest.mark.parametrize("since", ["abc", "-1", "1.5", "9" * 30])
def test_bad_cursor_is_refused(rx: Receiver, since: str) -> None:
    with pytest.raises(ProtocolError):
        rx.changes(since)


# ------------------------------------------------------------------- pruning


def test_records_below_a_devices_low_water_are_pruned(rx: Receiver, backend: Backend) -> None:
    rx.apply_batch([op(f"i{n}", key=f"k{n}", id=n) for n in range(1, 6)], device="dev-1")
    rx.apply_batch([op("other", key="z", id=1)], device="dev-2")
    assert backend.record_count() == 6
    rx.apply_batch([], device="dev-1", low_water=4)  # ops 1..3 acknowledged
    assert backend.record_count() == 3
    # op 4 is still protected: resent, it is a duplicate
    [r] = rx.apply_batch([op("i4", key="k4", id=4)], device="dev-1", low_water=4)
    assert r["status"] == "duplicate"


def test_records_are_pruned_by_age(backend: Backend, clock: cs.VirtualClock) -> None:
    rx = Receiver(backend, clock=clock, record_ttl=3600.0)
    rx.apply_batch([op("old")])
    clock.advance(1800.0)
    rx.apply_batch([op("young", key="y")])
    assert backend.record_count() == 2
    clock.advance(1801.0)
    assert rx.prune() == 1
    assert backend.record_count() == 1
    clock.advance(3600.0)
    rx.apply_batch([op("later", key="z")])  # pruning also runs on its own
    assert backend.record_count() == 1


# ------------------------------------------------------- unavailable database


def test_a_locked_database_answers_retry_later_and_applies_nothing(tmp_path: Path) -> None:
    # SQLite's write lock (PostgreSQL's outages: test_receiver_postgres.py)
    path = tmp_path / "server.db"
    with SqliteBackend(path, busy_timeout=0.05) as backend:
        rx = Receiver(backend, clock=cs.VirtualClock(start=NOW), record_ttl=None)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        results = rx.apply_batch([op("a"), op("b", key="y")])
        assert [r["status"] for r in results] == ["retry_later", "retry_later"]
        assert results[0]["reason"].startswith("database unavailable")
        other.execute("ROLLBACK")
        other.close()
        assert rx.changes()["changes"] == []
        assert [r["status"] for r in rx.apply_batch([op("a"), op("b", key="y")])] == [
            "applied",
            "applied",
        ]


def test_server_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    with SqliteBackend(path) as b:
        Receiver(b).apply_batch([op("a")])
    assert path.stat().st_mode & 0o777 == 0o600


def test_idempotency_records_stay_bounded_in_a_soak(rx: Receiver, backend: SqliteBackend) -> None:
    # A device sends 300 batches of 10 over time, each with its queue's low water (the
    # lowest id not yet acknowledged: the batch's first op): the table never holds more
    # than about one batch of that device, however long it runs.
    sizes = []
    for n in range(300):
        ops = [op(f"s{n}-{i}", key=f"s{i}", id=n * 10 + i + 1) for i in range(10)]
        results = rx.apply_batch(ops, device="soak", low_water=n * 10 + 1)
        assert {r["status"] for r in results} == {"applied"}
        sizes.append(backend.record_count())
    assert max(sizes) <= 20
    assert len(rx.changes(limit=10_000)["changes"]) == 3000
