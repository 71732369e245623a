"""Test helpers for cpcsync users: a reference sync server to deliver to.

:class:`SyncServer` is a real HTTP server on 127.0.0.1 with its own SQLite file,
the counterpart of :class:`cpcsync.HttpTransport` (wire format in docs/http.md).
"""

from __future__ import annotations

from cpcsync.testing.server import SyncServer

__all__ = ["SyncServer"]
