"""cpcsync's pytest plugin: fixtures for testing code that syncs over a bad network.

Registered through the ``pytest11`` entry point, so it is active wherever cpcsync is
installed; ``pytest --fixtures`` lists the fixtures. They are layered the way
pytest-httpserver layers its own: small option fixtures you override to change a
default, one session-scoped server, and function-scoped fixtures built on them, each
fresh (or reset) for every test. Override any of them in a conftest.py by defining a
fixture of the same name.

Every fixture is named ``cpcsync_*``, so it cannot collide with a suite's own
fixtures. Deterministic level (all on one :class:`~cpcsync.VirtualClock`):
``cpcsync_virtual_clock`` -> ``cpcsync_sync_queue``, ``cpcsync_network``,
``cpcsync_faulty_transport`` -> ``cpcsync_sync_engine`` -> ``cpcsync_simulation``.
Real level: ``cpcsync_sync_server`` (a reset session server) -> ``cpcsync_fault_proxy``.
PostgreSQL: ``cpcsync_postgres_dsn`` (a throwaway cluster for the session, or the server
named by ``CPCSYNC_POSTGRES_DSN``) -> ``cpcsync_postgres_db`` (a fresh database per test).

Short names. Each fixture is also available without the prefix (``network``,
``sync_engine``...: :mod:`cpcsync.testing.short_names`), and while they are on, the
fixtures reach each other through the short names, so overriding either name changes
what the fixtures built on it get. A suite that has its own ``network`` (or any other
of those names) for something else turns them off in its pytest configuration::

    [pytest]
    cpcsync_short_names = false

and then only the ``cpcsync_*`` names exist and the layering uses only them.
"""

from __future__ import annotations

import os
import re
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cpcsync as cs
from cpcsync.testing import postgres, short_names
from cpcsync.testing.faulty import FaultyTransport
from cpcsync.testing.proxy import FaultProxy
from cpcsync.testing.server import SyncServer
from cpcsync.testing.simulation import Simulation

#: The ini option that turns the short fixture names on (the default) or off.
SHORT_NAMES_INI = "cpcsync_short_names"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Registers the ``cpcsync_short_names`` ini option."""
    parser.addini(
        SHORT_NAMES_INI,
        type="bool",
        default=True,
        help="cpcsync: also offer the plugin's fixtures under their short names "
        "(network, sync_engine, ...); false leaves only the cpcsync_* names",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Registers the short fixture names unless ``cpcsync_short_names = false``."""
    if config.getini(SHORT_NAMES_INI):
        config.pluginmanager.register(short_names, "cpcsync.short_names")


def _fixture(request: pytest.FixtureRequest, name: str) -> Any:
    """The value of the plugin fixture ``cpcsync_<name>``, reached through its short
    name ``<name>`` while short names are on (so an override of either counts)."""
    if request.config.getini(SHORT_NAMES_INI):
        return request.getfixturevalue(name)
    return request.getfixturevalue(f"cpcsync_{name}")


#: Real seconds the ``cpcsync_sync_engine`` teardown waits for workers to leave the transport.
ENGINE_STOP_TIMEOUT = 5.0


@pytest.fixture
def cpcsync_virtual_clock_start() -> float:
    """Scope: function. Type: float. Default: 0.0.

    Where ``cpcsync_virtual_clock`` starts. Override to start elsewhere (e.g. a Unix time)."""
    return 0.0


@pytest.fixture
def cpcsync_virtual_clock(request: pytest.FixtureRequest) -> cs.VirtualClock:
    """Scope: function. Type: cpcsync.VirtualClock. Default: starts at
    ``cpcsync_virtual_clock_start`` (0.0), auto_advance off.

    The one clock every other deterministic fixture uses; ``advance()`` it, or let
    ``cpcsync_simulation`` drive it."""
    return cs.VirtualClock(start=_fixture(request, "virtual_clock_start"))


@pytest.fixture
def cpcsync_sync_queue_options() -> dict[str, Any]:
    """Scope: function. Type: dict of SyncQueue keyword arguments.
    Default: ``{"durability": "normal"}`` (survives a process crash; no fsync per op).

    Override to change how ``cpcsync_sync_queue`` is opened (capacity, ttl, durability...)."""
    return {"durability": "normal"}


@pytest.fixture
def cpcsync_sync_queue(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[cs.SyncQueue]:
    """Scope: function. Type: cpcsync.SyncQueue.
    Default: a SQLite queue file ``queue.db`` in ``tmp_path`` on ``cpcsync_virtual_clock``,
    opened with ``cpcsync_sync_queue_options``; closed after the test."""
    clock = _fixture(request, "virtual_clock")
    options = _fixture(request, "sync_queue_options")
    q = cs.SyncQueue.open(tmp_path / "queue.db", clock=clock, **options)
    yield q
    q.close()


@pytest.fixture
def cpcsync_network(request: pytest.FixtureRequest) -> Iterator[cs.NetworkMonitor]:
    """Scope: function. Type: cpcsync.NetworkMonitor.
    Default: connected, no probe, on ``cpcsync_virtual_clock``: it changes only by
    ``set_connected`` (or a Scenario); stopped after the test."""
    m = cs.NetworkMonitor(connected=True, clock=_fixture(request, "virtual_clock"))
    yield m
    m.stop()


@pytest.fixture
def cpcsync_faulty_transport(request: pytest.FixtureRequest) -> Iterator[FaultyTransport]:
    """Scope: function. Type: cpcsync.testing.FaultyTransport.
    Default: a sink (every call succeeds until you script faults), seed 0, no latency,
    on ``cpcsync_virtual_clock``. Override to wrap a real transport, e.g.
    ``FaultyTransport(cs.HttpTransport(sync_server.url), clock=virtual_clock)``."""
    ft = FaultyTransport(seed=0, clock=_fixture(request, "virtual_clock"))
    yield ft
    ft.close()


@pytest.fixture
def cpcsync_sync_engine_options() -> dict[str, Any]:
    """Scope: function. Type: dict of SyncEngine keyword arguments.
    Default: ``{"backoff": ExponentialBackoff(base=1.0, factor=2.0, max_delay=60.0,
    jitter="none"), "max_attempts": 5}``: retries after 1, 2, 4, 8 s, then dead-letter.

    Override to change how ``cpcsync_sync_engine`` is built (resolver, concurrency...)."""
    return {
        "backoff": cs.ExponentialBackoff(base=1.0, factor=2.0, max_delay=60.0, jitter="none"),
        "max_attempts": 5,
    }


@pytest.fixture
def cpcsync_sync_engine(request: pytest.FixtureRequest) -> Iterator[cs.SyncEngine]:
    """Scope: function. Type: cpcsync.SyncEngine.
    Default: delivers ``cpcsync_sync_queue`` through ``cpcsync_faulty_transport``
    while ``cpcsync_network`` says connected, on ``cpcsync_virtual_clock``, with
    ``cpcsync_sync_engine_options``. Not started: drive it with
    ``cpcsync_simulation`` (or ``process_once``/``drain``, or ``start()`` yourself);
    stopped after the test."""
    faulty_transport = _fixture(request, "faulty_transport")
    e = cs.SyncEngine(
        _fixture(request, "sync_queue"),
        faulty_transport,
        monitor=_fixture(request, "network"),
        clock=_fixture(request, "virtual_clock"),
        **_fixture(request, "sync_engine_options"),
    )
    yield e
    faulty_transport.close()  # frees a worker waiting on transport latency
    # Bounded in real time, even on the virtual clock: a worker stuck in user code
    # (a transport the failed test never released) must not hang the session.
    if not e.stop(timeout=ENGINE_STOP_TIMEOUT):
        warnings.warn(
            f"cpcsync: sync_engine teardown left a worker inside its transport after "
            f"{ENGINE_STOP_TIMEOUT:g} s (it finishes on its own)",
            RuntimeWarning,
            stacklevel=1,
        )


@pytest.fixture
def cpcsync_simulation(request: pytest.FixtureRequest) -> Simulation:
    """Scope: function. Type: cpcsync.testing.Simulation.
    Default: drives ``cpcsync_sync_engine`` with ``cpcsync_network`` and
    ``cpcsync_faulty_transport`` on ``cpcsync_virtual_clock``: ``run_until_idle()``,
    ``run_for(seconds)``, ``apply(Scenario)``."""
    return Simulation(
        _fixture(request, "sync_engine"),
        monitor=_fixture(request, "network"),
        transport=_fixture(request, "faulty_transport"),
    )


@pytest.fixture(scope="session")
def cpcsync_sync_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncServer]:
    """Scope: session. Type: cpcsync.testing.SyncServer.
    Default: one server on 127.0.0.1 (ephemeral port) for the whole session, with its
    SQLite file in a session temporary directory. Tests use ``cpcsync_sync_server``, which resets
    it; use this one directly only to keep state across tests."""
    path = tmp_path_factory.mktemp("cpcsync-server") / "server.db"
    with SyncServer(path) as server:
        yield server


@pytest.fixture
def cpcsync_sync_server(request: pytest.FixtureRequest) -> SyncServer:
    """Scope: function. Type: cpcsync.testing.SyncServer.
    Default: the session server, reset before the test (nothing applied or received,
    no pending fail_next, no delay). Same port all session."""
    server: SyncServer = _fixture(request, "sync_server_session")
    server.reset()
    return server


@pytest.fixture
def cpcsync_fault_proxy(request: pytest.FixtureRequest) -> Iterator[FaultProxy]:
    """Scope: function. Type: cpcsync.testing.FaultProxy.
    Default: a started proxy on 127.0.0.1 (ephemeral port) in front of ``cpcsync_sync_server``,
    no toxics; stopped after the test. Point an HttpTransport at
    ``f"http://{host}:{port}/ops"`` from ``fault_proxy.address``."""
    sync_server: SyncServer = _fixture(request, "sync_server")
    proxy = FaultProxy(upstream=("127.0.0.1", sync_server.port)).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def cpcsync_postgres_dsn() -> Iterator[str]:
    """Scope: session. Type: str (a PostgreSQL connection URL).
    Default: ``postgresql://<user>@127.0.0.1:<port>/postgres`` of a throwaway cluster
    (:class:`cpcsync.testing.postgres.PostgresCluster`: ``initdb`` in a temporary
    directory, a free port, an unprivileged user when run as root), stopped and
    deleted after the session. If ``CPCSYNC_POSTGRES_DSN`` is set, that server instead,
    and nothing is started. Skips the test when neither is available.

    Tests that write use ``cpcsync_postgres_db``; this one is the maintenance
    connection (``CREATE DATABASE``...)."""
    external = os.environ.get(postgres.DSN_ENV, "").strip()
    if external:
        yield external
        return
    bindir = postgres.find_bindir()
    if bindir is None:
        pytest.skip(
            f"PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin, on PATH "
            f"or from pg_config; Debian: apt-get install postgresql) and "
            f"{postgres.DSN_ENV} is not set"
        )
    with postgres.PostgresCluster(bindir=bindir) as cluster:
        yield cluster.dsn


@pytest.fixture
def cpcsync_postgres_db(request: pytest.FixtureRequest) -> Iterator[str]:
    """Scope: function. Type: str (a PostgreSQL connection URL).
    Default: a new, empty database on ``cpcsync_postgres_dsn``'s server, named
    ``cpcsync_<test>_<random>``; dropped after the test (``WITH (FORCE)``: connections
    left open are closed). Needs psycopg (``cpcsync[postgres]``); skips without it."""
    dsn: str = _fixture(request, "postgres_dsn")
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'cpcsync[postgres]')")
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:30]
    name = f"cpcsync_{slug}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield postgres.database_dsn(dsn, name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
