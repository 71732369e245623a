"""Receiver: applies operations exactly once, framework-agnostic (docs/server.md).

One batch is one database transaction. For each op, in order:

1. malformed, unauthorized, or stamped more than ``max_clock_skew`` seconds ahead of
   the receiver's clock -> ``rejected`` (nothing written; the client dead-letters it);
2. idempotency key already applied -> ``duplicate`` with the first result, or
   ``rejected`` if the body differs;
3. the key's row is locked; a ``base_version`` other than its version, or (without
   ``base_version``) an ``hlc`` below the key's stored hlc -> ``conflict`` with the
   key's value, version and hlc (nothing written, the idempotency key not used up);
4. the service's ``apply(tx, op)`` runs in a savepoint: PermanentError -> ``rejected``,
   any other exception -> ``retry_later`` (that op rolled back, the batch goes on);
5. the key's new state, the idempotency record and a change are written.

Then the transaction commits and ``on_commit(results)`` runs. A database that cannot
be used answers ``retry_later`` for the whole batch: nothing is half-applied.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cpcsync import _core
from cpcsync.errors import PermanentError
from cpcsync.server.backend import Backend, BackendUnavailable, Entity, Tx, Write
from cpcsync.server.protocol import MAX_INT, ProtocolError, WireOp, parse_op

if TYPE_CHECKING:
    from cpcsync.server.asgi import ReceiverASGI
    from cpcsync.server.wsgi import ReceiverWSGI

__all__ = ["Receiver", "Request"]

_log = logging.getLogger("cpcsync.server")

#: Seconds a client is told to wait when the database is unavailable or an apply hook
#: failed in a way that may pass.
RETRY_LATER_SECONDS = 1.0


@dataclass(frozen=True)
class Request:
    """What ``authorize(request, op)`` sees of an HTTP request: the method, the path,
    the headers (lower-case names) and the client's address. None for a direct call
    of :meth:`Receiver.apply_batch`."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    client: str | None = None


ApplyHook = Callable[[Tx, dict[str, Any]], None]
AuthorizeHook = Callable[[Request | None, dict[str, Any]], bool]
CommitHook = Callable[[list[dict[str, Any]]], None]


def _rejected(reason: str) -> dict[str, Any]:
    return {"status": "rejected", "reason": reason}


def _retry_later(reason: str, seconds: float = RETRY_LATER_SECONDS) -> dict[str, Any]:
    return {"status": "retry_later", "retry_after": seconds, "reason": reason}


def _conflict(entity: Entity | None) -> dict[str, Any]:
    if entity is None:
        return {"status": "conflict", "value": None, "version": 0, "hlc": None, "deleted": False}
    return {
        "status": "conflict",
        "value": json.loads(entity.value_json),
        "version": entity.version,
        "hlc": entity.hlc,
        "deleted": entity.deleted,
    }


class Receiver:
    """Applies batches of operations on a :class:`Backend` exactly once.

    ``apply(tx, op)``: the service's own write, on ``tx.connection`` inside the
    transaction (``op`` is the wire dict). ``authorize(request, op) -> bool``: False
    rejects the op (403 on the single-op endpoint). ``on_commit(results)``: after each
    commit, with the results of the ops applied. ``max_clock_skew``: seconds an op's
    HLC may be ahead of this receiver's clock. ``max_body_bytes``/``max_batch``:
    request limits of the HTTP layer. ``record_ttl``: idempotency records older than
    this many seconds are pruned (whatever the device's low water); None keeps them
    until the low water passes. ``clock``: a cs.Clock (tests inject a VirtualClock).

    Thread-safe: one Receiver serves every thread of a process.
    """

    def __init__(
        self,
        backend: Backend,
        apply: ApplyHook | None = None,
        authorize: AuthorizeHook | None = None,
        on_commit: CommitHook | None = None,
        max_clock_skew: float = 300.0,
        max_body_bytes: int = 1_048_576,
        max_batch: int = 1000,
        *,
        record_ttl: float | None = 7 * 86400.0,
        clock: _core.Clock | None = None,
    ) -> None:
        if not max_clock_skew >= 0:
            raise ValueError("max_clock_skew must be >= 0")
        if max_body_bytes < 1 or max_batch < 1:
            raise ValueError("max_body_bytes and max_batch must be >= 1")
        if record_ttl is not None and not record_ttl > 0:
            raise ValueError("record_ttl must be > 0 or None")
        self.backend = backend
        self._apply = apply
        self._authorize = authorize
        self._on_commit = on_commit
        self.max_clock_skew = float(max_clock_skew)
        self.max_body_bytes = int(max_body_bytes)
        self.max_batch = int(max_batch)
        self.record_ttl = record_ttl
        self._clock = clock if clock is not None else _core.SystemClock()
        self._hlc = _core.HybridLogicalClock(self._clock)
        self._hlc_lock = threading.Lock()
        self._next_age_prune = 0.0

    # ------------------------------------------------------------------ writes

    def apply_batch(
        self,
        ops: Sequence[Any],
        device: str | None = None,
        low_water: int | None = None,
        *,
        request: Request | None = None,
    ) -> list[dict[str, Any]]:
        """Apply ``ops`` (wire dicts, docs/protocol.md) in one transaction; one result
        per op, in order (see the module docstring). ``device`` and ``low_water`` (the
        device's lowest op id it may still send) let the receiver prune that device's
        idempotency records below it."""
        if device is not None and (not isinstance(device, str) or not device or "\x00" in device):
            raise ProtocolError("device must be a non-empty string without NUL, or null")
        if low_water is not None and (
            not isinstance(low_water, int)
            or isinstance(low_water, bool)
            or not 0 <= low_water <= MAX_INT
        ):
            raise ProtocolError(f"low_water must be an integer in [0, {MAX_INT}] or null")
        results: list[dict[str, Any] | None] = [None] * len(ops)
        parsed: list[tuple[int, WireOp]] = []
        for i, body in enumerate(ops):
            try:
                op = parse_op(body)
            except ProtocolError as e:
                results[i] = _rejected(str(e))
                continue
            problem = self._admit(op, request)
            if problem is not None:
                results[i] = problem
                continue
            parsed.append((i, op))
        if parsed or (device is not None and low_water is not None):
            try:
                applied = self.backend.run(lambda tx: self._apply_in(tx, parsed, device, low_water))
            except BackendUnavailable as e:
                _log.warning("cpcsync receiver: database unavailable: %s", e)
                applied = {i: _retry_later(f"database unavailable: {e}") for i, _ in parsed}
            for i, r in applied.items():
                results[i] = r
            self._after_commit([results[i] for i, _ in parsed])
        self._maybe_prune_by_age()
        return [r if r is not None else _retry_later("not processed") for r in results]

    def _admit(self, op: WireOp, request: Request | None) -> dict[str, Any] | None:
        """Authorization and the HLC bound, before any transaction."""
        if self._authorize is not None:
            try:
                allowed = bool(self._authorize(request, op.body))
            except Exception as e:  # a broken hook must not fail the whole batch
                _log.exception("cpcsync receiver: authorize raised")
                return _retry_later(f"authorize raised {type(e).__name__}")
            if not allowed:
                return {"status": "rejected", "reason": "forbidden", "forbidden": True}
        if op.hlc is not None:
            ahead_ms = _core.HybridLogicalClock.physical_ms(op.hlc) - self._clock.wall() * 1000.0
            if ahead_ms > self.max_clock_skew * 1000.0:
                return _rejected(
                    f"hlc is {ahead_ms / 1000.0:.1f} s ahead of the receiver's clock "
                    f"(max_clock_skew is {self.max_clock_skew:g} s): fix the device's clock"
                )
        return None

    def _stamp(self, op: WireOp) -> int:
        with self._hlc_lock:
            if op.hlc is None:
                return int(self._hlc.now())
            self._hlc.observe(op.hlc)
            return op.hlc

    def _apply_in(
        self,
        tx: Tx,
        ops: list[tuple[int, WireOp]],
        device: str | None,
        low_water: int | None,
    ) -> dict[int, dict[str, Any]]:
        # Runs again from the start if the backend retries the transaction. A fixed
        # number of statements per batch: lock, read the records and the keys' rows,
        # judge every op in memory, write everything at the end (before each `apply`
        # call too, so the hook sees the batch's earlier ops in the database).
        out: dict[int, dict[str, Any]] = {}
        now = self._clock.wall()
        keys = list(dict.fromkeys(op.key for _, op in ops if op.key is not None))
        ikeys = list(dict.fromkeys(op.idempotency_key for _, op in ops))
        tx.lock_batch(keys, ikeys)
        records = tx.records(ikeys)
        entities = tx.lock_entities(keys)
        writes: list[Write] = []
        for i, op in ops:
            out[i] = self._apply_one(tx, op, device, now, records, entities, writes)
        tx.write_many(writes)
        if device is not None and low_water is not None:
            tx.prune_device(device, low_water)
        return out

    def _apply_one(
        self,
        tx: Tx,
        op: WireOp,
        device: str | None,
        now: float,
        records: dict[str, tuple[str, str]],
        entities: dict[str, Entity],
        writes: list[Write],
    ) -> dict[str, Any]:
        """Judges one op against the batch's view (``records``, ``entities``: updated
        here as ops apply) and queues its writes."""
        seen = records.get(op.idempotency_key)
        if seen is not None:
            fingerprint, result_json = seen
            if fingerprint != op.fingerprint:
                return {
                    "status": "rejected",
                    "reason": "idempotency_key was already used by an op with another body",
                    "mismatch": True,
                }
            first: dict[str, Any] = json.loads(result_json)
            first["status"] = "duplicate"
            return first
        current = entities.get(op.key) if op.key is not None else None
        version = current.version if current is not None else 0
        if op.key is not None:
            if op.base_version is not None:
                if op.base_version != version:
                    return _conflict(current)
            elif current is not None and op.hlc is not None and op.hlc < current.hlc:
                return _conflict(current)
        hlc = self._stamp(op)
        if self._apply is not None:
            tx.write_many(writes)
            writes.clear()
            try:
                with tx.savepoint():
                    self._apply(tx, op.body)
            except PermanentError as e:
                return _rejected(f"apply refused the op: {e}")
            except BackendUnavailable:
                raise
            except Exception as e:
                _log.warning("receiver: apply raised (%s)", op.idempotency_key, exc_info=True)
                return _retry_later(f"apply raised {type(e).__name__}: {e}")
        result: dict[str, Any] = {"status": "applied", "version": None, "hlc": hlc}
        if op.key is not None:
            entity = Entity(op.value_json, version + 1, hlc, op.deletes)
            entities[op.key] = entity
            result["version"] = version + 1
        else:
            entity = Entity(op.value_json, 0, hlc, False)
        # (what dumps(result) gives, without the encoder: three plain values)
        v = "null" if result["version"] is None else str(result["version"])
        result_json = f'{{"status":"applied","version":{v},"hlc":{hlc}}}'
        records[op.idempotency_key] = (op.fingerprint, result_json)
        writes.append(
            Write(
                key=op.key,
                kind=op.kind,
                entity=entity,
                idempotency_key=op.idempotency_key,
                fingerprint=op.fingerprint,
                result_json=result_json,
                device=device,
                op_id=op.op_id,
                now=now,
            )
        )
        return result

    def _after_commit(self, results: list[dict[str, Any] | None]) -> None:
        if self._on_commit is None:
            return
        applied = [r for r in results if r is not None and r["status"] == "applied"]
        if not applied:
            return
        try:
            self._on_commit(applied)
        except Exception:  # committed already: the hook's failure is the hook's
            _log.exception("cpcsync receiver: on_commit raised")

    def _maybe_prune_by_age(self) -> None:
        if self.record_ttl is None:
            return
        now = self._clock.wall()
        if now < self._next_age_prune:
            return
        self._next_age_prune = now + min(60.0, self.record_ttl / 10)
        try:
            self.backend.prune_older_than(now - self.record_ttl)
        except BackendUnavailable as e:
            _log.warning("cpcsync receiver: pruning idempotency records failed: %s", e)

    def prune(self, older_than: float | None = None) -> int:
        """Delete idempotency records older than ``older_than`` seconds (default:
        ``record_ttl``) now; returns how many. Pruning also runs on its own."""
        age = self.record_ttl if older_than is None else older_than
        if age is None:
            return 0
        return self.backend.prune_older_than(self._clock.wall() - age)

    # ------------------------------------------------------------------- reads

    def get(self, key: str) -> dict[str, Any] | None:
        """``{"value", "version", "hlc", "deleted"}`` of ``key``, or None."""
        e = self.backend.get(key)
        if e is None:
            return None
        return {
            "value": json.loads(e.value_json),
            "version": e.version,
            "hlc": e.hlc,
            "deleted": e.deleted,
        }

    def changes(
        self, since: str | None = None, limit: int = 1000, wait: float = 0.0
    ) -> dict[str, Any]:
        """``{"changes": [...], "cursor": str}``: applied ops after the cursor
        ``since`` (None: from the start), in commit order, at most ``limit``; with
        ``wait`` > 0 and nothing new, blocks up to that many seconds for a change.
        Pass the returned cursor as ``since`` next time."""
        after = _parse_cursor(since)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
            raise ProtocolError("limit must be an integer in [1, 10000]")
        if not 0 <= wait <= 300:
            raise ProtocolError("wait must be in [0, 300] seconds")
        rows = self.backend.changes(after, limit)
        if not rows and wait > 0 and self.backend.wait_for_change(after, wait):
            rows = self.backend.changes(after, limit)
        changes = [
            {
                "key": r["key"],
                "kind": r["kind"],
                "value": json.loads(r["value"]),
                "version": r["version"],
                "hlc": r["hlc"],
                "deleted": r["deleted"],
                "idempotency_key": r["idempotency_key"],
            }
            for r in rows
        ]
        cursor = rows[-1]["seq"] if rows else after
        return {"changes": changes, "cursor": str(cursor)}

    def health(self) -> dict[str, Any]:
        """``{"status": "ok"}``, or BackendUnavailable."""
        self.backend.ping()
        return {"status": "ok"}

    # ------------------------------------------------------------------ serving

    def asgi(self) -> ReceiverASGI:
        """This receiver as an ASGI 3 application (``app.mount("/sync", rx.asgi())``);
        its shutdown leaves the receiver and its backend open (cpcsync.server.asgi)."""
        from cpcsync.server.asgi import make_asgi_app

        return make_asgi_app(self)

    def wsgi(self) -> ReceiverWSGI:
        """This receiver as a WSGI application (PEP 3333; cpcsync.server.wsgi)."""
        from cpcsync.server.wsgi import make_wsgi_app

        return make_wsgi_app(self)


def _parse_cursor(since: str | None) -> int:
    if since is None or since == "":
        return 0
    if not isinstance(since, str) or not since.isdigit() or len(since) > 19:
        raise ProtocolError("since must be a cursor returned by /changes")
    return int(since)
