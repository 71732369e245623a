"""Backoff strategies: built-ins, seeded sequences, jitter statistics, composition,
Python subclasses and callables driven from C++."""

from __future__ import annotations

import gc
import math
import statistics
import threading
from collections.abc import Callable

import pytest

import cpcsync as cs
from cpcsync import _core

INT_MAX = 2**31 - 1
HUGE = [10_000, 10**9, INT_MAX, 10**30]


class MT19937_64:
    """The standard's mt19937_64, in Python: an independent check of the documented RNG."""

    N, M = 312, 156
    MASK = (1 << 64) - 1
    UPPER, LOWER = 0xFFFFFFFF80000000, 0x7FFFFFFF

    def __init__(self, seed: int) -> None:
        self.mt = [seed & self.MASK]
        for i in range(1, self.N):
            prev = self.mt[-1]
            self.mt.append((6364136223846793005 * (prev ^ (prev >> 62)) + i) & self.MASK)
        self.index = self.N

    def __call__(self) -> int:
        if self.index >= self.N:
            mt = self.mt
            for i in range(self.N):
                x = (mt[i] & self.UPPER) | (mt[(i + 1) % self.N] & self.LOWER)
                xa = x >> 1
                if x & 1:
                    xa ^= 0xB5026F5AA96619E9
                mt[i] = mt[(i + self.M) % self.N] ^ xa
            self.index = 0
        y = self.mt[self.index]
        self.index += 1
        y ^= (y >> 29) & 0x5555555555555555
        y ^= (y << 17) & 0x71D67FFFEDA60000
        y ^= (y << 37) & 0xFFF7EEE000000000
        y ^= y >> 43
        return y & self.MASK

    def uniform01(self) -> float:
        return (self() >> 11) * 2.0**-53


def expo(n: int, base: float = 0.1, factor: float = 2.0, max_delay: float = 60.0) -> float:
    return min(max_delay, base * factor ** (n - 1))


def test_reference_generator_matches_the_standard() -> None:
    g = MT19937_64(5489)  # the default seed; the standard fixes the 10,000th output
    for _ in range(9_999):
        g()
    assert g() == 9981545732273789042


# --------------------------------------------------------------------------- built-ins


def test_exponential_defaults_follow_the_design() -> None:
    b = cs.ExponentialBackoff()
    assert (b.base, b.factor, b.max_delay, b.jitter, b.seed) == (0.1, 2.0, 60.0, "full", None)
    assert repr(b) == (
        "ExponentialBackoff(base=0.1, factor=2.0, max_delay=60.0, jitter='full', seed=None)"
    )
    assert isinstance(b, cs.BackoffStrategy)
    assert not b.stateful
    for n in range(1, 20):
        assert 0.0 <= b.next_delay(n) <= expo(n)


def test_no_jitter_is_exactly_the_formula() -> None:
    b = cs.ExponentialBackoff(jitter="none")
    for n in range(1, 80):
        assert b.next_delay(n) == expo(n) == b.expo(n)
    assert [b.next_delay(n) for n in (1, 2, 3, 10, 11)] == [0.1, 0.2, 0.4, 51.2, 60.0]
    b3 = cs.ExponentialBackoff(base=0.5, factor=3.0, max_delay=1e6, jitter="none")
    for n in range(1, 30):
        assert b3.next_delay(n) == min(1e6, 0.5 * 3.0 ** (n - 1))


@pytest.mark.parametrize("jitter", ["none", "full", "equal", "decorrelated"])
def test_huge_attempts_give_a_finite_capped_delay(jitter: str) -> None:
    b = cs.ExponentialBackoff(base=0.1, factor=2.0, max_delay=60.0, jitter=jitter, seed=1)
    for n in HUGE:
        d = b.next_delay(n)
        assert math.isfinite(d)
        assert 0.0 <= d <= 60.0
        if jitter == "none":
            assert d == 60.0
    assert b.expo(10**30) == 60.0


def test_constant_and_linear_exact_values() -> None:
    c = cs.ConstantBackoff(2.5)
    assert [c.next_delay(n) for n in (1, 2, 100, *HUGE)] == [2.5] * 7
    assert c.delay == 2.5
    assert repr(c) == "ConstantBackoff(delay=2.5)"
    lin = cs.LinearBackoff(1.0, 0.5, 3.0)
    assert [lin.next_delay(n) for n in range(1, 8)] == [1.0, 1.5, 2.0, 2.5, 3.0, 3.0, 3.0]
    assert [lin.next_delay(n) for n in HUGE] == [3.0] * 4
    assert (lin.base, lin.step, lin.max_delay) == (1.0, 0.5, 3.0)
    assert repr(lin) == "LinearBackoff(base=1.0, step=0.5, max_delay=3.0)"
    assert cs.LinearBackoff(base=0, step=1).max_delay == 60.0


# --------------------------------------------------------------------------- seeded sequences


def test_seeded_sequences_are_exactly_the_documented_draws() -> None:
    seed = 2024
    full = cs.ExponentialBackoff(jitter="full", seed=seed)
    equal = cs.ExponentialBackoff(jitter="equal", seed=seed)
    dec = cs.ExponentialBackoff(base=0.1, max_delay=5.0, jitter="decorrelated", seed=seed)
    gf, ge, gd = MT19937_64(seed), MT19937_64(seed), MT19937_64(seed)
    prev = 0.1
    for n in range(1, 40):
        e = expo(n)
        assert full.next_delay(n) == e * gf.uniform01()
        assert equal.next_delay(n) == e / 2 + e / 2 * ge.uniform01()
        prev = min(5.0, 0.1 + (prev * 3 - 0.1) * gd.uniform01())
        assert dec.next_delay(n) == prev


def test_seeded_sequences_are_pinned() -> None:
    # A change here changes every seeded user's delays: it must be deliberate.
    full = cs.ExponentialBackoff(base=1.0, factor=2.0, max_delay=100.0, seed=0)
    assert [full.next_delay(n) for n in range(1, 6)] == [
        0.1597933633704608,
        1.9842904192596575,
        0.15827610337946263,
        4.779957301557373,
        8.676559519881671,
    ]
    dec = cs.ExponentialBackoff(base=1.0, max_delay=100.0, jitter="decorrelated", seed=0)
    assert [dec.next_delay(n) for n in range(1, 6)] == [
        1.3195867267409216,
        3.9355197392515047,
        1.4276050209813995,
        2.9614644787228315,
        5.275588057942519,
    ]


@pytest.mark.parametrize("jitter", ["full", "equal", "decorrelated"])
def test_same_seed_same_sequence_other_seed_differs(jitter: str) -> None:
    def run(seed: int | None) -> list[float]:
        b = cs.ExponentialBackoff(jitter=jitter, seed=seed)
        return [b.next_delay(n) for n in range(1, 25)]

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert run(None) != run(None)  # unseeded: from the OS
    assert cs.ExponentialBackoff(seed=2**64 - 1).seed == 2**64 - 1


# --------------------------------------------------------------------------- jitter statistics

DRAWS = 20_000


def _draws(b: cs.BackoffStrategy, n: int) -> list[float]:
    return [b.next_delay(n) for _ in range(DRAWS)]


@pytest.mark.parametrize("n", [1, 5, 12])
def test_full_jitter_bounds_and_mean(n: int) -> None:
    b = cs.ExponentialBackoff(base=0.5, max_delay=600.0, jitter="full", seed=n)
    e = b.expo(n)
    xs = _draws(b, n)
    assert 0.0 <= min(xs) < 0.01 * e
    assert 0.99 * e < max(xs) <= e
    tolerance = 5 * (e / math.sqrt(12)) / math.sqrt(DRAWS)  # 5 standard errors
    assert statistics.fmean(xs) == pytest.approx(e / 2, abs=tolerance)


@pytest.mark.parametrize("n", [1, 5, 12])
def test_equal_jitter_bounds_and_mean(n: int) -> None:
    b = cs.ExponentialBackoff(base=0.5, max_delay=600.0, jitter="equal", seed=100 + n)
    e = b.expo(n)
    xs = _draws(b, n)
    assert e / 2 <= min(xs) < 0.51 * e
    assert 0.99 * e < max(xs) <= e
    tolerance = 5 * (e / 2 / math.sqrt(12)) / math.sqrt(DRAWS)
    assert statistics.fmean(xs) == pytest.approx(0.75 * e, abs=tolerance)


def test_decorrelated_jitter_bounds() -> None:
    base, cap = 0.25, 20.0
    b = cs.ExponentialBackoff(base=base, max_delay=cap, jitter="decorrelated", seed=5)
    assert b.stateful
    firsts, capped = [], 0
    for _ in range(2_000):
        prev = base
        for n in range(1, 11):
            d = b.next_delay(n)
            assert base <= d <= min(cap, prev * 3)
            if n == 1:
                firsts.append(d)
            capped += d == cap
            prev = d
    assert max(firsts) <= 3 * base
    tolerance = 5 * (2 * base / math.sqrt(12)) / math.sqrt(len(firsts))
    assert statistics.fmean(firsts) == pytest.approx(2 * base, abs=tolerance)
    assert capped > 0


def test_decorrelated_clones_are_fresh_reproducible_and_distinct() -> None:
    a = cs.ExponentialBackoff(jitter="decorrelated", seed=3)
    twin = cs.ExponentialBackoff(jitter="decorrelated", seed=3)
    for n in range(1, 30):  # a clone's seed is the next draw: the same calls, the same clone
        assert a.next_delay(n) == twin.next_delay(n)
    c1, c2, t1 = a.clone(), a.clone(), twin.clone()
    s1 = [c1.next_delay(n) for n in range(1, 15)]
    assert s1 != [c2.next_delay(n) for n in range(1, 15)]
    assert s1 == [t1.next_delay(n) for n in range(1, 15)]
    assert 0.1 <= s1[0] <= 0.3
    assert isinstance(c1, cs.ExponentialBackoff)
    assert c1.stateful
    assert c1.seed is not None and c1.seed != 3


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make",
    [
        lambda: cs.ExponentialBackoff(base=-0.1),
        lambda: cs.ExponentialBackoff(base=float("nan")),
        lambda: cs.ExponentialBackoff(base=float("inf")),
        lambda: cs.ExponentialBackoff(factor=0.5),
        lambda: cs.ExponentialBackoff(factor=float("nan")),
        lambda: cs.ExponentialBackoff(base=1.0, max_delay=0.5),
        lambda: cs.ExponentialBackoff(max_delay=float("inf")),
        lambda: cs.ExponentialBackoff(max_delay=float("nan")),
        lambda: cs.ExponentialBackoff(jitter="random"),
        lambda: cs.ExponentialBackoff(jitter="FULL"),
        lambda: cs.ExponentialBackoff(base=0.0, jitter="decorrelated"),
        lambda: cs.ExponentialBackoff(seed=-1),
        lambda: cs.ExponentialBackoff(seed=2**64),
        lambda: cs.ConstantBackoff(-1.0),
        lambda: cs.ConstantBackoff(float("nan")),
        lambda: cs.LinearBackoff(-1.0, 1.0, 10.0),
        lambda: cs.LinearBackoff(1.0, -1.0, 10.0),
        lambda: cs.LinearBackoff(1.0, float("nan"), 10.0),
        lambda: cs.LinearBackoff(5.0, 1.0, 4.0),
        lambda: cs.ConstantBackoff(1.0).capped(-1.0),
        lambda: cs.ConstantBackoff(1.0).capped(float("nan")),
    ],
)
def test_bad_parameters_raise_invalid_argument(make: Callable[[], object]) -> None:
    with pytest.raises(cs.InvalidArgumentError) as info:
        make()
    assert isinstance(info.value, ValueError)


def test_wrongly_typed_parameters_raise_type_error() -> None:
    with pytest.raises(TypeError):
        cs.ExponentialBackoff(base="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cs.ExponentialBackoff(seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cs.ExponentialBackoff(seed=True)


@pytest.mark.parametrize(
    "b",
    [
        cs.ExponentialBackoff(seed=1),
        cs.ConstantBackoff(1.0),
        cs.LinearBackoff(1.0, 1.0),
        cs.ConstantBackoff(1.0) + cs.ConstantBackoff(2.0),
        cs.CallableBackoff(lambda n: 1.0),
    ],
    ids=repr,
)
def test_attempt_below_one_or_not_an_int(b: cs.BackoffStrategy) -> None:
    for n in (0, -1, -(10**30)):
        with pytest.raises(cs.InvalidArgumentError, match="attempt must be >= 1"):
            b.next_delay(n)
    for bad in (1.0, True, "1", None):
        with pytest.raises(TypeError):
            b.next_delay(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- composition


def test_sum_of_strategies_and_numbers() -> None:
    e = cs.ExponentialBackoff(base=1.0, max_delay=100.0, jitter="none")
    s = e + cs.ConstantBackoff(0.5)
    assert isinstance(s, cs.SumBackoff)
    assert [s.next_delay(n) for n in range(1, 5)] == [1.5, 2.5, 4.5, 8.5]
    assert [(e + 0.25).next_delay(n) for n in (1, 2)] == [1.25, 2.25]
    assert [(0.25 + e).next_delay(n) for n in (1, 2)] == [1.25, 2.25]
    assert (e + 0) is e
    total = sum([e, cs.ConstantBackoff(1.0), cs.LinearBackoff(0.0, 1.0)], cs.ConstantBackoff(0.0))
    assert [total.next_delay(n) for n in (1, 2, 3)] == [2.0, 4.0, 7.0]
    assert repr(e + 1) == f"{e!r} + ConstantBackoff(delay=1.0)"
    with pytest.raises(TypeError):
        e + "1"  # type: ignore[operator]
    with pytest.raises(TypeError):
        e + True
    with pytest.raises(cs.InvalidArgumentError):
        e + (-1.0)


def test_capped() -> None:
    lin = cs.LinearBackoff(1.0, 1.0, 100.0)
    c = lin.capped(2.5)
    assert isinstance(c, cs.CappedBackoff)
    assert c.max_delay == 2.5
    assert [c.next_delay(n) for n in range(1, 5)] == [1.0, 2.0, 2.5, 2.5]
    both = (lin + 1).capped(3.0)
    assert [both.next_delay(n) for n in range(1, 4)] == [2.0, 3.0, 3.0]
    assert repr(both) == f"({lin!r} + ConstantBackoff(delay=1.0)).capped(3.0)"
    assert cs.CappedBackoff(lin, 1.5).next_delay(9) == 1.5
    assert cs.SumBackoff(lin, lin).next_delay(2) == 4.0


def test_composites_are_stateful_when_a_part_is() -> None:
    dec = cs.ExponentialBackoff(jitter="decorrelated", seed=1)
    full = cs.ExponentialBackoff(seed=1)
    assert (full + dec).stateful
    assert dec.capped(1.0).stateful
    assert not (full + full).stateful
    assert isinstance((full + dec).clone(), cs.SumBackoff)


# --------------------------------------------------------------------------- Python strategies


class Squares(cs.BackoffStrategy):
    """n ** 2 / 10 seconds; counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def next_delay(self, n: int) -> float:
        with self.lock:
            self.calls.append(n)
        return n * n / 10


class Remembering(cs.BackoffStrategy):
    """Stateful: each delay is the previous one plus n; clone() starts over."""

    clones = 0

    def __init__(self) -> None:
        super().__init__()
        self.previous = 0.0

    def next_delay(self, n: int) -> float:
        self.previous += n
        return self.previous

    def clone(self) -> cs.BackoffStrategy:
        Remembering.clones += 1
        return Remembering()


def test_python_subclass_is_called_from_cpp() -> None:
    sq = Squares()
    assert sq.next_delay(3) == 0.9
    s = sq + cs.ConstantBackoff(1.0)  # SumBackoff (C++) calls Squares through the trampoline
    assert [s.next_delay(n) for n in (1, 2, 3)] == [1.1, 1.4, 1.9]
    assert sq.calls == [3, 1, 2, 3]
    assert sq.capped(0.5).next_delay(4) == 0.5
    assert _core._backoff_delays(sq, 4) == [[0.1, 0.4, 0.9, 1.6]]
    assert not sq.stateful
    assert "Squares object" in repr(s)


def test_python_subclass_from_many_cpp_threads_takes_the_gil() -> None:
    sq = Squares()
    out = _core._backoff_delays(sq + 0.0 + cs.ConstantBackoff(1.0), 50, threads=4)
    assert out == [[n * n / 10 + 1.0 for n in range(1, 51)]] * 4
    assert sorted(sq.calls) == sorted(list(range(1, 51)) * 4)


def test_python_subclass_outlives_its_last_python_reference() -> None:
    s = Squares() + cs.ConstantBackoff(0.0)
    gc.collect()
    assert s.next_delay(2) == pytest.approx(0.4)
    assert _core._backoff_delays(s, 2, threads=2) == [[0.1, 0.4]] * 2


def test_python_subclass_clone_and_state() -> None:
    r = Remembering()
    assert r.stateful  # it overrides clone()
    s = r + cs.ConstantBackoff(0.0)
    assert s.stateful
    assert [s.next_delay(n) for n in (1, 2)] == [1.0, 3.0]
    before = Remembering.clones
    fresh = s.clone()  # SumBackoff.Clone -> the trampoline -> Remembering.clone()
    assert Remembering.clones == before + 1
    assert [fresh.next_delay(n) for n in (1, 2)] == [1.0, 3.0]
    assert s.next_delay(3) == 6.0  # the original sequence goes on
    # Without clone(), a clone shares the (stateless) instance.
    sq = Squares()
    shared = (sq + cs.ConstantBackoff(0.0)).clone()
    shared.next_delay(7)
    assert sq.calls == [7]


class Boom(Exception):
    pass


def test_exception_from_a_python_override_propagates() -> None:
    err = Boom("no delay for you")

    class Raising(cs.BackoffStrategy):
        def next_delay(self, n: int) -> float:
            raise err

    s = Raising() + cs.ConstantBackoff(1.0)
    with pytest.raises(Boom) as info:
        s.next_delay(1)
    assert info.value is err
    with pytest.raises(Boom) as info:
        _core._backoff_delays(s, 3, threads=2)
    assert info.value is err


def test_python_override_must_return_a_valid_delay() -> None:
    class Returns(cs.BackoffStrategy):
        def __init__(self, value: object) -> None:
            super().__init__()
            self.value = value

        def next_delay(self, n: int) -> float:
            return self.value  # type: ignore[return-value]

    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(cs.InvalidArgumentError, match="delay must be a finite number"):
            (Returns(bad) + 0.5).next_delay(1)
    for bad in ("1", None, True):
        with pytest.raises(TypeError):
            (Returns(bad) + 0.5).next_delay(1)
    assert (Returns(2) + 0.5).next_delay(1) == 2.5  # an int is fine


def test_subclass_without_next_delay() -> None:
    class Lazy(cs.BackoffStrategy):
        pass

    with pytest.raises(NotImplementedError, match="must override next_delay"):
        Lazy().next_delay(1)
    with pytest.raises(NotImplementedError):
        _core._backoff_delays(Lazy(), 1)


def test_builtins_are_final() -> None:
    with pytest.raises(TypeError):
        type("Sub", (cs.ExponentialBackoff,), {})


# --------------------------------------------------------------------------- callables


def test_callable_backoff() -> None:
    def fn(n: int) -> float:
        return 0.5 * n

    c = cs.CallableBackoff(fn)
    assert c.fn is fn
    assert [c.next_delay(n) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]
    assert repr(c).startswith("CallableBackoff(<function")
    assert (c + 1).next_delay(2) == 2.0
    assert not c.stateful
    assert c.clone().next_delay(4) == 2.0
    # The module helper (like the engine) wraps a bare callable the same way.
    assert _core._backoff_delays(lambda n: n / 4, 3, threads=3) == [[0.25, 0.5, 0.75]] * 3
    with pytest.raises(TypeError):
        cs.CallableBackoff(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _core._backoff_delays(3, 1)  # type: ignore[arg-type]


def test_callable_errors_propagate_and_bad_results_are_rejected() -> None:
    err = Boom("callable failed")

    def raising(n: int) -> float:
        raise err

    with pytest.raises(Boom) as info:
        cs.CallableBackoff(raising).next_delay(1)
    assert info.value is err
    with pytest.raises(Boom):
        _core._backoff_delays(raising, 1, threads=2)
    with pytest.raises(cs.InvalidArgumentError):
        cs.CallableBackoff(lambda n: -1.0).next_delay(1)
    with pytest.raises(TypeError):
        cs.CallableBackoff(lambda n: "1").next_delay(1)


def test_builtins_from_many_cpp_threads_stay_in_bounds() -> None:
    b = cs.ExponentialBackoff(base=0.1, max_delay=10.0, jitter="full", seed=9)
    out = _core._backoff_delays(b, 200, threads=4)
    assert len(out) == 4
    for seq in out:
        assert all(0.0 <= d <= expo(n, max_delay=10.0) for n, d in enumerate(seq, 1))
    assert out[0] != out[1]  # one shared generator: the threads draw different values
