"""The engine group: delivery throughput, engine overhead, reconnect latency.

- Throughput through a no-op Python transport, batch_size 1 (a call per op) and 100
  (send_batch gets 100 ops per call), on an in-memory queue so the queue's disk
  cost does not hide the engine's own.
- Engine overhead per op: the batch-1 engine time per op minus the same no-op
  transport called directly from Python (the reference row).
- Reconnect latency: 1,000,000 LOW ops queued, the monitor offline, one CRITICAL op
  enqueued; the time from `set_connected(True)` to the transport being called with
  the CRITICAL op. 100 trials. Beside it, a bare wake-up: one Python thread setting a
  threading.Event another thread waits on, measured the same way.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cpcsync as cs
from harness import Case, Group, Measurement, percentile

BACKLOG = 1_000_000
TRIALS = 100


def _noop(op: cs.Operation) -> None:
    pass


class _Batcher:
    def __call__(self, op: cs.Operation) -> None:
        pass

    def send_batch(self, ops: list[cs.Operation]) -> None:
        return None  # every op delivered


def _throughput(n: int, batch: int) -> Measurement:
    q = cs.SyncQueue.in_memory()
    q.enqueue_many([{"kind": "k", "payload": b"x" * 100} for _ in range(n)])
    engine = cs.SyncEngine(q, _Batcher() if batch > 1 else _noop, batch_size=batch)
    t0 = time.perf_counter_ns()
    summary = engine.drain()
    wall = time.perf_counter_ns() - t0
    if summary.successful != n or len(q):
        raise RuntimeError(f"engine delivered {summary.successful} of {n}")
    q.close()
    return Measurement(n, wall, [wall // n] * 1, per="op (mean)", note=f"batch_size={batch}")


def engine_batch_1(d: Path, n: int) -> Measurement:
    return _throughput(n, 1)


def engine_batch_100(d: Path, n: int) -> Measurement:
    return _throughput(n, 100)


def direct_call(d: Path, n: int) -> Measurement:
    q = cs.SyncQueue.in_memory()
    q.enqueue("k", b"x" * 100)
    (op,) = q.take(1)
    t0 = time.perf_counter_ns()
    for _ in range(n):
        _noop(op)
    wall = time.perf_counter_ns() - t0
    q.close()
    return Measurement(n, wall, [wall // n], per="op (mean)", note="the no-op transport alone")


def reconnect(d: Path, n: int) -> Measurement:
    q = cs.SyncQueue.in_memory()
    for start in range(0, BACKLOG, 100_000):
        q.enqueue_many(
            [
                {"kind": "low", "payload": b"x", "key": f"k{i}", "priority": 25}
                for i in range(start, start + 100_000)
            ]
        )
    monitor = cs.NetworkMonitor(connected=False)
    arrived = threading.Event()
    seen_at = [0]

    def transport(op: cs.Operation) -> None:
        if op.kind == "critical":
            seen_at[0] = time.perf_counter_ns()
            monitor.set_connected(False)  # pause again for the next trial
            arrived.set()

    engine = cs.SyncEngine(q, transport, monitor=monitor)
    engine.start()
    samples: list[int] = []
    try:
        for _ in range(n):
            arrived.clear()
            q.enqueue("critical", b"!", priority=100)
            assert engine.wait_idle(timeout=30)
            t0 = time.perf_counter_ns()
            monitor.set_connected(True)
            if not arrived.wait(30):
                raise RuntimeError("the CRITICAL op was not delivered")
            samples.append(seen_at[0] - t0)
    finally:
        engine.stop(timeout=30)
    q.close()
    return Measurement(
        n, sum(samples), samples, per="reconnect", note=f"{BACKLOG:,} LOW ops queued"
    )


def bare_wakeup(d: Path, n: int) -> Measurement:
    go, done = threading.Event(), threading.Event()
    woke = [0]
    stop = [False]

    def waiter() -> None:
        while True:
            go.wait()
            go.clear()
            if stop[0]:
                return
            woke[0] = time.perf_counter_ns()
            done.set()

    t = threading.Thread(target=waiter)
    t.start()
    samples = []
    for _ in range(n):
        done.clear()
        t0 = time.perf_counter_ns()
        go.set()
        done.wait()
        samples.append(woke[0] - t0)
    stop[0] = True
    go.set()
    t.join()
    return Measurement(n, sum(samples), samples, per="wake-up", note="threading.Event")


def _checks(results: dict[str, Measurement]) -> list[str]:
    out = []
    b100 = results.get("engine.batch100")
    if b100:
        ok = b100.ops_per_s >= 100_000
        out.append(
            f"- Engine throughput at batch 100: {b100.ops_per_s:,.0f} ops/s "
            f"(target >= 100,000: {'PASS' if ok else 'MISS'})."
        )
    b1, direct = results.get("engine.batch1"), results.get("engine.direct")
    if b1 and direct:
        overhead = b1.wall_ns / b1.ops - direct.wall_ns / direct.ops
        out.append(f"- Engine overhead per op (batch 1, no-op transport): {overhead / 1e3:.2f} µs.")
    rc, bare = results.get("engine.reconnect"), results.get("engine.wakeup")
    if rc and bare:
        p99 = percentile(rc.latencies_ns, 99) / 1e3
        bare99 = percentile(bare.latencies_ns, 99) / 1e3
        ratio = p99 / bare99 if bare99 else float("inf")
        out.append(
            f"- Reconnect latency p50 {percentile(rc.latencies_ns, 50) / 1e3:.1f} µs, p99 "
            f"{p99:.1f} µs (target < 1,000 µs: {'PASS' if p99 < 1000 else 'MISS'}); bare wake-up "
            f"p99 {bare99:.1f} µs; ratio {ratio:.1f}x (target <= 20x: "
            f"{'PASS' if ratio <= 20 else 'MISS'})."
        )
    return out


def group() -> Group:
    cases = [
        Case(
            "engine.direct", "no-op transport called directly (reference)", 1_000_000, direct_call
        ),
        Case(
            "engine.batch1",
            "SyncEngine.drain, no-op Python transport, batch 1",
            200_000,
            engine_batch_1,
        ),
        Case(
            "engine.batch100",
            "SyncEngine.drain, no-op send_batch, batch 100",
            500_000,
            engine_batch_100,
            multiple_of=100,
        ),
        Case(
            "engine.reconnect",
            f"reconnect -> first CRITICAL call ({BACKLOG:,} LOW queued)",
            TRIALS,
            reconnect,
        ),
        Case("engine.wakeup", "bare threading.Event wake-up (reference)", 1_000, bare_wakeup),
    ]
    return Group(
        name="engine",
        title="Sync engine",
        cases=cases,
        checks=_checks,
        description=(
            "In-memory queue, payload 100 bytes. Throughput is `drain()` wall time over the "
            "ops delivered; reconnect latency is timed per trial from `set_connected(True)` "
            "to the transport's entry for the CRITICAL op."
        ),
    )
