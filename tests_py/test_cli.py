"""The ``cpcsync`` command line: every command, --json shapes, error paths, entry points,
and inspecting a queue while another process consumes it."""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import random
import re
import sqlite3
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cpcsync as cs
from _cli_children import INITIAL, child_dies_holding_leases, child_service
from cpcsync.cli import hooks, main
from cpcsync.cli.rawsql import SUPPORTED_SCHEMA_VERSIONS
from cpcsync.cli.render import OP_FIELDS, decode_payload, encode_payload, human_duration

REPO = Path(__file__).resolve().parent.parent
ERROR_LINE = re.compile(r"^cpcsync: error: \S.*\n$")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """main(argv) in this process: (exit status, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv)
    assert (code, err) == (0, ""), err
    return json.loads(out)


def fingerprint(path: Path) -> list[tuple[str, bytes, int]]:
    """Bytes and mtime of a queue file and its WAL: inspection must change neither."""
    files = [path, Path(str(path) + "-wal")]
    return [(f.name, f.read_bytes(), f.stat().st_mtime_ns) for f in files if f.exists()]


def sidecars(path: Path) -> list[str]:
    return [s for s in ("-wal", "-shm", "-journal") if Path(str(path) + s).exists()]


# --------------------------------------------------------------------------- fixtures


class Populated:
    """A queue file with known content, and a second handle holding the consumer role
    with two operations in flight (as a running service would)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with cs.SyncQueue.open(path) as q:
            self.critical = q.enqueue("set_currency", {"currency": "€"}, key="user:1", priority=100)
            self.high = q.enqueue("note", "[red]not markup[/red]\x1b[31m", priority=75)
            self.medium = [q.enqueue("k", {"i": i}, key=f"m{i}", priority=50) for i in range(3)]
            self.low = q.enqueue("blob", b"\x00\xff\xfe", key="b", priority=25)
            self.custom = q.enqueue("odd", b"{}", key="c", priority=200)
        self.holder = cs.SyncQueue.open(path)
        # take everything at once, then settle each op's fate
        taken = {op.id: op for op in self.holder.take(10)}
        assert set(taken) == {
            self.critical,
            self.high,
            *self.medium,
            self.low,
            self.custom,
        }
        self.holder.retry(self.medium[0], 60.0, error="HTTP 503")  # pending, waits 60 s
        self.holder.retry(self.medium[1], 0.0)  # pending, ready
        self.holder.retry(self.medium[2], 0.0)
        self.holder.retry(self.low, 0.0)
        self.holder.retry(self.critical, 0.0)
        # two dead letters with one error, after the retries (more recent)
        self.holder.dead_letter(self.custom, "HTTP 400: bad request")
        self.holder.dead_letter(self.high, "HTTP 400: bad request")
        # critical and low stay pending; take the low one again: it is in flight
        again = self.holder.take(10)
        self.in_flight = sorted(op.id for op in again)

    def close(self) -> None:
        self.holder.close()


@pytest.fixture
def populated(tmp_path: Path) -> Iterator[Populated]:
    p = Populated(tmp_path / "q.db")
    try:
        yield p
    finally:
        p.close()


# --------------------------------------------------------------------------- status


def test_status_json(populated: Populated, capsys: pytest.CaptureFixture[str]) -> None:
    before = fingerprint(populated.path)
    data = run_json(capsys, "status", str(populated.path), "--json")
    in_flight = populated.in_flight
    assert len(in_flight) == 4  # critical, medium[1], medium[2], low: all ready again
    assert set(data) == {
        "path",
        "pending",
        "in_flight",
        "dead",
        "total",
        "bytes",
        "oldest_pending_age",
        "next_due_in",
        "network_failures",
        "by_priority",
        "consumer",
        "last_errors",
    }
    assert (data["pending"], data["in_flight"], data["dead"], data["total"]) == (1, 4, 2, 5)
    assert data["path"] == str(populated.path)
    assert data["by_priority"] == [
        {"priority": 200, "name": None, "pending": 0, "in_flight": 0, "dead": 1},
        {"priority": 100, "name": "CRITICAL", "pending": 0, "in_flight": 1, "dead": 0},
        {"priority": 75, "name": "HIGH", "pending": 0, "in_flight": 0, "dead": 1},
        {"priority": 50, "name": "MEDIUM", "pending": 1, "in_flight": 2, "dead": 0},
        {"priority": 25, "name": "LOW", "pending": 0, "in_flight": 1, "dead": 0},
    ]
    assert 0.0 <= data["oldest_pending_age"] < 60.0
    assert 50.0 < data["next_due_in"] <= 60.0
    assert data["consumer"]["active"] is True
    assert data["consumer"]["pid"] == os.getpid()
    # the op waiting for its retry failed "now" at the latest; the dead ones earlier
    assert data["last_errors"] == [
        {"error": "HTTP 503", "count": 1, "dead": 0},
        {"error": "HTTP 400: bad request", "count": 2, "dead": 2},
    ]
    assert data["bytes"] == sum(
        len(op.payload)
        for op in (populated.holder.get(i) for i in [populated.medium[0], *in_flight])
        if op is not None
    )
    assert fingerprint(populated.path) == before, "status changed the queue file"

    errors = run_json(capsys, "status", str(populated.path), "--json", "--errors", "1")
    assert [e["error"] for e in errors["last_errors"]] == ["HTTP 503"]


def test_status_human(populated: Populated, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "status", str(populated.path))
    assert (code, err) == (0, "")
    assert "1 pending, 4 in flight, 2 dead" in out
    assert f"pid {os.getpid()}" in out
    for text in ("100 CRITICAL", "25 LOW", "200", "HTTP 400: bad request", "HTTP 503"):
        assert text in out
    assert "note: no consumer" not in out


def test_status_of_an_empty_queue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "q.db"
    cs.SyncQueue.open(path).close()
    data = run_json(capsys, "status", str(path), "--json")
    assert (data["pending"], data["in_flight"], data["dead"]) == (0, 0, 0)
    assert data["by_priority"] == [] and data["last_errors"] == []
    assert data["oldest_pending_age"] is None and data["next_due_in"] is None
    assert data["consumer"] == {"active": False, "pid": None, "description": "none"}
    code, out, _ = run(capsys, "status", str(path))
    assert code == 0 and "0 pending, 0 in flight, 0 dead" in out


# --------------------------------------------------------------------------- list


def test_list_all_json_order(populated: Populated, capsys: pytest.CaptureFixture[str]) -> None:
    ops = run_json(capsys, "list", str(populated.path), "--json")
    assert [op["id"] for op in ops] == [
        *populated.in_flight,  # in flight, by id
        populated.medium[0],  # pending
        populated.high,  # dead, oldest first (by id)
        populated.custom,
    ]
    assert [op["state"] for op in ops] == ["in_flight"] * 4 + ["pending", "dead", "dead"]
    assert all(list(op) == list(OP_FIELDS) for op in ops)
    first_pending = ops[4]
    assert first_pending["last_error"] == "HTTP 503" and first_pending["attempts"] == 1


def test_list_state_and_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "q.db"
    with cs.SyncQueue.open(path) as q:
        low = [q.enqueue("k", {"i": i}, key=f"l{i}", priority=25) for i in range(60)]
        head = q.enqueue("k", {}, key="c", priority=25)
        crit = q.enqueue("k", {"after": head}, key="c", priority=100)
    pending = run_json(capsys, "list", str(path), "--state", "pending", "--json", "--limit", "0")
    # delivery order: lane c first (its head inherits 100 from crit), then FIFO
    assert [op["id"] for op in pending] == [head, crit, *low]
    default = run_json(capsys, "list", str(path), "--state", "pending", "--json")
    assert len(default) == 50
    three = run_json(capsys, "list", str(path), "--json", "--limit", "3")
    assert [op["id"] for op in three] == [head, crit, low[0]]
    assert run_json(capsys, "list", str(path), "--state", "dead", "--json") == []
    assert run_json(capsys, "list", str(path), "--state", "in_flight", "--json") == []


def test_list_in_flight(populated: Populated, capsys: pytest.CaptureFixture[str]) -> None:
    ops = run_json(capsys, "list", str(populated.path), "--state", "in_flight", "--json")
    assert [op["id"] for op in ops] == populated.in_flight
    assert {op["attempts"] for op in ops} == {2}


def test_list_human_escapes_queue_data(
    populated: Populated, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run(capsys, "list", str(populated.path))
    assert (code, err) == (0, "")
    assert "[red]not markup[/red]" in out  # shown as text, not read as rich markup
    assert "\x1b" not in out  # control characters from the queue are shown escaped
    assert "[/red]\\x1b[31m" in out
    assert "<3 bytes binary>" in out
    assert '{"currency":"€"}' in out
    assert "due in" in out and "in flight" in out and "dead" in out


def test_list_of_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "q.db"
    cs.SyncQueue.open(path).close()
    code, out, _ = run(capsys, "list", str(path))
    assert code == 0 and "none" in out


# --------------------------------------------------------------------------- dead letters


def test_dead_letters(populated: Populated, capsys: pytest.CaptureFixture[str]) -> None:
    ops = run_json(capsys, "dead-letters", str(populated.path), "--json")
    assert [(op["id"], op["state"], op["last_error"]) for op in ops] == [
        (populated.high, "dead", "HTTP 400: bad request"),
        (populated.custom, "dead", "HTTP 400: bad request"),
    ]
    one = run_json(capsys, "dead-letters", str(populated.path), "--json", "--limit", "1")
    assert [op["id"] for op in one] == [populated.high]
    code, out, _ = run(capsys, "dead-letters", str(populated.path))
    assert code == 0 and "HTTP 400" in out and str(populated.custom) in out


# --------------------------------------------------------------------------- export

PAYLOADS: list[Any] = [
    {"currency": "€", "name": "Zoë 🚀", "nested": [1, 2.5, None, True]},
    "plain unicode text: naïve café ✓",
    b"\x00\x01\xff\xfe binary",
    b'{"a": 1}',  # JSON, but not the queue's compact encoding: kept byte-exact as base64
    b"NaN",
    b'"\\ud800"',
    b"",
    [1, "two", {"3": None}],
    "3",
]


def _expected_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def test_export_round_trip(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    path = tmp_path / "q.db"
    with cs.SyncQueue.open(path) as q:
        ids = [
            q.enqueue(f"kind-{i}", p, key=f"ключ:{i}" if i % 2 else None, priority=i * 20)
            for i, p in enumerate(PAYLOADS)
        ]
        q.dead_letter(q.take(1)[0].id, "gave up: ошибка")
        originals = {i: q.get(i) for i in ids}
    code = main(["export", str(path)])
    raw, err = capsysbinary.readouterr()
    assert (code, err) == (0, b"")
    text = raw.decode("utf-8")  # UTF-8 whatever the locale
    assert "€" in text and "ключ" in text  # not \u-escaped
    lines = [json.loads(line) for line in text.splitlines()]
    assert [obj["id"] for obj in lines] == ids
    with cs.SyncQueue.open(tmp_path / "copy.db") as copy:
        for obj, payload in zip(lines, PAYLOADS, strict=True):
            assert list(obj) == list(OP_FIELDS)
            op = originals[obj["id"]]
            assert op is not None
            data = decode_payload(obj)
            assert data == _expected_bytes(payload) == bytes(op.payload)
            assert obj["size"] == len(data)
            expected = op.to_dict()
            expected.pop("payload")
            expected["first_attempt_at"] = op.first_attempt_at
            assert {k: obj[k] for k in expected} == expected
            new_id = copy.enqueue(
                obj["kind"],
                data,
                key=obj["key"],
                priority=obj["priority"],
                idempotency_key=obj["idempotency_key"],
            )
            again = copy.get(new_id)
            assert again is not None and bytes(again.payload) == bytes(op.payload)
    encodings = [obj["payload_encoding"] for obj in lines]
    assert encodings == ["json", *["base64"] * 6, "json", "json"]
    assert lines[0]["payload"]["name"] == "Zoë 🚀"
    dead = [obj for obj in lines if obj["state"] == "dead"]
    assert len(dead) == 1 and dead[0]["last_error"] == "gave up: ошибка"

    code = main(["export", str(path), "--state", "dead"])
    raw, _ = capsysbinary.readouterr()
    assert code == 0
    assert [json.loads(line)["id"] for line in raw.decode().splitlines()] == [dead[0]["id"]]


def test_export_with_a_progress_bar(
    populated: Populated, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    fake = Tty()
    monkeypatch.setattr(sys, "stderr", fake)
    code = main(["export", str(populated.path)])
    out, _ = capsys.readouterr()
    assert code == 0
    assert len(out.splitlines()) == 7  # 4 in flight + 1 pending + 2 dead


@given(st.binary(max_size=64))
def test_payload_encoding_round_trips_any_bytes(data: bytes) -> None:
    encoding, value = encode_payload(data)
    obj = json.loads(json.dumps({"payload_encoding": encoding, "payload": value}))
    assert decode_payload(obj) == data


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)


@given(_json_values)
def test_json_payloads_export_as_json(value: Any) -> None:
    data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    encoding, out = encode_payload(data)
    assert encoding == "json" and out == value
    assert decode_payload({"payload_encoding": encoding, "payload": out}) == data


def test_decode_payload_rejects_unknown_encodings() -> None:
    with pytest.raises(ValueError):
        decode_payload({"payload_encoding": "rot13", "payload": "x"})
    with pytest.raises(ValueError):
        decode_payload({"payload_encoding": "base64", "payload": "!!"})


# --------------------------------------------------------------------------- requeue, purge


def _dead_queue(path: Path, n: int = 3) -> list[int]:
    with cs.SyncQueue.open(path) as q:
        ids = [q.enqueue("k", {"i": i}, key=f"k{i}") for i in range(n)]
        for op in q.take(n):
            q.dead_letter(op.id, "nope")
        q.enqueue("live", {}, key="live")
    return ids


def test_requeue_ids_and_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "q.db"
    a, b, c = _dead_queue(path)
    result = run_json(capsys, "requeue", str(path), str(c), str(a), str(c), "--json")
    assert result["requeued"] == 2 and len(result["ids"]) == 2
    with cs.SyncQueue.open(path, read_only=True) as q:
        assert [op.id for op in q.dead_letters()] == [b]
        for new in result["ids"]:
            op = q.get(new)
            assert op is not None and op.state == "pending" and op.attempts == 0
            assert op.last_error is None
        assert q.get(a) is None and q.get(c) is None
    code, out, err = run(capsys, "requeue", str(path), "--all")
    assert (code, err) == (0, "") and out.startswith("requeued 1 dead letter")
    code, out, _ = run(capsys, "requeue", str(path), "--all")
    assert code == 0 and out == "no dead letters to requeue\n"


@pytest.mark.parametrize("which", ["unknown", "pending"])
def test_requeue_of_a_non_dead_op_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    path = tmp_path / "q.db"
    dead = _dead_queue(path)
    with cs.SyncQueue.open(path, read_only=True) as q:
        live = q.peek(1)[0].id
    bad = 999 if which == "unknown" else live
    code, out, err = run(capsys, "requeue", str(path), str(dead[0]), str(bad))
    assert code == 1 and out == "" and ERROR_LINE.match(err), err
    assert f"operation {bad} is not a dead letter" in err
    with cs.SyncQueue.open(path, read_only=True) as q:
        assert [op.id for op in q.dead_letters()] == dead


def test_purge_with_yes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "q.db"
    _dead_queue(path)
    assert run_json(capsys, "purge", str(path), "--yes", "--json") == {"purged": 3}
    code, out, _ = run(capsys, "purge", str(path), "-y")
    assert code == 0 and out == "purged 0 dead letter(s)\n"
    with cs.SyncQueue.open(path, read_only=True) as q:
        assert q.stats()["dead"] == 0 and len(q) == 1


def test_purge_without_yes_needs_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "q.db"
    _dead_queue(path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # not a TTY
    code, out, err = run(capsys, "purge", str(path))
    assert code == 2 and out == "" and ERROR_LINE.match(err) and "--yes" in err
    with cs.SyncQueue.open(path, read_only=True) as q:
        assert q.stats()["dead"] == 3


@pytest.mark.parametrize(("answer", "purged"), [("y\n", True), ("n\n", False), ("", False)])
def test_purge_asks_on_a_terminal(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    purged: bool,
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    path = tmp_path / "q.db"
    _dead_queue(path)
    monkeypatch.setattr(sys, "stdin", Tty(answer))
    code, out, err = run(capsys, "purge", str(path))
    assert "Delete 3 dead letter(s)" in err
    if purged:
        assert code == 0 and out == "purged 3 dead letter(s)\n"
    else:
        assert code == 1 and "cancelled" in err
    with cs.SyncQueue.open(path, read_only=True) as q:
        assert q.stats()["dead"] == (0 if purged else 3)


@pytest.mark.parametrize("argv", [["requeue", "--all"], ["requeue", "DEAD"], ["purge", "--yes"]])
def test_changes_refused_while_another_handle_consumes(
    populated: Populated, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    argv = [str(populated.high) if a == "DEAD" else a for a in argv]
    before = run_json(capsys, "list", str(populated.path), "--json", "--limit", "0")
    code, out, err = run(capsys, argv[0], str(populated.path), *argv[1:])
    assert code == 1 and out == "" and ERROR_LINE.match(err), err
    assert "in use by a consumer" in err and f"pid {os.getpid()}" in err
    assert run_json(capsys, "list", str(populated.path), "--json", "--limit", "0") == before


# --------------------------------------------------------------------------- a live service


def _recv(conn: Any, tag: str) -> tuple[Any, ...]:
    assert conn.poll(60), f"child did not send {tag!r}"
    msg = conn.recv()
    assert msg[0] == tag, msg
    return tuple(msg)


def test_inspecting_a_queue_another_process_consumes_and_fills(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "q.db"
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    proc = ctx.Process(target=child_service, args=(str(path), child, stop))
    proc.start()
    try:
        _, pid, in_flight, dead = _recv(parent, "ready")
        assert pid == proc.pid
        base = INITIAL - 3  # 3 taken: 2 in flight, 1 dead

        parent.send("count")
        (_, before) = _recv(parent, "count")
        status = run_json(capsys, "status", str(path), "--json")
        parent.send("count")
        (_, after) = _recv(parent, "count")
        assert base + before <= status["pending"] <= base + after
        assert (status["in_flight"], status["dead"]) == (2, 1)
        assert status["consumer"]["active"] is True and status["consumer"]["pid"] == pid
        assert status["last_errors"] == [{"error": "boom: HTTP 400", "count": 1, "dead": 1}]

        listed = run_json(capsys, "list", str(path), "--state", "in_flight", "--json")
        assert [op["id"] for op in listed] == sorted(in_flight)
        dead_letters = run_json(capsys, "dead-letters", str(path), "--json")
        assert [op["id"] for op in dead_letters] == [dead]

        for argv in (["requeue", "--all"], ["requeue", str(dead)], ["purge", "--yes"]):
            code, out, err = run(capsys, argv[0], str(path), *argv[1:])
            assert code == 1 and out == "" and ERROR_LINE.match(err), err
            assert "in use by a consumer" in err and f"pid {pid}" in err

        parent.send("count")
        (_, before) = _recv(parent, "count")
        assert main(["export", str(path)]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        ids = [obj["id"] for obj in lines]
        assert ids == sorted(set(ids))
        live = [obj for obj in lines if obj["kind"] == "live"]
        assert len(live) >= before  # at least everything committed before the export began
        assert [obj["payload"]["n"] for obj in live] == list(range(len(live)))
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            _recv(parent, "stopped")
        proc.join(60)
        parent.close()
    assert proc.exitcode == 0

    # the service closed cleanly: no consumer, its leases are pending again
    status = run_json(capsys, "status", str(path), "--json")
    assert status["consumer"]["active"] is False and status["in_flight"] == 0
    assert run_json(capsys, "requeue", str(path), "--all", "--json")["requeued"] == 1


def test_status_notes_leases_of_a_dead_consumer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "q.db"
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=child_dies_holding_leases, args=(str(path), child))
    proc.start()
    try:
        _recv(parent, "ready")
        parent.send("die")
        proc.join(60)
    finally:
        parent.close()
    assert proc.exitcode == 0
    status = run_json(capsys, "status", str(path), "--json")
    assert status["in_flight"] == 2 and status["consumer"]["active"] is False
    code, out, _ = run(capsys, "status", str(path))
    assert code == 0 and "note: no consumer is running" in out
    # requeue opens read-write: the dead consumer's leases become pending
    assert run_json(capsys, "requeue", str(path), "--all", "--json")["requeued"] == 1
    status = run_json(capsys, "status", str(path), "--json")
    assert (status["in_flight"], status["pending"]) == (0, INITIAL)


# --------------------------------------------------------------------------- bad paths and files

INSPECT = [["status"], ["list"], ["dead-letters"], ["export"], ["status", "--json"]]
CHANGE = [["requeue", "--all"], ["requeue", "1"], ["purge", "--yes"]]


def _corrupt(path: Path, *, all_but_header: bool = False) -> None:
    """Overwrites the middle half of the file's pages (or every page but the first) with noise."""
    with cs.SyncQueue.open(path) as q:
        q.enqueue_many(
            [{"kind": "k", "payload": bytes([i]) * 600, "key": f"k{i % 7}"} for i in range(200)]
        )
    wal = Path(str(path) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # else the WAL could mask the damage
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    pages = len(data) // page
    assert pages >= 8
    start, end = (pages // 4) * page, (3 * pages // 4) * page
    if all_but_header:
        start, end = page, len(data)
    data[start:end] = random.Random(7).randbytes(end - start)
    path.write_bytes(bytes(data))


def _make_bad(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.db"
    if kind == "directory":
        path.mkdir()
    elif kind == "text":
        path.write_text("just some notes\n" * 20)
    elif kind == "empty":
        path.touch()
    elif kind == "foreign-sqlite":
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
            db.commit()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "under-a-file":
        (tmp_path / "plain").write_text("x")
        path = tmp_path / "plain" / "q.db"
    return path


@pytest.mark.parametrize("argv", INSPECT + CHANGE, ids=lambda a: "-".join(a))
@pytest.mark.parametrize(
    "kind",
    ["missing", "directory", "text", "empty", "foreign-sqlite", "fifo", "under-a-file"],
)
def test_bad_paths_get_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, argv: list[str]
) -> None:
    path = _make_bad(tmp_path, kind)
    before = path.read_bytes() if path.is_file() else None
    code, out, err = run(capsys, argv[0], str(path), *argv[1:])
    assert code == 2, err
    assert out == ""
    assert ERROR_LINE.match(err), err
    assert "Traceback" not in err
    if kind == "missing":
        assert not path.exists(), "inspecting a missing file created a queue"
    if before is not None:
        assert path.read_bytes() == before
    assert sidecars(path) == []


@pytest.mark.parametrize("argv", [["status"], ["export"], ["list", "--limit", "0"]])
def test_a_corrupt_queue_is_a_runtime_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    path = tmp_path / "q.db"
    # status reads only what it reports (the counters row, small indexes), never the whole
    # backlog (docs/cli.md), so only damage where it reads can show; export and list read all
    _corrupt(path, all_but_header=argv[0] == "status")
    before = path.read_bytes()
    code, out, err = run(capsys, argv[0], str(path), *argv[1:])
    assert code == 1, (out, err)
    assert ERROR_LINE.match(err), err
    assert "Traceback" not in err
    assert not re.search(r"execute '|prepare '|SELECT |PRAGMA ", err), err  # no SQL text
    assert path.read_bytes() == before


def test_a_path_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xff.db")
    code, _, err = run(capsys, "status", bad)
    assert code == 2 and ERROR_LINE.match(err) and "UTF-8" in err


def test_schema_versions_match_the_core(tmp_path: Path) -> None:
    # rawsql reads the file directly: a schema change must revisit it
    header = (REPO / "cpp/src/sqlite/schema.h").read_text()
    found = re.search(r"kSchemaVersion\s*=\s*(\d+)", header)
    assert found is not None
    assert SUPPORTED_SCHEMA_VERSIONS[-1] == int(found.group(1))
    path = tmp_path / "q.db"
    cs.SyncQueue.open(path).close()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] in SUPPORTED_SCHEMA_VERSIONS


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["status"],
        ["list", "q.db", "--limit", "-1"],
        ["list", "q.db", "--limit", "many"],
        ["list", "q.db", "--state", "gone"],
        ["status", "q.db", "--errors", "-2"],
        ["requeue", "q.db"],
        ["requeue", "q.db", "1", "--all"],
        ["requeue", "q.db", "0"],
        ["requeue", "q.db", "x"],
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert "error:" in err and "Traceback" not in err


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in (
        "status",
        "list",
        "dead-letters",
        "requeue",
        "purge",
        "export",
        "serve",
        "demo",
    ):
        assert command in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"cpcsync {cs.__version__}"


def test_every_public_cli_name_has_a_docstring() -> None:
    import importlib
    import inspect

    for name in ("access", "hooks", "inspection", "maintenance", "rawsql", "render", "serve"):
        module = importlib.import_module(f"cpcsync.cli.{name}")
        assert module.__doc__, name
        for public in module.__all__:
            obj = getattr(module, public)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert obj.__doc__, f"cpcsync.cli.{name}.{public}"
    import cpcsync.cli

    assert cpcsync.cli.main.__doc__ and cpcsync.cli.build_parser.__doc__


def test_human_durations() -> None:
    assert human_duration(None) == "-"
    assert human_duration(-3) == "0ms"
    assert human_duration(0.85) == "850ms"
    assert human_duration(12.9) == "12s"
    assert human_duration(192) == "3m 12s"
    assert human_duration(2 * 3600 + 5 * 60 + 7) == "2h 5m"
    assert human_duration(3 * 86400 + 4 * 3600 + 59) == "3d 4h"


# --------------------------------------------------------------------------- demo and bench hooks


def test_demo_passes_its_arguments_through(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 7

    monkeypatch.setitem(sys.modules, "cpcsync.demo", types.SimpleNamespace(main=fake_main))
    assert main(["demo", "--seconds", "5", "--help"]) == 7
    assert seen == [["--seconds", "5", "--help"]]


def test_demo_reaches_the_real_demo(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--help")  # the demo's own argparse help
    assert code == 0 and out.startswith("usage:")


def test_demo_missing(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cpcsync.demo", None)  # import raises ModuleNotFoundError
    code, out, err = run(capsys, "demo")
    assert code == 2 and out == "" and ERROR_LINE.match(err) and "demo" in err
    monkeypatch.setitem(sys.modules, "cpcsync.demo", types.SimpleNamespace())  # no main
    code, _, err = run(capsys, "demo")
    assert code == 2 and ERROR_LINE.match(err)


def test_bench_runs_the_checkouts_script(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "run.py").write_text(
        "import sys, pathlib\n"
        "pathlib.Path('argv.json').write_text(__import__('json').dumps(sys.argv[1:]))\n"
        "sys.exit(3)\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--quick", "--only", "queue"]) == 3
    assert json.loads((tmp_path / "argv.json").read_text()) == ["--quick", "--only", "queue"]


def test_bench_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hooks, "source_root", lambda: tmp_path)
    code, out, err = run(capsys, "bench")
    assert code == 2 and out == "" and ERROR_LINE.match(err) and "benchmarks/run.py" in err


# --------------------------------------------------------------------------- entry points


def _console_script() -> Path:
    script = Path(sys.executable).parent / "cpcsync"
    assert script.is_file(), f"console script not installed next to {sys.executable}"
    return script


def test_python_dash_m_and_console_script(populated: Populated) -> None:
    for command in ([sys.executable, "-m", "cpcsync"], [str(_console_script())]):
        proc = subprocess.run(
            [*command, "status", str(populated.path), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert data["in_flight"] == 4 and data["consumer"]["pid"] == os.getpid()


def test_console_script_error_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(_console_script()), "status", str(tmp_path / "nope.db")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert ERROR_LINE.match(proc.stderr), proc.stderr
    assert not (tmp_path / "nope.db").exists()


def test_bench_from_the_source_checkout() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cpcsync", "bench", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout


def test_export_into_a_closed_pipe(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with cs.SyncQueue.open(path, durability="off") as q:
        q.enqueue_many([{"kind": "k", "payload": {"pad": "x" * 500, "i": i}} for i in range(2000)])
    # 2000 lines of ~900 bytes cannot fit a pipe's buffer: the writer meets the closed end
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpcsync", "export", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    assert json.loads(first)["id"] == 1
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(120) == 1
    assert b"Traceback" not in err and err == b"", err


# --------------------------------------------------------------------------- issue 13


def test_list_and_dead_letters_show_network_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Network failures (no server answered) are shown next to attempts, in the table
    and in --json, for list and dead-letters."""
    path = tmp_path / "q.db"
    with cs.SyncQueue.open(path) as q:
        live = q.enqueue("k", b"x", key="a")
        dead = q.enqueue("k", b"y", key="b")
        for _ in range(3):
            for op in q.take(2):
                q.retry(op.id, 0, error="connection refused", network=True)
        for op in q.take(2):
            if op.id == live:
                q.retry(op.id, 0, error="HTTP 503")
            else:
                q.dead_letter(op.id, "gave up")
    ops = {op["id"]: op for op in run_json(capsys, "list", str(path), "--json")}
    assert (ops[live]["attempts"], ops[live]["network_failures"]) == (1, 3)
    assert (ops[dead]["attempts"], ops[dead]["network_failures"]) == (1, 3)
    [dl] = run_json(capsys, "dead-letters", str(path), "--json")
    assert (dl["id"], dl["attempts"], dl["network_failures"]) == (dead, 1, 3)
    assert run_json(capsys, "status", str(path), "--json")["network_failures"] == 6
    code, out, _ = run(capsys, "status", str(path))
    assert code == 0 and "Network failures" in out and "6 (not attempts)" in out, out
    monkeypatch.setenv("COLUMNS", "200")
    for argv in (("list", str(path)), ("dead-letters", str(path))):
        code, out, _ = run(capsys, *argv)
        assert code == 0 and "Net" in out and "Att" in out, out
        header = next(line for line in out.splitlines() if "Att" in line).split()
        assert header[header.index("Att") + 1] == "Net", header
        row = next(line for line in out.splitlines() if "gave up" in line or "503" in line)
        assert re.search(r"\b1\s+3\b", row), row  # attempts 1, network failures 3
