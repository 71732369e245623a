"""A full disk reaches Python as cs.StorageError with SQLite's error as its cause.

For real, in a child process (tests_py/_storage_child.py, mode ``disk_full``): with
RLIMIT_FSIZE lowered to 0 and SIGXFSZ ignored, every write to the queue file fails
(EFBIG, which SQLite reports as a disk I/O error, as it reports ENOSPC as
SQLITE_FULL). At each durability level, enqueue and enqueue_many raise and store
nothing; once the disk has room the same handle enqueues again. The C++ sweeps
(tests_cpp/storage_fault_sweep_test.cc) fail every I/O call in turn, SQLITE_FULL
included; this shows the error's way through the bindings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _storage_child import run_child

SQLITE_IOERR = 10
SQLITE_FULL = 13


@pytest.fixture(scope="module")
def observations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    path: Path = tmp_path_factory.mktemp("disk-full") / "queue.db"
    return run_child("disk_full", path)


@pytest.mark.parametrize("durability", ["full", "normal", "off"])
@pytest.mark.parametrize("call", ["enqueue", "enqueue_many"])
def test_full_disk_raises_storage_error_with_sqlite_cause(
    observations: dict[str, dict[str, object]], durability: str, call: str
) -> None:
    seen = observations[durability][call]
    assert isinstance(seen, dict), seen
    assert seen.get("raised") == "StorageError", seen
    assert seen["is_storage_error"] and seen["is_sync_error"], seen
    assert seen["cause"] == "SQLiteError", seen
    code = seen["cause_sqlite_code"]
    assert isinstance(code, int) and code & 0xFF in (SQLITE_IOERR, SQLITE_FULL), seen
    assert seen["sqlite_code"] == code, seen


@pytest.mark.parametrize("durability", ["full", "normal", "off"])
def test_nothing_stored_while_full_and_the_handle_works_after(
    observations: dict[str, dict[str, object]], durability: str
) -> None:
    seen = observations[durability]
    assert seen["len_during"] == 1  # only the enqueue made before the disk filled
    after = seen["enqueue_after"]
    assert isinstance(after, dict) and "returned" in after, after
    assert seen["ids"] == [seen["kept"], after["returned"]]
