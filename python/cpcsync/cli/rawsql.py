"""Read-only SQL over a queue file, for the few things ``SyncQueue`` does not expose.

**Schema dependency.** Everything else in the CLI goes through the public
``SyncQueue`` API. This module alone reads the SQLite file directly (Python's
``sqlite3``, URI ``mode=ro``: it never writes, never takes a lock a writer waits
for beyond SQLite's usual WAL read marks, and works while the service runs). It
relies on these parts of the schema of ``cpp/src/sqlite/schema.cc``:

- ``PRAGMA application_id`` = ``0x63706373`` and ``PRAGMA user_version`` in
  :data:`SUPPORTED_SCHEMA_VERSIONS`;
- table ``ops`` with columns ``id`` (INTEGER PRIMARY KEY), ``priority`` (INTEGER),
  ``state`` (INTEGER: 0 pending, 1 in flight, 2 dead), ``last_error`` (TEXT or
  NULL), ``next_attempt_at`` (REAL, queue clock) and ``dead_at`` (REAL or NULL).

It is used for: the ids of in-flight operations (the API lists pending and dead
operations but not leased ones; the operations themselves are then read with
``SyncQueue.get``), ids in id order for ``export``, in-flight and dead counts per
priority (``stats()["by_priority"]`` counts pending only), and the summary of
recent ``last_error`` texts. When the core's schema version changes, the CLI tests
fail until this module is checked and :data:`SUPPORTED_SCHEMA_VERSIONS` updated.

**Cost.** Each query reads only the operations it reports on, never the whole backlog
(``status`` on a file with millions of pending operations answers in well under a
second, as the benchmarks' scale group measures): per-state queries are written ``state = 1`` /
``state = 2`` so SQLite uses the partial indexes ``ops_in_flight`` / ``ops_dead``, and
the error summary reads the covering partial index ``ops_errors`` (schema 3; on a
schema-2 file it scans).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from cpcsync.cli.access import CliError

__all__ = [
    "APPLICATION_ID",
    "STATE_CODES",
    "SUPPORTED_SCHEMA_VERSIONS",
    "ErrorSummary",
    "RawQueueReader",
]

APPLICATION_ID = 0x63706373
"""``PRAGMA application_id`` of every cpcsync queue file ("cpcs")."""
SUPPORTED_SCHEMA_VERSIONS = (2, 3, 4)  # 4 only adds columns
"""Schema versions (``PRAGMA user_version``) whose layout this module was checked against."""
STATE_CODES = {"pending": 0, "in_flight": 1, "dead": 2}
"""How ``ops.state`` encodes an operation's state."""


@dataclass(frozen=True)
class ErrorSummary:
    """One distinct ``last_error`` text: how many operations carry it, how many are dead."""

    error: str
    count: int
    dead: int


class RawQueueReader:
    """A read-only SQLite connection to a queue file (a context manager).

    Raises :class:`CliError` when the file cannot be read or its schema is not one
    this module knows.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        uri = Path(path).resolve().as_uri() + "?mode=ro"
        try:
            self._db = sqlite3.connect(uri, uri=True, timeout=5.0, check_same_thread=False)
        except sqlite3.Error as exc:
            raise CliError(f"{path}: cannot read the queue file: {exc}", 1) from exc
        try:
            app_id = self._scalar("PRAGMA application_id")
            version = self._scalar("PRAGMA user_version")
        except CliError:
            self._db.close()
            raise
        if app_id != APPLICATION_ID:
            self._db.close()
            raise CliError(f"{path}: not a cpcsync queue", 2)
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            self._db.close()
            raise CliError(
                f"{path}: queue schema version {version} is not one this CLI can read "
                f"(it knows {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))})",
                1,
            )

    def __enter__(self) -> RawQueueReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        try:
            return list(self._db.execute(sql, tuple(params)).fetchall())
        except sqlite3.DatabaseError as exc:
            raise CliError(f"{self.path}: cannot read the queue file: {exc}", 1) from exc

    def _scalar(self, sql: str) -> Any:
        rows = self._rows(sql)
        return rows[0][0] if rows else None

    def ids(self, states: Sequence[str], *, after: int = 0, limit: int | None = None) -> list[int]:
        """Ids of operations in ``states`` with id > ``after``, ascending, up to ``limit``."""
        codes = [STATE_CODES[s] for s in states]
        marks = ",".join("?" for _ in codes)
        sql = f"SELECT id FROM ops WHERE state IN ({marks}) AND id > ? ORDER BY id"
        params: list[object] = [*codes, after]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [int(row[0]) for row in self._rows(sql, params)]

    def iter_ids(self, states: Sequence[str], *, chunk: int = 1000) -> Iterator[int]:
        """All ids in ``states`` in ascending order, read in chunks (no long read transaction)."""
        after = 0
        while True:
            batch = self.ids(states, after=after, limit=chunk)
            yield from batch
            if len(batch) < chunk:
                return
            after = batch[-1]

    def count(self, states: Sequence[str]) -> int:
        """How many operations are in ``states``."""
        codes = [STATE_CODES[s] for s in states]
        marks = ",".join("?" for _ in codes)
        rows = self._rows(f"SELECT count(*) FROM ops WHERE state IN ({marks})", codes)
        return int(rows[0][0])

    def counts_by_priority(self) -> dict[int, dict[str, int]]:
        """priority -> {"in_flight": n, "dead": n} (priorities with neither are left out)."""
        out: dict[int, dict[str, int]] = {}
        # two queries, not `state IN (1, 2)`: each one uses its partial index
        rows = self._rows(
            "SELECT priority, 1, count(*) FROM ops WHERE state = 1 GROUP BY priority "
            "UNION ALL "
            "SELECT priority, 2, count(*) FROM ops WHERE state = 2 GROUP BY priority"
        )
        for priority, state, n in rows:
            entry = out.setdefault(int(priority), {"in_flight": 0, "dead": 0})
            entry["in_flight" if state == 1 else "dead"] = int(n)
        return out

    def last_errors(self, limit: int, now: float) -> list[ErrorSummary]:
        """Up to ``limit`` distinct ``last_error`` texts, most recent first.

        The file does not store when a live operation last failed, so recency is: for
        a dead operation, when it died (``dead_at``); for a live one, the earlier of
        its ``next_attempt_at`` (a retry is scheduled at failure time + delay) and
        ``now``. Ties go to the text more operations carry.
        """
        rows = self._rows(
            "SELECT last_error, count(*), sum(state = 2), "
            "max(CASE WHEN state = 2 THEN coalesce(dead_at, next_attempt_at) "
            "ELSE min(next_attempt_at, ?) END) AS seen "
            "FROM ops WHERE last_error IS NOT NULL "
            "GROUP BY last_error ORDER BY seen DESC, count(*) DESC, last_error LIMIT ?",
            [now, limit],
        )
        return [
            ErrorSummary(error=str(text), count=int(n), dead=int(dead or 0))
            for text, n, dead, _seen in rows
        ]
