"""OfflineFirstStore: the seed's composite adapter over a local SQLite copy, a queue,
a monitor and a remote (docs/offline-store.md).

Real SQLite files in tmp_path, real threads. The remote is an in-process object whose
calls can be made to fail or to hang (threading.Event gates); tests wait on events
(remote calls, engine events), never on sleeps. Retries run on a VirtualClock the
tests advance. Remote-call timeouts are real time by design, so the tests that hang
a remote use a short one.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import cpcsync as cs
from cpcsync import store as store_module

WAIT = 20.0  # real seconds: an upper bound for things that happen promptly


# --------------------------------------------------------------------------
# test doubles and fixtures


class FakeRemote:
    """A remote KV service in process: values, a log of calls, failures and hangs.

    ``fail_get`` / ``fail_set``: an exception to raise (or a function (key, value) ->
    exception or None). ``hang_get`` / ``hang_set``: an Event the call waits on before
    answering. ``entered`` is set whenever a call starts. ``max_active`` is the most
    calls of one key that ever ran at once.
    """

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sets: list[tuple[str, Any]] = []
        self.gets: list[str] = []
        self.fail_get: BaseException | None = None
        self.fail_set: BaseException | Callable[[str, Any], BaseException | None] | None = None
        self.hang_get: threading.Event | None = None
        self.hang_set: threading.Event | None = None
        self.entered = threading.Event()
        self.cond = threading.Condition()
        self._active: dict[str, int] = {}
        self.max_active = 0

    def _enter(self, key: str) -> None:
        with self.cond:
            self._active[key] = self._active.get(key, 0) + 1
            self.max_active = max(self.max_active, self._active[key])
        self.entered.set()

    def _leave(self, key: str) -> None:
        with self.cond:
            self._active[key] -= 1
            self.cond.notify_all()

    def get(self, key: str) -> Any:
        with self.cond:
            self.gets.append(key)
        self._enter(key)
        try:
            gate = self.hang_get
            if gate is not None:
                gate.wait()
            if self.fail_get is not None:
                raise self.fail_get
            with self.cond:
                return self.values[key]
        finally:
            self._leave(key)

    def set(self, key: str, value: Any) -> None:
        self._enter(key)
        try:
            gate = self.hang_set
            if gate is not None:
                gate.wait()
            failure = self.fail_set
            if callable(failure) and not isinstance(failure, BaseException):
                failure = failure(key, value)
            with self.cond:
                self.sets.append((key, value))
                self.cond.notify_all()
            if failure is not None:
                raise failure
            with self.cond:
                self.values[key] = value
                self.cond.notify_all()
        finally:
            self._leave(key)

    def wait_sets(self, n: int) -> bool:
        """Wait until `n` set calls have been made (answered or not)."""
        with self.cond:
            return self.cond.wait_for(lambda: len(self.sets) >= n, WAIT)

    def sets_of(self, key: str) -> list[Any]:
        with self.cond:
            return [v for k, v in self.sets if k == key]

    def release(self) -> None:
        for gate in (self.hang_get, self.hang_set):
            if gate is not None:
                gate.set()


class Events:
    """Records a store engine's events (registered after the store's own listeners,
    so the store's bookkeeping is done when one is recorded)."""

    NAMES = ("delivered", "retry", "dead_letter", "conflict", "superseded")

    def __init__(self, engine: cs.SyncEngine) -> None:
        self.cond = threading.Condition()
        self.seen: list[dict[str, Any]] = []
        for name in self.NAMES:
            engine.on(name, self._record)

    def _record(self, info: dict[str, Any]) -> None:
        with self.cond:
            self.seen.append(info)
            self.cond.notify_all()

    def count(self, name: str) -> int:
        with self.cond:
            return sum(1 for e in self.seen if e["event"] == name)

    def wait(self, name: str, n: int = 1) -> bool:
        with self.cond:
            return self.cond.wait_for(
                lambda: sum(1 for e in self.seen if e["event"] == name) >= n, WAIT
            )


@pytest.fixture
def clock() -> cs.VirtualClock:
    return cs.VirtualClock(start=1_000.0)


@pytest.fixture
def remote() -> Iterator[FakeRemote]:
    r = FakeRemote()
    yield r
    r.release()


@pytest.fixture
def monitor(clock: cs.VirtualClock) -> cs.NetworkMonitor:
    return cs.NetworkMonitor(connected=True, clock=clock)


@pytest.fixture
def queue(tmp_path: Path, clock: cs.VirtualClock) -> Iterator[cs.SyncQueue]:
    q = cs.SyncQueue.open(tmp_path / "outbox.db", clock=clock)
    yield q
    q.close()


MakeStore = Callable[..., cs.OfflineFirstStore]


@pytest.fixture
def make_store(
    tmp_path: Path,
    remote: FakeRemote,
    queue: cs.SyncQueue,
    monitor: cs.NetworkMonitor,
    clock: cs.VirtualClock,
) -> Iterator[MakeStore]:
    """Builds stores over the fixtures (overridable per call); closes them at the end."""
    stores: list[cs.OfflineFirstStore] = []

    def make(**kw: Any) -> cs.OfflineFirstStore:
        kw.setdefault("timeout", 10.0)
        kw.setdefault("backoff", cs.ConstantBackoff(1.0))
        s = cs.OfflineFirstStore(
            kw.pop("local_path", tmp_path / "local.db"),
            kw.pop("remote", remote),
            kw.pop("queue", queue),
            kw.pop("monitor", monitor),
            **kw,
        )
        stores.append(s)
        return s

    yield make
    remote.release()
    for s in stores:
        s.close()


def join_remote_threads() -> None:
    """Wait for abandoned remote calls (after their gates were opened) to end."""
    for t in threading.enumerate():
        if t.name.startswith("cpcsync-store-"):
            t.join(WAIT)
            assert not t.is_alive()


def local_rows(path: Path) -> dict[str, Any]:
    with sqlite3.connect(path) as db:
        return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM store_values")}


# --------------------------------------------------------------------------
# basics


def test_local_file_is_created_0600_and_values_round_trip_as_json(
    make_store: MakeStore, tmp_path: Path, remote: FakeRemote
) -> None:
    s = make_store()
    path = tmp_path / "local.db"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    value = {"currency": "BTC", "n": [1, 2.5, None, True], "name": "Zoë"}
    assert s.set("user:42", value) == "delivered"
    assert remote.values == {"user:42": value}
    assert s.get("user:42") == value
    assert local_rows(path) == {"user:42": value}
    assert s.local_path == str(path)
    assert "online" in repr(s)


def test_online_get_reads_the_remote_and_refreshes_the_local_copy(
    make_store: MakeStore, remote: FakeRemote, monitor: cs.NetworkMonitor, tmp_path: Path
) -> None:
    s = make_store()
    remote.values["user:7"] = {"currency": "EUR"}
    assert s.get("user:7") == {"currency": "EUR"}
    assert remote.gets == ["user:7"]
    assert local_rows(tmp_path / "local.db") == {"user:7": {"currency": "EUR"}}
    remote.values["user:7"] = {"currency": "USD"}  # changed elsewhere
    assert s.get("user:7") == {"currency": "USD"}
    monitor.set_connected(False)
    assert s.get("user:7") == {"currency": "USD"}  # the refreshed copy
    assert remote.gets == ["user:7", "user:7"]


def test_missing_keys_give_key_error_or_the_default(
    make_store: MakeStore, remote: FakeRemote, monitor: cs.NetworkMonitor
) -> None:
    s = make_store()
    with pytest.raises(KeyError):
        s.get("nope")
    assert s.get("nope", "USD") == "USD"
    assert s.get("nope", None) is None
    monitor.set_connected(False)
    with pytest.raises(KeyError):
        s.get("nope")
    assert s.get("nope", default=0) == 0


def test_remote_absence_is_an_answer_and_is_mirrored_locally(
    make_store: MakeStore, remote: FakeRemote, monitor: cs.NetworkMonitor
) -> None:
    s = make_store()
    s.set("k", 1)
    del remote.values["k"]  # removed on the server
    assert s.get("k", "gone") == "gone"
    monitor.set_connected(False)
    assert s.get("k", "gone") == "gone"
    assert monitor.stats()["passive_failures"] == 0  # KeyError is not a failure


# --------------------------------------------------------------------------
# writes: direct, queued, delivered once in order


def test_direct_write_online(
    make_store: MakeStore, remote: FakeRemote, queue: cs.SyncQueue
) -> None:
    s = make_store()
    assert s.set("a", 1) == "delivered"
    assert s.set("a", 2, priority=cs.Priority.CRITICAL) == "delivered"
    assert remote.sets == [("a", 1), ("a", 2)]
    assert len(queue) == 0
    assert not s.has_pending("a")
    assert s.stats()["direct_writes"] == 2


def test_offline_writes_are_delivered_once_in_order_on_reconnect(
    make_store: MakeStore, remote: FakeRemote, monitor: cs.NetworkMonitor, queue: cs.SyncQueue
) -> None:
    monitor.set_connected(False)
    s = make_store(coalesce=False)
    events = Events(s.engine)
    for i in range(5):
        assert s.set("cart:9", {"items": i}) == "queued"
    assert s.set("user:1", "BTC", priority=cs.Priority.CRITICAL) == "queued"
    assert remote.sets == []
    assert len(queue) == 6
    assert s.has_pending("cart:9") and s.has_pending("user:1")
    assert s.get("cart:9") == {"items": 4}  # read your own writes, offline
    monitor.set_connected(True)
    assert events.wait("delivered", 6)
    assert remote.sets[0] == ("user:1", "BTC")  # highest priority first on reconnect
    assert remote.sets_of("cart:9") == [{"items": i} for i in range(5)]  # in order, once each
    assert len(remote.sets) == 6
    assert remote.values == {"cart:9": {"items": 4}, "user:1": "BTC"}
    assert not s.has_pending("cart:9") and s.stats()["pending_ops"] == 0
    assert s.get("cart:9") == {"items": 4}
    assert s.wait_idle(60)  # on the VirtualClock: returns once the engine is idle


def test_coalescing_sends_only_the_latest_offline_value(
    make_store: MakeStore, remote: FakeRemote, monitor: cs.NetworkMonitor, queue: cs.SyncQueue
) -> None:
    monitor.set_connected(False)
    s = make_store()  # coalesce=True by default
    events = Events(s.engine)
    for currency in ("USD", "EUR", "GBP", "BTC"):
        s.set("user:42", currency)
    assert len(queue) == 1
    monitor.set_connected(True)
    assert events.wait("delivered")
    assert remote.sets == [("user:42", "BTC")]


def test_a_direct_write_does_not_overtake_a_queued_one(
    make_store: MakeStore, remote: FakeRemote, monitor: cs.NetworkMonitor
) -> None:
    monitor.set_connected(False)
    s = make_store()
    events = Events(s.engine)
    assert s.set("k", "old") == "queued"
    gate = remote.hang_set = threading.Event()
    monitor.set_connected(True)  # the engine starts delivering "old" and hangs in remote.set
    assert remote.entered.wait(WAIT)
    assert s.has_pending("k")
    assert s.set("k", "new") == "queued"  # not direct: "old" is still on its way
    gate.set()
    assert events.wait("delivered", 2)
    assert remote.sets_of("k") == ["old", "new"]
    assert remote.values["k"] == "new"
    assert s.get("k") == "new"
    assert remote.max_active == 1


def test_failing_remote_write_is_queued_and_the_monitor_told(
    make_store: MakeStore,
    remote: FakeRemote,
    monitor: cs.NetworkMonitor,
    clock: cs.VirtualClock,
) -> None:
    s = make_store()
    events = Events(s.engine)
    remote.fail_set = ConnectionResetError("peer reset")
    assert s.set("k", 1) == "queued"
    assert monitor.stats()["passive_failures"] >= 1
    assert s.stats()["remote_failures"] >= 1
    assert s.has_pending("k")
    assert events.wait("retry")  # the engine tried too, and will retry
    remote.fail_set = None
    clock.advance(1.0)  # the retry comes due
    assert events.wait("delivered")
    assert remote.values == {"k": 1}
    assert not s.has_pending("k")


def test_hung_direct_write_times_out_into_the_queue_and_is_not_overtaken(
    make_store: MakeStore, remote: FakeRemote, monitor: cs.NetworkMonitor, clock: cs.VirtualClock
) -> None:
    s = make_store(timeout=0.2)
    events = Events(s.engine)
    gate = remote.hang_set = threading.Event()
    assert s.set("k", 1) == "queued"  # after 0.2 s of real time
    assert s.stats()["abandoned_calls"] == 1
    assert monitor.stats()["passive_failures"] >= 1
    assert s.has_pending("k")
    # The engine must not call remote.set("k") while the abandoned call still runs.
    assert events.wait("retry")
    assert remote.max_active == 1
    gate.set()
    remote.hang_set = None
    join_remote_threads()
    clock.advance(1.0)
    assert events.wait("delivered")
    assert remote.sets_of("k") == [1, 1]  # the late direct call, then the queued one
    assert remote.max_active == 1
    assert s.stats()["abandoned_calls"] == 0


def test_permanent_refusal_of_a_direct_write_is_an_online_failure(
    make_store: MakeStore, remote: FakeRemote, queue: cs.SyncQueue, tmp_path: Path
) -> None:
    s = make_store()
    s.set("k", "good")
    remote.fail_set = cs.PermanentError("422: bad currency")
    with pytest.raises(cs.OnlineFailure) as info:
        s.set("k", "bad")
    assert isinstance(info.value, cs.SyncError)
    assert isinstance(info.value.__cause__, cs.PermanentError)
    assert info.value.key == "k" and info.value.operation == "set"
    assert len(queue) == 0
    assert s.get("k") == "good" and remote.values["k"] == "good"
    assert local_rows(tmp_path / "local.db") == {"k": "good"}  # the local write was undone


# --------------------------------------------------------------------------
# reads fall back; failure types


def test_reads_fall_back_to_the_local_copy_when_the_remote_fails(
    make_store: MakeStore, remote: FakeRemote, monitor: cs.NetworkMonitor
) -> None:
    s = make_store()
    s.set("k", "v1")
    remote.fail_get = OSError("no route to host")
    assert s.get("k") == "v1"
    assert monitor.stats()["passive_failures"] == 1
    assert s.stats()["fallback_reads"] == 1
    remote.fail_get = RuntimeError("remote bug")
    assert s.get("k") == "v1"
    assert monitor.stats()["passive_failures"] == 2


def test_a_hung_read_times_out_to_the_local_copy_and_its_late_answer_is_dropped(
    make_store: MakeStore, remote: FakeRemote, monitor: cs.NetworkMonitor, tmp_path: Path
) -> None:
    s = make_store(timeout=0.2)
    s.set("k", "local")
    remote.values["k"] = "late remote value"
    gate = remote.hang_get = threading.Event()
    assert s.get("k") == "local"
    assert s.stats()["abandoned_calls"] == 1
    assert monitor.stats()["passive_failures"] == 1
    gate.set()
    join_remote_threads()
    assert local_rows(tmp_path / "local.db") == {"k": "local"}  # the late answer is dropped
    assert s.stats()["abandoned_calls"] == 0


class SnapshotRemote(FakeRemote):
    """get() reads the value, then waits on `hang_get`: it answers with what the
    server held when the call began (a slow response racing a write)."""

    def get(self, key: str) -> Any:
        with self.cond:
            self.gets.append(key)
            value = self.values[key]
        self.entered.set()
        gate = self.hang_get
        if gate is not None:
            gate.wait()
        return value


def test_a_slow_read_does_not_overwrite_a_newer_local_write(
    make_store: MakeStore, monitor: cs.NetworkMonitor
) -> None:
    slow = SnapshotRemote()
    s = make_store(remote=slow)
    s.set("k", "old")
    gate = slow.hang_get = threading.Event()
    slow.entered.clear()  # set() entered the remote too
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(s.get("k")))
    reader.start()
    assert slow.entered.wait(WAIT)  # the read has begun and holds "old"
    assert s.set("k", "new") == "delivered"
    gate.set()
    reader.join(WAIT)
    assert got == ["old"]  # it answered with what the server held when asked
    monitor.set_connected(False)
    assert s.get("k") == "new"  # but the local copy kept the newer write


def test_dual_failure_on_read_keeps_both_causes(
    make_store: MakeStore, remote: FakeRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make_store()
    boom = ConnectionRefusedError("refused")
    remote.fail_get = boom
    with pytest.raises(cs.DualFailure) as info:
        s.get("never-seen", "ignored default")
    err = info.value
    assert isinstance(err, cs.SyncError)
    assert err.online_error is boom
    assert isinstance(err.offline_error, KeyError)
    assert err.__cause__ is boom and err.__context__ is err.offline_error
    assert err.key == "never-seen" and err.operation == "get"
    assert "refused" in str(err) and "KeyError" in str(err)

    disk = sqlite3.OperationalError("disk I/O error")

    def broken(key: str) -> Any:
        raise disk

    monkeypatch.setattr(s._local, "read", broken)
    with pytest.raises(cs.DualFailure) as info:
        s.get("k")
    assert info.value.online_error is boom and info.value.offline_error is disk
    assert info.value.__cause__ is boom and info.value.__context__ is disk


def test_offline_read_error_is_an_offline_failure(
    make_store: MakeStore, monitor: cs.NetworkMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make_store()
    monitor.set_connected(False)
    disk = sqlite3.OperationalError("disk I/O error")

    def broken(key: str) -> Any:
        raise disk

    monkeypatch.setattr(s._local, "read", broken)
    with pytest.raises(cs.OfflineFailure) as info:
        s.get("k")
    assert info.value.__cause__ is disk
    assert info.value.key == "k" and info.value.operation == "get"


def test_write_that_cannot_be_queued_is_an_online_failure_and_is_undone(
    tmp_path: Path,
    make_store: MakeStore,
    remote: FakeRemote,
    monitor: cs.NetworkMonitor,
    clock: cs.VirtualClock,
) -> None:
    q = cs.SyncQueue.in_memory(max_ops=1, clock=clock)
    s = make_store(queue=q)
    s.set("a", "before")  # direct
    monitor.set_connected(False)
    assert s.set("b", 1) == "queued"  # the queue is now full
    with pytest.raises(cs.OnlineFailure) as info:
        s.set("a", "after")
    assert isinstance(info.value.__cause__, cs.QueueFullError)
    assert s.get("a") == "before"  # the local write was undone
    with pytest.raises(cs.OnlineFailure):
        s.set("new", 1)
    with pytest.raises(KeyError):
        s.get("new")
    assert len(q) == 1
    s.close()
    q.close()


def test_local_write_error_with_a_safe_write_is_an_offline_failure(
    make_store: MakeStore,
    remote: FakeRemote,
    monitor: cs.NetworkMonitor,
    queue: cs.SyncQueue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = make_store()
    disk = sqlite3.OperationalError("database or disk is full")

    def broken(*args: Any) -> Any:
        raise disk

    monkeypatch.setattr(s._local, "write", broken)
    with pytest.raises(cs.OfflineFailure) as info:
        s.set("k", 1)
    assert info.value.__cause__ is disk and "delivered" in str(info.value)
    assert remote.values == {"k": 1}
    monitor.set_connected(False)
    with pytest.raises(cs.OfflineFailure) as info:
        s.set("k", 2)
    assert "queued" in str(info.value)
    assert len(queue) == 1


def test_dual_failure_on_write(
    make_store: MakeStore,
    remote: FakeRemote,
    monitor: cs.NetworkMonitor,
    queue: cs.SyncQueue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = make_store()
    disk = sqlite3.OperationalError("disk I/O error")

    def broken(*args: Any) -> Any:
        raise disk

    monkeypatch.setattr(s._local, "write", broken)
    remote.fail_set = cs.PermanentError("no")
    with pytest.raises(cs.DualFailure) as info:
        s.set("k", 1)
    err = info.value
    assert isinstance(err.online_error, cs.PermanentError) and err.offline_error is disk
    assert err.__cause__ is err.online_error and err.__context__ is disk
    assert err.operation == "set"
    assert len(queue) == 0 and remote.values == {}


# --------------------------------------------------------------------------
# conflicts: superseded writes adopt the remote value


class ConflictingRemote(FakeRemote):
    """Refuses writes of keys in `contested` with a ConflictError carrying its value."""

    def __init__(self) -> None:
        super().__init__()
        self.contested: set[str] = set()

    def set(self, key: str, value: Any) -> None:
        if key in self.contested:
            with self.cond:
                self.sets.append((key, value))
                self.cond.notify_all()
            raise cs.ConflictError(self.values[key], remote_version=7)
        super().set(key, value)


def test_superseded_writes_adopt_the_remote_value(
    make_store: MakeStore, monitor: cs.NetworkMonitor, tmp_path: Path
) -> None:
    theirs = ConflictingRemote()
    theirs.values["user:42"] = "EUR"
    theirs.contested.add("user:42")
    s = make_store(remote=theirs, resolver=cs.ServerWins())
    events = Events(s.engine)
    assert s.set("user:42", "BTC") == "queued"  # the direct call met a conflict
    assert monitor.stats()["passive_failures"] == 0  # a conflict is an answer, not an outage
    assert events.wait("superseded")
    assert s.get("user:42") == "EUR"
    monitor.set_connected(False)
    assert s.get("user:42") == "EUR"
    assert local_rows(tmp_path / "local.db") == {"user:42": "EUR"}
    assert s.stats()["adopted"] == 1
    assert not s.has_pending("user:42")


def test_superseded_write_does_not_override_a_newer_local_write(
    make_store: MakeStore, monitor: cs.NetworkMonitor
) -> None:
    theirs = ConflictingRemote()
    theirs.values["k"] = "theirs"
    monitor.set_connected(False)
    s = make_store(remote=theirs, resolver=cs.ServerWins(), coalesce=False)
    events = Events(s.engine)
    s.set("k", "mine-1")
    s.set("k", "mine-2")
    calls = 0

    def conflict_once(key: str, value: Any) -> BaseException | None:
        nonlocal calls
        calls += 1
        return cs.ConflictError("theirs") if calls == 1 else None

    theirs.fail_set = conflict_once
    monitor.set_connected(True)
    assert events.wait("superseded") and events.wait("delivered")
    assert theirs.sets == [("k", "mine-1"), ("k", "mine-2")]
    assert theirs.values["k"] == "mine-2"
    assert s.get("k") == "mine-2"  # not "theirs": the newer local write won


def test_field_merge_result_is_taken_by_the_local_copy(
    make_store: MakeStore, monitor: cs.NetworkMonitor
) -> None:
    theirs = FakeRemote()
    monitor.set_connected(False)
    s = make_store(remote=theirs, resolver=cs.FieldMerge())
    events = Events(s.engine)
    s.set("profile", {"currency": "BTC"})
    theirs.values["profile"] = {"language": "sw"}

    def conflict_once(key: str, value: Any) -> BaseException | None:
        if value == {"currency": "BTC"}:
            return cs.ConflictError({"language": "sw"}, remote_version=3)
        return None

    theirs.fail_set = conflict_once
    monitor.set_connected(True)
    assert events.wait("delivered")
    merged = {"currency": "BTC", "language": "sw"}
    assert theirs.values["profile"] == merged
    monitor.set_connected(False)
    assert s.get("profile") == merged


# --------------------------------------------------------------------------
# the observer / proxy: one store across network changes


def test_store_follows_monitor_transitions_without_recreation(
    make_store: MakeStore, remote: FakeRemote, monitor: cs.NetworkMonitor
) -> None:
    s = make_store()
    remote.values["k"] = 1
    assert s.online and s.get("k") == 1 and len(remote.gets) == 1
    monitor.set_connected(False)
    assert not s.online and s.stats()["mode"] == "offline"
    assert s.get("k") == 1 and len(remote.gets) == 1  # served locally
    assert s.set("k", 2) == "queued"
    monitor.set_connected(True)
    assert s.online
    assert s.stats()["transitions"] == 2
    assert remote.wait_sets(1)
    s.close()
    observer_calls = monitor.stats()["observer_calls"]
    monitor.set_connected(False)  # unsubscribed: the store hears nothing now
    assert s.stats()["transitions"] == 2
    assert monitor.stats()["observer_calls"] - observer_calls <= 1  # the engine's own observer


def test_initial_mode_comes_from_the_monitor_and_none_means_always_online(
    make_store: MakeStore, tmp_path: Path, clock: cs.VirtualClock, remote: FakeRemote
) -> None:
    offline = cs.NetworkMonitor(connected=False, clock=clock)
    s = make_store(monitor=offline)
    assert not s.online
    s.close()
    q2 = cs.SyncQueue.in_memory(clock=clock)
    s2 = make_store(monitor=None, queue=q2, local_path=tmp_path / "other.db")
    assert s2.online and s2.monitor is None
    assert s2.set("k", 1) == "delivered"
    s2.close()
    q2.close()


# --------------------------------------------------------------------------
# lifecycle


def test_close_is_idempotent_stops_the_engine_and_keeps_queued_writes(
    make_store: MakeStore,
    monitor: cs.NetworkMonitor,
    queue: cs.SyncQueue,
    remote: FakeRemote,
    tmp_path: Path,
) -> None:
    monitor.set_connected(False)
    s = make_store()
    s.set("a", 1)
    s.set("b", 2)
    assert s.engine.running
    s.close()
    s.close()
    with s:
        pass  # leaving a with block on a closed store is fine
    assert s.closed and not s.engine.running
    with pytest.raises(cs.StoreClosedError):
        s.get("a")
    with pytest.raises(cs.StoreClosedError):
        s.set("a", 3)
    assert len(queue) == 2  # nothing lost, nothing sent

    # A new store over the same files picks the writes up (as after a restart).
    s2 = make_store()
    events = Events(s2.engine)
    assert s2.has_pending("a") and s2.get("a") == 1  # read-your-writes from the backlog
    monitor.set_connected(True)
    assert events.wait("delivered", 2)
    assert remote.values == {"a": 1, "b": 2}
    assert not s2.has_pending("a")


def test_a_closed_store_can_be_garbage_collected(
    tmp_path: Path, remote: FakeRemote, queue: cs.SyncQueue, monitor: cs.NetworkMonitor
) -> None:
    s = cs.OfflineFirstStore(tmp_path / "s.db", remote, queue, monitor)
    s.set("k", 1)
    s.close()
    ref = weakref.ref(s)
    del s
    gc.collect()
    assert ref() is None


def test_context_manager_closes(
    tmp_path: Path, remote: FakeRemote, queue: cs.SyncQueue, monitor: cs.NetworkMonitor
) -> None:
    with cs.OfflineFirstStore(tmp_path / "s.db", remote, queue, monitor) as s:
        s.set("k", "v")
        engine = s.engine
    assert s.closed and not engine.running
    assert remote.values == {"k": "v"}


def test_queue_consumed_elsewhere_is_refused_and_nothing_leaks(
    tmp_path: Path, remote: FakeRemote, monitor: cs.NetworkMonitor
) -> None:
    path = tmp_path / "outbox.db"
    with cs.SyncQueue.open(path) as mine:
        consumer = cs.SyncQueue.open(path)
        consumer.acquire_consumer()
        with pytest.raises(cs.QueueLockedError):
            cs.OfflineFirstStore(tmp_path / "s.db", remote, mine, monitor)
        consumer.close()
        # The failed store let go of its local file and its observer: a new one works.
        with cs.OfflineFirstStore(tmp_path / "s.db", remote, mine, monitor) as s:
            monitor.set_connected(False)
            assert s.set("k", 1) == "queued"
        assert monitor.stats()["observer_errors"] == 0


def test_foreign_operations_on_the_queue_are_dead_lettered(
    make_store: MakeStore, queue: cs.SyncQueue, remote: FakeRemote
) -> None:
    s = make_store()
    events = Events(s.engine)
    queue.enqueue("send_email", {"to": "x"}, key="mail:1")
    assert events.wait("dead_letter")
    assert "not an OfflineFirstStore write" in (queue.dead_letters()[0].last_error or "")
    assert remote.sets == []
    assert s.stats()["dead_lettered"] == 0  # not the store's


def test_requeued_write_older_than_the_remote_is_skipped(
    make_store: MakeStore, remote: FakeRemote, monitor: cs.NetworkMonitor, queue: cs.SyncQueue
) -> None:
    monitor.set_connected(False)
    s = make_store()
    events = Events(s.engine)
    s.set("k", "old")
    remote.fail_set = cs.PermanentError("not now")
    monitor.set_connected(True)
    assert events.wait("dead_letter")
    remote.fail_set = None
    assert s.set("k", "new") == "delivered"
    queue.requeue_dead()  # an operator resends the old write
    assert events.wait("delivered")
    assert remote.values["k"] == "new"  # the stale write did not clobber the newer one
    assert s.stats()["stale_skipped"] == 1


# --------------------------------------------------------------------------
# bad inputs


class NotJson:
    pass


@pytest.mark.parametrize(
    "value",
    [NotJson(), float("nan"), float("inf"), b"bytes", {1, 2}, "\ud800", {"k": object()}],
    ids=["object", "nan", "inf", "bytes", "set", "surrogate", "nested"],
)
def test_non_json_values_are_refused_and_nothing_changes(
    make_store: MakeStore, remote: FakeRemote, queue: cs.SyncQueue, value: Any, tmp_path: Path
) -> None:
    s = make_store()
    s.set("k", "kept")
    with pytest.raises(cs.InvalidArgumentError) as info:
        s.set("k", value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, cs.SyncError)
    assert s.get("k") == "kept"
    assert remote.values == {"k": "kept"} and len(queue) == 0
    assert local_rows(tmp_path / "local.db") == {"k": "kept"}


def test_deeply_nested_value_is_refused(make_store: MakeStore) -> None:
    s = make_store()
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(cs.InvalidArgumentError):
        s.set("k", deep)


@pytest.mark.parametrize("key", [42, None, b"k", "", "\udc80", ("t",)])
def test_bad_keys_are_refused(make_store: MakeStore, remote: FakeRemote, key: Any) -> None:
    s = make_store()
    with pytest.raises(cs.InvalidArgumentError):
        s.set(key, 1)
    with pytest.raises(cs.InvalidArgumentError):
        s.get(key)
    with pytest.raises(cs.InvalidArgumentError):
        s.has_pending(key)
    assert remote.sets == [] and remote.gets == []


@pytest.mark.parametrize("priority", [-1, 256, True, "high", 1.5])
def test_bad_priorities_are_refused(
    make_store: MakeStore, remote: FakeRemote, priority: Any
) -> None:
    s = make_store()
    with pytest.raises(cs.InvalidArgumentError):
        s.set("k", 1, priority=priority)
    assert remote.sets == []
    with pytest.raises(KeyError):
        s.get("k")


def test_bad_constructor_arguments(
    tmp_path: Path, remote: FakeRemote, queue: cs.SyncQueue, monitor: cs.NetworkMonitor
) -> None:
    class GetOnly:
        def get(self, key: str) -> Any:
            return None

    bad: list[dict[str, Any]] = [
        {"remote": GetOnly()},
        {"queue": "outbox.db"},
        {"monitor": True},
        {"timeout": 0},
        {"timeout": float("nan")},
        {"durability": "fsync"},
        {"max_remote_calls": 0},
    ]
    for override in bad:
        args: dict[str, Any] = {"remote": remote, "queue": queue, "monitor": monitor}
        args.update(override)
        kwargs = {k: v for k, v in args.items() if k not in ("remote", "queue", "monitor")}
        with pytest.raises(cs.InvalidArgumentError):
            cs.OfflineFirstStore(
                tmp_path / "s.db", args["remote"], args["queue"], args["monitor"], **kwargs
            )
    assert not (tmp_path / "s.db").exists()


def test_a_foreign_file_is_refused_unmodified(
    tmp_path: Path, remote: FakeRemote, queue: cs.SyncQueue, monitor: cs.NetworkMonitor
) -> None:
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE users (id INTEGER)")
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a database\n" * 100)
    for path in (foreign, text):
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        with pytest.raises(cs.OfflineFailure) as info:
            cs.OfflineFirstStore(path, remote, queue, monitor)
        assert info.value.operation == "open"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    with pytest.raises(cs.OfflineFailure):
        cs.OfflineFirstStore(tmp_path, remote, queue, monitor)  # a directory
    # The queue is free again: a store can use it.
    with cs.OfflineFirstStore(tmp_path / "ok.db", remote, queue, monitor) as s:
        assert s.set("k", 1) == "delivered"


# --------------------------------------------------------------------------
# threads


def test_many_threads_keep_per_key_order_and_converge(
    make_store: MakeStore, remote: FakeRemote, monitor: cs.NetworkMonitor
) -> None:
    s = make_store(concurrency=2)
    events = Events(s.engine)
    writers, writes = 6, 40
    start = threading.Barrier(writers + 2)
    errors: list[BaseException] = []
    progress = threading.Condition()
    done = [0, 0]  # [writes made, writers finished]

    def writer(n: int) -> None:
        try:
            start.wait()
            for i in range(writes):
                s.set(f"w{n}", i)
                s.set("shared", [n, i])
                assert s.get(f"w{n}") == i
                s.get("shared")
                with progress:
                    done[0] += 1
                    progress.notify_all()
        except BaseException as e:
            errors.append(e)
        finally:
            with progress:
                done[1] += 1
                progress.notify_all()

    def flapper() -> None:
        # Flip the network every few writes, so both routes and the queue are used.
        try:
            start.wait()
            connected = True
            mark = [0]

            def moved_on() -> bool:
                return done[0] >= mark[0] + 5 or done[1] == writers

            while True:
                with progress:
                    mark[0] = done[0]
                    progress.wait_for(moved_on, WAIT)
                    if done[1] == writers:
                        return
                connected = not connected
                monitor.set_connected(connected)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    threads.append(threading.Thread(target=flapper))
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join(WAIT * 3)
        assert not t.is_alive()
    assert errors == []
    monitor.set_connected(True)
    # Everything queued goes out (the remote never fails here, so no retries are
    # due): wait, on the engine's events, until the store has no pending writes.
    keys = [f"w{n}" for n in range(writers)] + ["shared"]
    with events.cond:
        assert events.cond.wait_for(lambda: not any(s.has_pending(k) for k in keys), WAIT)
    for n in range(writers):
        sent = remote.sets_of(f"w{n}")
        assert sent == sorted(sent), f"w{n} delivered out of order: {sent}"
        assert remote.values[f"w{n}"] == writes - 1
        assert s.get(f"w{n}") == writes - 1
    for n in range(writers):
        mine = [v[1] for v in remote.sets_of("shared") if v[0] == n]
        assert mine == sorted(mine), f"shared writes of thread {n} out of order: {mine}"
    monitor.set_connected(False)
    assert s.get("shared") == remote.values["shared"]  # local copy and remote agree
    assert remote.max_active == 1
    stats = s.stats()
    assert stats["direct_writes"] > 0 and stats["queued_writes"] > 0
    assert stats["transitions"] >= 4


# --------------------------------------------------------------------------
# the example


def test_user_preferences_example_runs() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "user_preferences.py"
    proc = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "user 42 prefers BTC (set online: delivered)" in out
    assert "offline: user 7 prefers EUR (set offline: queued)" in out
    assert "server still has user 7 -> (none)" in out
    assert "reconnected: server has user 7 -> EUR" in out
    assert "server down, monitor not told yet: user 42 prefers BTC (from the local copy)" in out
    assert "user 99 has no preference: USD (the default)" in out
    assert "every write reached the server exactly once" in out


def test_module_exports() -> None:
    names = ["OfflineFirstStore", "RemoteStore", "OnlineFailure", "OfflineFailure"]
    for name in [*names, "DualFailure", "StoreClosedError"]:
        assert name in cs.__all__
        assert getattr(cs, name).__doc__
    for exc in (cs.OnlineFailure, cs.OfflineFailure, cs.DualFailure, cs.StoreClosedError):
        assert issubclass(exc, cs.SyncError)
    assert store_module.KIND == "store.set"
