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
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "ConflictError",
    "CorruptDatabaseError",
    "InvalidArgumentError",
    "NetworkError",
    "NetworkTimeoutError",
    "NotAQueueError",
    "OperationStateError",
    "PermanentError",
    "QueueClosedError",
    "QueueFullError",
    "QueueLockedError",
    "RetryAfter",
    "SQLiteError",
    "StorageError",
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
