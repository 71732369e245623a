"""The receiver as an ASGI 3 application (docs/server.md, "Serving").

A thin shell around :func:`cpcsync.server.http_api.handle`: no web framework needed,
mountable in any (``app.mount("/sync", rx.asgi())`` in FastAPI/Starlette) and served
by any ASGI server (``cpcsync serve`` runs it under uvicorn).

- ``handle`` blocks (database calls, the ``GET /changes?wait=`` long poll), so every
  request runs in a worker thread, never on the event loop. Long polls have threads of
  their own: however many clients wait on ``/changes``, writes and reads still get a
  thread at once.
- The body is read at most ``rx.max_body_bytes``: a Content-Length above it is answered
  413 without reading the body (a client sending ``Expect: 100-continue`` gets the 413
  instead of the go-ahead), and a chunked body that grows past it is answered 413 as
  soon as it does.
- The ``lifespan`` scope is answered (startup and shutdown complete). Shutdown closes
  nothing the caller owns: the receiver and its backend stay open.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cpcsync.server.http_api import Response, handle, too_large
from cpcsync.server.receiver import Receiver

__all__ = ["ASGIApp", "Message", "Receive", "ReceiverASGI", "Scope", "Send", "make_asgi_app"]

_log = logging.getLogger("cpcsync.server")

Scope = MutableMapping[str, Any]
"""An ASGI connection scope."""
Message = MutableMapping[str, Any]
"""An ASGI event (received or sent)."""
Receive = Callable[[], Awaitable[Message]]
"""The ASGI ``receive`` callable."""
Send = Callable[[Message], Awaitable[None]]
"""The ASGI ``send`` callable."""
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application."""

_DIGITS = re.compile(r"[0-9]{1,19}")
_SHUTTING_DOWN = Response.json(
    503, {"error": "the server is shutting down: retry"}, {"Retry-After": "1"}
)


def _route_path(scope: Scope) -> str:
    """The request's path below the app's mount point: ``scope["path"]`` without a
    ``root_path`` prefix (servers and frameworks differ in whether ``path`` carries it),
    percent-encoded again so that :func:`handle` decodes an entity key exactly once."""
    path: str = scope.get("path") or "/"
    root: str = scope.get("root_path") or ""
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root) :] or "/"
    return urllib.parse.quote(path, safe="/", errors="surrogateescape")


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers") or ():
        name = bytes(raw_name).decode("latin-1").lower()
        value = bytes(raw_value).decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    if not client:
        return None
    return str(client[0])


def _is_long_poll(path: str, query: str) -> bool:
    # GET /changes with a wait > 0: it may hold its thread for that long.
    if path != "/changes" or "wait" not in query:
        return False
    values = urllib.parse.parse_qs(query, keep_blank_values=True).get("wait", [])
    try:
        return any(float(v) > 0 for v in values)
    except ValueError:
        return False  # answered 400 at once


async def _answer(send: Send, response: Response, *, close: bool = False) -> None:
    headers = [(b"content-length", str(len(response.body)).encode("ascii"))]
    headers += [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers.items()
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": False})


class ReceiverASGI:
    """An ASGI 3 application serving ``receiver`` (see the module docstring).

    ``threads``: worker threads for ordinary requests; ``long_polls``: threads for
    ``GET /changes?wait=`` (a long poll beyond that many is queued until one is free,
    then waits its ``wait``). ``on_shutdown``: called (in a worker thread)
    on the ``lifespan`` shutdown event, e.g. to close a backend this app owns; None for
    an app that owns nothing. Built by :func:`make_asgi_app` and
    :meth:`Receiver.asgi <cpcsync.server.Receiver.asgi>`.
    """

    def __init__(
        self,
        receiver: Receiver,
        *,
        threads: int = 32,
        long_polls: int = 128,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        if threads < 1 or long_polls < 1:
            raise ValueError("threads and long_polls must be >= 1")
        self.receiver = receiver
        self.threads = threads
        self.long_polls = long_polls
        self._on_shutdown = on_shutdown
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._poll_pool: concurrent.futures.ThreadPoolExecutor | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One ASGI connection: ``http``, ``lifespan`` (``websocket`` is refused)."""
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            raise ValueError(f"cpcsync receiver: unsupported ASGI scope type {kind!r}")

    # ------------------------------------------------------------------ http

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        rx = self.receiver
        headers = _headers(scope)
        declared = headers.get("content-length")
        if declared is not None:
            if not _DIGITS.fullmatch(declared.strip()):
                await _answer(send, Response.json(400, {"error": "bad Content-Length"}), close=True)
                return
            if int(declared) > rx.max_body_bytes:
                await _answer(send, too_large(rx), close=True)  # the body is never read
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nobody to answer
            body += message.get("body", b"")
            if len(body) > rx.max_body_bytes:
                await _answer(send, too_large(rx), close=True)
                return
            if not message.get("more_body", False):
                break
        method: str = scope["method"]
        path = _route_path(scope)
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        pool = self._executor(long_poll=_is_long_poll(path, query))
        loop = asyncio.get_running_loop()
        try:
            response = await loop.run_in_executor(
                pool, handle, rx, method, path, query, headers, bytes(body), _client(scope)
            )
        except asyncio.CancelledError:
            # The server is stopping and its grace period is over (uvicorn's
            # timeout_graceful_shutdown), typically during a long poll. The call goes on
            # in its thread; an op it applies is a duplicate when the client sends it
            # again. The client is told to retry, not left with a 500; the task ends
            # here either way, so the cancellation is not passed on.
            with contextlib.suppress(Exception):
                await _answer(send, _SHUTTING_DOWN, close=True)
            return
        await _answer(send, response)

    def _executor(self, *, long_poll: bool) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if long_poll:
                if self._poll_pool is None:
                    self._poll_pool = concurrent.futures.ThreadPoolExecutor(
                        self.long_polls, thread_name_prefix="cpcsync-asgi-poll"
                    )
                return self._poll_pool
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.threads, thread_name_prefix="cpcsync-asgi"
                )
            return self._pool

    # -------------------------------------------------------------- lifespan

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    if self._on_shutdown is not None:
                        await asyncio.to_thread(self._on_shutdown)
                    self._release_threads()
                except Exception as e:
                    _log.exception("cpcsync receiver: shutdown failed")
                    await send({"type": "lifespan.shutdown.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _release_threads(self) -> None:
        # Idle threads end now; requests still running finish on their own. The pools
        # are made again if the app serves again.
        with self._lock:
            pools, self._pool, self._poll_pool = (self._pool, self._poll_pool), None, None
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"ReceiverASGI({self.receiver.backend!r})"


def make_asgi_app(
    receiver: Receiver,
    *,
    threads: int = 32,
    long_polls: int = 128,
    on_shutdown: Callable[[], None] | None = None,
) -> ReceiverASGI:
    """The ASGI 3 application serving ``receiver`` (the protocol of docs/protocol.md
    at the mount point). See :class:`ReceiverASGI` for the options."""
    return ReceiverASGI(receiver, threads=threads, long_polls=long_polls, on_shutdown=on_shutdown)
