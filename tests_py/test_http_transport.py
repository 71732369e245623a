"""cs.HttpTransport against real servers on 127.0.0.1: the reference SyncServer, and a
tiny http.server answering whatever status a test asks for. Operations are real
cs.Operation objects taken from an in-memory SyncQueue."""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import cpcsync as cs
from cpcsync.http import RETRY_AFTER_CEILING, encode_operation, parse_retry_after
from cpcsync.testing import FaultProxy, SyncServer

SECRET = "s3cr3t-token-value"


@pytest.fixture
def server() -> Iterator[SyncServer]:
    with SyncServer() as s:
        yield s


@pytest.fixture
def queue() -> Iterator[Any]:
    with cs.SyncQueue.in_memory() as q:
        yield q


def take_op(q: Any, kind: str = "set", payload: Any = None, **kw: Any) -> cs.Operation:
    """Enqueue one op and take it back: a real cs.Operation, in flight."""
    q.enqueue(kind, {"v": 1} if payload is None else payload, **kw)
    (op,) = q.take(1)
    return op  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Resent:
    """A real operation with base_version set, as the engine resends one after a
    conflict (the queue API offers no way to set it from Python)."""

    op: cs.Operation
    base_version: int | None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.op, name)


# ---------------------------------------------------------------- status server


class StatusServer:
    """Answers every POST with a scripted (status, headers, body); records headers."""

    def __init__(self) -> None:
        self.status = 200
        self.headers: dict[str, str] = {}
        self.body = b"{}"
        self.seen_headers: list[dict[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.seen_headers.append(dict(self.headers))
                self.send_response(owner.status)
                for k, v in owner.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/x"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def status_server() -> Iterator[StatusServer]:
    s = StatusServer()
    yield s
    s.close()


def answer(status_server: StatusServer, queue: Any, status: int, **headers: str) -> Exception:
    status_server.status = status
    status_server.headers = headers
    with cs.HttpTransport(status_server.url, timeout=10) as t, pytest.raises(cs.SyncError) as info:
        t(take_op(queue))
    return info.value


# ------------------------------------------------------------------ the tests


def test_delivers_wire_format(server: SyncServer, queue: Any) -> None:
    op = take_op(queue, "set_currency", {"currency": "BTC"}, key="user:42", priority=100)
    with cs.HttpTransport(server.url) as t:
        assert t(op) is None
    (body,) = server.received
    assert body == {
        "id": op.id,
        "kind": "set_currency",
        "key": "user:42",
        "payload": {"currency": "BTC"},
        "priority": 100,
        "idempotency_key": op.idempotency_key,
        "hlc": op.hlc,
        "base_version": None,
    }
    assert server.applied == {
        "user:42": {"value": {"currency": "BTC"}, "version": 1, "hlc": op.hlc}
    }


def test_idempotency_key_header_and_body(status_server: StatusServer, queue: Any) -> None:
    op = take_op(queue, idempotency_key="idem-1")
    with cs.HttpTransport(status_server.url) as t:
        t.send(op)
    assert status_server.seen_headers[0]["Idempotency-Key"] == "idem-1"
    assert status_server.seen_headers[0]["Content-Type"] == "application/json"


def test_binary_payload_sent_as_base64(server: SyncServer, queue: Any) -> None:
    raw = b"\x00\xff\xfe binary"
    op = take_op(queue, payload=raw, key="blob")
    body = encode_operation(op)
    assert "payload" not in body
    assert base64.b64decode(body["payload_b64"]) == raw
    with cs.HttpTransport(server.url) as t:
        t(op)
    assert server.applied["blob"]["value"] == {"payload_b64": base64.b64encode(raw).decode()}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'"text"', {"payload": "text"}),
        (b"null", {"payload": None}),
        (b"NaN", {"payload_b64": base64.b64encode(b"NaN").decode()}),
        (b"plain words", {"payload_b64": base64.b64encode(b"plain words").decode()}),
    ],
)
def test_payload_encoding(queue: Any, payload: bytes, expected: dict[str, Any]) -> None:
    body = encode_operation(take_op(queue, payload=payload))
    assert {k: v for k, v in body.items() if k.startswith("payload")} == expected
    json.dumps(body, allow_nan=False)  # always valid JSON


def test_same_op_twice_applied_once(server: SyncServer, queue: Any) -> None:
    op = take_op(queue, key="k")
    with cs.HttpTransport(server.url) as t:
        t(op)
        t(op)  # e.g. a retry after a lost answer: acknowledged, not re-applied
    assert len(server.received) == 2
    assert server.applied["k"]["version"] == 1


def test_versions_and_conflict_on_stale_base(server: SyncServer, queue: Any) -> None:
    with cs.HttpTransport(server.url) as t:
        first = take_op(queue, payload={"n": 1}, key="k")
        t(first)
        queue.ack(first.id)
        second = take_op(queue, payload={"n": 2}, key="k")
        t(second)
        queue.ack(second.id)
        third = take_op(queue, payload={"n": 3}, key="k")
        with pytest.raises(cs.ConflictError) as info:
            t(Resent(third, base_version=1))
        err = info.value
        assert err.remote == {"n": 2}
        assert err.remote_version == 2
        assert err.remote_timestamp == second.hlc
        assert server.applied["k"]["version"] == 2
        # Resent against the remote version it is applied.
        t(Resent(third, base_version=err.remote_version))
    assert server.applied["k"] == {"value": {"n": 3}, "version": 3, "hlc": third.hlc}


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_seconds_from_sync_server(server: SyncServer, queue: Any, status: int) -> None:
    server.fail_next(1, status=status, retry_after=7)
    op = take_op(queue, key="k")
    with cs.HttpTransport(server.url) as t:
        with pytest.raises(cs.RetryAfter) as info:
            t(op)
        assert info.value.seconds == 7.0
        assert isinstance(info.value, cs.TransientError)
        assert server.applied == {}
        t(op)
    assert server.applied["k"]["version"] == 1


def test_retry_after_http_date(server: SyncServer, queue: Any) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    server.fail_next(1, status=503, retry_after=when)
    with cs.HttpTransport(server.url) as t, pytest.raises(cs.RetryAfter) as info:
        t(take_op(queue))
    assert 100 <= info.value.seconds <= 121


def test_503_without_retry_after_is_transient(server: SyncServer, queue: Any) -> None:
    server.fail_next(1, status=503)
    with cs.HttpTransport(server.url) as t, pytest.raises(cs.TransientError) as info:
        t(take_op(queue))
    assert type(info.value) is cs.TransientError


@pytest.mark.parametrize("status", [408, 500, 502, 504, 599])
def test_transient_statuses(status_server: StatusServer, queue: Any, status: int) -> None:
    err = answer(status_server, queue, status)
    assert type(err) is cs.TransientError
    assert str(status) in str(err)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 301])
def test_permanent_statuses(status_server: StatusServer, queue: Any, status: int) -> None:
    err = answer(status_server, queue, status, Location="http://127.0.0.1:1/")
    assert type(err) is cs.PermanentError


def test_429_with_malformed_retry_after_is_transient(
    status_server: StatusServer, queue: Any
) -> None:
    err = answer(status_server, queue, 429, **{"Retry-After": "soon"})
    assert type(err) is cs.TransientError


def test_409_without_remote_body_is_permanent(status_server: StatusServer, queue: Any) -> None:
    status_server.body = b"conflict"
    assert type(answer(status_server, queue, 409)) is cs.PermanentError


def test_2xx_variants_deliver(status_server: StatusServer, queue: Any) -> None:
    with cs.HttpTransport(status_server.url) as t:
        for status in (200, 201, 202, 204):
            status_server.status = status
            status_server.body = b"" if status == 204 else b"{}"
            t(take_op(queue))


def test_connection_refused_is_transient_network_error(queue: Any) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    t = cs.HttpTransport(f"http://127.0.0.1:{port}/ops", timeout=5)
    with t, pytest.raises(cs.NetworkError) as info:
        t(take_op(queue))
    err = info.value
    assert isinstance(err, cs.TransientError)
    assert isinstance(err, OSError)
    assert not isinstance(err, TimeoutError)
    assert err.__cause__ is not None
    assert type(err.__cause__).__module__.startswith("urllib3")


def test_timeout_is_transient_timeout(server: SyncServer, queue: Any) -> None:
    server.delay = 5.0
    started = time.monotonic()
    t = cs.HttpTransport(server.url, timeout=0.3)
    with t, pytest.raises(cs.NetworkTimeoutError) as info:
        t(take_op(queue))
    assert time.monotonic() - started < 4.0
    err = info.value
    assert isinstance(err, cs.TransientError)
    assert isinstance(err, TimeoutError)
    assert isinstance(err, OSError)
    assert err.__cause__ is not None


def _trickling_proxy(server: SyncServer, stream: str) -> FaultProxy:
    """A FaultProxy in front of ``server`` whose ``stream`` trickles one byte every
    40 ms: an answer of ~200 bytes then takes ~8 s, a request body of 20 KB ~13 min."""
    proxy = FaultProxy(("127.0.0.1", server.port)).start()
    proxy.add_toxic("slicer", stream, average_size=1, delay=40_000)
    return proxy


@pytest.mark.parametrize("stream", ["downstream", "upstream"])
def test_timeout_bounds_the_whole_request_on_a_trickling_link(
    server: SyncServer, queue: Any, stream: str
) -> None:
    # urllib3 applies a timeout per read (and per send): a link that keeps delivering
    # a byte now and then never trips it. The documented timeout is the whole request.
    payload = {"v": "x" * 20_000} if stream == "upstream" else None
    op = take_op(queue, payload=payload)
    with _trickling_proxy(server, stream) as proxy:
        t = cs.HttpTransport(f"http://127.0.0.1:{proxy.address[1]}/ops", timeout=0.5)
        started = time.monotonic()
        with t, pytest.raises(cs.NetworkTimeoutError, match=r"within 0\.5s") as info:
            t(op)
        elapsed = time.monotonic() - started
        # Without the total deadline this takes 8 s (downstream) or minutes (upstream).
        assert elapsed < 0.5 + 2.5, elapsed
        assert isinstance(info.value, cs.TransientError)
        # The cut connection is never handed to the next request: that one opens a
        # new connection and, once the link is clean, delivers.
        proxy.remove_toxic(f"slicer_{stream}")
        op2 = take_op(queue)
        t2 = cs.HttpTransport(f"http://127.0.0.1:{proxy.address[1]}/ops", timeout=5.0)
        with t2:
            t2(op2)
    assert op2.idempotency_key in {r["idempotency_key"] for r in server.received}


def test_a_finished_requests_deadline_spares_the_reused_connection(
    server: SyncServer, queue: Any
) -> None:
    # Each request takes 0.4 s of a 1.0 s timeout on one kept-alive connection: the
    # third is in flight when the first request's deadline (1.0 s) passes, the fourth
    # when the second's does. Finished requests' deadlines must not cut it.
    server.delay = 0.4
    with cs.HttpTransport(server.url, timeout=1.0) as t:
        for _ in range(4):
            op = take_op(queue)
            t(op)
            queue.ack(op.id)
        assert t.stats() == {"connections": 1, "requests": 4}
    assert len(server.received) == 4


def test_keep_alive_reuses_one_connection(server: SyncServer, queue: Any) -> None:
    with cs.HttpTransport(server.url) as t:
        for _ in range(10):
            op = take_op(queue)
            t(op)
            queue.ack(op.id)
        assert t.stats() == {"connections": 1, "requests": 10}
    assert server.connections == 1
    assert len(server.received) == 10


def test_keep_alive_survives_error_answers(server: SyncServer, queue: Any) -> None:
    with cs.HttpTransport(server.url) as t:
        server.fail_next(2, status=503, retry_after=1)
        op = take_op(queue)
        for _ in range(2):
            with pytest.raises(cs.RetryAfter):
                t(op)
        t(op)
    assert server.connections == 1


def test_concurrent_sends(server: SyncServer, queue: Any) -> None:
    for i in range(40):
        queue.enqueue("set", {"i": i}, key=f"k{i}")
    ops = queue.take(40)
    errors: list[BaseException] = []
    with cs.HttpTransport(server.url, pool_maxsize=4) as t:

        def worker(part: list[cs.Operation]) -> None:
            try:
                for op in part:
                    t(op)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(ops[i::4],)) for i in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert errors == []
    assert len(server.applied) == 40
    assert server.connections <= 4


def test_credentials_never_logged_nor_in_repr(
    server: SyncServer, queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {"Authorization": f"Bearer {SECRET}", "X-Api-Key": SECRET, "X-Trace": "visible"}
    # A token in the query string is kept out of the transport's own repr and logs
    # (urllib3 logs request paths at debug, so credentials belong in headers).
    with_query = cs.HttpTransport(server.url + f"?token={SECRET}")
    assert SECRET not in repr(with_query) and SECRET not in with_query.url
    with_query.close()
    t = cs.HttpTransport(server.url, headers=headers)
    texts = [repr(t), str(t.headers), t.url]
    t(take_op(queue))
    server.fail_next(1, status=500)
    with pytest.raises(cs.TransientError) as info:
        t(take_op(queue))
    texts += [str(info.value), repr(info.value)]
    t.close()
    with pytest.raises(cs.NetworkError) as refused:
        cs.HttpTransport(f"http://127.0.0.1:{_closed_port()}/", headers=headers, timeout=2)(
            take_op(queue)
        )
    texts += [str(refused.value), repr(refused.value), repr(refused.value.__cause__)]
    assert caplog.records, "expected debug logging from the transport"
    texts.append(caplog.text)
    for text in texts:
        assert SECRET not in text
    assert "visible" in repr(t)
    assert t.headers["Authorization"] == "***"
    assert t.headers["X-Api-Key"] == "***"


def test_url_userinfo_becomes_basic_auth_and_is_hidden(
    status_server: StatusServer, queue: Any
) -> None:
    url = status_server.url.replace("http://", f"http://user:{SECRET}@")
    with cs.HttpTransport(url) as t:
        assert SECRET not in repr(t)
        t(take_op(queue))
    expected = base64.b64encode(f"user:{SECRET}".encode()).decode()
    assert status_server.seen_headers[0]["Authorization"] == f"Basic {expected}"


def test_closed_transport_raises_transient(server: SyncServer, queue: Any) -> None:
    t = cs.HttpTransport(server.url)
    t.close()
    with pytest.raises(cs.TransientError):
        t(take_op(queue))


def test_tls_verification_on_by_default() -> None:
    t = cs.HttpTransport("https://127.0.0.1:1/ops")
    try:
        assert t.verify is True
        assert t._pool.cert_reqs == "CERT_REQUIRED"  # type: ignore[attr-defined]
    finally:
        t.close()


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [
        ("ftp://127.0.0.1/", {}),
        ("/relative", {}),
        ("http://example.com/ops", {}),  # plain http off loopback needs the opt-in
        ("http://127.0.0.1/", {"timeout": 0}),
        ("http://127.0.0.1/", {"timeout": math.inf}),
        ("http://127.0.0.1/", {"headers": {"X": 1}}),
        # headers no request can carry: refused now, not one dead letter per op later
        ("http://127.0.0.1/", {"headers": {"Authorization": "Bearer \u2026"}}),
        ("http://127.0.0.1/", {"headers": {"X-Note": "caf\u00e9 \u263a"}}),
        ("http://127.0.0.1/", {"headers": {"X-A": "one\r\nX-B: injected"}}),
        ("http://127.0.0.1/", {"headers": {"Bad Name": "v"}}),
        ("http://127.0.0.1/", {"headers": {"": "v"}}),
        ("https://127.0.0.1/", {"verify": "/no/such/ca.pem"}),
        ("https://127.0.0.1/", {"verify": 3}),
    ],
)
def test_invalid_arguments(url: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(cs.InvalidArgumentError):
        cs.HttpTransport(url, **kwargs)


def test_a_bad_header_error_names_the_header_but_never_a_credential() -> None:
    with pytest.raises(cs.InvalidArgumentError) as info:
        cs.HttpTransport("http://127.0.0.1/", headers={"Authorization": "Bearer s3cr\u00eat\u2026"})
    assert "Authorization" in str(info.value) and "s3cr" not in str(info.value)
    cs.HttpTransport("http://127.0.0.1/", headers={"X-Latin": "caf\u00e9"}).close()  # latin-1


def test_connections_counts_every_tcp_connection_opened(
    status_server: StatusServer, queue: Any
) -> None:
    # Before: urllib3's num_connections counted connection objects, and an object
    # reconnects by itself after the server closed it: 3 TCP connections reported as 1.
    status_server.headers = {"Connection": "close"}
    with cs.HttpTransport(status_server.url) as t:
        for _ in range(3):
            op = take_op(queue)
            t(op)
            queue.ack(op.id)
        assert t.stats() == {"connections": 3, "requests": 3}


def test_insecure_http_opt_in() -> None:
    cs.HttpTransport("http://example.com/ops", allow_insecure_http=True).close()


# ------------------------------------------------------------------ the errors


def test_error_classes() -> None:
    for name in ("TransientError", "PermanentError", "ConflictError", "RetryAfter"):
        cls = getattr(cs, name)
        assert issubclass(cls, cs.SyncError)
        assert name in cs.__all__
        assert cls.__doc__
    e = cs.ConflictError({"a": 1}, remote_timestamp=5, remote_version=2)
    assert (e.remote, e.remote_timestamp, e.remote_version) == ({"a": 1}, 5, 2)
    assert cs.ConflictError("x").remote_version is None
    assert cs.RetryAfter(0).seconds == 0.0
    assert cs.RetryAfter(1.5).seconds == 1.5
    assert issubclass(cs.NetworkTimeoutError, TimeoutError)


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "3", True, None])
def test_retry_after_validates(bad: Any) -> None:
    with pytest.raises(cs.InvalidArgumentError):
        cs.RetryAfter(bad)


def test_errors_pickle() -> None:
    import pickle

    e = pickle.loads(pickle.dumps(cs.ConflictError([1], 3, 4)))
    assert (e.remote, e.remote_timestamp, e.remote_version) == ([1], 3, 4)
    assert pickle.loads(pickle.dumps(cs.RetryAfter(2))).seconds == 2.0


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("-3", now) is None
    assert parse_retry_after("garbage", now) is None
    past = email.utils.formatdate(now - 60, usegmt=True)
    assert parse_retry_after(past, now) == 0.0
    future = email.utils.formatdate(now + 60, usegmt=True)
    assert parse_retry_after(future, now) == 60.0


@pytest.mark.parametrize(
    "value",
    [
        "\u00b2",  # str.isdigit() is True, int() raises
        "\u0663",  # an Arabic-Indic digit: isdigit() and int() accept it, HTTP does not
        "1.5",
        "+5",
        "",
        "   ",
        "Mon, 32 Foo 2024 99:99:99 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT +9999999",
        "\x00",
        "9" * 5000,
    ],
)
def test_parse_retry_after_never_raises(value: str) -> None:
    result = parse_retry_after(value, 1_700_000_000.0)
    assert result is None or (0.0 <= result <= RETRY_AFTER_CEILING)


def test_parse_retry_after_clamps_huge_values() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("99999999999999999999", now) == RETRY_AFTER_CEILING
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now) == RETRY_AFTER_CEILING
    assert parse_retry_after("000000000000000000007", now) == 7.0
    assert parse_retry_after(" 30 ", now) == 30.0


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port
