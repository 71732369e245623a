"""The short names of cpcsync's pytest fixtures: ``network`` for ``cpcsync_network``
and so on (see :mod:`cpcsync.testing.plugin`).

The plugin registers this module unless the pytest configuration says
``cpcsync_short_names = false``. Each fixture here returns the ``cpcsync_*`` fixture
of the same name; while these names are on, the ``cpcsync_*`` fixtures reach each
other through them, so a conftest.py that overrides ``faulty_transport`` or
``sync_engine_options`` changes what ``sync_engine`` (and ``cpcsync_sync_engine``)
get, as it always has.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def virtual_clock_start(cpcsync_virtual_clock_start: Any) -> Any:
    """Scope: function. Type: float.
    Default: ``cpcsync_virtual_clock_start``.

    The short name of ``cpcsync_virtual_clock_start``: the same object."""
    return cpcsync_virtual_clock_start


@pytest.fixture
def virtual_clock(cpcsync_virtual_clock: Any) -> Any:
    """Scope: function. Type: cpcsync.VirtualClock.
    Default: ``cpcsync_virtual_clock``.

    The short name of ``cpcsync_virtual_clock``: the same object."""
    return cpcsync_virtual_clock


@pytest.fixture
def sync_queue_options(cpcsync_sync_queue_options: Any) -> Any:
    """Scope: function. Type: dict of SyncQueue keyword arguments.
    Default: ``cpcsync_sync_queue_options``.

    The short name of ``cpcsync_sync_queue_options``: the same object."""
    return cpcsync_sync_queue_options


@pytest.fixture
def sync_queue(cpcsync_sync_queue: Any) -> Any:
    """Scope: function. Type: cpcsync.SyncQueue.
    Default: ``cpcsync_sync_queue``.

    The short name of ``cpcsync_sync_queue``: the same object."""
    return cpcsync_sync_queue


@pytest.fixture
def network(cpcsync_network: Any) -> Any:
    """Scope: function. Type: cpcsync.NetworkMonitor.
    Default: ``cpcsync_network``.

    The short name of ``cpcsync_network``: the same object."""
    return cpcsync_network


@pytest.fixture
def faulty_transport(cpcsync_faulty_transport: Any) -> Any:
    """Scope: function. Type: cpcsync.testing.FaultyTransport.
    Default: ``cpcsync_faulty_transport``.

    The short name of ``cpcsync_faulty_transport``: the same object."""
    return cpcsync_faulty_transport


@pytest.fixture
def sync_engine_options(cpcsync_sync_engine_options: Any) -> Any:
    """Scope: function. Type: dict of SyncEngine keyword arguments.
    Default: ``cpcsync_sync_engine_options``.

    The short name of ``cpcsync_sync_engine_options``: the same object."""
    return cpcsync_sync_engine_options


@pytest.fixture
def sync_engine(cpcsync_sync_engine: Any) -> Any:
    """Scope: function. Type: cpcsync.SyncEngine.
    Default: ``cpcsync_sync_engine``.

    The short name of ``cpcsync_sync_engine``: the same object."""
    return cpcsync_sync_engine


@pytest.fixture
def simulation(cpcsync_simulation: Any) -> Any:
    """Scope: function. Type: cpcsync.testing.Simulation.
    Default: ``cpcsync_simulation``.

    The short name of ``cpcsync_simulation``: the same object."""
    return cpcsync_simulation


@pytest.fixture(scope="session")
def sync_server_session(cpcsync_sync_server_session: Any) -> Any:
    """Scope: session. Type: cpcsync.testing.SyncServer.
    Default: ``cpcsync_sync_server_session``.

    The short name of ``cpcsync_sync_server_session``: the same object."""
    return cpcsync_sync_server_session


@pytest.fixture
def sync_server(cpcsync_sync_server: Any) -> Any:
    """Scope: function. Type: cpcsync.testing.SyncServer.
    Default: ``cpcsync_sync_server``.

    The short name of ``cpcsync_sync_server``: the same object."""
    return cpcsync_sync_server


@pytest.fixture
def fault_proxy(cpcsync_fault_proxy: Any) -> Any:
    """Scope: function. Type: cpcsync.testing.FaultProxy.
    Default: ``cpcsync_fault_proxy``.

    The short name of ``cpcsync_fault_proxy``: the same object."""
    return cpcsync_fault_proxy


@pytest.fixture(scope="session")
def postgres_dsn(cpcsync_postgres_dsn: Any) -> Any:
    """Scope: session. Type: str (a PostgreSQL connection URL).
    Default: ``cpcsync_postgres_dsn``.

    The short name of ``cpcsync_postgres_dsn``: the same object."""
    return cpcsync_postgres_dsn


@pytest.fixture
def postgres_db(cpcsync_postgres_db: Any) -> Any:
    """Scope: function. Type: str (a PostgreSQL connection URL).
    Default: ``cpcsync_postgres_db``.

    The short name of ``cpcsync_postgres_db``: the same object."""
    return cpcsync_postgres_db
