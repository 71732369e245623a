"""Crash safety: SIGKILL a process in the middle of enqueue/take/ack; nothing is lost.

A child (``_crash_child.py``) enqueues in a loop and takes/acks some ops, printing
one flushed line per returned call. The parent reads a random (seeded) number of
lines, then SIGKILLs the child; it synchronises only on those lines. After the
kill:

* every id whose enqueue returned and whose ack was not started is in the queue,
  with the payload and key it was enqueued with;
* no op whose ack returned is in the queue;
* ops that were in flight are pending again, attempts kept, and are delivered;
* the only ids present that the child did not print are the (at most one) op whose
  enqueue committed just before the kill;
* ``PRAGMA integrity_check`` is "ok" (sqlite3 module, read-only, after closing).
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import cpcsync as cs

CHILD = Path(__file__).resolve().with_name("_crash_child.py")
ROUNDS = 10


@dataclass
class ChildLog:
    enqueued: dict[int, tuple[int, str | None]] = field(default_factory=dict)  # id -> (seq, key)
    taken: set[int] = field(default_factory=set)
    ack_started: set[int] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)


def parse(lines: list[str]) -> ChildLog:
    log = ChildLog()
    for line in lines:
        if not line.endswith("\n"):
            continue  # (a partial last line would be a write the kill cut short)
        parts = line.split()
        tag, op_id = parts[0], int(parts[1])
        if tag == "E":
            log.enqueued[op_id] = (int(parts[2]), None if parts[3] == "-" else parts[3])
        elif tag == "T":
            log.taken.add(op_id)
        elif tag == "a":
            log.ack_started.add(op_id)
        elif tag == "A":
            log.acked.add(op_id)
        else:
            raise AssertionError(f"unexpected line from the child: {line!r}")
    return log


def run_and_kill(path: Path, durability: str, seed: int, kill_after: int) -> list[str]:
    """Runs the child until it has printed ``kill_after`` lines, SIGKILLs it, returns all lines.

    Every line the child wrote before it died is returned, including those it wrote
    between our read of line ``kill_after`` and the kill: they are read from the
    same buffered stream (``communicate`` would bypass its read-ahead buffer).
    """
    with subprocess.Popen(
        [sys.executable, str(CHILD), str(path), durability, str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        watchdog = threading.Timer(60.0, proc.kill)  # a safety net against a hung child only
        watchdog.start()
        try:
            lines: list[str] = []
            while len(lines) < kill_after:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line)
            proc.send_signal(signal.SIGKILL)
            lines += proc.stdout.readlines()  # up to EOF: the child is dead
            err = proc.stderr.read()
            proc.wait(timeout=30)
        finally:
            watchdog.cancel()
            watchdog.join()
            if proc.poll() is None:
                proc.kill()
    assert len(lines) >= kill_after, f"the child stopped early: {err}"
    assert proc.returncode == -signal.SIGKILL, f"child exited with {proc.returncode}: {err}"
    return lines


def integrity_check(path: Path) -> list[tuple[str, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute("PRAGMA integrity_check").fetchall()


@pytest.mark.parametrize("round_", range(ROUNDS))
@pytest.mark.parametrize("durability", ["full", "normal"])
def test_sigkill_loses_no_returned_enqueue(tmp_path: Path, durability: str, round_: int) -> None:
    seed = (1 if durability == "full" else 2) * 1000 + round_
    kill_after = random.Random(seed).randint(1, 160)
    path = tmp_path / "outbox.db"
    log = parse(run_and_kill(path, durability, seed, kill_after))
    assert log.enqueued, "the child printed no enqueue"

    with cs.SyncQueue.open(str(path)) as q:
        stats = q.stats()
        assert stats["in_flight"] == 0  # the dead consumer's leases are gone
        pending = {op.id: op for op in q.peek(1_000_000)}
        assert len(q) == len(pending) == stats["pending"]

        must_have = set(log.enqueued) - log.ack_started
        missing = sorted(must_have - set(pending))
        assert not missing, f"lost ops whose enqueue had returned: {missing}"
        resurrected = sorted(log.acked & set(pending))
        assert not resurrected, f"acked ops came back: {resurrected}"
        unknown = set(pending) - set(log.enqueued)
        assert unknown <= {max(log.enqueued) + 1}, f"ids nobody enqueued: {sorted(unknown)}"

        for op_id, op in pending.items():
            assert op.state == "pending"
            if op_id in log.enqueued:
                seq, key = log.enqueued[op_id]
                assert (json.loads(op.payload), op.key) == ({"seq": seq}, key)
            if op_id in log.taken:
                assert op.attempts == 1, f"op {op_id} was taken once; attempts {op.attempts}"
            else:
                assert op.attempts in (0, 1)
        # only the very last take (2 ops at most) can have committed without its "T" line
        assert sum(1 for i, op in pending.items() if op.attempts and i not in log.taken) <= 2

        # everything left is deliverable: the former in-flight ops included, each key in order
        delivered: list[int] = []
        for _ in range(len(pending) + 1):
            ops = q.take(1000)
            if not ops:
                break
            for op in ops:
                delivered.append(op.id)
                q.ack(op.id)
        assert sorted(delivered) == sorted(pending)
        for key in {op.key for op in pending.values() if op.key is not None}:
            lane = [i for i in delivered if pending[i].key == key]
            assert lane == sorted(lane), f"key {key} delivered out of order: {lane}"
        assert len(q) == 0

    assert integrity_check(path) == [("ok",)]
