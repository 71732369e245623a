"""cpcsync: an offline-first sync engine for Python services, with a C++ core.

Record what users do as operations in a durable, prioritised outbox
(:class:`SyncQueue`); cpcsync keeps them on local disk and delivers them when the
network allows (:class:`NetworkMonitor` says when): most important first, in order
per key, nothing lost across crashes.
"""

from __future__ import annotations

import atexit
import enum

from cpcsync import _core, _engine
from cpcsync._core import (
    BackoffStrategy,
    CallableBackoff,
    CappedBackoff,
    Clock,
    ConstantBackoff,
    ExponentialBackoff,
    HybridLogicalClock,
    LinearBackoff,
    NetworkMonitor,
    Operation,
    Probe,
    SumBackoff,
    ProcessingSummary,
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
    InvalidArgumentError,
    NetworkError,
    NetworkTimeoutError,
    NotAQueueError,
    OperationStateError,
    PermanentError,
    QueueClosedError,
    QueueFullError,
    QueueLockedError,
    RetryAfter,
    SQLiteError,
    StorageError,
    SyncError,
    TransientError,
)
from cpcsync.http import HttpTransport

__version__ = "0.1.0"

atexit.register(_core._stop_log_bridge)
SyncEngine.wait_idle_async = _engine.wait_idle_async  # type: ignore[method-assign]


class Priority(enum.IntEnum):
    """Standard priorities. Any int in 0..255 is accepted where a priority is."""

    LOW = 25
    MEDIUM = 50
    HIGH = 75
    CRITICAL = 100


__all__ = [
    "BackoffStrategy",
    "CallableBackoff",
    "CappedBackoff",
    "Clock",
    "ConflictError",
    "ConstantBackoff",
    "CorruptDatabaseError",
    "ExponentialBackoff",
    "HttpTransport",
    "HybridLogicalClock",
    "InvalidArgumentError",
    "LinearBackoff",
    "NetworkError",
    "NetworkMonitor",
    "NetworkTimeoutError",
    "NotAQueueError",
    "Operation",
    "OperationStateError",
    "PermanentError",
    "Priority",
    "ProcessingSummary",
    "Probe",
    "QueueClosedError",
    "QueueFullError",
    "QueueLockedError",
    "RetryAfter",
    "SQLiteError",
    "StorageError",
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
