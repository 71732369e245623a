"""Opening queue files for the CLI: path checks, error mapping, and who the consumer is.

Inspection commands open the file with ``SyncQueue.open(path, read_only=True)``, which
never creates or modifies a file and works while the queue's service consumes it.
Commands that change the queue (requeue, purge) open it read-write, after checking
that the file exists and is not empty, so that the CLI never creates a queue.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cpcsync as cs

__all__ = [
    "EXIT_OK",
    "EXIT_RUNTIME",
    "EXIT_USAGE",
    "CliError",
    "ConsumerInfo",
    "check_queue_path",
    "consumer_info",
    "open_for_inspection",
    "open_for_writing",
]

EXIT_OK = 0
"""Exit status: the command did what it was asked."""
EXIT_RUNTIME = 1
"""Exit status: the command failed at run time (locked, corrupt, I/O error, ...)."""
EXIT_USAGE = 2
"""Exit status: bad arguments, or a path that is not a queue file."""


class CliError(Exception):
    """An error the CLI reports as one line on stderr, exiting with ``code``."""

    def __init__(self, message: str, code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class ConsumerInfo:
    """Whether a process holds a queue file's consumer role, and which.

    ``active`` is None when it cannot be told (no ``/proc``: not Linux). ``pid`` is
    None when no consumer is active or its process is not visible to this user.
    ``command`` is the consumer's command line when it could be read.
    """

    active: bool | None
    pid: int | None = None
    command: str | None = None

    def describe(self) -> str:
        """A short human description, e.g. ``"pid 1234 (python service.py)"``."""
        if self.active is None:
            return "unknown"
        if not self.active:
            return "none"
        if self.pid is None:
            return "a process not visible to this user"
        return f"pid {self.pid}" + (f" ({self.command})" if self.command else "")


def _fs_path(path: str) -> str:
    # argparse hands undecodable bytes over as surrogate escapes; the C++ core needs
    # a path it can encode, so refuse those here with a clear message.
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeError:
        raise CliError(f"{path!r}: the path is not valid UTF-8", 2) from None
    return path


def check_queue_path(path: str) -> None:
    """Refuse a path that cannot be an existing queue file: missing, a directory,
    not a regular file, or empty. Raises :class:`CliError` (exit status 2)."""
    _fs_path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CliError(f"{path}: no such file", 2) from None
    except NotADirectoryError:
        raise CliError(f"{path}: no such file (a parent is not a directory)", 2) from None
    except PermissionError as exc:
        raise CliError(f"{path}: permission denied ({exc.strerror})", 1) from None
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}", 1) from None
    if stat.S_ISDIR(st.st_mode):
        raise CliError(f"{path}: is a directory, not a queue file", 2)
    if not stat.S_ISREG(st.st_mode):
        raise CliError(f"{path}: not a regular file", 2)
    if st.st_size == 0:
        raise CliError(f"{path}: is empty, not a cpcsync queue", 2)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


_SQLITE_READONLY = 8
_SQLITE_CANTOPEN = 14
# The core's storage errors read "execute '<the first 60 characters of the SQL>': <what
# SQLite said>" (or prepare '...'): the SQL means nothing to a CLI user.
_SQL_CONTEXT = re.compile(r"^(?:execute|prepare) '.*?': ", re.DOTALL)


def _sqlite_message(exc: BaseException) -> str:
    """What SQLite said, without the statement the core was running."""
    return _SQL_CONTEXT.sub("", _one_line(str(exc)), count=1)


def _unwritable_folder(path: str, exc: BaseException) -> CliError | None:
    """The error for a queue in a folder this user cannot write, when that is why
    SQLite refused (reading a queue needs its -wal and -shm files), else None."""
    code = getattr(exc, "sqlite_code", None)
    if not isinstance(code, int) or code & 0xFF not in (_SQLITE_READONLY, _SQLITE_CANTOPEN):
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if os.access(folder, os.W_OK):
        return None
    name = os.path.basename(path)
    return CliError(
        f"{path}: cannot read the queue: its folder is not writable by this user, and "
        f"reading needs to create {name}-wal and {name}-shm there (copy the file to a "
        f"writable folder, or run as a user who can write to {folder})",
        1,
    )


def map_error(path: str, exc: BaseException) -> CliError:
    """The :class:`CliError` (message and exit status) for an exception from the queue."""
    if isinstance(exc, CliError):
        return exc
    msg = _one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, cs.QueueLockedError):
        return locked_error(path)
    if isinstance(exc, cs.NotAQueueError):
        prefix = f"'{path}' is not a cpcsync queue"
        why = msg[len(prefix) :].strip(" :") if msg.startswith(prefix) else msg
        return CliError(f"{path}: not a cpcsync queue" + (f" ({why})" if why else ""), 2)
    if isinstance(exc, cs.CorruptDatabaseError):
        return CliError(f"{path}: the queue file is damaged: {_sqlite_message(exc)}", 1)
    if isinstance(exc, cs.StorageError):
        return _unwritable_folder(path, exc) or CliError(
            f"{path}: storage error: {_sqlite_message(exc)}", 1
        )
    if isinstance(exc, cs.SyncError):
        return CliError(f"{path}: {msg}", 1)
    if isinstance(exc, OSError):
        return CliError(f"{path}: {_one_line(exc.strerror or msg)}", 1)
    return CliError(f"{path}: {msg}", 1)


def locked_error(path: str) -> CliError:
    """The error for a change refused because another process is the consumer."""
    who = consumer_info(path)
    by = f" ({who.describe()})" if who.active else ""
    return CliError(
        f"{path}: queue is in use by a consumer{by}; requeue and purge need the consumer "
        "role: stop that process first, or call requeue_dead()/purge_dead() from it",
        1,
    )


@contextmanager
def open_for_inspection(path: str) -> Iterator[cs.SyncQueue]:
    """Open an existing queue file read-only (never creates or changes it)."""
    check_queue_path(path)
    try:
        q = cs.SyncQueue.open(path, read_only=True)
    except Exception as exc:
        raise map_error(path, exc) from exc
    try:
        yield q
    except cs.SyncError as exc:
        raise map_error(path, exc) from exc
    finally:
        q.close()


@contextmanager
def open_for_writing(path: str) -> Iterator[cs.SyncQueue]:
    """Open an existing (non-empty) queue file read-write, never creating one.

    Like any read-write open, it migrates an older schema, and when no consumer is
    alive it makes a dead consumer's leases pending again.
    """
    check_queue_path(path)
    try:
        q = cs.SyncQueue.open(path)
    except Exception as exc:
        raise map_error(path, exc) from exc
    try:
        yield q
    except cs.SyncError as exc:
        raise map_error(path, exc) from exc
    finally:
        q.close()


# --------------------------------------------------------------------------
# Who is the consumer? The core's consumer lock is a Unix datagram socket bound in
# Linux's abstract namespace under "cpcsync-<st_dev>-<st_ino>" of the queue file
# (cpp/src/sqlite/consumer_lock.cc). /proc/net/unix lists bound abstract sockets with
# their inode; /proc/<pid>/fd links name the process holding that inode.


def _socket_inodes(name: str) -> set[str] | None:
    try:
        lines = Path("/proc/net/unix").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    inodes: set[str] = set()
    for line in lines[1:]:
        parts = line.split()
        if len(parts) >= 8 and parts[7] == "@" + name:
            inodes.add(parts[6])
    return inodes


def _pid_holding(inodes: set[str]) -> int | None:
    targets = {f"socket:[{inode}]" for inode in inodes}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") in targets:
                    return int(entry)
            except OSError:
                continue
    return None


def _command_line(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace").strip()
    if len(text) > 80:
        text = text[:77] + "..."
    return text or None


def consumer_info(path: str) -> ConsumerInfo:
    """Best effort: is the queue file's consumer role held, and by which process?

    Linux only (like the lock itself); elsewhere ``active`` is None. Reads only
    ``/proc``; never touches the lock.
    """
    try:
        st = os.stat(path)
    except OSError:
        return ConsumerInfo(active=None)
    inodes = _socket_inodes(f"cpcsync-{st.st_dev}-{st.st_ino}")
    if inodes is None:
        return ConsumerInfo(active=None)
    if not inodes:
        return ConsumerInfo(active=False)
    pid = _pid_holding(inodes)
    return ConsumerInfo(active=True, pid=pid, command=_command_line(pid) if pid else None)
