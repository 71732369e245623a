"""Simulation: run a queue, engine, monitor and transports on a VirtualClock, deterministically."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cpcsync import _core
from cpcsync.errors import InvalidArgumentError, OperationStateError

if TYPE_CHECKING:
    from cpcsync.testing.scenario import Scenario

__all__ = ["Simulation", "SimulationStuck"]


class SimulationStuck(OperationStateError):
    """The simulation cannot make progress: work is ready but nothing can be delivered
    (for example every ready operation is leased by someone else)."""


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    action: Callable[[], object] = field(compare=False)


class Simulation:
    """Drives an engine on its VirtualClock from the calling thread: a discrete-event run.

    Everything happens on this thread, in a fixed order, so a run replays identically:
    at each instant the simulation first fires the scheduled actions that are due (in
    time order, then in the order they were scheduled), then delivers every ready
    operation (``engine.process_once()`` until a round does nothing), then jumps the
    clock to the next thing that can happen: the next scheduled action, or (while
    connected) the earliest retry coming due, or the end of the engine's outage backoff
    (:meth:`SyncEngine.next_attempt_at`). An hour of retries takes milliseconds.

    During a run the clock is in auto-advance mode, so latency a FaultyTransport adds
    moves virtual time instead of blocking. The engine must not be started (its workers
    would race the simulation); use ``engine.start()`` with ``clock.advance()`` for
    threaded tests instead. The network is what ``monitor.set_connected`` and the
    transports' faults say: schedule changes with :meth:`at` or a
    :class:`~cpcsync.testing.Scenario`. A probing monitor is not driven here.

    ``monitor``: the engine's NetworkMonitor, if any (deliveries wait while it says
    disconnected). ``scenario``: applied at construction (see :meth:`apply`).
    """

    def __init__(
        self,
        engine: _core.SyncEngine,
        *,
        monitor: _core.NetworkMonitor | None = None,
        scenario: Scenario | None = None,
        transport: _core.FaultyTransport | None = None,
    ) -> None:
        clock = engine.clock
        if not isinstance(clock, _core.VirtualClock):
            raise InvalidArgumentError("Simulation needs an engine on a cpcsync.VirtualClock")
        if engine.running:
            raise InvalidArgumentError("Simulation drives the engine itself: do not start() it")
        self.engine = engine
        self.clock: _core.VirtualClock = clock
        self.monitor = monitor
        self.transport = transport
        self._events: list[_Event] = []
        self._seq = itertools.count()
        self.rounds = 0
        if scenario is not None:
            self.apply(scenario)

    @property
    def now(self) -> float:
        """The clock's current time."""
        return self.clock.now()

    def at(self, t: float, action: Callable[[], object]) -> None:
        """Run ``action()`` when virtual time reaches ``t`` (at once if ``t`` is past)."""
        heapq.heappush(self._events, _Event(float(t), next(self._seq), action))

    def after(self, seconds: float, action: Callable[[], object]) -> None:
        """Run ``action()`` ``seconds`` from now on the clock."""
        self.at(self.now + seconds, action)

    def apply(self, scenario: Scenario) -> None:
        """Schedule a Scenario's timeline, relative to now, against this simulation's
        monitor and transport."""
        scenario.schedule(self)

    @property
    def pending_actions(self) -> int:
        """Scheduled actions not yet run."""
        return len(self._events)

    def run_until_idle(self, limit: float | None = None) -> bool:
        """Run until the queue is empty (nothing pending or in flight), even if scheduled
        actions remain (run them with :meth:`run_for` / :meth:`run_until`).

        ``limit``: at most this many seconds of virtual time. Returns True when the
        queue emptied; False when the limit came first, or when nothing else can happen
        (for example offline with no reconnect scheduled); the clock then stays where
        the last thing happened.
        """
        end = None if limit is None else self.now + limit
        return self._run(end, stop_when_idle=True)

    def run_for(self, seconds: float) -> None:
        """Run ``seconds`` of virtual time; the clock ends exactly ``seconds`` later."""
        if not seconds >= 0:
            raise InvalidArgumentError("run_for: seconds must be >= 0")
        end = self.now + seconds
        self._run(end, stop_when_idle=False)
        self.clock.advance_to(end)

    def run_until(self, t: float) -> None:
        """Run until virtual time ``t``."""
        self.run_for(max(0.0, t - self.now))

    @contextmanager
    def _driving(self) -> Iterator[None]:
        before = self.clock.auto_advance
        self.clock.auto_advance = True
        try:
            yield
        finally:
            self.clock.auto_advance = before

    def _fire_due(self) -> None:
        while self._events and self._events[0].time <= self.now:
            heapq.heappop(self._events).action()

    def _connected(self) -> bool:
        return self.monitor is None or self.monitor.is_connected

    def _deliver(self) -> bool:
        progressed = False
        while self._connected():
            s = self.engine.process_once()
            self.rounds += 1
            self._fire_due()  # latency may have moved time past scheduled actions
            if not (s.successful or s.retried or s.failed or s.conflicts or s.superseded):
                break
            progressed = True
        return progressed

    def _run(self, end: float | None, stop_when_idle: bool) -> bool:
        queue = self.engine.queue
        with self._driving():
            while True:
                self._fire_due()
                progressed = self._deliver()
                if stop_when_idle and len(queue) == 0:
                    return True
                candidates = [e.time for e in self._events[:1]]
                # the engine's view: the queue's next due op, later while its outage
                # gate holds deliveries back
                ready_at = self.engine.next_attempt_at() if self._connected() else None
                if ready_at is not None:
                    if ready_at <= self.now and not progressed and not self._events_due():
                        raise SimulationStuck(
                            f"at t={self.now:g} an operation is ready but none was delivered "
                            "(is another consumer holding it?)"
                        )
                    candidates.append(max(ready_at, self.now))
                if not candidates:
                    return False
                nxt = min(candidates)
                if end is not None and nxt > end:
                    return False
                self.clock.advance_to(nxt)

    def _events_due(self) -> bool:
        return bool(self._events) and self._events[0].time <= self.now
