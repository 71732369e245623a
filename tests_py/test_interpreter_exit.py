"""A process that exits while cpcsync's C++ threads are calling into Python.

Python 3.11 ends (pthread_exit) a thread that takes the GIL after finalisation has
begun; unwinding that through C++ frames with ``catch (...)`` or ``noexcept`` aborts
the process ("FATAL: exception not rethrown"). Seen once in a full test run: a
docs example whose monitor (Python probe) was still running at exit. The module's
exit gate (cpp/bindings/python_gate.cc) must make every such exit a clean one: each
child below exits mid-traffic, with an engine's workers in the transport, the
resolver, the backoff and the listeners, a monitor's thread in its probe and
observer, and the log bridge delivering, none of them stopped.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = r"""
import logging, sys, threading
import cpcsync as cs

after = int(sys.argv[1])
logging.basicConfig(level=logging.DEBUG, stream=open("/dev/null", "w"))
cs.set_log_level("debug")
lock = threading.Lock()
calls = 0
ready = threading.Event()

def transport(op):
    global calls
    with lock:
        calls += 1
        n = calls
    if n >= after:
        ready.set()
    sum(range(3000))  # some Python work, so threads meet at the GIL
    if n % 5 == 0:
        raise cs.ConflictError("taken", remote=cs.Remote(b"r", hlc=1))
    if n % 3 == 0:
        raise cs.TransientError("again")

def resolve(local, remote):
    return cs.Resolution.use_local()

def probe():
    sum(range(1000))
    return True

queue = cs.SyncQueue.in_memory()
for i in range(20_000):
    queue.enqueue("k", b"x", key=str(i % 64))
monitor = cs.NetworkMonitor(connected=True, probe=probe, interval=0.05)
monitor.subscribe(lambda up: None)
engine = cs.SyncEngine(queue, transport, monitor=monitor, backoff=lambda n: 0.001,
                       resolver=resolve, concurrency=3, max_attempts=1_000_000)
for event in ("delivered", "retry", "conflict", "dead_letter", "superseded", "network"):
    engine.on(event, lambda info: None)
monitor.start()
engine.start()
if not ready.wait(60):
    sys.exit(3)
sys.exit(0)  # no stop(): every thread is still running
"""


@pytest.mark.parametrize("after", [1, 2, 5, 13, 40, 97, 250, 600])
def test_exit_while_cpp_threads_call_into_python_is_clean(after: int) -> None:
    for _ in range(3):
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(after)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "FATAL" not in proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
