"""Child-process targets for tests_py/test_cli.py (multiprocessing, spawn start method).

Each child plays a queue's service: it holds the consumer role and reports through a
``Connection``. They never raise; an unexpected exception is sent as
``("error", "<repr>")`` so the parent's assertion shows it.
"""

from __future__ import annotations

import os
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

import cpcsync as cs

INITIAL = 20
"""Operations a service child enqueues before it reports "ready"."""


def _setup(q: cs.SyncQueue) -> tuple[list[int], int]:
    q.enqueue_many(
        [
            {"kind": "set", "payload": {"n": i}, "key": f"u{i}", "priority": 100 if i < 5 else 50}
            for i in range(INITIAL)
        ]
    )
    q.acquire_consumer()
    taken = q.take(3)
    q.dead_letter(taken[0].id, "boom: HTTP 400")
    return [op.id for op in taken[1:]], taken[0].id


def child_service(path: str, conn: Connection, stop: Event) -> None:
    """Consume ``path`` and keep enqueuing until ``stop`` is set.

    Sends ``("ready", pid, in_flight_ids, dead_id)`` once it holds the consumer role
    with 2 ops in flight and 1 dead letter; then enqueues one op after another
    ("live:<n>", key None). It answers each "count" on the pipe with the number of
    those enqueues committed so far, and sends ``("stopped", count)`` when done.
    """
    try:
        with cs.SyncQueue.open(path, durability="normal") as q:
            in_flight, dead = _setup(q)
            conn.send(("ready", os.getpid(), in_flight, dead))
            count = 0
            while not stop.is_set():
                q.enqueue("live", {"n": count})
                count += 1
                if conn.poll() and conn.recv() == "count":
                    conn.send(("count", count))
            conn.send(("stopped", count))
    except Exception as exc:
        conn.send(("error", repr(exc)))
    finally:
        conn.close()


def child_dies_holding_leases(path: str, conn: Connection) -> None:
    """Set up like :func:`child_service`, report "ready", then die on "die" without
    closing the queue (its 2 in-flight ops stay in flight in the file)."""
    try:
        q = cs.SyncQueue.open(path, durability="normal")
        in_flight, dead = _setup(q)
        conn.send(("ready", os.getpid(), in_flight, dead))
        conn.recv()
    except Exception as exc:
        conn.send(("error", repr(exc)))
    conn.close()
    os._exit(0)
