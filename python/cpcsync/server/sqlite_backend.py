"""SqliteBackend: the embedded default, one SQLite file (WAL, synchronous=FULL, 0600).

Transactions are ``BEGIN IMMEDIATE``: SQLite has one writer at a time, across every
thread and process using the file, so commit order is seq order and the changes feed
has no gaps by construction. An answer "applied" is only given once the commit is
durable (synchronous=FULL). In one process every call shares one connection behind a
lock; several processes (``cpcsync serve --workers N``) share the file, waiting up to
``busy_timeout`` seconds for its write lock before answering retry_later.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from cpcsync.server.backend import Backend, BackendUnavailable, Entity, Tx, Write

__all__ = ["SqliteBackend"]

T = TypeVar("T")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entities (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, version INTEGER NOT NULL,
    hlc INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    idempotency_key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, result TEXT NOT NULL,
    device TEXT, op_id INTEGER, created_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_by_device ON idempotency (device, op_id)
    WHERE device IS NOT NULL;
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_at);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY, key TEXT, kind TEXT, value TEXT NOT NULL,
    version INTEGER, hlc INTEGER NOT NULL, deleted INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL, committed_at REAL NOT NULL);
"""
_CHANGE_NAMES = ("seq", "key", "kind", "value", "version", "hlc", "deleted", "idempotency_key")


def _change_row(w: Write) -> tuple[Any, ...]:
    e = w.entity
    return (
        w.key,
        w.kind,
        e.value_json if e else "null",
        e.version if e and w.key is not None else None,
        e.hlc if e else 0,
        int(e.deleted) if e else 0,
        w.idempotency_key,
        w.now,
    )


class _SqliteTx(Tx):
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    @property
    def connection(self) -> sqlite3.Connection:
        """The sqlite3 connection (``?`` parameters)."""
        return self._db

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        """One statement in this transaction."""
        return self._db.execute(sql, params)

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """Rolls back to here if the block raises."""
        # One name serves nested savepoints too: ROLLBACK TO and RELEASE act on the
        # innermost savepoint of that name.
        self._db.execute("SAVEPOINT cpcsync_op")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK TO cpcsync_op")
            self._db.execute("RELEASE cpcsync_op")
            raise
        self._db.execute("RELEASE cpcsync_op")

    def record(self, idempotency_key: str) -> tuple[str, str] | None:
        """The applied op's fingerprint and result, or None."""
        row = self._db.execute(
            "SELECT fingerprint, result FROM idempotency WHERE idempotency_key = ?",
            (idempotency_key,),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def lock_batch(self, keys: list[str], idempotency_keys: list[str]) -> None:
        """Nothing to do: BEGIN IMMEDIATE made this the only writer."""

    def lock_entity(self, key: str) -> Entity | None:
        """BEGIN IMMEDIATE already holds the only write lock: a plain read."""
        row = self._db.execute(
            "SELECT value, version, hlc, deleted FROM entities WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else Entity(row[0], row[1], row[2], bool(row[3]))

    def write(
        self,
        *,
        key: str | None,
        kind: str | None,
        entity: Entity | None,
        idempotency_key: str,
        fingerprint: str,
        result_json: str,
        device: str | None,
        op_id: int | None,
        now: float,
    ) -> int:
        """Entity, record and change, in this transaction."""
        db = self._db
        if key is not None and entity is not None:
            db.execute(
                "INSERT INTO entities (key, value, version, hlc, deleted) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "version = excluded.version, hlc = excluded.hlc, deleted = excluded.deleted",
                (key, entity.value_json, entity.version, entity.hlc, int(entity.deleted)),
            )
        db.execute(
            "INSERT INTO idempotency (idempotency_key, fingerprint, result, device, op_id, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (idempotency_key, fingerprint, result_json, device, op_id, now),
        )
        cur = db.execute(
            "INSERT INTO changes (key, kind, value, version, hlc, deleted, idempotency_key, "
            "committed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            _change_row(Write(key, kind, entity, idempotency_key, "", "", device, op_id, now)),
        )
        return int(cur.lastrowid or 0)

    def records(self, idempotency_keys: list[str]) -> dict[str, tuple[str, str]]:
        """One query for the batch (the keys passed as a JSON array)."""
        rows = self._db.execute(
            "SELECT idempotency_key, fingerprint, result FROM idempotency "
            "WHERE idempotency_key IN (SELECT value FROM json_each(?))",
            (json.dumps(idempotency_keys),),
        )
        return {k: (f, r) for k, f, r in rows}

    def lock_entities(self, keys: list[str]) -> dict[str, Entity]:
        """One query for the batch (BEGIN IMMEDIATE already holds the write lock)."""
        rows = self._db.execute(
            "SELECT key, value, version, hlc, deleted FROM entities "
            "WHERE key IN (SELECT value FROM json_each(?))",
            (json.dumps(keys),),
        )
        return {k: Entity(v, ver, h, bool(d)) for k, v, ver, h, d in rows}

    def write_many(self, writes: list[Write]) -> None:
        """Three executemany: the keys' final states, the records, the changes."""
        if not writes:
            return
        final = {w.key: w.entity for w in writes if w.key is not None and w.entity is not None}
        self._db.executemany(
            "INSERT INTO entities (key, value, version, hlc, deleted) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "version = excluded.version, hlc = excluded.hlc, deleted = excluded.deleted",
            [(k, e.value_json, e.version, e.hlc, int(e.deleted)) for k, e in final.items()],
        )
        self._db.executemany(
            "INSERT INTO idempotency (idempotency_key, fingerprint, result, device, op_id, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (w.idempotency_key, w.fingerprint, w.result_json, w.device, w.op_id, w.now)
                for w in writes
            ],
        )
        self._db.executemany(
            "INSERT INTO changes (key, kind, value, version, hlc, deleted, idempotency_key, "
            "committed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [_change_row(w) for w in writes],
        )

    def prune_device(self, device: str, low_water: int) -> int:
        """One indexed range delete."""
        cur = self._db.execute(
            "DELETE FROM idempotency WHERE device = ? AND op_id < ?", (device, low_water)
        )
        return cur.rowcount


class SqliteBackend(Backend):
    """The embedded backend: one SQLite file (created 0600 if missing).

    ``busy_timeout``: seconds to wait for the file's write lock held by another
    process before the transaction is answered retry_later.
    """

    def __init__(self, path: str | os.PathLike[str], busy_timeout: float = 5.0) -> None:
        self._path = os.fspath(path)
        if self._path != ":memory:" and not os.path.exists(self._path):
            fd = os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        try:
            db = sqlite3.connect(
                self._path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            self._migrate(db)
        except sqlite3.Error as e:
            raise BackendUnavailable(f"cannot open {self._path!r}: {e}") from e
        self._db: sqlite3.Connection | None = db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        row = db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        if row is None:
            db.execute(
                "INSERT INTO meta (name, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
            )
        elif row[0] > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {row[0]} is newer than this cpcsync's ({SCHEMA_VERSION})"
            )

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise BackendUnavailable("the backend is closed")
        return self._db

    def run(self, fn: Callable[[Tx], T]) -> T:
        """``fn`` in one BEGIN IMMEDIATE transaction."""
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:  # locked by another process, disk I/O
                raise BackendUnavailable(f"cannot begin a transaction: {e}") from e
            try:
                result = fn(_SqliteTx(db))
                db.execute("COMMIT")
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                if isinstance(e, sqlite3.OperationalError):
                    raise BackendUnavailable(f"the transaction failed: {e}") from e
                raise
            self._changed.notify_all()
            return result

    def get(self, key: str) -> Entity | None:
        """Committed state of ``key``."""
        with self._lock:
            row = self._read(
                "SELECT value, version, hlc, deleted FROM entities WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else Entity(row[0], row[1], row[2], bool(row[3]))

    def changes(self, since: int, limit: int) -> list[dict[str, Any]]:
        """Committed changes after ``since``."""
        with self._lock:
            rows = self._read(
                "SELECT seq, key, kind, value, version, hlc, deleted, idempotency_key "
                "FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (since, limit),
            ).fetchall()
        out = []
        for row in rows:
            change = dict(zip(_CHANGE_NAMES, row, strict=True))
            change["deleted"] = bool(change["deleted"])
            out.append(change)
        return out

    def wait_for_change(self, since: int, timeout: float) -> bool:
        """Woken by this process's commits; other processes' are seen within 0.1 s."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            with self._lock:
                row = self._read("SELECT max(seq) FROM changes", ()).fetchone()
                if row[0] is not None and row[0] > since:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.1))

    def prune_older_than(self, cutoff: float) -> int:
        """Age-based pruning, one short transaction."""
        sql = "DELETE FROM idempotency WHERE created_at < ?"
        return int(self.run(lambda tx: tx.execute(sql, (cutoff,)).rowcount))

    def record_count(self) -> int:
        """Idempotency records kept."""
        with self._lock:
            return int(self._read("SELECT count(*) FROM idempotency", ()).fetchone()[0])

    def ping(self) -> None:
        """SELECT 1."""
        with self._lock:
            self._read("SELECT 1", ())

    def reset(self) -> None:
        """Delete every row (tests: the pytest plugin's function-scoped server)."""

        def clear(tx: Tx) -> None:
            # (not executescript: it commits the transaction it runs in)
            tx.execute("DELETE FROM entities")
            tx.execute("DELETE FROM idempotency")
            tx.execute("DELETE FROM changes")

        self.run(clear)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._changed.notify_all()

    def _read(self, sql: str, params: Any) -> sqlite3.Cursor:
        # (called with self._lock held)
        try:
            return self._conn().execute(sql, params)
        except sqlite3.OperationalError as e:
            raise BackendUnavailable(f"read failed: {e}") from e

    def __repr__(self) -> str:
        return f"SqliteBackend({self._path!r})"
