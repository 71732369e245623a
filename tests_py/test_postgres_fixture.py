"""The PostgreSQL test infrastructure: cpcsync.testing.postgres and the plugin's
``cpcsync_postgres_dsn`` / ``cpcsync_postgres_db`` fixtures.

The fixtures share one throwaway cluster for the session; the tests of the
:class:`PostgresCluster` class itself start two small ones of their own (one that comes
up, one that cannot). The pytester tests run in-process with ``CPCSYNC_POSTGRES_DSN``
pointing at the session's cluster (or with the binaries hidden), so they start nothing.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import cpcsync.testing.postgres as pgmod
from cpcsync.testing.postgres import (
    DSN_ENV,
    PostgresCluster,
    PostgresPortInUseError,
    PostgresStartError,
    database_dsn,
)

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.postgres

STRICT_INI = """
[pytest]
addopts = --strict-markers --strict-config --import-mode=importlib -p no:cacheprovider -rs
filterwarnings = error
xfail_strict = true
"""

SEEN: dict[str, str] = {}


def _databases(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT datname FROM pg_database").fetchall()
    return {name for (name,) in rows}


# ---------------------------------------------------------------- the fixtures


def test_fresh_database_takes_a_table(cpcsync_postgres_db: str) -> None:
    assert cpcsync_postgres_db.startswith("postgresql://")
    with psycopg.connect(cpcsync_postgres_db) as conn:
        (name,) = conn.execute("SELECT current_database()").fetchone() or ("",)
        assert name.startswith("cpcsync_test_fresh_database")
        # empty: no table of anyone else's
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO orders VALUES (1, 'a'), (2, %s)", ("b'; DROP TABLE x; --",))
        rows = conn.execute("SELECT id, note FROM orders ORDER BY id").fetchall()
    assert rows == [(1, "a"), (2, "b'; DROP TABLE x; --")]


@pytest.mark.parametrize("n", [1, 2])
def test_each_test_gets_its_own_database(
    n: int, postgres_db: str, cpcsync_postgres_dsn: str
) -> None:
    # The short name works too. The second run sees the first one's database dropped.
    name = postgres_db.rsplit("/", 1)[1]
    assert name in _databases(cpcsync_postgres_dsn)
    if n == 1:
        SEEN["first"] = name
    else:
        assert name != SEEN["first"]
        assert SEEN["first"] not in _databases(cpcsync_postgres_dsn)


def test_cluster_runs_as_an_unprivileged_user(cpcsync_postgres_dsn: str) -> None:
    if os.environ.get(DSN_ENV):
        pytest.skip(f"{DSN_ENV} names the server; no cluster of ours to check")
    with psycopg.connect(cpcsync_postgres_dsn) as conn:
        user, backend = conn.execute("SELECT current_user, pg_backend_pid()").fetchone() or ("", 0)
        port = conn.info.port
    status = Path(f"/proc/{backend}/status").read_text()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M)[1])  # type: ignore[index]
    postmaster = int(re.search(r"^PPid:\s+(\d+)", status, re.M)[1])  # type: ignore[index]
    assert os.stat(f"/proc/{postmaster}").st_uid == uid
    assert pwd.getpwuid(uid).pw_name == user  # the superuser role is named after it
    if os.geteuid() == 0:
        assert uid != 0 and user == "nobody"
    else:
        assert uid == os.geteuid()
    assert cpcsync_postgres_dsn == f"postgresql://{user}@127.0.0.1:{port}/postgres"


ENV_TESTS = """
import os

import psycopg


def test_the_servers_dsn(cpcsync_postgres_dsn, postgres_dsn):
    assert cpcsync_postgres_dsn == postgres_dsn == os.environ["CPCSYNC_POSTGRES_DSN"].strip()


def test_a_database_on_it(cpcsync_postgres_db):
    with psycopg.connect(cpcsync_postgres_db) as conn:
        conn.execute("CREATE TABLE t (x int)")
        (port,) = conn.execute("SELECT current_setting('port')::int").fetchone()
    assert port == int(os.environ["EXPECTED_PORT"])
"""


def test_env_var_names_the_server_and_nothing_starts(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, cpcsync_postgres_dsn: str
) -> None:
    def refuse(self: PostgresCluster) -> PostgresCluster:
        raise AssertionError("a cluster was started although CPCSYNC_POSTGRES_DSN is set")

    monkeypatch.setattr(PostgresCluster, "start", refuse)
    monkeypatch.setenv(DSN_ENV, f" {cpcsync_postgres_dsn} ")
    with psycopg.connect(cpcsync_postgres_dsn) as conn:
        monkeypatch.setenv("EXPECTED_PORT", str(conn.info.port))
    before = _databases(cpcsync_postgres_dsn)
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(test_env=ENV_TESTS)
    pytester.runpytest().assert_outcomes(passed=2)
    assert _databases(cpcsync_postgres_dsn) == before  # its database was dropped


def test_skips_with_a_reason_without_postgresql_or_psycopg(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, cpcsync_postgres_dsn: str
) -> None:
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(test_skip="def test_needs_it(cpcsync_postgres_db):\n    pass\n")
    # No binaries and no variable: a clear skip, not an error.
    monkeypatch.delenv(DSN_ENV, raising=False)
    monkeypatch.setattr(pgmod, "find_bindir", lambda: None)
    result = pytester.runpytest()
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*PostgreSQL is not installed*CPCSYNC_POSTGRES_DSN is not set*"])
    # A server but no psycopg: cpcsync_postgres_db skips, naming the extra.
    monkeypatch.setenv(DSN_ENV, cpcsync_postgres_dsn)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    result = pytester.runpytest()
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*psycopg is not installed*cpcsync[[]postgres[]]*"])


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
