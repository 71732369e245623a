"""The demo's client process: a service that keeps accepting work while offline.

Run by the demo's orchestrator (``python -m cpcsync.demo.client ...``), killed and
restarted midway. Simulated users enqueue operations of every priority on a fixed,
seeded schedule into a SQLite queue; an engine delivers them through HttpTransport
(via the FaultProxy) while a TcpProbe monitor says the link is up. It reports to the
orchestrator as JSON lines on stdout, and keeps two files the verdict reads:

- ``ledger.jsonl``: one line per operation *before* it is enqueued (the intent); a
  restarted client re-enqueues its last intent (same idempotency key: the server
  applies it once however often it arrives) and goes on from there;
- ``superseded.jsonl``: idempotency keys of operations a conflict resolved in favour
  of the server's value (they are complete without being applied);

and ``versions.jsonl``, the server version of each key as this client last knew it
(what a real client keeps with its local copy), so a restarted client goes on sending
the right base versions instead of conflicting once on every key.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cpcsync as cs
from cpcsync.http import HttpTransport, OperationLike

PRIORITIES = (
    (cs.Priority.CRITICAL, 0.1),
    (cs.Priority.HIGH, 0.2),
    (cs.Priority.MEDIUM, 0.3),
    (cs.Priority.LOW, 0.4),
)
KINDS = {100: "record_payment", 75: "update_record", 50: "add_note", 25: "log_visit"}


def planned_op(seed: int, i: int, entities: int) -> dict[str, Any]:
    """The i-th user operation of a run: the same for a given seed, in any process."""
    rnd = random.Random(seed * 1_000_003 + i)
    r, acc, priority = rnd.random(), 0.0, int(cs.Priority.LOW)
    for p, share in PRIORITIES:
        acc += share
        if r < acc:
            priority = int(p)
            break
    key = f"patient:{rnd.randrange(entities)}"
    return {
        "i": i,
        "kind": KINDS[priority],
        "key": key,
        "priority": priority,
        "payload": {"i": i, "by": "clinic-7", "value": rnd.randrange(1000)},
        "idempotency_key": f"demo-{seed}-{i}",
    }


class _Versioned:
    """An operation as sent: the queue's op with the base version this client knows."""

    def __init__(self, op: cs.Operation, base_version: int | None) -> None:
        self._op = op
        self.base_version = base_version

    def __getattr__(self, name: str) -> Any:
        return getattr(self._op, name)


def load_versions(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """What ``path`` keeps (JSON lines ``{"key", "version", "op"}``, the last line of a
    key wins; a torn last line from a kill mid-write is ignored): key -> the server
    version this client knows, and key -> the idempotency key of the last operation
    this client saw applied to it (absent when the version came from a conflict).
    Both empty if there is no file."""
    versions: dict[str, int] = {}
    last_ops: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return versions, last_ops
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            key, version, op = str(rec["key"]), int(rec["version"]), rec.get("op")
        except (ValueError, KeyError, TypeError):
            continue
        versions[key] = version
        if op is None:
            last_ops.pop(key, None)
        else:
            last_ops[key] = str(op)
    return versions, last_ops


class VersionedTransport:
    """HttpTransport plus optimistic concurrency: each keyed write carries the version
    of the key this client last saw, so a write another device made in between comes
    back as a conflict (409) for the resolver. The versions are kept in
    ``versions_path`` (see :func:`load_versions`) and survive a restart. Also notes
    whether a call is the first after a reconnect, and what was ready then (for the
    "critical first" verdict)."""

    def __init__(
        self,
        http: HttpTransport,
        queue: cs.SyncQueue,
        monitor: cs.NetworkMonitor,
        report: Any,
        versions_path: Path,
    ) -> None:
        self._http = http
        self._queue = queue
        self._monitor = monitor
        self._report = report
        self._versions, self._last_ops = load_versions(versions_path)
        # Appended and flushed on every change: the page cache keeps it across a
        # SIGKILL of this process (the demo's kill), which is all the demo needs.
        self._versions_file = versions_path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self._transitions_seen = -1

    def _set_version(self, key: str, version: int, op: str | None) -> None:
        # (called with self._lock held)
        self._versions[key] = version
        if op is None:
            self._last_ops.pop(key, None)
        else:
            self._last_ops[key] = op
        if self._versions_file.closed:  # a call still running after close()
            return
        rec = {"key": key, "version": version, "op": op}
        self._versions_file.write(json.dumps(rec) + "\n")
        self._versions_file.flush()

    def version(self, key: str) -> int:
        """The server version of ``key`` this client knows (0: none)."""
        with self._lock:
            return self._versions.get(key, 0)

    def close(self) -> None:
        """Close the versions file."""
        with self._lock:
            self._versions_file.close()

    def __call__(self, op: cs.Operation) -> None:
        self._check_first_after_reconnect(op)
        base = op.base_version
        if base is None and op.key is not None:
            with self._lock:
                base = self._versions.get(op.key, 0)
        sent: OperationLike = _Versioned(op, base)
        self._http.send(sent)
        if op.key is not None:
            with self._lock:
                # A client killed after the server applied `op` and after it noted the
                # new version, but before the queue's ack, sends `op` again when it
                # restarts: the server answers "duplicate" and the version stays.
                if self._last_ops.get(op.key) != op.idempotency_key:
                    self._set_version(op.key, (base or 0) + 1, op.idempotency_key)

    def adopt(self, key: str | None, version: int | None) -> None:
        """The server's version of `key` (learned from a conflict)."""
        if key is not None and version is not None:
            with self._lock:
                self._set_version(key, version, None)

    def _check_first_after_reconnect(self, op: cs.Operation) -> None:
        transitions = int(self._monitor.stats()["transitions"])
        if transitions == self._transitions_seen:
            return
        self._transitions_seen = transitions
        # A key's effective priority is the highest among its pending ops (priority
        # inheritance): a LOW head goes first when a CRITICAL op waits behind it.
        # Compare with the queue as it was when the engine took `op` (op.taken_at):
        # ops enqueued or come due between that take and this call (a wide gap on a
        # loaded machine or under ASan) were not there to choose.
        taken_at = op.taken_at if op.taken_at is not None else time.time()
        lanes: dict[str, list[cs.Operation]] = {}
        for o in self._queue.peek(100_000):
            if o.created_at <= taken_at:
                lanes.setdefault(o.key if o.key is not None else f"#{o.id}", []).append(o)
        eff = {k: max(o.priority for o in v) for k, v in lanes.items()}
        ready = [
            eff[k]
            for k, v in lanes.items()
            if min(v, key=lambda o: o.id).next_attempt_at <= taken_at
        ]
        mine = max(op.priority, eff.get(op.key, 0)) if op.key is not None else op.priority
        self._report(
            {
                "event": "first_after_reconnect",
                "priority": mine,
                "max_ready": max(ready, default=mine),
            }
        )


class Client:
    """One run of the client process (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(args.workdir)
        self._out_lock = threading.Lock()
        self.queue = cs.SyncQueue.open(self.workdir / "outbox.db", durability="full")
        self.monitor = cs.NetworkMonitor(
            connected=False,
            probe=cs.TcpProbe("127.0.0.1", args.proxy_port, timeout=0.3),
            interval=0.25,
        )
        self.http = HttpTransport(f"http://127.0.0.1:{args.proxy_port}/ops", timeout=2.0)
        self.transport = VersionedTransport(
            self.http, self.queue, self.monitor, self.emit, self.workdir / "versions.jsonl"
        )
        self.engine = cs.SyncEngine(
            self.queue,
            self.transport,
            monitor=self.monitor,
            backoff=cs.ExponentialBackoff(
                base=0.1, factor=2.0, max_delay=1.0, jitter="full", seed=args.seed
            ),
            resolver=cs.LastWriteWins(),
            max_attempts=10_000,
        )
        self.engine.on("conflict", self._on_conflict)
        self.engine.on("superseded", self._on_superseded)
        self._superseded = (self.workdir / "superseded.jsonl").open("a", encoding="utf-8")
        self._ledger = (self.workdir / "ledger.jsonl").open("a+", encoding="utf-8")

    def emit(self, record: dict[str, Any]) -> None:
        """One JSON line to the orchestrator."""
        with self._out_lock:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()

    def _on_conflict(self, info: dict[str, Any]) -> None:
        op = info["op"]
        self.transport.adopt(op.key, info.get("remote_version"))

    def _on_superseded(self, info: dict[str, Any]) -> None:
        op = info["op"]
        self.transport.adopt(op.key, info.get("remote_version"))
        self._superseded.write(json.dumps({"idempotency_key": op.idempotency_key}) + "\n")
        self._superseded.flush()
        os.fsync(self._superseded.fileno())

    def _resume_index(self) -> int:
        self._ledger.seek(0)
        last = -1
        for line in self._ledger:
            try:
                last = max(last, int(json.loads(line)["i"]))
            except (ValueError, KeyError):
                continue  # a torn last line from a kill mid-write
        return max(last, 0)

    def _enqueue(self, i: int) -> None:
        op = planned_op(self.args.seed, i, self.args.entities)
        self._ledger.write(
            json.dumps({k: op[k] for k in ("i", "key", "priority", "idempotency_key")}) + "\n"
        )
        self._ledger.flush()
        os.fsync(self._ledger.fileno())
        self.queue.enqueue(
            op["kind"],
            op["payload"],
            key=op["key"],
            priority=op["priority"],
            idempotency_key=op["idempotency_key"],
        )

    def _network(self) -> str:
        # The monitor starts out assuming "down" until its probes have seen the link
        # come up: "connecting" until its first transition, not a reported outage.
        m = self.monitor.stats()
        if m["connected"]:
            return "online"
        return "offline" if m["transitions"] else "connecting"

    def _status(self, next_i: int) -> dict[str, Any]:
        s = self.engine.stats()
        return {
            "event": "status",
            "t": time.time() - self.args.epoch,
            "connected": self.monitor.is_connected,
            "network": self._network(),
            "depth": {str(p): n for p, n in s["depth_by_priority"].items()},
            "pending": s["pending"],
            "in_flight": s["in_flight"],
            "delivered": s["delivered"],
            "retried": s["retried"],
            "conflicts": s["conflicts"],
            "superseded": s["superseded"],
            "dead_lettered": s["dead_lettered"],
            "enqueued": next_i,
            "pid": os.getpid(),
        }

    def run(self) -> int:
        """Enqueue on schedule while delivering; exit once done and drained."""
        args = self.args
        i = self._resume_index()
        self.emit({"event": "started", "pid": os.getpid(), "resume_at": i})
        self.monitor.start()
        self.engine.start()
        total = int(args.users_until * args.rate)
        next_status = 0.0
        try:
            while True:
                now = time.time() - args.epoch
                while i < total and i / args.rate <= now:
                    self._enqueue(i)
                    i += 1
                if now >= next_status:
                    self.emit(self._status(i))
                    next_status = now + 0.2
                if i >= total and len(self.queue) == 0:
                    break
                if now > args.deadline:
                    self.emit({"event": "deadline", "pending": len(self.queue)})
                    return 1
                # Pace the simulated users: the next op's time or the next status line.
                due = min(next_status, i / args.rate if i < total else next_status)
                time.sleep(max(0.0, min(0.05, due - now)))
            self.emit(self._status(i))
            self.emit({"event": "done", "t": time.time() - args.epoch})
            return 0
        finally:
            self.engine.stop(timeout=5)
            self.monitor.stop()
            self.http.close()
            self.transport.close()
            self.queue.close()


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this process when the demo that started it dies (however it
    dies), so no client outlives its demo."""
    if not sys.platform.startswith("linux") or parent_pid <= 0:
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the demo died before the prctl
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the client process."""
    p = argparse.ArgumentParser(prog="cpcsync.demo.client")
    p.add_argument("--workdir", required=True)
    p.add_argument("--proxy-port", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--entities", type=int, default=40)
    p.add_argument("--epoch", type=float, required=True)
    p.add_argument("--users-until", type=float, required=True)
    p.add_argument("--deadline", type=float, required=True)
    p.add_argument("--parent-pid", type=int, default=0, help="die with this process (Linux)")
    args = p.parse_args(argv)
    _die_with_parent(args.parent_pid)
    return Client(args).run()


if __name__ == "__main__":
    sys.exit(main())
