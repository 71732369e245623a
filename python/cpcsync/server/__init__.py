"""cpcsync.server: the receiving half of the sync loop (docs/server.md).

A framework-agnostic :class:`Receiver` applies operations exactly once on a
:class:`Backend`: :class:`SqliteBackend` (embedded, the default) or
``PostgresBackend`` (any number of receiver processes on one PostgreSQL). The wire
protocol is docs/protocol.md; :func:`handle` serves it for any web framework,
:meth:`Receiver.asgi` and :meth:`Receiver.wsgi` as ASGI and WSGI applications, and
``cpcsync serve --db URL`` under uvicorn (:func:`backend_from_url` reads the URL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cpcsync.server.asgi import make_asgi_app
from cpcsync.server.backend import Backend, BackendUnavailable, Entity, Tx
from cpcsync.server.backend_url import backend_from_url
from cpcsync.server.http_api import PROTOCOL_VERSION, Response, handle
from cpcsync.server.protocol import ProtocolError
from cpcsync.server.receiver import Receiver, Request
from cpcsync.server.sqlite_backend import SqliteBackend
from cpcsync.server.wsgi import make_wsgi_app

if TYPE_CHECKING:
    from cpcsync.server.postgres_backend import PostgresBackend as PostgresBackend

# PostgresBackend is not in __all__: ``from cpcsync.server import *`` must work without
# psycopg. It is imported on first use (see __getattr__).
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
    "backend_from_url",
    "handle",
    "make_asgi_app",
    "make_wsgi_app",
]


def __getattr__(name: str) -> Any:
    """``PostgresBackend``, imported on first use: importing cpcsync.server does not
    need psycopg (the ``cpcsync[postgres]`` extra)."""
    if name == "PostgresBackend":
        from cpcsync.server.postgres_backend import PostgresBackend

        globals()["PostgresBackend"] = PostgresBackend
        return PostgresBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "PostgresBackend"])
