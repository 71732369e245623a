"""Helpers for the tests: snapshots, file fingerprints, a timed probe, child-process targets.

The ``child_*`` functions are targets for ``multiprocessing`` with the *spawn*
start method: they live in a module the child can import by name (pytest puts
tests_py/ on sys.path, and spawn passes sys.path on to the child). Each reports
back through a ``Connection`` and never raises: an unexpected exception is sent
as ``("error", "<repr>")`` so the parent's assertion shows it.
"""

from __future__ import annotations

import os
import stat
import threading
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import cpcsync as cs


def is_uuid4(text: object) -> bool:
    """True for the canonical string form of a version-4 UUID."""
    if not isinstance(text, str):
        return False
    try:
        u = uuid.UUID(text)
    except ValueError:
        return False
    return u.version == 4 and str(u) == text


SIDECAR_SUFFIXES = ("-wal", "-shm")


def op_tuple(op: Any) -> tuple[Any, ...]:
    """Every attribute of an operation that must survive storage, as a comparable tuple."""
    return (
        op.id,
        op.kind,
        op.key,
        bytes(op.payload),
        int(op.priority),
        op.idempotency_key,
        op.hlc,
        op.created_at,
        op.attempts,
        op.next_attempt_at,
        op.last_error,
        op.state,
    )


def queue_snapshot(q: Any) -> dict[str, Any]:
    """What a failed call must leave unchanged: len, pending ops, dead letters, counts."""
    stats = q.stats()
    return {
        "len": len(q),
        "peek": [op_tuple(o) for o in q.peek(10_000)],
        "dead": [op_tuple(o) for o in q.dead_letters()],
        "counts": {k: stats[k] for k in ("pending", "in_flight", "dead", "bytes")},
    }


def file_fingerprint(path: Path) -> tuple[bytes, int, int]:
    """Contents, size and mtime (ns) of a file: a failed open must leave all three alone."""
    st = os.stat(path)
    return path.read_bytes(), st.st_size, st.st_mtime_ns


def existing_sidecars(path: Path) -> list[str]:
    """The SQLite -wal / -shm files that exist next to ``path``."""
    return [s for s in SIDECAR_SUFFIXES if Path(str(path) + s).exists()]


def file_mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --------------------------------------------------------------------------
# child-process targets (multiprocessing, spawn)


def child_try_consume(path: str, conn: Connection) -> None:
    """Opens the queue, enqueues one op (producers are always allowed), then tries to take.

    Sends ``("enqueued", id)`` and then ``("took", n)`` or
    ``("raised", class name, is SyncError, len before, len after)``.
    """
    try:
        with cs.SyncQueue.open(path) as q:
            conn.send(("enqueued", q.enqueue("from-child", b"x", key="child")))
            before = len(q)
            try:
                ops = q.take(10)
            except Exception as exc:
                conn.send(
                    ("raised", type(exc).__name__, isinstance(exc, cs.SyncError), before, len(q))
                )
            else:
                conn.send(("took", len(ops)))
    except Exception as exc:
        conn.send(("error", repr(exc)))
    finally:
        conn.close()


def child_enqueue_when_told(path: str, conn: Connection) -> None:
    """Opens the queue, says "ready", waits for "go", enqueues one op and sends its id."""
    try:
        with cs.SyncQueue.open(path, durability="normal") as q:
            conn.send(("ready",))
            msg = conn.recv()
            assert msg == "go", msg
            conn.send(("enqueued", q.enqueue("ping", {"from": "child"}, key="wake")))
            assert conn.recv() == "bye"
    except Exception as exc:
        conn.send(("error", repr(exc)))
    finally:
        conn.close()


def child_producer(path: str, producer: int, n: int, keys: int, conn: Connection) -> None:
    """Producer ``producer``: waits for "go", enqueues ``n`` ops round-robin over ``keys`` keys.

    Key ``p{producer}:k{j % keys}``; payload ``{"p", "k", "seq"}`` with ``seq`` the
    op's number within its key. Sends ``("done", [ids])``.
    """
    try:
        with cs.SyncQueue.open(path, durability="normal") as q:
            conn.send(("ready",))
            assert conn.recv() == "go"
            seqs = [0] * keys
            ids = []
            for j in range(n):
                k = j % keys
                ids.append(
                    q.enqueue(
                        "put",
                        {"p": producer, "k": k, "seq": seqs[k]},
                        key=f"p{producer}:k{k}",
                        priority=(25, 50, 75, 100)[j % 4],
                    )
                )
                seqs[k] += 1
            conn.send(("done", ids))
    except Exception as exc:
        conn.send(("error", repr(exc)))
    finally:
        conn.close()


def child_read_only_inspect(path: str, conn: Connection) -> None:
    """Opens the queue read-only and reports len, stats counts, pending ids and dead ids."""
    try:
        with cs.SyncQueue.open(path, read_only=True) as q:
            stats = q.stats()
            conn.send(
                (
                    "inspected",
                    len(q),
                    {k: stats[k] for k in ("pending", "in_flight", "dead")},
                    [o.id for o in q.peek(100)],
                    [o.id for o in q.dead_letters()],
                )
            )
    except Exception as exc:
        conn.send(("error", repr(exc)))
    finally:
        conn.close()


def recv(conn: Connection, timeout: float = 30.0) -> Any:
    """Receives one message, failing (not hanging) if none comes within ``timeout``."""
    if not conn.poll(timeout):
        raise AssertionError(f"no message from the child process within {timeout} s")
    msg = conn.recv()
    if isinstance(msg, tuple) and msg and msg[0] == "error":
        raise AssertionError(f"child process failed: {msg[1]}")
    return msg


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


class TimedProbe:
    """A probe callable that records ``clock.now()`` at every call and answers True."""

    def __init__(self, clock: cs.Clock) -> None:
        self.clock = clock
        self.times: list[float] = []
        self._cond = threading.Condition()

    def __call__(self) -> bool:
        with self._cond:
            self.times.append(self.clock.now())
            self._cond.notify_all()
        return True

    def wait_calls(self, n: int, timeout: float) -> bool:
        """Waits up to ``timeout`` real seconds until there were ``n`` calls."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.times) >= n, timeout=timeout)
