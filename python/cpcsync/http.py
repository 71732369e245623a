"""HttpTransport: delivers operations to an HTTP endpoint, one POST per operation.

Wire format (one JSON object per request, ``Content-Type: application/json``)::

    {"id": 7, "kind": "set_currency", "key": "user:42", "payload": {"currency": "BTC"},
     "priority": 100, "idempotency_key": "<uuid4>", "hlc": 1234567890, "base_version": null}

``payload`` is the operation's payload decoded as JSON when it is valid UTF-8 JSON
(so it is sent as an equal JSON value, not necessarily the same bytes); any other
payload is sent instead as ``"payload_b64"``: the exact bytes, standard base64. The
body carries exactly one of the two. The ``Idempotency-Key`` header repeats
``idempotency_key``.

Status mapping (what :meth:`HttpTransport.send` does with the answer):

- 2xx: delivered, returns None.
- 409 whose body is a JSON object with ``"value"`` (and ``"version"``, ``"hlc"``):
  :class:`~cpcsync.ConflictError` (remote, remote_timestamp=hlc, remote_version=version);
  a 409 without such a body is a :class:`~cpcsync.PermanentError`.
- 429 or 503 with a valid Retry-After (seconds or an HTTP date, see
  :func:`parse_retry_after`): :class:`~cpcsync.RetryAfter`; without one (or with a
  malformed one), :class:`~cpcsync.TransientError`. The engine bounds the wait: at
  most its ``max_retry_after``, and a zero or past value waits the backoff's delay.
- 408 and other 5xx: :class:`~cpcsync.TransientError`.
- other 4xx, and 1xx/3xx (redirects are not followed): :class:`~cpcsync.PermanentError`.
- connection failures (refused, reset, DNS, TLS): :class:`~cpcsync.NetworkError`;
  timeouts: :class:`~cpcsync.NetworkTimeoutError`. Both are TransientErrors *and*
  OSErrors (the engine counts them as network failures). The urllib3 exception is the
  ``__cause__`` of every connection-level error raised here.
"""

from __future__ import annotations

import base64
import email.utils
import ipaddress
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Mapping
from datetime import timezone
from types import TracebackType
from typing import Any, Protocol

import urllib3
import urllib3.exceptions
from urllib3.util import parse_url

from cpcsync._deadline import Deadline
from cpcsync.errors import (
    ConflictError,
    InvalidArgumentError,
    NetworkError,
    NetworkTimeoutError,
    PermanentError,
    RetryAfter,
    TransientError,
)

__all__ = ["HttpTransport", "OperationLike", "encode_operation"]

_log = logging.getLogger("cpcsync.http")

#: Header names whose values are credentials: never logged, never shown in a repr.
_SENSITIVE = re.compile(r"auth|token|secret|passw|cookie|session|api[-_]?key|signature", re.I)
_REDACTED = "***"
#: At most this much of an error body is read (for a 409's remote value).
_MAX_ERROR_BODY = 1 << 20


class OperationLike(Protocol):
    """What HttpTransport reads from an operation (:class:`cpcsync.Operation` has it all)."""

    @property
    def id(self) -> int:
        """Queue-assigned id."""
        ...

    @property
    def kind(self) -> str:
        """What the operation does."""
        ...

    @property
    def key(self) -> str | None:
        """The entity it applies to, or None."""
        ...

    @property
    def payload(self) -> bytes:
        """The payload bytes."""
        ...

    @property
    def priority(self) -> int:
        """0..255."""
        ...

    @property
    def idempotency_key(self) -> str:
        """Key the server uses to apply the operation once."""
        ...

    @property
    def hlc(self) -> int:
        """Hybrid logical timestamp."""
        ...

    @property
    def base_version(self) -> int | None:
        """The remote version the operation expects, or None (no check)."""
        ...


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def encode_operation(op: OperationLike) -> dict[str, Any]:
    """The JSON body HttpTransport sends for ``op`` (see the module docstring)."""
    body: dict[str, Any] = {
        "id": int(op.id),
        "kind": op.kind,
        "key": op.key,
        "priority": int(op.priority),
        "idempotency_key": op.idempotency_key,
        "hlc": int(op.hlc),
        "base_version": None if op.base_version is None else int(op.base_version),
    }
    raw = bytes(op.payload)
    try:
        body["payload"] = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        body["payload_b64"] = base64.b64encode(raw).decode("ascii")
    return body


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``headers`` with credential values (Authorization, cookies, tokens,
    API keys...) replaced by ``***``."""
    return {
        k: (_REDACTED if _SENSITIVE.search(k) and k.lower() != "idempotency-key" else v)
        for k, v in headers.items()
    }


#: A Retry-After longer than this (30 days) is read as this: a huge value or a date in
#: year 9999 must not turn into an absurd float. The engine bounds it further by its
#: ``max_retry_after`` (15 minutes by default).
RETRY_AFTER_CEILING = 30 * 86400.0

_DELTA_SECONDS = re.compile(r"[0-9]+", re.ASCII)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header value, or None when absent or malformed.

    ``value`` is delta-seconds (ASCII digits only, RFC 9110 section 10.2.3) or an
    HTTP-date, parsed with the standard library's RFC 5322 date parser. A date in the
    past gives 0.0 (the engine then waits its backoff's next delay instead of nothing);
    anything above :data:`RETRY_AFTER_CEILING` gives the ceiling. ``now``: the wall-clock
    time to measure a date from (default ``time.time()``: HTTP dates are wall time).
    Never raises.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        digits = text.lstrip("0") or "0"
        # length first: int() of a 5,000-digit string raises, and nobody waits that long
        return RETRY_AFTER_CEILING if len(digits) > 9 else min(float(digits), RETRY_AFTER_CEILING)
    try:
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        stamp = when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    current = time.time() if now is None else now
    delta = stamp - current
    if not math.isfinite(delta):
        return None
    return min(max(0.0, delta), RETRY_AFTER_CEILING)


class _QueryRedactor(logging.Filter):
    """Hides the query string of HttpTransport request paths in urllib3's own debug
    records (``"POST /ops?token=... HTTP/1.1" 200``): ``/ops?***``. Only the exact
    request paths of transports whose URL has a query are touched."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: dict[str, str] = {}  # request path with query -> redacted form

    def add(self, request_uri: str, path: str) -> None:
        self.paths[request_uri] = f"{path}?***"

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and a in self.paths for a in args):
            record.args = tuple(
                self.paths[a] if isinstance(a, str) and a in self.paths else a for a in args
            )
        return True


_query_redactor = _QueryRedactor()
_query_redactor_lock = threading.Lock()


def _hide_query_from_urllib3_logs(request_uri: str, path: str) -> None:
    with _query_redactor_lock:
        if not _query_redactor.paths:
            logging.getLogger("urllib3.connectionpool").addFilter(_query_redactor)
        _query_redactor.add(request_uri, path)


#: RFC 9110 field names are tokens.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _check_header(name: object, value: object) -> None:
    """InvalidArgumentError now for a header no request could carry (instead of every
    operation failing at send time and ending as a dead letter)."""
    if not isinstance(name, str) or not isinstance(value, str):
        raise InvalidArgumentError("headers must map str to str")
    if not _TOKEN.fullmatch(name):
        raise InvalidArgumentError(f"header name {name!r} is not an HTTP token")
    shown = _REDACTED if _SENSITIVE.search(name) else repr(value)
    if any(c in value for c in "\r\n\x00"):
        raise InvalidArgumentError(f"header {name}: value {shown} holds CR, LF or NUL")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"header {name}: value {shown} has characters HTTP headers cannot carry "
            "(only latin-1; encode the value, e.g. base64 or percent-encoding)"
        ) from None


#: The deadline of the request this thread is sending, for its connection to attach to.
_in_flight = threading.local()


def _watched_connection(base: Any, opened: Any) -> Any:
    """A subclass of urllib3's connection class ``base`` that calls ``opened()`` each
    time it opens a TCP connection, and puts its socket under the deadline of the
    request being sent (:mod:`cpcsync._deadline`)."""

    def attach(sock: Any) -> None:
        deadline: Deadline | None = getattr(_in_flight, "deadline", None)
        if deadline is not None:
            deadline.attach(sock)

    class Watched(base):  # type: ignore[misc]
        def _new_conn(self) -> Any:
            sock = super()._new_conn()
            opened()
            attach(sock)
            return sock

        def connect(self) -> None:
            super().connect()
            attach(self.sock)  # for TLS, the SSL socket that replaced the plain one

        def request(self, *args: Any, **kwargs: Any) -> None:
            if self.sock is not None:  # a kept-alive connection: no connect() this time
                attach(self.sock)
            super().request(*args, **kwargs)

    return Watched


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HttpTransport:
    """A transport (``callable(op) -> None``) that POSTs each operation as JSON.

    ``url``: the endpoint (``https://...``; plain ``http://`` only to a loopback host
    unless ``allow_insecure_http=True``). Credentials in the URL (``user:pass@``)
    become a Basic Authorization header. ``headers``: extra request headers (e.g.
    Authorization); credential values never appear in logs or in the repr.
    ``timeout``: seconds for the whole request (connect and response). ``verify``:
    TLS certificate verification, on by default; True, False, or a CA bundle path.
    ``pool_maxsize``: connections kept alive for reuse (one per concurrent sender).

    Thread-safe: several threads may send at once. Use :meth:`close` or a ``with``
    block to close the kept-alive connections.
    """

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        *,
        verify: bool | str = True,
        allow_insecure_http: bool = False,
        pool_maxsize: int = 10,
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise InvalidArgumentError("timeout must be a number of seconds")
        if not math.isfinite(timeout) or timeout <= 0:
            raise InvalidArgumentError(f"timeout must be finite and > 0, not {timeout}")
        if pool_maxsize < 1:
            raise InvalidArgumentError("pool_maxsize must be >= 1")
        try:
            parsed = parse_url(url)
        except urllib3.exceptions.LocationParseError as exc:
            raise InvalidArgumentError("url is not a valid URL") from exc
        scheme = (parsed.scheme or "").lower()
        if scheme not in ("http", "https") or not parsed.host:
            raise InvalidArgumentError("url must be an absolute http:// or https:// URL")
        if scheme == "http" and not allow_insecure_http and not _is_loopback(parsed.host):
            raise InvalidArgumentError(
                "plain http:// to a non-loopback host sends operations (and credentials) "
                "unencrypted; use https:// or pass allow_insecure_http=True"
            )

        merged: dict[str, str] = {}
        for name, value in (headers or {}).items():
            _check_header(name, value)
            merged[name] = value
        if parsed.auth and not any(k.lower() == "authorization" for k in merged):
            basic = urllib3.util.make_headers(basic_auth=parsed.auth)["authorization"]
            merged["Authorization"] = basic
        if isinstance(verify, str) and not os.path.exists(verify):
            raise InvalidArgumentError(
                f"verify={verify!r}: no such CA bundle (a file or a directory of certificates)"
            )
        if not isinstance(verify, (bool, str)):
            raise InvalidArgumentError("verify must be True, False or a CA bundle path")
        self._headers = merged
        self._timeout = float(timeout)
        self._verify = verify
        self._path = parsed.request_uri
        if parsed.query:  # it may hold a token: keep it out of urllib3's debug log too
            _hide_query_from_urllib3_logs(self._path, parsed.path or "/")
        port = parsed.port or (443 if scheme == "https" else 80)
        host = parsed.host
        self._origin = f"{scheme}://{host}:{port}"
        # The URL as shown in logs and repr: no userinfo, no query string (it may hold
        # a token), no fragment.
        self._safe_url = f"{self._origin}{parsed.path or '/'}"
        self._closed = False
        self._lock = threading.Lock()

        pool_kw: dict[str, Any] = {
            "maxsize": pool_maxsize,
            "block": False,
            "retries": False,
            "timeout": urllib3.Timeout(total=self._timeout),
        }
        self._pool: urllib3.HTTPConnectionPool
        self._opened = 0  # TCP connections opened (under self._lock)
        if scheme == "https":
            if verify is False:
                pool_kw["cert_reqs"] = "CERT_NONE"
            else:
                pool_kw["cert_reqs"] = "CERT_REQUIRED"
                if isinstance(verify, str):
                    pool_kw["ca_certs"] = verify
            self._pool = urllib3.HTTPSConnectionPool(host, port, **pool_kw)
        else:
            self._pool = urllib3.HTTPConnectionPool(host, port, **pool_kw)
        # Count real TCP connections (urllib3's num_connections counts connection
        # objects, and one object reconnects by itself after the server closed it),
        # and bound each request as a whole: urllib3's timeout applies per read.
        self._pool.ConnectionCls = _watched_connection(self._pool.ConnectionCls, self._count_open)

    # ------------------------------------------------------------------ public

    @property
    def url(self) -> str:
        """The endpoint, without credentials or query string (safe to log)."""
        return self._safe_url

    @property
    def timeout(self) -> float:
        """Seconds allowed for one request."""
        return self._timeout

    @property
    def verify(self) -> bool | str:
        """TLS verification setting (True, False or a CA bundle path)."""
        return self._verify

    @property
    def headers(self) -> dict[str, str]:
        """The extra request headers, credential values redacted."""
        return redact_headers(self._headers)

    def stats(self) -> dict[str, int]:
        """``connections``: TCP connections opened so far (each reconnect counts);
        ``requests``: requests sent. Fewer connections than requests means kept-alive
        connections were reused."""
        with self._lock:
            opened = self._opened
        return {"connections": opened, "requests": self._pool.num_requests}

    def _count_open(self) -> None:
        with self._lock:
            self._opened += 1

    def __call__(self, op: OperationLike) -> None:
        """Deliver ``op``: same as :meth:`send`."""
        self.send(op)

    def send(self, op: OperationLike) -> None:
        """POST ``op``; return when the server accepted it (2xx), else raise the
        error the status maps to (see the module docstring)."""
        if self._closed:
            raise TransientError("HttpTransport is closed")
        body = json.dumps(encode_operation(op), separators=(",", ":")).encode("utf-8")
        headers = dict(self._headers)
        headers["Content-Type"] = "application/json"
        headers["Accept"] = "application/json"
        headers["Idempotency-Key"] = op.idempotency_key
        started = time.monotonic()
        deadline = Deadline(self._timeout)
        _in_flight.deadline = deadline
        try:
            status, raw, retry_after = self._post(op, body, headers, deadline)
        finally:
            _in_flight.deadline = None
            deadline.finish()
        if status is None:
            _log.debug(
                "POST %s op=%d -> delivered in %.1f ms",
                self._safe_url,
                op.id,
                (time.monotonic() - started) * 1000,
            )
            return
        _log.debug("POST %s op=%d -> %d", self._safe_url, op.id, status)
        raise self._error_for(status, raw, retry_after)

    def _post(
        self, op: OperationLike, body: bytes, headers: dict[str, str], deadline: Deadline
    ) -> tuple[int | None, bytes, str | None]:
        """One request: ``(None, b"", None)`` when delivered (2xx), else the status,
        at most ``_MAX_ERROR_BODY`` bytes of the body and the Retry-After header."""
        try:
            response = self._pool.urlopen(
                "POST",
                self._path,
                body=body,
                headers=headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._connection_error(op, exc, deadline) from exc
        try:
            if deadline.expired:
                # The cut may have truncated the answer, and http.client takes a status
                # line cut short by EOF ("HTTP/1.1 200") as a whole answer: trust none.
                response.close()
                cut = TimeoutError(f"the whole request took over {self._timeout:g}s")
                raise self._connection_error(op, cut, deadline) from cut
            status = response.status
            if 200 <= status < 300:
                # Delivered. Read what a short body there is so the connection can be
                # reused; a long one (or an error reading it) closes the connection.
                try:
                    response.read(_MAX_ERROR_BODY)
                    if response.read(1):
                        response.close()
                except (urllib3.exceptions.HTTPError, OSError):
                    pass
                return None, b"", None
            try:
                raw = response.read(_MAX_ERROR_BODY)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if deadline.expired:
                    raise self._connection_error(op, exc, deadline) from exc
                self._log_failure(op, exc)
                raise NetworkError(f"reading the answer of {self._safe_url} failed") from exc
            if deadline.expired:  # a body without a length, cut short by the deadline
                response.close()
                cut = TimeoutError(f"the whole request took over {self._timeout:g}s")
                raise self._connection_error(op, cut, deadline) from cut
            return status, raw, response.headers.get("Retry-After")
        finally:
            response.release_conn()

    def _connection_error(
        self, op: OperationLike, exc: BaseException, deadline: Deadline
    ) -> NetworkError:
        """The error to raise for ``exc``, raised by urllib3 or the socket while the
        request had no complete answer."""
        self._log_failure(op, exc)
        # ConnectTimeoutError and ReadTimeoutError are timeouts; urllib3's
        # NewConnectionError is a ConnectTimeoutError subclass for history's sake, but
        # it is a refusal. Any error after the deadline cut the socket is a timeout.
        refused = isinstance(exc, urllib3.exceptions.NewConnectionError)
        timed_out = isinstance(exc, urllib3.exceptions.TimeoutError) and not refused
        if deadline.expired or timed_out:
            return NetworkTimeoutError(f"no answer from {self._safe_url} within {self._timeout:g}s")
        if refused:
            return NetworkError(f"cannot connect to {self._safe_url}: {exc}")
        return NetworkError(f"request to {self._safe_url} failed: {exc}")

    def close(self) -> None:
        """Close the kept-alive connections. Later sends raise TransientError."""
        with self._lock:
            self._closed = True
        self._pool.close()

    def __enter__(self) -> HttpTransport:
        """The transport itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Closes the transport."""
        self.close()

    def __repr__(self) -> str:
        return (
            f"HttpTransport(url={self._safe_url!r}, headers={self.headers!r}, "
            f"timeout={self._timeout!r}, verify={self._verify!r})"
        )

    # ----------------------------------------------------------------- private

    def _log_failure(self, op: OperationLike, exc: BaseException) -> None:
        _log.debug("POST %s op=%d failed: %s", self._safe_url, op.id, type(exc).__name__)

    def _error_for(self, status: int, raw: bytes, retry_after: str | None) -> Exception:
        where = f"{self._safe_url} answered {status}"
        error: Exception
        if status == 409:
            error = self._conflict(raw) or PermanentError(f"{where} without a remote value")
        elif status in (429, 503):
            seconds = parse_retry_after(retry_after)
            error = RetryAfter(seconds) if seconds is not None else TransientError(where)
        elif status == 408 or 500 <= status < 600:
            error = TransientError(where)
        else:
            error = PermanentError(where)
        return error

    @staticmethod
    def _conflict(raw: bytes) -> ConflictError | None:
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None
        if not isinstance(doc, dict) or "value" not in doc:
            return None

        def as_int(v: Any) -> int | None:
            return v if isinstance(v, int) and not isinstance(v, bool) else None

        return ConflictError(
            doc["value"],
            remote_timestamp=as_int(doc.get("hlc")),
            remote_version=as_int(doc.get("version")),
        )
