"""The seed's testing matrix, as pytest scenarios.

The seed design (humancuration/cpc, docs/architectural_improvements/
composite_adapter_sync_queue.md, "Proposed Testing Matrix") lists fifteen rows; each
test here names its row in its docstring. Everything goes through the public
toolkit only: the fixtures of cpcsync's pytest plugin (``sync_queue``,
``faulty_transport``, ``network``, ``sync_engine``, ``simulation``, ``sync_server``,
...), ``cpcsync`` and ``cpcsync.testing``. Runs are on a VirtualClock driven by the
Simulation, so every scenario is deterministic and nothing sleeps.

This module overrides one plugin fixture, ``faulty_transport``, to wrap a recording
far end (:class:`Sink`) instead of the plugin's bare sink, so tests can see exactly
what got through (and how often); the plugin's ``sync_engine`` and ``simulation``
pick the override up. A few classes override more (a custom resolver, an in-memory
queue for the large-queue row, a real HTTP transport for the end-to-end row).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import cpcsync as cs
from cpcsync.testing import FaultyTransport, Scenario, Simulation, SyncServer

HLC = cs.HybridLogicalClock
EVENTS = ("delivered", "retry", "dead_letter", "conflict", "superseded", "network")


# --------------------------------------------------------------------------
# the far end and the event log


@dataclass
class Delivery:
    """One operation the far end accepted."""

    op_id: int
    key: str | None
    payload: bytes
    base_version: int | None
    idempotency_key: str
    time: float

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Sink:
    """The far end behind ``faulty_transport``: a transport callable that records what
    got through. ``script[op_id]`` lists exceptions to raise on that op's successive
    calls (then it accepts); ``refuse`` holds op ids it always fails."""

    clock: cs.Clock
    deliveries: list[Delivery] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    script: dict[int, list[BaseException]] = field(default_factory=dict)
    refuse: dict[int, BaseException] = field(default_factory=dict)

    def __call__(self, op: cs.Operation) -> None:
        self.calls.append(op.id)
        if op.id in self.refuse:
            raise self.refuse[op.id]
        pending = self.script.get(op.id)
        if pending:
            raise pending.pop(0)
        self.deliveries.append(
            Delivery(
                op.id,
                op.key,
                bytes(op.payload),
                op.base_version,
                op.idempotency_key,
                self.clock.now(),
            )
        )

    @property
    def ids(self) -> list[int]:
        return [d.op_id for d in self.deliveries]


@pytest.fixture
def sink(virtual_clock: cs.VirtualClock) -> Sink:
    return Sink(virtual_clock)


@pytest.fixture
def faulty_transport(virtual_clock: cs.VirtualClock, sink: Sink) -> Iterator[FaultyTransport]:
    """Overrides the plugin's: the same FaultyTransport (seed 0, on the virtual clock),
    wrapping the recording ``sink``."""
    ft = FaultyTransport(inner=sink, seed=0, clock=virtual_clock)
    yield ft
    ft.close()


class Events:
    """Every engine event, as the listeners got it."""

    def __init__(self, engine: cs.SyncEngine) -> None:
        self.log: list[dict[str, Any]] = []
        for name in EVENTS:
            engine.on(name, self.log.append)

    def of(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.log if e["event"] == name]

    def names(self) -> list[str]:
        return [e["event"] for e in self.log]


@pytest.fixture
def events(sync_engine: cs.SyncEngine) -> Events:
    return Events(sync_engine)


def attempts_of(ft: FaultyTransport, op_id: int) -> list[Any]:
    return [a for a in ft.history if a.op_id == op_id]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def in_windows(t: float, windows: list[tuple[float, float]]) -> bool:
    return any(start <= t < end for start, end in windows)


# --------------------------------------------------------------------------
# Basic functionality


def test_enqueue_operation_appears_in_queue_serialised_correctly(
    sync_queue: cs.SyncQueue, virtual_clock: cs.VirtualClock
) -> None:
    """Seed row "Enqueue operation": the operation appears in the queue, correctly
    serialised (JSON compact and UTF-8, bytes verbatim, str as UTF-8; every field kept,
    also on disk as another handle reads it back)."""
    virtual_clock.advance(5.0)
    payload = {"currency": "BTC", "note": "café ☕", "amounts": [1, 2.5, None, True]}
    a = sync_queue.enqueue("set_currency", payload, key="user:42", priority=cs.Priority.CRITICAL)
    b = sync_queue.enqueue("upload", b"\x00\xffraw", idempotency_key="upload-7")
    c = sync_queue.enqueue("note", "héllo", key="note:1", priority=cs.Priority.LOW)

    assert len(sync_queue) == 3
    assert sync_queue.stats()["pending"] == 3
    op = sync_queue.get(a)
    assert op is not None
    assert (op.kind, op.key, op.priority, op.state) == ("set_currency", "user:42", 100, "pending")
    assert op.payload == json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    assert op.payload == '{"currency":"BTC","note":"café ☕","amounts":[1,2.5,null,true]}'.encode()
    assert op.json() == payload
    assert (op.attempts, op.last_error, op.created_at, op.next_attempt_at) == (0, None, 5.0, 5.0)
    assert HLC.physical_ms(op.hlc) == 5_000  # stamped on the queue's clock
    assert uuid.UUID(op.idempotency_key).version == 4  # generated when not given

    blob, text = sync_queue.get(b), sync_queue.get(c)
    assert blob is not None and text is not None
    assert (blob.payload, blob.key, blob.priority) == (b"\x00\xffraw", None, cs.Priority.MEDIUM)
    assert blob.idempotency_key == "upload-7"
    assert text.payload == "héllo".encode()
    assert op.hlc < blob.hlc < text.hlc  # stamps follow enqueue order

    # peek shows what take would give: priority first.
    assert [o.id for o in sync_queue.peek(10)] == [a, b, c]

    # On disk: a second handle (read-only) reads back exactly what was written.
    fields = ("id", "kind", "key", "payload", "priority", "idempotency_key", "hlc")
    fields += ("created_at", "attempts", "next_attempt_at", "last_error", "state")
    mine = [tuple(getattr(o, f) for f in fields) for o in sync_queue.peek(10)]
    assert sync_queue.path is not None
    with cs.SyncQueue.open(sync_queue.path, read_only=True) as other:
        assert [tuple(getattr(o, f) for f in fields) for o in other.peek(10)] == mine


def test_dequeue_operation_removed_after_successful_processing(
    sync_queue: cs.SyncQueue,
    simulation: Simulation,
    faulty_transport: FaultyTransport,
    sink: Sink,
    events: Events,
) -> None:
    """Seed row "Dequeue operation": the operation is removed after successful
    processing (and only then: it is still there while a delivery fails)."""
    op_id = sync_queue.enqueue("set_currency", {"currency": "BTC"}, key="user:42")
    faulty_transport.fail_next(1)

    simulation.run_for(0.5)  # the first attempt failed; the retry is due at t=1
    assert len(sync_queue) == 1
    still = sync_queue.get(op_id)
    assert still is not None and still.state == "pending"

    assert simulation.run_until_idle()
    assert faulty_transport.outcomes() == ["transient", "delivered"]
    assert sink.ids == [op_id] and sink.deliveries[0].json() == {"currency": "BTC"}
    assert len(sync_queue) == 0
    assert sync_queue.get(op_id) is None
    assert sync_queue.peek(10) == [] and sync_queue.dead_letters() == []
    stats = sync_queue.stats()
    assert (stats["pending"], stats["in_flight"], stats["dead"]) == (0, 0, 0)
    assert [e["op"].id for e in events.of("delivered")] == [op_id]
    assert sync_queue.path is not None
    with cs.SyncQueue.open(sync_queue.path, read_only=True) as other:
        assert len(other) == 0  # removed on disk too


def test_multiple_operations_processed_in_correct_order(
    sync_queue: cs.SyncQueue, simulation: Simulation, sink: Sink, faulty_transport: FaultyTransport
) -> None:
    """Seed row "Multiple operations": all processed, in the right order: higher
    (effective) priority first, FIFO among equals, strict enqueue order per key; a
    key's priority is the highest of its pending ops (priority inheritance)."""
    P = cs.Priority
    plan = [  # (key, priority) in enqueue order; ids 1..9
        ("cart:1", P.LOW),  # 1
        ("user:1", P.MEDIUM),  # 2: user:1 inherits CRITICAL from 5
        ("cart:1", P.LOW),  # 3
        (None, P.HIGH),  # 4
        ("user:1", P.CRITICAL),  # 5
        ("cart:1", P.LOW),  # 6
        (None, P.LOW),  # 7
        ("audit", P.MEDIUM),  # 8
        (None, P.HIGH),  # 9
    ]
    ids = [
        sync_queue.enqueue("write", {"n": n}, key=key, priority=prio)
        for n, (key, prio) in enumerate(plan)
    ]
    assert ids == list(range(1, 10))
    expected = [2, 5, 4, 9, 8, 1, 3, 6, 7]
    assert [o.id for o in sync_queue.peek(20)] == expected

    assert simulation.run_until_idle()
    assert sink.ids == expected
    assert [a.op_id for a in faulty_transport.history] == expected  # one call each
    assert len(sync_queue) == 0


def _model_order(plan: list[tuple[str | None, int]]) -> list[int]:
    """The documented order (docs/queue-semantics.md): lanes by key (a keyless op is a
    lane of its own), each in id order; next is the lane with the highest effective
    priority (max over its remaining ops), then the lowest head id."""
    lanes: dict[object, list[tuple[int, int]]] = {}
    for op_id, (key, prio) in enumerate(plan, start=1):
        lanes.setdefault(key if key is not None else ("solo", op_id), []).append((op_id, prio))
    order: list[int] = []
    while lanes:
        lane = min(lanes, key=lambda k: (-max(p for _, p in lanes[k]), lanes[k][0][0]))
        order.append(lanes[lane].pop(0)[0])
        if not lanes[lane]:
            del lanes[lane]
    return order


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_multiple_operations_random_mix_follows_documented_order(
    sync_queue: cs.SyncQueue, simulation: Simulation, sink: Sink, seed: int
) -> None:
    """Seed row "Multiple operations", randomised (fixed seeds): 300 ops over 12 keys
    and keyless, random priorities; delivered in exactly the documented order, and
    each key's payloads in enqueue order."""
    rng = random.Random(seed)
    keys: list[str | None] = [f"k{i}" for i in range(12)] + [None] * 3
    plan = [(rng.choice(keys), rng.choice([0, 25, 50, 60, 75, 100, 255])) for _ in range(300)]
    sync_queue.enqueue_many(
        [
            {"kind": "w", "payload": {"n": n}, "key": key, "priority": prio}
            for n, (key, prio) in enumerate(plan)
        ]
    )
    assert simulation.run_until_idle()
    assert sink.ids == _model_order(plan)
    per_key: dict[str | None, list[int]] = {}
    for d in sink.deliveries:
        if d.key is not None:
            per_key.setdefault(d.key, []).append(d.json()["n"])
    assert all(seq == sorted(seq) for seq in per_key.values())


# --------------------------------------------------------------------------
# Error handling


TIMEOUT = 10.0  # FaultyTransport's default: a timeout fault fails after 10 s on the clock


@pytest.mark.parametrize(
    ("fault", "outcome", "delay", "waited"),
    [
        (None, "transient", 1.0, 0.0),  # the default: a transient failure (a 5xx)
        (cs.TransientError("HTTP 503"), "transient", 1.0, 0.0),
        ("network", "network", 1.0, 0.0),
        ("timeout", "network", 1.0, TIMEOUT),
        ("reset", "network", 1.0, 0.0),
        (TimeoutError("read timed out"), "network", 1.0, TIMEOUT),
        (ConnectionResetError(), "network", 1.0, 0.0),
        (cs.RetryAfter(3), "retry_after", 3.0, 0.0),  # the server's delay, not the backoff's
    ],
)
def test_operation_fails_once_is_retried_and_attempt_counted(
    sync_queue: cs.SyncQueue,
    simulation: Simulation,
    faulty_transport: FaultyTransport,
    sink: Sink,
    events: Events,
    fault: Any,
    outcome: str,
    delay: float,
    waited: float,
) -> None:
    """Seed row "Operation fails once": retried, attempt count incremented. (A timeout
    fails only after the transport's timeout: the retry is due that much later.) A
    network failure (no server answered) is counted apart, in network_failures: it
    never uses up max_attempts (DESIGN.md, "Outages are not the op's fault")."""
    network = outcome == "network"
    attempts = 0 if network else 1
    op_id = sync_queue.enqueue("set_currency", {"currency": "BTC"}, key="user:42")
    faulty_transport.fail_next(1, fault)

    simulation.run_for(waited + delay / 2)  # after the failure, before the retry is due
    op = sync_queue.get(op_id)
    assert op is not None
    assert (op.state, op.attempts, op.next_attempt_at) == ("pending", attempts, waited + delay)
    assert op.network_failures == (1 if network else 0)
    assert op.last_error is not None and "injected" in op.last_error
    assert sink.ids == []

    assert simulation.run_until_idle()
    history = faulty_transport.history
    assert [(a.op_id, a.outcome) for a in history] == [(op_id, outcome), (op_id, "delivered")]
    assert [a.time for a in history] == [0.0, waited + delay]
    retries = events.of("retry")
    assert [(e["op"].id, e["delay"], e["network"]) for e in retries] == [(op_id, delay, network)]
    delivered = events.of("delivered")
    assert [(e["op"].id, e["op"].attempts) for e in delivered] == [(op_id, attempts + 1)]
    assert sink.ids == [op_id]  # delivered once, after the retry
    assert len(sync_queue) == 0 and sync_queue.dead_letters() == []


def test_operation_fails_max_retries_is_dead_lettered_and_not_retried(
    sync_queue: cs.SyncQueue,
    simulation: Simulation,
    faulty_transport: FaultyTransport,
    sink: Sink,
    events: Events,
    sync_engine_options: dict[str, Any],
) -> None:
    """Seed row "Operation fails max retries": marked as failed (dead-lettered with its
    error), not retried again; its key's next op and other keys go on."""
    max_attempts = sync_engine_options["max_attempts"]
    bad = sync_queue.enqueue("set_currency", {"currency": "XXX"}, key="user:42")
    after = sync_queue.enqueue("set_currency", {"currency": "BTC"}, key="user:42")
    other = sync_queue.enqueue("set_lang", {"lang": "en"}, key="user:7")
    sink.refuse[bad] = cs.TransientError("HTTP 503 from upstream")

    assert simulation.run_until_idle()  # empty: bad is dead, the others delivered
    tries = attempts_of(faulty_transport, bad)
    assert len(tries) == max_attempts == 5
    assert [a.time for a in tries] == [0.0, 1.0, 3.0, 7.0, 15.0]
    assert {a.outcome for a in tries} == {"transient"}

    dead = sync_queue.dead_letters()
    assert [(d.id, d.state, d.attempts) for d in dead] == [(bad, "dead", max_attempts)]
    assert dead[0].last_error is not None
    assert dead[0].last_error.startswith(f"gave up after {max_attempts} attempts")
    assert "HTTP 503 from upstream" in dead[0].last_error  # the error chain is kept
    assert [e["op"].id for e in events.of("dead_letter")] == [bad]
    assert len(events.of("retry")) == max_attempts - 1

    # A failing key never blocks other keys; its own next op waits for the dead letter.
    assert sink.ids == [other, after]
    assert [d.time for d in sink.deliveries] == [0.0, 15.0]

    # Not retried again, however long we wait.
    calls = len(faulty_transport.history)
    simulation.run_for(24 * 3600)
    assert len(faulty_transport.history) == calls
    assert [d.id for d in sync_queue.dead_letters()] == [bad]
    assert len(sync_queue) == 0


def test_operation_failing_permanently_is_dead_lettered_at_once(
    sync_queue: cs.SyncQueue,
    simulation: Simulation,
    faulty_transport: FaultyTransport,
    events: Events,
) -> None:
    """Seed row "Operation fails max retries", permanent variant: a PermanentError
    (e.g. HTTP 400) is not retried at all: one attempt, then the dead letter."""
    op_id = sync_queue.enqueue("set_currency", {"currency": "???"}, key="user:42")
    faulty_transport.fail_next(1, cs.PermanentError("HTTP 400: unknown currency"))
    assert simulation.run_until_idle()
    simulation.run_for(3600)
    assert [(a.op_id, a.outcome) for a in faulty_transport.history] == [(op_id, "permanent")]
    dead = sync_queue.dead_letters()
    assert [(d.id, d.attempts) for d in dead] == [(op_id, 1)]
    assert dead[0].last_error is not None and "HTTP 400" in dead[0].last_error
    assert events.of("retry") == []


def _run_storage_child(mode: str, path: Path) -> dict[str, Any]:
    from _storage_child import run_child  # the child script; tests_py/ is on sys.path

    return run_child(mode, path)


def test_storage_failure_queue_recovers_when_storage_restored(tmp_path: Path) -> None:
    """Seed row "Storage failure": the queue recovers when storage is restored.

    For real, in a child process: with RLIMIT_FSIZE lowered to 0 every write to the
    queue file fails (EFBIG); enqueue, take, ack, retry and dead_letter raise
    cs.StorageError (SQLite's error as the cause) and change nothing; reads still
    work. With the limit raised back, the same handle works again and no acknowledged
    enqueue is lost."""
    obs = _run_storage_child("queue", tmp_path / "queue.db")

    for call, what in obs["failing"].items():
        assert what.get("raised") == "StorageError", (call, what)
        assert what["is_storage_error"] and what["is_sync_error"], (call, what)
        assert what["cause"] == "SQLiteError", (call, what)
        assert what["sqlite_code"] != 0, (call, what)
    # Nothing changed while storage failed, and the acknowledged enqueues are intact.
    assert obs["during"] == obs["before"] == {"len": 8, "pending": 7, "in_flight": 1, "dead": 0}
    assert obs["peek_during"] == obs["peek_before"]

    assert "returned" in obs["enqueue_after"], obs["enqueue_after"]
    assert "returned" in obs["ack_after"], obs["ack_after"]
    new_id = obs["enqueue_after"]["returned"]
    drained = obs["drained"]
    expected_ids = set(obs["acked_enqueues"]) - {obs["removed"], obs["in_flight"]} | {new_id}
    assert [d["id"] for d in drained if d["id"] != new_id] == obs["peek_before"]
    assert {d["id"] for d in drained} == expected_ids  # nothing lost, nothing extra
    assert all("lost" not in d["payload"] for d in drained)  # failed enqueues stored nothing
    for key in {d["key"] for d in drained}:
        seqs = [d["payload"].get("seq", 99) for d in drained if d["key"] == key]
        assert seqs == sorted(seqs)
    assert obs["after"] == obs["reopened"] == {"len": 0, "pending": 0, "in_flight": 0, "dead": 0}


def test_storage_failure_during_delivery_engine_recovers_when_restored(tmp_path: Path) -> None:
    """Seed row "Storage failure", engine level: the disk fills between a delivery and
    its acknowledgement (the server has the op, the local ack cannot be written). Once
    storage is back, the engine must go on without a restart: nothing left in the
    queue (the op whose ack failed is acknowledged or sent again, as at-least-once
    allows), its key not blocked, every other op delivered exactly once."""
    obs = _run_storage_child("engine", tmp_path / "queue.db")

    # While the disk is full the run cannot go on; how it stops is the harness's
    # business, but it must not claim success.
    failing = obs["while_failing"]
    assert failing.get("returned") is not True, failing
    if "raised" in failing:
        assert failing["is_storage_error"], failing

    assert obs["after_restore"] == {"returned": True}, obs
    assert obs["counts"] == {"len": 0, "pending": 0, "in_flight": 0, "dead": 0}, obs
    assert obs["stuck"] == []
    calls = Counter(obs["calls"])
    assert set(calls) == set(obs["ids"])  # nothing lost
    assert calls[obs["fail_storage_on"]] >= 1
    assert all(n == 1 for op_id, n in calls.items() if op_id != obs["fail_storage_on"])


# --------------------------------------------------------------------------
# Network simulation


def test_network_disconnects_during_processing_handled_gracefully(
    sync_queue: cs.SyncQueue,
    simulation: Simulation,
    faulty_transport: FaultyTransport,
    network: cs.NetworkMonitor,
    sink: Sink,
    events: Events,
) -> None:
    """Seed row "Network disconnects during processing": the queue handles the
    interruption gracefully. Each call takes 1 s; the link drops at t=4.5 for 6 s
    (the monitor is not told): calls fail with network errors and are retried; none
    is lost, all are delivered after the heal, none twice, each key in order."""
    ids = [sync_queue.enqueue("put", {"seq": i}, key=f"k{i % 4}") for i in range(12)]
    faulty_transport.set_latency(1.0)
    window = (4.5, 10.5)
    simulation.apply(Scenario().partition(window[1] - window[0], at=window[0]))

    assert simulation.run_until_idle()
    history = faulty_transport.history
    inside = [a for a in history if in_windows(a.time, [window])]
    outside = [a for a in history if not in_windows(a.time, [window])]
    assert inside and all(a.outcome == "network" and "partitioned" in a.error for a in inside)
    assert all(a.outcome == "delivered" for a in outside)
    assert any(a.time < window[0] for a in outside)  # the drop came mid-run...
    assert any(a.time >= window[1] for a in outside)  # ...and work resumed after it
    assert network.is_connected  # a partition: the monitor never knew

    assert Counter(sink.ids) == Counter(ids)  # every op exactly once
    assert len(sync_queue) == 0 and sync_queue.dead_letters() == []
    for k in range(4):
        seqs = [d.json()["seq"] for d in sink.deliveries if d.key == f"k{k}"]
        assert seqs == sorted(seqs)
    retries = events.of("retry")
    assert len(retries) == len(inside)
    assert all("partitioned" in e["error"] for e in retries)


def test_intermittent_connectivity_processed_when_restored(
    sync_queue: cs.SyncQueue,
    simulation: Simulation,
    faulty_transport: FaultyTransport,
    sink: Sink,
    events: Events,
) -> None:
    """Seed row "Intermittent connectivity": operations are processed when
    connectivity is restored, and nothing is attempted while the monitor says
    offline (so no attempt is wasted on a dead link)."""
    ids = [sync_queue.enqueue("put", {"seq": i}, key=f"k{i % 5}") for i in range(20)]
    faulty_transport.set_latency(1.0)
    offline = [(3.5, 8.5), (12.0, 22.0), (25.0, 40.0)]
    scenario = Scenario()
    for start, end in offline:
        scenario.offline(end - start, at=start)
    simulation.apply(scenario)

    assert simulation.run_until_idle()
    history = faulty_transport.history
    assert [a for a in history if in_windows(a.time, offline)] == []
    assert faulty_transport.outcomes() == ["delivered"] * 20  # no failed attempt at all
    starts = {a.time for a in history}
    assert all(end in starts for _, end in offline)  # work resumed the moment it came back
    assert Counter(sink.ids) == Counter(ids)
    assert len(sync_queue) == 0
    assert [e["connected"] for e in events.of("network")] == [False, True] * len(offline)


def test_network_flapping_does_not_get_stuck_in_retry_loops(
    sync_queue: cs.SyncQueue,
    simulation: Simulation,
    faulty_transport: FaultyTransport,
    sink: Sink,
    events: Events,
) -> None:
    """Seed row "Network flapping": the queue does not get stuck in retry loops. The
    link flaps (down 2 s, up 2 s, ten times) while five retries are pending; attempts
    stay bounded (no attempt while down, one retry per injected failure), all ops are
    delivered, and the run ends."""
    ids = [sync_queue.enqueue("put", {"seq": i}, key=f"k{i % 6}") for i in range(30)]
    faulty_transport.set_latency(0.5)
    faulty_transport.fail_next(5)  # five retries in flight when the flapping starts
    simulation.apply(Scenario().flap(period=2.0, count=10, at=1.0))
    down = [(1.0 + 4 * i, 3.0 + 4 * i) for i in range(10)]

    assert simulation.run_until_idle(limit=3600)
    history = faulty_transport.history
    assert len(history) == len(ids) + 5  # bounded: one extra attempt per injected failure
    assert Counter(faulty_transport.outcomes()) == {"delivered": 30, "transient": 5}
    assert [a for a in history if in_windows(a.time, down)] == []
    assert Counter(sink.ids) == Counter(ids)
    delivered_after = {e["op"].id: e["op"].attempts for e in events.of("delivered")}
    assert delivered_after == {i: len(attempts_of(faulty_transport, i)) for i in ids}
    assert sum(delivered_after.values()) == len(ids) + 5
    assert len(sync_queue) == 0 and sync_queue.dead_letters() == []
    assert simulation.now <= 45.0  # done soon after the flapping (ends at t=41)


class TestTransportFlapping:
    """Flapping the monitor never sees (FaultyTransport.flap), with room for retries."""

    @pytest.fixture
    def sync_engine_options(self, sync_engine_options: dict[str, Any]) -> dict[str, Any]:
        return {**sync_engine_options, "max_attempts": 10}

    def test_network_flapping_unseen_by_monitor_backs_off_and_delivers(
        self,
        sync_queue: cs.SyncQueue,
        simulation: Simulation,
        faulty_transport: FaultyTransport,
        sink: Sink,
        sync_engine_options: dict[str, Any],
    ) -> None:
        """Seed row "Network flapping", link-level: the link flaps (down 1.5 s, up
        1.5 s, eight times) and calls during the down phases fail; every retry waits
        at least its backoff delay (no tight loop; at most the other ops' calls
        longer, one consumer), every op is delivered once, the run ends."""
        ids = [sync_queue.enqueue("put", {"seq": i}, key=f"k{i % 4}") for i in range(8)]
        latency = 0.25
        faulty_transport.set_latency(latency)
        faulty_transport.flap(1.5, 8, start=0.0)
        backoff = sync_engine_options["backoff"]

        assert simulation.run_until_idle(limit=3600)
        assert Counter(sink.ids) == Counter(ids)
        assert sync_queue.dead_letters() == []
        for op_id in ids:
            tries = attempts_of(faulty_transport, op_id)
            assert [a.outcome for a in tries][-1] == "delivered"
            assert len(tries) <= sync_engine_options["max_attempts"]
            for n, (a, b) in enumerate(itertools.pairwise(tries), start=1):
                assert a.outcome == "network"
                wait = b.time - (a.time + a.latency)
                assert backoff.next_delay(n) <= wait <= backoff.next_delay(n) + 8 * latency
        failures = [a for a in faulty_transport.history if a.outcome != "delivered"]
        assert failures and all("partitioned" in a.error for a in failures)


# --------------------------------------------------------------------------
# Conflict resolution


@pytest.mark.parametrize("remote_is", ["older", "newer"])
def test_local_and_remote_changes_default_resolver_picks_correct_version(
    sync_queue: cs.SyncQueue,
    simulation: Simulation,
    faulty_transport: FaultyTransport,
    virtual_clock: cs.VirtualClock,
    sink: Sink,
    events: Events,
    remote_is: str,
) -> None:
    """Seed row "Local & remote changes": the default resolver (LastWriteWins on HLC)
    picks the correct version. A remote write older than ours: ours is resent against
    the remote version. Newer: the remote value stands and ours is superseded."""
    virtual_clock.advance(100.0)
    op_id = sync_queue.enqueue("set_currency", {"currency": "BTC"}, key="user:42")
    op = sync_queue.get(op_id)
    assert op is not None and op.hlc == sync_queue.last_hlc
    remote_hlc = op.hlc - 1 if remote_is == "older" else op.hlc + 1
    remote = {"currency": "EUR"}
    faulty_transport.fail_next(1, cs.ConflictError(remote, remote_hlc, 7))

    assert simulation.run_until_idle()
    conflicts = events.of("conflict")
    assert [e["op"].id for e in conflicts] == [op_id]
    assert conflicts[0]["remote_hlc"] == remote_hlc
    if remote_is == "older":
        assert faulty_transport.outcomes() == ["conflict", "delivered"]
        assert [(d.json(), d.base_version) for d in sink.deliveries] == [({"currency": "BTC"}, 7)]
        assert events.of("superseded") == []
    else:
        assert faulty_transport.outcomes() == ["conflict"]
        assert sink.deliveries == []  # never resent
        superseded = events.of("superseded")
        assert [e["op"].id for e in superseded] == [op_id]
        assert json.loads(superseded[0]["remote"]) == remote
    assert len(sync_queue) == 0 and sync_queue.dead_letters() == []


@pytest.mark.parametrize(
    ("remote_at", "winner"),
    [(50.0, "local"), (99.999, "local"), (100.001, "remote"), (150.0, "remote")],
)
def test_timestamp_conflicts_most_recent_change_wins(
    sync_queue: cs.SyncQueue,
    simulation: Simulation,
    faulty_transport: FaultyTransport,
    virtual_clock: cs.VirtualClock,
    sink: Sink,
    events: Events,
    remote_at: float,
    winner: str,
) -> None:
    """Seed row "Timestamp conflicts": resolution is based on the most recent change.
    Our write happens at t=100 s; the server's at ``remote_at`` (stamped in the same
    HLC format); the later of the two stands."""
    virtual_clock.advance(100.0)
    op_id = sync_queue.enqueue("rename", {"name": "Ann"}, key="user:42")
    remote_hlc = HLC.pack(round(remote_at * 1000), 0)
    faulty_transport.fail_next(1, cs.ConflictError({"name": "Bob"}, remote_hlc, 3))

    assert simulation.run_until_idle()
    if winner == "local":
        assert [(d.op_id, d.json()) for d in sink.deliveries] == [(op_id, {"name": "Ann"})]
        assert events.of("superseded") == []
    else:
        assert sink.deliveries == []
        assert [json.loads(e["remote"]) for e in events.of("superseded")] == [{"name": "Bob"}]


def test_timestamp_conflict_tie_goes_to_local(
    sync_queue: cs.SyncQueue, simulation: Simulation, faulty_transport: FaultyTransport, sink: Sink
) -> None:
    """Seed row "Timestamp conflicts", tie: equal stamps keep the local write (as the
    seed's TimestampConflictResolver decides)."""
    op_id = sync_queue.enqueue("rename", {"name": "Ann"}, key="user:42")
    op = sync_queue.get(op_id)
    assert op is not None
    faulty_transport.fail_next(1, cs.ConflictError({"name": "Bob"}, op.hlc, 3))
    assert simulation.run_until_idle()
    assert [(d.op_id, d.json(), d.base_version) for d in sink.deliveries] == [
        (op_id, {"name": "Ann"}, 3)
    ]


def test_timestamp_conflicts_survive_a_skewed_local_clock(
    sync_queue: cs.SyncQueue,
    simulation: Simulation,
    faulty_transport: FaultyTransport,
    virtual_clock: cs.VirtualClock,
    sink: Sink,
    events: Events,
) -> None:
    """Seed row "Timestamp conflicts", skew: our wall clock is an hour behind the
    server's. Our first write (made before we saw the server's) loses to it; a write
    made after the conflict is stamped after the server's (the HLC observed it), so it
    is the most recent change and wins, although our wall clock still says earlier."""
    virtual_clock.advance(100.0)
    first = sync_queue.enqueue("rename", {"name": "Ann"}, key="user:42")
    server_hlc = HLC.pack(3_700_000, 0)  # the server's clock: t=3700 s
    faulty_transport.fail_next(1, cs.ConflictError({"name": "Bob"}, server_hlc, 1))
    assert simulation.run_until_idle()
    assert [e["op"].id for e in events.of("superseded")] == [first]

    virtual_clock.advance(1.0)  # still ~an hour behind the server
    second = sync_queue.enqueue("rename", {"name": "Cy"}, key="user:42")
    op = sync_queue.get(second)
    assert op is not None and op.hlc > server_hlc
    faulty_transport.fail_next(1, cs.ConflictError({"name": "Bob"}, server_hlc, 1))
    assert simulation.run_until_idle()
    assert [(d.op_id, d.json()) for d in sink.deliveries] == [(second, {"name": "Cy"})]


class RecordingResolver:
    """A custom resolver: merges ``merge:*`` keys, lets the server win on ``server:*``,
    keeps ours on anything else; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[cs.Operation, cs.Remote]] = []

    def __call__(self, local: cs.Operation, remote: cs.Remote) -> cs.Resolution:
        self.calls.append((local, remote))
        assert local.key is not None
        if local.key.startswith("merge:"):
            return cs.Resolution.merge({**remote.json(), **local.json(), "merged": True})
        if local.key.startswith("server:"):
            return cs.Resolution.use_remote()
        return cs.Resolution.use_local()


class TestCustomResolver:
    @pytest.fixture
    def resolver(self) -> RecordingResolver:
        return RecordingResolver()

    @pytest.fixture
    def sync_engine_options(
        self, sync_engine_options: dict[str, Any], resolver: RecordingResolver
    ) -> dict[str, Any]:
        """The plugin's defaults plus our resolver."""
        return {**sync_engine_options, "resolver": resolver}

    def test_custom_resolver_invoked_and_decision_applied(
        self,
        sync_queue: cs.SyncQueue,
        simulation: Simulation,
        faulty_transport: FaultyTransport,
        sink: Sink,
        events: Events,
        resolver: RecordingResolver,
    ) -> None:
        """Seed row "Custom resolver implementation": the custom resolver is invoked
        (once per conflict, with the local Operation and the server's Remote) and its
        decision is what happens: merge resends the merged payload, use_remote
        supersedes, use_local resends ours; against the remote version each time."""
        m = sync_queue.enqueue("profile", {"name": "Ann", "lang": "en"}, key="merge:1")
        s = sync_queue.enqueue("profile", {"name": "Ann"}, key="server:1")
        k = sync_queue.enqueue("profile", {"name": "Ann"}, key="keep:1")
        no_conflict = sync_queue.enqueue("profile", {"name": "Dee"}, key="plain:1")
        remote_hlc = HLC.pack(1, 0)
        for op_id, version in ((m, 4), (s, 5), (k, 6)):
            remote = cs.ConflictError({"name": "Bob", "tz": "UTC"}, remote_hlc, version)
            sink.script[op_id] = [remote]

        assert simulation.run_until_idle()
        assert [
            (local.id, remote.json(), remote.hlc, remote.version)
            for local, remote in resolver.calls
        ] == [
            (m, {"name": "Bob", "tz": "UTC"}, remote_hlc, 4),
            (s, {"name": "Bob", "tz": "UTC"}, remote_hlc, 5),
            (k, {"name": "Bob", "tz": "UTC"}, remote_hlc, 6),
        ]
        local = resolver.calls[0][0]
        assert isinstance(local, cs.Operation) and isinstance(resolver.calls[0][1], cs.Remote)
        assert (local.kind, local.json()) == ("profile", {"name": "Ann", "lang": "en"})

        got = {d.op_id: (d.json(), d.base_version) for d in sink.deliveries}
        assert got == {
            m: ({"name": "Ann", "tz": "UTC", "lang": "en", "merged": True}, 4),
            k: ({"name": "Ann"}, 6),
            no_conflict: ({"name": "Dee"}, None),
        }
        assert [e["op"].id for e in events.of("superseded")] == [s]
        assert len(events.of("conflict")) == 3
        assert len(sync_queue) == 0 and sync_queue.dead_letters() == []


# --------------------------------------------------------------------------
# Performance


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class TestLargeQueue:
    """The large-queue row on an in-memory queue: 100k ops per batch through the
    engine. (The SQLite queue costs ~0.2 ms per delivery on this machine, so 300k
    durable deliveries would take over a minute; the engine, transport and
    simulation paths are the same.)"""

    @pytest.fixture
    def sync_queue(self, virtual_clock: cs.VirtualClock) -> Iterator[cs.SyncQueue]:
        q = cs.SyncQueue.in_memory(clock=virtual_clock)
        yield q
        q.close()

    @pytest.fixture
    def faulty_transport(self, virtual_clock: cs.VirtualClock) -> Iterator[FaultyTransport]:
        """The plugin's bare sink (seed 0): nothing recorded on the Python side."""
        ft = FaultyTransport(seed=0, clock=virtual_clock)
        yield ft
        ft.close()

    def test_large_queue_processing_memory_remains_stable(
        self,
        sync_queue: cs.SyncQueue,
        simulation: Simulation,
        faulty_transport: FaultyTransport,
    ) -> None:
        """Seed row "Large queue processing": memory usage remains stable. Three
        batches of 100,000 ops (enqueue_many, then the simulation delivers them all);
        the first warms up allocators and caches; between the second and the third,
        RSS (full queue and drained queue alike) grows by less than 8 MiB, i.e. less
        than ~84 bytes per op processed."""
        n, chunk = 100_000, 10_000
        full: list[int] = []
        drained: list[int] = []
        for _ in range(3):
            for start in range(0, n, chunk):
                sync_queue.enqueue_many(
                    [
                        {
                            "kind": "put",
                            "payload": b'{"i":%d}' % i,
                            "key": f"k{i % 1000}",
                            "priority": (25, 50, 75, 100)[i % 4],
                        }
                        for i in range(start, start + chunk)
                    ]
                )
            assert len(sync_queue) == n
            full.append(_rss_bytes())
            assert simulation.run_until_idle()
            assert len(sync_queue) == 0
            history = faulty_transport.history
            assert len(history) == n and {a.outcome for a in history} == {"delivered"}
            del history
            faulty_transport.clear_history()  # the test's own record, not the queue's
            drained.append(_rss_bytes())
        bound = 8 * 1024 * 1024
        assert full[2] - full[1] < bound, [f / 2**20 for f in full]
        assert drained[2] - drained[1] < bound, [d / 2**20 for d in drained]


def test_high_priority_processing_critical_operations_first(
    sync_queue: cs.SyncQueue,
    simulation: Simulation,
    faulty_transport: FaultyTransport,
    sink: Sink,
) -> None:
    """Seed row "High priority processing": critical operations are processed first.
    Mixed priorities are enqueued (in random order, fixed seed) while offline; after
    the reconnect at t=10 the first transport call is a CRITICAL op and the delivery
    order is by priority, FIFO among equals."""
    rng = random.Random(42)
    P = cs.Priority
    priorities = [rng.choice([P.LOW, P.MEDIUM, P.HIGH, P.CRITICAL]) for _ in range(60)]
    simulation.apply(Scenario().offline(10.0))
    ids = [
        sync_queue.enqueue("op", {"n": n}, key=f"entity:{n}", priority=prio)
        for n, prio in enumerate(priorities)
    ]
    simulation.run_for(5.0)
    assert faulty_transport.history == []  # offline: nothing attempted

    assert simulation.run_until_idle()
    history = faulty_transport.history
    assert history[0].time == 10.0 and history[0].priority == P.CRITICAL
    by_priority = sorted(zip(ids, priorities, strict=True), key=lambda t: (-t[1], t[0]))
    assert [a.op_id for a in history] == [i for i, _ in by_priority]
    assert [a.priority for a in history] == sorted(priorities, reverse=True)
    assert sink.ids == [a.op_id for a in history]


@pytest.mark.parametrize("latency", [0.0, 0.25])
def test_backoff_strategy_retry_delays_follow_expected_pattern(
    sync_queue: cs.SyncQueue,
    simulation: Simulation,
    faulty_transport: FaultyTransport,
    events: Events,
    sync_engine_options: dict[str, Any],
    latency: float,
) -> None:
    """Seed row "Backoff strategy": retry delays follow the expected pattern: with the
    plugin's ExponentialBackoff(base=1, factor=2, jitter="none"), 1, 2, 4, 8 s between
    a failed call's end and the next call (with latency 0, between call starts)."""
    backoff = sync_engine_options["backoff"]
    faulty_transport.set_latency(latency)
    faulty_transport.fail_next(4)
    op_id = sync_queue.enqueue("set_currency", {"currency": "BTC"}, key="user:42")

    assert simulation.run_until_idle()
    tries = attempts_of(faulty_transport, op_id)
    assert [a.outcome for a in tries] == ["transient"] * 4 + ["delivered"]
    assert all(a.latency == latency for a in tries)
    waits = [b.time - (a.time + a.latency) for a, b in itertools.pairwise(tries)]
    assert waits == [1.0, 2.0, 4.0, 8.0] == [backoff.next_delay(n) for n in range(1, 5)]
    if latency == 0.0:
        assert [a.time for a in tries] == [0.0, 1.0, 3.0, 7.0, 15.0]
        assert gaps([a.time for a in tries]) == [1.0, 2.0, 4.0, 8.0]
    assert [e["delay"] for e in events.of("retry")] == [1.0, 2.0, 4.0, 8.0]


class TestBackoffCap:
    @pytest.fixture
    def sync_engine_options(self) -> dict[str, Any]:
        return {
            "backoff": cs.ExponentialBackoff(base=0.5, factor=3.0, max_delay=10.0, jitter="none"),
            "max_attempts": 8,
        }

    def test_backoff_delays_capped_and_server_retry_after_honoured(
        self,
        sync_queue: cs.SyncQueue,
        simulation: Simulation,
        faulty_transport: FaultyTransport,
    ) -> None:
        """Seed row "Backoff strategy", configured: base 0.5, factor 3, capped at 10 s
        gives 0.5, 1.5, 4.5, 10, 10; a server's Retry-After (here 30 s) replaces the
        backoff's delay for that one retry, and the backoff resumes after it."""
        faulty_transport.fail_next(3)
        faulty_transport.fail_next(1, cs.RetryAfter(30))
        faulty_transport.fail_next(2)
        op_id = sync_queue.enqueue("set_currency", {"currency": "BTC"}, key="user:42")
        assert simulation.run_until_idle()
        tries = attempts_of(faulty_transport, op_id)
        assert [a.outcome for a in tries] == ["transient"] * 3 + ["retry_after"] + [
            "transient"
        ] * 2 + ["delivered"]
        assert gaps([a.time for a in tries]) == [0.5, 1.5, 4.5, 30.0, 10.0, 10.0]


# --------------------------------------------------------------------------
# End to end: HttpTransport -> SyncServer, with faults


@dataclass
class LossyHttp:
    """HttpTransport with one scripted fault the FaultyTransport cannot make: the
    server applies an op but its answer is lost (the call raises TimeoutError after
    the POST went through), so the op is resent with the same idempotency key."""

    http: cs.HttpTransport
    lose_answer_once: set[int] = field(default_factory=set)

    def __call__(self, op: cs.Operation) -> None:
        self.http(op)
        if op.id in self.lose_answer_once:
            self.lose_answer_once.discard(op.id)
            raise TimeoutError("the answer was lost on the way back")


class TestEndToEndHttp:
    @pytest.fixture
    def lossy_http(self, sync_server: SyncServer) -> Iterator[LossyHttp]:
        with cs.HttpTransport(sync_server.url, timeout=10.0) as http:
            yield LossyHttp(http)

    @pytest.fixture
    def faulty_transport(
        self, virtual_clock: cs.VirtualClock, lossy_http: LossyHttp
    ) -> Iterator[FaultyTransport]:
        """FaultyTransport(inner=HttpTransport(sync_server.url)), as the plugin's
        docstring suggests, with a lossy answer path."""
        ft = FaultyTransport(inner=lossy_http, seed=0, clock=virtual_clock)
        yield ft
        ft.close()

    def test_http_to_sync_server_with_5xx_partition_and_lost_answer(
        self,
        sync_queue: cs.SyncQueue,
        simulation: Simulation,
        faulty_transport: FaultyTransport,
        sync_server: SyncServer,
        lossy_http: LossyHttp,
    ) -> None:
        """End to end (the seed's happy path, made unhappy): HttpTransport ->
        SyncServer driven by the simulation; the server fails its first two requests
        (503), the link is partitioned from t=1.2 to t=4.2, and one answer is lost
        after the server applied the op. Everything is applied, each idempotency key
        exactly once, each key's writes in order, final values right."""
        carts = [
            sync_queue.enqueue("set_qty", {"cart": c, "qty": n}, key=f"cart:{c}")
            for n in range(3)
            for c in range(1, 4)
        ]
        for n in range(3):
            sync_queue.enqueue(
                "audit", {"audit": n}, priority=cs.Priority.LOW, idempotency_key=f"audit-{n}"
            )
        all_keys = {op.idempotency_key for op in sync_queue.peek(100)}
        assert {"audit-0", "audit-1", "audit-2"} <= all_keys and len(all_keys) == 12
        lost = carts[4]  # cart:2's second write
        lost_op = sync_queue.get(lost)
        assert lost_op is not None and lost_op.key == "cart:2"
        lossy_http.lose_answer_once.add(lost)
        sync_server.fail_next(2, status=503)
        faulty_transport.set_latency(0.5)
        simulation.apply(Scenario().partition(3.0, at=1.2))

        assert simulation.run_until_idle(limit=600)
        assert len(sync_queue) == 0 and sync_queue.dead_letters() == []

        outcomes = Counter(faulty_transport.outcomes())
        assert outcomes["transient"] == 2  # the two 503s
        partitioned = [a for a in faulty_transport.history if "partitioned" in a.error]
        assert partitioned and all(1.2 <= a.time < 4.2 for a in partitioned)
        lost_tries = attempts_of(faulty_transport, lost)
        assert [a.outcome for a in lost_tries][-2:] == ["network", "delivered"]
        assert "answer was lost" in lost_tries[-2].error

        applied = sync_server.applied
        assert {k: (v["value"], v["version"]) for k, v in applied.items()} == {
            f"cart:{c}": ({"cart": c, "qty": 2}, 3) for c in range(1, 4)
        }
        log = sync_server.log
        assert Counter(b["idempotency_key"] for b in log) == Counter(all_keys)  # once each
        received = Counter(b["idempotency_key"] for b in sync_server.received)
        assert received[lost_op.idempotency_key] == 2  # sent twice, applied once
        assert all(n == 1 for k, n in received.items() if k != lost_op.idempotency_key)
        for c in range(1, 4):
            qty = [b["payload"]["qty"] for b in log if b["key"] == f"cart:{c}"]
            assert qty == [0, 1, 2]
        assert sorted(b["payload"]["audit"] for b in log if b["key"] is None) == [0, 1, 2]
        failed_requests = len(sync_server.requests) - len(sync_server.received)
        assert failed_requests == 2
