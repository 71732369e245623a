"""Security: private files, SQL only through prepared statements, TLS verified by
default, plain HTTP only to loopback, no credentials or payloads in any log.

The TLS tests run a real HTTPS server on 127.0.0.1 with a self-signed certificate
made at test time by the ``openssl`` command (scripts/bootstrap.sh installs it); no
network is used.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import re
import shutil
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import urllib3

import cpcsync as cs
from cpcsync.testing import SyncServer

ROOT = Path(__file__).resolve().parents[1]
SECRET = "S3CRET-6c1f0a"  # a credential: in headers and in a URL query
MARKER = "PAYLOAD-MARKER-9d2e"  # payload content


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------------
# files


@pytest.mark.parametrize("durability", ["full", "normal", "off"])
def test_queue_file_and_companions_are_0600_even_with_umask_000(
    tmp_path: Path, durability: str
) -> None:
    path = tmp_path / "outbox.db"
    with umask(0o000):
        with cs.SyncQueue.open(str(path), durability=durability) as q:
            q.enqueue("k", b"secret")
            for suffix in ("", "-wal", "-shm"):
                assert mode(str(path) + suffix) == 0o600, suffix
        with cs.SyncQueue.open(str(path), read_only=True) as ro:
            assert len(ro) == 1
    assert mode(path) == 0o600


def test_store_local_file_and_companions_are_0600_even_with_umask_000(tmp_path: Path) -> None:
    class Remote:
        def __init__(self) -> None:
            self.values: dict[str, Any] = {}

        def get(self, key: str) -> Any:
            return self.values.get(key)

        def set(self, key: str, value: Any) -> None:
            self.values[key] = value

    local = tmp_path / "local.db"
    with umask(0o000):
        queue = cs.SyncQueue.open(str(tmp_path / "outbox.db"))
        store = cs.OfflineFirstStore(local, Remote(), queue, cs.NetworkMonitor(connected=True))
        try:
            store.set("user:1", {"card": "4111"})
            for suffix in ("", "-wal", "-shm"):
                assert mode(str(local) + suffix) == 0o600, suffix
        finally:
            store.close()
            queue.close()


def test_sync_server_temp_file_is_private_and_removed() -> None:
    """The SyncServer is a test tool; its temporary database is still 0600."""
    server = SyncServer().start()
    try:
        assert mode(server.path) == 0o600
    finally:
        server.stop()
    assert not os.path.exists(server.path)


# --------------------------------------------------------------------------
# SQL: data only through bound parameters (an executable record of the audit)

# The only values ever formatted into SQL text: constants and placeholder lists.
PY_SQL_INTERPOLATIONS = {
    "_SYNCHRONOUS[durability]",  # store.py: one of FULL/NORMAL/OFF (durability validated)
    "_APPLICATION_ID",
    "_SCHEMA_VERSION",
    "marks",  # cli/rawsql.py: "?,?,..." placeholders
}
SQL_CALLS = {"execute", "executemany", "executescript", "_rows", "_scalar"}


def _psycopg_composed(node: ast.expr) -> bool:
    """``sql.SQL("<literal>")``: psycopg's composition, whose .format() quotes what it
    inserts (sql.Identifier, sql.Literal), the safe way to build dynamic SQL."""
    return (
        isinstance(node, ast.Call)
        and ast.unparse(node.func) in ("sql.SQL", "psycopg.sql.SQL")
        and len(node.args) == 1
        and isinstance(node.args[0], ast.Constant)
    )


def test_python_sql_formats_in_no_data() -> None:
    found: list[str] = []
    for path in sorted((ROOT / "python" / "cpcsync").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr not in SQL_CALLS or not node.args:
                continue
            sql = node.args[0]
            if isinstance(sql, ast.BinOp) or (
                isinstance(sql, ast.Call)
                and isinstance(sql.func, ast.Attribute)
                and sql.func.attr == "format"
                and not _psycopg_composed(sql.func.value)
            ):
                found.append(f"{path.name}:{node.lineno}: SQL built with + or .format")
            if isinstance(sql, ast.JoinedStr):
                for part in sql.values:
                    if isinstance(part, ast.FormattedValue):
                        text = ast.unparse(part.value)
                        if text not in PY_SQL_INTERPOLATIONS:
                            found.append(f"{path.name}:{node.lineno}: {{{text}}} in SQL")
    assert not found, found


def test_cpp_sql_is_literal_and_prepared() -> None:
    """sqlite3_exec runs only literals (or the schema's constant migrations, or an
    integer constant); every other statement is a literal prepared once."""
    found: list[str] = []
    sources = sorted((ROOT / "cpp").rglob("*.cc"))
    for path in sources:
        text = path.read_text()
        for m in re.finditer(r"(?:\.Exec|sqlite3_exec)\(([^;]*?)\)\s*;", text):
            arg = m.group(1)
            if "sqlite3_exec" in m.group(0):
                arg = arg.split(",")[1].strip()
            ok = (
                arg.startswith('"')
                or (path.name == "db.cc" and arg == "sql")  # Db::Exec itself
                or arg.startswith("d == Durability")
                or arg == "kMigrations[v - 1]"
                or re.fullmatch(r'\("PRAGMA [a-z_]+ = " \+ std::to_string\(\w+\)\)\.c_str\(\)', arg)
            )
            if not ok:
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {arg}")
        for m in re.finditer(r'"(?:SELECT|INSERT|UPDATE|DELETE|REPLACE)[^"]*"\s*\+', text):
            line = text.count("\n", 0, m.start()) + 1
            found.append(f"{path.relative_to(ROOT)}:{line}: SQL text concatenated")
    assert not found, found
    assert any("sqlite_storage" in p.name for p in sources)


# --------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert file, key file)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is missing (scripts/bootstrap.sh installs it)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TlsServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True
    bodies: list[bytes]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client refusing our certificate is the point of some tests


@pytest.fixture
def https_url(certificate: tuple[str, str]) -> Iterator[tuple[str, _TlsServer]]:
    cert, key = certificate
    httpd = _TlsServer(("127.0.0.1", 0), _Handler)
    httpd.bodies = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}/ops", httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def one_op(tmp_path: Path) -> cs.Operation:
    q = cs.SyncQueue.in_memory()
    q.enqueue("put", {"n": 1}, key="k")
    (op,) = q.take(1)
    return op


def test_tls_is_verified_by_default_an_unknown_certificate_is_refused(
    https_url: tuple[str, _TlsServer], tmp_path: Path
) -> None:
    url, server = https_url
    with cs.HttpTransport(url, timeout=5) as t, pytest.raises(cs.NetworkError) as info:
        t(one_op(tmp_path))
    assert "certificate" in repr(info.value.__cause__).lower()
    assert server.bodies == [], "nothing may be sent over an unverified connection"


@pytest.mark.parametrize("verify", ["ca-file", False], ids=["verify=ca-file", "verify=False"])
def test_tls_delivers_with_the_servers_ca_file_or_an_explicit_opt_out(
    https_url: tuple[str, _TlsServer], certificate: tuple[str, str], tmp_path: Path, verify: Any
) -> None:
    url, server = https_url
    transport = cs.HttpTransport(url, timeout=5, verify=certificate[0] if verify else False)
    # turning verification off is loud: urllib3 warns on every request
    warns = (
        contextlib.nullcontext()
        if verify
        else pytest.warns(urllib3.exceptions.InsecureRequestWarning)
    )
    with transport as t, warns:
        t(one_op(tmp_path))
    assert len(server.bodies) == 1


def test_engine_never_delivers_over_an_unverified_connection(
    https_url: tuple[str, _TlsServer], tmp_path: Path
) -> None:
    url, server = https_url
    q = cs.SyncQueue.in_memory()
    q.enqueue("put", {"n": 1})
    with cs.HttpTransport(url, timeout=5) as t:
        summary = cs.SyncEngine(q, t, max_attempts=3).process_once()
    assert summary.successful == 0 and len(summary.retried) == 1
    (op,) = q.peek(1)
    assert (op.last_error or "").startswith("NetworkError")
    assert server.bodies == []


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:9/ops", True),
        ("http://127.1.2.3:9/ops", True),
        ("http://localhost:9/ops", True),
        ("http://[::1]:9/ops", True),
        ("http://localhost.example.com/ops", False),
        ("http://10.0.0.1/ops", False),
        ("http://192.168.1.10/ops", False),
        ("http://sync.example.com/ops", False),
        ("http://[::ffff:10.0.0.1]/ops", False),
    ],
)
def test_plain_http_only_to_loopback_unless_allowed(url: str, allowed: bool) -> None:
    """Constructing a transport connects to nothing: the check is on the URL alone."""
    if allowed:
        cs.HttpTransport(url).close()
    else:
        with pytest.raises(cs.InvalidArgumentError, match="allow_insecure_http"):
            cs.HttpTransport(url)
    cs.HttpTransport(url, allow_insecure_http=True).close()


# --------------------------------------------------------------------------
# logs


class ConflictOnce:
    """Answers the first call with a conflict whose remote value holds the marker,
    then sends through ``inner``."""

    def __init__(self, inner: cs.HttpTransport) -> None:
        self.inner = inner
        self.conflicted = False

    def __call__(self, op: cs.Operation) -> None:
        if not self.conflicted:
            self.conflicted = True
            raise cs.ConflictError({"m": MARKER}, remote_timestamp=1, remote_version=0)
        self.inner(op)


def test_no_credential_or_payload_in_any_log_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Deliveries, retries, dead letters (transient, permanent, network), a conflict:
    every log record of every logger (HttpTransport, urllib3, the engine's C++ log at
    trace level, the test server) at DEBUG, and the errors kept, are free of the
    Authorization value, the URL's query token and payload content."""
    caplog.set_level(logging.DEBUG)
    cs.set_log_level("trace")
    headers = {"Authorization": f"Bearer {SECRET}", "X-Api-Key": SECRET}
    payload = {"m": MARKER}
    resolved: list[int] = []

    def resolver(local: cs.Operation, remote: cs.Remote) -> cs.Resolution:
        resolved.append(local.id)
        if len(resolved) == 1:  # the engine logs this (C++ log, logger "cpcsync")
            raise RuntimeError("resolver failed once")
        return cs.Resolution.use_local()

    monitor = cs.NetworkMonitor(connected=False)
    monitor.set_connected(True)  # logged too
    try:
        with SyncServer() as server, cs.SyncQueue.open(str(tmp_path / "q.db")) as q:
            url = f"{server.url}?sig={SECRET}"
            http = cs.HttpTransport(url, headers=headers, timeout=5)
            engine = cs.SyncEngine(
                q,
                ConflictOnce(http),
                backoff=cs.ConstantBackoff(0.0),
                max_attempts=2,
                resolver=resolver,
                monitor=monitor,
            )
            q.enqueue("put", payload, key="k")  # conflict, broken resolver, resent: applied
            q.enqueue("put", payload, key="k")  # applied
            engine.drain(timeout=10)
            server.fail_next(2, status=503)
            q.enqueue("put", payload, key="t")  # 503 twice: dead letter
            engine.drain(timeout=10)
            server.fail_next(1, status=400)
            q.enqueue("put", payload, key="p")  # permanent: dead letter
            engine.drain(timeout=10)
            assert len(server.applied) == 1 and server.applied["k"]["version"] == 2

            refused = cs.HttpTransport(f"http://127.0.0.1:{free_port()}/x?sig={SECRET}",
                                       headers=headers, timeout=2)  # fmt: skip
            n = q.enqueue("put", payload, key="n")
            # refused: a network failure, retried (never dead-lettered by max_attempts)
            cs.SyncEngine(
                q, refused, backoff=cs.ConstantBackoff(0.0), max_attempts=2
            ).process_once()
            kept = [op.last_error or "" for op in q.dead_letters()]
            assert len(kept) == 2
            refused_op = q.get(n)
            assert refused_op is not None and refused_op.last_error is not None
            assert "cannot connect" in refused_op.last_error
            kept.append(refused_op.last_error)
            http.close()
            refused.close()
        cs.flush_logs()
    finally:
        cs.set_log_level("warning")
    loggers = {r.name for r in caplog.records}
    assert {"cpcsync.http", "urllib3.connectionpool", "cpcsync"} <= loggers, loggers
    texts = [r.getMessage() for r in caplog.records] + [caplog.text] + kept
    texts += [str(r.args) for r in caplog.records]
    leaks = [t for t in texts if SECRET in t or MARKER in t]
    assert not leaks, leaks[:5]


def free_port() -> int:
    """A port nobody listens on (bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
