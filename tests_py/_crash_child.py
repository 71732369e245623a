"""Child process of test_queue_crash.py: enqueues, takes and acks until it is killed.

Usage: python _crash_child.py PATH DURABILITY SEED

Protocol (one line per event on stdout, flushed at once, so the parent knows
exactly which calls had *returned* when it sent SIGKILL):

    E <id> <seq> <key or ->   enqueue returned <id> for payload {"seq": <seq>}
    T <id>                    take returned <id> (in flight)
    a <id>                    about to ack <id> (the ack may or may not commit)
    A <id>                    ack(<id>) returned
"""

from __future__ import annotations

import random
import sys

import cpcsync as cs

MAX_OPS = 100_000  # a safety stop; the parent kills the child long before


def main() -> None:
    path, durability, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    out = sys.stdout
    with cs.SyncQueue.open(path, durability=durability) as q:
        for seq in range(1, MAX_OPS + 1):
            key = f"k{rng.randrange(4)}" if rng.random() < 0.7 else None
            op_id = q.enqueue("put", {"seq": seq}, key=key, priority=rng.choice([25, 50, 75, 100]))
            out.write(f"E {op_id} {seq} {key or '-'}\n")
            out.flush()
            if seq % 3 == 0:
                for op in q.take(2):
                    out.write(f"T {op.id}\n")
                    out.flush()
                    if rng.random() < 0.6:
                        out.write(f"a {op.id}\n")
                        out.flush()
                        q.ack(op.id)
                        out.write(f"A {op.id}\n")
                        out.flush()


if __name__ == "__main__":
    main()
