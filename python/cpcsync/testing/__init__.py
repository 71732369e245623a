"""Test helpers for cpcsync users: a reference sync server to deliver to, and a
TCP proxy that injects real network faults.

:class:`SyncServer` is a real HTTP server on 127.0.0.1 with its own SQLite file,
the counterpart of :class:`cpcsync.HttpTransport` (wire format in docs/http.md).
:class:`FaultProxy` sits between a client and a server and applies Toxiproxy-style
toxics (docs/fault-proxy.md).
"""

from __future__ import annotations

from cpcsync.testing.proxy import FaultProxy
from cpcsync.testing.server import SyncServer

__all__ = ["FaultProxy", "SyncServer"]
