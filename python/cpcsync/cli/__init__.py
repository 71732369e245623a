"""The ``cpcsync`` command line: inspect and maintain queue files, serve a receiver, run the
demo and benchmarks.

::

    cpcsync status DB [--errors N] [--json]   depth by priority and state, oldest
                                              pending, dead letters, last errors,
                                              who consumes
    cpcsync list DB [--state S] [--limit N] [--json]
    cpcsync dead-letters DB [--limit N] [--json]
    cpcsync export DB [--state S]             JSON lines on stdout
    cpcsync requeue DB (ID... | --all)        dead letters back into the queue
    cpcsync purge DB [--yes]                  delete the dead letters
    cpcsync serve --db URL [--host H] [--port P] [--workers N]
                                              the receiver over HTTP (uvicorn;
                                              cpcsync.cli.serve)
    cpcsync demo [ARGS...]                    the live demo (cpcsync.demo)
    cpcsync bench [ARGS...]                   benchmarks/run.py of a source checkout

``cpcsync COMMAND --help`` gives a command's options. ``python -m cpcsync`` is the
same program.

Inspection commands (status, list, dead-letters, export) open the file read-only:
they never create or change a queue and work while its service runs. requeue and
purge need the queue's consumer role, so they fail while the service runs. Tables
fit the terminal; into a pipe they do not wrap (one line per operation).

Exit status: 0 success, 1 runtime error (queue in use, damaged file, I/O error,
permission denied), 2 usage error or a path that is not a queue file, 130 interrupted.
Errors are one line on stderr, ``cpcsync: error: <path>: <what>``, never a traceback
(``CPCSYNC_DEBUG=1`` shows one for an internal error).

JSON (``--json``: one indented document; ``export``: one object per line) has stable
keys: new keys may be added, existing ones keep their names and meaning.

- ``status --json``: ``path``, ``pending``, ``in_flight``, ``dead``, ``total``
  (pending + in flight), ``bytes`` (live payload bytes), ``oldest_pending_age`` and
  ``next_due_in`` (seconds or null), ``network_failures``, ``by_priority`` (a list of
  ``{priority, name, pending, in_flight, dead}``, highest first), ``consumer``
  (``{active, pid, description}``), ``last_errors`` (a list of ``{error, count, dead}``,
  most recent first).
- An operation (``list --json`` and ``dead-letters --json``: arrays; ``export``:
  lines) has the keys of :data:`cpcsync.cli.render.OP_FIELDS`: the fields of
  ``cs.Operation``, ``size`` (payload bytes) and ``payload_encoding``: ``"json"`` when
  the payload is the queue's own JSON encoding of a value (``payload`` is that value),
  else ``"base64"``. :func:`cpcsync.cli.render.decode_payload` gives the exact bytes
  back.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cpcsync.cli import hooks, inspection, maintenance, serve
from cpcsync.cli.access import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, CliError

__all__ = ["EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE", "CliError", "build_parser", "main"]

PROG = "cpcsync"
"""The program name in usage and error messages."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command except the pass-through hooks' arguments."""
    from cpcsync import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Inspect and maintain cpcsync queue files; serve a receiver; run the demo and "
            "benchmarks."
        ),
        epilog="Exit status: 0 ok, 1 runtime error, 2 usage error or not a queue file. "
        "'cpcsync COMMAND --help' for a command's options; the full reference (JSON "
        "keys, errors) is installed with the package: python -m pydoc cpcsync.cli",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    inspection.add_parsers(sub)
    maintenance.add_parsers(sub)
    serve.add_parsers(sub)
    for name, (_runner, help_text) in hooks.HOOKS.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _error(message: str, code: int) -> int:
    sys.stderr.write(f"{PROG}: error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    return code


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return EXIT_RUNTIME


def _silence_stdout() -> None:
    # The reader went away (`cpcsync export q.db | head`): send what Python still
    # wants to flush at exit to /dev/null instead of raising again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    Never raises for a user error: errors are one line on stderr and a non-zero status.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        # The hooks take their arguments verbatim (argparse would reject their options).
        if args_list and args_list[0] in hooks.HOOKS:
            runner, _help = hooks.HOOKS[args_list[0]]
            return runner(args_list[1:])
        try:
            args = build_parser().parse_args(args_list)
        except SystemExit as exc:  # --help, --version, or a usage error already printed
            return _exit_code(exc)
        code: int = args.func(args)
        return code
    except CliError as exc:
        return _error(exc.message, exc.code)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except SystemExit as exc:  # a hook's own exit
        return _exit_code(exc)
    except Exception as exc:  # a bug: still one line, never a traceback
        if os.environ.get("CPCSYNC_DEBUG"):
            raise
        return _error(
            f"internal error: {type(exc).__name__}: {exc} (set CPCSYNC_DEBUG=1 for a traceback)",
            EXIT_RUNTIME,
        )
