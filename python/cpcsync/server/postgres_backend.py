"""PostgresBackend: any number of receiver processes, on any number of machines, on one
PostgreSQL (docs/server.md, section "PostgreSQL").

psycopg 3 with psycopg_pool: each :meth:`PostgresBackend.run` is one transaction on a
pooled connection (READ COMMITTED); statements are prepared by psycopg after they
have run ``prepare_threshold`` times on a connection. Nothing is kept in the session
between transactions (advisory locks are transaction-level, no SET, no temporary
tables), so the pool may sit behind PgBouncer in transaction pooling mode; only LISTEN
needs a session, and it has its own connection (``listen_dsn``).

Concurrency, in the order a transaction meets it:

- :meth:`Tx.record` takes a transaction-level advisory lock on the idempotency key, so
  the same op arriving at two receivers at once is applied by one and answered
  ``duplicate`` (not ``conflict``) by the other.
- :meth:`Tx.lock_entity` is ``SELECT ... FOR UPDATE``: an existing key's row is
  locked until commit. A key that does not exist yet has no row to lock; its first
  write is a plain INSERT, so of two transactions racing to create it the second
  fails on the primary key and :meth:`PostgresBackend.run` re-runs it from the start,
  when it sees (and locks) the row the first committed. No placeholder row is ever
  written.
- The changes of a transaction are buffered by :meth:`Tx.write` and inserted as its
  last step (``cpcsync_add_changes``), after ``pg_advisory_xact_lock`` on one fixed
  key, which the commit releases: seq order is commit order, and a reader never sees
  seq N+1 before seq N. A NOTIFY sent in the same step wakes long polls when the
  transaction commits.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout
except ImportError as _e:
    raise ImportError(
        f"PostgresBackend needs psycopg 3 and psycopg_pool ({_e.name} is not installed): "
        "pip install 'cpcsync[postgres]'",
        name=_e.name,
    ) from None

from cpcsync.server.backend import Backend, BackendUnavailable, Entity, Tx, Write

__all__ = ["SCHEMA_VERSION", "PostgresBackend"]

T = TypeVar("T")

_log = logging.getLogger("cpcsync.server")

#: The version of the tables below, kept in ``meta`` (name ``schema_version``).
SCHEMA_VERSION = 1

# Advisory lock keys (per database; the one-bigint and the two-int4 key spaces do not
# overlap). b"cpcsync" in the high bytes, so they do not meet a service's own locks.
_MIGRATION_LOCK = 7165336354756125441  # b"cpcsync\x01": creating or migrating the schema
_CHANGES_LOCK = 7165336354756125442  # b"cpcsync\x02": numbering changes, until commit
_IDEMPOTENCY_LOCK_CLASS = 1668309875  # b"cpcs": (class, hashtext(idempotency key))

#: The channel a transaction's NOTIFY goes to; the payload is its highest seq.
CHANNEL = "cpcsync_changes"

# Version 1. TEXT for JSON (JSONB would refuse \u0000 and reorder keys), BIGINT for
# versions, stamps and ids, COLLATE "C" keys (byte order, no locale surprises). The
# two functions save round trips and hold the locking rules (docs/server.md): each SQL
# statement in a VOLATILE PL/pgSQL function takes a new snapshot (READ COMMITTED), so
# what follows a lock sees what the lock waited for.
_SCHEMA_V1 = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE entities (
    key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL, version BIGINT NOT NULL,
    hlc BIGINT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT false);
CREATE TABLE idempotency (
    idempotency_key TEXT COLLATE "C" PRIMARY KEY, fingerprint TEXT NOT NULL,
    result TEXT NOT NULL, device TEXT COLLATE "C", op_id BIGINT,
    created_at DOUBLE PRECISION NOT NULL);
CREATE INDEX idempotency_by_device ON idempotency (device, op_id) WHERE device IS NOT NULL;
CREATE INDEX idempotency_by_age ON idempotency (created_at);
CREATE TABLE changes (
    seq BIGINT GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
    key TEXT COLLATE "C", kind TEXT, value TEXT NOT NULL, version BIGINT,
    hlc BIGINT NOT NULL, deleted BOOLEAN NOT NULL, idempotency_key TEXT NOT NULL,
    committed_at DOUBLE PRECISION NOT NULL);

-- An op's idempotency record, after waiting for any transaction holding its key.
CREATE FUNCTION cpcsync_record(ikey TEXT) RETURNS TABLE (fingerprint TEXT, result TEXT)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1668309875, hashtext(ikey));
    RETURN QUERY SELECT i.fingerprint, i.result FROM idempotency i
                 WHERE i.idempotency_key = ikey;
END $$;

-- A transaction's changes, numbered as its last step under a lock its commit releases
-- (numbering order is commit order), and a NOTIFY carrying the highest seq.
CREATE FUNCTION cpcsync_add_changes(
    keys TEXT[], kinds TEXT[], vals TEXT[], versions BIGINT[], hlcs BIGINT[],
    deleted BOOLEAN[], ikeys TEXT[], at DOUBLE PRECISION[]) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    last_seq BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(7165336354756125442);
    WITH added AS (
        INSERT INTO changes (key, kind, value, version, hlc, deleted, idempotency_key,
                             committed_at)
        SELECT u.k, u.kd, u.v, u.ver, u.h, u.d, u.ik, u.t
        FROM unnest(keys, kinds, vals, versions, hlcs, deleted, ikeys, at)
             WITH ORDINALITY AS u(k, kd, v, ver, h, d, ik, t, n)
        ORDER BY u.n
        RETURNING seq)
    SELECT max(seq) INTO last_seq FROM added;
    PERFORM pg_notify('cpcsync_changes', last_seq::text);
    RETURN last_seq;
END $$;

INSERT INTO meta (name, value) VALUES ('schema_version', 1);
"""

# (the two functions name the keys literally)
assert str(_CHANGES_LOCK) in _SCHEMA_V1 and str(_IDEMPOTENCY_LOCK_CLASS) in _SCHEMA_V1

#: Migrations: ``_MIGRATIONS[v]`` takes the schema from version v to v + 1 (and sets
#: meta's schema_version). None yet.
_MIGRATIONS: dict[int, str] = {}

_SELECT_SCHEMA_VERSION = "SELECT value FROM meta WHERE name = 'schema_version'"
_SELECT_RECORD = "SELECT fingerprint, result FROM cpcsync_record(%s)"
_LOCK_ENTITY = "SELECT value, version, hlc, deleted FROM entities WHERE key = %s FOR UPDATE"
_SELECT_ENTITY = "SELECT value, version, hlc, deleted FROM entities WHERE key = %s"
# The key was not there when lock_entity looked: a plain INSERT, so a concurrent first
# write fails on the primary key (and the transaction is re-run) instead of merging.
_INSERT_ENTITY_AND_RECORD = """
WITH e AS (INSERT INTO entities (key, value, version, hlc, deleted)
           VALUES (%(key)s, %(value)s, %(version)s, %(hlc)s, %(deleted)s))
INSERT INTO idempotency (idempotency_key, fingerprint, result, device, op_id, created_at)
VALUES (%(ikey)s, %(fingerprint)s, %(result)s, %(device)s, %(op_id)s, %(now)s)
"""
_UPSERT_ENTITY_AND_RECORD = """
WITH e AS (INSERT INTO entities (key, value, version, hlc, deleted)
           VALUES (%(key)s, %(value)s, %(version)s, %(hlc)s, %(deleted)s)
           ON CONFLICT (key) DO UPDATE SET value = excluded.value,
               version = excluded.version, hlc = excluded.hlc, deleted = excluded.deleted)
INSERT INTO idempotency (idempotency_key, fingerprint, result, device, op_id, created_at)
VALUES (%(ikey)s, %(fingerprint)s, %(result)s, %(device)s, %(op_id)s, %(now)s)
"""
_INSERT_RECORD = """
INSERT INTO idempotency (idempotency_key, fingerprint, result, device, op_id, created_at)
VALUES (%(ikey)s, %(fingerprint)s, %(result)s, %(device)s, %(op_id)s, %(now)s)
"""
_ADVISORY_XACT_LOCK = "SELECT pg_advisory_xact_lock(%s)"
# The batch forms (Tx.records, lock_entities, write_many).
_SELECT_RECORDS = (
    "SELECT idempotency_key, fingerprint, result FROM idempotency WHERE idempotency_key = ANY(%s)"
)
_LOCK_ENTITIES = (
    "SELECT key, value, version, hlc, deleted FROM entities WHERE key = ANY(%s) FOR UPDATE"
)
_UPSERT_ENTITY = (
    "INSERT INTO entities (key, value, version, hlc, deleted) VALUES (%s, %s, %s, %s, %s) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version, "
    "hlc = excluded.hlc, deleted = excluded.deleted"
)
_INSERT_RECORD_ROW = (
    "INSERT INTO idempotency (idempotency_key, fingerprint, result, device, op_id, created_at) "
    "VALUES (%s, %s, %s, %s, %s, %s)"
)
# The batch's locks in one global order: keys (namespace 1668309876) before idempotency
# keys (1668309875, as cpcsync_record), each by hash. The subquery's ORDER BY fixes the
# order in which the outer query's rows, and so its lock calls, are produced.
_LOCK_BATCH = (
    "SELECT pg_advisory_xact_lock(ns, h) FROM ("
    "SELECT DISTINCT 1668309876 AS ns, hashtext(k) AS h FROM unnest(%s::text[]) AS k "
    "UNION SELECT DISTINCT 1668309875, hashtext(i) FROM unnest(%s::text[]) AS i "
    "ORDER BY 1 DESC, 2) AS batch"
)
_ADD_CHANGES = (
    "SELECT cpcsync_add_changes(%s::text[], %s::text[], %s::text[], %s::bigint[], "
    "%s::bigint[], %s::boolean[], %s::text[], %s::float8[])"
)
_SELECT_CHANGES = (
    "SELECT seq, key, kind, value, version, hlc, deleted, idempotency_key "
    "FROM changes WHERE seq > %s ORDER BY seq LIMIT %s"
)
_CHANGE_NAMES = ("seq", "key", "kind", "value", "version", "hlc", "deleted", "idempotency_key")

# Re-run the transaction: a concurrency failure that says nothing about the data.
_RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected, pg_errors.UniqueViolation)
# The database cannot be used now (connection lost or refused, shutting down, read-only
# after a failover, out of disk, a timeout): BackendUnavailable.
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, pg_errors.ReadOnlySqlTransaction)

# A prepared statement missing or already there on the server connection: psycopg's
# statements were prepared through a pooler that hands out server connections per
# transaction and does not track them (PgBouncer before 1.21 in transaction mode).
_POOLER_PREPARED = (pg_errors.DuplicatePreparedStatement, pg_errors.InvalidSqlStatementName)

_RETRY_BASE_DELAY = 0.002  # seconds; doubled per attempt, full jitter, capped below
_RETRY_MAX_DELAY = 0.1
_STALE_RETRIES = 2  # re-runs on a fresh connection when a pooled one turns out dead


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


class _PostgresTx(Tx):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        # Changes written but not numbered yet: (key, kind, value, version, hlc,
        # deleted, idempotency_key, committed_at), in write order.
        self._changes: list[tuple[Any, ...]] = []
        # Keys lock_entity found absent: their first write must be a plain INSERT.
        self._missing: set[str] = set()
        self._done = False

    @property
    def connection(self) -> psycopg.Connection[Any]:
        """The psycopg connection (``%s`` parameters), in this transaction."""
        return self._conn

    def execute(self, sql: Any, params: Any = ()) -> psycopg.Cursor[Any]:
        """One statement in this transaction (``%s`` / ``%(name)s`` parameters)."""
        return self._conn.execute(sql, params if params else None)

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """A SAVEPOINT: an exception inside rolls back to it (changes written inside
        are forgotten too) and propagates."""
        mark = len(self._changes)
        missing = set(self._missing)
        try:
            with self._conn.transaction():
                yield
        except BaseException:
            del self._changes[mark:]
            self._missing = missing
            raise

    def record(self, idempotency_key: str) -> tuple[str, str] | None:
        """The applied op's fingerprint and result, or None. Waits first for any other
        transaction holding this idempotency key (so a concurrent copy of the op is
        seen once it commits); the lock is held until this one ends."""
        row = self._conn.execute(_SELECT_RECORD, (idempotency_key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def lock_batch(self, keys: list[str], idempotency_keys: list[str]) -> None:
        """Transaction-level advisory locks on every key, then every idempotency key of
        the batch (the same lock Tx.record takes), each in hash order: every receiver
        takes them in one global order, so batches writing the same keys in different
        orders wait for each other instead of deadlocking (PostgreSQL would detect
        that only after deadlock_timeout, 1 s by default, and re-run one of them)."""
        if keys or idempotency_keys:
            self._conn.execute(_LOCK_BATCH, (keys, idempotency_keys)).fetchall()

    def lock_entity(self, key: str) -> Entity | None:
        """SELECT ... FOR UPDATE. A key without a row is remembered: its write will be
        an INSERT that a concurrent first write makes fail (and the transaction re-run)."""
        row = self._conn.execute(_LOCK_ENTITY, (key,)).fetchone()
        if row is None:
            self._missing.add(key)
            return None
        self._missing.discard(key)
        return Entity(row[0], row[1], row[2], row[3])

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
    ) -> int | None:
        """Entity and record now; the change is numbered at the end of the transaction
        (see the module docstring), so no seq is known yet: returns None."""
        if self._done:
            raise RuntimeError("the transaction is being committed: no more writes")
        params = {
            "key": key,
            "value": entity.value_json if entity else "null",
            "version": entity.version if entity else 0,
            "hlc": entity.hlc if entity else 0,
            "deleted": bool(entity.deleted) if entity else False,
            "ikey": idempotency_key,
            "fingerprint": fingerprint,
            "result": result_json,
            "device": device,
            "op_id": op_id,
            "now": now,
        }
        if key is not None and entity is not None:
            if key in self._missing:
                self._missing.discard(key)
                self._conn.execute(_INSERT_ENTITY_AND_RECORD, params)
            else:
                self._conn.execute(_UPSERT_ENTITY_AND_RECORD, params)
        else:
            self._conn.execute(_INSERT_RECORD, params)
        self._changes.append(
            (
                key,
                kind,
                params["value"],
                entity.version if entity and key is not None else None,
                params["hlc"],
                params["deleted"],
                idempotency_key,
                now,
            )
        )
        return None

    def records(self, idempotency_keys: list[str]) -> dict[str, tuple[str, str]]:
        """One query for the batch. lock_batch already holds every key's advisory lock
        (waiting for a concurrent copy of an op to commit), so this sees its record."""
        if not idempotency_keys:
            return {}
        rows = self._conn.execute(_SELECT_RECORDS, (idempotency_keys,)).fetchall()
        return {k: (f, r) for k, f, r in rows}

    def lock_entities(self, keys: list[str]) -> dict[str, Entity]:
        """One SELECT ... FOR UPDATE for the batch. A key not there yet is written with
        an upsert: lock_batch's advisory lock on it makes every other receiver wait, so
        two first writes of one key cannot race."""
        if not keys:
            return {}
        rows = self._conn.execute(_LOCK_ENTITIES, (keys,)).fetchall()
        return {k: Entity(v, ver, h, d) for k, v, ver, h, d in rows}

    def write_many(self, writes: list[Write]) -> None:
        """Two executemany (pipelined by psycopg: one round trip each, not one per row):
        the keys' final states and the records; the changes are numbered at commit."""
        if self._done:
            raise RuntimeError("the transaction is being committed: no more writes")
        if not writes:
            return
        final = {w.key: w.entity for w in writes if w.key is not None and w.entity is not None}
        with self._conn.cursor() as cur:
            if final:
                cur.executemany(
                    _UPSERT_ENTITY,
                    [(k, e.value_json, e.version, e.hlc, e.deleted) for k, e in final.items()],
                )
            cur.executemany(
                _INSERT_RECORD_ROW,
                [
                    (w.idempotency_key, w.fingerprint, w.result_json, w.device, w.op_id, w.now)
                    for w in writes
                ],
            )
        for w in writes:
            self._missing.discard(w.key or "")
            e = w.entity
            self._changes.append(
                (
                    w.key,
                    w.kind,
                    e.value_json if e else "null",
                    e.version if e and w.key is not None else None,
                    e.hlc if e else 0,
                    bool(e.deleted) if e else False,
                    w.idempotency_key,
                    w.now,
                )
            )

    def prune_device(self, device: str, low_water: int) -> int:
        """One indexed range delete."""
        cur = self._conn.execute(
            "DELETE FROM idempotency WHERE device = %s AND op_id < %s", (device, low_water)
        )
        return cur.rowcount

    def _number_changes(self) -> None:
        """The transaction's last statements: the changes lock, then every change
        numbered and a NOTIFY. The commit that follows releases the lock."""
        self._done = True
        if not self._changes:
            return
        columns = [list(c) for c in zip(*self._changes, strict=True)]
        self._conn.execute(_ADD_CHANGES, columns)


class PostgresBackend(Backend):
    """Receiver storage on PostgreSQL: any number of receiver processes on one database.

    ``dsn``: a libpq connection string or URL. ``pool_size``: the most connections this
    backend opens for transactions and reads (one per concurrent request; a long poll
    holds none). The tables (``meta``, ``entities``, ``idempotency``, ``changes``) are
    created in the role's default schema, or migrated, on construction; several
    processes starting at once on an empty database are serialised by an advisory lock.

    ``prepare_threshold``: psycopg prepares a statement the n-th time it runs on a
    connection (default 5). Behind PgBouncer in transaction pooling mode this needs
    PgBouncer >= 1.21 with ``max_prepared_statements`` > 0; with an older PgBouncer
    pass ``prepare_threshold=None`` (nothing prepared). Nothing else is kept in the
    session.

    ``listen``: long polls (:meth:`wait_for_change`) are woken by LISTEN/NOTIFY on one
    dedicated connection per backend, opened on first use (to ``listen_dsn``, default
    ``dsn``: LISTEN needs a real session, so behind a transaction-pooling PgBouncer
    point ``listen_dsn`` at PostgreSQL itself). While it is down, and with
    ``listen=False``, waiting polls every ``poll_interval`` seconds.

    ``acquire_timeout``: seconds to wait for a pooled connection (all busy, or the
    database unreachable) before BackendUnavailable. ``connect_timeout``: seconds for
    one connection attempt. ``max_attempts``: runs of one transaction that meets
    deadlocks, serialization failures or unique-key races before BackendUnavailable.
    """

    def __init__(
        self,
        dsn: str,
        pool_size: int = 10,
        *,
        prepare_threshold: int | None = 5,
        listen: bool = True,
        listen_dsn: str | None = None,
        poll_interval: float = 0.5,
        acquire_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_attempts: int = 10,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if not (poll_interval > 0 and acquire_timeout > 0 and connect_timeout > 0):
            raise ValueError("poll_interval, acquire_timeout and connect_timeout must be > 0")
        for name, value in (("dsn", dsn), ("listen_dsn", listen_dsn)):
            try:
                if value is not None:
                    conninfo_to_dict(value)
            except psycopg.ProgrammingError as e:
                raise ValueError(f"{name} is not a connection string: {_one_line(e)}") from None
        self._dsn = dsn
        self._listen = listen
        self._listen_dsn = listen_dsn or dsn
        self._poll_interval = float(poll_interval)
        self._acquire_timeout = float(acquire_timeout)
        self._max_attempts = int(max_attempts)
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, round(connect_timeout)),
            "application_name": "cpcsync",
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
        self._retried = 0
        # the LISTEN thread's state, under _cond
        self._cond = threading.Condition()
        self._listening = False
        self._latest = 0  # highest seq known committed while listening
        self._listener: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stop_channel = f"cpcsync_stop_{uuid.uuid4().hex}"
        self._closed = False
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            dsn,
            kwargs={**self._connect_kwargs, "prepare_threshold": prepare_threshold},
            min_size=min(2, pool_size),
            max_size=pool_size,
            open=False,
            name="cpcsync",
            timeout=self._acquire_timeout,
            # Give up on a failed reconnection quickly: the next request then starts a
            # new attempt at once, so the pool follows the server coming back promptly.
            reconnect_timeout=max(2.0, self._acquire_timeout),
        )
        try:
            self._pool.open(wait=False)
            self._migrate()
        except BaseException:
            self._pool.close()
            raise

    # ------------------------------------------------------------------ schema

    def _migrate(self) -> None:
        def migrate(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute(_ADVISORY_XACT_LOCK, (_MIGRATION_LOCK,))
                # (after the lock: another process may just have created it)
                row = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
                if not (row and row[0]):
                    conn.execute(_SCHEMA_V1, prepare=False)  # (several statements)
                    return
                row = conn.execute(_SELECT_SCHEMA_VERSION).fetchone()
                if row is None:
                    raise BackendUnavailable(
                        "a table named meta exists without a schema_version: not a cpcsync "
                        "database (give cpcsync its own schema or database)"
                    )
                version = int(row[0])
                if version > SCHEMA_VERSION:
                    raise BackendUnavailable(
                        f"schema version {version} is newer than this cpcsync's "
                        f"({SCHEMA_VERSION}): upgrade cpcsync"
                    )
                for v in range(version, SCHEMA_VERSION):
                    conn.execute(_MIGRATIONS[v], prepare=False)

        try:
            self._with_connection(migrate)
        except BackendUnavailable as e:
            raise BackendUnavailable(f"cannot open {self!r}: {e}") from e

    # ------------------------------------------------------------ connections

    def _with_connection(
        self,
        fn: Callable[[psycopg.Connection[Any]], T],
        committing: Callable[[], bool] = lambda: False,
    ) -> T:
        """``fn(conn)`` on a pooled connection. A connection found dead (the server
        restarted, the connection was terminated) is replaced, the pool's idle ones
        checked, and ``fn`` run again, up to twice, unless ``committing()`` says the
        error came from the COMMIT, whose outcome is then unknown."""
        stale = 0
        while True:
            conn: psycopg.Connection[Any] | None = None
            try:
                with self._pool.connection(timeout=self._acquire_timeout) as conn:
                    return fn(conn)
            except PoolClosed:
                raise BackendUnavailable("the backend is closed") from None
            except PoolTimeout as e:
                raise BackendUnavailable(
                    f"no database connection within {self._acquire_timeout:g} s: {_one_line(e)}"
                ) from e
            except _POOLER_PREPARED as e:
                _log.warning("cpcsync postgres: %s", _one_line(e))
                raise BackendUnavailable(
                    f"{_one_line(e)} (behind PgBouncer before 1.21 in transaction mode? "
                    "pass prepare_threshold=None)"
                ) from e
            except _UNAVAILABLE as e:
                if isinstance(e, _RETRYABLE):
                    raise
                if committing():
                    raise BackendUnavailable(
                        f"the commit's outcome is unknown: {_one_line(e)}"
                    ) from e
                if conn is not None and conn.broken and stale < _STALE_RETRIES:
                    stale += 1
                    self._pool.check()  # the idle ones are probably dead too
                    continue
                raise BackendUnavailable(_one_line(e)) from e

    @property
    def retried(self) -> int:
        """How many transactions were re-run after a deadlock, a serialization failure
        or a unique-key race (monitoring, tests)."""
        return self._retried

    # ------------------------------------------------------------------ writes

    def run(self, fn: Callable[[Tx], T]) -> T:
        """``fn`` in one transaction; its changes numbered last, then COMMIT. Re-runs
        ``fn`` (up to ``max_attempts`` times, with a little jittered backoff) on a
        deadlock, a serialization failure or a unique-key race, and when a pooled
        connection turns out dead before the commit was sent. BackendUnavailable when
        the database cannot be used, or when the connection broke during COMMIT (its
        outcome unknown: the client resends and finds its ops applied, or not)."""
        attempt = 0
        committing = False

        def once(conn: psycopg.Connection[Any]) -> T:
            nonlocal committing
            committing = False
            tx = _PostgresTx(conn)
            with conn.transaction():
                result = fn(tx)
                tx._number_changes()
                committing = True
            return result

        while True:
            attempt += 1
            try:
                return self._with_connection(once, lambda: committing)
            except _RETRYABLE as e:
                if attempt >= self._max_attempts:
                    raise BackendUnavailable(
                        f"gave up after {attempt} attempts: {_one_line(e)}"
                    ) from e
                self._retried += 1
                _log.debug("cpcsync postgres: re-running a transaction (%s)", _one_line(e))
                delay = min(_RETRY_MAX_DELAY, _RETRY_BASE_DELAY * 2**attempt)
                time.sleep(random.uniform(0, delay))

    def prune_older_than(self, cutoff: float) -> int:
        """Age-based pruning, one short transaction."""
        sql_ = "DELETE FROM idempotency WHERE created_at < %s"
        return int(self.run(lambda tx: tx.execute(sql_, (cutoff,)).rowcount))

    # ------------------------------------------------------------------- reads

    def _rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self._with_connection(lambda conn: conn.execute(query, params).fetchall())

    def get(self, key: str) -> Entity | None:
        """Committed state of ``key``."""
        rows = self._rows(_SELECT_ENTITY, (key,))
        if not rows:
            return None
        value, version, hlc, deleted = rows[0]
        return Entity(value, version, hlc, deleted)

    def changes(self, since: int, limit: int) -> list[dict[str, Any]]:
        """Committed changes after ``since``, in seq (commit) order."""
        rows = self._rows(_SELECT_CHANGES, (since, limit))
        return [dict(zip(_CHANGE_NAMES, row, strict=True)) for row in rows]

    def record_count(self) -> int:
        """Idempotency records kept."""
        return int(self._rows("SELECT count(*) FROM idempotency")[0][0])

    def ping(self) -> None:
        """SELECT 1."""
        self._rows("SELECT 1")

    # -------------------------------------------------------------- long polls

    def wait_for_change(self, since: int, timeout: float) -> bool:
        """Woken by the NOTIFY of a commit (on this backend's LISTEN connection, which
        holds no pooled connection); while that connection is down, or with
        ``listen=False``, polls every ``poll_interval`` s."""
        deadline = time.monotonic() + max(0.0, timeout)
        if self._listen:
            self._start_listener()
        while True:
            with self._cond:
                while self._listening:
                    if self._latest > since:
                        return True
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
            # not listening: ask the database
            if self._rows("SELECT EXISTS (SELECT 1 FROM changes WHERE seq > %s)", (since,))[0][0]:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._cond:
                if not self._listening:
                    self._cond.wait(min(left, self._poll_interval))

    def _start_listener(self) -> None:
        with self._cond:
            if self._listener is not None or self._closed:
                return
            self._listener = threading.Thread(
                target=self._listen_loop, name="cpcsync-postgres-listen", daemon=True
            )
            self._listener.start()

    def _set_listening(self, listening: bool, latest: int = 0) -> None:
        with self._cond:
            self._listening = listening
            self._latest = max(self._latest, latest)
            self._cond.notify_all()

    def _listen_loop(self) -> None:
        delay = 0.05
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._listen_dsn, **self._connect_kwargs) as conn:
                    conn.execute("LISTEN cpcsync_changes")
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._stop_channel)))
                    # Everything committed before LISTEN; what commits later is notified
                    # (psycopg keeps notifications that arrive during this query).
                    row = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()
                    self._set_listening(True, int(row[0]) if row else 0)
                    delay = 0.05
                    while not self._stopping.is_set():
                        for n in conn.notifies(timeout=60.0):
                            if self._stopping.is_set():
                                break
                            if n.channel == CHANNEL:
                                with contextlib.suppress(ValueError):
                                    self._set_listening(True, int(n.payload))
                        else:
                            conn.execute("SELECT 1")  # a quiet minute: still there?
            except Exception as e:  # whatever it was, fall back to polling and retry
                if not self._stopping.is_set():
                    _log.info("cpcsync postgres: LISTEN connection lost: %s", _one_line(e))
            self._set_listening(False)
            self._stopping.wait(delay)
            delay = min(delay * 2, 5.0)

    # ---------------------------------------------------------------- closing

    def close(self) -> None:
        """Stop the LISTEN thread and close the pool. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            listener = self._listener
        self._stopping.set()
        if listener is not None and listener.is_alive():
            woken = False
            with contextlib.suppress(Exception):
                with self._pool.connection(timeout=min(1.0, self._acquire_timeout)) as conn:
                    conn.execute("SELECT pg_notify(%s, '')", (self._stop_channel,))
                woken = True
            listener.join(5.0 if woken else 0.1)
        self._pool.close()
        self._set_listening(False)

    def __repr__(self) -> str:
        try:
            info = conninfo_to_dict(self._dsn)
        except psycopg.ProgrammingError:
            return "PostgresBackend(<invalid dsn>)"
        where = f"{info.get('host', '')}:{info.get('port', '')}/{info.get('dbname', '')}"
        return f"PostgresBackend({where!r})"
