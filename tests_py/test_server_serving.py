"""Serving the receiver for real: ``rx.asgi()`` under uvicorn (in-process, a real
socket on 127.0.0.1), ``rx.wsgi()`` under ``wsgiref`` (threaded), and ``cpcsync serve``
as a subprocess with two worker processes. A real SyncQueue file and SyncEngine deliver
through ``HttpTransport``; the answers are read back over HTTP and from the database."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import signal
import socket
import socketserver
import sqlite3
import subprocess
import sys
import threading
import time
import types
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

import cpcsync as cs
from cpcsync.cli import main
from cpcsync.http import HttpTransport
from cpcsync.server import Receiver, SqliteBackend, backend_from_url, make_asgi_app
from cpcsync.server.backend_url import redact_url

uvicorn: Any
try:
    import uvicorn
except ImportError:  # the server extra; the uvicorn tests skip
    uvicorn = None

needs_uvicorn = pytest.mark.skipif(uvicorn is None, reason="needs uvicorn (cpcsync[server])")

MAX_BODY = 4096
KINDS = ["asgi", "wsgi"]


# --------------------------------------------------------------------------- backends


class WatchedBackend(SqliteBackend):
    """The real SQLite backend, telling the test how many long polls are waiting in it
    (so a test posts only once its long polls are known to be waiting)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._cond = threading.Condition()
        self._waiting = 0

    def wait_for_change(self, since: int, timeout: float) -> bool:
        with self._cond:
            self._waiting += 1
            self._cond.notify_all()
        try:
            return super().wait_for_change(since, timeout)
        finally:
            with self._cond:
                self._waiting -= 1

    def wait_for_waiters(self, n: int, timeout: float = 30.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._waiting >= n, timeout)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[WatchedBackend]:
    b = WatchedBackend(tmp_path / "server.db")
    yield b
    b.close()


@pytest.fixture
def rx(backend: WatchedBackend) -> Receiver:
    return Receiver(backend, max_body_bytes=MAX_BODY)


# --------------------------------------------------------------------------- servers


class _ReadyServer:
    """uvicorn.Server that says when its startup is over (started or failed)."""

    def __init__(self, config: Any) -> None:
        outer = self

        class Server(uvicorn.Server):  # type: ignore[misc,name-defined]
            async def startup(self, sockets: Any = None) -> None:
                try:
                    await super().startup(sockets)
                finally:
                    outer.ready.set()

        self.ready = threading.Event()
        self.server = Server(config)


@contextlib.contextmanager
def asgi_server(app: Any, **config: Any) -> Iterator[tuple[str, Any]]:
    """``app`` under uvicorn in a thread on 127.0.0.1, an ephemeral port: (base URL,
    uvicorn.Server). Stops it (lifespan shutdown included) on the way out."""
    options = {"lifespan": "on", "log_level": "warning", "access_log": False, **config}
    holder = _ReadyServer(uvicorn.Config(app, host="127.0.0.1", port=0, **options))
    server = holder.server
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        assert holder.ready.wait(60), "uvicorn did not finish starting"
        assert server.started, "uvicorn failed to start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(60)
        assert not thread.is_alive()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


@contextlib.contextmanager
def wsgi_server(app: Any) -> Iterator[str]:
    """``app`` under wsgiref (a thread per request) on 127.0.0.1, an ephemeral port."""
    httpd = make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(60)


@contextlib.contextmanager
def serving(kind: str, rx: Receiver) -> Iterator[str]:
    if kind == "asgi":
        if uvicorn is None:
            pytest.skip("needs uvicorn (cpcsync[server])")
        with asgi_server(rx.asgi()) as (url, _):
            yield url
    else:
        with wsgi_server(rx.wsgi()) as url:
            yield url


# --------------------------------------------------------------------------- HTTP helpers


def request(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, Any, http.client.HTTPMessage]:
    """One request on a fresh connection: (status, JSON body, headers)."""
    parsed = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers={**hdrs, **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None, resp.headers
    finally:
        conn.close()


def op_body(key: str, value: Any, idem: str, hlc: int = 1000) -> dict[str, Any]:
    return {"kind": "set", "key": key, "payload": value, "idempotency_key": idem, "hlc": hlc}


def raw_exchange(base: str, head: bytes, body: bytes = b"", timeout: float = 10.0) -> bytes:
    """Send raw bytes, read the whole answer (the server closes the connection)."""
    parsed = urllib.parse.urlsplit(base)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout) as s:
        s.sendall(head + body)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def deliver(base: str, tmp_path: Path, ops: list[tuple[str | None, Any]]) -> cs.SyncQueue:
    """Enqueue ``ops`` in a SyncQueue file and drain it through HttpTransport."""
    queue = cs.SyncQueue.open(tmp_path / "outbox.db")
    for key, value in ops:
        queue.enqueue("set", value, key=key)
    with HttpTransport(f"{base}/ops", timeout=30) as transport:
        engine = cs.SyncEngine(queue, transport)
        summary = engine.drain(timeout=60)
    assert summary.successful == len(ops), summary
    assert len(queue) == 0
    return queue


# --------------------------------------------------------------------------- both adapters

ODD_KEY = "user:42/€ 100%41 é?&#"


@pytest.mark.parametrize("kind", KINDS)
def test_an_engine_delivers_and_the_api_reads_back(kind: str, rx: Receiver, tmp_path: Path) -> None:
    ops: list[tuple[str | None, Any]] = [(f"k{i % 3}", {"n": i}) for i in range(9)]
    ops += [(ODD_KEY, {"odd": True}), (None, {"keyless": 1})]
    with serving(kind, rx) as base:
        queue = deliver(base, tmp_path, ops)
        queue.close()

        status, doc, _ = request(base, "GET", "/entities/k2")
        assert status == 200
        assert doc["value"] == {"n": 8} and doc["version"] == 3 and doc["deleted"] is False

        quoted = urllib.parse.quote(ODD_KEY, safe="")
        status, doc, _ = request(base, "GET", f"/entities/{quoted}")
        assert (status, doc["value"], doc["version"]) == (200, {"odd": True}, 1)

        status, doc, _ = request(base, "GET", "/changes?limit=100")
        assert status == 200
        changes = doc["changes"]
        assert [c["value"] for c in changes] == [v for _, v in ops]
        assert [c["key"] for c in changes] == [k for k, _ in ops]
        assert len({c["idempotency_key"] for c in changes}) == len(ops)

        status, doc, _ = request(base, "GET", f"/changes?since={doc['cursor']}")
        assert (status, doc["changes"]) == (200, [])

        assert request(base, "GET", "/health")[:2] == (200, {"status": "ok", "protocol": 1})


@pytest.mark.parametrize("kind", KINDS)
def test_a_long_poll_is_woken_by_a_concurrent_post(
    kind: str, rx: Receiver, backend: WatchedBackend
) -> None:
    with serving(kind, rx) as base:
        _, first, _ = request(base, "GET", "/changes")
        answered = threading.Event()
        result: dict[str, Any] = {}

        def poll() -> None:
            started = time.monotonic()
            result["answer"] = request(base, "GET", f"/changes?since={first['cursor']}&wait=60")
            result["seconds"] = time.monotonic() - started
            answered.set()

        poller = threading.Thread(target=poll)
        poller.start()
        assert backend.wait_for_waiters(1), "the long poll never reached the backend"
        assert not answered.is_set()
        status, doc, _ = request(base, "POST", "/ops", op_body("k", {"v": 1}, "idem-1"))
        assert status == 200 and doc["status"] == "applied"
        assert answered.wait(30), "the long poll was not woken"
        poller.join()
        status, doc, _ = result["answer"]
        assert status == 200
        assert [c["idempotency_key"] for c in doc["changes"]] == ["idem-1"]
        assert result["seconds"] < 30  # woken, not timed out


@pytest.mark.parametrize("kind", KINDS)
def test_a_body_above_the_limit_is_refused_without_being_read(kind: str, rx: Receiver) -> None:
    with serving(kind, rx) as base:
        # Headers announce a body the client never sends: a server reading it would
        # hang until the socket timeout instead of answering.
        head = (
            b"POST /ops HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1)
        )
        answer = raw_exchange(base, head)
        assert answer.startswith(b"HTTP/1.1 413 ") or answer.startswith(b"HTTP/1.0 413 ")
        assert b"larger than 4096 bytes" in answer
        # A body at the limit is read and handled (here: malformed JSON).
        status, doc, _ = request(base, "POST", "/ops", headers={"Content-Length": "0"})
        assert status == 400 and "malformed JSON" in doc["error"]
        assert backend_rows(rx) == 0


def backend_rows(rx: Receiver) -> int:
    return len(rx.changes(limit=10_000)["changes"])


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_method_and_unknown_path(kind: str, rx: Receiver) -> None:
    with serving(kind, rx) as base:
        status, doc, headers = request(base, "GET", "/ops")
        assert (status, headers["Allow"]) == (405, "POST") and doc["error"]
        status, _, headers = request(base, "POST", "/changes", body={})
        assert (status, headers["Allow"]) == (405, "GET")
        status, doc, _ = request(base, "GET", "/nope")
        assert status == 404 and "no such endpoint" in doc["error"]
        status, doc, _ = request(base, "GET", "/entities/missing")
        assert (status, doc) == (404, {"error": "no such key"})
        status, doc, headers = request(base, "POST", "/ops", body={"kind": "x"})
        assert status == 400 and headers["Content-Type"] == "application/json"


# --------------------------------------------------------------------------- ASGI only


@needs_uvicorn
def test_asgi_refuses_a_large_body_before_100_continue(rx: Receiver) -> None:
    with asgi_server(rx.asgi()) as (base, _):
        head = (
            b"POST /ops HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: 100000000\r\n\r\n"
        )
        answer = raw_exchange(base, head)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]  # no "100 Continue" first
        assert b"connection: close" in answer.lower()


@needs_uvicorn
def test_asgi_refuses_a_chunked_body_that_grows_past_the_limit(rx: Receiver) -> None:
    with asgi_server(rx.asgi()) as (base, _):
        head = (
            b"POST /ops HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 1000
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5))  # 5000 bytes
        answer = raw_exchange(base, head, body)  # the final 0-chunk never comes
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]
        # within the limit, chunked is fine
        op = json.dumps(op_body("c", 1, "chunked-1")).encode()
        answer = raw_exchange(
            base,
            head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"),
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(op), op),
        )
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]
        assert rx.get("c") is not None


@needs_uvicorn
def test_asgi_long_polls_do_not_stall_other_requests(rx: Receiver, backend: WatchedBackend) -> None:
    # More long polls than asyncio's default executor has threads (min(32, cpus + 4)):
    # writes and health checks must still be answered while they all wait.
    n = min(32, (os.cpu_count() or 1) + 4) + 2
    with asgi_server(rx.asgi()) as (base, _):
        answers: list[Any] = []
        lock = threading.Lock()

        def poll() -> None:
            answer = request(base, "GET", "/changes?wait=60", timeout=90)
            with lock:
                answers.append(answer)

        pollers = [threading.Thread(target=poll) for _ in range(n)]
        for t in pollers:
            t.start()
        assert backend.wait_for_waiters(n), "the long polls never all reached the backend"
        assert request(base, "GET", "/health", timeout=10)[0] == 200
        status, doc, _ = request(base, "POST", "/ops", op_body("k", 1, "wake"), timeout=10)
        assert (status, doc["status"]) == (200, "applied")
        for t in pollers:
            t.join(60)
        assert len(answers) == n
        for status, doc, _ in answers:
            assert status == 200 and [c["idempotency_key"] for c in doc["changes"]] == ["wake"]


@needs_uvicorn
def test_asgi_lifespan_shutdown_leaves_the_receiver_open(rx: Receiver) -> None:
    shut = threading.Event()
    with asgi_server(make_asgi_app(rx, on_shutdown=shut.set)) as (base, _):
        status, _, _ = request(base, "POST", "/ops", op_body("a", 1, "life-1"))
        assert status == 200
        assert not shut.is_set()
    assert shut.is_set()  # lifespan.shutdown ran the owner's hook
    # rx.asgi() owns nothing: the backend is still usable after the server stopped
    assert rx.get("a") is not None
    assert rx.apply_batch([op_body("b", 2, "life-2")])[0]["status"] == "applied"
    # and the same app serves again
    app = rx.asgi()
    for _ in range(2):
        with asgi_server(app) as (base, _):
            assert request(base, "GET", "/entities/b")[0] == 200


@needs_uvicorn
def test_asgi_long_poll_cut_at_shutdown_answers_503(rx: Receiver, backend: WatchedBackend) -> None:
    answer: dict[str, Any] = {}
    with asgi_server(rx.asgi(), timeout_graceful_shutdown=1) as (base, server):
        poller = threading.Thread(
            target=lambda: answer.update(r=request(base, "GET", "/changes?wait=120", timeout=60))
        )
        poller.start()
        assert backend.wait_for_waiters(1)
        server.should_exit = True
        poller.join(60)
    status, doc, headers = answer["r"]
    assert status == 503 and headers["Retry-After"] == "1" and "shutting down" in doc["error"]


@needs_uvicorn
def test_asgi_mounted_under_a_prefix(rx: Receiver) -> None:
    inner = rx.asgi()

    async def mount(scope: Any, receive: Any, send: Any) -> None:
        # As Starlette's Mount("/sync", app): root_path extended, path left whole.
        if scope["type"] == "http" and scope["path"].startswith("/sync/"):
            scope = dict(scope, root_path=scope.get("root_path", "") + "/sync")
            await inner(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            await inner(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with asgi_server(mount) as (base, _):
        status, doc, _ = request(base, "POST", "/sync/ops", op_body("m/1", 1, "mount-1"))
        assert (status, doc["status"]) == (200, "applied")
        assert request(base, "GET", "/sync/entities/m%2F1")[0] == 200
        assert request(base, "GET", "/sync/health")[0] == 200
        assert request(base, "GET", "/elsewhere")[0] == 418


# --------------------------------------------------------------------------- WSGI only


def _call_wsgi(app: Any, environ: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, dict(headers)
        return lambda data: None

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


class _Unreadable(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        raise AssertionError("the body was read")


def test_wsgi_chunked_input_is_read_up_to_the_limit(rx: Receiver) -> None:
    app = rx.wsgi()
    base = {"REQUEST_METHOD": "POST", "PATH_INFO": "/ops", "QUERY_STRING": ""}
    op = json.dumps(op_body("w", 1, "wsgi-1")).encode()
    # wsgi.input_terminated (gunicorn, mod_wsgi): no CONTENT_LENGTH, read to the end
    status, _, _ = _call_wsgi(
        app, {**base, "wsgi.input": io.BytesIO(op), "wsgi.input_terminated": True}
    )
    assert status == "200 OK" and rx.get("w") is not None
    big = io.BytesIO(b" " * (MAX_BODY + 10))
    status, headers, body = _call_wsgi(
        app, {**base, "wsgi.input": big, "wsgi.input_terminated": True}
    )
    assert status == "413 Request Entity Too Large" and b"larger than" in body
    assert big.tell() == MAX_BODY + 1  # it stopped reading one byte past the limit
    assert headers["Content-Length"] == str(len(body))
    # CONTENT_LENGTH above the limit: not read at all
    status, _, _ = _call_wsgi(
        app, {**base, "CONTENT_LENGTH": str(MAX_BODY + 1), "wsgi.input": _Unreadable()}
    )
    assert status.startswith("413 ")
    # no CONTENT_LENGTH and no input_terminated: PEP 3333 says no body
    status, _, body = _call_wsgi(app, {**base, "wsgi.input": _Unreadable()})
    assert status.startswith("400 ") and b"malformed JSON" in body


def test_wsgi_mounted_under_a_prefix(rx: Receiver) -> None:
    inner = rx.wsgi()

    def dispatch(environ: dict[str, Any], start_response: Any) -> Any:
        # As werkzeug's DispatcherMiddleware({"/sync": app}): SCRIPT_NAME takes the
        # prefix, PATH_INFO the rest.
        path = environ.get("PATH_INFO", "")
        if path.startswith("/sync/"):
            environ = dict(environ, SCRIPT_NAME="/sync", PATH_INFO=path[len("/sync") :])
            return inner(environ, start_response)
        start_response("418 I'm a Teapot", [("Content-Length", "0")])
        return [b""]

    with wsgi_server(dispatch) as base:
        status, doc, _ = request(base, "POST", "/sync/ops", op_body("é/1", 1, "mount-2"))
        assert (status, doc["status"]) == (200, "applied")
        status, doc, _ = request(base, "GET", "/sync/entities/%C3%A9%2F1")
        assert (status, doc["value"]) == (200, 1)
        assert request(base, "GET", "/elsewhere")[0] == 418


# --------------------------------------------------------------------------- database URLs


def test_backend_from_url_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with backend_from_url("sqlite:///rel.db") as b:
        assert isinstance(b, SqliteBackend) and b.path == "rel.db"
    assert (tmp_path / "rel.db").is_file()
    absolute = tmp_path / "sub dir" / "abs.db"
    absolute.parent.mkdir()
    with backend_from_url(f"sqlite:///{absolute}") as b:  # sqlite:////tmp/...
        assert isinstance(b, SqliteBackend) and b.path == str(absolute)
    assert absolute.is_file()
    with backend_from_url("SQLITE:///:memory:") as b:
        assert isinstance(b, SqliteBackend) and b.path == ":memory:"


@pytest.mark.parametrize(
    "url",
    [
        "server.db",
        "sqlite://",
        "sqlite:///",
        "sqlite://host/x.db",
        "sqlite:///x.db?mode=ro",
        "mysql://h/db",
    ],
)
def test_backend_from_url_refuses(url: str) -> None:
    with pytest.raises(ValueError, match=r"sqlite:///"):
        backend_from_url(url)


def test_backend_from_url_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without PostgreSQL support installed: one clear error naming the extra.
    monkeypatch.setitem(sys.modules, "cpcsync.server.postgres_backend", None)
    for scheme in ("postgresql", "postgres"):
        with pytest.raises(ImportError, match=r"PostgreSQL support needs cpcsync\[postgres\]"):
            backend_from_url(f"{scheme}://app@127.0.0.1:1/sync")
    # With it: the URL goes to PostgresBackend as its DSN (a stand-in class records it;
    # the backend itself is tested with a real PostgreSQL elsewhere).
    made: list[str] = []

    class PostgresBackend:
        def __init__(self, dsn: str, pool_size: int = 10) -> None:
            made.append(dsn)

    module = types.ModuleType("cpcsync.server.postgres_backend")
    module.PostgresBackend = PostgresBackend  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cpcsync.server.postgres_backend", module)
    backend_from_url("postgres://app@127.0.0.1:5432/sync")
    assert made == ["postgres://app@127.0.0.1:5432/sync"]


def test_redact_url() -> None:
    assert redact_url("postgresql://app:s3cret@db:5432/sync") == "postgresql://app:***@db:5432/sync"
    assert redact_url("postgres://db/sync?user=a&password=x&sslmode=require") == (
        "postgres://db/sync?user=a&password=***&sslmode=require"
    )
    assert redact_url("sqlite:////srv/sync/server.db") == "sqlite:////srv/sync/server.db"


# --------------------------------------------------------------------------- cpcsync serve


def test_serve_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> tuple[int, str]:
        code = main(["serve", *argv])
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
        return code, err

    if uvicorn is not None:
        code, err = run("--db", "mysql://h/db")
        assert code == 2 and "unsupported database URL" in err
        code, err = run("--db", "sqlite:///:memory:", "--workers", "2")
        assert code == 2 and "--workers 1" in err
        with socket.create_server(("127.0.0.1", 0)) as busy:
            port = busy.getsockname()[1]
            code, err = run("--db", "sqlite:///s.db", "--port", str(port))
            assert code == 1 and f"cannot listen on 127.0.0.1:{port}" in err
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    code, err = run("--db", "sqlite:///s.db")
    assert code == 2 and "cpcsync[server]" in err and "uvicorn" in err


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while True:
        assert proc.poll() is None, "cpcsync serve exited before serving"
        try:
            if request(url, "GET", "/health", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "cpcsync serve did not answer /health in time"
        time.sleep(0.05)  # polling for the workers to come up, with a deadline


@needs_uvicorn
@pytest.mark.parametrize("workers", [2, 1])
def test_cpcsync_serve_end_to_end(workers: int, tmp_path: Path) -> None:
    # One worker: uvicorn serves in the command's own process (and hands SIGTERM back
    # to it once stopped); two: a supervisor and two worker processes.
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    package_root = str(Path(cs.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "cpcsync", "serve", "--db", "sqlite:///server.db"]
    argv += ["--port", str(port), "--workers", str(workers), "--log-level", "info"]
    with open(tmp_path / "out.txt", "wb") as out, open(tmp_path / "err.txt", "wb") as err:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=err)
    try:
        _wait_healthy(url, proc, time.monotonic() + 120)
        ops: list[tuple[str | None, Any]] = [(f"key{i % 4}", {"i": i}) for i in range(20)]
        queue = deliver(url, tmp_path, ops)
        queue.close()
        status, doc, _ = request(url, "GET", "/changes?limit=100")
        assert status == 200 and len(doc["changes"]) == 20
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stdout = (tmp_path / "out.txt").read_text()
    stderr = (tmp_path / "err.txt").read_text()
    first = stdout.splitlines()[0]
    assert first.startswith("cpcsync serve: sqlite:///server.db at " + url), stdout
    assert stderr.count("Started server process") == workers, stderr
    assert stderr.count("Application shutdown complete") == workers, stderr  # closed
    with pytest.raises(ConnectionRefusedError):  # nobody listens any more
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    db = sqlite3.connect(tmp_path / "server.db")
    try:
        rows = dict(db.execute("SELECT key, version FROM entities").fetchall())
        assert rows == {f"key{k}": 5 for k in range(4)}
        last = db.execute("SELECT value FROM entities WHERE key = 'key3'").fetchone()[0]
        assert json.loads(last) == {"i": 19}
        assert db.execute("SELECT count(*) FROM changes").fetchone()[0] == 20
    finally:
        db.close()
    assert not (tmp_path / "server.db-wal").exists()  # every connection was closed


def test_serve_is_in_the_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--db", "--host", "--port", "--workers", "--max-clock-skew", "--log-level"):
        assert option in out
