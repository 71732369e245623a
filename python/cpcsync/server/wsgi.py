"""The receiver as a WSGI application (PEP 3333; docs/server.md, "Serving").

A thin shell around :func:`cpcsync.server.http_api.handle`, for Flask (through
werkzeug's ``DispatcherMiddleware``), Django, or any WSGI server (gunicorn, uWSGI,
``wsgiref``). The WSGI server's threads (or processes) run the requests: a long poll
(``GET /changes?wait=``) holds one of them for up to ``wait`` seconds, so give the
server enough of them.

- The body is read at most ``rx.max_body_bytes``: a CONTENT_LENGTH above it is
  answered 413 without reading the body. Without a CONTENT_LENGTH the body is empty,
  unless the server marks a chunked body readable to its end (``wsgi.input_terminated``,
  as gunicorn and mod_wsgi do): it is then read up to the limit, and one growing past
  it is answered 413.
- ``PATH_INFO`` is the path below the mount point (``SCRIPT_NAME``).
"""

from __future__ import annotations

import http
import re
import urllib.parse
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Protocol

from cpcsync.server.http_api import Response, handle, too_large
from cpcsync.server.receiver import Receiver

__all__ = ["ReceiverWSGI", "StartResponse", "WSGIEnvironment", "make_wsgi_app"]

WSGIEnvironment = dict[str, Any]
"""A WSGI environ."""

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType]
_DIGITS = re.compile(r"[0-9]{1,19}")
_CHUNK = 65536


class StartResponse(Protocol):
    """The WSGI ``start_response`` callable."""

    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: _ExcInfo | None = ...,
        /,
    ) -> Callable[[bytes], object]:
        """Begin the response: status line and headers."""


def _path(environ: WSGIEnvironment) -> str:
    # PATH_INFO is decoded (a latin-1 string of the request's bytes): encode it again
    # so that handle() decodes an entity key exactly once, as UTF-8.
    raw = str(environ.get("PATH_INFO") or "/").encode("latin-1", errors="replace")
    return urllib.parse.quote(raw, safe="/")


def _headers(environ: WSGIEnvironment) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in environ.items():
        if name.startswith("HTTP_"):
            out[name[5:].replace("_", "-").lower()] = str(value)
    for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(name):
            out[name.replace("_", "-").lower()] = str(environ[name])
    return out


def _status_line(status: int) -> str:
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


class ReceiverWSGI:
    """A WSGI application serving ``receiver`` (see the module docstring). Built by
    :func:`make_wsgi_app` and :meth:`Receiver.wsgi <cpcsync.server.Receiver.wsgi>`."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """One request (PEP 3333)."""
        rx = self.receiver
        body = self._read_body(environ)
        if isinstance(body, Response):
            return self._answer(start_response, body)
        response = handle(
            rx,
            str(environ.get("REQUEST_METHOD") or "GET"),
            _path(environ),
            str(environ.get("QUERY_STRING") or ""),
            _headers(environ),
            body,
            str(environ.get("REMOTE_ADDR") or "") or None,
        )
        return self._answer(start_response, response)

    def _read_body(self, environ: WSGIEnvironment) -> bytes | Response:
        """The body, or the error answer (400, 413) when it cannot or must not be read."""
        limit = self.receiver.max_body_bytes
        stream = environ.get("wsgi.input")
        declared = str(environ.get("CONTENT_LENGTH") or "").strip()
        if declared:
            if not _DIGITS.fullmatch(declared):
                return Response.json(400, {"error": "bad Content-Length"})
            length = int(declared)
            if length > limit:
                return too_large(self.receiver)  # the body is never read
            chunks: list[bytes] = []
            left = length
            while left > 0 and stream is not None:
                chunk = stream.read(min(left, _CHUNK))
                if not chunk:
                    return Response.json(400, {"error": "the body ended before Content-Length"})
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        if stream is None or not environ.get("wsgi.input_terminated"):
            return b""  # PEP 3333: no CONTENT_LENGTH, no body
        data = bytearray()
        while True:
            chunk = stream.read(min(_CHUNK, limit + 1 - len(data)))
            if not chunk:
                return bytes(data)
            data += chunk
            if len(data) > limit:
                return too_large(self.receiver)

    @staticmethod
    def _answer(start_response: StartResponse, response: Response) -> list[bytes]:
        headers = [(name, value) for name, value in response.headers.items()]
        headers.append(("Content-Length", str(len(response.body))))
        start_response(_status_line(response.status), headers)
        return [response.body]

    def __repr__(self) -> str:
        return f"ReceiverWSGI({self.receiver.backend!r})"


def make_wsgi_app(receiver: Receiver) -> ReceiverWSGI:
    """The WSGI application serving ``receiver`` (the protocol of docs/protocol.md at
    the mount point)."""
    return ReceiverWSGI(receiver)
