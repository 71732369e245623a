"""Commands that change a queue: ``requeue`` and ``purge`` of dead letters.

Both need the queue's consumer role (``requeue_dead``/``purge_dead`` are consumer
calls in the core), so they fail with a one-line error naming the consumer's pid while
the queue's service is running. They open the file read-write only after checking
that it is an existing, non-empty file: the CLI never creates a queue.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import cpcsync as cs
from cpcsync.cli import render
from cpcsync.cli.access import (
    EXIT_OK,
    EXIT_RUNTIME,
    EXIT_USAGE,
    CliError,
    check_queue_path,
    open_for_inspection,
    open_for_writing,
)

__all__ = ["add_parsers", "run_purge", "run_requeue"]


def _op_id(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an operation id: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"not an operation id: {text!r}")
    return n


def add_parsers(sub: Any) -> None:
    """Add ``requeue`` and ``purge`` to the ``cpcsync`` sub-parsers."""
    p = sub.add_parser(
        "requeue",
        help="put dead letters back in the queue",
        description=(
            "Put dead letters (the given ids, or all) back at the tail of their keys, "
            "under new ids, with attempts reset. All or nothing. Needs the consumer role: "
            "fails while the queue's service runs."
        ),
    )
    p.add_argument("db", metavar="DB", help="queue file")
    p.add_argument("ids", metavar="ID", nargs="*", type=_op_id, help="dead letter ids")
    p.add_argument("--all", action="store_true", help="requeue every dead letter")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_requeue)

    p = sub.add_parser(
        "purge",
        help="delete all dead letters",
        description=(
            "Delete every dead letter for good. Asks for confirmation on a terminal; "
            "when stdin is not a terminal, --yes is required. Needs the consumer role: "
            "fails while the queue's service runs."
        ),
    )
    p.add_argument("db", metavar="DB", help="queue file")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_purge)


def run_requeue(args: argparse.Namespace) -> int:
    """``cpcsync requeue DB (ID... | --all) [--json]``."""
    if bool(args.ids) == bool(args.all):
        raise CliError("requeue: give dead letter ids or --all (not both)", EXIT_USAGE)
    ids = list(dict.fromkeys(args.ids)) or None  # de-duplicated, order kept
    with open_for_writing(args.db) as q:
        for op_id in ids or ():
            op = q.get(op_id)
            if op is None or op.state != "dead":
                what = "no such operation" if op is None else f"it is {op.state.replace('_', ' ')}"
                raise CliError(
                    f"{args.db}: operation {op_id} is not a dead letter ({what}); "
                    "nothing was requeued",
                    EXIT_RUNTIME,
                )
        try:
            new_ids = q.requeue_dead(ids)
        except cs.OperationStateError as exc:
            raise CliError(f"{args.db}: {exc}; nothing was requeued", EXIT_RUNTIME) from exc
    if args.json:
        render.write_json({"requeued": len(new_ids), "ids": new_ids})
    elif new_ids:
        print(f"requeued {len(new_ids)} dead letter(s) as id(s) {', '.join(map(str, new_ids))}")
    else:
        print("no dead letters to requeue")
    return EXIT_OK


def _confirm(prompt: str) -> bool:
    sys.stderr.write(prompt)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def run_purge(args: argparse.Namespace) -> int:
    """``cpcsync purge DB [--yes] [--json]``."""
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError(
                "purge deletes dead letters for good: pass --yes (stdin is not a terminal)",
                EXIT_USAGE,
            )
        check_queue_path(args.db)
        with open_for_inspection(args.db) as q:
            dead = int(q.stats()["dead"])
        if dead == 0:
            return _report_purged(args, 0)
        if not _confirm(f"Delete {dead} dead letter(s) from {args.db} for good? [y/N] "):
            raise CliError("purge cancelled; nothing was deleted", EXIT_RUNTIME)
    with open_for_writing(args.db) as q:
        purged = q.purge_dead()
    return _report_purged(args, purged)


def _report_purged(args: argparse.Namespace, purged: int) -> int:
    if args.json:
        render.write_json({"purged": purged})
    else:
        print(f"purged {purged} dead letter(s)")
    return EXIT_OK
