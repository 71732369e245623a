"""The main job until the full demo lands: enqueue, persist, reopen, print.

Run with `make demo`. It writes a queue file into a temporary folder, enqueues
operations of every priority (some on the same key), closes it, reopens it as a
new process would, and prints what a consumer would deliver, in order.
"""

from __future__ import annotations

import pathlib
import tempfile

import cpcsync as cs


def main() -> None:
    folder = pathlib.Path(tempfile.mkdtemp(prefix="cpcsync-demo-"))
    path = folder / "outbox.db"
    with cs.SyncQueue.open(path) as q:
        for i in range(3):
            q.enqueue("add_item", {"sku": f"A-{i}"}, key="cart:9", priority=cs.Priority.LOW)
        q.enqueue("log_visit", "clinic-3", priority=cs.Priority.MEDIUM)
        q.enqueue("set_currency", {"currency": "BTC"}, key="user:42", priority=cs.Priority.CRITICAL)
        q.enqueue("save_note", b"\x00binary", key="cart:9", priority=cs.Priority.HIGH)
        print(f"enqueued {len(q)} operations into {path}")

    with cs.SyncQueue.open(path) as q:  # as after a restart
        print(f"reopened: {len(q)} pending, stats={q.stats()}")
        print("delivery order:")
        while ops := q.take(1):
            op = ops[0]
            print(
                f"  #{op.id:<3} {op.kind:<13} key={op.key!s:<8} priority={op.priority:<3} "
                f"payload={op.payload!r}"
            )
            q.ack(op.id)
        print(f"drained; {len(q)} left")


if __name__ == "__main__":
    main()
