"""The PostgreSQL test infrastructure: cpcsync.testing.postgres.

The tests of the :class:`PostgresCluster` class start two small clusters of their own
(one that comes up, one that cannot).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import cpcsync.testing.postgres as pgmod
from cpcsync.testing.postgres import (
    PostgresCluster,
    PostgresPortInUseError,
    PostgresStartError,
    database_dsn,
)

pytestmark = pytest.mark.postgres

# ---------------------------------------------------------------- PostgresCluster


@pytest.fixture
def base_dir() -> Iterator[Path]:
    """A directory the cluster's unprivileged user can reach (pytest's tmp_path is
    private to this user), checked empty afterwards."""
    where = Path(tempfile.mkdtemp(prefix="cpcsync-pg-test-"))
    where.chmod(0o711)
    yield where
    left = sorted(p.name for p in where.iterdir())
    shutil.rmtree(where)
    assert left == [], "the cluster left files behind"


def test_cluster_starts_serves_and_leaves_nothing(
    base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The free port it picks first is taken by the time postgres binds it (as can
    # happen with other processes about): it tries another.
    squatter = socket.create_server(("127.0.0.1", 0))
    taken = squatter.getsockname()[1]
    picks = [taken]
    pick = pgmod._free_port
    monkeypatch.setattr(pgmod, "_free_port", lambda host: picks.pop() if picks else pick(host))
    with squatter, PostgresCluster(base_dir=base_dir) as pg:
        assert pg.running and pg.port not in (0, taken) and not picks
        directory, pid = pg.directory, pg.pid
        assert directory is not None and directory.parent == base_dir
        assert (directory / "data" / "PG_VERSION").exists()
        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
        assert "running" in repr(pg)
    assert not directory.exists() and pg.directory is None
    assert not pg.running and pg.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid or 0, 0)  # stopped and reaped
    pg.stop()  # again: nothing to do


def test_port_taken_is_a_clear_error_not_a_hang(base_dir: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        port = squatter.getsockname()[1]
        with pytest.raises(PostgresPortInUseError) as info:
            PostgresCluster(port, base_dir=base_dir, start_timeout=60).start()
    error = info.value
    assert isinstance(error, PostgresStartError) and error.port == port
    message = str(error)
    assert f"127.0.0.1:{port}" in message and "exited" in message
    assert "Address already in use" in error.log_tail and error.log_tail in message
    # base_dir's fixture checks the directory was removed


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches to another user")
def test_unreachable_directory_is_a_clear_initdb_error(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # nobody cannot reach into it
    with pytest.raises(PostgresStartError) as info:
        PostgresCluster(base_dir=private).start()
    assert "initdb failed" in str(info.value) and "Permission denied" in info.value.log_tail
    assert list(private.iterdir()) == []


def test_database_dsn_keeps_the_form() -> None:
    assert (
        database_dsn("postgresql://app@127.0.0.1:5432/postgres?sslmode=disable", "x_1")
        == "postgresql://app@127.0.0.1:5432/x_1?sslmode=disable"
    )
    assert database_dsn("postgres://h/db", "y") == "postgres://h/y"
    keyword = database_dsn("host=127.0.0.1 port=5432 dbname=postgres user=app", "z")
    assert psycopg.conninfo.conninfo_to_dict(keyword) == {
        "host": "127.0.0.1",
        "port": "5432",
        "dbname": "z",
        "user": "app",
    }
