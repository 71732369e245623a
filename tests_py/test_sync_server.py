"""cpcsync.testing.SyncServer over real sockets: idempotency, versions, 409, fail_next,
delay, persistence, connection accounting. Requests are made with http.client so the
server is tested independently of HttpTransport."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cpcsync.testing import SyncServer


@pytest.fixture
def server() -> Iterator[SyncServer]:
    with SyncServer() as s:
        yield s


def op_body(key: str | None = "k", payload: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": 1,
        "kind": "set",
        "key": key,
        "payload": {"v": 1} if payload is None else payload,
        "priority": 50,
        "idempotency_key": str(uuid.uuid4()),
        "hlc": 1000,
        "base_version": None,
    }
    body.update(extra)
    return body


class Client:
    """One kept-alive http.client connection to the server."""

    def __init__(self, server: SyncServer) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

    def post(
        self, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> tuple[int, dict[str, Any], http.client.HTTPMessage]:
        data = raw if raw is not None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        self.conn.request("POST", "/ops", body=data, headers=hdrs)
        resp = self.conn.getresponse()
        doc = json.loads(resp.read())
        return resp.status, doc, resp.headers

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def client(server: SyncServer) -> Iterator[Client]:
    c = Client(server)
    yield c
    c.close()


def test_url_and_port(server: SyncServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}/ops"
    assert server.port > 0


def test_apply_versions_and_hlc(server: SyncServer, client: Client) -> None:
    for i in range(3):
        status, doc, _ = client.post(op_body(payload={"n": i}, hlc=100 + i))
        assert status == 200
        assert doc == {"status": "applied", "version": i + 1, "hlc": 100 + i}
    assert server.applied == {"k": {"value": {"n": 2}, "version": 3, "hlc": 102}}
    assert [b["payload"] for b in server.received] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_repeated_idempotency_key_applied_once_acknowledged_twice(
    server: SyncServer, client: Client
) -> None:
    body = op_body(payload={"n": 1})
    first = {"status": "applied", "version": 1, "hlc": 1000}
    assert client.post(body)[0:2] == (200, first)
    # the first result, replayed
    assert client.post(body)[0:2] == (200, dict(first, status="duplicate"))
    assert server.applied["k"]["version"] == 1
    assert len(server.received) == 2
    assert len(server.log) == 1


def test_idempotency_key_from_header(server: SyncServer, client: Client) -> None:
    body = op_body()
    ikey = body.pop("idempotency_key")
    assert client.post(body, {"Idempotency-Key": ikey})[0] == 200
    assert client.post(body, {"Idempotency-Key": ikey})[1]["status"] == "duplicate"
    mismatched = op_body()
    assert client.post(mismatched, {"Idempotency-Key": "other"})[0] == 400


def test_stale_base_version_gets_409_with_remote(server: SyncServer, client: Client) -> None:
    client.post(op_body(payload={"n": 1}, hlc=5))
    client.post(op_body(payload={"n": 2}, hlc=6))
    stale = op_body(payload={"n": 3}, base_version=1, hlc=7)
    status, doc, _ = client.post(stale)
    assert status == 409
    assert doc == {
        "status": "conflict",
        "value": {"n": 2},
        "version": 2,
        "hlc": 6,
        "deleted": False,
    }
    assert server.applied["k"]["version"] == 2
    # The same op resent against the current version is applied: a 409 does not use
    # up its idempotency key.
    stale["base_version"] = 2
    assert client.post(stale)[0:2] == (200, {"status": "applied", "version": 3, "hlc": 7})
    assert server.applied["k"] == {"value": {"n": 3}, "version": 3, "hlc": 7}


def test_base_version_on_unknown_key(server: SyncServer, client: Client) -> None:
    status, doc, _ = client.post(op_body(key="new", base_version=4))
    assert status == 409
    assert doc == {"status": "conflict", "value": None, "version": 0, "hlc": None, "deleted": False}
    assert client.post(op_body(key="new", base_version=0))[0] == 200


def test_keyless_ops_go_to_the_log_only(server: SyncServer, client: Client) -> None:
    status, doc, _ = client.post(op_body(key=None, payload=[1, 2]))
    assert (status, doc) == (200, {"status": "applied", "version": None, "hlc": 1000})
    assert server.applied == {}
    assert [b["payload"] for b in server.log] == [[1, 2]]


def test_binary_payload_kept_as_b64(server: SyncServer, client: Client) -> None:
    body = op_body()
    del body["payload"]
    body["payload_b64"] = "AAEC"
    assert client.post(body)[0] == 200
    assert server.applied["k"]["value"] == {"payload_b64": "AAEC"}


@pytest.mark.parametrize(
    ("raw", "reached"),
    [(b"not json", 0), (b"[1]", 0), (json.dumps({"key": "k", "payload": 1}).encode(), 1)],
    ids=["garbage", "not-object", "no-idempotency-key"],
)
def test_malformed_is_400(server: SyncServer, client: Client, raw: bytes, reached: int) -> None:
    status, doc, _ = client.post(None, raw=raw)
    assert status == 400
    assert "\n" not in (doc.get("error") or doc.get("reason"))  # one line
    # an object reaches the receiver (which rejects it); anything else does not
    assert len(server.received) == reached
    assert len(server.requests) == 1
    assert server.log == []


def test_fail_next_with_retry_after(server: SyncServer, client: Client) -> None:
    server.fail_next(2, status=429, retry_after=7)
    body = op_body()
    for _ in range(2):
        status, _, headers = client.post(body)
        assert status == 429
        assert headers["Retry-After"] == "7"
    assert server.applied == {}
    assert server.received == []
    assert client.post(body)[0] == 200
    assert len(server.requests) == 3
    assert server.received == [body]


def test_fail_next_without_retry_after(server: SyncServer, client: Client) -> None:
    server.fail_next(1)
    status, _, headers = client.post(op_body())
    assert status == 503
    assert "Retry-After" not in headers


def test_fail_next_validates(server: SyncServer) -> None:
    with pytest.raises(ValueError):
        server.fail_next(-1)
    with pytest.raises(ValueError):
        server.fail_next(1, status=200)


def test_keep_alive_counts_one_connection(server: SyncServer, client: Client) -> None:
    for _ in range(5):
        client.post(op_body())
    assert server.connections == 1
    other = Client(server)
    try:
        other.post(op_body())
    finally:
        other.close()
    assert server.connections == 2


def test_state_persists_in_its_file(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    with SyncServer(path) as s:
        c = Client(s)
        body = op_body(payload={"n": 1})
        c.post(body)
        c.close()
    assert path.exists()
    with SyncServer(path) as s:
        assert s.applied["k"]["version"] == 1
        c = Client(s)
        assert c.post(body)[1]["status"] == "duplicate"
        c.close()


def test_temp_file_deleted_on_stop() -> None:
    s = SyncServer().start()
    path = s.path
    assert os.path.exists(path)
    s.stop()
    s.stop()  # idempotent
    assert not os.path.exists(path)


def test_stop_closes_kept_alive_connections_and_interrupts_delay() -> None:
    s = SyncServer().start()
    c = Client(s)
    c.post(op_body())
    s.delay = 60.0
    errors: list[BaseException] = []
    started = threading.Event()

    def slow() -> None:
        other = Client(s)
        started.set()
        try:
            other.post(op_body())
        except (OSError, http.client.HTTPException) as exc:
            errors.append(exc)
        finally:
            other.close()

    t = threading.Thread(target=slow)
    t.start()
    started.wait()
    # stop() must return although a request is being delayed and a connection is idle.
    s.stop()
    t.join(30)
    assert not t.is_alive()
    c.close()


def test_concurrent_posts_are_each_applied_once(server: SyncServer) -> None:
    bodies = [op_body(key=f"k{i % 4}", payload={"i": i}) for i in range(40)]
    barrier = threading.Barrier(4)

    def worker(part: list[dict[str, Any]]) -> None:
        c = Client(server)
        barrier.wait()
        try:
            for b in part:
                assert c.post(b)[0] == 200
                assert c.post(b)[1]["status"] == "duplicate"
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(bodies[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    applied = server.applied
    assert sorted(applied) == ["k0", "k1", "k2", "k3"]
    assert all(rec["version"] == 10 for rec in applied.values())
    assert len(server.received) == 80
    assert len(server.log) == 40


def test_not_started_raises() -> None:
    s = SyncServer()
    try:
        with pytest.raises(RuntimeError):
            _ = s.url
    finally:
        s.stop()


def test_get_entities_serves_one_key() -> None:
    import json as _json
    import urllib.error
    import urllib.parse
    import urllib.request

    with SyncServer() as server:
        key = "user:42/ü"
        body = {"kind": "set", "key": key, "payload": {"v": 1}, "idempotency_key": "k1"}
        req = urllib.request.Request(
            server.url,
            data=_json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()
        base = server.url.rsplit("/", 1)[0]
        with urllib.request.urlopen(f"{base}/entities/{urllib.parse.quote(key, safe='')}") as r:
            served = _json.loads(r.read())
        # an op without an hlc is stamped by the receiver's clock
        assert served == {"value": {"v": 1}, "version": 1, "hlc": served["hlc"], "deleted": False}
        assert isinstance(served["hlc"], int) and served["hlc"] > 0
        assert server.entity(key) == served
        assert server.entity("nope") is None
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/entities/nope")
        assert err.value.code == 404
        err.value.close()


def test_a_script_that_never_stops_its_server_still_exits(tmp_path: Path) -> None:
    # Before: handler threads were non-daemon, so a script that raised before
    # server.stop() hung at exit while a client kept an idle keep-alive connection.
    script = tmp_path / "forgetful.py"
    script.write_text(
        "import http.client, json\n"
        "from cpcsync.testing import SyncServer\n"
        "server = SyncServer().start()\n"
        "conn = http.client.HTTPConnection('127.0.0.1', server.port)\n"
        "body = json.dumps({'id': 1, 'kind': 'k', 'key': 'a', 'payload': {},\n"
        "                   'idempotency_key': 'i1', 'hlc': 1})\n"
        "conn.request('POST', '/ops', body, {'Content-Type': 'application/json'})\n"
        "assert conn.getresponse().read() is not None  # the connection stays open\n"
        "print('served', flush=True)\n"
        "raise SystemExit(3)  # no server.stop(), no conn.close()\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "served" in proc.stdout, proc.stderr
    assert proc.returncode == 3
