"""``cpcsync serve``: run a receiver (cpcsync.server) over HTTP under uvicorn.

::

    cpcsync serve --db sqlite:///server.db [--host 127.0.0.1] [--port 8080]
                  [--workers N] [--max-clock-skew S] [--log-level LEVEL]
                  [--timeout-graceful-shutdown S]

``--db``: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``postgresql://...``
(see :func:`cpcsync.server.backend_from_url`). The database is opened (and its schema
created) once before serving, so a bad URL or an unreadable file is a one-line error.
Then uvicorn runs :func:`app_from_environment` (an import string and a factory) in
``--workers`` processes; each builds its own receiver and backend from the settings
this command leaves in the ``CPCSYNC_SERVE`` environment variable, and closes its
backend when it stops. One line on stdout gives the URL.

Ctrl-C or SIGTERM stops the server: it stops accepting, lets requests in progress
finish (a long poll still waiting after ``--timeout-graceful-shutdown`` seconds is cut;
its client polls again), closes the databases and exits 0. Needs uvicorn
(``cpcsync[server]``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

from cpcsync.cli.access import EXIT_OK, EXIT_USAGE, CliError

if TYPE_CHECKING:
    from cpcsync.server.asgi import ReceiverASGI

__all__ = ["ENV_VAR", "add_parsers", "app_from_environment", "run_serve"]

ENV_VAR = "CPCSYNC_SERVE"
"""The environment variable carrying ``serve``'s settings (JSON) to uvicorn's workers."""

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
"""``--log-level`` choices (uvicorn's)."""


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return n


def _port(text: str) -> int:
    n = _positive_int(text)
    if n > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return n


def _seconds(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(s) or s < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return s


def add_parsers(sub: Any) -> None:
    """Add ``serve`` to the ``cpcsync`` sub-parsers."""
    p = sub.add_parser(
        "serve",
        help="run a sync receiver over HTTP (uvicorn)",
        description=(
            "Serve the receiver's HTTP protocol (the sync protocol: POST /ops, POST "
            "/ops/batch, GET /changes, GET /entities/<key>, GET /health) on one database, "
            "under uvicorn with --workers processes. Ctrl-C or SIGTERM stops it cleanly. "
            "Needs cpcsync[server]."
        ),
    )
    p.add_argument(
        "--db",
        required=True,
        metavar="URL",
        help="sqlite:///relative.db, sqlite:////absolute.db, or postgresql://user@host/db",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="TCP port (8080)")
    p.add_argument(
        "--workers", type=_positive_int, default=1, help="worker processes (1), one backend each"
    )
    p.add_argument(
        "--max-clock-skew",
        type=_seconds,
        default=300.0,
        metavar="S",
        help="reject ops stamped more than S seconds ahead of the server's clock (300)",
    )
    p.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="uvicorn's and cpcsync's (info)"
    )
    p.add_argument(
        "--timeout-graceful-shutdown",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="on Ctrl-C/SIGTERM, wait at most S seconds for requests in progress (10)",
    )
    p.set_defaults(func=run_serve)


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _check_listen(host: str, port: int) -> None:
    """Bind the address as uvicorn will, and let it go: one line for an address in use
    or not of this machine, instead of uvicorn's log."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            where = _url(host, port).removeprefix("http://")
            raise CliError(f"serve: cannot listen on {where}: {e.strerror or e}") from None


def _check_database(url: str) -> None:
    from cpcsync.server import BackendUnavailable, backend_from_url
    from cpcsync.server.backend_url import redact_url

    try:
        backend = backend_from_url(url)
    except ValueError as e:
        raise CliError(f"serve: --db: {e}", EXIT_USAGE) from None
    except ImportError as e:
        raise CliError(f"serve: {e}", EXIT_USAGE) from None
    except BackendUnavailable as e:
        raise CliError(f"serve: {redact_url(url)}: {e}") from None
    except Exception as e:  # the PostgreSQL driver's own errors (refused, bad password)
        raise CliError(f"serve: {redact_url(url)}: {type(e).__name__}: {e}") from None
    backend.close()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the server as Ctrl-C does


def run_serve(args: argparse.Namespace) -> int:
    """``cpcsync serve``: check the database and the address, then run uvicorn until
    Ctrl-C or SIGTERM; 0 after a clean stop."""
    try:
        import uvicorn
    except ImportError:
        raise CliError("serve needs uvicorn: pip install 'cpcsync[server]'", EXIT_USAGE) from None
    from cpcsync.server.backend_url import redact_url

    if args.db.lower().startswith("sqlite:///:memory:") and args.workers > 1:
        raise CliError(
            "serve: --db sqlite:///:memory: is private to one process: use --workers 1",
            EXIT_USAGE,
        )
    _check_database(args.db)
    _check_listen(args.host, args.port)
    settings = {"db": args.db, "max_clock_skew": args.max_clock_skew, "log_level": args.log_level}
    os.environ[ENV_VAR] = json.dumps(settings)
    workers = f"{args.workers} worker{'s' if args.workers > 1 else ''}"
    print(
        f"cpcsync serve: {redact_url(args.db)} at {_url(args.host, args.port)} ({workers}); "
        "Ctrl-C or SIGTERM stops",
        flush=True,
    )
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        uvicorn.run(
            f"{__name__}:app_from_environment",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            lifespan="on",
            timeout_graceful_shutdown=math.ceil(args.timeout_graceful_shutdown),
        )
    except KeyboardInterrupt:
        pass  # stopped before uvicorn took over the signals
    except SystemExit as e:  # uvicorn: the app or the socket failed at startup
        if e.code not in (None, 0):
            raise CliError("serve: the server did not start (see the log above)") from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        os.environ.pop(ENV_VAR, None)
    return EXIT_OK


_LOG_HANDLER_MARK = "_cpcsync_serve"


def _configure_logging(level: str) -> None:
    # uvicorn configures its own loggers; cpcsync's (a database that went away, a
    # failing hook) get a handler of their own on stderr, once per process.
    logger = logging.getLogger("cpcsync")
    logger.setLevel(logging.DEBUG if level == "trace" else level.upper())
    if not any(getattr(h, _LOG_HANDLER_MARK, False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        setattr(handler, _LOG_HANDLER_MARK, True)
        logger.addHandler(handler)


def app_from_environment() -> ReceiverASGI:
    """The ASGI app of one ``serve`` worker: a receiver on a backend of its own, built
    from the ``CPCSYNC_SERVE`` settings, its backend closed at the app's shutdown. The
    factory uvicorn calls in each worker process."""
    from cpcsync.server import Receiver, backend_from_url, make_asgi_app

    raw = os.environ.get(ENV_VAR)
    if not raw:
        raise RuntimeError(f"{ENV_VAR} is not set: start the server with 'cpcsync serve'")
    settings = json.loads(raw)
    _configure_logging(str(settings.get("log_level", "info")))
    backend = backend_from_url(str(settings["db"]))
    try:
        receiver = Receiver(backend, max_clock_skew=float(settings["max_clock_skew"]))
    except BaseException:
        backend.close()
        raise
    return make_asgi_app(receiver, on_shutdown=backend.close)
