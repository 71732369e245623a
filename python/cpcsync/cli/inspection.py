"""Read-only commands: ``status``, ``list``, ``dead-letters`` and ``export``.

They open the queue with ``SyncQueue.open(path, read_only=True)``: they never create
or change a file and work while the queue's service is running. On a live queue each
figure is exact when read, but the figures are not one atomic snapshot.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import Progress

import cpcsync as cs
from cpcsync.cli import render
from cpcsync.cli.access import EXIT_OK, consumer_info, open_for_inspection
from cpcsync.cli.rawsql import RawQueueReader

__all__ = [
    "DEFAULT_LIMIT",
    "LIST_STATES",
    "add_parsers",
    "collect_ops",
    "collect_status",
    "run_dead_letters",
    "run_export",
    "run_list",
    "run_status",
]

LIST_STATES = ("pending", "in_flight", "dead", "all")
"""Values of ``--state`` for ``list`` and ``export``."""
DEFAULT_LIMIT = 50
"""Default ``--limit`` of ``list`` and ``dead-letters``."""


def _limit(text: str) -> int | None:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0 (0: no limit)")
    return None if n == 0 else n


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n


def add_parsers(sub: Any) -> None:
    """Add the inspection commands to the ``cpcsync`` sub-parsers."""
    p = sub.add_parser(
        "status",
        help="depth by priority and state, oldest pending age, dead letters, last errors",
        description="Summarise a queue file (read-only; safe while its service runs).",
    )
    p.add_argument("db", metavar="DB", help="queue file")
    p.add_argument(
        "--errors", type=_count, default=5, metavar="N", help="distinct last errors (default 5)"
    )
    p.add_argument(
        "--json", action="store_true", help="print JSON (keys: python -m pydoc cpcsync.cli)"
    )
    p.set_defaults(func=run_status)

    p = sub.add_parser(
        "list",
        help="list operations",
        description=(
            "List operations (read-only). Order: in flight (by id), then pending in "
            "delivery order, then dead letters (oldest first). Pending operations past "
            "their TTL that the consumer has not swept yet are not listed."
        ),
    )
    p.add_argument("db", metavar="DB", help="queue file")
    p.add_argument("--state", choices=LIST_STATES, default="all", help="default: all")
    p.add_argument(
        "--limit",
        type=_limit,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"at most N operations (default {DEFAULT_LIMIT}; 0: no limit)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON array of operations")
    p.set_defaults(func=run_list)

    p = sub.add_parser(
        "dead-letters",
        help="list dead-lettered operations with their errors",
        description="List dead letters, oldest first (read-only).",
    )
    p.add_argument("db", metavar="DB", help="queue file")
    p.add_argument(
        "--limit",
        type=_limit,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"at most N (default {DEFAULT_LIMIT}; 0: no limit)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON array of operations")
    p.set_defaults(func=run_dead_letters)

    p = sub.add_parser(
        "export",
        help="write operations as JSON lines to stdout",
        description=(
            "Write every operation (every field) as one JSON object per line, by id. "
            "The payload is JSON when it is the queue's JSON encoding of a value, else "
            "base64 (payload_encoding says which). Read-only."
        ),
    )
    p.add_argument("db", metavar="DB", help="queue file")
    p.add_argument("--state", choices=LIST_STATES, default="all", help="default: all")
    p.set_defaults(func=run_export)


# ------------------------------------------------------------------ status


def collect_status(q: cs.SyncQueue, path: str, errors: int) -> dict[str, Any]:
    """The data of ``status`` (the ``--json`` document)."""
    stats = q.stats()
    with RawQueueReader(path) as raw:
        other = raw.counts_by_priority()
        last_errors = raw.last_errors(max(0, errors), q.clock.now())
    pending_by_priority: dict[int, int] = {int(p): int(n) for p, n in stats["by_priority"].items()}
    rows = []
    for priority in sorted(set(pending_by_priority) | set(other), reverse=True):
        rest = other.get(priority, {"in_flight": 0, "dead": 0})
        rows.append(
            {
                "priority": priority,
                "name": render.PRIORITY_NAMES.get(priority),
                "pending": pending_by_priority.get(priority, 0),
                "in_flight": rest["in_flight"],
                "dead": rest["dead"],
            }
        )
    who = consumer_info(path)
    return {
        "path": path,
        "pending": int(stats["pending"]),
        "in_flight": int(stats["in_flight"]),
        "dead": int(stats["dead"]),
        "total": int(stats["total"]),
        "bytes": int(stats["bytes"]),
        "oldest_pending_age": stats["oldest_pending_age"],
        "next_due_in": stats["next_due_in"],
        "network_failures": int(stats["network_failures"]),
        "by_priority": rows,
        "consumer": {
            "active": who.active,
            "pid": who.pid,
            "description": who.describe(),
        },
        "last_errors": [{"error": e.error, "count": e.count, "dead": e.dead} for e in last_errors],
    }


def run_status(args: argparse.Namespace) -> int:
    """``cpcsync status DB [--errors N] [--json]``."""
    with open_for_inspection(args.db) as q:
        data = collect_status(q, args.db, args.errors)
    if args.json:
        render.write_json(data)
    else:
        render.print_status(data)
    return EXIT_OK


# ------------------------------------------------------------------ list


def _in_flight(q: cs.SyncQueue, raw: RawQueueReader, limit: int | None) -> list[cs.Operation]:
    ops = []
    for op_id in raw.ids(["in_flight"], limit=limit):
        op = q.get(op_id)
        if op is not None and op.state == "in_flight":  # not acked meanwhile
            ops.append(op)
    return ops


def collect_ops(q: cs.SyncQueue, path: str, state: str, limit: int | None) -> list[cs.Operation]:
    """Operations for ``list``: in flight by id, pending in delivery order, dead by id."""
    ops: list[cs.Operation] = []

    def room() -> int | None:
        return None if limit is None else limit - len(ops)

    if state in ("in_flight", "all"):
        with RawQueueReader(path) as raw:
            ops += _in_flight(q, raw, room())
    if state in ("pending", "all") and room() != 0:
        n = room()
        if n is None:
            # peek(n) wants a bound: everything pending now, plus what arrives meanwhile
            n = int(q.stats()["pending"]) + 1024
        ops += q.peek(n)
    if state in ("dead", "all") and room() != 0:
        ops += q.dead_letters(room())
    return ops if limit is None else ops[:limit]


def run_list(args: argparse.Namespace) -> int:
    """``cpcsync list DB [--state S] [--limit N] [--json]``."""
    with open_for_inspection(args.db) as q:
        ops = collect_ops(q, args.db, args.state, args.limit)
        now = q.clock.now()
    if args.json:
        render.write_json([render.op_to_json(op) for op in ops])
    else:
        what = "Operations" if args.state == "all" else args.state.replace("_", " ").capitalize()
        render.print_ops(ops, now, title=f"{what} in {args.db}")
    return EXIT_OK


def run_dead_letters(args: argparse.Namespace) -> int:
    """``cpcsync dead-letters DB [--limit N] [--json]``."""
    with open_for_inspection(args.db) as q:
        ops = q.dead_letters(args.limit)
        now = q.clock.now()
    if args.json:
        render.write_json([render.op_to_json(op) for op in ops])
    else:
        render.print_ops(ops, now, title=f"Dead letters in {args.db}", dead_letters=True)
    return EXIT_OK


# ------------------------------------------------------------------ export


def _states(state: str) -> list[str]:
    return ["pending", "in_flight", "dead"] if state == "all" else [state]


def _export_ops(q: cs.SyncQueue, raw: RawQueueReader, states: list[str]) -> Iterator[cs.Operation]:
    for op_id in raw.iter_ids(states):
        op = q.get(op_id)
        # None: acked (deleted) since its id was read; another state: moved meanwhile
        if op is not None and op.state in states:
            yield op


def run_export(args: argparse.Namespace) -> int:
    """``cpcsync export DB [--state S]``: JSON lines on stdout."""
    states = _states(args.state)
    out = render.Utf8Writer()
    with open_for_inspection(args.db) as q, RawQueueReader(args.db) as raw:
        ops = _export_ops(q, raw, states)
        if sys.stderr.isatty():
            progress = Progress(console=Console(file=sys.stderr), transient=True)
            with progress:
                task = progress.add_task("exporting", total=raw.count(states))
                for op in ops:
                    out.write(json.dumps(render.op_to_json(op), ensure_ascii=False) + "\n")
                    progress.advance(task)
        else:
            for op in ops:
                out.write(json.dumps(render.op_to_json(op), ensure_ascii=False) + "\n")
    out.flush()
    return EXIT_OK
