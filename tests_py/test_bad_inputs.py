"""The bad-input catalogue: every bad input has a documented behaviour, never a crash,
a hang or a loss.

One table (``CASES``), one test over it. Each case names its input and the behaviour
docs/reliability.md documents for it: a typed exception (which), a logged and counted
error, or correct handling. Every case runs against a queue file seeded with three
operations (:class:`World`), and after it :meth:`World.settle` proves the rest: every
engine the case started stops in time, and a fresh engine on the same queue delivers
every seeded operation (nothing lost, the engine still works). A hang fails the run:
``faulthandler`` dumps every thread and exits after ``HANG_LIMIT`` seconds, and every
wait below has a timeout.

The foundation's simpler bad inputs (types, ranges, NaN/inf/negative delays and ttls,
closed queues, unknown ids, bad files, second consumers) are in
test_queue_errors.py; this catalogue goes beyond them and does not repeat them.
"""

from __future__ import annotations

import asyncio
import base64
import faulthandler
import json
import logging
import math
import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import cpcsync as cs
from _bad_input_children import FORK_SCRIPT, child_start_engine
from _helpers import queue_snapshot
from cpcsync.http import encode_operation

HANG_LIMIT = 60.0
WAIT = 10.0  # every wait for another thread's progress is bounded by this


@pytest.fixture(autouse=True)
def hang_is_a_failure() -> Iterator[None]:
    """Turn a hang into a failure with every thread's traceback."""
    faulthandler.dump_traceback_later(HANG_LIMIT, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


# --------------------------------------------------------------------------
# the harness


def deliver(op: cs.Operation) -> None:
    """Placeholder outcome: the op is delivered (Script records it)."""


class Script:
    """A transport whose first calls do what ``outcomes`` say, then it delivers.

    Each outcome is a function ``op -> Any`` run as the call (its return value is
    returned, what it raises is raised); :func:`deliver` records the op as delivered.
    Thread-safe; :meth:`wait_calls` / :meth:`wait_delivered` wait without polling.
    """

    def __init__(self, world: World, *outcomes: Callable[[cs.Operation], Any]) -> None:
        self.world = world
        self.outcomes = list(outcomes)
        self.calls = 0
        self.cond = threading.Condition()

    def __call__(self, op: cs.Operation) -> Any:
        with self.cond:
            self.calls += 1
            outcome = self.outcomes.pop(0) if self.outcomes else deliver
            self.cond.notify_all()
        if outcome is deliver:
            self.world.record(op)
            return None
        return outcome(op)

    def wait_calls(self, n: int) -> None:
        """Until at least ``n`` calls started."""
        with self.cond:
            assert self.cond.wait_for(lambda: self.calls >= n, WAIT), f"{self.calls} calls"

    def wait_delivered(self, idems: set[str]) -> None:
        """Until every idempotency key in ``idems`` was delivered (by anyone)."""
        self.world.wait_delivered(idems)


def raising(exc: BaseException) -> Callable[[cs.Operation], Any]:
    """An outcome that raises ``exc``."""

    def run(op: cs.Operation) -> Any:
        raise exc

    return run


def returning(value: Any) -> Callable[[cs.Operation], Any]:
    """An outcome that returns ``value`` without delivering."""
    return lambda op: value


@dataclass
class World:
    """A queue file with three seeded ops, the engines a case started, and what was
    delivered (by idempotency key)."""

    tmp_path: Path
    clock: cs.Clock | None = None
    queue: cs.SyncQueue = field(init=False)
    seeds: dict[str, bytes] = field(init=False)  # idempotency key -> payload
    engines: list[cs.SyncEngine] = field(default_factory=list)
    delivered: dict[str, bytes] = field(default_factory=dict)
    files_destroyed: bool = False  # the case deleted/replaced the file: seeds went with it
    cond: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.path = str(self.tmp_path / "q.db")
        self.queue = cs.SyncQueue.open(self.path, durability="normal", clock=self.clock)
        self.seeds = {}
        for i, key in enumerate(["k0", "k1", None]):
            op_id = self.queue.enqueue("seed", {"n": i}, key=key)
            op = self.queue.get(op_id)
            assert op is not None
            self.seeds[op.idempotency_key] = bytes(op.payload)

    def record(self, op: cs.Operation) -> None:
        """A transport delivered ``op``."""
        with self.cond:
            self.delivered[op.idempotency_key] = bytes(op.payload)
            self.cond.notify_all()

    def wait_delivered(self, idems: set[str]) -> None:
        """Until every key in ``idems`` was delivered."""
        with self.cond:
            ok = self.cond.wait_for(lambda: idems <= set(self.delivered), WAIT)
            assert ok, f"not delivered: {sorted(idems - set(self.delivered))}"

    def engine(self, transport: Any, **kwargs: Any) -> cs.SyncEngine:
        """An engine on the world's queue (stopped by settle()); fast retries by default."""
        kwargs.setdefault("backoff", cs.ConstantBackoff(0.01))
        kwargs.setdefault("max_attempts", 1000)
        engine = cs.SyncEngine(self.queue, transport, **kwargs)
        self.engines.append(engine)
        return engine

    def first_seed(self) -> cs.Operation:
        """The seed op the next take() returns."""
        return self.queue.peek(1)[0]

    def settle(self) -> None:
        """Every engine stops in time; a fresh engine delivers every seeded op."""
        for engine in self.engines:
            assert engine.stop(timeout=WAIT), "an engine did not stop in time"
        if self.files_destroyed:
            return
        if self.queue.closed:
            self.queue = cs.SyncQueue.open(self.path, durability="normal", clock=self.clock)
        in_flight = self.queue.stats()["in_flight"]
        if in_flight:  # a case that leased ops by hand: give them back
            self.queue.close()
            self.queue = cs.SyncQueue.open(self.path, durability="normal", clock=self.clock)
        self.queue.requeue_dead()
        final = cs.SyncEngine(self.queue, self.record, backoff=cs.ConstantBackoff(0.0))
        final.drain(timeout=WAIT)
        assert len(self.queue) == 0, [(o.id, o.last_error) for o in self.queue.peek(100)]
        missing = set(self.seeds) - set(self.delivered)
        assert not missing, f"seeded ops lost: {missing}"
        assert all(self.delivered[k] == v for k, v in self.seeds.items())
        self.queue.close()


@dataclass(frozen=True)
class Case:
    """One row of the catalogue."""

    id: str
    area: str
    behaviour: str  # what docs/reliability.md promises for it
    run: Callable[[World, pytest.LogCaptureFixture], None]


CASES: list[Case] = []


def case(area: str, behaviour: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a function as a catalogue row (its name, minus ``c_``, is the id)."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        CASES.append(Case(fn.__name__.removeprefix("c_"), area, behaviour, fn))
        return fn

    return register


def unchanged(w: World, fn: Callable[[], Any], expected: Any) -> BaseException:
    """``fn`` raises ``expected`` and the queue is exactly as before."""
    before = queue_snapshot(w.queue)
    with pytest.raises(expected) as info:
        fn()
    assert queue_snapshot(w.queue) == before
    return info.value


# --------------------------------------------------------------------------
# queue input


@case("queue", "InvalidArgumentError (a ValueError); nothing stored")
def c_kind_with_lone_surrogate(w: World, caplog: Any) -> None:
    err = unchanged(w, lambda: w.queue.enqueue("put\udc80", b"x"), cs.InvalidArgumentError)
    assert "kind" in str(err) and "surrogate" in str(err)


@case("queue", "InvalidArgumentError; nothing stored")
def c_key_with_lone_surrogate(w: World, caplog: Any) -> None:
    unchanged(w, lambda: w.queue.enqueue("put", b"x", key="user\ud800"), cs.InvalidArgumentError)


@case("queue", "InvalidArgumentError; nothing stored")
def c_idempotency_key_with_lone_surrogate(w: World, caplog: Any) -> None:
    unchanged(
        w,
        lambda: w.queue.enqueue("put", b"x", idempotency_key="\udfff"),
        cs.InvalidArgumentError,
    )


@case("queue", "UnicodeEncodeError (a ValueError); nothing stored")
def c_str_payload_with_lone_surrogate(w: World, caplog: Any) -> None:
    unchanged(w, lambda: w.queue.enqueue("put", "text\udc80"), UnicodeEncodeError)


@case("queue", "UnicodeEncodeError (a ValueError); nothing stored")
def c_json_payload_with_lone_surrogate(w: World, caplog: Any) -> None:
    unchanged(w, lambda: w.queue.enqueue("put", {"name": ["ok", "\ud83d"]}), UnicodeEncodeError)


@case("queue", "InvalidArgumentError; no item of the batch stored")
def c_enqueue_many_with_a_surrogate_in_one_item(w: World, caplog: Any) -> None:
    items = [{"kind": "put", "payload": b"a"}, {"kind": "put", "payload": b"b", "key": "\udc80"}]
    unchanged(w, lambda: w.queue.enqueue_many(items), cs.InvalidArgumentError)


@case("queue", "TypeError; the op stays in flight")
def c_retry_error_text_with_lone_surrogate(w: World, caplog: Any) -> None:
    (op,) = w.queue.take(1)
    unchanged(w, lambda: w.queue.retry(op.id, 0.0, error="boom\udc80"), TypeError)
    assert w.queue.stats()["in_flight"] == 1
    w.queue.retry(op.id, 0.0, error="boom")


@case("queue", "TypeError; the op is unchanged")
def c_dead_letter_reason_none(w: World, caplog: Any) -> None:
    op = w.first_seed()
    unchanged(w, lambda: w.queue.dead_letter(op.id, None), TypeError)


@case("queue", "InvalidArgumentError")
def c_negative_take_and_peek_counts(w: World, caplog: Any) -> None:
    unchanged(w, lambda: w.queue.take(-1), cs.InvalidArgumentError)
    unchanged(w, lambda: w.queue.peek(-5), cs.InvalidArgumentError)
    assert len(w.queue.take(10**30)) == 3  # a huge n is just "everything ready"
    w.queue.close()  # (that take leased the seeds: closing gives them back)


@case("queue", "OperationStateError; nothing requeued")
def c_requeue_dead_of_an_unknown_id(w: World, caplog: Any) -> None:
    unchanged(w, lambda: w.queue.requeue_dead([999_999]), cs.OperationStateError)


@case("queue", "handled: stored and delivered byte for byte (HTTP: payload_b64)")
def c_non_utf8_bytes_payload(w: World, caplog: Any) -> None:
    raw = b"\xff\xfe\x00\xc3("
    op = w.queue.get(w.queue.enqueue("blob", raw, key="bin"))
    assert op is not None and op.payload == raw
    assert encode_operation(op)["payload_b64"] == base64.b64encode(raw).decode()
    w.seeds[op.idempotency_key] = raw


@case("queue", "handled: NUL characters in kind and key are kept exactly")
def c_nul_characters_in_kind_and_key(w: World, caplog: Any) -> None:
    op = w.queue.get(w.queue.enqueue("put\x00x", b"v", key="user\x00:1"))
    assert op is not None and (op.kind, op.key) == ("put\x00x", "user\x00:1")
    w.seeds[op.idempotency_key] = b"v"


@case("queue", "handled: NaN is stored as json.dumps writes it; HTTP sends those bytes as b64")
def c_nan_inside_a_json_payload(w: World, caplog: Any) -> None:
    op = w.queue.get(w.queue.enqueue("put", {"x": math.nan}))
    assert op is not None and op.payload == b'{"x":NaN}'
    assert "payload_b64" in encode_operation(op)
    w.seeds[op.idempotency_key] = op.payload


@case("queue", "handled: a 64 MiB payload is stored and delivered whole")
def c_payload_of_64_mib(w: World, caplog: Any) -> None:
    big = bytes(range(256)) * (1 << 18)  # 64 MiB
    op_id = w.queue.enqueue("big", big)
    op = w.queue.get(op_id)
    assert op is not None and len(op.payload) == 64 << 20 and op.payload == big
    w.seeds[op.idempotency_key] = big
    del op, big


# --------------------------------------------------------------------------
# engine arguments


@case("engine", "InvalidArgumentError for each")
def c_engine_option_out_of_range(w: World, caplog: Any) -> None:
    for kwargs in (
        {"max_attempts": 0},
        {"concurrency": 0},
        {"batch_size": 0},
        {"max_elapsed": math.nan},
        {"max_elapsed": -1.0},
    ):
        with pytest.raises(cs.InvalidArgumentError):
            cs.SyncEngine(w.queue, deliver, **kwargs)


@case("engine", "TypeError for each")
def c_engine_parts_of_the_wrong_type(w: World, caplog: Any) -> None:
    for kwargs in ({"backoff": "fast"}, {"resolver": 42}):
        with pytest.raises(TypeError):
            cs.SyncEngine(w.queue, deliver, **kwargs)
    with pytest.raises(TypeError):
        cs.SyncEngine(w.queue, 42)  # type: ignore[arg-type]


@case("engine", "InvalidArgumentError for NaN/negative timeouts; unknown events too")
def c_engine_bad_timeouts_and_events(w: World, caplog: Any) -> None:
    engine = w.engine(Script(w))
    for call in (
        lambda: engine.stop(timeout=math.nan),
        lambda: engine.drain(timeout=-1.0),
        lambda: engine.wait_idle(math.nan),
        lambda: engine.on("deliverd", print),
    ):
        with pytest.raises(cs.InvalidArgumentError):
            call()
    with pytest.raises(TypeError):
        engine.on("delivered", 42)  # type: ignore[arg-type]


@case("engine", "QueueClosedError from start(); nothing runs")
def c_engine_start_on_a_closed_queue(w: World, caplog: Any) -> None:
    engine = w.engine(Script(w))
    w.queue.close()
    with pytest.raises(cs.QueueClosedError):
        engine.start()
    assert not engine.running


# --------------------------------------------------------------------------
# transports that return garbage or raise oddly (on the calling thread: exact)


def one_round(w: World, transport: Any, **kwargs: Any) -> tuple[cs.ProcessingSummary, int]:
    """process_once with ``transport``; (summary, id of the op it was given)."""
    target = w.first_seed().id
    summary = w.engine(transport, **kwargs).process_once()
    return summary, target


@case("transport", "a failure (TransientError text names the value); retried, not acked")
def c_transport_returns_false(w: World, caplog: Any) -> None:
    summary, target = one_round(w, Script(w, returning(False)))
    assert summary.successful == 0 and [i for i, _ in summary.retried] == [target]
    op = w.queue.get(target)
    assert op is not None and "returned False" in (op.last_error or "")


@case("transport", "a failure, retried: a status code or response object is not None")
def c_transport_returns_a_status_code(w: World, caplog: Any) -> None:
    summary, target = one_round(w, Script(w, returning(200), returning("ok")))
    assert summary.successful == 0
    op = w.queue.get(target)
    assert op is not None and "returned 200" in (op.last_error or "")


@case("transport", "handled: a returned exception instance counts as raised (dead letter)")
def c_transport_returns_an_exception(w: World, caplog: Any) -> None:
    summary, target = one_round(w, Script(w, returning(cs.PermanentError("HTTP 400"))))
    assert [i for i, _ in summary.failed] == [target]


@case("transport", "handled: True is delivered")
def c_transport_returns_true(w: World, caplog: Any) -> None:
    summary, target = one_round(w, Script(w, lambda op: (w.record(op), True)[1]))
    assert summary.successful == 1 and w.queue.get(target) is None


class Batch:
    """A send_batch transport returning a scripted value once, then delivering."""

    def __init__(self, w: World, result: Callable[[list[cs.Operation]], Any]) -> None:
        self.w = w
        self.result: Callable[[list[cs.Operation]], Any] | None = result

    def __call__(self, op: cs.Operation) -> None:
        self.w.record(op)

    def send_batch(self, ops: list[cs.Operation]) -> Any:
        result, self.result = self.result, None
        if result is None:
            for op in ops:
                self.w.record(op)
            return None
        return result(ops)


def batch_round(w: World, result: Callable[[list[cs.Operation]], Any]) -> cs.ProcessingSummary:
    engine = w.engine(Batch(w, result), batch_size=3)
    return engine.process_once()


@case("transport", "all of the batch retried (which result is whose is unknowable)")
def c_send_batch_returns_too_few_results(w: World, caplog: Any) -> None:
    summary = batch_round(w, lambda ops: [None] * (len(ops) - 1))
    assert summary.successful == 0 and len(summary.retried) == 3
    assert "2 results for 3 operations" in (w.queue.get(summary.retried[0][0]).last_error or "")  # type: ignore[union-attr]


@case("transport", "all of the batch retried")
def c_send_batch_returns_too_many_results(w: World, caplog: Any) -> None:
    summary = batch_round(w, lambda ops: [None] * (len(ops) + 2))
    assert summary.successful == 0 and len(summary.retried) == 3


@case("transport", "all of the batch retried (TypeError text)")
def c_send_batch_returns_a_non_iterable(w: World, caplog: Any) -> None:
    summary = batch_round(w, lambda ops: 42)
    assert summary.successful == 0 and len(summary.retried) == 3


@case("transport", "that entry's op retried, the others delivered")
def c_send_batch_with_a_garbage_entry(w: World, caplog: Any) -> None:
    summary = batch_round(w, lambda ops: [*(w.record(o) for o in ops[:2]), "done"])
    assert summary.successful == 2 and len(summary.retried) == 1


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


@case("transport", "retried; last_error says <unprintable>")
def c_exception_whose_str_raises(w: World, caplog: Any) -> None:
    _summary, target = one_round(w, Script(w, raising(UnprintableError())))
    op = w.queue.get(target)
    assert op is not None and op.last_error == "UnprintableError: <unprintable>"


@case("transport", "retried; the lone surrogate is escaped in last_error")
def c_exception_text_with_lone_surrogate(w: World, caplog: Any) -> None:
    _summary, target = one_round(w, Script(w, raising(cs.TransientError("bad \udc80 byte"))))
    op = w.queue.get(target)
    assert op is not None and op.last_error == "TransientError: bad \\udc80 byte"


@case("transport", "retried; the cause chain is followed once (no hang)")
def c_exception_with_a_cyclic_cause_chain(w: World, caplog: Any) -> None:
    a, b = ValueError("a"), KeyError("b")
    a.__cause__, b.__cause__ = b, a
    _summary, target = one_round(w, Script(w, raising(a)))
    op = w.queue.get(target)
    assert op is not None and (op.last_error or "").count("caused by") == 1


@case("transport", "retried as a transient failure (the remote could not be encoded)")
def c_conflict_with_an_unencodable_remote(w: World, caplog: Any) -> None:
    summary, target = one_round(w, Script(w, raising(cs.ConflictError(object()))))
    assert summary.conflicts == 0 and [i for i, _ in summary.retried] == [target]


@case("transport", "KeyboardInterrupt raised again by process_once; the op back, due now")
def c_keyboard_interrupt_in_process_once(w: World, caplog: Any) -> None:
    target = w.first_seed().id
    engine = w.engine(Script(w, raising(KeyboardInterrupt())), concurrency=3)
    with pytest.raises(KeyboardInterrupt):
        engine.process_once()
    op = w.queue.get(target)
    assert op is not None and op.state == "pending" and op.attempts == 1
    assert (op.last_error or "").startswith("interrupted: KeyboardInterrupt")
    assert w.queue.stats()["dead"] == 0 and w.queue.stats()["in_flight"] == 0
    assert len(w.delivered) == 0, "the rest of the round must not be sent"


@case("transport", "SystemExit raised again by drain(); the drain stops there")
def c_system_exit_in_drain(w: World, caplog: Any) -> None:
    script = Script(w, deliver, raising(SystemExit(3)))
    with pytest.raises(SystemExit) as info:
        w.engine(script).drain(timeout=WAIT)
    assert info.value.code == 3
    assert script.calls == 2 and len(w.queue) == 2 and w.queue.stats()["dead"] == 0


def interrupt_on_a_worker(w: World, caplog: Any, exc: BaseException) -> None:
    caplog.set_level(logging.WARNING, logger="cpcsync")
    script = Script(w, raising(exc))
    engine = w.engine(script)
    engine.start()
    script.wait_delivered(set(w.seeds))
    assert engine.running
    assert engine.stats()["retried"] >= 1
    name = type(exc).__name__
    assert any(
        r.name == "cpcsync" and r.levelno == logging.WARNING and name in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


@case("transport", "worker: logged (warning, logger cpcsync), retried; the engine goes on")
def c_keyboard_interrupt_on_a_worker(w: World, caplog: Any) -> None:
    interrupt_on_a_worker(w, caplog, KeyboardInterrupt())


@case("transport", "worker: logged (warning), retried; the engine goes on")
def c_system_exit_on_a_worker(w: World, caplog: Any) -> None:
    interrupt_on_a_worker(w, caplog, SystemExit(1))


class StopEverything(BaseException):
    """A user's own BaseException subclass."""


@case("transport", "worker: logged (warning), retried; the engine goes on")
def c_custom_base_exception_on_a_worker(w: World, caplog: Any) -> None:
    interrupt_on_a_worker(w, caplog, StopEverything("halt"))


@case("transport", "handled: an async transport's exception is classified like a sync one")
def c_async_transport_raising(w: World, caplog: Any) -> None:
    async def transport(op: cs.Operation) -> None:
        await asyncio.sleep(0)
        raise cs.PermanentError("async no")

    summary, target = one_round(w, transport)
    assert [i for i, _ in summary.failed] == [target]


@case("transport", "async: KeyboardInterrupt raised again by process_once; the loop survives")
def c_async_transport_raising_keyboard_interrupt(w: World, caplog: Any) -> None:
    calls: list[int] = []

    async def transport(op: cs.Operation) -> None:
        calls.append(op.id)
        if len(calls) == 1:
            raise KeyboardInterrupt  # asyncio would let this stop the engine's loop
        w.record(op)

    engine = w.engine(transport)
    with pytest.raises(KeyboardInterrupt):
        engine.process_once()
    assert engine.process_once().successful == 1  # the same loop still runs coroutines


@case("transport", "async, worker: SystemExit logged, retried; the engine goes on")
def c_async_transport_raising_system_exit_on_a_worker(w: World, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="cpcsync")
    calls: list[int] = []

    async def transport(op: cs.Operation) -> None:
        calls.append(op.id)
        if len(calls) == 1:
            raise SystemExit(2)
        w.record(op)

    w.engine(transport).start()
    w.wait_delivered(set(w.seeds))
    assert any("SystemExit" in r.getMessage() for r in caplog.records if r.name == "cpcsync")


# --------------------------------------------------------------------------
# resolvers and backoffs that break


class FailsOne:
    """Raises ``exc`` for op ``target`` every time; delivers every other op."""

    def __init__(self, w: World, target: int, exc: BaseException) -> None:
        self.w, self.target, self.exc, self.calls = w, target, exc, 0

    def __call__(self, op: cs.Operation) -> None:
        if op.id != self.target:
            self.w.record(op)
            return
        self.calls += 1
        raise self.exc


def broken_callback_case(w: World, exc: BaseException, **kwargs: Any) -> None:
    """The op is a failed attempt retried after 1 s (never at once), then dead-lettered."""
    clock = w.clock
    assert isinstance(clock, cs.VirtualClock)
    target = w.first_seed().id
    transport = FailsOne(w, target, exc)
    engine = w.engine(transport, max_attempts=2, **kwargs)
    for _ in range(10):  # every round possible at this instant (a tight loop would not end)
        summary = engine.process_once()
        if not (summary.successful or summary.retried or summary.failed):
            break
    assert transport.calls == 1
    op = w.queue.get(target)
    assert op is not None and op.next_attempt_at == pytest.approx(clock.now() + 1.0)
    clock.advance(1.0)
    summary = engine.process_once()
    assert [i for i, _ in summary.failed] == [target]
    (dead,) = w.queue.dead_letters()
    assert (dead.last_error or "").startswith("gave up after 2 attempts: engine: ")


@case("resolver", "logged; a failed attempt retried after 1 s; dead letter at max_attempts")
def c_resolver_returns_the_wrong_type(w: World, caplog: Any) -> None:
    conflict = cs.ConflictError({"v": 1}, remote_version=1)
    broken_callback_case(w, conflict, resolver=lambda local, remote: None)


@case("resolver", "logged; a failed attempt retried after 1 s; dead letter at max_attempts")
def c_resolver_raises(w: World, caplog: Any) -> None:
    def resolver(local: cs.Operation, remote: cs.Remote) -> cs.Resolution:
        raise RuntimeError("resolver bug")

    broken_callback_case(w, cs.ConflictError({"v": 1}, remote_version=1), resolver=resolver)


@case("backoff", "logged; a failed attempt retried after 1 s; dead letter at max_attempts")
def c_backoff_returns_nan(w: World, caplog: Any) -> None:
    broken_callback_case(w, cs.TransientError("no"), backoff=lambda n: math.nan)


@case("backoff", "logged; a failed attempt retried after 1 s; dead letter at max_attempts")
def c_backoff_raises(w: World, caplog: Any) -> None:
    def backoff(n: int) -> float:
        raise ZeroDivisionError("backoff bug")

    broken_callback_case(w, cs.TransientError("no"), backoff=backoff)


# --------------------------------------------------------------------------
# listeners, observers and probes


@case("listener", "worker: logged and counted in callback_errors; the engine goes on")
def c_listener_raises_keyboard_interrupt_on_a_worker(w: World, caplog: Any) -> None:
    engine = w.engine(Script(w))

    def listener(info: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    engine.on("delivered", listener)
    engine.start()
    w.wait_delivered(set(w.seeds))
    assert engine.wait_idle(WAIT) and engine.stats()["callback_errors"] == 3


@case("listener", "KeyboardInterrupt raised again by process_once after the round; op acked")
def c_listener_raises_keyboard_interrupt_in_process_once(w: World, caplog: Any) -> None:
    engine = w.engine(Script(w))

    def listener(info: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    engine.on("delivered", listener)
    target = w.first_seed()
    with pytest.raises(KeyboardInterrupt):
        engine.process_once()
    assert w.queue.get(target.id) is None and target.idempotency_key in w.delivered


@case("listener", "handled: the op enqueued from the listener is delivered too")
def c_enqueue_from_a_delivered_listener(w: World, caplog: Any) -> None:
    engine = w.engine(Script(w))
    extra: list[str] = []

    def listener(info: dict[str, Any]) -> None:
        if info["op"].kind == "seed" and not extra:
            extra.append("follow-up-op")
            w.queue.enqueue("follow-up", b"f", idempotency_key="follow-up-op")

    engine.on("delivered", listener)
    engine.start()
    w.wait_delivered(set(w.seeds))
    w.wait_delivered({"follow-up-op"})
    assert extra == ["follow-up-op"] and engine.stats()["callback_errors"] == 0


@case("listener", "handled: stop() from a listener returns; its worker exits; no deadlock")
def c_stop_from_a_listener(w: World, caplog: Any) -> None:
    engine = w.engine(Script(w))
    stopped = threading.Event()
    results: list[bool] = []

    def listener(info: dict[str, Any]) -> None:
        results.append(engine.stop())
        stopped.set()

    engine.on("delivered", listener)
    engine.start()
    assert stopped.wait(WAIT)
    assert results == [True] and not engine.running
    assert engine.stats()["callback_errors"] == 0


@case("listener", "InvalidArgumentError (it would wait for itself), logged and counted")
def c_stop_with_drain_from_a_listener(w: World, caplog: Any) -> None:
    engine = w.engine(Script(w))
    engine.on("delivered", lambda info: engine.stop(drain=True))
    engine.start()
    w.wait_delivered(set(w.seeds))
    assert engine.wait_idle(WAIT) and engine.running
    assert engine.stats()["callback_errors"] == 3


@case("transport", "handled: stop() from inside the transport; that op is still acked")
def c_stop_from_the_transport(w: World, caplog: Any) -> None:
    holder: list[cs.SyncEngine] = []
    acked = threading.Event()
    target = w.first_seed()

    def stop_then_deliver(op: cs.Operation) -> None:
        assert holder[0].stop()
        w.record(op)

    engine = w.engine(Script(w, stop_then_deliver))
    engine.on("delivered", lambda info: acked.set())  # emitted after the ack
    holder.append(engine)
    engine.start()
    assert acked.wait(WAIT)
    assert not engine.running and engine.stop(timeout=WAIT)
    assert w.queue.get(target.id) is None


@case("listener", "handled: process_once() re-entered from a listener works")
def c_process_once_from_a_listener(w: World, caplog: Any) -> None:
    engine = w.engine(Script(w))
    nested: list[int] = []
    entered = threading.Event()

    def listener(info: dict[str, Any]) -> None:
        if not entered.is_set():  # one level deep
            entered.set()
            nested.append(engine.process_once().successful)

    engine.on("delivered", listener)
    assert engine.process_once().successful == 1
    assert nested == [1]  # the nested round delivered the next op


@case("listener", "handled: queue.close() from a listener stops the workers; reopen intact")
def c_queue_closed_from_a_listener(w: World, caplog: Any) -> None:
    engine = w.engine(Script(w))
    closed = threading.Event()

    def listener(info: dict[str, Any]) -> None:
        w.queue.close()
        closed.set()

    engine.on("delivered", listener)
    engine.start()
    assert closed.wait(WAIT)
    assert engine.stop(timeout=WAIT)


@case("monitor", "handled: stop() returns while an observer blocks")
def c_monitor_observer_blocks(w: World, caplog: Any) -> None:
    monitor = cs.NetworkMonitor(connected=False, probe=lambda: True, interval=0.01)
    entered, release = threading.Event(), threading.Event()
    monitor.subscribe(lambda up: (entered.set(), release.wait(WAIT)))
    monitor.start()
    try:
        assert entered.wait(WAIT)
        monitor.stop()  # returns although the observer is still blocked
    finally:
        release.set()


@case("monitor", "handled: a probe's result counts by its truth; a __bool__ that raises is down")
def c_probe_returns_odd_values(w: World, caplog: Any) -> None:
    class Undecidable:
        def __bool__(self) -> bool:
            raise RuntimeError("cannot tell")

    for value, up in (("yes", True), (None, False), (Undecidable(), False)):
        monitor = cs.NetworkMonitor(
            connected=not up, probe=lambda v=value: v, interval=0.01, up_after=1, down_after=1
        )
        monitor.start()
        try:
            assert monitor.wait_until(up, timeout=WAIT)
        finally:
            monitor.stop()


# --------------------------------------------------------------------------
# files and processes


@case("files", "StorageError on the next write; nothing crashes; the path opens anew")
def c_queue_file_deleted_while_open(w: World, caplog: Any) -> None:
    w.files_destroyed = True
    for suffix in ("", "-wal", "-shm"):
        os.remove(w.path + suffix)
    with pytest.raises(cs.StorageError, match="deleted, moved or replaced"):
        w.queue.enqueue("put", b"lost?")
    with pytest.raises(cs.StorageError):
        w.queue.take(1)
    w.queue.close()
    with cs.SyncQueue.open(w.path) as fresh:
        assert len(fresh) == 0
        fresh.enqueue("put", b"new")


@case("files", "StorageError on the next write; the file that replaced it is untouched")
def c_queue_file_replaced_while_open(w: World, caplog: Any) -> None:
    w.files_destroyed = True
    other = w.tmp_path / "other.txt"
    other.write_bytes(b"somebody else's file")
    os.replace(other, w.path)
    with pytest.raises(cs.StorageError, match="deleted, moved or replaced"):
        w.queue.enqueue("put", b"x")
    w.queue.close()
    assert Path(w.path).read_bytes() == b"somebody else's file"


@case("processes", "QueueLockedError for the second engine; its enqueue is delivered by the first")
def c_two_processes_start_engines_on_one_file(w: World, caplog: Any) -> None:
    script = Script(w)
    engine = w.engine(script)
    engine.start()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=child_start_engine, args=(w.path, child))
    proc.start()
    child.close()
    try:
        assert parent.poll(30)
        first = parent.recv()
        assert first[0] == "locked", first
        assert parent.poll(30)
        kind, idem = parent.recv()
        assert kind == "enqueued", (kind, idem)
    finally:
        proc.join(30)
        parent.close()
    assert proc.exitcode == 0
    w.wait_delivered({idem, *w.seeds})


@case(
    "processes",
    "child: QueueClosedError on the inherited handle, its own handle works; "
    "it exits cleanly; the parent delivers",
)
def c_fork_after_engine_start(w: World, caplog: Any) -> None:
    w.queue.close()  # the program below is the consumer
    result = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, w.path],
        capture_output=True,
        text=True,
        timeout=HANG_LIMIT / 2,  # a child that hangs at exit fails here
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "ok" and report["child_exit"] == 0
    assert report["got_child_op"], report
    for idem in report["delivered"]:
        w.delivered[idem] = w.seeds.get(idem, b"f")


# --------------------------------------------------------------------------


def test_the_catalogue_has_at_least_40_cases() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


VIRTUAL = {
    "resolver_returns_the_wrong_type",
    "resolver_raises",
    "backoff_returns_nan",
    "backoff_raises",
}


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input(bad: Case, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = cs.VirtualClock(start=1000.0) if bad.id in VIRTUAL else None
    world = World(tmp_path, clock=clock)
    try:
        bad.run(world, caplog)
    except BaseException:
        for engine in world.engines:
            engine.stop(timeout=WAIT)
        raise
    world.settle()
