"""Scale-out, proven: receiver processes on one database, 200 devices, a bad network,
a receiver SIGKILLed and restarted mid-run (issue 15).

Two `cpcsync serve` processes share one database (PostgreSQL: what scale-out means;
SQLite: the same file from two processes). 200 devices, each a real SyncQueue file and
SyncEngine in batch mode over HttpTransport, run in 4 client processes
(tests_py/_scale_out_client.py) and reach the receivers through FaultProxies that add
latency and reset connections. When a third of the ops are in, one receiver is
SIGKILLed and started again on its port. Then, from the database:

- every enqueued op was applied exactly once or superseded by its device's resolver
  (never both, never neither), nothing applied that nobody enqueued;
- on each device's own keys the ops were applied in the order they were enqueued;
- each shared key ended with the value of the write with the highest HLC (conflicts
  resolved the same way whatever the arrival order);
- the idempotency table was pruned below each device's low water;
- the same idempotency key sent to both receivers at once is applied once.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cpcsync.testing import FaultProxy

pytestmark = pytest.mark.slow

CLIENTS, DEVICES, PER_DEVICE, BATCH, SHARED_KEYS = 4, 200, 30, 10, 5
CLIENT = Path(__file__).with_name("_scale_out_client.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll an outside process's state (a server starting, rows arriving)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Receiver:
    """One `cpcsync serve` process on a fixed port."""

    def __init__(self, db: str, port: int) -> None:
        self.db, self.port = db, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cpcsync", "serve", "--db", self.db, "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        until(lambda: healthy(self.port), f"the receiver on port {self.port}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


class Db:
    """Reads the receivers' database directly (SQLite file or PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.url.startswith("sqlite:///"):
            db = sqlite3.connect(self.url[len("sqlite:///") :], timeout=30)
            try:
                return db.execute(sql).fetchall()
            finally:
                db.close()
        import psycopg

        with psycopg.connect(self.url) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture(params=["postgres", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'server.db'}"
    request.applymarker(pytest.mark.postgres)
    return str(request.getfixturevalue("cpcsync_postgres_db"))


@pytest.fixture
def receivers(db_url: str) -> Iterator[list[Receiver]]:
    rs = [Receiver(db_url, free_port()) for _ in range(2)]
    try:
        for r in rs:
            r.start()
        yield rs
    finally:
        for r in rs:
            r.stop()


def post(port: int, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/ops",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return dict(json.loads(r.read()))


def race(ports: list[int], body: dict[str, Any]) -> list[str]:
    """POST one op to every port at the same moment; the statuses."""
    answers: list[str] = []
    barrier = threading.Barrier(len(ports))

    def send(port: int) -> None:
        barrier.wait()
        answers.append(post(port, body)["status"])

    threads = [threading.Thread(target=send, args=(port,)) for port in ports]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_receivers_on_one_database_apply_every_op_once(
    receivers: list[Receiver], db_url: str, tmp_path: Path
) -> None:
    db = Db(db_url)
    proxies = [
        FaultProxy(upstream=("127.0.0.1", r.port), seed=i).start() for i, r in enumerate(receivers)
    ]
    try:
        for p in proxies:
            p.add_toxic("latency", latency=5, jitter=5)
            p.add_toxic("reset_peer", stream="upstream", toxicity=0.05, timeout=0)
        urls = [f"http://127.0.0.1:{p.address[1]}/ops" for p in proxies]
        per_client = DEVICES // CLIENTS
        clients = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(CLIENT),
                    json.dumps(
                        {
                            "workdir": str(tmp_path),
                            "urls": urls,
                            "first": i * per_client,
                            "count": per_client,
                            "per_device": PER_DEVICE,
                            "batch": BATCH,
                            "shared_keys": SHARED_KEYS,
                            "timeout": 600,
                        }
                    ),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(CLIENTS)
        ]
        total = DEVICES * PER_DEVICE
        until(
            lambda: db.rows("SELECT count(*) FROM changes")[0][0] >= total // 3,
            "a third of the ops",
            timeout=300,
        )
        receivers[0].kill()  # mid-run, with batches in flight
        receivers[0].start()
        reports = []
        for c in clients:
            out, _ = c.communicate(timeout=900)
            assert c.returncode == 0
            reports.append(json.loads(out.strip().splitlines()[-1]))
        assert all(r == {"drained": True, "left": 0} for r in reports), reports
    finally:
        for p in proxies:
            p.stop()

    # The same idempotency key at both receivers at once: applied once.
    race_keys = []
    for n in range(20):
        body = {"kind": "set", "key": f"race:{n}", "payload": n, "idempotency_key": f"race-{n}"}
        assert sorted(race([r.port for r in receivers], body)) == ["applied", "duplicate"]
        race_keys.append(body["idempotency_key"])

    ledger: list[dict[str, Any]] = []
    superseded: set[str] = set()
    for i in range(CLIENTS):
        doc = json.loads((tmp_path / f"ledger-{i * (DEVICES // CLIENTS)}.json").read_text())
        ledger += doc["ledger"]
        superseded |= set(doc["superseded"])
        assert doc["dead_letter"] == []
    assert len(ledger) == total

    changes = db.rows("SELECT seq, key, value, idempotency_key FROM changes ORDER BY seq")
    counts = Counter(ikey for _, _, _, ikey in changes)
    assert [k for k, n in counts.items() if n > 1] == [], "applied twice"
    enqueued = {e["ikey"] for e in ledger}
    applied = set(counts) - set(race_keys)
    assert applied <= enqueued, "applied, never enqueued"
    assert applied.isdisjoint(superseded), "applied and superseded"
    assert applied | superseded == enqueued, "neither applied nor superseded"
    assert superseded, "no conflict was exercised"

    # per-key order on each device's own keys
    order: dict[str, list[int]] = defaultdict(list)
    for _, key, value, _ in changes:
        if key and not key.startswith(("shared:", "race:")):
            order[key].append(json.loads(value)["j"])
    assert len(order) == DEVICES * 3
    assert all(js == sorted(js) for js in order.values())

    # shared keys: the write with the highest HLC won, whatever arrived last
    final = {k: json.loads(v) for k, v in db.rows("SELECT key, value FROM entities")}
    for n in range(SHARED_KEYS):
        writes = [e for e in ledger if e["key"] == f"shared:{n}"]
        top = max(writes, key=lambda e: e["hlc"])
        if sum(e["hlc"] == top["hlc"] for e in writes) == 1:
            assert final[f"shared:{n}"] == {"d": top["d"], "j": top["j"]}

    # pruned below each device's low water: at most the last batch of each is kept
    records = db.rows("SELECT count(*) FROM idempotency")[0][0]
    assert records <= DEVICES * BATCH + len(race_keys) < len(applied)
    print(
        f"\n[scale-out] {db_url.split(':')[0]}: {len(applied)} applied, {len(superseded)} "
        f"superseded, {records} idempotency records kept of {len(counts)}",
        file=sys.stderr,
    )
