"""The queue group: cpcsync.SyncQueue against persist-queue, litequeue, queue.Queue and raw sqlite3.

Every case takes the same ~100-byte JSON-like dict (`PAYLOAD`); whoever stores it
encodes it inside the timed call (cpcsync and the raw sqlite3 cases as compact
JSON, persist-queue with its default pickle serializer, litequeue as the JSON text
it requires). The raw sqlite3 cases are the ceilings: one INSERT of a row shaped
like cpcsync's `ops` row (no secondary indexes, idempotency keys generated before
timing) in an autocommit transaction, on a connection in WAL mode.
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import cpcsync as cs
from harness import Case, Group, Measurement, Target, time_calls, time_threads

PAYLOAD: dict[str, Any] = {
    "user_id": "user:000042",
    "field": "currency",
    "value": "BTC",
    "seq": 123456,
    "ts": 1700000000.123,
    "device": "ios-17",
}
KIND = "set_field"
BATCH = 1_000
THREADS = 4
Durability = Literal["full", "normal", "off"]
WARMUP = 20  # untimed ops before each timed loop (statement preparation, first pages)


# What cpcsync does with a dict payload (docs/queue-semantics.md, Enqueue), with the
# encoder built once: the cheapest way the standard library offers.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _encode(payload: dict[str, Any]) -> bytes:
    return _ENCODER.encode(payload).encode()


PAYLOAD_BYTES = len(_encode(PAYLOAD))


def _expect(what: str, got: int, want: int) -> None:
    if got != want:
        raise RuntimeError(f"{what}: expected {want} ops stored, found {got}")


def _sync_level(conn: sqlite3.Connection | None) -> str:
    if conn is None:
        return "synchronous unknown"
    level = int(conn.execute("PRAGMA synchronous").fetchone()[0])
    mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    return f"{mode.upper()}, synchronous={['OFF', 'NORMAL', 'FULL', 'EXTRA'][level]}"


# --------------------------------------------------------------------------- reference


def disk_fdatasync(d: Path, n: int) -> Measurement:
    """The disk's own cost of a durable append: write ~100 bytes, fdatasync."""
    fd = os.open(d / "append.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    data = _encode(PAYLOAD)

    def call() -> None:
        os.write(fd, data)
        os.fdatasync(fd)

    try:
        return time_calls(call, n, warmup=WARMUP, note="os.write + os.fdatasync")
    finally:
        os.close(fd)


def json_encode(d: Path, n: int) -> Measurement:
    """The payload encoding cpcsync does for a dict, alone: a floor under dict enqueues."""
    return time_calls(
        lambda: _encode(PAYLOAD), n, warmup=WARMUP, note="compact JSONEncoder.encode + UTF-8, alone"
    )


# --------------------------------------------------------------------------- cpcsync


def _enqueue_one_at_a_time(d: Path, n: int, durability: Durability) -> Measurement:
    q = cs.SyncQueue.open(str(d / "q.db"), durability=durability)
    try:
        m = time_calls(
            lambda: q.enqueue(KIND, PAYLOAD),
            n,
            warmup=WARMUP,
            note=f'durability="{durability}"',
        )
        _expect("enqueue", len(q), n + WARMUP)
        return m
    finally:
        q.close()


def cpcsync_enqueue_full(d: Path, n: int) -> Measurement:
    return _enqueue_one_at_a_time(d, n, "full")


def cpcsync_enqueue_normal(d: Path, n: int) -> Measurement:
    return _enqueue_one_at_a_time(d, n, "normal")


def cpcsync_enqueue_full_threads(d: Path, n: int) -> Measurement:
    q = cs.SyncQueue.open(str(d / "q.db"), durability="full")
    try:
        for _ in range(WARMUP):
            q.enqueue(KIND, PAYLOAD)

        def make_call(_: int) -> Any:
            return lambda: q.enqueue(KIND, PAYLOAD)

        m = time_threads(
            make_call,
            THREADS,
            n // THREADS,
            note=f'{THREADS} threads, one handle, durability="full"; ops/s is the aggregate',
        )
        _expect("threaded enqueue", len(q), n + WARMUP)
        return m
    finally:
        q.close()


def cpcsync_enqueue_many_full(d: Path, n: int) -> Measurement:
    q = cs.SyncQueue.open(str(d / "q.db"), durability="full")
    items = [{"kind": KIND, "payload": PAYLOAD} for _ in range(BATCH)]
    try:
        m = time_calls(
            lambda: q.enqueue_many(items),
            n // BATCH,
            ops_per_call=BATCH,
            warmup=1,
            per=f"{BATCH:,}-op batch",
            note=f'batches of {BATCH:,}, durability="full"; ops/s counts ops',
        )
        _expect("enqueue_many", len(q), n + BATCH)
        return m
    finally:
        q.close()


def cpcsync_take_ack_full(d: Path, n: int) -> Measurement:
    q = cs.SyncQueue.open(str(d / "q.db"), durability="full")
    total = n + WARMUP
    items = [{"kind": KIND, "payload": PAYLOAD} for _ in range(BATCH)]
    try:
        for _ in range(total // BATCH):
            q.enqueue_many(items)
        for _ in range(total % BATCH):
            q.enqueue(KIND, PAYLOAD)
        _expect("take+ack prefill", len(q), total)

        def cycle() -> None:
            op = q.take(1)[0]
            q.ack(op.id)

        m = time_calls(
            cycle,
            n,
            warmup=WARMUP,
            per="take+ack",
            note=f'queue prefilled with {total:,} ops, durability="full"',
        )
        _expect("take+ack", len(q), 0)
        return m
    finally:
        q.close()


def _memory_enqueue(n: int, payload: dict[str, Any] | bytes, note: str) -> Measurement:
    q = cs.SyncQueue.in_memory()
    try:
        m = time_calls(lambda: q.enqueue(KIND, payload), n, warmup=WARMUP, note=note)
        _expect("in-memory enqueue", len(q), n + WARMUP)
        return m
    finally:
        q.close()


def cpcsync_memory_enqueue(d: Path, n: int) -> Measurement:
    return _memory_enqueue(n, PAYLOAD, "dict payload (encoded to JSON by cpcsync)")


def cpcsync_memory_enqueue_bytes(d: Path, n: int) -> Measurement:
    return _memory_enqueue(n, _encode(PAYLOAD), "the same payload pre-encoded: no JSON step")


# --------------------------------------------------------------------------- peers


def persistqueue_put(d: Path, n: int) -> Measurement:
    import persistqueue

    q = persistqueue.SQLiteQueue(str(d / "pq"), auto_commit=True)
    try:
        note = f"{_sync_level(q._putter)}, pickle"
        return time_calls(lambda: q.put(PAYLOAD), n, warmup=WARMUP, note=note)
    finally:
        q.close()


def persistqueue_ack_put(d: Path, n: int) -> Measurement:
    import persistqueue

    q = persistqueue.SQLiteAckQueue(str(d / "pq"))
    try:
        note = f"{_sync_level(q._putter)}, pickle"
        return time_calls(lambda: q.put(PAYLOAD), n, warmup=WARMUP, note=note)
    finally:
        q.close()


def persistqueue_ack_get_ack(d: Path, n: int) -> Measurement:
    import persistqueue

    q = persistqueue.SQLiteAckQueue(str(d / "pq"))
    try:
        for _ in range(n + WARMUP):
            q.put(PAYLOAD)

        def cycle() -> None:
            item = q.get(block=False)
            q.ack(item)

        note = f"{_sync_level(q._putter)}; get() then ack(item), prefilled with {n + WARMUP:,}"
        m = time_calls(cycle, n, warmup=WARMUP, per="get+ack", note=note)
        _expect("SQLiteAckQueue get+ack", q.qsize(), 0)
        return m
    finally:
        q.close()


def litequeue_put(d: Path, n: int) -> Measurement:
    import litequeue  # type: ignore[import-untyped]

    q = litequeue.LiteQueue(str(d / "lq.db"))
    try:
        note = f"{_sync_level(q.conn)}; LiteQueue.put(json.dumps(payload))"
        return time_calls(lambda: q.put(json.dumps(PAYLOAD)), n, warmup=WARMUP, note=note)
    finally:
        q.conn.close()


def stdlib_queue_put(d: Path, n: int) -> Measurement:
    q: queue.Queue[dict[str, Any]] = queue.Queue()
    return time_calls(lambda: q.put(PAYLOAD), n, warmup=WARMUP, note="in memory")


# --------------------------------------------------------------------------- raw sqlite3

_OPS_TABLE = """
CREATE TABLE ops(
  id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, key TEXT,
  payload BLOB NOT NULL, size INTEGER NOT NULL, priority INTEGER NOT NULL,
  idempotency_key TEXT NOT NULL, hlc INTEGER NOT NULL, created_at REAL NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
  state INTEGER NOT NULL DEFAULT 0)
"""
_INSERT = (
    "INSERT INTO ops(kind, key, payload, size, priority, idempotency_key, hlc, created_at, "
    "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
Row = tuple[str, None, bytes, int, int, str, int, float, float]


def _raw_connection(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None)  # autocommit: one INSERT = one txn
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(_OPS_TABLE)
    return conn


def _row(kind: str, payload: dict[str, Any], idem: str) -> Row:
    data = _encode(payload)
    now = time.time()
    return (kind, None, data, len(data), 50, idem, time.time_ns(), now, now)


def _raw_insert(d: Path, n: int, synchronous: str) -> Measurement:
    conn = _raw_connection(d / "raw.db", synchronous)
    keys = iter([str(uuid.uuid4()) for _ in range(n + WARMUP)])
    try:
        note = f"{_sync_level(conn)}; one INSERT per autocommit transaction"
        return time_calls(
            lambda: conn.execute(_INSERT, _row(KIND, PAYLOAD, next(keys))),
            n,
            warmup=WARMUP,
            note=note,
        )
    finally:
        conn.close()


def sqlite_insert_full(d: Path, n: int) -> Measurement:
    return _raw_insert(d, n, "FULL")


def sqlite_insert_normal(d: Path, n: int) -> Measurement:
    return _raw_insert(d, n, "NORMAL")


def sqlite_executemany_full(d: Path, n: int) -> Measurement:
    conn = _raw_connection(d / "raw.db", "FULL")
    items: list[dict[str, Any]] = [{"kind": KIND, "payload": PAYLOAD} for _ in range(BATCH)]
    keys = iter([str(uuid.uuid4()) for _ in range(n + BATCH)])

    def batch() -> None:
        rows = [_row(it["kind"], it["payload"], next(keys)) for it in items]
        conn.execute("BEGIN")
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")

    try:
        note = f"{_sync_level(conn)}; {BATCH:,} rows per transaction; ops/s counts rows"
        return time_calls(
            batch,
            n // BATCH,
            ops_per_call=BATCH,
            warmup=1,
            per=f"{BATCH:,}-row batch",
            note=note,
        )
    finally:
        conn.close()


# --------------------------------------------------------------------------- checks


def checks(r: dict[str, Measurement]) -> list[str]:
    """Remarks that follow from the numbers alone (durability, group commit)."""
    out: list[str] = []
    disk = r.get("disk.fdatasync")
    full = r.get("cpcsync.enqueue.full")
    normal = r.get("cpcsync.enqueue.normal")
    raw_full = r.get("sqlite.insert.full")
    threads = r.get("cpcsync.enqueue.full.threads")
    if disk and raw_full:
        out.append(
            f"- The disk's write+fdatasync p50 is {disk.percentile_us(50):.0f} µs; the raw "
            f"sqlite3 FULL insert+commit p50 is {raw_full.percentile_us(50):.0f} µs, so a "
            "commit at synchronous=FULL costs at least one fdatasync here."
        )
    if disk and full:
        fp50, dp50 = full.percentile_us(50), disk.percentile_us(50)
        if fp50 < 0.5 * dp50:
            out.append(
                f'- **Durability suspect**: cpcsync enqueue at "full" has p50 {fp50:.1f} µs, '
                f"below half of one fdatasync on this disk ({dp50:.0f} µs). A commit that "
                'waits for an fsync cannot be that fast, so single "full" enqueues are not '
                "being synced to disk one commit at a time. Until that is fixed, the PASS "
                'of "within 1.3x of the raw FULL ceiling" means nothing (cpcsync is compared '
                "with a ceiling that pays an fsync it does not), and the 4-thread target "
                "measures CPU contention instead of group commit."
            )
        else:
            out.append(
                f'- cpcsync enqueue at "full" (p50 {fp50:.0f} µs) is consistent with one '
                f"fdatasync per commit (disk p50 {dp50:.0f} µs)."
            )
    if full and normal and full.ops_per_s >= 0.8 * normal.ops_per_s:
        out.append(
            f'- cpcsync "full" ({full.ops_per_s:,.0f} ops/s) runs at '
            f'{full.ops_per_s / normal.ops_per_s:.2f}x the "normal" rate '
            f"({normal.ops_per_s:,.0f} ops/s): the two levels are not behaving differently."
        )
    if full and threads and disk and full.percentile_us(50) < 0.5 * disk.percentile_us(50):
        out.append(
            "- Group commit can only multiply throughput when each commit waits for the "
            "disk; with single enqueues this far below one fdatasync, the 4-thread case "
            f"({threads.ops_per_s:,.0f} ops/s aggregate, p50 {threads.percentile_us(50):.0f} µs "
            f"per enqueue) is bound by CPU ({os.cpu_count()} cores, one writer) instead."
        )
    enc, mem = r.get("json.encode"), r.get("cpcsync.memory.enqueue")
    mem_bytes = r.get("cpcsync.memory.enqueue.bytes")
    if enc and mem and mem_bytes:
        out.append(
            f"- In-memory enqueue: {mem.percentile_us(50):.2f} µs p50 with the dict payload, "
            f"{mem_bytes.percentile_us(50):.2f} µs with the same payload as bytes; JSON "
            f"encoding alone takes {enc.percentile_us(50):.2f} µs p50 in this run."
        )
    return out


# --------------------------------------------------------------------------- the group


def group() -> Group:
    # Op counts: fsync-bound cases `fs`, in-memory cases `mem`, the rest in between. The
    # whole run stays within ~2-3 minutes on a 2-core VM even when every "full" commit and
    # every persist-queue op pays one fdatasync of ~1 ms.
    fs, mid, mem = 5_000, 50_000, 500_000
    cases = [
        Case("disk.fdatasync", "disk: write ~100 B + fdatasync (reference)", fs, disk_fdatasync),
        Case("json.encode", "json encoding of the payload (reference)", mem, json_encode),
        Case("cpcsync.enqueue.full", 'cpcsync enqueue, "full"', fs, cpcsync_enqueue_full),
        Case("cpcsync.enqueue.normal", 'cpcsync enqueue, "normal"', mid, cpcsync_enqueue_normal),
        Case(
            "cpcsync.enqueue.full.threads",
            f'cpcsync enqueue, "full", {THREADS} threads',
            4 * fs,
            cpcsync_enqueue_full_threads,
            multiple_of=THREADS,
        ),
        Case(
            "cpcsync.enqueue_many.full",
            f'cpcsync enqueue_many x{BATCH:,}, "full"',
            200_000,
            cpcsync_enqueue_many_full,
            multiple_of=BATCH,
        ),
        Case("cpcsync.take_ack.full", 'cpcsync take(1)+ack, "full"', mid, cpcsync_take_ack_full),
        Case("cpcsync.memory.enqueue", "cpcsync in-memory enqueue", mem, cpcsync_memory_enqueue),
        Case(
            "cpcsync.memory.enqueue.bytes",
            "cpcsync in-memory enqueue, bytes payload (reference)",
            mem,
            cpcsync_memory_enqueue_bytes,
        ),
        Case("persistqueue.put", "persist-queue SQLiteQueue.put", fs, persistqueue_put),
        Case("persistqueue.ack.put", "persist-queue SQLiteAckQueue.put", fs, persistqueue_ack_put),
        Case(
            "persistqueue.ack.get_ack",
            "persist-queue SQLiteAckQueue get+ack",
            fs,
            persistqueue_ack_get_ack,
        ),
        Case("litequeue.put", "litequeue LiteQueue.put", mid, litequeue_put),
        Case("stdlib.queue.put", "queue.Queue.put", mem, stdlib_queue_put),
        Case("sqlite.insert.full", "raw sqlite3 INSERT+commit, FULL", fs, sqlite_insert_full),
        Case(
            "sqlite.insert.normal",
            "raw sqlite3 INSERT+commit, NORMAL",
            mid,
            sqlite_insert_normal,
        ),
        Case(
            "sqlite.executemany.full",
            f"raw sqlite3 executemany x{BATCH:,}, FULL",
            200_000,
            sqlite_executemany_full,
            multiple_of=BATCH,
        ),
    ]
    targets = [
        Target(
            'enqueue "normal" vs litequeue put',
            "cpcsync.enqueue.normal",
            "litequeue.put",
            8,
            reference="sqlite.insert.normal",
        ),
        Target(
            f'enqueue "full", {THREADS} threads vs 1 thread',
            "cpcsync.enqueue.full.threads",
            "cpcsync.enqueue.full",
            3,
        ),
        Target(
            'take+ack "full" vs persist-queue get+ack',
            "cpcsync.take_ack.full",
            "persistqueue.ack.get_ack",
            5,
        ),
        Target(
            "enqueue_many vs raw executemany",
            "cpcsync.enqueue_many.full",
            "sqlite.executemany.full",
            0.5,
        ),
        Target(
            'enqueue "full" vs raw FULL insert+commit ceiling',
            "cpcsync.enqueue.full",
            "sqlite.insert.full",
            1.3,
            mode="within",
        ),
        Target(
            "in-memory enqueue vs queue.Queue.put",
            "cpcsync.memory.enqueue",
            "stdlib.queue.put",
            0.5,
            reference="json.encode",
        ),
    ]
    description = (
        f"Payload: a {PAYLOAD_BYTES}-byte (as compact JSON) dict, the same object for every "
        "case. Each case runs on fresh files. cpcsync cases use `key=None` and the default "
        'priority. The raw sqlite3 rows mirror cpcsync\'s `ops` row. `"full"` = WAL + '
        'synchronous=FULL, `"normal"` = WAL + synchronous=NORMAL (docs/queue-semantics.md).'
        "\n\n"
        "**Why the misses miss** (measured while profiling, 2026-11-25):\n\n"
        '- *"normal" vs litequeue (target 8x).* The target is beyond the physical ceiling '
        "of this design: one SQLite commit per enqueue. Raw sqlite3 doing the least possible "
        "(one row, one commit, NORMAL) runs at about 1.6x litequeue in the same run, so 8x "
        "litequeue is about 5x that ceiling. Our commit also costs more than the raw one: "
        "perf shows 45% of the time in the kernel copying WAL frames and 36% in SQLite "
        "(mostly WAL frame checksums); a cpcsync commit writes the op row, its priority "
        "index, the `ready` row and its order index, the counters row and AUTOINCREMENT's "
        "`sqlite_sequence` row (6 pages against the raw insert's 2). 2 KiB pages (instead "
        "of 4 KiB) took this from 19k to 24k ops/s. A handle at 'normal' now "
        "checkpoints on a background thread (`cpp/src/sqlite/checkpointer.h`), so its "
        "commits pay for one only when the WAL reaches 8,000 frames "
        "(the p99 was ~280 us, the auto-checkpoint). Still open: drop AUTOINCREMENT (keep "
        "the next id in the counters row) and make `ready` one WITHOUT ROWID b-tree.\n"
        '- *"full", 4 threads vs 1 (target 3x).* Group commit works (fdatasync calls show '
        "3.3-3.7 enqueues per commit with 4 writers, and under strace, where syscalls are "
        "slower, 5x), but on this virtual disk a commit carrying 4 ops takes about twice "
        "as long as a commit carrying one, so throughput gains ~2x, not 4x. The same holds "
        "from C++ alone (no GIL): 1.6-2.5x over runs.\n"
        "- *In-memory enqueue vs queue.Queue.put (target 0.5x).* queue.Queue stores a "
        "reference; cpcsync must serialise the dict, and the standard library's JSON "
        "encoder alone takes about 2.8 us per op, more than the whole budget (0.5x of "
        "queue.Queue is ~1.8 us). With a payload that is already bytes, the same enqueue "
        "runs at about 0.6x queue.Queue.put (the reference row), which meets the target."
    )
    return Group(
        name="queue",
        title="Queue",
        cases=cases,
        targets=targets,
        checks=checks,
        description=description,
        packages=["cpcsync", "persist-queue", "litequeue"],
    )
