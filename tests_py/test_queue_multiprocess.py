"""Several processes on one queue file: producers enqueue, one consumer delivers.

Producers are spawned processes (``_helpers.child_producer``); the test process is
the consumer and sleeps in ``q.wait(timeout)`` whenever nothing is deliverable, so
it depends on other processes' enqueues waking it. Synchronisation is by pipes
only.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter, defaultdict
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import cpcsync as cs
from _helpers import child_enqueue_when_told, child_producer, child_try_consume, recv

PRODUCERS = 4
N = 300
KEYS = 5


def spawn(target: Any, *args: Any) -> tuple[BaseProcess, Connection]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, child))
    proc.start()
    child.close()
    return proc, parent


def finish(proc: BaseProcess, conn: Connection) -> int | None:
    """Closes our end of the pipe, reaps the child (killed if it hangs); returns its exit code."""
    conn.close()
    proc.join(30)
    exitcode = proc.exitcode
    if exitcode is None:
        proc.kill()
        proc.join()
    proc.close()
    return exitcode


def test_producers_and_one_consumer_deliver_everything_once_in_key_order(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.db")
    with cs.SyncQueue.open(path, durability="normal") as q:
        assert q.take(1) == []  # become the consumer before anyone produces
        producers = [spawn(child_producer, path, i, N, KEYS) for i in range(PRODUCERS)]
        intruder = None
        exitcodes: list[int | None] = []
        done: dict[int, Any] = {}

        def poll_producers() -> None:
            # a producer's "done" (or its error) may arrive while we still consume
            for i, (_, conn) in enumerate(producers):
                if i not in done and conn.poll():
                    done[i] = recv(conn)

        try:
            for _, conn in producers:
                assert recv(conn) == ("ready",)
            for _, conn in producers:
                conn.send("go")
            # a would-be second consumer, in another process, while this one consumes
            intruder = spawn(child_try_consume, path)

            received: list[Any] = []
            deadline = time.monotonic() + 120.0
            while len(received) < PRODUCERS * N + 1:
                ops = q.take(64)
                if not ops:
                    assert time.monotonic() < deadline, f"only {len(received)} ops arrived"
                    poll_producers()
                    q.wait(1.0)
                    continue
                for op in ops:
                    received.append(op)
                    q.ack(op.id)

            produced: dict[int, list[int]] = {}
            for i, (_, conn) in enumerate(producers):
                tag, ids = done[i] if i in done else recv(conn)
                assert tag == "done"
                produced[i] = ids
            enqueued, raised = recv(intruder[1]), recv(intruder[1])
        finally:
            exitcodes = [finish(proc, conn) for proc, conn in producers]
            if intruder is not None:
                exitcodes.append(finish(*intruder))

        assert exitcodes == [0] * (PRODUCERS + 1)
        assert raised[:3] == ("raised", "QueueLockedError", True), raised
        assert enqueued[0] == "enqueued"
        assert q.take(10) == [] and len(q) == 0

    # exactly once: every id once, every (producer, key, seq) once
    ids = [op.id for op in received]
    assert len(ids) == len(set(ids))
    all_produced = {i for ids_ in produced.values() for i in ids_} | {enqueued[1]}
    assert set(ids) == all_produced
    assert len({op.idempotency_key for op in received}) == len(received)

    by_key: dict[str, list[int]] = defaultdict(list)
    counts: Counter[tuple[int, int, int]] = Counter()
    for op in received:
        if op.kind == "from-child":
            continue
        body = op.json()
        assert op.key == f"p{body['p']}:k{body['k']}"
        by_key[op.key].append(body["seq"])
        counts[(body["p"], body["k"], body["seq"])] += 1
    assert len(counts) == PRODUCERS * N and set(counts.values()) == {1}
    assert len(by_key) == PRODUCERS * KEYS
    for key, seqs in by_key.items():
        assert seqs == list(range(N // KEYS)), f"{key} arrived out of order: {seqs[:20]}"


def test_wait_is_woken_by_another_process_enqueue(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.db")
    with cs.SyncQueue.open(path, durability="normal") as q:
        assert q.take(1) == []  # become the consumer
        assert q.wait(0.0) is False  # nothing deliverable: wait does not claim otherwise
        assert q.wait(0.05) is False
        proc, conn = spawn(child_enqueue_when_told, path)
        try:
            assert recv(conn) == ("ready",)
            started = time.monotonic()
            conn.send("go")
            woke = q.wait(10.0)
            elapsed = time.monotonic() - started
            tag, op_id = recv(conn)
            conn.send("bye")
        finally:
            exitcode = finish(proc, conn)
        assert exitcode == 0
        assert woke is True
        assert elapsed < 2.0, f"wait returned only after {elapsed:.3f} s"  # a correctness bound
        assert tag == "enqueued"
        (op,) = q.take(10)
        assert (op.id, op.json()) == (op_id, {"from": "child"})


def test_threads_enqueue_concurrently_on_one_handle(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.db")
    threads, per_thread = 4, 200
    results: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def produce(q: Any, t: int) -> None:
        try:
            start.wait(10)
            for j in range(per_thread):
                results[t].append(q.enqueue("put", {"t": t, "seq": j}, key=f"t{t}"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    with cs.SyncQueue.open(path) as q:
        workers = [threading.Thread(target=produce, args=(q, t)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert not errors, errors
        assert all(not w.is_alive() for w in workers)
    ids = [i for r in results for i in r]
    assert len(ids) == len(set(ids)) == threads * per_thread
    for r in results:
        assert r == sorted(r)  # a thread's enqueues get increasing ids
    with cs.SyncQueue.open(path) as q:
        assert len(q) == threads * per_thread
        seqs: dict[str, list[int]] = defaultdict(list)
        while ops := q.take(100):
            for op in ops:
                seqs[op.key].append(op.json()["seq"])
                q.ack(op.id)
        assert {k: v == list(range(per_thread)) for k, v in seqs.items()} == {
            f"t{t}": True for t in range(threads)
        }


def test_wait_is_woken_by_another_handle_in_this_process(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.db")
    go = threading.Event()
    enqueued: list[int] = []

    def produce() -> None:
        with cs.SyncQueue.open(path, durability="normal") as producer:
            go.wait(10)
            enqueued.append(producer.enqueue("ping", b"", key="wake"))

    with cs.SyncQueue.open(path, durability="normal") as q:
        assert q.take(1) == []  # become the consumer
        worker = threading.Thread(target=produce)
        worker.start()
        try:
            started = time.monotonic()
            go.set()
            woke = q.wait(10.0)
            elapsed = time.monotonic() - started
        finally:
            worker.join(30)
        assert woke is True
        assert elapsed < 2.0, f"wait returned only after {elapsed:.3f} s"
        assert [op.id for op in q.take(10)] == enqueued
