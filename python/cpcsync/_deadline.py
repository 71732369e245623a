"""Whole-request deadlines for blocking sockets (private; used by HttpTransport).

urllib3 (like the socket module) applies a timeout to each read and each send: a link
that delivers a byte now and then never trips it, so a request can take far longer
than its timeout. A :class:`Deadline` bounds the whole request instead: one daemon
thread per process watches every open deadline and, when one passes, shuts the
request's socket down (``shutdown(SHUT_RDWR)``), which wakes the blocked read or send
with an error at once. The request sees :attr:`Deadline.expired` and reports a timeout.

A finished deadline never touches its socket again (:meth:`Deadline.finish` and the
watcher take one lock), so a kept-alive connection reused by a later request is safe.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time

__all__ = ["Deadline"]


class _Watcher:
    """The process-wide watcher thread and its heap of deadlines (earliest first)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.heap: list[tuple[float, int, Deadline]] = []
        self.seq = itertools.count()
        self.thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        with self.cond:
            heapq.heappush(self.heap, (deadline.at, next(self.seq), deadline))
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name="cpcsync-deadlines", daemon=True
                )
                self.thread.start()
            if self.heap[0][2] is deadline:
                self.cond.notify()

    def _run(self) -> None:
        with self.cond:
            while True:
                if not self.heap:
                    self.cond.wait()
                    continue
                at, _, first = self.heap[0]
                if first.finished:
                    heapq.heappop(self.heap)
                    continue
                wait = at - time.monotonic()
                if wait > 0:
                    self.cond.wait(wait)
                    continue
                heapq.heappop(self.heap)
                first._expire()


_watcher = _Watcher()


def _reset_after_fork() -> None:
    # The watcher thread does not exist in a forked child; its lock may have been held.
    global _watcher
    _watcher = _Watcher()


os.register_at_fork(after_in_child=_reset_after_fork)


class Deadline:
    """A point in time (``time.monotonic()`` seconds) after which the sockets
    :meth:`attach`-ed to it are shut down, until :meth:`finish` is called."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.expired = False
        self.finished = False
        self._sock: socket.socket | None = None
        self._watcher = _watcher
        self._watcher.add(self)

    def attach(self, sock: socket.socket | None) -> None:
        """Watch ``sock`` (the request's current socket); cut it at once if the
        deadline has already passed."""
        with self._watcher.cond:
            if self.finished or sock is None:
                return
            self._sock = sock
            if self.expired:
                _cut(sock)

    def finish(self) -> None:
        """The request is over: its socket is never touched by this deadline again."""
        with self._watcher.cond:
            self.finished = True
            self._sock = None

    def _expire(self) -> None:  # under the watcher's lock
        self.expired = True
        if self._sock is not None:
            _cut(self._sock)


def _cut(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for an ssl.SSLSocket: SSLSocket.shutdown would
    # drop its SSL object under the thread that is reading through it.
    with contextlib.suppress(OSError):  # closed, or never connected: nothing waits on it
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
