"""The demo's timeline: what the network does when, scaled to the run's length."""

from __future__ import annotations

from dataclasses import dataclass

from cpcsync.testing.scenario import Scenario

NORMAL = "link normal"
"""The label of the time between the faults."""


@dataclass(frozen=True)
class Phase:
    """One fault of the run, from ``start`` to ``end`` (seconds from the start).

    ``lane`` says what the fault hits: ``"link"`` (the fault proxy between client and
    server), ``"server"`` (its answers) or ``"client"`` (the client process)."""

    start: float
    end: float
    label: str
    lane: str


@dataclass(frozen=True)
class Plan:
    """Times in seconds from the start of the run."""

    duration: float
    scenario: Scenario
    kill_at: float
    restart_at: float
    users_until: float
    device_b_writes: tuple[float, ...]
    phases: tuple[Phase, ...]  # for the display and the chart, in start order

    def phase_at(self, t: float) -> str:
        """What the run is doing at time t: the label of the fault under way, or
        ``"link normal"``; after the users stop, ``"draining"``."""
        label = NORMAL if t < self.users_until else "draining"
        for ph in self.phases:
            if ph.start <= t < ph.end:
                label = ph.label
        return label


def make_plan(duration: float) -> Plan:
    """The demo's script for a run of about `duration` seconds (>= 10):

    link normal -> link down -> flapping -> slow link (300 ms) -> a burst of 503s ->
    the client is killed and restarted -> link down again -> link normal. The users
    enqueue for the whole `duration`; then the queue drains.
    """
    d = max(10.0, float(duration))
    off1 = (0.12 * d, 0.28 * d)
    flap_start, flap_period = 0.32 * d, 0.6
    flap_count = max(2, int((0.18 * d) / (2 * flap_period)))
    flap_end = flap_start + 2 * flap_period * flap_count
    slow = (flap_end + 0.02 * d, flap_end + 0.14 * d)
    errors_at = slow[1] + 0.01 * d
    kill_at = errors_at + 0.03 * d
    restart_at = kill_at + max(1.0, 0.02 * d)
    off2 = (restart_at + 0.04 * d, restart_at + 0.12 * d)
    scenario = (
        Scenario()
        .offline(off1[1] - off1[0], at=off1[0])
        .flap(period=flap_period, count=flap_count, at=flap_start)
        .latency(0.3, duration=slow[1] - slow[0], at=slow[0])
        .http_errors(8, status=503, at=errors_at)
        .offline(off2[1] - off2[0], at=off2[0])
    )
    phases = (
        Phase(off1[0], off1[1], "link down", "link"),
        Phase(flap_start, flap_end, "link flapping", "link"),
        Phase(slow[0], slow[1], "slow link (300 ms)", "link"),
        Phase(errors_at, errors_at + 0.02 * d, "HTTP 503 burst", "server"),
        Phase(kill_at, restart_at, "client killed", "client"),
        Phase(off2[0], off2[1], "link down", "link"),
    )
    return Plan(
        duration=d,
        scenario=scenario,
        kill_at=kill_at,
        restart_at=restart_at,
        users_until=max(d, off2[1] + 0.03 * d),
        device_b_writes=tuple(round(d * f, 2) for f in (0.08, 0.2, 0.45, 0.7)),
        phases=phases,
    )
