"""cpcsync: an offline-first sync engine for Python services, with a C++ core.

Record what users do as operations in a durable, prioritised outbox
(:class:`SyncQueue`); cpcsync keeps them on local disk and delivers them when the
network allows (:class:`NetworkMonitor` says when): most important first, in order
per key, nothing lost across crashes. When the server reports a conflict, a
:class:`ConflictResolver` (:class:`LastWriteWins`, :class:`ServerWins`,
:class:`ClientWins`, :class:`FieldMerge`, or your own) decides what happens.
"""

from __future__ import annotations

import atexit
import enum

from cpcsync import _core
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
    Remote,
    Resolution,
    ServerWins,
    SumBackoff,
    SyncQueue,
    SystemClock,
    TcpProbe,
    VirtualClock,
    flush_logs,
    set_log_level,
)
from cpcsync.errors import (
    CorruptDatabaseError,
    InvalidArgumentError,
    NotAQueueError,
    OperationStateError,
    QueueClosedError,
    QueueFullError,
    QueueLockedError,
    SQLiteError,
    StorageError,
    SyncError,
)

__version__ = "0.1.0"

atexit.register(_core._stop_log_bridge)


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
    "ConflictResolver",
    "ConstantBackoff",
    "CorruptDatabaseError",
    "ExponentialBackoff",
    "FieldMerge",
    "HybridLogicalClock",
    "InvalidArgumentError",
    "LastWriteWins",
    "LinearBackoff",
    "NetworkMonitor",
    "NotAQueueError",
    "Operation",
    "OperationStateError",
    "Priority",
    "Probe",
    "QueueClosedError",
    "QueueFullError",
    "QueueLockedError",
    "Remote",
    "Resolution",
    "SQLiteError",
    "ServerWins",
    "StorageError",
    "SumBackoff",
    "SyncError",
    "SyncQueue",
    "SystemClock",
    "TcpProbe",
    "VirtualClock",
    "__version__",
    "flush_logs",
    "set_log_level",
]
