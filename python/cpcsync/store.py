"""OfflineFirstStore: a key-value store that keeps working offline.

A store keeps a *local copy* of its values (its own SQLite file) and talks to a
*remote* (any object with ``get(key)`` and ``set(key, value)``: :class:`RemoteStore`).

- Reads go to the remote while the monitor says connected (bounded by ``timeout``),
  refresh the local copy and return; when the remote fails, or the monitor says
  offline, the local copy answers.
- Writes apply to the local copy at once, then go to the remote directly when online,
  or as an operation through the queue when offline or when the direct call fails.
  The store owns a :class:`~cpcsync.SyncEngine` that drains that queue to
  ``remote.set``, so queued writes go out when the network returns.
- The store follows the monitor's notifications (it observes the monitor and, as a
  proxy, delegates to an online or an offline route): it never has to be recreated
  when the network comes and goes.

Everything here is Python on purpose: each call is dominated by a remote call or an
SQLite commit, and the parts that need speed or careful threading (the durable
queue, per-key ordering, retries, the monitor) are the C++ core's. The guide is
docs/offline-store.md.
"""

from __future__ import annotations

import abc
import json
import logging
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from cpcsync import _core, errors

__all__ = ["KIND", "OfflineFirstStore", "RemoteStore"]

#: The ``kind`` of the operations a store puts on its queue.
KIND = "store.set"

_log = logging.getLogger("cpcsync.store")

# PRAGMA application_id of a store file: "cpcS". Files without it are not touched.
_APPLICATION_ID = 0x63706353
_SCHEMA_VERSION = 1
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}


class RemoteStore(Protocol):
    """What an :class:`OfflineFirstStore` needs of its remote (duck-typed: any object
    with these two methods works; the store calls them from its own threads, so they
    must be thread-safe).

    ``get(key)`` returns the remote's current value for ``key`` (anything JSON can
    encode) or raises ``KeyError`` when the remote has no value for it (an answer,
    not a failure). Any other exception, or no answer within the store's timeout, is a
    failure.

    ``set(key, value)`` stores ``value`` (already a JSON round-trip of what the caller
    passed) and returns; it signals failure by raising, as a transport does:
    :class:`~cpcsync.PermanentError` (never retry), :class:`~cpcsync.ConflictError`
    with the remote's current value (the store's conflict resolver decides),
    :class:`~cpcsync.RetryAfter`, ``OSError``/``TimeoutError`` (network), or anything
    else (transient). It may be called again for the same value (at-least-once
    delivery), so it should be idempotent for equal values.

    An ``async def`` method is not supported: wrap it in a synchronous call.
    """

    def get(self, key: str) -> Any:
        """The remote's value for ``key``; ``KeyError`` if it has none."""
        ...

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` (raise to signal failure)."""
        ...


_MISSING: Any = object()


# --------------------------------------------------------------------------
# input checks


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise errors.InvalidArgumentError(f"a store key must be a str, not {type(key).__name__}")
    if not key:
        raise errors.InvalidArgumentError("a store key must not be empty")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as e:
        raise errors.InvalidArgumentError(f"the store key {key!r} is not valid UTF-8") from e
    return key


def _encode(value: object) -> str:
    """The value as compact JSON text, or InvalidArgumentError (cause: json's error)."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as e:
        raise errors.InvalidArgumentError(
            f"a store value must be JSON-encodable ({type(value).__name__}): {e}"
        ) from e
    return text


def _check_priority(priority: object) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise errors.InvalidArgumentError(
            f"priority must be an int in 0..255, not {type(priority).__name__}"
        )
    if not 0 <= priority <= 255:
        raise errors.InvalidArgumentError(f"priority must be in 0..255, not {priority}")
    return int(priority)


def _check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise errors.InvalidArgumentError(f"{name} must be a number, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise errors.InvalidArgumentError(f"{name} must be finite and > 0, not {value!r}")
    return number


def _canonical(raw: bytes) -> str | None:
    """JSON bytes as the store encodes them, or None if they are not JSON."""
    try:
        return _encode(json.loads(raw))
    except (ValueError, errors.InvalidArgumentError):
        return None


def _is_answer(exc: BaseException) -> bool:
    """Exceptions by which a reachable remote answers: not failures of the network."""
    return isinstance(exc, (KeyError, errors.ConflictError, errors.PermanentError))


# --------------------------------------------------------------------------
# remote calls with a timeout


class _Call:
    """One remote call's outcome, filled in by its worker thread."""

    __slots__ = ("abandoned", "done", "error", "finished", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = False  # returned or raised an Exception
        self.abandoned = False  # its caller stopped waiting (under _RemoteCalls._cond)


class _RemoteCalls:
    """Runs each remote call on a short-lived daemon thread so that a hung remote
    cannot block a caller past ``timeout`` (real seconds).

    A call still running at its deadline is *abandoned*: its caller gets a
    :class:`~cpcsync.NetworkTimeoutError`, the thread ends when the remote returns and
    its result is dropped. At most ``limit`` calls run at once (abandoned ones
    included), so a remote that never answers costs ``limit`` threads, not one per
    call; callers beyond it wait for a free slot within their own timeout. Daemon
    threads never hold up interpreter exit.

    ``remote.set`` calls are counted per key while they run, so a later delivery of the
    same key can wait for an abandoned one instead of overtaking it.
    """

    def __init__(self, timeout: float, limit: int) -> None:
        self.timeout = timeout
        self._slots = threading.BoundedSemaphore(limit)
        self._cond = threading.Condition()
        self._sets: dict[str, int] = {}
        self.abandoned = 0  # calls that outlived their deadline and still run

    def running_set(self, key: str) -> bool:
        """True while a ``remote.set`` of ``key`` is running (possibly abandoned)."""
        with self._cond:
            return key in self._sets

    def wait_sets_done(self, key: str, timeout: float) -> bool:
        """Wait (real time) until no ``remote.set`` of ``key`` runs; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: key not in self._sets, timeout)

    def run(self, what: str, fn: Callable[..., Any], key: str, *args: Any) -> Any:
        """``fn(key, *args)`` on a worker thread; its result, or its exception re-raised,
        or NetworkTimeoutError after ``timeout`` seconds."""
        deadline = _monotonic() + self.timeout
        if not self._slots.acquire(timeout=self.timeout):
            raise errors.NetworkTimeoutError(
                f"remote.{what}({key!r}): no free worker within {self.timeout:g}s "
                "(earlier remote calls have not returned)"
            )
        call = _Call()
        is_set = what == "set"
        if is_set:
            with self._cond:
                self._sets[key] = self._sets.get(key, 0) + 1

        def finish() -> None:
            self._slots.release()
            with self._cond:
                if is_set:
                    left = self._sets[key] - 1
                    if left:
                        self._sets[key] = left
                    else:
                        del self._sets[key]
                if call.abandoned:
                    self.abandoned -= 1
                call.done.set()
                self._cond.notify_all()

        def body() -> None:
            try:
                call.result = fn(key, *args)
                call.finished = True
            except Exception as e:
                call.error = e
                call.finished = True
            finally:
                finish()

        try:
            threading.Thread(target=body, name=f"cpcsync-store-{what}", daemon=True).start()
        except BaseException:
            finish()
            raise
        if not call.done.wait(max(0.0, deadline - _monotonic())):
            with self._cond:
                if not call.done.is_set():
                    call.abandoned = True
                    self.abandoned += 1
                    raise errors.NetworkTimeoutError(
                        f"remote.{what}({key!r}) did not answer within {self.timeout:g}s"
                    )
        if call.error is not None:
            raise call.error
        if not call.finished:  # a BaseException (SystemExit...) ended the thread
            raise errors.TransientError(f"remote.{what}({key!r}) ended without a result")
        return call.result


def _monotonic() -> float:
    return time.monotonic()


# --------------------------------------------------------------------------
# the local copy


@dataclass(frozen=True)
class _Row:
    value: str  # JSON text
    hlc: int  # stamp of the newest local write (or adopted value); 0 if only refreshed
    synced_hlc: int  # stamp of the newest write known to be on the remote
    rev: int  # changes on every change of the row (compare-and-set for refreshes)


class _LocalCopy:
    """The store's SQLite file: one table of JSON values, one connection behind a lock.

    Python's sqlite3 releases the GIL while SQLite works; the lock is never held while
    calling anything but SQLite.
    """

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS store_values (
            key TEXT PRIMARY KEY NOT NULL,
            value TEXT NOT NULL,
            hlc INTEGER NOT NULL,
            synced_hlc INTEGER NOT NULL,
            rev INTEGER NOT NULL,
            source TEXT NOT NULL,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID
    """

    def __init__(self, path: str, durability: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        os.close(fd)
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            (app_id,) = conn.execute("PRAGMA application_id").fetchone()
            if app_id != _APPLICATION_ID:
                (tables,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                if app_id != 0 or tables:
                    raise errors.OfflineFailure(
                        f"{path} is not an OfflineFirstStore file (another application's "
                        "database?); it was not modified",
                        None,
                        "open",
                    )
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > _SCHEMA_VERSION:
                raise errors.OfflineFailure(
                    f"{path} has store schema {version}, newer than this cpcsync "
                    f"({_SCHEMA_VERSION}); it was not modified",
                    None,
                    "open",
                )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[durability]}")
            if app_id != _APPLICATION_ID:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(self._SCHEMA)
                conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                conn.execute("COMMIT")
            (max_rev, max_hlc) = conn.execute(
                "SELECT coalesce(max(rev), 0), coalesce(max(max(hlc, synced_hlc)), 0) "
                "FROM store_values"
            ).fetchone()
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.Lock()
        self._rev = int(max_rev)
        self.max_hlc = int(max_hlc)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise errors.StoreClosedError("the store's local copy is closed")
            yield self._conn

    def _next_rev(self) -> int:
        self._rev += 1
        return self._rev

    def read(self, key: str) -> _Row | None:
        with self._db() as db:
            row = db.execute(
                "SELECT value, hlc, synced_hlc, rev FROM store_values WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else _Row(row[0], row[1], row[2], row[3])

    def write(self, key: str, text: str, hlc: int, now: float) -> tuple[_Row | None, int]:
        """A local write; returns (the row before, the new rev) for undo()."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                old = db.execute(
                    "SELECT value, hlc, synced_hlc, rev FROM store_values WHERE key = ?", (key,)
                ).fetchone()
                rev = self._next_rev()
                db.execute(
                    "INSERT INTO store_values (key, value, hlc, synced_hlc, rev, source, "
                    "updated_at) VALUES (?, ?, ?, 0, ?, 'local', ?) ON CONFLICT(key) DO UPDATE "
                    "SET value = excluded.value, hlc = excluded.hlc, rev = excluded.rev, "
                    "source = 'local', updated_at = excluded.updated_at",
                    (key, text, hlc, rev, now),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return (None if old is None else _Row(old[0], old[1], old[2], old[3])), rev

    def undo(self, key: str, before: _Row | None, rev: int) -> None:
        """Put back the row as it was before write(), unless it changed since."""
        with self._db() as db:
            if before is None:
                db.execute("DELETE FROM store_values WHERE key = ? AND rev = ?", (key, rev))
            else:
                db.execute(
                    "UPDATE store_values SET value = ?, hlc = ?, rev = ? WHERE key = ? AND rev = ?",
                    (before.value, before.hlc, self._next_rev(), key, rev),
                )

    def refresh(self, key: str, text: str, seen: _Row | None, now: float) -> bool:
        """Take the remote's value, unless the row changed since it was read as `seen`."""
        with self._db() as db:
            if seen is None:
                cur = db.execute(
                    "INSERT INTO store_values (key, value, hlc, synced_hlc, rev, source, "
                    "updated_at) VALUES (?, ?, 0, 0, ?, 'remote', ?) ON CONFLICT(key) DO NOTHING",
                    (key, text, self._next_rev(), now),
                )
            elif seen.value == text:
                return True
            else:
                cur = db.execute(
                    "UPDATE store_values SET value = ?, rev = ?, source = 'remote', "
                    "updated_at = ? WHERE key = ? AND rev = ?",
                    (text, self._next_rev(), now, key, seen.rev),
                )
            return cur.rowcount > 0

    def forget(self, key: str, seen: _Row) -> bool:
        """The remote has no value: drop the row, unless it changed since read as `seen`."""
        with self._db() as db:
            cur = db.execute("DELETE FROM store_values WHERE key = ? AND rev = ?", (key, seen.rev))
            return cur.rowcount > 0

    def synced_hlc(self, key: str) -> int:
        with self._db() as db:
            row = db.execute("SELECT synced_hlc FROM store_values WHERE key = ?", (key,)).fetchone()
        return 0 if row is None else int(row[0])

    def mark_synced(self, key: str, hlc: int) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE store_values SET synced_hlc = max(synced_hlc, ?) WHERE key = ?", (hlc, key)
            )

    def settle(self, key: str, hlc: int, text: str | None, now: float) -> bool:
        """The write stamped `hlc` is settled on the remote with value `text` (None:
        unknown). Marks it synced and, unless a newer local write exists, takes `text`
        (a merged or adopted value). True when the value changed."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                changed = 0
                if text is not None:
                    changed = db.execute(
                        "UPDATE store_values SET value = ?, hlc = max(hlc, ?), rev = ?, "
                        "source = 'remote', updated_at = ? "
                        "WHERE key = ? AND hlc <= ? AND value != ?",
                        (text, hlc, self._next_rev(), now, key, hlc, text),
                    ).rowcount
                db.execute(
                    "UPDATE store_values SET synced_hlc = max(synced_hlc, ?) WHERE key = ?",
                    (hlc, key),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return changed > 0

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


# --------------------------------------------------------------------------
# which keys have writes on the queue


class _Pending:
    """Which keys have writes not yet settled on the remote.

    - The ids of the store's operations on the queue, per key, kept from the engine's
      events (delivered, dead_letter and superseded end an operation).
    - The keys a ``set`` is working on, from before its local write until its value is
      delivered or its operation recorded here: a read in that window must not take
      the remote's (older) value for the local copy.

    An event can arrive before enqueue() has returned the id (the engine may deliver
    at once); such ids are remembered while the key's ``set`` is in progress, so an
    operation is never recorded after it ended.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, set[int]] = {}
        self._writing: dict[str, int] = {}
        self._ended_early: dict[str, set[int]] = {}

    def has(self, key: str) -> bool:
        """Queued operations of `key`, or a ``set`` of it in progress."""
        with self._lock:
            return key in self._ids or key in self._writing

    def has_ops(self, key: str) -> bool:
        """Operations of `key` on the queue (in flight included)."""
        with self._lock:
            return key in self._ids

    def count(self) -> int:
        with self._lock:
            return sum(len(ids) for ids in self._ids.values())

    def load(self, key: str, op_id: int) -> None:
        with self._lock:
            self._ids.setdefault(key, set()).add(op_id)

    def begin(self, key: str) -> None:
        with self._lock:
            self._writing[key] = self._writing.get(key, 0) + 1

    def record(self, key: str, op_id: int) -> None:
        """enqueue() returned `op_id` for `key` (between begin and end)."""
        with self._lock:
            if op_id not in self._ended_early.get(key, ()):
                self._ids.setdefault(key, set()).add(op_id)

    def end(self, key: str) -> None:
        with self._lock:
            left = self._writing[key] - 1
            if left:
                self._writing[key] = left
            else:
                del self._writing[key]
                self._ended_early.pop(key, None)

    def ended(self, key: str, op_id: int) -> None:
        with self._lock:
            ids = self._ids.get(key)
            if ids is not None:
                ids.discard(op_id)
                if not ids:
                    del self._ids[key]
            if key in self._writing:
                self._ended_early.setdefault(key, set()).add(op_id)


class _KeyLocks:
    """One lock per key in use (created on demand, dropped when nobody holds it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[str, list[Any]] = {}  # key -> [lock, users]

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._lock:
            entry = self._locks.get(key)
            if entry is None:
                entry = self._locks[key] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[key]


# --------------------------------------------------------------------------
# the two routes the proxy switches between (online, offline)


class _Route(abc.ABC):
    """How the store reaches the remote in one network state (_Online or _Offline)."""

    name: Literal["online", "offline"]

    @abc.abstractmethod
    def get(self, store: OfflineFirstStore, key: str, default: Any) -> Any:
        """Read `key` the way this network state allows."""

    @abc.abstractmethod
    def send(self, store: OfflineFirstStore, key: str, text: str, priority: int, hlc: int) -> str:
        """Deliver or queue a write already applied locally: "delivered" or "queued"."""


class _Online(_Route):
    name: Literal["online", "offline"] = "online"

    def get(self, store: OfflineFirstStore, key: str, default: Any) -> Any:
        # Read the row first, then look for unsettled writes: a write that begins after
        # the check changes the row's rev, so the refresh below will not overwrite it.
        seen: _Row | None = None
        local_error: BaseException | None = None
        try:
            seen = store._local.read(key)
        except (sqlite3.Error, OSError) as e:
            local_error = e
        if store._unsettled(key):  # read your own writes until they reach the remote
            store._count("local_reads")
            return store._local_get(key, default)
        try:
            value = store._calls.run("get", store._remote.get, key)
        except KeyError:  # the remote's answer: it has no value
            store._count("remote_reads")
            if seen is not None:
                store._quietly(
                    "drop a value the remote does not have", store._local.forget, key, seen
                )
            if default is _MISSING:
                raise KeyError(key) from None
            return default
        except Exception as e:
            online_error: BaseException = e
            store._remote_failed(e, "get", key)
        else:
            store._count("remote_reads")
            try:
                text = _encode(value)
            except errors.InvalidArgumentError:
                _log.warning("remote.get(%r) returned a value JSON cannot encode; not cached", key)
            else:
                store._quietly(
                    "refresh the local copy", store._local.refresh, key, text, seen, store._now()
                )
            return value
        store._count("fallback_reads")
        if seen is not None:
            return json.loads(seen.value)
        offline_error = local_error if local_error is not None else KeyError(key)
        raise store._dual(online_error, offline_error, key, "get")

    def send(self, store: OfflineFirstStore, key: str, text: str, priority: int, hlc: int) -> str:
        direct_error: BaseException | None = None
        # Direct only when no earlier write of the key is queued or still running:
        # a direct call must not overtake them.
        if not store._pending.has_ops(key) and not store._calls.running_set(key):
            try:
                store._calls.run("set", store._remote.set, key, json.loads(text))
            except errors.PermanentError as e:
                store._count("remote_failures")
                raise store._online_failure(
                    f"set {key!r}: the remote refused the value for good: {_describe(e)}; "
                    "the local copy was left unchanged",
                    key,
                    e,
                ) from e
            except Exception as e:
                direct_error = e
                store._remote_failed(e, "set", key)
            else:
                store._count("direct_writes")
                store._quietly("mark a write synced", store._local.mark_synced, key, hlc)
                return "delivered"
        return store._enqueue(key, text, priority, hlc, direct_error)


class _Offline(_Route):
    name: Literal["online", "offline"] = "offline"

    def get(self, store: OfflineFirstStore, key: str, default: Any) -> Any:
        store._count("local_reads")
        return store._local_get(key, default)

    def send(self, store: OfflineFirstStore, key: str, text: str, priority: int, hlc: int) -> str:
        return store._enqueue(key, text, priority, hlc, None)


_ONLINE = _Online()
_OFFLINE = _Offline()


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------
# the store


class OfflineFirstStore:
    """A key-value store that keeps working offline.

    ``OfflineFirstStore(local_path, remote, queue, monitor, *, timeout=5.0, ...)``

    - ``local_path``: the store's own SQLite file (created with mode 0600; a file that
      is not a store file raises :class:`~cpcsync.OfflineFailure` and is not modified).
      Values are kept there as JSON text.
    - ``remote``: a :class:`RemoteStore` (``get(key)``, ``set(key, value)``).
    - ``queue``: the :class:`~cpcsync.SyncQueue` for writes that cannot go out at once.
      Give the store a queue of its own: operations of another kind are dead-lettered.
      The store does not close it.
    - ``monitor``: the :class:`~cpcsync.NetworkMonitor` the store follows (None: always
      online). The store subscribes to it, reports remote failures to it
      (``report_failure()``), and does not stop it.
    - ``timeout``: seconds (real time) a remote call may take before it counts as
      failed; each call runs on a worker thread of its own, so a hung remote never
      blocks a caller longer (docs/offline-store.md, "Timeouts and threads").
    - ``clock``: stamps and engine time (default: the queue's clock).
    - ``durability``: the local file's ``"full"`` / ``"normal"`` / ``"off"``, as for
      queues.
    - ``coalesce``: while a key's write waits in the queue, a newer write of that key
      replaces it instead of queueing behind it (default True: only the latest value
      of a key matters to a key-value store).
    - ``resolver``, ``backoff``, ``max_attempts``, ``max_elapsed``, ``concurrency``: the
      engine's (see :class:`~cpcsync.SyncEngine`); ``resolver`` decides conflicts the
      remote reports with :class:`~cpcsync.ConflictError`.
    - ``max_remote_calls``: remote calls that may run at once (abandoned ones count).

    The store starts its engine at once; :meth:`close` (or leaving a ``with`` block)
    stops it and unsubscribes from the monitor. All methods are thread-safe.

    Raises (constructor): :class:`~cpcsync.InvalidArgumentError` for bad arguments,
    :class:`~cpcsync.OfflineFailure` when the local file cannot be used,
    :class:`~cpcsync.QueueLockedError` when another handle consumes the queue.
    """

    def __init__(
        self,
        local_path: str | os.PathLike[str],
        remote: RemoteStore,
        queue: _core.SyncQueue,
        monitor: _core.NetworkMonitor | None,
        *,
        timeout: float = 5.0,
        clock: _core.Clock | None = None,
        durability: Literal["full", "normal", "off"] = "full",
        coalesce: bool = True,
        resolver: _core.ConflictResolver
        | Callable[[_core.Operation, _core.Remote], _core.Resolution]
        | None = None,
        backoff: _core.BackoffStrategy | Callable[[int], float] | None = None,
        max_attempts: int = 10,
        max_elapsed: float | None = None,
        concurrency: int = 1,
        max_remote_calls: int = 16,
    ) -> None:
        self._closed = True  # until fully built (close() is then a no-op)
        for name in ("get", "set"):
            if not callable(getattr(remote, name, None)):
                raise errors.InvalidArgumentError(
                    f"remote must have a callable {name}(key...) method "
                    f"({type(remote).__name__} has none)"
                )
        if not isinstance(queue, _core.SyncQueue):
            raise errors.InvalidArgumentError(
                f"queue must be a cpcsync.SyncQueue, not {type(queue).__name__}"
            )
        if monitor is not None and not isinstance(monitor, _core.NetworkMonitor):
            raise errors.InvalidArgumentError(
                f"monitor must be a cpcsync.NetworkMonitor or None, not {type(monitor).__name__}"
            )
        if clock is not None and not isinstance(clock, _core.Clock):
            raise errors.InvalidArgumentError(
                f"clock must be a cpcsync.Clock or None, not {type(clock).__name__}"
            )
        if durability not in _SYNCHRONOUS:
            raise errors.InvalidArgumentError(
                f"durability must be 'full', 'normal' or 'off', not {durability!r}"
            )
        if (
            isinstance(max_remote_calls, bool)
            or not isinstance(max_remote_calls, int)
            or max_remote_calls < 1
        ):
            raise errors.InvalidArgumentError(
                f"max_remote_calls must be an int >= 1, not {max_remote_calls!r}"
            )
        self._timeout = _check_positive("timeout", timeout)
        try:
            path = os.fspath(local_path)
        except TypeError as e:
            raise errors.InvalidArgumentError(f"local_path must be a path: {e}") from e
        if not isinstance(path, str):
            path = os.fsdecode(path)

        self._remote = remote
        self._queue = queue
        self._monitor = monitor
        self._clock: _core.Clock = clock if clock is not None else queue.clock
        self._coalesce = bool(coalesce)
        self._calls = _RemoteCalls(self._timeout, max_remote_calls)
        self._pending = _Pending()
        self._key_locks = _KeyLocks()
        self._stats_lock = threading.Lock()
        self._stats: dict[str, int] = dict.fromkeys(_STAT_NAMES, 0)
        self._active = 0
        self._active_cond = threading.Condition()
        self._close_lock = threading.Lock()
        self._route: _Route = _ONLINE if monitor is None else _OFFLINE
        self._route_lock = threading.Lock()
        self._heard_from_monitor = False
        self._token: int | None = None

        try:
            self._local = _LocalCopy(path, durability)
        except errors.OfflineFailure:
            raise
        except (sqlite3.Error, OSError) as e:
            raise errors.OfflineFailure(
                f"cannot open the local copy {path}: {_describe(e)}", None, "open"
            ) from e
        try:
            # Stamps: after everything the queue or the local copy has seen.
            last = max(queue.last_hlc, self._local.max_hlc)
            backlog = queue.peek(max(1, len(queue)))
            for op in backlog:
                last = max(last, op.hlc)
                if op.kind == KIND and op.key is not None:
                    self._pending.load(op.key, op.id)
            self._hlc = _core.HybridLogicalClock(self._clock, last)
            # The engine holds its transport and listeners in C++, where Python's garbage
            # collector cannot see a cycle: they refer to the store weakly, so a closed
            # store and its engine can be collected.
            self._engine = _core.SyncEngine(
                queue,
                _weak_transport(self._deliver),
                monitor=monitor,
                backoff=backoff,
                resolver=resolver,
                max_attempts=max_attempts,
                max_elapsed=max_elapsed,
                concurrency=concurrency,
                clock=clock,
            )
            self._engine.on("delivered", _weak_listener(self._on_delivered))
            self._engine.on("superseded", _weak_listener(self._on_superseded))
            self._engine.on("dead_letter", _weak_listener(self._on_dead_letter))
            if monitor is not None:
                self._token = monitor.subscribe(self._on_network)
                with self._route_lock:  # read the state after subscribing: no gap
                    if not self._heard_from_monitor:
                        self._route = _ONLINE if monitor.is_connected else _OFFLINE
            self._closed = False
            self._engine.start()
        except BaseException:
            self._closed = True
            if monitor is not None and self._token is not None:
                monitor.unsubscribe(self._token)
            self._local.close()
            raise

    # ---------------------------------------------------------------- public API

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The value of ``key``.

        Online (the monitor says connected, and the key has no write still on its way
        to the remote): ``remote.get(key)`` within ``timeout``; its value refreshes the
        local copy and is returned. If the remote answers ``KeyError`` (it has no
        value), the local copy drops the key too and ``default`` is returned, or
        ``KeyError`` raised. If the remote fails (an exception or the timeout), the
        store calls ``monitor.report_failure()`` and answers from the local copy.

        Offline, or when the key has writes not yet delivered (read-your-writes): the
        local copy answers; a key it does not hold gives ``default`` or ``KeyError``.

        Raises :class:`~cpcsync.DualFailure` when the remote failed and the local copy
        could not answer (no value, or a read error): ``default`` is not returned then,
        because the key's value is unknown, not absent.
        :class:`~cpcsync.OfflineFailure` when the local copy alone was asked and failed.
        :class:`~cpcsync.InvalidArgumentError` for a key that is not a non-empty str;
        :class:`~cpcsync.StoreClosedError` after :meth:`close`.
        """
        key = _check_key(key)
        with self._use():
            return self._route.get(self, key, default)

    def set(self, key: str, value: Any, priority: int = 50) -> Literal["delivered", "queued"]:
        """Store ``value`` (anything JSON can encode) under ``key``.

        The local copy takes it at once. Then, online and with no earlier write of the
        key still pending, ``remote.set(key, value)`` is called directly (within
        ``timeout``); returns ``"delivered"``. Offline, when the key has pending writes
        (a direct write must not overtake them), or when the direct call fails (any
        exception but :class:`~cpcsync.PermanentError`, or the timeout; failures other
        than the remote's answers are reported to the monitor), the write is queued as
        an operation of kind ``"store.set"`` with ``priority``; the store's engine
        delivers it, in order per key; returns ``"queued"``.

        Writes of one key are serialized (a second ``set`` of the same key waits for
        the first); writes of different keys run concurrently.

        Raises, and then the call changed nothing unless said otherwise:

        - :class:`~cpcsync.InvalidArgumentError` (also a ValueError): key not a
          non-empty str, value not JSON-encodable (``__cause__``: json's error), NaN or
          infinity, priority not an int in 0..255. Checked before anything is written.
        - :class:`~cpcsync.OnlineFailure`: the remote refused the value for good
          (PermanentError), or it could be neither delivered nor queued (e.g.
          :class:`~cpcsync.QueueFullError`); the local copy is put back as it was.
        - :class:`~cpcsync.OfflineFailure`: the local copy could not be written, **but
          the write was delivered or queued** (the message says which).
        - :class:`~cpcsync.DualFailure`: the local copy could not be written and the
          write could neither be delivered nor queued.
        - :class:`~cpcsync.StoreClosedError` after :meth:`close`.
        """
        key = _check_key(key)
        text = _encode(value)
        priority = _check_priority(priority)
        with self._use(), self._key_locks.hold(key):
            self._pending.begin(key)
            try:
                return self._set_locked(key, text, priority)
            finally:
                self._pending.end(key)

    def _set_locked(self, key: str, text: str, priority: int) -> Literal["delivered", "queued"]:
        """set() with the key's lock held and the key marked as being written."""
        self._hlc.observe(self._queue.last_hlc)
        hlc = self._hlc.now()
        local_error: BaseException | None = None
        undo: tuple[_Row | None, int] | None = None
        try:
            undo = self._local.write(key, text, hlc, self._now())
        except (sqlite3.Error, OSError) as e:
            local_error = e
        failure: errors.OnlineFailure | None = None
        outcome = ""
        try:
            outcome = self._route.send(self, key, text, priority, hlc)
        except errors.OnlineFailure as e:
            failure = e
        except BaseException:
            if undo is not None:
                self._quietly("undo a local write", self._local.undo, key, *undo)
            raise
        if failure is not None:
            if local_error is not None:
                # raised outside the except block, so the chain stays as _dual set it
                raise self._dual(failure.__cause__ or failure, local_error, key, "set")
            if undo is not None:
                self._quietly("undo a local write", self._local.undo, key, *undo)
            raise failure
        if local_error is not None:
            raise errors.OfflineFailure(
                f"set {key!r}: the local copy could not be written "
                f"({_describe(local_error)}); the write was {outcome} "
                f"{'to the remote' if outcome == 'delivered' else 'for the remote'}",
                key,
                "set",
            ) from local_error
        return "delivered" if outcome == "delivered" else "queued"

    def has_pending(self, key: str) -> bool:
        """True while a write of ``key`` is not known to be on the remote yet: it is
        queued (or in flight), a ``set`` of it is in progress, or an abandoned direct
        call of it still runs."""
        return self._unsettled(_check_key(key))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the engine has nothing deliverable and nothing in flight
        (``SyncEngine.wait_idle``; ``timeout`` on the engine's clock)."""
        return bool(self._engine.wait_idle(timeout))

    def stats(self) -> dict[str, Any]:
        """Counters: ``remote_reads``, ``fallback_reads`` (remote failed, local answered),
        ``local_reads`` (offline or read-your-writes), ``direct_writes``,
        ``queued_writes``, ``remote_failures``, ``adopted`` (remote values taken on
        "superseded" or a merge), ``dead_lettered``, ``transitions`` (monitor
        notifications followed), ``stale_skipped``, ``local_errors``; and ``mode``,
        ``pending_ops`` (the store's operations on the queue), ``abandoned_calls``
        (remote calls still running past their timeout)."""
        with self._stats_lock:
            out: dict[str, Any] = dict(self._stats)
        out["mode"] = self._route.name
        out["pending_ops"] = self._pending.count()
        out["abandoned_calls"] = self._calls.abandoned
        return out

    def close(self, drain: bool = False, timeout: float | None = None) -> None:
        """Stop the engine (``SyncEngine.stop(drain, timeout)``), unsubscribe from the
        monitor, wait for calls in progress, and close the local file. The queue, the
        monitor and the remote are the caller's and stay open. Idempotent; queued
        writes stay on the queue for the next store."""
        with self._close_lock:
            with self._active_cond:  # _use() checks it under this lock
                if self._closed:
                    return
                self._closed = True
            try:
                if self._monitor is not None and self._token is not None:
                    self._monitor.unsubscribe(self._token)
                self._engine.stop(drain=drain, timeout=timeout)
            finally:
                with self._active_cond:
                    self._active_cond.wait_for(lambda: self._active == 0)
                self._local.close()

    def __enter__(self) -> OfflineFirstStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._route.name
        local = getattr(self, "_local", None)
        return f"<OfflineFirstStore {local.path if local else '?'!r} {state}>"

    @property
    def online(self) -> bool:
        """True while the store routes calls to the remote (the monitor said connected)."""
        return self._route is _ONLINE

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def engine(self) -> _core.SyncEngine:
        """The engine that drains the store's queue (``on()``, ``stats()``, ...)."""
        return self._engine

    @property
    def queue(self) -> _core.SyncQueue:
        """The store's queue."""
        return self._queue

    @property
    def monitor(self) -> _core.NetworkMonitor | None:
        """The monitor the store follows."""
        return self._monitor

    @property
    def local_path(self) -> str:
        """The local copy's file."""
        return self._local.path

    @property
    def timeout(self) -> float:
        """Seconds (real time) a remote call may take."""
        return self._timeout

    # ---------------------------------------------------------------- internals

    @contextmanager
    def _use(self) -> Iterator[None]:
        with self._active_cond:
            if self._closed:
                raise errors.StoreClosedError("the OfflineFirstStore is closed")
            self._active += 1
        try:
            yield
        finally:
            with self._active_cond:
                self._active -= 1
                if not self._active:
                    self._active_cond.notify_all()

    def _now(self) -> float:
        return float(self._clock.now())

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[name] += n

    def _unsettled(self, key: str) -> bool:
        return self._pending.has(key) or self._calls.running_set(key)

    def _quietly(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Best-effort local bookkeeping: an error is logged and counted, not raised."""
        try:
            return fn(*args)
        except errors.StoreClosedError:
            return None  # closing: an engine event after the local copy closed
        except Exception as e:
            self._count("local_errors")
            _log.warning("OfflineFirstStore: could not %s: %s", what, _describe(e))
            return None

    def _local_get(self, key: str, default: Any) -> Any:
        try:
            row = self._local.read(key)
        except (sqlite3.Error, OSError) as e:
            raise errors.OfflineFailure(
                f"get {key!r}: the local copy could not be read: {_describe(e)}", key, "get"
            ) from e
        if row is not None:
            return json.loads(row.value)
        if default is _MISSING:
            raise KeyError(key)
        return default

    def _remote_failed(self, exc: BaseException, what: str, key: str) -> None:
        self._count("remote_failures")
        if self._monitor is not None and not _is_answer(exc):
            self._monitor.report_failure()
        _log.info("OfflineFirstStore: remote.%s(%r) failed: %s", what, key, _describe(exc))

    def _enqueue(
        self, key: str, text: str, priority: int, hlc: int, direct_error: BaseException | None
    ) -> str:
        try:
            self._queue.observe_hlc(hlc)  # the operation's stamp comes after the local write's
            op_id = self._queue.enqueue(
                KIND, text, key=key, priority=priority, coalesce=self._coalesce
            )
        except Exception as e:
            tried = f"remote.set failed ({_describe(direct_error)}) and " if direct_error else ""
            raise self._online_failure(
                f"set {key!r}: {tried}the write could not be queued: {_describe(e)}", key, e
            ) from e
        self._pending.record(key, op_id)
        self._count("queued_writes")
        return "queued"

    @staticmethod
    def _online_failure(message: str, key: str, cause: BaseException) -> errors.OnlineFailure:
        failure = errors.OnlineFailure(message, key, "set")
        failure.__cause__ = cause
        return failure

    @staticmethod
    def _dual(
        online_error: BaseException, offline_error: BaseException, key: str, operation: str
    ) -> errors.DualFailure:
        failure = errors.DualFailure(online_error, offline_error, key, operation)
        failure.__cause__ = online_error
        failure.__context__ = offline_error
        return failure

    # The monitor's observer: switch routes, nothing more. It
    # runs on the thread that changed the monitor, with the GIL taken for the call.
    def _on_network(self, connected: bool) -> None:
        with self._route_lock:
            self._heard_from_monitor = True
            self._route = _ONLINE if connected else _OFFLINE
        self._count("transitions")
        _log.info("OfflineFirstStore: now %s", "online" if connected else "offline")

    # The engine's transport: runs on an engine worker thread.
    def _deliver(self, op: _core.Operation) -> None:
        key = op.key
        if op.kind != KIND or key is None:
            raise errors.PermanentError(
                f"op {op.id} (kind {op.kind!r}) is not an OfflineFirstStore write; "
                "give the store a queue of its own"
            )
        try:
            value = json.loads(op.payload)
        except ValueError as e:
            raise errors.PermanentError(f"op {op.id}: payload is not JSON") from e
        try:
            synced = self._local.synced_hlc(key)
        except Exception:
            synced = 0
        if synced >= op.hlc:
            # A newer write of this key already reached the remote (possible only for
            # operations the store did not put there: requeued dead letters, say).
            self._count("stale_skipped")
            _log.info(
                "OfflineFirstStore: op %d of %r is older than the remote's; skipped", op.id, key
            )
            return
        if not self._calls.wait_sets_done(key, self._timeout):
            raise errors.TransientError(
                f"an earlier remote.set({key!r}) is still running; not overtaking it"
            )
        try:
            self._calls.run("set", self._remote.set, key, value)
        except errors.ConflictError as e:
            # Hand the resolver (and the "superseded" event) the remote value as JSON
            # text, so that strings and numbers come back exactly.
            remote = e.remote
            if remote is not None and not isinstance(remote, (bytes, bytearray, memoryview)):
                try:
                    remote = _encode(remote)
                except errors.InvalidArgumentError:
                    remote = None
            raise errors.ConflictError(remote, e.remote_timestamp, e.remote_version) from e

    def _settle(self, info: dict[str, Any], text: str | None) -> bool:
        op = info.get("op")
        if op is None or op.kind != KIND or op.key is None:
            return False
        changed = bool(
            self._quietly(
                "record a settled write", self._local.settle, op.key, op.hlc, text, self._now()
            )
        )
        self._pending.ended(op.key, op.id)
        return changed

    def _on_delivered(self, info: dict[str, Any]) -> None:
        op = info.get("op")
        if op is None or op.kind != KIND:
            return
        # The delivered payload is the value now on the remote (a merge's, if merged).
        if self._settle(info, _canonical(bytes(op.payload))):
            self._count("adopted")

    def _on_superseded(self, info: dict[str, Any]) -> None:
        """The resolver let the remote's value stand: the local copy takes it, unless
        a newer local write of the key exists (that write is on its way and wins)."""
        raw = info.get("remote")
        text = _canonical(bytes(raw)) if raw else None
        op = info.get("op")
        if text is None and op is not None and op.kind == KIND:
            _log.warning(
                "OfflineFirstStore: %r superseded by a remote value the remote did not "
                "send; the local copy keeps its value until the next online get",
                op.key,
            )
        if self._settle(info, text):
            self._count("adopted")

    def _on_dead_letter(self, info: dict[str, Any]) -> None:
        op = info.get("op")
        if op is None or op.kind != KIND:
            return
        self._count("dead_lettered")
        _log.warning(
            "OfflineFirstStore: write of %r dead-lettered: %s", op.key, info.get("error", "")
        )
        if op.key is not None:
            self._pending.ended(op.key, op.id)


def _weak_transport(method: Callable[[_core.Operation], None]) -> Callable[[_core.Operation], None]:
    ref = weakref.WeakMethod(method)

    def transport(op: _core.Operation) -> None:
        bound = ref()
        if bound is None:
            raise errors.TransientError("the OfflineFirstStore was garbage-collected unclosed")
        bound(op)

    return transport


def _weak_listener(
    method: Callable[[dict[str, Any]], None],
) -> Callable[[dict[str, Any]], None]:
    ref = weakref.WeakMethod(method)

    def listener(info: dict[str, Any]) -> None:
        bound = ref()
        if bound is not None:
            bound(info)

    return listener


_STAT_NAMES = (
    "remote_reads",
    "fallback_reads",
    "local_reads",
    "direct_writes",
    "queued_writes",
    "remote_failures",
    "adopted",
    "dead_lettered",
    "transitions",
    "stale_skipped",
    "local_errors",
)
