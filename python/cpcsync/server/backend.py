"""Backend: where a Receiver keeps entities, idempotency records and the changes feed.

A backend knows SQL and connections; the Receiver knows the protocol. The contract
every backend keeps (SqliteBackend, PostgresBackend):

- :meth:`Backend.run` runs one function in one database transaction and commits it,
  or rolls everything back. A transient concurrency failure (deadlock, serialization
  failure, a unique-key race) re-runs the whole function; an unreachable database
  raises :class:`BackendUnavailable` (the receiver answers retry_later / 503).
- Inside it, :meth:`Tx.lock_entity` locks the key's row until commit, so two
  transactions never both apply against the same version.
- :meth:`Tx.write` stores the entity, the idempotency record and one change; changes
  become visible to :meth:`Backend.changes` in commit order with increasing ``seq``:
  a change committed after a reader saw ``seq`` N always gets a ``seq`` above N.

Thread-safety: a backend is shared by every thread of a process (and a database by
many processes); each call is independent.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from cpcsync.errors import SyncError

__all__ = ["Backend", "BackendUnavailable", "Entity", "Tx", "Write"]

T = TypeVar("T")


class BackendUnavailable(SyncError):
    """The database cannot be reached or refused the transaction for a reason that
    may pass (it restarts, it is full, a lock is held too long). Nothing was applied."""


@dataclass(frozen=True)
class Entity:
    """A key's state: ``value`` (JSON text, ``"null"`` once deleted), ``version`` (the
    number of ops applied to it), ``hlc`` of the op that wrote it last, ``deleted``."""

    value_json: str
    version: int
    hlc: int
    deleted: bool


@dataclass(frozen=True)
class Write:
    """One applied op, for :meth:`Tx.write_many`: the key's new state ``entity``
    (None for an op without a key), its idempotency record and its change."""

    key: str | None
    kind: str | None
    entity: Entity | None
    idempotency_key: str
    fingerprint: str
    result_json: str
    device: str | None
    op_id: int | None
    now: float


class Tx(abc.ABC):
    """One open transaction (see :meth:`Backend.run`). Not thread-safe; valid only
    inside the function it was given to."""

    @property
    @abc.abstractmethod
    def connection(self) -> Any:
        """The driver's connection (sqlite3.Connection, psycopg.Connection): an
        ``apply`` hook writes its own tables through it, in this transaction."""

    @abc.abstractmethod
    def execute(self, sql: str, params: Any = ()) -> Any:
        """Run one statement in this transaction (the driver's parameter style:
        ``?`` for SQLite, ``%s`` for PostgreSQL); returns the driver's cursor."""

    @abc.abstractmethod
    def savepoint(self) -> contextlib.AbstractContextManager[None]:
        """A savepoint: an exception inside rolls back to it (and propagates); the
        rest of the transaction goes on."""

    @abc.abstractmethod
    def record(self, idempotency_key: str) -> tuple[str, str] | None:
        """``(fingerprint, result JSON)`` of an applied op, or None."""

    @abc.abstractmethod
    def lock_batch(self, keys: list[str], idempotency_keys: list[str]) -> None:
        """Called once per batch before any op: a backend whose writers can block each
        other takes its locks on these keys here, all at once and in one global
        order, so two batches writing the same keys in different orders never
        deadlock."""

    @abc.abstractmethod
    def lock_entity(self, key: str) -> Entity | None:
        """The key's state, locked until commit; None if never written."""

    @abc.abstractmethod
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
        """Store one applied op: the key's new state ``entity`` (None for an op without
        a key), its idempotency record and its change. Returns the change's seq, or
        None when the backend numbers changes only at commit (PostgresBackend)."""

    # The batch forms: the receiver uses these, a fixed number of statements per batch.
    # The defaults call the one-op forms; a backend overrides them to save round trips.

    def records(self, idempotency_keys: list[str]) -> dict[str, tuple[str, str]]:
        """:meth:`record` of each key: key -> ``(fingerprint, result JSON)`` for those
        applied."""
        found = {}
        for ikey in idempotency_keys:
            seen = self.record(ikey)
            if seen is not None:
                found[ikey] = seen
        return found

    def lock_entities(self, keys: list[str]) -> dict[str, Entity]:
        """:meth:`lock_entity` of each key: key -> state for those written before."""
        found = {}
        for key in keys:
            entity = self.lock_entity(key)
            if entity is not None:
                found[key] = entity
        return found

    def write_many(self, writes: list[Write]) -> None:
        """:meth:`write` of each, in order."""
        for w in writes:
            self.write(
                key=w.key,
                kind=w.kind,
                entity=w.entity,
                idempotency_key=w.idempotency_key,
                fingerprint=w.fingerprint,
                result_json=w.result_json,
                device=w.device,
                op_id=w.op_id,
                now=w.now,
            )

    @abc.abstractmethod
    def prune_device(self, device: str, low_water: int) -> int:
        """Delete the device's idempotency records of ops with id below ``low_water``;
        returns how many."""


class Backend(abc.ABC):
    """Storage for a :class:`~cpcsync.server.Receiver`. See the module docstring."""

    @abc.abstractmethod
    def run(self, fn: Callable[[Tx], T]) -> T:
        """``fn(tx)`` in one transaction, committed when it returns; rolled back if it
        raises (the exception propagates). Re-runs ``fn`` on a transient concurrency
        failure. BackendUnavailable when the database cannot be used."""

    @abc.abstractmethod
    def get(self, key: str) -> Entity | None:
        """A key's committed state, or None."""

    @abc.abstractmethod
    def changes(self, since: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` committed changes with seq above ``since``, in seq order:
        dicts with seq, key, kind, value (JSON text), version, hlc, deleted,
        idempotency_key."""

    @abc.abstractmethod
    def wait_for_change(self, since: int, timeout: float) -> bool:
        """Block (at most ``timeout`` s) until a change above ``since`` is committed;
        True if one is."""

    @abc.abstractmethod
    def prune_older_than(self, cutoff: float) -> int:
        """Delete idempotency records created before ``cutoff`` (Unix time)."""

    @abc.abstractmethod
    def record_count(self) -> int:
        """How many idempotency records are kept (monitoring, tests)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """A cheap round trip; BackendUnavailable if the database cannot be used."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. Idempotent."""

    def __enter__(self: BackendT) -> BackendT:
        """The backend itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Closes it."""
        self.close()


BackendT = TypeVar("BackendT", bound=Backend)
