"""Scenario: a timeline of network trouble, played on a virtual clock or in real time."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cpcsync import errors

if TYPE_CHECKING:
    from cpcsync._core import FaultyTransport, NetworkMonitor
    from cpcsync.testing.proxy import FaultProxy
    from cpcsync.testing.server import SyncServer
    from cpcsync.testing.simulation import Simulation

__all__ = ["Scenario", "ScenarioPlayer", "Step"]


@dataclass(frozen=True)
class Step:
    """One primitive change at ``time`` seconds from the scenario's start.

    ``action`` is one of: ``"offline"``/``"online"`` (the link drops or returns and the
    monitor says so), ``"partition"``/``"heal"`` (the link drops or returns; the
    monitor is not told), ``"latency"`` (``args``: seconds, jitter), ``"reset"``/
    ``"unreset"`` (connections are reset; ``args``: duration), ``"http_errors"``
    (``args``: n, status), ``"fail_next"`` (``args``: n, fault spec; virtual only).
    """

    time: float
    action: str
    args: tuple[Any, ...] = ()


def _seconds(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise errors.InvalidArgumentError(f"{name} must be a number >= 0, not {value!r}")
    return float(value)


class Scenario:
    """A timeline of network conditions, written once and applied to either level.

    Build it by chaining; each method starts at ``at`` (seconds from the scenario's
    start) or, by default, where the previous timed step ended, and moves that cursor
    to its own end::

        s = (Scenario()
             .offline(30)                 # 0-30 s: the link is down, the monitor knows
             .flap(period=2, count=10)    # 30-70 s: down 2 s, up 2 s, ten times
             .http_errors(3, status=503)  # at 70 s: the next 3 calls fail with a 503
             .partition(30, at=60)        # 60-90 s: calls fail; the monitor is not told
             .latency(0.3, duration=60))  # 90-150 s: 300 ms on every call

    Apply it to a :class:`~cpcsync.testing.Simulation` (virtual clock, with its
    FaultyTransport and monitor) via ``Simulation(..., scenario=s)`` or
    ``sim.apply(s)``; or play it in real time against a
    :class:`~cpcsync.testing.FaultProxy` with :meth:`play`. ``steps`` is the flat
    timeline both use.
    """

    def __init__(self) -> None:
        self._steps: list[Step] = []
        self._cursor = 0.0

    # -- building --------------------------------------------------------------

    def _start(self, at: float | None) -> float:
        return self._cursor if at is None else _seconds(at, "at")

    def _add(self, t: float, action: str, *args: Any) -> None:
        self._steps.append(Step(t, action, args))

    def wait(self, seconds: float) -> Scenario:
        """Move the cursor ``seconds`` later: nothing changes in between."""
        self._cursor += _seconds(seconds, "seconds")
        return self

    def offline(self, duration: float | None = None, *, at: float | None = None) -> Scenario:
        """The link goes down and the monitor says offline; back up after ``duration``
        seconds (None: stays down until :meth:`online`)."""
        t = self._start(at)
        self._add(t, "offline")
        if duration is not None:
            self._cursor = t + _seconds(duration, "duration")
            self._add(self._cursor, "online")
        else:
            self._cursor = t
        return self

    def online(self, *, at: float | None = None) -> Scenario:
        """The link comes back and the monitor says online."""
        self._cursor = self._start(at)
        self._add(self._cursor, "online")
        return self

    def flap(self, period: float, count: int, *, at: float | None = None) -> Scenario:
        """Down for ``period`` seconds, then up for ``period``, ``count`` times (the
        monitor follows each change)."""
        period = _seconds(period, "period")
        if period <= 0 or isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise errors.InvalidArgumentError("flap: period must be > 0 and count an int >= 0")
        t = self._start(at)
        for i in range(count):
            self._add(t + 2 * i * period, "offline")
            self._add(t + (2 * i + 1) * period, "online")
        self._cursor = t + 2 * count * period
        return self

    def partition(self, duration: float | None = None, *, at: float | None = None) -> Scenario:
        """The link drops without the monitor knowing (it still says connected, so
        deliveries fail with network errors); healed after ``duration`` seconds."""
        t = self._start(at)
        self._add(t, "partition")
        if duration is not None:
            self._cursor = t + _seconds(duration, "duration")
            self._add(self._cursor, "heal")
        else:
            self._cursor = t
        return self

    def latency(
        self,
        seconds: float,
        *,
        jitter: float = 0.0,
        duration: float | None = None,
        at: float | None = None,
    ) -> Scenario:
        """Every call takes ``seconds`` (+ uniform[0, ``jitter``]) longer; back to none
        after ``duration`` seconds (None: until changed)."""
        t = self._start(at)
        self._add(t, "latency", _seconds(seconds, "seconds"), _seconds(jitter, "jitter"))
        if duration is not None:
            self._cursor = t + _seconds(duration, "duration")
            self._add(self._cursor, "latency", 0.0, 0.0)
        else:
            self._cursor = t
        return self

    def resets(self, duration: float, *, at: float | None = None) -> Scenario:
        """Connections are reset (TCP RST) for ``duration`` seconds."""
        t = self._start(at)
        self._add(t, "reset", _seconds(duration, "duration"))
        self._cursor = t + duration
        self._add(self._cursor, "unreset")
        return self

    def http_errors(self, n: int, status: int = 503, *, at: float | None = None) -> Scenario:
        """The next ``n`` calls fail with HTTP ``status`` (5xx and 429: transient;
        other 4xx: permanent)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise errors.InvalidArgumentError("http_errors: n must be an int >= 0")
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise errors.InvalidArgumentError("http_errors: status must be an int in 400..599")
        self._cursor = self._start(at)
        self._add(self._cursor, "http_errors", n, status)
        return self

    def fail_next(self, n: int, error: Any = None, *, at: float | None = None) -> Scenario:
        """The next ``n`` calls fail with ``error`` (a FaultyTransport fault spec).
        Virtual only: a FaultProxy cannot fake an exception."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise errors.InvalidArgumentError("fail_next: n must be an int >= 0")
        self._cursor = self._start(at)
        self._add(self._cursor, "fail_next", n, error)
        return self

    # -- reading ---------------------------------------------------------------

    @property
    def steps(self) -> list[Step]:
        """The timeline, sorted by time (stable: same-time steps in the order written)."""
        return sorted(self._steps, key=lambda s: s.time)

    @property
    def duration(self) -> float:
        """The time of the last step (or the cursor, if later)."""
        return max([self._cursor, *(s.time for s in self._steps)])

    # -- applying --------------------------------------------------------------

    def schedule(self, sim: Simulation) -> None:
        """Schedule every step on ``sim``, relative to its current time."""
        apply = _virtual_applier(sim.transport, sim.monitor)
        t0 = sim.now
        for step in self.steps:
            sim.at(t0 + step.time, functools.partial(apply, step))

    def play(
        self,
        proxy: FaultProxy,
        *,
        server: SyncServer | None = None,
        monitor: NetworkMonitor | None = None,
    ) -> ScenarioPlayer:
        """Play the timeline in real time against a running FaultProxy, on a background
        thread; returns the started player (a context manager; ``wait()`` joins it).

        ``offline``/``partition`` disable the proxy (refusing and dropping connections),
        ``latency`` adds a downstream latency toxic, ``resets`` a reset_peer toxic,
        ``http_errors`` needs ``server`` (its ``fail_next``). ``monitor``, when given and
        probe-less, is told of offline/online by ``set_connected``; a probing monitor
        finds out by itself.
        """
        if any(s.action == "fail_next" for s in self._steps):
            raise errors.InvalidArgumentError(
                "fail_next steps need a FaultyTransport (virtual); use http_errors with a server"
            )
        if server is None and any(s.action == "http_errors" for s in self._steps):
            raise errors.InvalidArgumentError("http_errors steps need server=SyncServer")
        player = ScenarioPlayer(self.steps, _proxy_applier(proxy, server, monitor))
        player.start()
        return player


def _http_fault(status: int) -> errors.SyncError:
    if status >= 500 or status == 429:
        return errors.TransientError(f"HTTP {status} (scenario)")
    return errors.PermanentError(f"HTTP {status} (scenario)")


def _virtual_applier(
    ft: FaultyTransport | None, monitor: NetworkMonitor | None
) -> Callable[[Step], None]:
    def need_transport(step: Step) -> FaultyTransport:
        if ft is None:
            raise errors.InvalidArgumentError(
                f"scenario step {step.action!r} needs Simulation(transport=FaultyTransport)"
            )
        return ft

    def apply(step: Step) -> None:
        a = step.action
        if a in ("offline", "online"):
            down = a == "offline"
            if monitor is not None:
                monitor.set_connected(not down)
            if ft is not None:
                ft.set_partitioned(down)
            elif monitor is None:
                need_transport(step)
        elif a in ("partition", "heal"):
            need_transport(step).set_partitioned(a == "partition")
        elif a == "latency":
            need_transport(step).set_latency(*step.args)
        elif a == "reset":
            need_transport(step).fail_for(step.args[0], "reset")
        elif a == "http_errors":
            n, status = step.args
            need_transport(step).fail_next(n, _http_fault(status))
        elif a == "fail_next":
            need_transport(step).fail_next(*step.args)

    return apply


def _proxy_applier(
    proxy: FaultProxy, server: SyncServer | None, monitor: NetworkMonitor | None
) -> Callable[[Step], None]:
    def apply(step: Step) -> None:
        a = step.action
        if a in ("offline", "partition"):
            proxy.disable()
            if a == "offline" and monitor is not None and not monitor.probing:
                monitor.set_connected(False)
        elif a in ("online", "heal"):
            proxy.enable()
            if a == "online" and monitor is not None and not monitor.probing:
                monitor.set_connected(True)
        elif a == "latency":
            seconds, jitter = step.args
            if "scenario_latency" in {t["name"] for t in proxy.toxics}:
                proxy.remove_toxic("scenario_latency")
            if seconds > 0 or jitter > 0:
                proxy.add_toxic(
                    "latency",
                    name="scenario_latency",
                    latency=round(seconds * 1000),
                    jitter=round(jitter * 1000),
                )
        elif a == "reset":
            proxy.add_toxic("reset_peer", name="scenario_reset", timeout=0)
        elif a == "unreset":
            proxy.remove_toxic("scenario_reset")
        elif a == "http_errors" and server is not None:
            n, status = step.args
            server.fail_next(n, status=status)

    return apply


class ScenarioPlayer:
    """Plays a Scenario's steps in real time on a daemon thread (see Scenario.play).

    ``errors`` collects exceptions raised by steps (the player goes on with the next
    step); ``done`` is set when the last step ran or the player was stopped.
    """

    def __init__(self, steps: list[Step], apply: Callable[[Step], None]) -> None:
        self._steps = steps
        self._apply = apply
        self._stop = threading.Event()
        self.done = threading.Event()
        self.errors: list[BaseException] = []
        self.applied: list[Step] = []
        self._thread = threading.Thread(target=self._run, name="cpcsync-scenario", daemon=True)

    def start(self) -> ScenarioPlayer:
        """Start playing (time 0 is now)."""
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        try:
            for step in self._steps:
                # Waiting for the step's moment; stop() cuts it short.
                if self._stop.wait(max(0.0, t0 + step.time - time.monotonic())):
                    return
                try:
                    self._apply(step)
                    self.applied.append(step)
                except Exception as exc:  # a step failed: keep playing, report it
                    self.errors.append(exc)
        finally:
            self.done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every step ran (or stop()); False on timeout."""
        return self.done.wait(timeout)

    def stop(self) -> None:
        """Stop before the remaining steps and join the thread."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> ScenarioPlayer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
