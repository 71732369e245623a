"""Crash loop: SIGKILL a delivering process at random moments, many times; nothing is lost.

A child process (``_crash_loop_child.py``) opens a queue (durability "full"), starts
a SyncEngine that delivers through :class:`cpcsync.HttpTransport` to a
:class:`~cpcsync.testing.SyncServer` in this process, and enqueues a few operations,
writing each *intent* to a ledger (fsynced) before the enqueue and reporting each
returned enqueue (and each POST started, each delivery) on its stdout. The parent
reads those lines and SIGKILLs the child after a randomly chosen one (seeded; some
rounds hold every request on the server so the kill lands while a POST is in
flight), checks the invariants, and starts the next child on the same files.

After every kill, and at the end (after a last child drained the queue):

* ``PRAGMA integrity_check`` of the queue file is "ok" (sqlite3, read-only, before
  anything reopens the file);
* no operation is in flight or dead-lettered once the queue is reopened;
* every enqueue that returned is pending in the queue or applied on the server;
* the server applied every idempotency key at most once (``server.log``), and only
  keys some child meant (the ledger); an intent line the kill tore was never enqueued;
* per key, the server applied operations in sequence order, and nothing still
  undelivered in the queue precedes something the server applied;
* every pending operation carries the payload and key its intent recorded.

The run is deterministic in its choices (seed ``CPCSYNC_CRASH_SEED``), not in thread
timing. ``CPCSYNC_CRASH_ROUNDS`` (default 100) sets the number of kills: for example
``CPCSYNC_CRASH_ROUNDS=2000 pytest tests_py/test_crash_loop.py`` for a long run.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cpcsync as cs
from cpcsync.testing import SyncServer

CHILD = Path(__file__).resolve().with_name("_crash_loop_child.py")
ROUNDS = int(os.environ.get("CPCSYNC_CRASH_ROUNDS", "100"))
SEED = int(os.environ.get("CPCSYNC_CRASH_SEED", "8"))
LINE_TIMEOUT = 60.0  # a hang guard only: every wait below ends on a line from the child


def idempotency_key(seq: int) -> str:
    """Same as the child's (kept in step by test_child_and_parent_agree_on_keys)."""
    return f"op-{seq:06d}"


class Child:
    """A child process whose stdout lines arrive on a queue (read by a thread)."""

    def __init__(self, args: list[str], stderr_path: Path) -> None:
        self._stderr_file: IO[bytes] = stderr_path.open("wb")
        self.stderr_path = stderr_path
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def stderr(self) -> str:
        """What the child wrote to stderr so far."""
        self._stderr_file.flush()
        return self.stderr_path.read_text(errors="replace")

    def next_line(self) -> str | None:
        """The next complete line, or None at EOF; fails after LINE_TIMEOUT (a hang)."""
        try:
            line = self.lines.get(timeout=LINE_TIMEOUT)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(
                f"the child said nothing for {LINE_TIMEOUT}s: {self.stderr()}"
            ) from None
        if line is None:
            return None
        if not line.endswith("\n"):
            return self.next_line()  # a write the kill cut short (then EOF)
        return line.rstrip("\n")

    def kill(self) -> list[str]:
        """SIGKILL; every complete line written before death (not read yet), in order."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=LINE_TIMEOUT)
        self._reader.join(timeout=LINE_TIMEOUT)
        rest: list[str] = []
        while (line := self.next_line()) is not None:
            rest.append(line)
        self.close()
        assert self.proc.returncode == -signal.SIGKILL, self.stderr()
        return rest

    def close(self) -> None:
        """Release the pipes and the stderr file."""
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._stderr_file.close()


@dataclass
class Ledger:
    """What the children meant (the ledger file) and said (their stdout)."""

    intents: dict[str, tuple[int, str | None]] = field(default_factory=dict)  # idem -> seq, key
    torn: set[str] = field(default_factory=set)  # intents cut short by a kill
    returned: set[str] = field(default_factory=set)  # idems whose enqueue returned
    next_seq: int = 1

    def read(self, path: Path) -> None:
        """Re-read the ledger file; cut a torn last line (its enqueue never started)."""
        if not path.exists():
            return
        data = path.read_bytes()
        complete, _, tail = data.rpartition(b"\n")
        for line in complete.splitlines():
            intent = json.loads(line)
            self.intents[intent["idem"]] = (int(intent["seq"]), intent["key"])
            self.next_seq = max(self.next_seq, int(intent["seq"]) + 1)
        if tail:
            # the intent after the last complete one; its seq is never used again
            self.torn.add(idempotency_key(self.next_seq))
            self.next_seq += 1
            with path.open("r+b") as f:
                f.truncate(len(complete) + 1 if complete else 0)


def integrity_check(path: Path) -> list[tuple[Any, ...]]:
    """``PRAGMA integrity_check`` through Python's sqlite3, read-only."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute("PRAGMA integrity_check").fetchall()


@dataclass
class Figures:
    """What the run did, for the assertion messages and docs/reliability.md."""

    rounds: int = 0
    kills_mid_post: int = 0  # a POST had started and its delivery was not reported
    kills_before_ready: int = 0  # while opening the queue / starting the engine
    applied_not_acked: set[str] = field(default_factory=set)  # applied, not acked: redelivered
    ops: int = 0


def check_invariants(
    queue_path: Path, server: SyncServer, ledger: Ledger, figures: Figures, final: bool = False
) -> None:
    """Every invariant of the module docstring, on the files as the kill left them."""
    if queue_path.exists():
        assert integrity_check(queue_path) == [("ok",)]
    with cs.SyncQueue.open(str(queue_path), durability="full") as q:
        stats = q.stats()
        assert stats["in_flight"] == 0, "a dead consumer's leases survived the reopen"
        dead = q.dead_letters()
        assert dead == [], f"dead letters: {[(o.idempotency_key, o.last_error) for o in dead]}"
        pending = {op.idempotency_key: op for op in q.peek(10**7)}
        assert len(pending) == len(q)
    log = server.log
    counts = Counter(body["idempotency_key"] for body in log)
    twice = sorted(k for k, n in counts.items() if n > 1)
    assert not twice, f"applied more than once: {twice}"
    applied = set(counts)

    lost = sorted(ledger.returned - set(pending) - applied)
    assert not lost, f"enqueue returned, but neither pending nor applied: {lost}"
    unknown = sorted((set(pending) | applied) - set(ledger.intents))
    assert not unknown, f"ops nobody meant (not in the ledger): {unknown}"
    assert not (ledger.torn & (set(pending) | applied)), "a torn intent was enqueued"
    for idem, op in pending.items():
        seq, key = ledger.intents[idem]
        assert (json.loads(op.payload), op.key) == ({"seq": seq}, key), idem

    applied_seqs: dict[str | None, list[int]] = {}
    for body in log:
        seq, key = ledger.intents[body["idempotency_key"]]
        assert body["payload"] == {"seq": seq} and body["key"] == key
        applied_seqs.setdefault(key, []).append(seq)
    undelivered: dict[str | None, list[int]] = {}
    for idem in set(pending) - applied:
        seq, key = ledger.intents[idem]
        undelivered.setdefault(key, []).append(seq)
    for key, seqs in applied_seqs.items():
        if key is None:
            continue
        assert seqs == sorted(seqs), f"key {key} applied out of order: {seqs}"
        waiting = undelivered.get(key)
        assert not waiting or min(waiting) > max(seqs), (
            f"key {key}: {min(waiting or [0])} is undelivered but {max(seqs)} was applied"
        )
    figures.applied_not_acked |= set(pending) & applied
    if final:
        assert not pending, f"left in the queue after the drain: {sorted(pending)}"
        assert ledger.returned <= applied
        figures.ops = len(applied)


def run_round(
    rng: random.Random,
    tmp_path: Path,
    queue_path: Path,
    ledger_path: Path,
    server: SyncServer,
    ledger: Ledger,
    figures: Figures,
) -> None:
    """One life of the child: start it, kill it at a random line, read what it said."""
    count = rng.randint(1, 6)
    mid_post = rng.random() < 0.35
    server.delay = rng.choice([0.005, 0.02]) if mid_post else 0.0
    # kill after this many lines (0: at once, maybe before the queue is even open) ...
    kill_after = rng.randint(0, 3 * count + 2)
    # ... or, in a mid-POST round, right after the child starts its j-th POST
    post_target = rng.randint(1, count)
    child = Child(
        [
            "run",
            str(queue_path),
            str(ledger_path),
            server.url,
            str(rng.randrange(2**32)),
            str(ledger.next_seq),
            str(count),
        ],
        tmp_path / "child-stderr.txt",
    )
    said: list[str] = []
    posts = 0
    if mid_post or kill_after > 0:
        while (line := child.next_line()) is not None:
            said.append(line)
            posts += line.startswith("S ")
            if line == "W":
                break  # idle: killed while idle
            if (mid_post and posts >= post_target) or (not mid_post and len(said) >= kill_after):
                break
        else:
            raise AssertionError(f"the child exited: {child.stderr()}")
    said += child.kill()

    started = {line[2:] for line in said if line.startswith("S ")}
    delivered = {line[2:] for line in said if line.startswith("D ")}
    if started - delivered:
        figures.kills_mid_post += 1
    if "R" not in said:
        figures.kills_before_ready += 1
    ledger.read(ledger_path)
    for line in said:
        if line.startswith("E "):
            _, seq, _op_id = line.split()
            ledger.returned.add(idempotency_key(int(seq)))
    figures.rounds += 1


def test_child_and_parent_agree_on_keys() -> None:
    sys.path.insert(0, str(CHILD.parent))
    try:
        import _crash_loop_child
    finally:
        sys.path.remove(str(CHILD.parent))
    assert _crash_loop_child.idempotency_key(42) == idempotency_key(42)


def test_sigkill_loop_loses_nothing_and_applies_once(tmp_path: Path) -> None:
    queue_path = tmp_path / "outbox.db"
    ledger_path = tmp_path / "ledger.jsonl"
    rng = random.Random(SEED)
    ledger = Ledger()
    figures = Figures()
    started = time.monotonic()
    with SyncServer(path=tmp_path / "server.db") as server:
        for _ in range(ROUNDS):
            run_round(rng, tmp_path, queue_path, ledger_path, server, ledger, figures)
            check_invariants(queue_path, server, ledger, figures)

        server.delay = 0.0
        child = Child(
            ["drain", str(queue_path), str(ledger_path), server.url], tmp_path / "drain.txt"
        )
        lines = []
        while (line := child.next_line()) is not None:
            lines.append(line)
        assert child.proc.wait(timeout=LINE_TIMEOUT) == 0, child.stderr()
        child.close()
        assert lines[-1] == "Q"
        check_invariants(queue_path, server, ledger, figures, final=True)

    elapsed = time.monotonic() - started
    print(
        f"\ncrash loop: {figures.rounds} kills ({figures.kills_mid_post} mid-POST, "
        f"{figures.kills_before_ready} before the engine ran), {figures.ops} ops applied once, "
        f"{len(figures.applied_not_acked)} applied but not acknowledged before a kill, "
        f"{len(ledger.returned)} enqueues returned, in {elapsed:.1f}s"
    )
    assert figures.rounds == ROUNDS
    assert figures.ops >= len(ledger.returned) > 0
    if ROUNDS >= 50:  # the seeded plan must have hit the interesting moments
        assert figures.kills_mid_post >= 5, figures
        assert figures.kills_before_ready >= 1, figures
        assert figures.applied_not_acked, "no kill landed between a POST and its ack"
