"""Child process for the seed's "storage failure" row (tests_py/test_seed_matrix.py).

Run as ``python _storage_child.py MODE QUEUE_FILE`` (``run_child`` does, from a
test); prints one JSON object (the observations) as its last line of stdout, and
exits 0 unless something unexpected escaped. The parent asserts on the
observations, so a failure shows what happened.

Storage "fails" for real: SIGXFSZ is ignored and the soft RLIMIT_FSIZE is lowered to
0, so every write(2) to a regular file fails with EFBIG and SQLite reports an I/O
error (the limit applies to root too). Raising the limit back is "storage restored".
stdout and stderr must be pipes (the parent captures them): the limit does not
apply to pipes, so reporting keeps working while writes to files fail.

MODE ``queue``: enqueue/take/ack/retry while storage fails, then recover.
MODE ``engine``: storage fails between a delivery and its acknowledgement (the
transport succeeds, the local ack cannot be written), then storage comes back and a
Simulation runs the engine to idle.
MODE ``disk_full``: at each durability level, enqueue and enqueue_many while the disk
is full, then again once it has room (tests_py/test_storage_faults.py).
"""

from __future__ import annotations

import functools
import json
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cpcsync as cs
from cpcsync.testing import FaultyTransport, Simulation

_SOFT, _HARD = resource.getrlimit(resource.RLIMIT_FSIZE)


def storage_fails() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, _HARD))


def storage_restored() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (_SOFT, _HARD))


def attempt(fn: Callable[[], Any]) -> dict[str, Any]:
    """Run ``fn`` and describe what happened: its result, or the exception raised."""
    try:
        result = fn()
    except Exception as exc:
        cause = exc.__cause__
        return {
            "raised": type(exc).__name__,
            "is_storage_error": isinstance(exc, cs.StorageError),
            "is_sync_error": isinstance(exc, cs.SyncError),
            "message": str(exc),
            "cause": None if cause is None else type(cause).__name__,
            "cause_message": None if cause is None else str(cause),
            "sqlite_code": getattr(exc, "sqlite_code", None),
            "cause_sqlite_code": getattr(cause, "sqlite_code", None),
        }
    return {"returned": result}


def counts(q: cs.SyncQueue) -> dict[str, int]:
    s = q.stats()
    return {"len": len(q), "pending": s["pending"], "in_flight": s["in_flight"], "dead": s["dead"]}


def drain_by_hand(q: cs.SyncQueue) -> list[dict[str, Any]]:
    """take + ack until empty, as a consumer would; the delivered ops in order."""
    out: list[dict[str, Any]] = []
    while True:
        ops = q.take(1)
        if not ops:
            return out
        for op in ops:
            out.append({"id": op.id, "key": op.key, "payload": op.json()})
            q.ack(op.id)


def run_queue(path: str) -> dict[str, Any]:
    obs: dict[str, Any] = {}
    q = cs.SyncQueue.open(path, durability="full")
    # Acknowledged enqueues: each returned, so each is stored durably.
    acked = [q.enqueue("put", {"seq": i}, key=f"k{i % 3}") for i in range(9)]
    leased = q.take(2)  # heads of k0 and k1
    q.ack(leased[0].id)  # delivered and acknowledged: gone for good
    in_flight = leased[1].id
    obs["acked_enqueues"] = acked
    obs["removed"] = leased[0].id
    obs["in_flight"] = in_flight
    obs["before"] = counts(q)
    obs["peek_before"] = [o.id for o in q.peek(100)]

    storage_fails()
    obs["failing"] = {
        "enqueue": attempt(lambda: q.enqueue("put", {"lost": 1}, key="k9")),
        "enqueue_many": attempt(
            lambda: q.enqueue_many([{"kind": "put", "payload": {"lost": 2}, "key": "k9"}])
        ),
        "take": attempt(lambda: [o.id for o in q.take(5)]),
        "ack": attempt(lambda: q.ack(in_flight)),
        "retry": attempt(lambda: q.retry(in_flight, 1.0, error="x")),
        "dead_letter": attempt(lambda: q.dead_letter(in_flight, "x")),
    }
    # Reads still work while writes fail, and nothing changed.
    obs["during"] = counts(q)
    obs["peek_during"] = [o.id for o in q.peek(100)]

    storage_restored()
    obs["enqueue_after"] = attempt(lambda: q.enqueue("put", {"after": 1}, key="k9"))
    obs["ack_after"] = attempt(lambda: q.ack(in_flight))
    obs["drained"] = drain_by_hand(q)
    obs["after"] = counts(q)
    q.close()
    with cs.SyncQueue.open(path) as reopened:  # what is on disk
        obs["reopened"] = counts(reopened)
    return obs


def run_engine(path: str) -> dict[str, Any]:
    obs: dict[str, Any] = {}
    clock = cs.VirtualClock(start=0.0)
    q = cs.SyncQueue.open(path, durability="normal", clock=clock)
    ids = [q.enqueue("put", {"seq": i}, key=f"k{i % 3}") for i in range(9)]
    calls: list[int] = []
    fail_storage_on = ids[4]  # k1's second write: delivered, then its ack cannot be written

    def far_end(op: cs.Operation) -> None:
        calls.append(op.id)
        if op.id == fail_storage_on and calls.count(op.id) == 1:
            storage_fails()  # the server has it; now the local disk is full

    ft = FaultyTransport(inner=far_end, seed=0, clock=clock)
    monitor = cs.NetworkMonitor(connected=True, clock=clock)
    engine = cs.SyncEngine(
        q,
        ft,
        monitor=monitor,
        clock=clock,
        backoff=cs.ExponentialBackoff(base=1.0, factor=2.0, max_delay=60.0, jitter="none"),
        max_attempts=5,
    )
    sim = Simulation(engine, monitor=monitor, transport=ft)
    obs["ids"] = ids
    obs["fail_storage_on"] = fail_storage_on
    obs["while_failing"] = attempt(lambda: sim.run_until_idle(limit=60))
    storage_restored()
    obs["restored_at"] = clock.now()
    obs["after_restore"] = attempt(lambda: sim.run_until_idle(limit=600))
    obs["calls"] = calls
    obs["counts"] = counts(q)
    obs["dead"] = [o.id for o in q.dead_letters()]
    obs["stuck"] = [
        {"id": o.id, "state": o.state}
        for o in (q.get(i) for i in ids)
        if o is not None and o.state != "dead"
    ]
    ft.close()
    engine.stop()
    q.close()
    return obs


def run_disk_full(path: str) -> dict[str, Any]:
    obs: dict[str, Any] = {}
    many = [{"kind": "put", "payload": {"n": i}, "key": "b"} for i in range(3)]
    for durability in ("full", "normal", "off"):
        with cs.SyncQueue.open(f"{path}.{durability}", durability=durability) as q:
            kept = q.enqueue("put", {"n": 1}, key="a")
            storage_fails()
            seen = {
                "enqueue": attempt(functools.partial(q.enqueue, "put", {"n": 2}, key="a")),
                "enqueue_many": attempt(functools.partial(q.enqueue_many, many)),
                "len_during": len(q),
            }
            storage_restored()
            seen["enqueue_after"] = attempt(functools.partial(q.enqueue, "put", {"n": 3}, key="a"))
            seen["ids"] = [o.id for o in q.peek(100)]
            seen["kept"] = kept
            obs[durability] = seen
    return obs


_MODES: dict[str, Callable[[str], dict[str, Any]]] = {
    "queue": run_queue,
    "engine": run_engine,
    "disk_full": run_disk_full,
}


def run_child(mode: str, path: Path) -> dict[str, Any]:
    """Runs this script as a child in ``mode`` on ``path``; its observations."""
    proc = subprocess.run(
        [sys.executable, __file__, mode, str(path)],
        capture_output=True,  # pipes: RLIMIT_FSIZE does not apply to them
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"child printed nothing; stderr:\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main() -> int:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    mode, path = sys.argv[1], sys.argv[2]
    obs = _MODES[mode](path)
    sys.stdout.write(json.dumps(obs) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
