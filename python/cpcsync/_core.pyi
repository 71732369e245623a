"""
cpcsync's C++ core (private: import cpcsync instead).
"""

from __future__ import annotations

import collections.abc
import os
import types
import typing

Payload: typing.TypeAlias = bytes | bytearray | memoryview | str | typing.Any
__all__: list[str] = [
    "Attempt",
    "BackoffStrategy",
    "CallableBackoff",
    "CallableResolver",
    "CappedBackoff",
    "ClientWins",
    "Clock",
    "ConflictResolver",
    "ConstantBackoff",
    "ExponentialBackoff",
    "FaultyTransport",
    "FieldMerge",
    "HybridLogicalClock",
    "LastWriteWins",
    "LinearBackoff",
    "NetworkMonitor",
    "Operation",
    "Probe",
    "ProcessingSummary",
    "Remote",
    "Resolution",
    "ServerWins",
    "SumBackoff",
    "SyncEngine",
    "SyncQueue",
    "SystemClock",
    "TcpProbe",
    "Transport",
    "VirtualClock",
    "flush_logs",
    "set_log_level",
]

class Clock:
    """
    Base class of cpcsync's clocks: the only source of time for queues, monitors and
    engines. Use SystemClock (the default) or VirtualClock in tests.
    """
    def now(self) -> float:
        """
        Seconds on the clock's monotonic timeline: the time base of every wait, timeout,
        interval, backoff delay and of the times a queue stores (op.created_at,
        op.next_attempt_at, ...). It never jumps when the wall clock is stepped. For
        SystemClock it is anchored to the wall clock once per boot, so it reads as roughly
        Unix seconds (but is not the wall clock after a step); compare it with
        time.monotonic() differences, not with time.time().
        """
    def wall(self) -> float:
        """
        The wall clock in seconds since the Unix epoch (or the VirtualClock's start, plus
        its step_wall() steps). It can jump either way; only HLC stamps use it.
        """
    @property
    def is_virtual(self) -> bool:
        """
        True when time moves only by advance().
        """

class SystemClock(Clock):
    """
    The system's clocks: now() is the monotonic boot-time clock anchored to wall time,
    wall() the real wall clock.
    """
    def __init__(self) -> None: ...

class VirtualClock(Clock):
    """
    A clock that moves only when advance() is called (both now() and wall()), or
    step_wall() (wall() alone). Anything waiting on it (queue
    waits, retries, probes) wakes as soon as virtual time passes its deadline, so a test
    runs hours of retries in milliseconds, deterministically.
    """
    def __init__(self, start: float = 0.0, auto_advance: bool = False) -> None: ...
    def __repr__(self) -> str: ...
    @property
    def auto_advance(self) -> bool:
        """
        When True, a wait on this clock with a deadline moves time to the deadline at
        once instead of blocking: for one thread that drives everything (Simulation).
        """
    @auto_advance.setter
    def auto_advance(self, on: bool) -> None: ...
    def advance(self, seconds: float) -> None:
        """
        Move time forward by `seconds` (finite, >= 0) and wake whatever waits on it.
        """
    def advance_to(self, t: float) -> None:
        """
        Move time to `t` if it is later than now.
        """
    def step_wall(self, seconds: float) -> None:
        """
        Step only the wall clock (wall()) by `seconds`, either sign, as NTP does to a
        device without a real-time clock. now() does not move, so nothing that waits
        is hurried or delayed by it; HLC stamps see the new wall time.
        """

class BackoffStrategy:
    """
    How long to wait before retrying an operation that failed: next_delay(n) is the delay in
    seconds after the n-th failed attempt (n >= 1), finite and >= 0.

    Built-ins: ConstantBackoff, LinearBackoff, ExponentialBackoff. Compose them with `a + b`
    (the delays add up, as tenacity's wait_combine), `a + 0.5` (a fixed extra delay) and
    `a.capped(max_delay)` (no delay above max_delay).

    Custom strategies: subclass and override next_delay(n) (call super().__init__() if you
    define __init__); C++ (the engine) then calls it like a built-in, taking the GIL for
    the call, and exceptions it raises propagate. A strategy whose delays depend on earlier
    calls of the same retry sequence should also override clone() to return a fresh
    instance; an engine then keeps one clone per operation. A plain function fn(n) -> float
    works too, wrapped as CallableBackoff(fn).
    """
    def __init__(self) -> None: ...
    def __add__(self, other: BackoffStrategy | float) -> BackoffStrategy:
        """
        A strategy whose delays are this one's plus other's (or plus a number).
        """
    def __radd__(self, other: BackoffStrategy | float) -> BackoffStrategy:
        """
        number + strategy.
        """
    def capped(self, max_delay: float) -> CappedBackoff:
        """
        This strategy with every delay limited to max_delay seconds.
        """
    def clone(self) -> BackoffStrategy:
        """
        A strategy with the same parameters and no history of earlier calls (a new retry sequence). Seeded strategies give each clone its own reproducible seed.
        """
    def next_delay(self, n: int) -> float:
        """
        Seconds to wait after the n-th failed attempt (n >= 1; InvalidArgumentError otherwise).
        """
    @property
    def stateful(self) -> bool:
        """
        True when delays depend on earlier calls of the same sequence (decorrelated jitter, or a subclass that overrides clone()).
        """

@typing.final
class ConstantBackoff(BackoffStrategy):
    """
    The same delay after every failure.
    """
    def __init__(self, delay: float) -> None: ...
    def __repr__(self) -> str: ...
    @property
    def delay(self) -> float:
        """
        The delay in seconds.
        """

@typing.final
class LinearBackoff(BackoffStrategy):
    """
    Delays growing by a fixed step: min(max_delay, base + step * (n - 1)).
    """
    def __init__(self, base: float, step: float, max_delay: float = 60.0) -> None: ...
    def __repr__(self) -> str: ...
    @property
    def base(self) -> float:
        """
        The first delay.
        """
    @property
    def max_delay(self) -> float:
        """
        No delay exceeds this.
        """
    @property
    def step(self) -> float:
        """
        Added after each further failure.
        """

@typing.final
class ExponentialBackoff(BackoffStrategy):
    """
    Exponential backoff with jitter, as in the AWS note "Exponential Backoff And Jitter".
    With expo(n) = min(max_delay, base * factor ** (n - 1)):

    - jitter="none":         expo(n)
    - jitter="full":         uniform(0, expo(n))                (the default)
    - jitter="equal":        expo(n) / 2 + uniform(0, expo(n) / 2)
    - jitter="decorrelated": min(max_delay, uniform(base, previous * 3)), previous = base at
      n == 1 (or when n does not grow): this one remembers its sequence; see clone().

    Any n, however large, gives a finite delay <= max_delay. seed (an int in [0, 2**64))
    makes the delays reproducible (std::mt19937_64); without it the generator is seeded
    from the OS. InvalidArgumentError (a ValueError) for a negative or non-finite base,
    factor < 1, max_delay < base, or an unknown jitter. Thread-safe.
    """
    def __init__(
        self,
        base: float = 0.1,
        factor: float = 2.0,
        max_delay: float = 60.0,
        jitter: typing.Literal["none", "full", "equal", "decorrelated"] = "full",
        seed: int | None = None,
    ) -> None: ...
    def __repr__(self) -> str: ...
    def expo(self, n: int) -> float:
        """
        min(max_delay, base * factor ** (n - 1)): the delay before jitter.
        """
    @property
    def base(self) -> float:
        """
        The first delay before jitter.
        """
    @property
    def factor(self) -> float:
        """
        Growth per failure.
        """
    @property
    def jitter(self) -> typing.Literal["none", "full", "equal", "decorrelated"]:
        """
        'none', 'full', 'equal' or 'decorrelated'.
        """
    @property
    def max_delay(self) -> float:
        """
        No delay exceeds this.
        """
    @property
    def seed(self) -> int | None:
        """
        The seed, or None.
        """

@typing.final
class SumBackoff(BackoffStrategy):
    """
    Two strategies' delays added up: what `a + b` returns.
    """
    def __init__(self, a: BackoffStrategy, b: BackoffStrategy) -> None: ...
    def __repr__(self) -> str: ...

@typing.final
class CappedBackoff(BackoffStrategy):
    """
    A strategy with every delay limited to max_delay: what `s.capped(max_delay)` returns.
    """
    def __init__(self, strategy: BackoffStrategy, max_delay: float) -> None: ...
    def __repr__(self) -> str: ...
    @property
    def max_delay(self) -> float:
        """
        The cap.
        """

@typing.final
class CallableBackoff(BackoffStrategy):
    """
    A plain function fn(n) -> float as a strategy: next_delay(n) calls fn(n), which must
    return a finite number >= 0 (InvalidArgumentError otherwise; TypeError for a
    non-number). Exceptions fn raises propagate unchanged.
    """
    def __init__(self, fn: collections.abc.Callable[[int], float]) -> None: ...
    def __repr__(self) -> str: ...
    @property
    def fn(self) -> collections.abc.Callable[[int], float]:
        """
        The wrapped callable.
        """

class Operation:
    """
    One queued operation, as a snapshot (it does not change when the queue does).
    Attributes: id, kind, key, payload (bytes), priority, idempotency_key, hlc,
    created_at, attempts, network_failures, next_attempt_at, last_error, state
    ("pending", "in_flight" or "dead"), expires_at, first_attempt_at, base_version,
    taken_at.
    """
    def __repr__(self) -> str: ...
    def json(self) -> typing.Any:
        """
        Decode the payload as JSON.
        """
    def to_dict(self) -> dict[str, typing.Any]:
        """
        All attributes as a dict (payload as bytes).
        """
    @property
    def attempts(self) -> int:
        """
        Delivery attempts that count toward max_attempts: times it was taken, less the network failures.
        """
    @property
    def network_failures(self) -> int:
        """
        Deliveries where no server answered (retry(..., network=True)); they do not count as attempts.
        """
    @property
    def base_version(self) -> int | None:
        """
        The remote version a conflict resolution resends it against, or None.
        """
    @property
    def created_at(self) -> float:
        """
        Enqueue time on the queue's clock.
        """
    @property
    def expires_at(self) -> float | None:
        """
        TTL deadline, or None.
        """
    @property
    def first_attempt_at(self) -> float | None:
        """
        When it was first taken, or None.
        """
    @property
    def hlc(self) -> int:
        """
        Hybrid logical timestamp: ms in the high 48 bits, counter in the low 16.
        """
    @property
    def id(self) -> int:
        """
        Queue-assigned id, increasing in enqueue order.
        """
    @property
    def idempotency_key(self) -> str:
        """
        Key a server uses to apply the operation once.
        """
    @property
    def key(self) -> str | None:
        """
        The entity it applies to (ordering lane), or None.
        """
    @property
    def kind(self) -> str:
        """
        What the operation does, e.g. 'set_currency'.
        """
    @property
    def last_error(self) -> str | None:
        """
        The last failure or dead-letter reason, or None.
        """
    @property
    def next_attempt_at(self) -> float:
        """
        Not deliverable before this time (queue clock).
        """
    @property
    def payload(self) -> bytes:
        """
        The payload bytes.
        """
    @property
    def priority(self) -> int:
        """
        0..255; higher is delivered first.
        """
    @property
    def state(self) -> str:
        """
        'pending', 'in_flight' or 'dead'.
        """
    @property
    def taken_at(self) -> float | None:
        """
        When the take that returned this op leased it (queue clock); None on ops read by peek() or dead_letters().
        """

class Remote:
    """
    The server's side of a conflict: its current value, and the HLC timestamp and version
    of the write that produced it when the server has them.

    value may be bytes, str (stored as UTF-8) or anything JSON can encode (stored as
    compact JSON); it is kept as bytes. hlc is an int in [0, 2**64) in the format of
    op.hlc (HybridLogicalClock.pack); version an int. A remote without hlc cannot be
    ordered against a local operation: LastWriteWins then keeps the local one.
    """
    def __init__(
        self, value: Payload, hlc: int | None = None, version: int | None = None
    ) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    def __repr__(self) -> str: ...
    __hash__: typing.ClassVar[None]  # type: ignore[assignment]
    def json(self) -> typing.Any:
        """
        Decode the value as JSON.
        """
    @property
    def hlc(self) -> int | None:
        """
        The remote write's HLC timestamp, or None.
        """
    @property
    def value(self) -> bytes:
        """
        The remote value (bytes).
        """
    @property
    def version(self) -> int | None:
        """
        The remote version, or None.
        """

class Resolution:
    """
    A conflict resolver's decision. Build one with a factory (there is no constructor):

    - Resolution.use_local():      resend the local operation (against the remote version);
    - Resolution.use_remote():     keep the remote value; the local operation is superseded;
    - Resolution.merge(payload):   resend the operation with this payload instead (bytes,
      str as UTF-8, or anything JSON can encode, as compact JSON).

    kind is "use_local", "use_remote" or "merge"; payload the merged bytes (None unless
    kind is "merge").
    """
    @staticmethod
    def use_local() -> Resolution:
        """
        Resend the local operation as it is.
        """
    @staticmethod
    def use_remote() -> Resolution:
        """
        Keep the remote value: the local operation is superseded.
        """
    @staticmethod
    def merge(payload: Payload) -> Resolution:
        """
        Resend the operation with `payload` (bytes, str, or JSON-able) instead of its own.
        """
    def __eq__(self, other: object) -> bool: ...
    def __repr__(self) -> str: ...
    __hash__: typing.ClassVar[None]  # type: ignore[assignment]
    def json(self) -> typing.Any:
        """
        Decode the merged payload as JSON (InvalidArgumentError unless kind is 'merge').
        """
    @property
    def kind(self) -> typing.Literal["use_local", "use_remote", "merge"]:
        """
        'use_local', 'use_remote' or 'merge'.
        """
    @property
    def payload(self) -> bytes | None:
        """
        The payload to resend (bytes) for 'merge'; None otherwise.
        """

class ConflictResolver:
    """
    Decides a conflict between a local operation the server refused and the server's
    current value: resolve(local: Operation, remote: Remote) -> Resolution.

    Built-ins: LastWriteWins (the newer HLC wins, tie -> local), ServerWins, ClientWins and
    FieldMerge (JSON objects merged field by field). Custom resolvers: subclass and override
    resolve(local, remote) (call super().__init__() if you define __init__), or pass a plain
    function fn(local, remote) -> Resolution (wrapped as CallableResolver(fn)). C++ (the
    engine) calls them like a built-in, taking the GIL for the call only; exceptions they
    raise propagate, and returning anything but a Resolution raises TypeError. Resolvers
    are also callable: resolver(local, remote) is resolver.resolve(local, remote).
    """
    def __init__(self) -> None: ...
    def __call__(self, local: Operation, remote: Remote) -> Resolution:
        """
        The same as resolve(local, remote).
        """
    def resolve(self, local: Operation, remote: Remote) -> Resolution:
        """
        Decide between the local operation and the remote value.
        """

@typing.final
class LastWriteWins(ConflictResolver):
    """
    The newer write wins, by HLC timestamp: use_local() when local.hlc >= remote.hlc (a tie
    goes to the local operation: what the user did on this side), use_remote() when
    remote.hlc is newer. A remote without an hlc counts as older: use_local().
    """
    def __init__(self) -> None: ...
    def __repr__(self) -> str: ...

@typing.final
class ServerWins(ConflictResolver):
    """
    Always use_remote(): the server's value stands.
    """
    def __init__(self) -> None: ...
    def __repr__(self) -> str: ...

@typing.final
class ClientWins(ConflictResolver):
    """
    Always use_local(): the local operation is resent.
    """
    def __init__(self) -> None: ...
    def __repr__(self) -> str: ...

@typing.final
class FieldMerge(ConflictResolver):
    """
    Merges two JSON objects field by field: merge(payload) with every field of both sides.
    A field on one side only is kept. A field on both sides whose values are both objects
    is merged recursively by the same rules; otherwise (scalars, arrays, null, or an object
    against a non-object) the side LastWriteWins picks supplies it: the local operation
    when local.hlc >= remote.hlc or the remote has no hlc, the remote otherwise (operations
    carry one timestamp, not one per field). The local object's fields come first, in
    their order, then the remote-only ones. When either payload is not a JSON object
    (invalid JSON or UTF-8, an array, a scalar, or nested deeper than 256 levels),
    FieldMerge falls back to LastWriteWins: use_local() or use_remote().
    """
    def __init__(self) -> None: ...
    def __repr__(self) -> str: ...

@typing.final
class CallableResolver(ConflictResolver):
    """
    A plain function fn(local: Operation, remote: Remote) -> Resolution as a resolver:
    resolve(local, remote) calls fn(local, remote). Returning anything but a Resolution
    raises TypeError; exceptions fn raises propagate unchanged.
    """
    def __init__(self, fn: collections.abc.Callable[[Operation, Remote], Resolution]) -> None: ...
    def __repr__(self) -> str: ...
    @property
    def fn(self) -> collections.abc.Callable[[Operation, Remote], Resolution]:
        """
        The wrapped callable.
        """

def _resolve_in_thread(
    resolver: ConflictResolver | collections.abc.Callable[[Operation, Remote], Resolution],
    local: Operation,
    remote: Remote,
) -> Resolution:
    """
    Tests: resolve through ResolverFromPython on a C++ thread (GIL released), as the engine will.
    """

class SyncQueue:
    """
    A durable, prioritised outbox. Open one with SyncQueue.open(path) (an SQLite file
    many processes may share) or SyncQueue.in_memory(). Semantics: per-key order,
    priority (with inheritance) then FIFO across keys, delays, TTLs, capacity limits,
    dead letters. A context manager: leaving the block closes it.
    """
    @staticmethod
    def in_memory(
        *,
        max_ops: int | None = None,
        max_bytes: int | None = None,
        overflow: typing.Literal["reject", "drop_lowest"] = "reject",
        clock: Clock | None = None,
    ) -> SyncQueue:
        """
        A queue in process memory with the same semantics; nothing survives the process.
        """
    @staticmethod
    def open(
        path: str | os.PathLike[str],
        *,
        durability: typing.Literal["full", "normal", "off"] = "full",
        max_ops: int | None = None,
        max_bytes: int | None = None,
        overflow: typing.Literal["reject", "drop_lowest"] = "reject",
        clock: Clock | None = None,
        read_only: bool = False,
    ) -> SyncQueue:
        """
        Open (or create, mode 0600) the queue file at `path`.

        durability: "full" (survives power loss), "normal" (survives a process crash) or
        "off". max_ops / max_bytes bound pending + in-flight ops; overflow "reject" raises
        QueueFullError, "drop_lowest" dead-letters the lowest-priority newest op.
        read_only=True opens for inspection only. Raises NotAQueueError for a foreign
        file and CorruptDatabaseError for a damaged one, without modifying either.
        """
    def __enter__(self) -> SyncQueue: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool: ...
    def __len__(self) -> int: ...
    def __repr__(self) -> str: ...
    def ack(self, op_id: int) -> None:
        """
        Delivered: remove the in-flight operation.
        """
    def acquire_consumer(self) -> None:
        """
        Become the queue's consumer now (QueueLockedError if another handle is).
        """
    def close(self) -> None:
        """
        Close the queue; in-flight ops become pending again. Idempotent.
        """
    def dead_letter(self, op_id: int, reason: str) -> None:
        """
        Give up on a pending or in-flight op: it moves to the dead letters with `reason`.
        """
    def dead_letters(self, limit: int | None = None) -> list[Operation]:
        """
        Dead-lettered operations, oldest first.
        """
    def enqueue(
        self,
        kind: str,
        payload: Payload,
        *,
        key: str | None = None,
        priority: int = 50,
        idempotency_key: str | None = None,
        coalesce: bool = False,
        ttl: float | None = None,
        delay: float = 0.0,
    ) -> int:
        """
        Store one operation and return its id once it is durable.

        payload: bytes, str (UTF-8) or anything json.dumps accepts. key: the entity
        (operations of one key are delivered in order). priority: 0..255 (Priority.*).
        idempotency_key: generated (UUID4) when None. coalesce=True replaces the key's
        last pending op of the same kind instead of appending. ttl: seconds until it
        expires into the dead letters. delay: seconds before it may be delivered.
        """
    def enqueue_many(
        self, items: collections.abc.Iterable[collections.abc.Mapping[str, typing.Any]]
    ) -> list[int]:
        """
        Store many operations (dicts with enqueue's argument names) in one transaction: all or none. Returns their ids.
        """
    def get(self, op_id: int) -> Operation | None:
        """
        The operation with this id (any state), or None.
        """
    def peek(self, n: int = 10) -> list[Operation]:
        """
        Up to n pending ops in the order take() would deliver them if all were due. Takes nothing.
        """
    def purge_dead(self) -> int:
        """
        Delete every dead letter; returns how many.
        """
    def requeue_dead(self, ids: collections.abc.Sequence[int] | None = None) -> list[int]:
        """
        Put dead ops (the given ids, or all) back at the tail of their keys under new ids; returns the new ids.
        """
    def retry(
        self, op_id: int, delay: float = 0.0, error: str | None = None, *, network: bool = False
    ) -> None:
        """
        Failed for now: the in-flight op is pending again, due after `delay` seconds. network=True: no server answered (refused, reset, DNS, timeout before a response); the failure counts in op.network_failures instead of op.attempts.
        """
    def stats(self) -> dict[str, typing.Any]:
        """
        Counts: pending, in_flight, dead, total, bytes, by_priority (pending per priority), oldest_pending_age (seconds, never negative), next_due_in (seconds until a delayed op is due) and network_failures (retries with network=True over the queue's lifetime).
        """
    def take(self, n: int = 1) -> list[Operation]:
        """
        Lease up to n deliverable operations (marks them in flight). The first consumer call makes this handle the queue's consumer (QueueLockedError if another is).
        """
    def next_ready_at(self) -> float | None:
        """
        Clock time at which the earliest pending operation becomes deliverable (now or
        earlier if one is ready), or None when nothing is pending.
        """
    def wait(self, timeout: float | None = None) -> bool:
        """
        Block (GIL released) until an op is deliverable or `timeout` seconds pass on the queue's clock. Wakes on enqueues, also from other processes. True if one is ready.
        """
    @property
    def clock(self) -> Clock:
        """
        The queue's clock.
        """
    def observe_hlc(self, remote: int) -> None:
        """
        Merge a remote HLC timestamp (say, a server's version stamp): operations enqueued later, by any handle on the same file and after a reopen, get larger stamps (the high-water mark is stored in the file). InvalidArgumentError for a stamp outside [0, 2**64) or after year 9999.
        """
    @property
    def low_water(self) -> int:
        """
        The lowest op id the queue may still send: the lowest id it holds pending, in flight or dead (a dead letter can be requeued), or the id the next enqueue gets when it holds none. Every id below it was acknowledged or purged, so a server may prune this queue's idempotency records below it (docs/queue-semantics.md, "Low water", says when that is safe).
        """
    @property
    def last_hlc(self) -> int:
        """The latest HLC stamp this handle issued or observed."""
    @property
    def closed(self) -> bool:
        """
        True once close() was called.
        """
    @property
    def path(self) -> str | None:
        """
        The queue file, or None for an in-memory queue.
        """

def _backoff_delays(
    strategy: BackoffStrategy | collections.abc.Callable[[int], float],
    attempts: int,
    threads: int = 1,
) -> list[list[float]]:
    """
    Tests: next_delay(1..attempts) from `threads` C++ threads (GIL released); their delays.
    """

class Probe:
    """
    Base class of the built-in reachability probes (TcpProbe). A NetworkMonitor also
    accepts any callable `fn() -> bool` as its probe; it need not derive from this.
    """
    def check(self, timeout: float) -> bool:
        """
        Run one check (GIL released) and return whether the target is reachable.
        """

class TcpProbe(Probe):
    """
    Succeeds when a TCP handshake with host:port completes within `timeout` seconds
    (a real non-blocking connect; nothing is sent and the connection is closed at once).
    Refused, unreachable, unresolvable and timed-out connections are failures. Calling
    the probe runs one check and returns a bool.
    """
    def __init__(self, host: str, port: int, timeout: float = 1.0) -> None: ...
    def __call__(self) -> bool:
        """
        Run one check with the probe's timeout (GIL released); True if the handshake completed.
        """
    def __repr__(self) -> str: ...
    @property
    def host(self) -> str:
        """
        The host name or address to connect to.
        """
    @property
    def port(self) -> int:
        """
        The TCP port.
        """
    @property
    def timeout(self) -> float:
        """
        Seconds a check may take.
        """

class NetworkMonitor:
    """
    Whether the network is usable, and who to tell when that changes.

    The state changes by set_connected(), or, once start() was called, by running
    `probe` every `interval` seconds (at least 0.001) on `clock`'s monotonic
    timeline: `up_after` consecutive successes bring it online, `down_after`
    consecutive failures take it offline. A probe that returns false, raises, or runs
    longer than `probe_timeout` (default: the probe's own timeout, else `interval`) is
    a failure. report_failure()/report_success() make a probing monitor probe at once.
    With min_transition_interval > 0, transitions are at least that far apart: a
    change requested sooner is applied when the window ends if it is still wanted
    (flap damping). Observers `fn(connected: bool)` are called once per transition, in
    subscription order, on the thread that caused it; one that raises is logged and
    counted (observer_errors). Observers may call set_connected() of this or another
    monitor (it then returns without waiting for its delivery, which follows the
    current round).
    """
    def __init__(
        self,
        connected: bool = False,
        probe: Probe | collections.abc.Callable[[], object] | None = None,
        interval: float = 5.0,
        up_after: int = 1,
        down_after: int = 1,
        clock: Clock | None = None,
        min_transition_interval: float = 0.0,
        probe_timeout: float | None = None,
    ) -> None: ...
    def __repr__(self) -> str: ...
    def _subscribe_noop(self) -> int:
        """
        Subscribe a C++ observer that does nothing (benchmarks).
        """
    def report_failure(self) -> None:
        """
        Passive signal (a delivery failed): a probing monitor probes at once. Never changes the state by itself.
        """
    def report_success(self) -> None:
        """
        Passive signal (a delivery worked): a probing monitor probes at once. Never changes the state by itself.
        """
    def set_connected(self, connected: bool) -> None:
        """
        Set the state (GIL released). On a change, observers are called before it returns (unless flap damping defers the change, or it is called from an observer).
        """
    def start(self) -> None:
        """
        Start probing: a check at once, then every `interval`. No-op without a probe or when already probing.
        """
    def stats(self) -> dict[str, typing.Any]:
        """
        Counters and state: connected, probing, pending (a transition deferred by damping, or None), transitions, damped, observer_calls, observer_errors, probes, probe_failures, probe_timeouts, passive_failures, passive_successes, consecutive_successes, consecutive_failures, last_transition_at (clock time or None).
        """
    def stop(self) -> None:
        """
        Stop probing. Returns at once, even while a probe is blocked (that check is abandoned and its result ignored).
        """
    def subscribe(self, fn: collections.abc.Callable[[bool], object]) -> int:
        """
        Call fn(connected: bool) on every transition from now on; returns a token for unsubscribe().
        """
    def unsubscribe(self, token: int) -> bool:
        """
        Stop calling the observer subscribed with `token`; False if it was not subscribed.
        """
    def wait_for_probes(self, count: int, timeout: float | None = None) -> bool:
        """
        Block (GIL released) until `count` probe checks in all have ended and been applied, or `timeout` seconds pass on the clock. Returns whether the count was reached.
        """
    def wait_until(self, state: bool, timeout: float | None = None) -> bool:
        """
        Block (GIL released) until is_connected == state or `timeout` seconds pass on the monitor's clock (None: no limit). Returns whether the state was reached.
        """
    @property
    def clock(self) -> Clock:
        """
        The monitor's clock.
        """
    @property
    def is_connected(self) -> bool:
        """
        True while the monitor considers the network usable.
        """
    @property
    def observer_errors(self) -> int:
        """
        How many observer calls raised.
        """
    @property
    def probing(self) -> bool:
        """
        True between start() and stop().
        """

class _FaultProxy:
    """
    The C++ TCP proxy behind cpcsync.testing.FaultProxy (use that class instead).
    """
    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        listen_host: str,
        listen_port: int,
        seed: int | None,
    ) -> None: ...
    def start(self) -> None:
        """Bind the listener and start the I/O thread (GIL released)."""
    def stop(self) -> None:
        """Close everything and join the I/O thread (GIL released). Idempotent."""
    def disable(self) -> None:
        """Stop listening and reset every open connection (GIL released)."""
    def enable(self) -> None:
        """Listen again on the same port (GIL released)."""
    def add_toxic(
        self,
        type: str,
        stream: str,
        toxicity: float,
        name: str | None,
        attributes: dict[str, int],
    ) -> str:
        """Add a toxic (GIL released while it takes effect); its name."""
    def update_toxic(self, name: str, attributes: dict[str, int], toxicity: float | None) -> None:
        """Change a toxic's attributes and/or toxicity (GIL released)."""
    def remove_toxic(self, name: str) -> None:
        """Remove a toxic (GIL released while that takes effect)."""
    def toxics(self) -> list[dict[str, typing.Any]]:
        """The toxics in the order added, as dicts."""
    def stats(self) -> dict[str, int]:
        """Counters: connections, active, bytes_upstream, bytes_downstream, upstream_failures, held_bytes, held_memory."""
    @property
    def running(self) -> bool:
        """True between start() and stop()."""
    @property
    def enabled(self) -> bool:
        """False after disable()."""
    @property
    def listen_host(self) -> str:
        """The listening host."""
    @property
    def port(self) -> int:
        """The listening port (0 before start())."""
    @property
    def upstream_host(self) -> str:
        """The upstream host."""
    @property
    def upstream_port(self) -> int:
        """The upstream port."""
    @property
    def seed(self) -> int:
        """The seed of the proxy's random draws."""

def _log(level: str, text: str) -> None:
    """
    Log a message through the C++ logger (tests).
    """

def _stop_log_bridge() -> None:
    """
    Stop the log dispatcher thread (registered with atexit).
    """

def flush_logs() -> None:
    """
    Block until every record logged so far has reached Python's logging.
    """

def set_log_level(level: str) -> None:
    """
    Set the level of cpcsync's C++ logging: trace, debug, info, warning, error, critical or off (default warning). Records go to the Python logger 'cpcsync'.
    """

class HybridLogicalClock:
    """
    A hybrid logical clock (Kulkarni et al., 2014): timestamps that order events
    across machines whose wall clocks disagree. A timestamp is an int with physical
    milliseconds in the high 48 bits and a logical counter in the low 16. now() is
    strictly greater than every timestamp returned or observed before, even when the
    wall clock jumps backwards. Queues stamp every operation with one (op.hlc).
    """
    @staticmethod
    def logical(hlc: int) -> int:
        """The logical counter part of a timestamp."""
    @staticmethod
    def pack(physical_ms: int, logical: int) -> int:
        """Build a timestamp from milliseconds and a counter (0..65535)."""
    @staticmethod
    def physical_ms(hlc: int) -> int:
        """The wall-clock milliseconds part of a timestamp."""
    def __init__(self, clock: Clock | None = None, last: int = 0) -> None:
        """A clock reading `clock` (SystemClock by default) whose stamps start after `last`."""
    def now(self) -> int:
        """A new timestamp for a local event."""
    def observe(self, remote: int) -> None:
        """
        Merge a remote timestamp: later now() results are after it. InvalidArgumentError for a stamp outside [0, 2**64) or after year 9999 (it would leave no room above).
        """
    @property
    def last(self) -> int:
        """The latest timestamp issued or observed."""

class ProcessingSummary:
    """
    What one process_once()/drain() did: successful (count), retried (list of
    (op_id, delay)), failed (list of (op_id, reason): dead-lettered), conflicts and
    superseded (counts).
    """
    def __repr__(self) -> str: ...
    @property
    def successful(self) -> int:
        """Operations delivered."""
    @property
    def retried(self) -> list[tuple[int, float]]:
        """(op_id, delay seconds) for each operation scheduled for a retry."""
    @property
    def failed(self) -> list[tuple[int, str]]:
        """(op_id, reason) for each operation dead-lettered."""
    @property
    def conflicts(self) -> int:
        """Conflicts resolved."""
    @property
    def superseded(self) -> int:
        """Operations completed by taking the server's value (use_remote)."""

class Transport:
    """
    Base class of transports written in C++ (such as cpcsync.testing.FaultyTransport).
    A SyncEngine calls them without the GIL. Python transports need not derive from it.
    """

class Attempt:
    """
    One call of a FaultyTransport: time, op_id, key, priority, outcome, error, latency.
    """
    @property
    def time(self) -> float:
        """Clock time when the call started."""
    @property
    def op_id(self) -> int:
        """The operation's id."""
    @property
    def key(self) -> str | None:
        """The operation's key (None without one)."""
    @property
    def priority(self) -> int:
        """The operation's priority."""
    @property
    def outcome(self) -> str:
        """What the call returned, by kind."""
    @property
    def error(self) -> str:
        """The failure's text; empty when delivered."""
    @property
    def latency(self) -> float:
        """Seconds the call waited on the clock."""
    def __repr__(self) -> str: ...

class FaultyTransport(Transport):
    """
    A transport that injects scripted failures (the C++ core of
    cpcsync.testing.FaultyTransport; use that class).
    """
    def __init__(
        self,
        inner: typing.Any = None,
        *,
        pattern: collections.abc.Sequence[typing.Any] | None = None,
        failure_rate: float = 0.0,
        seed: int | None = None,
        latency: float = 0.0,
        jitter: float = 0.0,
        clock: Clock | None = None,
        failure: typing.Any = None,
        loop: typing.Any = None,
        timeout: float = 10.0,
    ) -> None: ...
    def __call__(self, op: Operation) -> None:
        """Send one operation as an engine would; a failure is raised."""
    def fail_next(self, n: int, error: typing.Any = None) -> None:
        """The next n calls fail with `error` (default: a transient failure)."""
    def fail_for(self, seconds: float, error: typing.Any = None) -> None:
        """Calls starting within the next `seconds` on the clock fail with `error`."""
    def set_partitioned(self, on: bool) -> None:
        """Cut (True) or restore (False) the link by hand."""
    def add_partition(self, start: float, end: float) -> None:
        """Schedule a partition over [start, end) on the clock."""
    def flap(self, period: float, count: int, start: float | None = None) -> None:
        """Down for `period`, up for `period`, `count` times, from `start` (default now)."""
    def set_latency(self, latency: float, jitter: float = 0.0) -> None:
        """Every call waits latency + uniform[0, jitter] seconds on the clock."""
    def set_failure_rate(self, rate: float, error: typing.Any = None) -> None:
        """Each call fails with `error` with probability `rate` (seeded generator)."""
    def heal(self) -> None:
        """Drop every scripted fault, partition and latency."""
    @property
    def partitioned(self) -> bool:
        """True when a call now would be partitioned."""
    @property
    def history(self) -> list[Attempt]:
        """Every call so far, in order."""
    @property
    def calls(self) -> int:
        """Calls started so far (history records them when they end)."""
    def wait_for_calls(self, n: int, timeout: float | None = None) -> bool:
        """Block (real time, GIL released) until `n` calls have started; False on timeout."""
    def clear_history(self) -> None:
        """Forget the recorded calls."""
    def close(self) -> None:
        """End every wait on the clock now and later (for shutdown)."""
    @property
    def clock(self) -> Clock:
        """The transport's clock."""

class SyncEngine:
    """
    Delivers a SyncQueue's operations through a transport: most important first, in
    order per key, retried with backoff while the monitor says connected, conflicts
    resolved, failures dead-lettered.
    """
    def __init__(
        self,
        queue: SyncQueue,
        transport: typing.Any,
        *,
        monitor: NetworkMonitor | None = None,
        backoff: BackoffStrategy | collections.abc.Callable[[int], float] | None = None,
        resolver: ConflictResolver
        | collections.abc.Callable[[Operation, Remote], Resolution]
        | None = None,
        max_attempts: int = 10,
        max_elapsed: float | None = None,
        concurrency: int = 1,
        batch_size: int = 1,
        clock: Clock | None = None,
        loop: typing.Any = None,
        max_retry_after: float = 900.0,
    ) -> None:
        """Build an engine; see the class docstring.

        ``max_attempts`` counts answered failures only: a network failure (no server
        answered) never uses one up, and the whole engine backs off during an outage.
        ``max_retry_after``: a server's Retry-After above this many seconds is clamped.
        ``clock`` must be the queue's clock when either is a VirtualClock.
        """
    def process_once(self) -> ProcessingSummary:
        """Deliver one round of ready operations on this thread (none while disconnected)."""
    def drain(self, timeout: float | None = None) -> ProcessingSummary:
        """Deliver until the queue is empty or `timeout` seconds pass on the engine's clock."""
    def start(self) -> None:
        """Start the background workers (concurrency of them). OperationStateError if
        this engine, or another engine on the same queue handle, is running."""
    def stop(self, drain: bool = False, timeout: float | None = None) -> bool:
        """Stop the workers. drain=True first waits, connected or not, until the queue
        is empty or ``timeout`` (real seconds) passes. False if it did not drain, or if
        a worker was still busy (in a take or the transport) at the timeout."""
    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is taken or leased by the engine and nothing is
        deliverable now (offline, or the outage gate closed, counts as nothing)."""
    def next_attempt_at(self) -> float | None:
        """Clock time of the engine's next take: the queue's next ready time, or later
        while the outage gate holds deliveries back; None when nothing is pending."""
    async def wait_idle_async(self, timeout: float | None = None) -> bool:
        """wait_idle without blocking the event loop."""
    def on(self, event: str, fn: collections.abc.Callable[[dict[str, typing.Any]], object]) -> None:
        """Call fn(info) on delivered, retry, dead_letter, conflict, superseded or network."""
    def stats(self) -> dict[str, typing.Any]:
        """Counters (network_failures among them), the outage gate, queue depth by
        priority, oldest pending age, latency percentiles."""
    @property
    def running(self) -> bool:
        """True between start() and stop()."""
    @property
    def busy_workers(self) -> int:
        """Rounds between a take and the end of their delivery now (engine state only)."""
    @property
    def queue(self) -> SyncQueue:
        """The engine's queue."""
    @property
    def clock(self) -> Clock:
        """The engine's clock."""
