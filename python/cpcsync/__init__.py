"""cpcsync: an offline-first sync engine for Python services, with a C++ core.

Record what users do as operations in a durable, prioritised outbox
(:class:`SyncQueue`); cpcsync keeps them on local disk and delivers them when the
network allows (:class:`NetworkMonitor` says when): most important first, in order
per key, nothing lost across crashes. When the server reports a conflict, a
:class:`ConflictResolver` (:class:`LastWriteWins`, :class:`ServerWins`,
:class:`ClientWins`, :class:`FieldMerge`, or your own) decides what happens.
"""

from __future__ import annotations

import enum

from cpcsync import _engine
from cpcsync._core import (
    BackoffStrategy,
    CallableBackoff,
    CallableResolver,
    CappedBackoff,
    ClientWins,
    Clock,
    ConflictResolver,
    ConstantBackoff,
    ExponentialBackoff,
    FieldMerge,
    HybridLogicalClock,
    LastWriteWins,
    LinearBackoff,
    NetworkMonitor,
    Operation,
    Probe,
    ProcessingSummary,
    Remote,
    Resolution,
    ServerWins,
    SumBackoff,
    SyncEngine,
    SyncQueue,
    SystemClock,
    TcpProbe,
    VirtualClock,
    flush_logs,
    set_log_level,
)
from cpcsync.errors import (
    ConflictError,
    CorruptDatabaseError,
    DualFailure,
    InvalidArgumentError,
    NetworkError,
    NetworkTimeoutError,
    NotAQueueError,
    OfflineFailure,
    OnlineFailure,
    OperationStateError,
    PermanentError,
    QueueClosedError,
    QueueFullError,
    QueueLockedError,
    RetryAfter,
    SQLiteError,
    StorageError,
    StoreClosedError,
    SyncError,
    TransientError,
)
from cpcsync.http import HttpTransport
from cpcsync.store import OfflineFirstStore, RemoteStore

__version__ = "0.1.0"

SyncEngine.wait_idle_async = _engine.wait_idle_async  # type: ignore[method-assign,assignment]


class Priority(enum.IntEnum):
    """Standard priorities. Any int in 0..255 is accepted where a priority is."""

    LOW = 25
    MEDIUM = 50
    HIGH = 75
    CRITICAL = 100


__all__ = [
    "BackoffStrategy",
    "CallableBackoff",
    "CallableResolver",
    "CappedBackoff",
    "ClientWins",
    "Clock",
    "ConflictError",
    "ConflictResolver",
    "ConstantBackoff",
    "CorruptDatabaseError",
    "DualFailure",
    "ExponentialBackoff",
    "FieldMerge",
    "HttpTransport",
    "HybridLogicalClock",
    "InvalidArgumentError",
    "LastWriteWins",
    "LinearBackoff",
    "NetworkError",
    "NetworkMonitor",
    "NetworkTimeoutError",
    "NotAQueueError",
    "OfflineFailure",
    "OfflineFirstStore",
    "OnlineFailure",
    "Operation",
    "OperationStateError",
    "PermanentError",
    "Priority",
    "Probe",
    "ProcessingSummary",
    "QueueClosedError",
    "QueueFullError",
    "QueueLockedError",
    "Remote",
    "RemoteStore",
    "Resolution",
    "RetryAfter",
    "SQLiteError",
    "ServerWins",
    "StorageError",
    "StoreClosedError",
    "SumBackoff",
    "SyncEngine",
    "SyncError",
    "SyncQueue",
    "SystemClock",
    "TcpProbe",
    "TransientError",
    "VirtualClock",
    "__version__",
    "flush_logs",
    "set_log_level",
]
