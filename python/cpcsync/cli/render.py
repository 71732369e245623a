"""Output for the CLI: rich tables for people, JSON with stable keys for scripts.

The JSON shapes are described in the :mod:`cpcsync.cli` documentation
(``python -m pydoc cpcsync.cli``). Every operation is rendered by
:func:`op_to_json` (used by ``list --json``, ``dead-letters --json`` and each line of
``export``); :func:`decode_payload` turns such an object's payload back into the
exact bytes that were queued.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

import cpcsync as cs

__all__ = [
    "OP_FIELDS",
    "PIPE_WIDTH",
    "PRIORITY_NAMES",
    "Utf8Writer",
    "decode_payload",
    "encode_payload",
    "human_bytes",
    "human_duration",
    "make_console",
    "op_to_json",
    "payload_preview",
    "print_ops",
    "print_status",
    "priority_label",
    "write_json",
]

PRIORITY_NAMES = {int(p): p.name for p in cs.Priority}
"""Names of the standard priorities (100 -> "CRITICAL", ...)."""

OP_FIELDS = (
    "id",
    "state",
    "kind",
    "key",
    "priority",
    "idempotency_key",
    "hlc",
    "created_at",
    "attempts",
    "network_failures",
    "next_attempt_at",
    "first_attempt_at",
    "expires_at",
    "last_error",
    "base_version",
    "size",
    "payload_encoding",
    "payload",
)
"""The keys of an operation's JSON object, in output order; every key is always present."""


# ------------------------------------------------------------------ formatting


def human_duration(seconds: float | None) -> str:
    """A short human duration: ``"850ms"``, ``"12s"``, ``"3m 12s"``, ``"2h 5m"``, ``"3d 4h"``.

    None gives ``"-"``; negative values count as zero.
    """
    if seconds is None or math.isnan(seconds):
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 1.0:
        return f"{round(seconds * 1000)}ms"
    total = int(seconds)
    days, rem = divmod(total, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def human_bytes(n: int) -> str:
    """``"512 B"``, ``"3.2 KiB"``, ``"1.5 MiB"``, ..."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def priority_label(priority: int) -> str:
    """``"100 CRITICAL"`` for a standard priority, else the number."""
    name = PRIORITY_NAMES.get(priority)
    return f"{priority} {name}" if name else str(priority)


# ------------------------------------------------------------------ payloads and ops


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def encode_payload(data: bytes) -> tuple[str, Any]:
    """``("json", value)`` when ``data`` is exactly the compact UTF-8 JSON encoding of
    ``value`` (what ``enqueue`` stores for a JSON-able payload), else
    ``("base64", text)``. Either way :func:`decode_payload` gives ``data`` back."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
        canonical = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (UnicodeError, ValueError, RecursionError):
        canonical = None
    if canonical == data:
        return "json", value
    return "base64", base64.b64encode(data).decode("ascii")


def decode_payload(obj: Mapping[str, Any]) -> bytes:
    """The payload bytes of an operation object from ``export`` or ``--json``.

    Raises ValueError for an unknown ``payload_encoding`` or bad base64.
    """
    encoding = obj.get("payload_encoding")
    if encoding == "json":
        return json.dumps(obj["payload"], separators=(",", ":"), ensure_ascii=False).encode()
    if encoding == "base64":
        try:
            return base64.b64decode(obj["payload"], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"bad base64 payload: {exc}") from exc
    raise ValueError(f"unknown payload_encoding {encoding!r}")


def op_to_json(op: cs.Operation) -> dict[str, Any]:
    """Every field of an operation as a JSON-able dict with the keys of :data:`OP_FIELDS`.

    Times are seconds on the queue's clock (Unix time for the default SystemClock).
    """
    payload = bytes(op.payload)
    encoding, value = encode_payload(payload)
    return {
        "id": op.id,
        "state": op.state,
        "kind": op.kind,
        "key": op.key,
        "priority": op.priority,
        "idempotency_key": op.idempotency_key,
        "hlc": op.hlc,
        "created_at": op.created_at,
        "attempts": op.attempts,
        "network_failures": op.network_failures,
        "next_attempt_at": op.next_attempt_at,
        "first_attempt_at": op.first_attempt_at,
        "expires_at": op.expires_at,
        "last_error": op.last_error,
        "base_version": op.base_version,
        "size": len(payload),
        "payload_encoding": encoding,
        "payload": value,
    }


def payload_preview(data: bytes, width: int = 32) -> str:
    """A one-line preview: the text when it is UTF-8, else ``"<N bytes binary>"``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(data)} bytes binary>"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# ------------------------------------------------------------------ writers


class Utf8Writer:
    """Writes text to a stream as UTF-8 whatever the locale (JSON Lines is UTF-8):
    through the stream's binary buffer when it has one."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._text = stream if stream is not None else sys.stdout
        self._text.flush()
        self._bin = getattr(self._text, "buffer", None)

    def write(self, text: str) -> None:
        """Write ``text``."""
        if self._bin is not None:
            self._bin.write(text.encode("utf-8"))
        else:
            self._text.write(text)

    def flush(self) -> None:
        """Flush the underlying stream."""
        if self._bin is not None:
            self._bin.flush()
        self._text.flush()


def write_json(obj: Any) -> None:
    """Print one JSON document (indented, UTF-8) and a newline to stdout."""
    out = Utf8Writer()
    out.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")
    out.flush()


PIPE_WIDTH = 10_000
"""Console width when stdout is not a terminal and ``COLUMNS`` is not set: wide enough
that no cell wraps, so each operation stays on one line for grep, awk and less -S."""


def make_console() -> Console:
    """A rich console on the current stdout (colour only on a terminal; NO_COLOR honoured).

    On a terminal, tables fit its width. Into a pipe or a file rich would assume 80
    columns and wrap cells; there the width is :data:`PIPE_WIDTH` unless ``COLUMNS``
    says otherwise."""
    width = None
    isatty = getattr(sys.stdout, "isatty", None)
    if not (isatty and isatty()) and not os.environ.get("COLUMNS"):
        width = PIPE_WIDTH
    return Console(file=sys.stdout, highlight=False, width=width)


# ------------------------------------------------------------------ tables


def _visible(char: str) -> str:
    code = ord(char)
    if code < 0x20 or 0x7F <= code < 0xA0:
        return f"\\x{code:02x}"
    return char


def _cell(value: object) -> Text:
    # Text, not a str: rich would read "[...]" in queue data as markup. Control
    # characters (ESC, ...) are shown escaped, so queue data cannot drive the terminal.
    text = "-" if value is None else str(value)
    return Text("".join(map(_visible, text)))


def print_status(status: Mapping[str, Any]) -> None:
    """Render the dict of ``status --json`` for people."""
    console = make_console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("Queue", _cell(status["path"]))
    grid.add_row("Consumer", _cell(status["consumer"]["description"]))
    grid.add_row(
        "Depth",
        _cell(
            f"{status['pending']} pending, {status['in_flight']} in flight, "
            f"{status['dead']} dead ({human_bytes(status['bytes'])} of live payloads)"
        ),
    )
    grid.add_row("Oldest pending", _cell(human_duration(status["oldest_pending_age"])))
    if status["next_due_in"] is not None:
        grid.add_row("Next retry due in", _cell(human_duration(status["next_due_in"])))
    if status["network_failures"]:
        grid.add_row("Network failures", _cell(f"{status['network_failures']} (not attempts)"))
    console.print(grid)
    if status["in_flight"] and status["consumer"]["active"] is False:
        console.print(
            Text(
                "note: no consumer is running; the in-flight operations are leases of a "
                "consumer that is gone and become pending when the queue is next opened "
                "read-write."
            )
        )

    if status["by_priority"]:
        table = Table(title="Depth by priority", box=box.SIMPLE_HEAD, title_justify="left")
        table.add_column("Priority")
        table.add_column("Pending", justify="right")
        table.add_column("In flight", justify="right")
        table.add_column("Dead", justify="right")
        for row in status["by_priority"]:
            table.add_row(
                _cell(priority_label(row["priority"])),
                _cell(row["pending"]),
                _cell(row["in_flight"]),
                _cell(row["dead"]),
            )
        console.print(table)

    if status["last_errors"]:
        table = Table(title="Last errors", box=box.SIMPLE_HEAD, title_justify="left")
        table.add_column("Ops", justify="right")
        table.add_column("Dead", justify="right")
        table.add_column("Error", overflow="fold")
        for err in status["last_errors"]:
            table.add_row(_cell(err["count"]), _cell(err["dead"]), _cell(err["error"]))
        console.print(table)


def _state(op: cs.Operation, now: float) -> str:
    if op.state == "in_flight":
        return "in flight"
    if op.state == "dead":
        return "dead"
    wait = op.next_attempt_at - now
    return "ready" if wait <= 0 else "due in " + human_duration(wait)


def print_ops(
    ops: Sequence[cs.Operation], now: float, *, title: str, dead_letters: bool = False
) -> None:
    """Render operations as a table: id, state (ready, due in ..., in flight, dead),
    priority, kind, key, attempts, network failures (deliveries no server answered,
    which are not attempts), age, payload preview and last error. With
    ``dead_letters`` the state column is left out and the error is shown in full."""
    console = make_console()
    if not ops:
        console.print(Text(f"{title}: none"))
        return
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    # Short columns never wrap; the others wrap (fold) when the terminal is narrow.
    table.add_column("Id", justify="right", no_wrap=True)
    if not dead_letters:
        table.add_column("State", no_wrap=True)
    table.add_column("Pri", justify="right", no_wrap=True)
    table.add_column("Kind", overflow="fold")
    table.add_column("Key", overflow="fold")
    table.add_column("Att", justify="right", no_wrap=True)
    table.add_column("Net", justify="right", no_wrap=True)
    table.add_column("Age", justify="right", no_wrap=True)
    table.add_column("Payload", overflow="fold")
    table.add_column("Last error", overflow="fold")
    for op in ops:
        cells = [_cell(op.id)]
        if not dead_letters:
            cells.append(_cell(_state(op, now)))
        cells += [
            _cell(op.priority),
            _cell(op.kind),
            _cell(op.key),
            _cell(op.attempts),
            _cell(op.network_failures),
            _cell(human_duration(max(0.0, now - op.created_at))),
            _cell(payload_preview(bytes(op.payload))),
            _cell(op.last_error),
        ]
        table.add_row(*cells)
    console.print(table)
