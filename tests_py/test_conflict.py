"""Conflict resolution: Remote, Resolution, the built-in resolvers on real operations,
Python subclasses and callables (also driven from a C++ thread), and their errors."""

from __future__ import annotations

import gc
import json
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

import cpcsync as cs
from cpcsync import _core

HLC = cs.HybridLogicalClock
START = 1_000.0  # the queue's virtual clock: local stamps are near pack(1_000_000, n)


@pytest.fixture
def queue() -> Iterator[cs.SyncQueue]:
    q = cs.SyncQueue.in_memory(clock=cs.VirtualClock(start=START))
    yield q
    q.close()


def local_op(q: cs.SyncQueue, payload: Any = None, key: str = "user:42") -> cs.Operation:
    """A real operation, enqueued and taken for delivery as the engine would."""
    q.enqueue("set", {"a": 1} if payload is None else payload, key=key)
    (op,) = q.take(1)
    return op


def older(op: cs.Operation) -> int:
    return op.hlc - 1


def newer(op: cs.Operation) -> int:
    return op.hlc + 1


# ----------------------------------------------------------------------------- values


def test_remote_keeps_its_value_as_bytes() -> None:
    assert cs.Remote(b"\x00raw").value == b"\x00raw"
    assert cs.Remote("Zoë").value == "Zoë".encode()
    r = cs.Remote({"a": [1, 2], "b": "é"}, hlc=HLC.pack(5, 1), version=3)
    assert r.value == '{"a":[1,2],"b":"é"}'.encode()
    assert r.json() == {"a": [1, 2], "b": "é"}
    assert (r.hlc, r.version) == (HLC.pack(5, 1), 3)
    assert cs.Remote(b"x").hlc is None
    assert cs.Remote(b"x").version is None
    assert cs.Remote(b"x", hlc=2**64 - 1).hlc == 2**64 - 1
    assert cs.Remote(b"x", hlc=1, version=2) == cs.Remote(b"x", hlc=1, version=2)
    assert cs.Remote(b"x", hlc=1) != cs.Remote(b"x", hlc=2)
    assert repr(cs.Remote(b"v", hlc=7)) == "Remote(value=b'v', hlc=7, version=None)"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"hlc": -1}, cs.InvalidArgumentError),
        ({"hlc": 2**64}, cs.InvalidArgumentError),
        ({"hlc": True}, TypeError),
        ({"hlc": 1.5}, TypeError),
        ({"version": 2**63}, cs.InvalidArgumentError),
        ({"version": "3"}, TypeError),
    ],
)
def test_remote_rejects_bad_stamps(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        cs.Remote(b"x", **kwargs)


def test_remote_rejects_what_json_cannot_encode() -> None:
    with pytest.raises(TypeError):
        cs.Remote(object())


def test_resolution_factories() -> None:
    assert cs.Resolution.use_local().kind == "use_local"
    assert cs.Resolution.use_remote().kind == "use_remote"
    assert cs.Resolution.use_local().payload is None
    assert cs.Resolution.use_remote().payload is None
    m = cs.Resolution.merge({"a": 1, "b": [True, None]})
    assert (m.kind, m.payload) == ("merge", b'{"a":1,"b":[true,null]}')
    assert m.json() == {"a": 1, "b": [True, None]}
    assert cs.Resolution.merge(b"\xffraw").payload == b"\xffraw"
    assert cs.Resolution.merge("text").payload == b"text"
    assert cs.Resolution.merge(b"x") == cs.Resolution.merge("x")
    assert cs.Resolution.use_local() != cs.Resolution.use_remote()
    assert repr(cs.Resolution.merge(b"x")) == "Resolution.merge(b'x')"
    assert repr(cs.Resolution.use_remote()) == "Resolution.use_remote()"
    with pytest.raises(cs.InvalidArgumentError):
        cs.Resolution.use_local().json()
    with pytest.raises(TypeError):
        cs.Resolution()


# ----------------------------------------------------------------------------- built-ins


def test_last_write_wins(queue: cs.SyncQueue) -> None:
    op = local_op(queue)
    lww = cs.LastWriteWins()
    assert lww.resolve(op, cs.Remote(b"r", hlc=older(op))).kind == "use_local"
    assert lww.resolve(op, cs.Remote(b"r", hlc=newer(op))).kind == "use_remote"
    assert lww.resolve(op, cs.Remote(b"r", hlc=op.hlc)).kind == "use_local"  # tie
    assert lww.resolve(op, cs.Remote(b"r")).kind == "use_local"  # no remote stamp
    assert lww(op, cs.Remote(b"r", hlc=newer(op))).kind == "use_remote"  # callable too


def test_last_write_wins_after_observing_a_remote_stamp(queue: cs.SyncQueue) -> None:
    # A server far ahead of the local wall clock: its stamp is newer than an op
    # enqueued before it was observed, and older than one enqueued after.
    before = local_op(queue, key="a")
    remote = cs.Remote(b"r", hlc=HLC.pack(50_000_000, 3))
    queue.observe_hlc(remote.hlc or 0)
    after = local_op(queue, key="b")
    assert cs.LastWriteWins().resolve(before, remote) == cs.Resolution.use_remote()
    assert cs.LastWriteWins().resolve(after, remote) == cs.Resolution.use_local()


def test_server_and_client_wins(queue: cs.SyncQueue) -> None:
    op = local_op(queue)
    for hlc in (older(op), op.hlc, newer(op), None):
        remote = cs.Remote(b"r", hlc=hlc)
        assert cs.ServerWins().resolve(op, remote) == cs.Resolution.use_remote()
        assert cs.ClientWins().resolve(op, remote) == cs.Resolution.use_local()


def test_field_merge(queue: cs.SyncQueue) -> None:
    op = local_op(queue, {"name": "Ann", "tags": ["a"], "addr": {"city": "Oslo"}, "x": 1})
    value = {"name": "Bob", "tags": ["b", "c"], "addr": {"city": "Rome", "zip": "1"}, "y": 2}
    fm = cs.FieldMerge()
    local_newer = fm.resolve(op, cs.Remote(value, hlc=older(op)))
    assert local_newer.kind == "merge"
    assert local_newer.json() == {
        "name": "Ann",
        "tags": ["a"],
        "addr": {"city": "Oslo", "zip": "1"},
        "x": 1,
        "y": 2,
    }
    # The local object's fields first, then the remote-only ones.
    assert list(local_newer.json()) == ["name", "tags", "addr", "x", "y"]
    remote_newer = fm.resolve(op, cs.Remote(value, hlc=newer(op)))
    assert remote_newer.json() == {
        "name": "Bob",
        "tags": ["b", "c"],
        "addr": {"city": "Rome", "zip": "1"},
        "x": 1,
        "y": 2,
    }
    assert fm.resolve(op, cs.Remote(value, hlc=op.hlc)) == local_newer  # tie -> local
    assert fm.resolve(op, cs.Remote(value)) == local_newer  # no remote stamp -> local


@pytest.mark.parametrize(
    ("payload", "value"),
    [
        (b"not json", {"a": 1}),
        ({"a": 1}, b"{broken"),
        ([1, 2], {"a": 1}),
        ({"a": 1}, "plain text"),
        ({"a": 1}, 42),
        ({"a": 1}, b"\xff\xfe"),
    ],
)
def test_field_merge_falls_back_to_last_write_wins(
    queue: cs.SyncQueue, payload: Any, value: Any
) -> None:
    op = local_op(queue, payload)
    fm = cs.FieldMerge()
    assert fm.resolve(op, cs.Remote(value, hlc=older(op))) == cs.Resolution.use_local()
    assert fm.resolve(op, cs.Remote(value, hlc=newer(op))) == cs.Resolution.use_remote()
    assert fm.resolve(op, cs.Remote(value)) == cs.Resolution.use_local()


def test_builtin_reprs() -> None:
    for cls in (cs.LastWriteWins, cs.ServerWins, cs.ClientWins, cs.FieldMerge):
        assert repr(cls()) == f"{cls.__name__}()"
        assert isinstance(cls(), cs.ConflictResolver)


# ----------------------------------------------------------------------------- custom ones


class PreferLongerPayload(cs.ConflictResolver):
    """A custom resolver: the longer payload wins; equal lengths are merged."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, bytes]] = []

    def resolve(self, local: cs.Operation, remote: cs.Remote) -> cs.Resolution:
        self.calls.append((local.id, remote.value))
        if len(local.payload) > len(remote.value):
            return cs.Resolution.use_local()
        if len(local.payload) < len(remote.value):
            return cs.Resolution.use_remote()
        return cs.Resolution.merge({**local.json(), **remote.json()})


def test_python_subclass(queue: cs.SyncQueue) -> None:
    op = local_op(queue, {"a": 1})
    r = PreferLongerPayload()
    assert r.resolve(op, cs.Remote({"a": 12})) == cs.Resolution.use_remote()
    assert r.resolve(op, cs.Remote({})) == cs.Resolution.use_local()
    assert r.resolve(op, cs.Remote({"b": 2})).json() == {"a": 1, "b": 2}
    assert r(op, cs.Remote({})) == cs.Resolution.use_local()
    assert [c[0] for c in r.calls] == [op.id] * 4


def test_python_subclass_from_a_cpp_thread(queue: cs.SyncQueue) -> None:
    op = local_op(queue, {"a": 1})
    r = PreferLongerPayload()
    got = _core._resolve_in_thread(r, op, cs.Remote({"b": 2}))
    assert got.json() == {"a": 1, "b": 2}
    assert r.calls == [(op.id, b'{"b":2}')]
    # Built-ins go through the same path.
    remote = cs.Remote({"b": 2}, hlc=newer(op))
    assert _core._resolve_in_thread(cs.LastWriteWins(), op, remote).kind == "use_remote"


def test_subclass_without_resolve(queue: cs.SyncQueue) -> None:
    class Nothing(cs.ConflictResolver):
        pass

    op = local_op(queue)
    with pytest.raises(NotImplementedError, match="must override resolve"):
        Nothing().resolve(op, cs.Remote(b"x"))


def test_subclass_that_forgot_super_init() -> None:
    class Broken(cs.ConflictResolver):
        def __init__(self) -> None:
            pass

    with pytest.raises(TypeError):
        Broken()


def test_plain_callable(queue: cs.SyncQueue) -> None:
    op = local_op(queue, {"a": 1})
    seen: list[tuple[cs.Operation, cs.Remote]] = []

    def keep_remote_if_versioned(local: cs.Operation, remote: cs.Remote) -> cs.Resolution:
        seen.append((local, remote))
        return cs.Resolution.use_remote() if remote.version else cs.Resolution.use_local()

    r = cs.CallableResolver(keep_remote_if_versioned)
    assert r.fn is keep_remote_if_versioned
    assert "keep_remote_if_versioned" in repr(r)
    assert r.resolve(op, cs.Remote(b"v", version=3)) == cs.Resolution.use_remote()
    assert r.resolve(op, cs.Remote(b"v")) == cs.Resolution.use_local()
    (local, remote), _ = seen
    assert (local.id, local.hlc, local.json()) == (op.id, op.hlc, {"a": 1})
    assert (remote.value, remote.version) == (b"v", 3)
    # The engine's path: ResolverFromPython wraps plain callables, lambdas included.
    got = _core._resolve_in_thread(lambda lo, re: cs.Resolution.merge(b"m"), op, cs.Remote(b""))
    assert got == cs.Resolution.merge(b"m")


def test_callable_resolver_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        cs.CallableResolver(42)  # type: ignore[arg-type]


def test_resolver_from_python_rejects_non_resolvers(queue: cs.SyncQueue) -> None:
    op = local_op(queue)
    with pytest.raises(TypeError, match=r"resolver must be a cpcsync\.ConflictResolver"):
        _core._resolve_in_thread(42, op, cs.Remote(b""))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [None, "use_local", 1, cs.Resolution])
def test_wrong_return_type_is_a_type_error(queue: cs.SyncQueue, bad: Any) -> None:
    op = local_op(queue)

    class Sloppy(cs.ConflictResolver):
        def resolve(self, local: cs.Operation, remote: cs.Remote) -> cs.Resolution:
            return bad  # type: ignore[no-any-return]

    expected = f"must return a cpcsync.Resolution .* not {type(bad).__qualname__}"
    # Sloppy().resolve(...) is a plain Python call; C++ callers check the result: the
    # resolver's __call__, CallableResolver.resolve and the engine's path.
    for resolver in (Sloppy(), cs.CallableResolver(lambda lo, re: bad)):
        with pytest.raises(TypeError, match=expected):
            resolver(op, cs.Remote(b""))
        with pytest.raises(TypeError, match=expected):
            _core._resolve_in_thread(resolver, op, cs.Remote(b""))
    with pytest.raises(TypeError, match=expected):
        cs.CallableResolver(lambda lo, re: bad).resolve(op, cs.Remote(b""))
    with pytest.raises(TypeError, match=expected):
        _core._resolve_in_thread(lambda lo, re: bad, op, cs.Remote(b""))


class ResolverBroke(Exception):
    pass


def test_exceptions_propagate(queue: cs.SyncQueue) -> None:
    op = local_op(queue)

    class Raising(cs.ConflictResolver):
        def resolve(self, local: cs.Operation, remote: cs.Remote) -> cs.Resolution:
            raise ResolverBroke(f"op {local.id}")

    def raising(local: cs.Operation, remote: cs.Remote) -> cs.Resolution:
        try:
            json.loads(remote.value)
        except ValueError as e:
            raise ResolverBroke("bad remote") from e
        return cs.Resolution.use_local()

    with pytest.raises(ResolverBroke, match=f"op {op.id}"):
        Raising()(op, cs.Remote(b""))  # through C++
    with pytest.raises(ResolverBroke, match=f"op {op.id}"):
        _core._resolve_in_thread(Raising(), op, cs.Remote(b""))
    with pytest.raises(ResolverBroke, match="bad remote") as info:
        _core._resolve_in_thread(raising, op, cs.Remote(b"{"))
    assert isinstance(info.value.__cause__, ValueError)


def test_resolvers_from_many_threads(queue: cs.SyncQueue) -> None:
    op = local_op(queue, {"a": 1})
    r = PreferLongerPayload()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(200):
                got = _core._resolve_in_thread(r, op, cs.Remote({"b": 2}))
                assert got.json() == {"a": 1, "b": 2}
                m = _core._resolve_in_thread(cs.FieldMerge(), op, cs.Remote({"b": 2}))
                assert m.json() == {"a": 1, "b": 2}
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(r.calls) == 800


def test_cpp_keeps_a_python_subclass_alive(queue: cs.SyncQueue) -> None:
    # A Python subclass passed to C++ stays usable while C++ holds it, and is freed after.
    r = PreferLongerPayload()
    ref = weakref.ref(r)
    op = local_op(queue)
    assert _core._resolve_in_thread(r, op, cs.Remote(b"")).kind == "use_local"
    del r
    gc.collect()
    assert ref() is None
