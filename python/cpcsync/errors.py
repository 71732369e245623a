"""The exceptions cpcsync raises: one hierarchy rooted at :class:`SyncError`.

Errors that come from SQLite or the operating system keep that origin as
``__cause__`` (an :class:`SQLiteError` or :class:`OSError`).

A *transport* (``callable(op) -> None``) reports the outcome of one delivery by
returning (delivered) or by raising one of:

- :class:`TransientError`: try again later, after the backoff's delay.
- :class:`RetryAfter`: try again after exactly ``seconds`` (a server said so).
- :class:`PermanentError`: retrying cannot help; the operation is dead-lettered.
- :class:`ConflictError`: the server holds a newer version; the resolver decides.
- :class:`OSError` / :class:`TimeoutError` (and :class:`NetworkError`, which is
  both a TransientError and an OSError): a *network* failure. The engine treats it
  as transient and also tells the network monitor (``monitor.report_failure()``).

Any other exception from a transport is treated as transient.

:class:`~cpcsync.OfflineFirstStore` raises its own three, each naming the side that
failed, plus :class:`StoreClosedError`:

- :class:`OnlineFailure`: the remote side failed and nothing took its place (a write
  that could be neither sent nor queued; it was undone locally).
- :class:`OfflineFailure`: the local copy failed (the read could not be served, or a
  write reached the remote or the queue but not the local copy).
- :class:`DualFailure`: both sides failed; ``online_error`` and ``offline_error``
  hold the two causes (``__cause__`` is ``online_error``, ``__context__`` is
  ``offline_error``).

docs/offline-store.md says exactly when each is raised.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "ConflictError",
    "CorruptDatabaseError",
    "DualFailure",
    "InvalidArgumentError",
    "NetworkError",
    "NetworkTimeoutError",
    "NotAQueueError",
    "OfflineFailure",
    "OnlineFailure",
    "OperationStateError",
    "PermanentError",
    "QueueClosedError",
    "QueueFullError",
    "QueueLockedError",
    "RetryAfter",
    "SQLiteError",
    "StorageError",
    "StoreClosedError",
    "SyncError",
    "TransientError",
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


# --------------------------------------------------------------------------
# outcomes a transport signals by raising


class TransientError(SyncError):
    """A delivery failed for a reason that may pass (a 5xx, a dropped connection):
    the engine retries the operation after the backoff's delay."""


class PermanentError(SyncError):
    """A delivery failed for a reason retrying cannot fix (e.g. HTTP 400, 403, 404):
    the engine dead-letters the operation."""


class NetworkError(TransientError, OSError):
    """The network failed (connection refused or reset, DNS, TLS handshake): transient.

    Also an :class:`OSError`, so code that treats ``OSError`` as a network failure
    (as the engine does: it retries and calls ``monitor.report_failure()``) sees it as
    one. The HTTP client's own exception is kept as ``__cause__``.
    """


class NetworkTimeoutError(NetworkError, TimeoutError):
    """The server did not answer (connect or read) within the timeout: a
    :class:`NetworkError` that is also a :class:`TimeoutError`."""


class RetryAfter(TransientError):
    """The server asked to retry after ``seconds`` (e.g. HTTP 429/503 with Retry-After).

    The engine retries after exactly ``seconds`` instead of the backoff's delay. It is
    a :class:`TransientError`, so code that does not know it still retries.
    ``seconds`` must be a finite number >= 0 (else :class:`InvalidArgumentError`).
    """

    seconds: float

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise InvalidArgumentError(
                f"RetryAfter seconds must be a number, not {type(seconds).__name__}"
            )
        value = float(seconds)
        if not math.isfinite(value) or value < 0:
            raise InvalidArgumentError(f"RetryAfter seconds must be finite and >= 0, not {value}")
        super().__init__(value)
        self.seconds = value

    def __str__(self) -> str:
        return f"retry after {self.seconds:g}s"


class ConflictError(SyncError):
    """The server holds a version of the entity the operation did not expect.

    ``remote``: the server's current value (decoded JSON, or None when unknown).
    ``remote_timestamp``: the server value's HLC timestamp, or None.
    ``remote_version``: the server's version number of the entity, or None.
    The engine hands them to its conflict resolver.
    """

    remote: Any
    remote_timestamp: int | None
    remote_version: int | None

    def __init__(
        self,
        remote: Any,
        remote_timestamp: int | None = None,
        remote_version: int | None = None,
    ) -> None:
        super().__init__(remote, remote_timestamp, remote_version)
        self.remote = remote
        self.remote_timestamp = remote_timestamp
        self.remote_version = remote_version

    def __str__(self) -> str:
        return (
            f"conflict: remote version {self.remote_version}, "
            f"remote timestamp {self.remote_timestamp}"
        )


# --------------------------------------------------------------------------
# OfflineFirstStore


class _StoreFailure(SyncError):
    """Common shape of the store's failures: a message, the key and the operation."""

    key: str | None
    operation: str | None

    def __init__(self, message: str, key: str | None = None, operation: str | None = None) -> None:
        super().__init__(message, key, operation)
        self.key = key
        self.operation = operation

    def __str__(self) -> str:
        return str(self.args[0])


class OnlineFailure(_StoreFailure):
    """An :class:`~cpcsync.OfflineFirstStore` write could reach neither the remote nor
    the queue, so it was undone in the local copy: the call changed nothing.

    Raised by ``store.set`` when the local copy took the value but the remote refused
    it for good (:class:`PermanentError`), or the remote failed (or the store is
    offline) and the queue refused the operation (full, closed, storage error). The
    error that ended the attempt is ``__cause__``; the message also names the remote's
    failure when there was one. ``key`` and ``operation`` (``"set"``) say what failed.
    """


class OfflineFailure(_StoreFailure):
    """The local copy of an :class:`~cpcsync.OfflineFirstStore` failed (SQLite or
    operating-system error, kept as ``__cause__``).

    - ``store.get`` while offline (or while the key has writes not yet delivered):
      the local copy could not be read. (A key it simply does not hold is a
      ``KeyError``, not a failure.)
    - ``store.set``: the local copy could not be written, **but the write is safe**:
      it was delivered to the remote or durably queued (the message says which).
    - ``OfflineFirstStore(...)``: the local file could not be opened or created, or it
      is not a store file (another application's database is never modified).

    ``key`` and ``operation`` (``"get"``, ``"set"`` or ``"open"``) say what failed.
    """


class DualFailure(SyncError):
    """Both sides of an :class:`~cpcsync.OfflineFirstStore` call failed.

    - ``store.get``: the remote failed (an exception or the timeout) and the local copy
      could not answer (a read error, or no value for the key: ``offline_error`` is
      then a ``KeyError``).
    - ``store.set``: the local copy could not be written, and the write could neither
      be delivered nor queued. Nothing was stored anywhere.

    ``online_error``: the remote side's exception (the remote's own exception, a
    :class:`NetworkTimeoutError` for a timeout, or the queue's error for a write that
    could not be queued). ``offline_error``: the local side's exception. Both are
    chained: ``__cause__`` is ``online_error`` and ``__context__`` is
    ``offline_error``; the message shows both.
    """

    online_error: BaseException
    offline_error: BaseException
    key: str | None
    operation: str | None

    def __init__(
        self,
        online_error: BaseException,
        offline_error: BaseException,
        key: str | None = None,
        operation: str | None = None,
    ) -> None:
        super().__init__(online_error, offline_error, key, operation)
        self.online_error = online_error
        self.offline_error = offline_error
        self.key = key
        self.operation = operation

    def __str__(self) -> str:
        what = f"{self.operation} {self.key!r}" if self.operation else repr(self.key)
        return (
            f"{what}: both sides failed: online: {_one_line(self.online_error)}; "
            f"offline: {_one_line(self.offline_error)}"
        )


class StoreClosedError(SyncError):
    """The :class:`~cpcsync.OfflineFirstStore` was closed."""


def _one_line(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ raises
        text = "<unprintable>"
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
