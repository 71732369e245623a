"""HttpTransport: delivers operations to an HTTP endpoint, one POST per operation, or
many per POST with :meth:`HttpTransport.send_batch` (see "Batches" below).

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

Batches (:meth:`HttpTransport.send_batch`, used by the engine when ``batch_size > 1``):
``POST <batch_url>`` with ``{"device": ..., "low_water": ..., "ops": [...]}``, each op
exactly the body above (:func:`encode_operation` builds both). A 200 answer carries
``{"results": [...]}``, one per op: ``applied``/``duplicate`` -> delivered (None),
``conflict`` -> ConflictError as for a 409, ``rejected`` -> PermanentError with the
server's reason, ``retry_later`` -> RetryAfter. A failure of the whole request gives
every op of it the error ``send`` would raise for that answer; a 413 splits the batch
in halves (down to one op, which then gets a PermanentError). A 2xx answer without one
well-formed result per op is a TransientError for every op: nothing is taken for
delivered unless the server said so.
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
from collections.abc import Callable, Mapping, Sequence
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
#: At most this much of a batch's answer is read: one result per op, a conflict's
#: with the key's value. A longer answer is not trusted (every op is retried).
_MAX_BATCH_ANSWER = 64 << 20
#: Longest device name (characters), as the receiver's protocol limits its strings.
_MAX_DEVICE_CHARS = 1024
#: Op ids, low waters: signed 64-bit integers, never negative.
_MAX_ID = 2**63 - 1
#: A rejected op's reason is kept up to this many characters in its error.
_MAX_REASON_CHARS = 1000


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


def _json_bytes(doc: Any) -> bytes:
    """A request body: compact JSON, UTF-8."""
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


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


class _Endpoint:
    """Where a request goes: the request target (path and query) and the URL as shown
    in logs and errors (no userinfo, no query)."""

    __slots__ = ("path", "safe_url")

    def __init__(self, path: str, safe_url: str) -> None:
        self.path = path
        self.safe_url = safe_url


def _check_device(device: object) -> str | None:
    if device is None:
        return None
    if not isinstance(device, str):
        raise InvalidArgumentError("device must be a string or None")
    if not device or len(device) > _MAX_DEVICE_CHARS:
        raise InvalidArgumentError(f"device must be 1 to {_MAX_DEVICE_CHARS} characters long")
    if "\x00" in device:
        raise InvalidArgumentError("device must not contain NUL")
    try:
        device.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError("device is not valid Unicode (a lone surrogate)") from None
    return device


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

    Batches (:meth:`send_batch`): ``batch_url``, where they are POSTed, on the same
    scheme, host and port as ``url`` (default: ``url``'s path with ``/batch`` appended,
    so ``.../ops`` -> ``.../ops/batch``, and ``url``'s query string). ``device``: a
    string naming this device, sent with each batch. ``low_water``: a zero-argument
    callable returning the device's lowest op id still to send (e.g.
    ``lambda: queue.low_water``), called once per batch; the receiver may then forget
    the device's idempotency records below it. Needs ``device``.

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
        batch_url: str | None = None,
        device: str | None = None,
        low_water: Callable[[], int | None] | None = None,
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
        self._device = _check_device(device)
        if low_water is not None and not callable(low_water):
            raise InvalidArgumentError("low_water must be a zero-argument callable or None")
        if low_water is not None and self._device is None:
            raise InvalidArgumentError(
                "low_water needs device: the receiver forgets a device's idempotency records"
            )
        self._low_water = low_water
        self._low_water_warned = False
        self._headers = merged
        self._timeout = float(timeout)
        self._verify = verify
        port = parsed.port or (443 if scheme == "https" else 80)
        host = parsed.host
        self._origin = f"{scheme}://{host}:{port}"
        # The URL as shown in logs and repr: no userinfo, no query string (it may hold
        # a token), no fragment.
        self._single = self._endpoint(parsed.path or "/", parsed.query)
        self._batch = self._batch_endpoint(batch_url, parsed)
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

    def _endpoint(self, path: str, query: str | None) -> _Endpoint:
        target = path if query is None else f"{path}?{query}"
        if query:  # it may hold a token: keep it out of urllib3's debug log too
            _hide_query_from_urllib3_logs(target, path)
        return _Endpoint(target, f"{self._origin}{path}")

    def _batch_endpoint(self, batch_url: object, single: Any) -> _Endpoint:
        if batch_url is None:
            return self._endpoint((single.path or "/").rstrip("/") + "/batch", single.query)
        if not isinstance(batch_url, str):
            raise InvalidArgumentError("batch_url must be a string or None")
        try:
            parsed = parse_url(batch_url)
        except urllib3.exceptions.LocationParseError as exc:
            raise InvalidArgumentError("batch_url is not a valid URL") from exc
        scheme = (parsed.scheme or "").lower()
        if scheme not in ("http", "https") or not parsed.host:
            raise InvalidArgumentError("batch_url must be an absolute http:// or https:// URL")
        port = parsed.port or (443 if scheme == "https" else 80)
        if f"{scheme}://{parsed.host}:{port}" != self._origin:
            raise InvalidArgumentError(
                "batch_url must have the scheme, host and port of url (one connection pool)"
            )
        if parsed.auth and parsed.auth != single.auth:
            raise InvalidArgumentError(
                "batch_url must not carry credentials other than url's (give them in url "
                "or in headers)"
            )
        return self._endpoint(parsed.path or "/", parsed.query)

    # ------------------------------------------------------------------ public

    @property
    def url(self) -> str:
        """The endpoint, without credentials or query string (safe to log)."""
        return self._single.safe_url

    @property
    def batch_url(self) -> str:
        """Where :meth:`send_batch` POSTs, without credentials or query string."""
        return self._batch.safe_url

    @property
    def device(self) -> str | None:
        """The device name sent with each batch, or None."""
        return self._device

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
        body = _json_bytes(encode_operation(op))
        headers = self._request_headers()
        headers["Idempotency-Key"] = op.idempotency_key
        what = f"op={op.id}"
        started = time.monotonic()
        deadline = Deadline(self._timeout)
        _in_flight.deadline = deadline
        try:
            status, raw, retry_after = self._post(self._single, what, body, headers, deadline)
        finally:
            _in_flight.deadline = None
            deadline.finish()
        if 200 <= status < 300:
            _log.debug(
                "POST %s %s -> delivered in %.1f ms",
                self._single.safe_url,
                what,
                (time.monotonic() - started) * 1000,
            )
            return
        _log.debug("POST %s %s -> %d", self._single.safe_url, what, status)
        raise self._error_for(status, raw, retry_after)

    def send_batch(self, ops: Sequence[OperationLike]) -> list[Exception | None]:
        """POST ``ops`` in one request to :attr:`batch_url`; one entry per op, in
        order: None when the server applied it (or had already), else the exception
        that op's delivery failed with (see "Batches" in the module docstring). Never
        raises for a failed delivery. A 413 answer splits the batch in halves, sent
        one after the other; ``timeout`` bounds the whole call."""
        ops = list(ops)
        if not ops:
            return []
        if self._closed:
            return [TransientError("HttpTransport is closed")] * len(ops)
        encoded = [encode_operation(op) for op in ops]
        low_water = self._read_low_water(ops)
        started = time.monotonic()
        deadline = Deadline(self._timeout)
        _in_flight.deadline = deadline
        try:
            outcomes = self._deliver_batch(ops, encoded, low_water, deadline)
        finally:
            _in_flight.deadline = None
            deadline.finish()
        _log.debug(
            "POST %s batch of %d ops -> %d delivered in %.1f ms",
            self._batch.safe_url,
            len(ops),
            sum(1 for o in outcomes if o is None),
            (time.monotonic() - started) * 1000,
        )
        return outcomes

    def _request_headers(self) -> dict[str, str]:
        headers = dict(self._headers)
        headers["Content-Type"] = "application/json"
        headers["Accept"] = "application/json"
        return headers

    def _read_low_water(self, ops: list[OperationLike]) -> int | None:
        """The ``low_water`` callable's answer, or None when there is none, it raised or
        it returned something that is not an op id. Never above the lowest id of
        ``ops``: those are still to send, and the receiver forgets records below it."""
        if self._low_water is None:
            return None
        try:
            value = self._low_water()
        except Exception as exc:
            self._warn_low_water(f"low_water raised {type(exc).__name__}: {exc}")
            return None
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_ID:
            self._warn_low_water(f"low_water returned {value!r}, not an op id")
            return None
        return min(int(value), *(int(op.id) for op in ops))

    def _warn_low_water(self, text: str) -> None:
        # Once per transport at warning level (it is a bug), then at debug: the engine
        # sends many batches.
        level = logging.DEBUG if self._low_water_warned else logging.WARNING
        self._low_water_warned = True
        _log.log(level, "%s; sending the batch with low_water null", text)

    def _deliver_batch(
        self,
        ops: list[OperationLike],
        encoded: list[dict[str, Any]],
        low_water: int | None,
        deadline: Deadline,
    ) -> list[Exception | None]:
        """Send ``ops`` as one request, or in halves after a 413, in order. After a
        failure of a whole request that is not the ops' fault (no answer, 429/503, 5xx),
        the ops not sent yet get the same error instead of being sent."""
        outcomes: list[Exception | None] = [None] * len(ops)
        parts = [(0, len(ops))]
        halt: Exception | None = None
        where = self._batch.safe_url
        headers = self._request_headers()
        while parts:
            lo, hi = parts.pop(0)
            if halt is None and deadline.expired:
                cut = TimeoutError(f"the whole call took over {self._timeout:g}s")
                halt = NetworkTimeoutError(f"no answer from {where} within {self._timeout:g}s")
                halt.__cause__ = cut
            if halt is not None:
                outcomes[lo:hi] = [halt] * (hi - lo)
                continue
            what = f"batch of {hi - lo} ops (op={ops[lo].id}..{ops[hi - 1].id})"
            doc = {"device": self._device, "low_water": low_water, "ops": encoded[lo:hi]}
            try:
                status, raw, retry_after = self._post(
                    self._batch, what, _json_bytes(doc), headers, deadline, _MAX_BATCH_ANSWER
                )
            except NetworkError as exc:
                halt = exc
                outcomes[lo:hi] = [exc] * (hi - lo)
                continue
            _log.debug("POST %s %s -> %d", where, what, status)
            if 200 <= status < 300:
                outcomes[lo:hi] = self._batch_results(ops[lo:hi], raw, f"{where} answered {status}")
            elif status == 413 and hi - lo > 1:
                mid = (lo + hi) // 2
                parts[0:0] = [(lo, mid), (mid, hi)]
            elif status == 413:
                outcomes[lo] = PermanentError(
                    f"{where} answered 413: op {ops[lo].id} is too large for the server even alone"
                )
            else:
                error = self._batch_error_for(status, raw, retry_after)
                outcomes[lo:hi] = [error] * (hi - lo)
                if not isinstance(error, PermanentError):
                    halt = error
        return outcomes

    def _batch_results(
        self, ops: list[OperationLike], raw: bytes, where: str
    ) -> list[Exception | None]:
        """The outcome of each op from a 2xx answer to a batch; when the answer is not
        one result per op, a TransientError for every op (which result is whose, or
        whether any op was applied, is unknowable; resending is safe)."""
        n = len(ops)

        def unsure(why: str) -> list[Exception | None]:
            _log.debug("%s: %s", where, why)
            return [TransientError(f"{where} {why}: the {n} ops are sent again")] * n

        if len(raw) > _MAX_BATCH_ANSWER:
            return unsure(f"with more than {_MAX_BATCH_ANSWER >> 20} MiB")
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return unsure("with a body that is not JSON")
        results = doc.get("results") if isinstance(doc, dict) else None
        if not isinstance(results, list):
            return unsure('without a "results" list')
        if len(results) != n:
            return unsure(f"with {len(results)} results for {n} ops")
        return [self._batch_outcome(op, r) for op, r in zip(ops, results, strict=True)]

    def _batch_outcome(self, op: OperationLike, result: Any) -> Exception | None:
        """What one result of a batch means for its op (the module docstring)."""
        where = self._batch.safe_url
        status = result.get("status") if isinstance(result, dict) else None
        if status in ("applied", "duplicate"):
            return None
        if status == "conflict":
            return _conflict_of(result) or PermanentError(
                f"{where}: a conflict for op {op.id} without a remote value"
            )
        if status == "rejected":
            reason = result.get("reason")
            text = _clip(reason) if isinstance(reason, str) and reason else "no reason given"
            return PermanentError(f"{where} rejected op {op.id}: {text}")
        if status == "retry_later":
            reason = result.get("reason")
            later = TransientError(
                f"{where}: retry op {op.id} later"
                + (f": {_clip(reason)}" if isinstance(reason, str) and reason else "")
            )
            seconds = _seconds(result.get("retry_after"))
            if seconds is None:
                return later
            error = RetryAfter(seconds)
            error.__cause__ = later
            return error
        shown = _clip(repr(status if isinstance(result, dict) else result), 80)
        return TransientError(f"{where}: an unknown result {shown} for op {op.id}")

    def _batch_error_for(self, status: int, raw: bytes, retry_after: str | None) -> Exception:
        """The error of every op of a batch request answered ``status`` (not 2xx, not
        413): as :meth:`send` maps it, except that a 409 of a whole batch is no
        conflict of one op."""
        if status == 409 or not (status in (408, 429) or 500 <= status < 600):
            where = f"{self._batch.safe_url} answered {status}"
            return PermanentError(f"{where}{_server_says(raw)}")
        return self._error_for(status, raw, retry_after, self._batch.safe_url)

    def _post(
        self,
        endpoint: _Endpoint,
        what: str,
        body: bytes,
        headers: dict[str, str],
        deadline: Deadline,
        answer_limit: int = 0,
    ) -> tuple[int, bytes, str | None]:
        """One request: the status, the body and the Retry-After header. The body of a
        2xx answer is read up to ``answer_limit`` bytes and one more (more than
        ``answer_limit``: too long), or, with ``answer_limit`` 0, read and dropped; an
        error answer's up to ``_MAX_ERROR_BODY``."""
        try:
            response = self._pool.urlopen(
                "POST",
                endpoint.path,
                body=body,
                headers=headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._connection_error(endpoint, what, exc, deadline) from exc
        try:
            if deadline.expired:
                # The cut may have truncated the answer, and http.client takes a status
                # line cut short by EOF ("HTTP/1.1 200") as a whole answer: trust none.
                response.close()
                cut = TimeoutError(f"the whole request took over {self._timeout:g}s")
                raise self._connection_error(endpoint, what, cut, deadline) from cut
            status = response.status
            if 200 <= status < 300 and not answer_limit:
                # Delivered. Read what a short body there is so the connection can be
                # reused; a long one (or an error reading it) closes the connection.
                try:
                    response.read(_MAX_ERROR_BODY)
                    if response.read(1):
                        response.close()
                except (urllib3.exceptions.HTTPError, OSError):
                    pass
                return status, b"", None
            if status == 413:
                # The server may not have read the whole request, and may close the
                # connection as it answers (RFC 9110, 15.5.14): the connection is not
                # reused (the next request could meet its close), nor its body read.
                response.close()
                return status, b"", None
            limit = answer_limit if 200 <= status < 300 else _MAX_ERROR_BODY
            try:
                raw = response.read(limit + 1)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if deadline.expired:
                    raise self._connection_error(endpoint, what, exc, deadline) from exc
                self._log_failure(endpoint, what, exc)
                raise NetworkError(f"reading the answer of {endpoint.safe_url} failed") from exc
            if len(raw) > limit:  # the rest is not read: the connection cannot be reused
                response.close()
            if deadline.expired:  # a body without a length, cut short by the deadline
                response.close()
                cut = TimeoutError(f"the whole request took over {self._timeout:g}s")
                raise self._connection_error(endpoint, what, cut, deadline) from cut
            return status, raw, response.headers.get("Retry-After")
        finally:
            response.release_conn()

    def _connection_error(
        self, endpoint: _Endpoint, what: str, exc: BaseException, deadline: Deadline
    ) -> NetworkError:
        """The error to raise for ``exc``, raised by urllib3 or the socket while the
        request had no complete answer."""
        self._log_failure(endpoint, what, exc)
        url = endpoint.safe_url
        # ConnectTimeoutError and ReadTimeoutError are timeouts; urllib3's
        # NewConnectionError is a ConnectTimeoutError subclass for history's sake, but
        # it is a refusal. Any error after the deadline cut the socket is a timeout.
        refused = isinstance(exc, urllib3.exceptions.NewConnectionError)
        timed_out = isinstance(exc, urllib3.exceptions.TimeoutError) and not refused
        if deadline.expired or timed_out:
            return NetworkTimeoutError(f"no answer from {url} within {self._timeout:g}s")
        if refused:
            return NetworkError(f"cannot connect to {url}: {exc}")
        return NetworkError(f"request to {url} failed: {exc}")

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
            f"HttpTransport(url={self._single.safe_url!r}, headers={self.headers!r}, "
            f"timeout={self._timeout!r}, verify={self._verify!r})"
        )

    # ----------------------------------------------------------------- private

    def _log_failure(self, endpoint: _Endpoint, what: str, exc: BaseException) -> None:
        _log.debug("POST %s %s failed: %s", endpoint.safe_url, what, type(exc).__name__)

    def _error_for(
        self, status: int, raw: bytes, retry_after: str | None, url: str | None = None
    ) -> Exception:
        where = f"{url or self._single.safe_url} answered {status}"
        error: Exception
        if status == 409:
            error = _conflict(raw) or PermanentError(f"{where} without a remote value")
        elif status in (429, 503):
            seconds = parse_retry_after(retry_after)
            error = RetryAfter(seconds) if seconds is not None else TransientError(where)
        elif status == 408 or 500 <= status < 600:
            error = TransientError(where)
        else:
            error = PermanentError(where)
        return error


def _conflict(raw: bytes) -> ConflictError | None:
    """The ConflictError a 409's body describes, or None."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return _conflict_of(doc)


def _conflict_of(doc: Any) -> ConflictError | None:
    """ConflictError(value, remote_timestamp=hlc, remote_version=version) from a JSON
    object holding ``"value"`` (a 409's body, or a batch's conflict result), or None."""
    if not isinstance(doc, dict) or "value" not in doc:
        return None

    def as_int(v: Any) -> int | None:
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    return ConflictError(
        doc["value"],
        remote_timestamp=as_int(doc.get("hlc")),
        remote_version=as_int(doc.get("version")),
    )


def _seconds(value: Any) -> float | None:
    """A JSON number of seconds >= 0, at most :data:`RETRY_AFTER_CEILING`, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):  # any size: float() of a huge one would raise
        return float(min(value, int(RETRY_AFTER_CEILING))) if value >= 0 else None
    return min(value, RETRY_AFTER_CEILING) if math.isfinite(value) and value >= 0 else None


def _clip(text: str, limit: int = _MAX_REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _server_says(raw: bytes) -> str:
    """``": <reason>"`` from an error body ``{"error": "<reason>"}``, or ``""``."""
    try:
        doc = json.loads(raw[:_MAX_ERROR_BODY].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return ""
    reason = doc.get("error") if isinstance(doc, dict) else None
    return f": {_clip(reason, 200)}" if isinstance(reason, str) and reason else ""
