"""Child process of test_crash_loop.py: enqueues while its engine delivers over HTTP.

Usage::

    python _crash_loop_child.py run   QUEUE LEDGER URL SEED FIRST_SEQ COUNT
    python _crash_loop_child.py drain QUEUE LEDGER URL

``run`` opens the queue (durability "full"), starts a SyncEngine (two workers) that
delivers through :class:`cpcsync.HttpTransport` to the parent's SyncServer, then
enqueues ``COUNT`` operations with sequence numbers from ``FIRST_SEQ``. Before each
enqueue it appends the *intent* to the ledger (one JSON line, flushed and fsynced),
so a crash can never leave an operation nobody meant. After the last enqueue it
waits until the engine is idle, says so, and blocks until the parent kills it.

``drain`` delivers whatever is left (on this thread, no workers), closes the queue
and exits 0.

Protocol: one line per event on stdout, flushed at once, written under a lock (the
engine's threads write too), so the parent knows exactly which calls had
*returned* when it sent SIGKILL:

    R                   the queue is open and the engine started
    E <seq> <op id>     enqueue of <seq> returned <op id>
    S <idem>            the transport is about to POST the op with idempotency key <idem>
    D <idem>            the engine reported <idem> delivered (the ack is written)
    W                   all enqueues returned and the engine is idle
    Q                   (drain) the queue is empty and closed
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
from typing import Any

import cpcsync as cs

_out_lock = threading.Lock()


def emit(line: str) -> None:
    """Write one protocol line to the parent and flush it."""
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class ReportingTransport:
    """HttpTransport that first tells the parent which op it is about to send."""

    def __init__(self, url: str) -> None:
        self.http = cs.HttpTransport(url, timeout=10.0)

    def __call__(self, op: cs.Operation) -> None:
        emit(f"S {op.idempotency_key}")
        self.http(op)


def idempotency_key(seq: int) -> str:
    """The idempotency key of sequence number ``seq`` (the ledger and the server use it)."""
    return f"op-{seq:06d}"


def run(queue_path: str, ledger_path: str, url: str, seed: int, first: int, count: int) -> None:
    """Enqueue ``count`` ops while the engine delivers; then wait to be killed."""
    rng = random.Random(seed)
    q = cs.SyncQueue.open(queue_path, durability="full")
    transport = ReportingTransport(url)
    engine = cs.SyncEngine(
        q,
        transport,
        backoff=cs.ConstantBackoff(0.01),
        max_attempts=1_000_000,  # never dead-letter: the server is always there
        concurrency=2,
    )
    engine.on("delivered", lambda info: emit(f"D {info['op'].idempotency_key}"))
    engine.start()
    emit("R")
    fd = os.open(ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for seq in range(first, first + count):
        key = f"k{rng.randrange(3)}" if rng.random() < 0.8 else None
        idem = idempotency_key(seq)
        intent: dict[str, Any] = {"seq": seq, "key": key, "idem": idem}
        os.write(fd, (json.dumps(intent) + "\n").encode())
        os.fsync(fd)
        op_id = q.enqueue(
            "put",
            {"seq": seq},
            key=key,
            idempotency_key=idem,
            priority=rng.choice([25, 50, 75, 100]),
        )
        emit(f"E {seq} {op_id}")
    os.close(fd)
    engine.wait_idle(30.0)
    emit("W")
    sys.stdin.read()  # the parent kills us (or closes stdin: then stop cleanly)
    engine.stop()
    q.close()


def drain(queue_path: str, url: str) -> None:
    """Deliver everything left on this thread, then close."""
    with cs.SyncQueue.open(queue_path, durability="full") as q:
        engine = cs.SyncEngine(q, ReportingTransport(url), backoff=cs.ConstantBackoff(0.01))
        engine.drain(timeout=60.0)
        left = len(q)
        if left:
            raise SystemExit(f"drain left {left} ops")
    emit("Q")


def main() -> None:
    """Dispatch on the mode argument."""
    mode = sys.argv[1]
    if mode == "run":
        queue_path, ledger, url, seed, first, count = sys.argv[2:8]
        run(queue_path, ledger, url, int(seed), int(first), int(count))
    elif mode == "drain":
        drain(sys.argv[2], sys.argv[4])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
