"""SyncServer: the reference sync server, a real HTTP server for tests, examples and demos.

It listens on 127.0.0.1 (an ephemeral port) in a background thread and keeps its
state in its own SQLite file. Semantics (see docs/http.md):

- ``POST`` (any path) takes one operation as HttpTransport sends it (JSON with
  ``idempotency_key``, ``key``, ``payload`` or ``payload_b64``, ``hlc``,
  ``base_version``; the ``Idempotency-Key`` header may stand in for the field).
- Each idempotency key is applied once: a repeat is answered 200 again
  (``{"status": "duplicate"}``) and changes nothing.
- Per key it keeps ``{"value", "version", "hlc"}``: ``value`` is the op's payload
  (decoded JSON; for a binary payload ``{"payload_b64": "..."}``), ``version`` the
  number of operations applied to the key (the first is 1), ``hlc`` the last op's.
- When ``base_version`` is not None and differs from the key's current version
  (0 for an unknown key) the op is stale: 409 with the key's
  ``{"value", "version", "hlc"}``, nothing applied, its idempotency key not used up.
- Ops whose ``key`` is None are applied to a log only.
- Malformed bodies get 400.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import socket
import sqlite3
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["SyncServer"]

_log = logging.getLogger("cpcsync.testing.server")
_QUERY = re.compile(r"\?[^\s\"]*")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
    key TEXT PRIMARY KEY, value TEXT, version INTEGER NOT NULL, hlc INTEGER);
CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY, idempotency_key TEXT NOT NULL, kind TEXT,
    key TEXT, body TEXT NOT NULL);
"""


class _Stopping(Exception):
    """The server stopped while a request was being delayed."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
    # algorithm meets the client's delayed ACK and every response waits ~40 ms.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.owner._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._connection_closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        # the request line's query string may hold a credential: never logged
        safe = tuple(_QUERY.sub("?***", a) if isinstance(a, str) else a for a in args)
        _log.debug("%s " + format, self.address_string(), *safe)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        header_key = self.headers.get("Idempotency-Key")
        try:
            status, body, extra = self.server.owner._handle(raw, header_key)
        except _Stopping:
            self.close_connection = True
            return
        self._answer(status, body, extra)

    def do_GET(self) -> None:
        owner: SyncServer = self.server.owner
        prefix = "/entities/"
        if not self.path.startswith(prefix):
            self._answer(404, {"error": "POST operations here; GET /entities/<key>"}, {})
            return
        entity = owner.entity(urllib.parse.unquote(self.path[len(prefix) :]))
        if entity is None:
            self._answer(404, {"error": "no such key"}, {})
        else:
            self._answer(200, entity, {})

    def _answer(self, status: int, body: dict[str, Any], extra: dict[str, str]) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class _HTTPServer(ThreadingHTTPServer):
    # Daemon handler threads: a script that raises before stop() must still exit, even
    # with an idle keep-alive connection open. stop() joins them all the same
    # (block_on_close: server_close() joins every handler thread, daemon or not).
    daemon_threads = True
    block_on_close = True
    owner: SyncServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("connection from %s ended with an error", client_address, exc_info=True)


class SyncServer:
    """A real HTTP sync server on 127.0.0.1 backed by its own SQLite file.

    ``path``: the SQLite file (kept, and reused if it exists), or None for a
    temporary file deleted by :meth:`stop`. :meth:`start` binds an ephemeral port;
    :attr:`url` is where to POST. A context manager (starts and stops). Thread-safe.

    For tests: :meth:`fail_next` answers the next requests with an error status,
    :attr:`delay` holds every request that long before answering, :attr:`received`,
    :attr:`requests`, :attr:`applied` and :attr:`connections` record what happened.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._temp = path is None
        if path is None:
            fd, name = tempfile.mkstemp(prefix="cpcsync-server-", suffix=".db")
            os.close(fd)
            self._path = name
        else:
            self._path = os.fspath(path)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._db: sqlite3.Connection | None = None
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._received: list[dict[str, Any]] = []
        self._requests: list[dict[str, Any] | None] = []
        self._fail_remaining = 0
        self._fail_status = 503
        self._fail_retry_after: str | None = None
        self._delay = 0.0
        self._open_sockets: set[socket.socket] = set()
        self._connections = 0

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> SyncServer:
        """Bind 127.0.0.1 on an ephemeral port and serve in a background thread."""
        with self._lock:
            if self._httpd is not None:
                raise RuntimeError("SyncServer is already started")
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            db.executescript(_SCHEMA)
            self._db = db
            self._stopping.clear()
            httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
            httpd.owner = self
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever, args=(0.05,), name="cpcsync-sync-server", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: close every connection, join the threads, close the database
        (and delete it if it was a temporary file). Idempotent."""
        with self._lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = None
            self._thread = None
            self._stopping.set()
            sockets = list(self._open_sockets)
        if httpd is not None:
            httpd.shutdown()
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            httpd.server_close()  # joins the handler threads
        if thread is not None:
            thread.join()
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        if self._temp:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self._path + suffix)

    def __enter__(self) -> SyncServer:
        """Starts the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stops the server."""
        self.stop()

    # ------------------------------------------------------------------ queries

    @property
    def url(self) -> str:
        """Where to POST operations, e.g. ``http://127.0.0.1:54321/ops``."""
        return f"http://127.0.0.1:{self.port}/ops"

    @property
    def port(self) -> int:
        """The bound port (the server must be started)."""
        httpd = self._httpd
        if httpd is None:
            raise RuntimeError("SyncServer is not started")
        return int(httpd.server_address[1])

    @property
    def path(self) -> str:
        """The SQLite file."""
        return self._path

    @property
    def received(self) -> list[dict[str, Any]]:
        """JSON bodies (dicts) that reached the apply step, in arrival order: applied,
        duplicates and stale (409) ones; not those failed by :meth:`fail_next` nor
        malformed ones. A copy."""
        with self._lock:
            return list(self._received)

    @property
    def requests(self) -> list[dict[str, Any] | None]:
        """Every POST body in arrival order, including injected failures (None for a
        body that is not a JSON object). A copy."""
        with self._lock:
            return list(self._requests)

    @property
    def applied(self) -> dict[str, dict[str, Any]]:
        """key -> ``{"value", "version", "hlc"}`` for every key applied so far."""
        with self._lock:
            db = self._require_db()
            rows = db.execute("SELECT key, value, version, hlc FROM entities").fetchall()
        return {k: {"value": json.loads(v), "version": ver, "hlc": hlc} for k, v, ver, hlc in rows}

    def entity(self, key: str) -> dict[str, Any] | None:
        """``{"value", "version", "hlc"}`` of one key, or None if never applied (also
        served as ``GET /entities/<url-quoted key>``)."""
        with self._lock:
            row = (
                self._require_db()
                .execute("SELECT value, version, hlc FROM entities WHERE key = ?", (key,))
                .fetchone()
            )
        if row is None:
            return None
        return {"value": json.loads(row[0]), "version": row[1], "hlc": row[2]}

    @property
    def log(self) -> list[dict[str, Any]]:
        """Bodies of every applied op (keyed or not), in apply order."""
        with self._lock:
            rows = self._require_db().execute("SELECT body FROM log ORDER BY seq").fetchall()
        return [json.loads(b) for (b,) in rows]

    @property
    def connections(self) -> int:
        """TCP connections accepted so far (keep-alive reuse keeps it low)."""
        with self._lock:
            return self._connections

    # ------------------------------------------------------------- fault knobs

    def fail_next(self, n: int, status: int = 503, retry_after: float | str | None = None) -> None:
        """Answer the next ``n`` POSTs with ``status`` (applying nothing), with a
        Retry-After header when ``retry_after`` is given (seconds, or an HTTP date
        string). Replaces an earlier fail_next still pending."""
        if n < 0:
            raise ValueError("n must be >= 0")
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400..599)")
        with self._lock:
            self._fail_remaining = n
            self._fail_status = status
            if retry_after is None or isinstance(retry_after, str):
                self._fail_retry_after = retry_after
            else:
                self._fail_retry_after = str(int(retry_after))

    @property
    def delay(self) -> float:
        """Seconds every request is held before it is handled (0: none)."""
        with self._lock:
            return self._delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError("delay must be >= 0")
        with self._lock:
            self._delay = float(seconds)

    def reset(self) -> None:
        """Forget everything: applied entities, idempotency keys, the log, the received
        and request records, pending ``fail_next`` and ``delay``. The server keeps
        running on the same port (the pytest plugin resets a session server this way)."""
        with self._lock:
            db = self._require_db()
            db.executescript("DELETE FROM entities; DELETE FROM idempotency; DELETE FROM log;")
            self._received.clear()
            self._requests.clear()
            self._fail_remaining = 0
            self._fail_retry_after = None
            self._delay = 0.0

    # ---------------------------------------------------------------- internals

    def _require_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("SyncServer is not started")
        return self._db

    def _connection_opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._open_sockets.add(sock)
            self._connections += 1

    def _connection_closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._open_sockets.discard(sock)

    def _handle(
        self, raw: bytes, header_key: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            doc = None
        body = doc if isinstance(doc, dict) else None
        with self._lock:
            self._requests.append(body)
            delay = self._delay
        if delay > 0 and self._stopping.wait(delay):
            raise _Stopping
        with self._lock:
            if self._stopping.is_set():
                raise _Stopping
            if self._fail_remaining > 0:
                self._fail_remaining -= 1
                extra = {}
                if self._fail_retry_after is not None:
                    extra["Retry-After"] = self._fail_retry_after
                return self._fail_status, {"error": "injected failure"}, extra
            if body is None:
                return 400, {"error": "body must be a JSON object"}, {}
            problem = _validate(body, header_key)
            if problem:
                return 400, {"error": problem}, {}
            self._received.append(body)
            return self._apply(body)

    def _apply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        db = self._require_db()
        ikey: str = body["idempotency_key"]
        key: str | None = body.get("key")
        if db.execute("SELECT 1 FROM idempotency WHERE key = ?", (ikey,)).fetchone():
            return 200, {"status": "duplicate"}, {}
        current = (
            db.execute("SELECT value, version, hlc FROM entities WHERE key = ?", (key,)).fetchone()
            if key is not None
            else None
        )
        version = current[1] if current else 0
        base = body.get("base_version")
        if key is not None and base is not None and base != version:
            remote = {
                "value": json.loads(current[0]) if current else None,
                "version": version,
                "hlc": current[2] if current else None,
            }
            return 409, remote, {}
        value = body["payload"] if "payload" in body else {"payload_b64": body["payload_b64"]}
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT INTO idempotency (key) VALUES (?)", (ikey,))
            db.execute(
                "INSERT INTO log (idempotency_key, kind, key, body) VALUES (?, ?, ?, ?)",
                (ikey, body.get("kind"), key, json.dumps(body)),
            )
            if key is not None:
                db.execute(
                    "INSERT INTO entities (key, value, version, hlc) VALUES (?, ?, 1, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                    "version = entities.version + 1, hlc = excluded.hlc",
                    (key, json.dumps(value), body.get("hlc")),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return 200, {"status": "applied", "version": version + 1 if key is not None else None}, {}


def _validate(body: dict[str, Any], header_key: str | None) -> str | None:
    """Fills ``idempotency_key`` from the header when absent; the problem, or None."""
    ikey = body.get("idempotency_key")
    if ikey is None:
        ikey = header_key
        body["idempotency_key"] = ikey
    if not isinstance(ikey, str) or not ikey:
        return "idempotency_key is required"
    if header_key is not None and header_key != ikey:
        return "Idempotency-Key header and body disagree"
    key = body.get("key")
    if key is not None and not isinstance(key, str):
        return "key must be a string or null"
    base = body.get("base_version")
    if base is not None and (not isinstance(base, int) or isinstance(base, bool)):
        return "base_version must be an integer or null"
    hlc = body.get("hlc")
    if hlc is not None and (not isinstance(hlc, int) or isinstance(hlc, bool)):
        return "hlc must be an integer or null"
    if "payload" not in body:
        b64 = body.get("payload_b64")
        if not isinstance(b64, str):
            return "payload or payload_b64 is required"
        try:
            base64.b64decode(b64, validate=True)
        except ValueError:
            return "payload_b64 is not base64"
    return None
