"""cpcsync.server: the receiving half of the sync loop (docs/server.md).

A framework-agnostic :class:`Receiver` applies operations exactly once on a
:class:`Backend`: :class:`SqliteBackend` (embedded, the default) or
``PostgresBackend`` (any number of receiver processes on one PostgreSQL). The wire
protocol is docs/protocol.md; :func:`handle` serves it for any web framework.
"""

from __future__ import annotations

from cpcsync.server.backend import Backend, BackendUnavailable, Entity, Tx
from cpcsync.server.http_api import PROTOCOL_VERSION, Response, handle
from cpcsync.server.protocol import ProtocolError
from cpcsync.server.receiver import Receiver, Request
from cpcsync.server.sqlite_backend import SqliteBackend

__all__ = [
    "PROTOCOL_VERSION",
    "Backend",
    "BackendUnavailable",
    "Entity",
    "ProtocolError",
    "Receiver",
    "Request",
    "Response",
    "SqliteBackend",
    "Tx",
    "handle",
]
