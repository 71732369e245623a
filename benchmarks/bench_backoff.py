"""The backoff group: ExponentialBackoff.next_delay from Python against tenacity.

Both sides compute the same delays: full jitter, uniform(0, min(60, 0.1 * 2 ** (n - 1))),
for attempt numbers cycling through 1..10. cpcsync is called as `b.next_delay(n)`;
tenacity's `wait_random_exponential(multiplier=0.1, max=60)` is called with a
`RetryCallState` whose `attempt_number` is n (one state per n, built before timing, so
tenacity pays nothing for building them). A timed call makes 100 delay computations; the
harness's per-call overhead is spread over them. A plain-Python function computing the
same formula with `random.uniform` is the interpreter's own floor for comparison.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import cpcsync as cs
from harness import Case, Group, Measurement, Target, time_calls

BASE, FACTOR, MAX_DELAY = 0.1, 2.0, 60.0
ATTEMPTS = tuple(range(1, 11)) * 10  # one timed call = 100 delays
PER = f"{len(ATTEMPTS)} delays"
WARMUP = 200


def _expo(n: int) -> float:
    return min(MAX_DELAY, BASE * FACTOR ** (n - 1))


def _check_full_jitter(delay_of: Callable[[int], float], who: str) -> None:
    """Before timing: the delays are the same distribution's (within [0, expo(n)], spread)."""
    for n in range(1, 11):
        xs = [delay_of(n) for _ in range(500)]
        if not all(0.0 <= x <= _expo(n) for x in xs) or max(xs) < 0.5 * _expo(n):
            raise RuntimeError(f"{who}: delays for attempt {n} are not full jitter")


def cpcsync_full(d: Path, n: int) -> Measurement:
    b = cs.ExponentialBackoff(base=BASE, factor=FACTOR, max_delay=MAX_DELAY, jitter="full")
    _check_full_jitter(b.next_delay, "cpcsync")
    next_delay = b.next_delay

    def call() -> None:
        for a in ATTEMPTS:
            next_delay(a)

    calls = n // len(ATTEMPTS)
    return time_calls(call, calls, ops_per_call=len(ATTEMPTS), warmup=WARMUP, per=PER)


def cpcsync_decorrelated(d: Path, n: int) -> Measurement:
    b = cs.ExponentialBackoff(base=BASE, factor=FACTOR, max_delay=MAX_DELAY, jitter="decorrelated")
    next_delay = b.next_delay

    def call() -> None:
        for a in ATTEMPTS:
            next_delay(a)

    calls = n // len(ATTEMPTS)
    return time_calls(
        call, calls, ops_per_call=len(ATTEMPTS), warmup=WARMUP, per=PER, note="reference"
    )


def tenacity_wait_random_exponential(d: Path, n: int) -> Measurement:
    import tenacity

    wait = tenacity.wait_random_exponential(multiplier=BASE, exp_base=FACTOR, max=MAX_DELAY)
    retrying = tenacity.Retrying()
    states = {}
    for a in range(1, 11):
        state = tenacity.RetryCallState(retrying, None, (), {})
        state.attempt_number = a
        states[a] = state
    _check_full_jitter(lambda a: wait(states[a]), "tenacity")
    sequence = [states[a] for a in ATTEMPTS]

    def call() -> None:
        for s in sequence:
            wait(s)

    calls = n // len(ATTEMPTS)
    return time_calls(call, calls, ops_per_call=len(ATTEMPTS), warmup=WARMUP, per=PER)


def python_formula(d: Path, n: int) -> Measurement:
    uniform = random.uniform

    def delay(a: int) -> float:
        return uniform(0.0, min(MAX_DELAY, BASE * FACTOR ** (a - 1)))

    _check_full_jitter(delay, "python")

    def call() -> None:
        for a in ATTEMPTS:
            delay(a)

    calls = n // len(ATTEMPTS)
    return time_calls(
        call, calls, ops_per_call=len(ATTEMPTS), warmup=WARMUP, per=PER, note="reference"
    )


def group() -> Group:
    ops = 1_000_000
    m = len(ATTEMPTS)
    cases = [
        Case(
            "backoff.cpcsync.full",
            'cpcsync ExponentialBackoff(jitter="full").next_delay',
            ops,
            cpcsync_full,
            multiple_of=m,
        ),
        Case(
            "backoff.cpcsync.decorrelated",
            'cpcsync ExponentialBackoff(jitter="decorrelated").next_delay',
            ops,
            cpcsync_decorrelated,
            multiple_of=m,
        ),
        Case(
            "backoff.tenacity.wait_random_exponential",
            "tenacity wait_random_exponential(RetryCallState)",
            ops,
            tenacity_wait_random_exponential,
            multiple_of=m,
        ),
        Case(
            "backoff.python.formula",
            "plain Python function, random.uniform (reference)",
            ops,
            python_formula,
            multiple_of=m,
        ),
    ]
    targets = [
        Target(
            "ExponentialBackoff.next_delay vs tenacity wait_random_exponential",
            "backoff.cpcsync.full",
            "backoff.tenacity.wait_random_exponential",
            2,
            reference="backoff.python.formula",
        )
    ]
    return Group(
        name="backoff",
        title="Backoff",
        cases=cases,
        targets=targets,
        description=(
            "Delays per second computed from Python, full jitter with base 0.1, factor 2, "
            "cap 60 s, attempts cycling 1..10; one timed call computes 100 delays."
        ),
        packages=["tenacity"],
    )
