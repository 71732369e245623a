"""The exceptions cpcsync raises: one hierarchy rooted at :class:`SyncError`.

Errors that come from SQLite or the operating system keep that origin as
``__cause__`` (an :class:`SQLiteError` or :class:`OSError`).
"""

from __future__ import annotations

__all__ = [
    "CorruptDatabaseError",
    "InvalidArgumentError",
    "NotAQueueError",
    "OperationStateError",
    "QueueClosedError",
    "QueueFullError",
    "QueueLockedError",
    "SQLiteError",
    "StorageError",
    "SyncError",
]


class SyncError(Exception):
    """Root of every error cpcsync raises."""


class StorageError(SyncError):
    """Reading or writing the queue's storage failed (I/O, SQLite, permissions)."""

    sqlite_code: int = 0


class SQLiteError(StorageError):
    """The SQLite library reported an error; ``sqlite_code`` is its extended result code."""


class CorruptDatabaseError(StorageError):
    """The queue file is a damaged database. cpcsync does not modify it."""


class NotAQueueError(StorageError):
    """The file is not a cpcsync queue (another format, another application's
    database, or a newer schema). cpcsync does not modify it."""


class QueueFullError(SyncError):
    """The queue is at max_ops or max_bytes and its overflow policy is "reject";
    nothing was stored."""


class QueueLockedError(SyncError):
    """Another handle, in this or another process, is the queue's consumer."""


class QueueClosedError(SyncError):
    """The queue was closed."""


class InvalidArgumentError(SyncError, ValueError):
    """An argument is out of range or malformed (also a ValueError)."""


class OperationStateError(SyncError):
    """The operation is not in a state that allows the call (e.g. ack of an op
    that is not in flight, or of an unknown id)."""
