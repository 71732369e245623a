"""Child process of test_faketime.py: runs one scenario under libfaketime.

Usage: python _faketime_child.py SCENARIO

The parent starts it with libfaketime preloaded (wall clock faked through a control
file, monotonic clock left alone). Protocol, one line each way:

    child:  ready <wall>           set up; step the wall clock now
    parent: (any line on stdin)    the control file was rewritten
    child:  stepped <wall>         the wall clock as the child now sees it
    child:  result <json>          what the scenario measured (seconds of
                                   time.monotonic(), counts, ages)
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import cpcsync as cs


def handshake() -> None:
    print(f"ready {time.time():.3f}", flush=True)
    sys.stdin.readline()
    print(f"stepped {time.time():.3f}", flush=True)


def retry() -> dict[str, Any]:
    """A 2 s retry, stepped in the middle: when is it due?"""
    q = cs.SyncQueue.in_memory()
    op_id = q.enqueue("k", b"x")
    q.take(1)
    t0 = time.monotonic()
    q.retry(op_id, 2.0, error="503")
    handshake()
    early = [op.id for op in q.take(1)]  # a forward step must not make it due now
    due = q.wait(60.0)
    return {"early": early, "due": due, "elapsed": time.monotonic() - t0}


def stepped_during(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Runs fn on a thread and has the wall clock stepped while it runs; returns
    fn's result and how long it took (time.monotonic())."""
    started = threading.Event()
    out: list[Any] = []

    def run() -> None:
        t0 = time.monotonic()
        started.set()  # the call begins right after this
        result = fn()
        out.append((result, time.monotonic() - t0))

    t = threading.Thread(target=run)
    t.start()
    started.wait()
    handshake()
    t.join()
    return out[0]


def wait() -> dict[str, Any]:
    """q.wait(2) with nothing due, the wall clock stepped while it waits."""
    q = cs.SyncQueue.in_memory()
    q.enqueue("k", b"x", delay=1000.0)
    q.take(0)  # become the consumer first
    ready, elapsed = stepped_during(lambda: q.wait(2.0))
    return {"ready": ready, "elapsed": elapsed}


def drain() -> dict[str, Any]:
    """engine.drain(2) with an op never due, the wall clock stepped while it runs."""
    q = cs.SyncQueue.in_memory()
    q.enqueue("k", b"x", delay=1000.0)
    engine = cs.SyncEngine(q, lambda op: None)
    summary, elapsed = stepped_during(lambda: engine.drain(2.0))
    return {"successful": summary.successful, "elapsed": elapsed}


def ttl() -> dict[str, Any]:
    """A ttl=30 op after the wall clock stepped."""
    q = cs.SyncQueue.in_memory()
    op_id = q.enqueue("k", b"x", ttl=30.0)
    handshake()
    taken = [op.id for op in q.take(1)]
    return {"op": op_id, "taken": taken, "dead": [op.id for op in q.dead_letters()]}


def age() -> dict[str, Any]:
    """stats()'s oldest_pending_age after a step."""
    q = cs.SyncQueue.in_memory()
    q.enqueue("k", b"x")
    handshake()
    return {"age": q.stats()["oldest_pending_age"]}


def monitor() -> dict[str, Any]:
    """A 0.2 s probing monitor: how long do 5 more probes take after a step?"""
    cond = threading.Condition()
    probes = [0]

    def probe() -> bool:
        with cond:
            probes[0] += 1
            cond.notify_all()
        return True

    m = cs.NetworkMonitor(probe=probe, interval=0.2)
    m.start()
    with cond:
        cond.wait_for(lambda: probes[0] >= 1, timeout=30)
    handshake()
    with cond:
        base = probes[0]
        t0 = time.monotonic()
        ok = cond.wait_for(lambda: probes[0] >= base + 5, timeout=30)
        elapsed = time.monotonic() - t0
    m.stop()
    return {"ok": ok, "elapsed": elapsed}


def anchor() -> dict[str, Any]:
    """Where this process's monotonic timeline sits (started with its wall clock off)."""
    clock = cs.SystemClock()
    handshake()
    return {
        "offset": clock.now() - time.monotonic(),
        "wall": time.time(),
    }


SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    f.__name__: f for f in (retry, wait, drain, ttl, age, monitor, anchor)
}


def main() -> None:
    result = SCENARIOS[sys.argv[1]]()
    print("result " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
