"""A receiver SIGKILLed at random moments leaves each batch applied entirely or not
at all: every idempotency record has its change and its key's version, nothing else.

The child applies batches of ops to one SQLite file in a loop, printing each batch's
number when apply_batch returned; the parent kills it at a random moment (after a
random number of batches, plus a random fraction of a millisecond: most kills land
inside a transaction), checks the file, and starts the next child, which first
resends the last complete batch (all duplicates) and goes on from the one cut.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

CHILD = r"""
import json, sys
from cpcsync.server import Receiver, SqliteBackend

path, first = sys.argv[1], int(sys.argv[2])
rx = Receiver(SqliteBackend(path))

def batch(n):
    return [{"kind": "set", "key": f"k{(n * 7 + i) % 13}", "payload": {"batch": n, "i": i},
             "idempotency_key": f"b{n}-{i}", "id": n * 10 + i} for i in range(8)]

if first > 0:  # the last complete batch, resent after the restart: duplicates only
    statuses = {r["status"] for r in rx.apply_batch(batch(first - 1), device="d")}
    print(json.dumps({"resent": first - 1, "statuses": sorted(statuses)}), flush=True)
n = first
while True:
    rx.apply_batch(batch(n), device="d", low_water=max(0, (n - 50) * 10))
    print(json.dumps({"done": n}), flush=True)
    n += 1
"""


def check(path: Path) -> int:
    """The file's invariants; returns the number of complete batches in it."""
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        changes = db.execute(
            "SELECT key, idempotency_key, version, value FROM changes ORDER BY seq"
        )
        rows = changes.fetchall()
        ikeys = [r[1] for r in rows]
        assert len(ikeys) == len(set(ikeys)), "an op applied twice"
        per_batch = Counter(k.split("-")[0] for k in ikeys)
        assert set(per_batch.values()) <= {8}, f"a batch half-applied: {per_batch}"
        counts = Counter(r[0] for r in rows)
        last = {r[0]: (r[2], r[3]) for r in rows}
        for key, version, value in db.execute("SELECT key, version, value FROM entities"):
            assert version == counts[key], f"{key}: version {version}, {counts[key]} changes"
            assert (version, value) == last[key]
        records = {k for (k,) in db.execute("SELECT idempotency_key FROM idempotency")}
        assert records <= set(ikeys), "a record without its change"
        return len(per_batch)
    finally:
        db.close()


def test_sigkill_at_any_moment_leaves_whole_batches(tmp_path: Path) -> None:
    rounds = int(os.environ.get("CPCSYNC_CRASH_ROUNDS", "25"))
    rng = random.Random(20261204)
    path = tmp_path / "server.db"
    first = 0
    for _ in range(rounds):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(first)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        if first > 0:
            resent = json.loads(child.stdout.readline())
            assert resent["statuses"] == ["duplicate"], resent
        for _ in range(rng.randrange(1, 6)):
            line = child.stdout.readline()
            assert line, "the child died on its own"
        time.sleep(rng.random() / 1000)  # where in the next batch the kill lands
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        first = check(path)  # batches 0..first-1 whole, the one cut (if any) absent
    assert first >= rounds
