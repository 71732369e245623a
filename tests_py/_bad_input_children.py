"""Child-process parts of test_bad_inputs.py.

``child_start_engine`` is a target for ``multiprocessing`` with the *spawn* start
method (it must live in a module the child can import by name). ``FORK_SCRIPT`` is a
whole program run with ``python -c``: it forks after starting an engine, so that the
forked child can end with a normal interpreter exit (atexit handlers, finalizers),
which a fork inside pytest could not do.
"""

from __future__ import annotations

from typing import Any

import cpcsync as cs


def child_start_engine(path: str, conn: Any) -> None:
    """Try to run a second engine on ``path``, then enqueue one op; report both."""
    try:
        with cs.SyncQueue.open(path, durability="normal") as q:
            engine = cs.SyncEngine(q, lambda op: None)
            try:
                engine.start()
                conn.send(("started", ""))
            except cs.QueueLockedError as e:
                conn.send(("locked", str(e)))
            # (the parent's engine may deliver it at once: no get() after the enqueue)
            q.enqueue("from-child", b"c", idempotency_key="second-process-op")
            conn.send(("enqueued", "second-process-op"))
    except BaseException as e:  # report, never leave the parent waiting
        conn.send(("error", repr(e)))
    finally:
        conn.close()


FORK_SCRIPT = r"""
import json, os, sys, threading
import cpcsync as cs

path = sys.argv[1]
q = cs.SyncQueue.open(path, durability="normal")
delivered = []
cond = threading.Condition()

def transport(op):
    with cond:
        delivered.append(op.idempotency_key)
        cond.notify_all()

engine = cs.SyncEngine(q, transport)
engine.start()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    try:
        q.enqueue("inherited", b"x")
        verdict = "the inherited handle worked"
    except cs.QueueClosedError:
        with cs.SyncQueue.open(path, durability="normal") as own:
            own.enqueue("from-fork", b"f", idempotency_key="fork-child-op")
        verdict = "ok"
    os.write(w, verdict.encode())
    os.close(w)
    engine.stop()  # the parent's workers: forgotten here, never joined
    sys.exit(0)  # a normal interpreter exit in the forked child: must not hang
os.close(w)
with os.fdopen(r, "rb") as f:
    verdict = f.read().decode()
_, status = os.waitpid(pid, 0)
with cond:
    got = cond.wait_for(lambda: "fork-child-op" in delivered, 10)
engine.stop()
q.close()
print(json.dumps({"verdict": verdict, "child_exit": os.waitstatus_to_exitcode(status),
                  "delivered": delivered, "got_child_op": got}))
"""
