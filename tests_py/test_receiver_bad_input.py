"""Bad input to the receiver over HTTP, table-driven: each request gets its status and a
one-line reason, nothing is half-applied, and the receiver keeps serving. On each
backend (PostgreSQL: marked ``postgres``); the database going away mid-batch on
PostgreSQL is in test_receiver_postgres.py."""

from __future__ import annotations

import http.client
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cpcsync as cs
from cpcsync.server import Backend, Receiver, SqliteBackend
from cpcsync.testing import SyncServer

NOW_HLC = int(cs.HybridLogicalClock.pack(int(time.time() * 1000), 0))


def op(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "set",
        "key": "k",
        "payload": {"v": 1},
        "idempotency_key": "ik-1",
        "hlc": NOW_HLC,
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not ...}


def raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    if request.param == "sqlite":
        with SqliteBackend(tmp_path_factory.mktemp("rx") / "server.db") as b:
            yield b
        return
    # one database for the module (cpcsync_postgres_db makes one per test)
    psycopg = pytest.importorskip("psycopg")
    from psycopg import sql

    from cpcsync.server import PostgresBackend
    from cpcsync.testing.postgres import database_dsn

    dsn: str = request.getfixturevalue("cpcsync_postgres_dsn")
    name = f"cpcsync_bad_input_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with PostgresBackend(database_dsn(dsn, name), pool_size=4) as pb:
            yield pb
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="module")
def server(backend: Backend) -> Iterator[SyncServer]:
    def authorize(request: Any, body: dict[str, Any]) -> bool:
        return not str(body.get("key")).startswith("forbidden:")

    with SyncServer(receiver=Receiver(backend, authorize=authorize)) as s:
        yield s


def request(
    server: SyncServer,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], http.client.HTTPMessage]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}"), resp.headers
    finally:
        conn.close()


SURROGATE = b'{"kind": "set", "key": "\\ud800", "payload": 1, "idempotency_key": "s"}'
DEEP = b"[" * 100_000 + b"]" * 100_000

# (id, method, path, body, headers, status, words in the reason)
CASES: list[tuple[str, str, str, bytes, dict[str, str], int, str]] = [
    ("garbage", "POST", "/ops", b"not json", {}, 400, "malformed JSON"),
    ("not-utf8", "POST", "/ops", b'{"a": "\xff\xfe"}', {}, 400, "not UTF-8"),
    ("too-deep", "POST", "/ops", DEEP, {}, 400, "nested too deeply"),
    ("array", "POST", "/ops", raw([op()]), {}, 400, "JSON object"),
    (
        "no-ikey",
        "POST",
        "/ops",
        raw(op(idempotency_key=...)),
        {},
        400,
        "idempotency_key is required",
    ),
    ("empty-ikey", "POST", "/ops", raw(op(idempotency_key="")), {}, 400, "must not be empty"),
    ("int-ikey", "POST", "/ops", raw(op(idempotency_key=5)), {}, 400, "must be a string"),
    ("long-ikey", "POST", "/ops", raw(op(idempotency_key="x" * 2000)), {}, 400, "longer than"),
    ("int-key", "POST", "/ops", raw(op(key=7)), {}, 400, "key must be a string"),
    ("nul-key", "POST", "/ops", raw(op(key="a\x00b")), {}, 400, "NUL"),
    ("surrogate-key", "POST", "/ops", SURROGATE, {}, 400, "not valid Unicode"),
    ("no-payload", "POST", "/ops", raw(op(payload=...)), {}, 400, "payload or payload_b64"),
    ("both-payloads", "POST", "/ops", raw(op(payload_b64="AA==")), {}, 400, "not both"),
    ("bad-b64", "POST", "/ops", raw(op(payload=..., payload_b64="%%%")), {}, 400, "base64"),
    ("int-b64", "POST", "/ops", raw(op(payload=..., payload_b64=3)), {}, 400, "must be a string"),
    (
        "surrogate-payload",
        "POST",
        "/ops",
        b'{"key": "k", "payload": {"a": ["\\udc00"]}, "idempotency_key": "sp"}',
        {},
        400,
        "not valid Unicode",
    ),
    ("nan-payload", "POST", "/ops", b'{"payload": NaN, "idempotency_key": "n"}', {}, 400, "NaN"),
    ("negative-hlc", "POST", "/ops", raw(op(hlc=-1)), {}, 400, "hlc must be in"),
    ("huge-hlc", "POST", "/ops", raw(op(hlc=2**64)), {}, 400, "hlc must be in"),
    ("float-hlc", "POST", "/ops", raw(op(hlc=1.5)), {}, 400, "hlc must be an integer"),
    ("bool-hlc", "POST", "/ops", raw(op(hlc=True)), {}, 400, "hlc must be an integer"),
    ("future-hlc", "POST", "/ops", raw(op(hlc=NOW_HLC + (86400_000 << 16))), {}, 400, "ahead"),
    ("negative-version", "POST", "/ops", raw(op(base_version=-1)), {}, 400, "base_version"),
    ("huge-version", "POST", "/ops", raw(op(base_version=2**70)), {}, 400, "base_version"),
    ("string-version", "POST", "/ops", raw(op(base_version="3")), {}, 400, "base_version"),
    ("negative-id", "POST", "/ops", raw(op(id=-5)), {}, 400, "id must be in"),
    ("forbidden", "POST", "/ops", raw(op(key="forbidden:x")), {}, 403, "forbidden"),
    (
        "header-mismatch",
        "POST",
        "/ops",
        raw(op()),
        {"Idempotency-Key": "other"},
        400,
        "differ",
    ),
    ("batch-not-object", "POST", "/ops/batch", raw([]), {}, 400, '"ops"'),
    ("batch-ops-not-list", "POST", "/ops/batch", raw({"ops": {}}), {}, 400, '"ops"'),
    ("batch-int-device", "POST", "/ops/batch", raw({"ops": [], "device": 3}), {}, 400, "device"),
    (
        "batch-negative-low-water",
        "POST",
        "/ops/batch",
        raw({"ops": [], "device": "d", "low_water": -1}),
        {},
        400,
        "low_water",
    ),
    (
        "batch-10000-ops",
        "POST",
        "/ops/batch",
        raw({"ops": [{"idempotency_key": f"b{i}", "payload": 1} for i in range(10_000)]}),
        {},
        413,
        "at most 1000",
    ),
    ("changes-bad-cursor", "GET", "/changes?since=abc", b"", {}, 400, "cursor"),
    ("changes-zero-limit", "GET", "/changes?limit=0", b"", {}, 400, "limit"),
    ("changes-fraction-limit", "GET", "/changes?limit=1.5", b"", {}, 400, "limit"),
    ("changes-nan-wait", "GET", "/changes?wait=nan", b"", {}, 400, "wait"),
    ("changes-long-wait", "GET", "/changes?wait=9999", b"", {}, 400, "wait"),
    ("changes-twice", "GET", "/changes?limit=1&limit=2", b"", {}, 400, "more than once"),
    ("entity-not-utf8", "GET", "/entities/%FF", b"", {}, 400, "not UTF-8"),
    ("unknown-entity", "GET", "/entities/nope", b"", {}, 404, "no such key"),
    ("put-ops", "PUT", "/ops", raw(op()), {}, 405, "POST"),
    ("get-batch", "GET", "/ops/batch", b"", {}, 405, "POST"),
    ("post-changes", "POST", "/changes", b"{}", {}, 405, "GET"),
    ("unknown-path", "GET", "/nope", b"", {}, 404, "no such endpoint"),
    # (announced, not sent: the receiver answers before reading it)
    ("too-large", "POST", "/ops", b"", {"Content-Length": str(1_048_577)}, 413, "larger than"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "words"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_request_gets_its_status_and_one_line_reason(
    server: SyncServer,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    words: str,
) -> None:
    before = server.receiver.changes(limit=10_000)["cursor"]
    got, doc, _ = request(server, method, path, body, headers)
    reason = doc.get("error") or doc.get("reason") or ""
    assert (got, words in reason) == (status, True), doc
    assert "\n" not in reason
    # nothing applied, and the receiver still serves
    assert server.receiver.changes(before)["changes"] == []
    assert request(server, "GET", "/health")[0] == 200


def test_sql_metacharacters_are_data(server: SyncServer) -> None:
    key = "k'; DROP TABLE entities; --\"`\\%_"
    body = raw(op(key=key, idempotency_key="sql-1", payload="'); DELETE FROM changes; --"))
    assert request(server, "POST", "/ops", body)[0] == 200
    assert server.entity(key)["value"] == "'); DELETE FROM changes; --"  # type: ignore[index]
    quoted = "/entities/" + "".join(f"%{b:02X}" for b in key.encode())
    assert request(server, "GET", quoted)[1]["version"] == 1


def test_replayed_key_with_another_body_is_422_and_changes_nothing(server: SyncServer) -> None:
    first = raw(op(key="replay", idempotency_key="replay-1", payload=1))
    assert request(server, "POST", "/ops", first)[0] == 200
    other = raw(op(key="replay", idempotency_key="replay-1", payload=2))
    status, doc, _ = request(server, "POST", "/ops", other)
    assert (status, doc["status"]) == (422, "rejected")
    assert "another body" in doc["reason"]
    assert server.entity("replay")["value"] == 1  # type: ignore[index]


def test_a_batch_mixing_good_and_bad_ops_applies_the_good_ones(server: SyncServer) -> None:
    ops = [
        op(key="mix-1", idempotency_key="mix-1"),
        op(key="mix-2", idempotency_key="mix-2", hlc=-3),
        "not an op",
        op(key="forbidden:mix", idempotency_key="mix-3"),
        op(key="mix-4", idempotency_key="mix-4"),
    ]
    status, doc, _ = request(server, "POST", "/ops/batch", raw({"device": "d", "ops": ops}))
    assert status == 200
    assert [r["status"] for r in doc["results"]] == [
        "applied",
        "rejected",
        "rejected",
        "rejected",
        "applied",
    ]
    assert doc["results"][3]["reason"] == "forbidden"


def test_database_locked_mid_traffic_is_503_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    backend = SqliteBackend(path, busy_timeout=0.05)
    with SyncServer(receiver=Receiver(backend, record_ttl=None)) as server:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        batch = raw({"ops": [op(key="a", idempotency_key="a"), op(key="b", idempotency_key="b")]})
        status, doc, headers = request(server, "POST", "/ops/batch", batch)
        assert status == 503 and headers["Retry-After"] == "1"
        assert doc["error"].startswith("database unavailable")
        assert [r["status"] for r in doc["results"]] == ["retry_later", "retry_later"]
        status, doc, headers = request(server, "POST", "/ops", raw(op(idempotency_key="c")))
        assert (status, headers["Retry-After"]) == (503, "1")
        other.execute("ROLLBACK")
        other.close()
        assert server.log == []  # nothing half-applied
        status, doc, _ = request(server, "POST", "/ops/batch", batch)
        assert [r["status"] for r in doc["results"]] == ["applied", "applied"]
    backend.close()
