"""The monitor group: the cost of one NetworkMonitor transition, by observers attached.

Each timed call is one `set_connected` that flips the state, so it is one transition
and one round of notifications, delivered before the call returns. The cases differ
only in who listens: nobody (the reference: state change, sequencing, the GIL release
around the call), 100 C++ no-op observers (what the monitor itself costs per
observer), and 100 Python no-op observers (what users have: each call takes the GIL
for that call only).
"""

from __future__ import annotations

from pathlib import Path

import cpcsync as cs
from harness import Case, Group, Measurement, time_calls

OBSERVERS = 100
WARMUP = 200


def _noop(connected: bool) -> None:
    pass


def _transitions(subscribe: str, observers: int, n: int) -> Measurement:
    m = cs.NetworkMonitor(clock=cs.VirtualClock())
    for _ in range(observers):
        if subscribe == "python":
            m.subscribe(_noop)
        else:
            m._subscribe_noop()
    state = [False]

    def call() -> None:
        state[0] = not state[0]
        m.set_connected(state[0])

    measured = time_calls(call, n, warmup=WARMUP, per="transition")
    expected = n + WARMUP
    stats = m.stats()
    if stats["transitions"] != expected or stats["observer_calls"] != expected * observers:
        raise RuntimeError(f"monitor: expected {expected} transitions, stats say {stats}")
    mean_us = measured.wall_ns / n / 1e3
    measured.note = f"mean {mean_us:.2f} µs per transition"
    if observers:
        measured.note += f", {mean_us * 1e3 / observers:.0f} ns per observer call"
    return measured


def monitor_0(d: Path, n: int) -> Measurement:
    return _transitions("cpp", 0, n)


def monitor_100_cpp(d: Path, n: int) -> Measurement:
    return _transitions("cpp", OBSERVERS, n)


def monitor_100_python(d: Path, n: int) -> Measurement:
    return _transitions("python", OBSERVERS, n)


def _checks(results: dict[str, Measurement]) -> list[str]:
    base = results.get("monitor.transition.0")
    remarks = []
    for key, who in (("monitor.transition.100cpp", "C++"), ("monitor.transition.100py", "Python")):
        m = results.get(key)
        if m is None or base is None:
            continue
        extra_ns = (m.wall_ns / m.ops - base.wall_ns / base.ops) / OBSERVERS
        remarks.append(
            f"- Monitor transition with {OBSERVERS} {who} observers: "
            f"{m.wall_ns / m.ops / 1e3:.2f} µs mean per transition, "
            f"{extra_ns:.0f} ns per observer above the no-observer reference."
        )
    return remarks


def group() -> Group:
    cases = [
        Case(
            "monitor.transition.0",
            "NetworkMonitor.set_connected transition, no observers (reference)",
            200_000,
            monitor_0,
        ),
        Case(
            "monitor.transition.100cpp",
            f"NetworkMonitor transition, {OBSERVERS} C++ no-op observers",
            100_000,
            monitor_100_cpp,
        ),
        Case(
            "monitor.transition.100py",
            f"NetworkMonitor transition, {OBSERVERS} Python no-op observers",
            20_000,
            monitor_100_python,
        ),
    ]
    return Group(
        name="monitor",
        title="Network monitor transitions",
        cases=cases,
        checks=_checks,
        description=(
            "One op = one `set_connected` that flips the state (a transition), timed from "
            "Python until every observer has been called (delivery is synchronous). The "
            "monitor runs on a VirtualClock and has no probe. Python observers are "
            "`def _noop(connected): pass`; each call takes the GIL for that call only, "
            "as cpcsync's threading rules require (docs/architecture.md, Threads)."
        ),
    )
