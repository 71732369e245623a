"""PostgresBackend under what only PostgreSQL sees: writers in several threads and
processes on one database (never two applied on one base version, first writes racing,
the same op at two receivers), the changes feed read while they write (every change
once, in commit order), a receiver SIGKILLed mid-batch, the database going away
mid-batch and coming back, the schema created by several processes at once.

Everything backend-independent runs on both backends in test_receiver.py. These tests
need a PostgreSQL server (the ``cpcsync_postgres_db`` fixture: a fresh database on the
session's throwaway cluster) and are marked ``postgres``. Processes are started with
``python -c`` and synchronised through their pipes: each prints ``ready``, then waits
for a line on its standard input.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from cpcsync.server import Backend, BackendUnavailable, Entity, Receiver  # noqa: E402
from cpcsync.server.postgres_backend import SCHEMA_VERSION, PostgresBackend  # noqa: E402
from cpcsync.testing import SyncServer  # noqa: E402

pg = pytest.mark.postgres


def op(ikey: str, key: str | None = "k", payload: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "set",
        "key": key,
        "payload": {"v": ikey} if payload is None else payload,
        "idempotency_key": ikey,
    }
    body.update(extra)
    return body


@pytest.fixture
def dsn(cpcsync_postgres_db: str) -> str:
    return cpcsync_postgres_db


@pytest.fixture
def backend(dsn: str) -> Iterator[PostgresBackend]:
    with PostgresBackend(dsn, pool_size=4) as b:
        yield b


def rows(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return list(conn.execute(query, params).fetchall())


def run_threads(n: int, target: Callable[[int], None]) -> None:
    """``target(i)`` in ``n`` threads started together (a barrier); re-raises the
    first failure."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def main(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            target(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=main, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    if errors:
        raise errors[0]


class Children:
    """Child processes running ``script`` (argv: the arguments given), started
    together: each prints ``ready``, waits for a line on stdin, works, then prints one
    JSON line."""

    def __init__(self, script: str, argvs: list[list[str]]) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for argv in argvs
        ]

    def go(self) -> None:
        for p in self.procs:
            assert p.stdout is not None and p.stdin is not None
            assert p.stdout.readline().strip() == "ready", "a child failed to start"
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()

    def results(self) -> list[Any]:
        out = []
        for p in self.procs:
            stdout, _ = p.communicate(timeout=300)
            assert p.returncode == 0, f"a child failed (exit {p.returncode})"
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        return out

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()


@pytest.fixture
def children() -> Iterator[Callable[[str, list[list[str]]], Children]]:
    started: list[Children] = []

    def start(script: str, argvs: list[list[str]]) -> Children:
        c = Children(script, argvs)
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()


# ------------------------------------------------------------ concurrent writers


@pg
def test_writers_in_threads_never_both_succeed_on_one_base_version(dsn: str) -> None:
    # Eight backends (as eight receiver processes would have), all writing key "k"
    # against the same base version at once, round after round: round 0 is a race of
    # first writes to a key that does not exist yet.
    backends = [PostgresBackend(dsn, pool_size=1) for _ in range(8)]
    receivers = [Receiver(b, record_ttl=None) for b in backends]
    try:
        for version in range(6):
            results: list[dict[str, Any]] = [{}] * 8

            def write(i: int, version: int = version, results: list[Any] = results) -> None:
                [results[i]] = receivers[i].apply_batch(
                    [op(f"w{version}-{i}", base_version=version)]
                )

            run_threads(8, write)
            statuses = sorted(r["status"] for r in results)
            assert statuses == ["applied"] + ["conflict"] * 7, results
            assert {r["version"] for r in results} == {version + 1}
        assert receivers[0].get("k")["version"] == 6  # type: ignore[index]
    finally:
        for b in backends:
            b.close()


WRITER = r"""
import json, sys
from cpcsync.server import PostgresBackend, Receiver

dsn, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
backend = PostgresBackend(dsn, pool_size=1)
rx = Receiver(backend, record_ttl=None)
rx.get("k")  # connected
print("ready", flush=True)
sys.stdin.readline()
results = []
for i in range(n):  # optimistic concurrency: read the version, write against it
    current = rx.get("k")
    base = current["version"] if current else 0
    [r] = rx.apply_batch([{"kind": "set", "key": "k", "payload": [name, i],
                           "idempotency_key": f"{name}-{i}", "base_version": base}])
    results.append({"ikey": f"{name}-{i}", "base": base, **r})
backend.close()
print(json.dumps(results), flush=True)
"""


@pg
def test_writers_in_processes_never_both_succeed_on_one_base_version(
    dsn: str, backend: PostgresBackend, children: Callable[[str, list[list[str]]], Children]
) -> None:
    procs = children(WRITER, [[dsn, f"p{i}", "40"] for i in range(3)])
    procs.go()
    results = [r for rs in procs.results() for r in rs]
    applied = [r for r in results if r["status"] == "applied"]
    assert {r["status"] for r in results} <= {"applied", "conflict"}
    # each base version applied at most once, and the key's versions are exactly those
    assert Counter(r["base"] for r in applied).most_common(1)[0][1] == 1
    assert sorted(r["version"] for r in applied) == list(range(1, len(applied) + 1))
    assert all(r["version"] == r["base"] + 1 for r in applied)
    final = backend.get("k")
    assert final is not None and final.version == len(applied)
    feed = rows(dsn, "SELECT idempotency_key, version FROM changes WHERE key = 'k' ORDER BY seq")
    assert feed == [(r["ikey"], r["version"]) for r in sorted(applied, key=lambda r: r["version"])]
    # a conflict answered the version the key had moved to
    assert all(r["version"] > r["base"] for r in results if r["status"] == "conflict")


@pg
def test_first_writes_to_a_new_key_race(dsn: str) -> None:
    backends = [PostgresBackend(dsn, pool_size=1) for _ in range(4)]
    receivers = [Receiver(b, record_ttl=None) for b in backends]
    try:
        for n in range(15):
            # without base_version: all apply, one after the other (versions 1..4)
            lww: list[dict[str, Any]] = [{}] * 4

            def write_lww(i: int, n: int = n, out: list[Any] = lww) -> None:
                [out[i]] = receivers[i].apply_batch([op(f"l{n}-{i}", key=f"lww{n}")])

            # against base_version 0: exactly one applies
            based: list[dict[str, Any]] = [{}] * 4

            def write_based(i: int, n: int = n, out: list[Any] = based) -> None:
                [out[i]] = receivers[i].apply_batch(
                    [op(f"b{n}-{i}", key=f"based{n}", base_version=0)]
                )

            run_threads(4, write_lww)
            run_threads(4, write_based)
            assert sorted(r["version"] for r in lww) == [1, 2, 3, 4], lww
            assert sorted(r["status"] for r in based) == ["applied"] + ["conflict"] * 3
        versions = rows(
            dsn, "SELECT key, array_agg(version ORDER BY seq) FROM changes GROUP BY key"
        )
        for key, seen in versions:
            assert seen == (list(range(1, 5)) if key.startswith("lww") else [1]), key
    finally:
        for b in backends:
            b.close()


@pg
def test_a_conflict_on_a_missing_key_leaves_no_row(backend: PostgresBackend, dsn: str) -> None:
    rx = Receiver(backend, record_ttl=None)
    [r] = rx.apply_batch([op("c", key="ghost", base_version=3)])
    assert (r["status"], r["version"]) == ("conflict", 0)
    assert rx.get("ghost") is None
    assert rows(dsn, "SELECT count(*) FROM entities")[0][0] == 0
    assert rx.changes()["changes"] == []


@pg
def test_the_same_op_at_several_receivers_at_once_is_applied_once(dsn: str) -> None:
    # A client that timed out resends to another receiver while the first still works:
    # one applies, the others answer duplicate (not conflict, which the op's own
    # write would otherwise cause against its base_version).
    backends = [PostgresBackend(dsn, pool_size=1) for _ in range(4)]
    receivers = [Receiver(b, record_ttl=None) for b in backends]
    try:
        for n in range(10):
            out: list[dict[str, Any]] = [{}] * 4

            def send(i: int, n: int = n, out: list[Any] = out) -> None:
                body = op(f"same-{n}", key="k", payload=n, base_version=n)
                [out[i]] = receivers[i].apply_batch([body])

            run_threads(4, send)
            assert sorted(r["status"] for r in out) == ["applied"] + ["duplicate"] * 3, out
            assert {r["version"] for r in out} == {n + 1}
    finally:
        for b in backends:
            b.close()


@pg
def test_a_deadlock_reruns_the_transaction(backend: PostgresBackend) -> None:
    # Two batches lock keys a and b in opposite orders; each waits (in the apply hook,
    # first attempt only) until the other holds its first key: PostgreSQL detects the
    # deadlock, one transaction fails and run() re-runs it.
    rendezvous = threading.Barrier(2)
    calls: Counter[str] = Counter()

    def apply(tx: Any, body: dict[str, Any]) -> None:
        calls[body["idempotency_key"]] += 1
        if body["idempotency_key"] in ("1a", "2b") and calls[body["idempotency_key"]] == 1:
            rendezvous.wait(timeout=30)

    rx = Receiver(backend, apply=apply, record_ttl=None)
    rx.apply_batch([op("0a", key="a"), op("0b", key="b")])  # rows to lock FOR UPDATE
    results: list[list[dict[str, Any]]] = [[], []]

    def batch(i: int) -> None:
        keys = ["a", "b"] if i == 0 else ["b", "a"]
        results[i] = rx.apply_batch([op(f"{i + 1}{k}", key=k) for k in keys])

    run_threads(2, batch)
    assert [r["status"] for rs in results for r in rs] == ["applied"] * 4
    assert backend.retried >= 1
    assert sorted(rx.get(k)["version"] for k in "ab") == [3, 3]  # type: ignore[index]


@pg
def test_run_gives_up_after_max_attempts(dsn: str) -> None:
    with PostgresBackend(dsn, pool_size=1, max_attempts=3) as b:
        b.run(lambda tx: tx.execute("CREATE TABLE t (id INT PRIMARY KEY)"))
        b.run(lambda tx: tx.execute("INSERT INTO t VALUES (1)"))
        calls = []

        def insert(tx: Any) -> None:
            calls.append(1)
            tx.execute("INSERT INTO t VALUES (1)")

        with pytest.raises(BackendUnavailable, match="gave up after 3 attempts"):
            b.run(insert)
        assert len(calls) == 3


@pg
def test_a_savepoint_rolled_back_takes_its_change_with_it(backend: PostgresBackend) -> None:
    def fn(tx: Any) -> None:
        tx.lock_entity("kept")
        tx.write(**write_args("kept", "i1"))
        with pytest.raises(RuntimeError), tx.savepoint():
            assert tx.lock_entity("dropped") is None
            tx.write(**write_args("dropped", "i2"))
            raise RuntimeError("undo")

    backend.run(fn)
    assert [c["idempotency_key"] for c in backend.changes(0, 10)] == ["i1"]
    assert backend.get("dropped") is None and backend.get("kept") is not None


def write_args(key: str, ikey: str) -> dict[str, Any]:
    return {
        "key": key,
        "kind": "set",
        "entity": Entity("1", 1, 5, False),
        "idempotency_key": ikey,
        "fingerprint": "f",
        "result_json": "{}",
        "device": None,
        "op_id": None,
        "now": 0.0,
    }


# ------------------------------------------------------------------ changes feed

FEED_WRITER = r"""
import json, random, sys
from cpcsync.server import PostgresBackend, Receiver

dsn, name, batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(name)
backend = PostgresBackend(dsn, pool_size=1)
rx = Receiver(backend, record_ttl=None)
rx.get("x")
print("ready", flush=True)
sys.stdin.readline()
applied = []
for b in range(batches):
    ops = [{"kind": "set", "key": f"k{rng.randrange(12)}" if i % 4 else None,
            "payload": [name, b, i], "idempotency_key": f"{name}-{b}-{i}"}
           for i in range(rng.randrange(1, 7))]
    for body, r in zip(ops, rx.apply_batch(ops)):
        assert r["status"] == "applied", r
        applied.append(body["idempotency_key"])
backend.close()
print(json.dumps(applied), flush=True)
"""


@pg
def test_the_feed_under_concurrent_writer_processes_has_no_gaps_and_no_reordering(
    dsn: str, backend: PostgresBackend, children: Callable[[str, list[list[str]]], Children]
) -> None:
    # Three processes write batches (shared keys, some ops without key) while two
    # readers follow the feed with their cursors: one polling as fast as it can with a
    # small limit, one long-polling. Seq numbers taken before commit would let a
    # reader move its cursor past a change that commits later: it would never get it.
    rx = Receiver(backend, record_ttl=None)
    procs = children(FEED_WRITER, [[dsn, f"w{i}", "60"] for i in range(3)])
    got: dict[str, list[dict[str, Any]]] = {"poll": [], "long": []}
    cursors: dict[str, list[int]] = {"poll": [], "long": []}
    errors: list[BaseException] = []

    def follow(name: str, limit: int, wait: float) -> None:
        # until the change committed after all the writers' ("last"): a reader that
        # has it has been handed everything committed before it
        cursor = None
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                page = rx.changes(cursor, limit=limit, wait=wait)
                got[name].extend(page["changes"])
                cursor = page["cursor"]
                cursors[name].append(int(cursor))
                if any(c["idempotency_key"] == "last" for c in page["changes"]):
                    return
        except BaseException as e:
            errors.append(e)

    readers = [
        threading.Thread(target=follow, args=("poll", 3, 0.0)),
        threading.Thread(target=follow, args=("long", 50, 5.0)),
    ]
    for t in readers:
        t.start()
    procs.go()
    applied = [k for ks in procs.results() for k in ks]
    rx.apply_batch([op("last", key="z")])
    for t in readers:
        t.join(300)
    assert not errors, errors
    assert not any(t.is_alive() for t in readers)
    everything = backend.changes(0, 10_000)
    assert len(applied) > 300
    assert sorted(c["idempotency_key"] for c in everything) == sorted([*applied, "last"])
    for name in got:
        keys = [c["idempotency_key"] for c in got[name]]
        # every change exactly once, in the order the feed has them once all committed
        assert keys == [c["idempotency_key"] for c in everything], name
        assert cursors[name] == sorted(cursors[name])
    # commit order per key is version order
    versions: dict[str, list[int]] = defaultdict(list)
    for c in everything:
        if c["key"] is not None:
            versions[c["key"]].append(c["version"])
    for key, vs in versions.items():
        assert vs == list(range(1, len(vs) + 1)), key
    # and each writer's own batches appear in the order it committed them
    for w in ("w0", "w1", "w2"):
        mine = [c["idempotency_key"] for c in everything if c["idempotency_key"].startswith(w)]
        assert mine == [k for k in applied if k.startswith(w)]


# ------------------------------------------------------------------ SIGKILL

CRASH_CHILD = r"""
import json, sys
from cpcsync.server import PostgresBackend, Receiver

dsn, first = sys.argv[1], int(sys.argv[2])
rx = Receiver(PostgresBackend(dsn, pool_size=1))

def batch(n):
    return [{"kind": "set", "key": f"k{(n * 7 + i) % 13}", "payload": {"batch": n, "i": i},
             "idempotency_key": f"b{n}-{i}", "id": n * 10 + i} for i in range(8)]

if first > 0:  # the last complete batch, resent after the restart: duplicates only
    statuses = {r["status"] for r in rx.apply_batch(batch(first - 1), device="d")}
    print(json.dumps({"resent": first - 1, "statuses": sorted(statuses)}), flush=True)
n = first
while True:
    rx.apply_batch(batch(n), device="d", low_water=max(0, (n - 50) * 10))
    print(json.dumps({"done": n}), flush=True)
    n += 1
"""


def check_whole_batches(dsn: str) -> int:
    """The database's invariants; returns the number of complete batches in it."""
    changes = rows(dsn, "SELECT key, idempotency_key, version, value FROM changes ORDER BY seq")
    ikeys = [r[1] for r in changes]
    assert len(ikeys) == len(set(ikeys)), "an op applied twice"
    per_batch = Counter(k.split("-")[0] for k in ikeys)
    assert set(per_batch.values()) <= {8}, f"a batch half-applied: {per_batch}"
    counts = Counter(r[0] for r in changes)
    last = {r[0]: (r[2], r[3]) for r in changes}
    for key, version, value in rows(dsn, "SELECT key, version, value FROM entities"):
        assert version == counts[key], f"{key}: version {version}, {counts[key]} changes"
        assert (version, value) == last[key]
    records = {k for (k,) in rows(dsn, "SELECT idempotency_key FROM idempotency")}
    assert records <= set(ikeys), "a record without its change"
    return len(per_batch)


@pg
def test_sigkill_mid_batch_leaves_whole_batches(dsn: str) -> None:
    PostgresBackend(dsn).close()  # the schema, before the first child
    rounds = int(os.environ.get("CPCSYNC_CRASH_ROUNDS", "12"))
    rng = random.Random(20261205)
    first = 0
    for _ in range(rounds):
        child = subprocess.Popen(
            [sys.executable, "-c", CRASH_CHILD, dsn, str(first)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        try:
            if first > 0:
                resent = json.loads(child.stdout.readline())
                assert resent["statuses"] == ["duplicate"], resent
            for _ in range(rng.randrange(1, 6)):
                assert child.stdout.readline(), "the child died on its own"
            time.sleep(rng.random() / 500)  # where in the next batch the kill lands
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        first = check_whole_batches(dsn)  # batches 0..first-1 whole, the one cut absent
    assert first >= rounds


# ------------------------------------------------------- the database going away


def admin(dsn: str, statement: str) -> None:
    """``statement`` on the server's maintenance database, about ``dsn``'s database
    (``{db}`` in it is replaced by that database's quoted name)."""
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict

    from cpcsync.testing.postgres import database_dsn

    dbname = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(database_dsn(dsn, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(db=sql.Identifier(dbname), name=dbname))


BLOCK = "ALTER DATABASE {db} ALLOW_CONNECTIONS false"
UNBLOCK = "ALTER DATABASE {db} ALLOW_CONNECTIONS true"
TERMINATE = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = {name} AND pid <> pg_backend_pid()"
)


class Gate:
    """An apply hook that stops in the op whose key is ``key`` (first time only) until
    the test opens it, so the test can act while a batch is half done."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.reached = threading.Event()
        self.open = threading.Event()
        self.used = False

    def __call__(self, tx: Any, body: dict[str, Any]) -> None:
        if body.get("key") == self.key and not self.used:
            self.used = True
            self.reached.set()
            assert self.open.wait(60)


def in_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Runs ``fn`` in a thread; the returned function joins it and gives its result."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()

    def join() -> Any:
        t.join(120)
        assert out, "the call did not finish"
        return out[0]

    return join


@pg
def test_connections_terminated_mid_batch_the_batch_is_rerun_on_a_fresh_connection(
    dsn: str,
) -> None:
    gate = Gate("b")
    with PostgresBackend(dsn, pool_size=2) as backend:
        rx = Receiver(backend, apply=gate, record_ttl=None)
        rx.apply_batch([op("warm", key="w")])
        batch = [op("1", key="a"), op("2", key="b"), op("3", key="c")]
        result = in_thread(lambda: rx.apply_batch(batch))
        assert gate.reached.wait(60)
        admin(dsn, TERMINATE)  # every connection of the database, ours mid-batch
        gate.open.set()
        assert [r["status"] for r in result()] == ["applied"] * 3
        assert [c["idempotency_key"] for c in rx.changes()["changes"]] == ["warm", "1", "2", "3"]


def http(server: SyncServer, method: str, path: str, body: Any = None) -> tuple[int, Any, Any]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}"), resp.headers
    finally:
        conn.close()


@pg
def test_the_database_going_away_mid_batch_is_503_nothing_half_applied_then_recovers(
    dsn: str,
) -> None:
    gate = Gate("b")
    backend = PostgresBackend(dsn, pool_size=2, acquire_timeout=1.0, poll_interval=0.05)
    try:
        with SyncServer(receiver=Receiver(backend, apply=gate, record_ttl=None)) as server:
            assert http(server, "POST", "/ops", op("warm", key="w"))[0] == 200
            batch = {"ops": [op("1", key="a"), op("2", key="b"), op("3", key="c")]}
            answer = in_thread(lambda: http(server, "POST", "/ops/batch", batch))
            assert gate.reached.wait(60)
            admin(dsn, BLOCK)  # the database refuses new connections...
            admin(dsn, TERMINATE)  # ...and drops the ones it has, ours mid-batch
            gate.open.set()
            status, doc, headers = answer()
            assert (status, headers["Retry-After"]) == (503, "1")
            assert doc["error"].startswith("database unavailable")
            assert [r["status"] for r in doc["results"]] == ["retry_later"] * 3
            # while it is away: every request answers 503 at once, nothing else
            assert http(server, "POST", "/ops", op("x", key="x"))[0] == 503
            assert http(server, "GET", "/health")[0] == 503
            assert http(server, "GET", "/changes")[0] == 503
            with pytest.raises(BackendUnavailable):
                backend.run(lambda tx: tx.record("x"))
            admin(dsn, UNBLOCK)
            # nothing of the cut batch was applied
            assert rows(dsn, "SELECT idempotency_key FROM changes") == [("warm",)]
            assert rows(dsn, "SELECT count(*) FROM idempotency")[0][0] == 1
            # the pool reconnects: within a few requests the batch applies, whole
            deadline = time.monotonic() + 30
            while True:
                status, doc, _ = http(server, "POST", "/ops/batch", batch)
                statuses = {r["status"] for r in doc["results"]}
                assert (status, statuses) in ((503, {"retry_later"}), (200, {"applied"}))
                if status == 200 or time.monotonic() > deadline:
                    break
            assert status == 200
            assert http(server, "GET", "/health")[0] == 200
            # and a long poll is woken by the next commit
            cursor = http(server, "GET", "/changes")[1]["cursor"]
            poll = in_thread(lambda: http(server, "GET", f"/changes?since={cursor}&wait=60"))
            assert http(server, "POST", "/ops", op("after", key="w"))[0] == 200
            status, doc, _ = poll()
            assert [c["idempotency_key"] for c in doc["changes"]] == ["after"]
    finally:
        backend.close()
    assert [k for (k,) in rows(dsn, "SELECT idempotency_key FROM changes ORDER BY seq")] == [
        "warm",
        "1",
        "2",
        "3",
        "after",
    ]


# ------------------------------------------------------------------- schema

SCHEMA_CHILD = r"""
import json, sys
from cpcsync.server import PostgresBackend, Receiver

dsn, name = sys.argv[1], sys.argv[2]
print("ready", flush=True)
sys.stdin.readline()
with PostgresBackend(dsn, pool_size=1) as backend:
    [r] = Receiver(backend).apply_batch([{"kind": "set", "key": name, "payload": 1,
                                          "idempotency_key": name}])
print(json.dumps(r), flush=True)
"""


@pg
def test_schema_creation_racing_from_processes(
    dsn: str, children: Callable[[str, list[list[str]]], Children]
) -> None:
    procs = children(SCHEMA_CHILD, [[dsn, f"p{i}"] for i in range(4)])
    procs.go()
    assert [r["status"] for r in procs.results()] == ["applied"] * 4
    assert rows(dsn, "SELECT name, value FROM meta") == [("schema_version", SCHEMA_VERSION)]
    assert rows(dsn, "SELECT count(*) FROM changes")[0][0] == 4


@pg
def test_a_newer_schema_is_refused(dsn: str) -> None:
    PostgresBackend(dsn).close()
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE meta SET value = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(BackendUnavailable, match="newer than this cpcsync"):
        PostgresBackend(dsn)


def test_an_unreachable_server_is_backend_unavailable() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendUnavailable, match="cannot open"):
        PostgresBackend(f"postgresql://x@127.0.0.1:{port}/x", acquire_timeout=0.5)


def test_a_malformed_dsn_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="dsn is not a connection string"):
        PostgresBackend("host=127.0.0.1 port")


# ------------------------------------------------------------ settings


@pg
@pytest.mark.parametrize(
    "options",
    [
        {"prepare_threshold": None},  # an old PgBouncer in transaction mode
        {"prepare_threshold": 0},  # everything prepared at once
        {"listen": False, "poll_interval": 0.05},  # long polls without LISTEN
    ],
    ids=["no-prepare", "prepare-all", "no-listen"],
)
def test_settings(dsn: str, options: dict[str, Any]) -> None:
    with PostgresBackend(dsn, pool_size=2, **options) as backend:
        rx = Receiver(backend, record_ttl=None)
        for n in range(8):  # past prepare_threshold's default of 5
            results = rx.apply_batch([op(f"{n}-{i}", key=f"k{i}") for i in range(3)])
            assert {r["status"] for r in results} == {"applied"}
        cursor = rx.changes(limit=10_000)["cursor"]
        poll = in_thread(lambda: rx.changes(cursor, wait=60))
        rx.apply_batch([op("late")])
        assert [c["idempotency_key"] for c in poll()["changes"]] == ["late"]
        assert rx.get("k2")["version"] == 8  # type: ignore[index]


def test_importing_cpcsync_server_does_not_need_psycopg() -> None:
    script = (
        "import sys\n"
        "sys.modules['psycopg'] = None\n"
        "import cpcsync.server\n"
        "from cpcsync.server import *\n"
        "try:\n"
        "    from cpcsync.server import PostgresBackend\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.count("\n") == 1 and "pip install 'cpcsync[postgres]'" in out, out


def test_backend_type() -> None:
    assert issubclass(PostgresBackend, Backend)
