"""FaultyTransport: scripted delivery failures on a clock (C++ core in _core)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from cpcsync import _core
from cpcsync._core import Attempt

__all__ = ["Attempt", "FaultyTransport"]


class FaultyTransport(_core.FaultyTransport):
    """A transport that injects failures, for tests: a network you script.

    It wraps ``inner`` (any transport: a callable ``(op) -> None``, an
    :class:`~cpcsync.HttpTransport`, another FaultyTransport) or, with ``inner=None``,
    is a sink where every call that is not failed succeeds. Give it the same
    :class:`~cpcsync.VirtualClock` as the queue and engine, and a ``seed``, and a
    scenario replays identically every run.

    Each call's fate, in order: partitioned (``partition()``, ``add_partition``,
    ``flap``) -> an immediate network failure; otherwise wait ``latency`` +
    uniform[0, ``jitter``] seconds on the clock; then the next ``fail_next`` fault;
    a ``fail_for`` window; the ``pattern`` (cycled, one entry per call); the
    ``failure_rate``; else the inner transport (or success).

    Fault specs (``pattern`` entries, ``error=``, ``failure=``): ``None``/``True``/
    ``"ok"`` succeed; ``False`` is a transient failure; a kind name, one of
    ``"transient"``, ``"network"``, ``"timeout"``, ``"reset"``, ``"permanent"``,
    ``"conflict"``, ``"retry_after"``; or an exception instance or class, classified
    as the engine classifies what a transport raises (``cs.RetryAfter(5)``,
    ``cs.ConflictError(remote, remote_timestamp, remote_version)``,
    ``cs.PermanentError("400")``, ``TimeoutError()``, ``ConnectionResetError()``...).

    A ``"timeout"`` fault (or a ``TimeoutError`` spec) waits ``timeout`` seconds
    (default 10, like HttpTransport's) on the clock before it fails, as a real
    timeout would. ``failure`` is what ``failure_rate`` injects (default transient).

    Called directly (``ft(op)``) it raises what a Python transport would raise, so it
    also serves as the ``remote`` of code under test. ``history`` lists every call
    (:class:`Attempt`: time, op_id, key, priority, outcome, error, latency).
    Thread-safe; an engine calls it without the GIL.
    """

    def __init__(
        self,
        inner: Any = None,
        pattern: Sequence[Any] | None = None,
        failure_rate: float = 0.0,
        seed: int | None = None,
        latency: float = 0.0,
        clock: _core.Clock | None = None,
        *,
        jitter: float = 0.0,
        failure: Any = None,
        loop: Any = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(
            inner,
            pattern=None if pattern is None else list(pattern),
            failure_rate=failure_rate,
            seed=seed,
            latency=latency,
            jitter=jitter,
            clock=clock,
            failure=failure,
            loop=loop,
            timeout=timeout,
        )

    @contextmanager
    def partition(self) -> Iterator[FaultyTransport]:
        """Cut the link for the ``with`` block: every call fails at once with a network
        error; restored on exit (also on an exception)."""
        self.set_partitioned(True)
        try:
            yield self
        finally:
            self.set_partitioned(False)

    @contextmanager
    def latency(self, seconds: float, jitter: float = 0.0) -> Iterator[FaultyTransport]:
        """Add ``seconds`` (+ uniform[0, ``jitter``]) of latency for the ``with`` block."""
        self.set_latency(seconds, jitter)
        try:
            yield self
        finally:
            self.set_latency(0.0, 0.0)

    def outcomes(self) -> list[str]:
        """The outcome of every call so far, in order (``[a.outcome for a in history]``)."""
        return [a.outcome for a in self.history]
