"""SyncServer: the reference sync server, a real HTTP server for tests, examples and demos.

A thin shell around :class:`cpcsync.server.Receiver` on a :class:`SqliteBackend` (its
own file), so every end-to-end test exercises the real receiver: the wire protocol is
docs/protocol.md (``POST /ops``, ``POST /ops/batch``, ``GET /changes``,
``GET /entities/<key>``, ``GET /health``). It listens on 127.0.0.1 (an ephemeral port)
in a background thread. What tests add on top: :meth:`SyncServer.fail_next`,
:attr:`SyncServer.delay`, and records of what arrived (:attr:`SyncServer.received`,
:attr:`SyncServer.requests`) and what was applied (:attr:`SyncServer.applied`,
:attr:`SyncServer.log`, both read from the receiver's changes feed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from cpcsync.server import Receiver, SqliteBackend
from cpcsync.server.http_api import Response, handle, too_large

__all__ = ["SyncServer"]

_log = logging.getLogger("cpcsync.testing.server")
_QUERY = re.compile(r"\?[^\s\"]*")


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
        self._serve("POST")

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        owner: SyncServer = self.server.owner
        path, _, query = self.path.partition("?")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._answer(
                Response.json(400, {"error": "bad Content-Length"}, {"Connection": "close"})
            )
            return
        if length > owner.receiver.max_body_bytes:
            response = too_large(owner.receiver)
            response.headers["Connection"] = "close"  # the body is not read
            self.close_connection = True
            self._answer(response)
            return
        raw = self.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            response = owner._handle(method, path, query, headers, raw)
        except _Stopping:
            self.close_connection = True
            return
        self._answer(response)

    def _answer(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)


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
    """A real HTTP sync server on 127.0.0.1: a :class:`~cpcsync.server.Receiver` on
    its own SQLite file.

    ``path``: the SQLite file (kept, and reused if it exists), or None for a
    temporary file deleted by :meth:`stop`. ``receiver``: serve this receiver instead
    (its own backend, hooks and limits; ``path`` must then be None). :meth:`start`
    binds an ephemeral port; :attr:`url` is where to POST one op. A context manager
    (starts and stops). Thread-safe.

    For tests: :meth:`fail_next` answers the next POSTs with an error status,
    :attr:`delay` holds every request that long before answering, :attr:`received`,
    :attr:`requests`, :attr:`applied`, :attr:`log` and :attr:`connections` record what
    happened.
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, receiver: Receiver | None = None
    ) -> None:
        if receiver is not None and path is not None:
            raise ValueError("give path or receiver, not both")
        self._own_receiver = receiver is None
        self._temp = path is None and receiver is None
        if receiver is not None:
            self._path = getattr(receiver.backend, "path", "")
        elif path is None:
            fd, name = tempfile.mkstemp(prefix="cpcsync-server-", suffix=".db")
            os.close(fd)
            self._path = name
        else:
            self._path = os.fspath(path)
        self._receiver = receiver
        self._lock = threading.Lock()
        self._stopping = threading.Event()
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
            if self._own_receiver:
                self._receiver = Receiver(SqliteBackend(self._path))
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
        (and delete it if it was a temporary file). Idempotent. A receiver given to the
        constructor is left open."""
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
            if self._own_receiver and self._receiver is not None:
                self._receiver.backend.close()
                self._receiver = None
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
    def receiver(self) -> Receiver:
        """The receiver behind the server (started)."""
        rx = self._receiver
        if rx is None:
            raise RuntimeError("SyncServer is not started")
        return rx

    @property
    def url(self) -> str:
        """Where to POST one op, e.g. ``http://127.0.0.1:54321/ops``."""
        return f"{self.base_url}/ops"

    @property
    def base_url(self) -> str:
        """The server's root, e.g. ``http://127.0.0.1:54321`` (``/ops/batch``,
        ``/changes``, ``/entities/<key>`` and ``/health`` are under it)."""
        return f"http://127.0.0.1:{self.port}"

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
        """Op bodies (dicts) that reached the receiver, in arrival order (from single
        and batch requests): applied, duplicates, conflicts and rejected ones; not
        those failed by :meth:`fail_next` nor malformed requests. A copy."""
        with self._lock:
            return list(self._received)

    @property
    def requests(self) -> list[dict[str, Any] | None]:
        """Every POST body in arrival order, including injected failures (None for a
        body that is not a JSON object). A copy."""
        with self._lock:
            return list(self._requests)

    def _feed(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = self.receiver.changes(cursor, limit=10_000)
            out.extend(page["changes"])
            if len(page["changes"]) < 10_000:
                return out
            cursor = page["cursor"]

    @property
    def applied(self) -> dict[str, dict[str, Any]]:
        """key -> ``{"value", "version", "hlc"}`` for every key applied so far."""
        state: dict[str, dict[str, Any]] = {}
        for c in self._feed():
            if c["key"] is not None:
                state[c["key"]] = {"value": c["value"], "version": c["version"], "hlc": c["hlc"]}
        return state

    def entity(self, key: str) -> dict[str, Any] | None:
        """``{"value", "version", "hlc", "deleted"}`` of one key, or None if never
        applied (also served as ``GET /entities/<url-quoted key>``)."""
        return self.receiver.get(key)

    @property
    def log(self) -> list[dict[str, Any]]:
        """Every applied op (keyed or not), in commit order, as a body: idempotency_key,
        kind, key, payload (or payload_b64 for a binary one) and hlc."""
        out = []
        for c in self._feed():
            body = {
                "idempotency_key": c["idempotency_key"],
                "kind": c["kind"],
                "key": c["key"],
                "hlc": c["hlc"],
            }
            value = c["value"]
            if isinstance(value, dict) and set(value) == {"payload_b64"}:
                body["payload_b64"] = value["payload_b64"]
            else:
                body["payload"] = value
            out.append(body)
        return out

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
        """Forget everything: applied entities, idempotency records, the changes feed,
        the received and request records, pending ``fail_next`` and ``delay``. The
        server keeps running on the same port (the pytest plugin resets a session
        server this way). Only for a server on its own SQLite file."""
        backend = self.receiver.backend
        if not isinstance(backend, SqliteBackend):
            raise RuntimeError("reset() needs the SyncServer's own SQLite backend")
        backend.reset()
        with self._lock:
            self._received.clear()
            self._requests.clear()
            self._fail_remaining = 0
            self._fail_retry_after = None
            self._delay = 0.0

    # ---------------------------------------------------------------- internals

    def _connection_opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._open_sockets.add(sock)
            self._connections += 1

    def _connection_closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._open_sockets.discard(sock)

    def _handle(
        self, method: str, path: str, query: str, headers: dict[str, str], raw: bytes
    ) -> Response:
        rx = self.receiver
        if method == "POST":
            try:
                doc = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                doc = None
            body = doc if isinstance(doc, dict) else None
            with self._lock:
                self._requests.append(body)
                delay = self._delay
        else:
            body = None
            with self._lock:
                delay = self._delay
        if delay > 0 and self._stopping.wait(delay):
            raise _Stopping
        with self._lock:
            if self._stopping.is_set():
                raise _Stopping
            if method == "POST" and self._fail_remaining > 0:
                self._fail_remaining -= 1
                extra = {}
                if self._fail_retry_after is not None:
                    extra["Retry-After"] = self._fail_retry_after
                return Response.json(self._fail_status, {"error": "injected failure"}, extra)
            if body is not None:
                if path == "/ops/batch":
                    ops = body.get("ops")
                    if isinstance(ops, list):
                        self._received.extend(o for o in ops if isinstance(o, dict))
                else:
                    self._received.append(body)
        return handle(rx, method, path, query, headers, raw)
