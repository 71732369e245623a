"""Throwaway PostgreSQL clusters for tests, scripts and benchmarks.

:class:`PostgresCluster` runs ``initdb`` into a new temporary directory, starts
``postgres`` on 127.0.0.1 (a free port unless one is given; its Unix socket in that
directory too), waits until it accepts connections, and on exit stops it
(``pg_ctl stop -m fast``) and deletes the directory::

    with PostgresCluster() as pg:
        print(pg.dsn)  # postgresql://nobody@127.0.0.1:40123/postgres

PostgreSQL refuses to run as root: as root the cluster runs as an unprivileged user
(``nobody`` unless ``run_as`` says otherwise) that owns the directory; otherwise as
the current user. The superuser role is named after that user, and authentication is
``trust`` on the loopback interface and the private socket: a cluster for tests,
never for data that matters. ``fsync`` is off (a crash of the server process loses
nothing; only a crash of the machine would), which makes it quick.

The binaries are looked up by :func:`find_bindir`: the highest version in
``/usr/lib/postgresql/*/bin`` (Debian's ``postgresql`` package, which
``scripts/bootstrap.sh`` installs), then ``initdb`` on ``PATH``, then
``pg_config --bindir``. Debian's package also sets up a "main" cluster as a service;
it is not used.

:func:`postgres_server` is what the pytest fixtures (``cpcsync_postgres_dsn``) and a
script want: the server named by the ``CPCSYNC_POSTGRES_DSN`` environment variable if
it is set (nothing is started), otherwise a throwaway cluster.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = [
    "DSN_ENV",
    "PostgresCluster",
    "PostgresError",
    "PostgresNotFoundError",
    "PostgresPortInUseError",
    "PostgresStartError",
    "database_dsn",
    "find_bindir",
    "postgres_server",
]

#: The environment variable naming a server to use instead of starting one.
DSN_ENV = "CPCSYNC_POSTGRES_DSN"

#: The programs a cluster needs, all from one directory.
PROGRAMS = ("initdb", "postgres", "pg_ctl")

#: Server settings a throwaway cluster starts with (``settings=`` adds or overrides).
DEFAULT_SETTINGS: Mapping[str, str] = {"fsync": "off", "full_page_writes": "off"}

_LOG_TAIL_LINES = 20
_POLL_INTERVAL = 0.05  # seconds between two readiness checks (bounded by the deadline)
_PORT_ATTEMPTS = 3  # a free port picked for us can be taken before postgres binds it


class PostgresError(RuntimeError):
    """A throwaway PostgreSQL cluster could not be set up or run."""


class PostgresNotFoundError(PostgresError):
    """No PostgreSQL server binaries (``initdb``, ``postgres``...) were found."""


class PostgresStartError(PostgresError):
    """``initdb`` failed, or ``postgres`` exited or did not accept connections in time.

    ``port`` is the port it was asked to listen on; ``log_tail`` the last lines of
    what it (or ``initdb``) wrote, also included in the message."""

    def __init__(self, message: str, *, port: int, log_tail: str) -> None:
        super().__init__(f"{message}\n--- last lines of the log\n{log_tail}")
        self.port = port
        self.log_tail = log_tail


class PostgresPortInUseError(PostgresStartError):
    """The port was taken. (When the port was picked for the cluster, it is retried
    with another before this is raised.)"""


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,); 9.6 -> (9, 6); anything else sorts first
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (-1,)


def _complete(bindir: Path) -> bool:
    return all(os.access(bindir / p, os.X_OK) for p in PROGRAMS)


def find_bindir() -> Path | None:
    """The directory of the PostgreSQL server binaries, or None if none is installed.

    In order: the highest version in ``/usr/lib/postgresql/*/bin`` (Debian), the
    directory ``initdb`` on ``PATH`` really lives in, ``pg_config --bindir``. A
    directory counts only if it has ``initdb``, ``postgres`` and ``pg_ctl``."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key)[::-1]:
        if _complete(candidate):
            return candidate
    initdb = shutil.which("initdb")
    if initdb is not None and _complete(Path(initdb).resolve().parent):
        return Path(initdb).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out and _complete(Path(out)):
                return Path(out)
    return None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty)"


class PostgresCluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1, for as long as the ``with`` block.

    ``port``: 0 picks a free one. ``run_as``: the user to run as when this process is
    root (default ``nobody``; it must be able to reach ``base_dir``); ignored
    otherwise. ``bindir``: the binaries (default :func:`find_bindir`). ``base_dir``:
    where the temporary directory goes (default the system's temporary directory).
    ``settings``: server settings (``-c name=value``) on top of
    :data:`DEFAULT_SETTINGS`. ``start_timeout``: seconds to wait for ``initdb`` and
    then for the server to accept connections.

    :meth:`start` (or entering the ``with`` block) raises
    :class:`PostgresNotFoundError` without binaries and :class:`PostgresStartError`
    (naming the port, with the log's last lines) when the server does not come up;
    either way nothing is left running or on disk.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        port: int = 0,
        *,
        run_as: str | None = None,
        bindir: str | os.PathLike[str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self._requested_port = port
        self._bindir = Path(bindir) if bindir is not None else None
        self._base_dir = base_dir
        self._settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._start_timeout = start_timeout
        if os.geteuid() == 0:
            try:
                self._account = pwd.getpwnam(run_as or "nobody")
            except KeyError:
                raise PostgresError(
                    f"no user {run_as or 'nobody'!r} to run PostgreSQL as "
                    "(it refuses to run as root)"
                ) from None
        else:
            self._account = pwd.getpwuid(os.geteuid())
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port = port

    # ------------------------------------------------------------------ properties

    @property
    def user(self) -> str:
        """The operating system user the server runs as; also its superuser role."""
        return self._account.pw_name

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 (the one picked, once started)."""
        return self._port

    @property
    def dsn(self) -> str:
        """``postgresql://<user>@127.0.0.1:<port>/postgres``."""
        return f"postgresql://{quote(self.user, safe='')}@{self.host}:{self._port}/postgres"

    @property
    def directory(self) -> Path | None:
        """The temporary directory (data, socket, ``postgres.log``) while it exists."""
        return self._dir

    @property
    def data_dir(self) -> Path | None:
        """The data directory (``PGDATA``) while it exists."""
        return None if self._dir is None else self._dir / "data"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        """True from a successful :meth:`start` until :meth:`stop` (or the server died)."""
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> PostgresCluster:
        """Create the cluster and start the server; returns once it accepts
        connections. Raises if it is already started."""
        if self._dir is not None:
            raise PostgresError("the cluster is already started")
        bindir = self._bindir or find_bindir()
        if bindir is None:
            raise PostgresNotFoundError(
                "PostgreSQL is not installed: no initdb, postgres and pg_ctl in "
                "/usr/lib/postgresql/*/bin, on PATH or in pg_config --bindir "
                "(Debian: apt-get install postgresql)"
            )
        self._bindir = bindir
        deadline = time.monotonic() + self._start_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="cpcsync-pg-", dir=self._base_dir))
        try:
            if os.geteuid() == 0:
                os.chown(self._dir, self._account.pw_uid, self._account.pw_gid)
            self._initdb(deadline)
            for attempt in range(_PORT_ATTEMPTS):
                try:
                    self._start_server(deadline)
                    return self
                except PostgresPortInUseError:
                    if self._requested_port != 0 or attempt == _PORT_ATTEMPTS - 1:
                        raise
        except BaseException:
            self._kill()
            self._remove_dir()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (``pg_ctl stop -m fast``; killed if that fails within
        ``timeout`` seconds) and delete the directory. Idempotent."""
        try:
            if self._proc is not None and self._proc.poll() is None and self.data_dir is not None:
                try:
                    wait = str(max(1, int(timeout)))
                    stop = ["pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-t", wait]
                    self._run(stop, timeout=timeout + 5)
                except (subprocess.SubprocessError, OSError):
                    # what pg_ctl stop -m fast sends, sent to our own child
                    with contextlib.suppress(OSError):
                        self._proc.send_signal(signal.SIGINT)
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._kill()
        finally:
            self._proc = None
            self._remove_dir()

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"PostgresCluster({self.host}:{self._port}, user={self.user!r}, {state})"

    # ------------------------------------------------------------------ internals

    def _env(self) -> dict[str, str]:
        # Nothing of the caller's libpq settings (PGHOST, PGPORT, PGDATA...) leaks in,
        # nor a preloaded library or sanitizer settings meant for the caller (a test run
        # against an ASan build preloads libasan: the server is not that program).
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PG", "ASAN_", "UBSAN_", "LSAN_", "TSAN_")) and k != "LD_PRELOAD"
        }
        env.update(LC_ALL="C", LANG="C", HOME=str(self._dir))
        return env

    def _as_user(self) -> dict[str, Any]:
        """Popen arguments that run a child as the cluster's user."""
        if os.geteuid() != 0:
            return {}
        return {"user": self._account.pw_uid, "group": self._account.pw_gid, "extra_groups": []}

    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        assert self._bindir is not None
        return subprocess.run(
            [str(self._bindir / argv[0]), *argv[1:]],
            cwd=self._dir,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            **self._as_user(),
        )

    def _initdb(self, deadline: float) -> None:
        assert self.data_dir is not None
        argv = ["initdb", "-D", str(self.data_dir), "-U", self.user, "-A", "trust"]
        argv += ["-E", "UTF8", "--locale=C", "--no-sync"]
        try:
            self._run(argv, timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.CalledProcessError as exc:
            raise PostgresStartError(
                f"initdb failed (exit {exc.returncode}) for a cluster on "
                f"{self.host}:{self._port or '(not chosen yet)'} as {self.user}",
                port=self._port,
                log_tail=_tail(f"{exc.stdout}\n{exc.stderr}"),
            ) from None
        except subprocess.TimeoutExpired as exc:
            raise PostgresStartError(
                f"initdb did not finish within {self._start_timeout:g} s",
                port=self._port,
                log_tail=_tail(_text(exc.stdout) + _text(exc.stderr)),
            ) from None

    def _start_server(self, deadline: float) -> None:
        assert self._dir is not None and self._bindir is not None
        self._port = self._requested_port or _free_port(self.host)
        log_path = self._dir / "postgres.log"
        argv = [str(self._bindir / "postgres"), "-D", str(self.data_dir)]
        argv += ["-h", self.host, "-p", str(self._port), "-k", str(self._dir)]
        for name, value in self._settings.items():
            argv += ["-c", f"{name}={value}"]
        with open(log_path, "wb") as log:  # one log per attempt
            self._chown(log)
            self._proc = subprocess.Popen(
                argv,
                cwd=self._dir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._as_user(),
            )
        # Ready when our postmaster says so in its pid file, as pg_ctl start -w waits:
        # a connection test could reach another server squatting the port.
        while not self._ready():
            if self._proc.poll() is not None:
                self._fail(f"postgres exited with code {self._proc.returncode}", log_path)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail(
                    f"postgres did not accept connections within {self._start_timeout:g} s",
                    log_path,
                )
            # Between two checks, wait for postgres to exit (returns at once if it does).
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=min(_POLL_INTERVAL, remaining))

    def _ready(self) -> bool:
        """True once ``postmaster.pid`` names our postmaster with the status "ready"
        (line 8: it accepts connections)."""
        assert self.data_dir is not None and self._proc is not None
        try:
            lines = (self.data_dir / "postmaster.pid").read_text(errors="replace").splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0] == str(self._proc.pid) and lines[7].strip() == "ready"

    def _chown(self, log: IO[bytes]) -> None:
        if os.geteuid() == 0:
            os.fchown(log.fileno(), self._account.pw_uid, self._account.pw_gid)

    def _fail(self, why: str, log_path: Path) -> None:
        self._kill()
        text = log_path.read_text(encoding="utf-8", errors="replace")
        tail = _tail(text)
        message = f"PostgreSQL did not start on {self.host}:{self._port}: {why}"
        if "could not bind" in text or "Address already in use" in text:
            raise PostgresPortInUseError(
                f"{message} (port {self._port} is taken)", port=self._port, log_tail=tail
            )
        raise PostgresStartError(message, port=self._port, log_tail=tail)

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def _remove_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def database_dsn(dsn: str, dbname: str) -> str:
    """``dsn`` with its database replaced by ``dbname``: a URL stays a URL
    (``postgresql://u@h:5432/other``); a ``key=value`` string is rewritten by
    psycopg (imported only then)."""
    parts = urlsplit(dsn)
    if parts.scheme in ("postgresql", "postgres"):
        return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, dbname=dbname)


@contextlib.contextmanager
def postgres_server(env: Mapping[str, str] | None = None, **cluster: Any) -> Iterator[str]:
    """The DSN of a PostgreSQL server for the block: ``CPCSYNC_POSTGRES_DSN`` from
    ``env`` (default ``os.environ``) when set and not empty, starting nothing;
    otherwise a :class:`PostgresCluster` (``cluster``: its keyword arguments),
    stopped and deleted afterwards."""
    external = (os.environ if env is None else env).get(DSN_ENV, "").strip()
    if external:
        yield external
        return
    with PostgresCluster(**cluster) as pg:
        yield pg.dsn
