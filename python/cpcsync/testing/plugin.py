"""cpcsync's pytest plugin: fixtures for testing code that syncs over a bad network.

Registered through the ``pytest11`` entry point, so it is active wherever cpcsync is
installed; ``pytest --fixtures`` lists the fixtures. They are layered the way
pytest-httpserver layers its own: small option fixtures you override to change a
default, one session-scoped server, and function-scoped fixtures built on them, each
fresh (or reset) for every test. Override any of them in a conftest.py by defining a
fixture of the same name.

Deterministic level (all on one :class:`~cpcsync.VirtualClock`):
``virtual_clock`` -> ``sync_queue``, ``network``, ``faulty_transport`` ->
``sync_engine`` -> ``simulation``.
Real level: ``sync_server`` (a reset session server) -> ``fault_proxy``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cpcsync as cs
from cpcsync.testing.faulty import FaultyTransport
from cpcsync.testing.proxy import FaultProxy
from cpcsync.testing.server import SyncServer
from cpcsync.testing.simulation import Simulation

#: Real seconds the ``sync_engine`` teardown waits for workers to leave the transport.
ENGINE_STOP_TIMEOUT = 5.0


@pytest.fixture
def virtual_clock_start() -> float:
    """Scope: function. Type: float. Default: 0.0.

    Where ``virtual_clock`` starts. Override to start elsewhere (e.g. a Unix time)."""
    return 0.0


@pytest.fixture
def virtual_clock(virtual_clock_start: float) -> cs.VirtualClock:
    """Scope: function. Type: cpcsync.VirtualClock. Default: starts at
    ``virtual_clock_start`` (0.0), auto_advance off.

    The one clock every other deterministic fixture uses; ``advance()`` it, or let
    ``simulation`` drive it."""
    return cs.VirtualClock(start=virtual_clock_start)


@pytest.fixture
def sync_queue_options() -> dict[str, Any]:
    """Scope: function. Type: dict of SyncQueue keyword arguments.
    Default: ``{"durability": "normal"}`` (survives a process crash; no fsync per op).

    Override to change how ``sync_queue`` is opened (capacity, ttl, durability...)."""
    return {"durability": "normal"}


@pytest.fixture
def sync_queue(
    tmp_path: Path, virtual_clock: cs.VirtualClock, sync_queue_options: dict[str, Any]
) -> Iterator[cs.SyncQueue]:
    """Scope: function. Type: cpcsync.SyncQueue.
    Default: a SQLite queue file ``queue.db`` in ``tmp_path`` on ``virtual_clock``,
    opened with ``sync_queue_options``; closed after the test."""
    q = cs.SyncQueue.open(tmp_path / "queue.db", clock=virtual_clock, **sync_queue_options)
    yield q
    q.close()


@pytest.fixture
def network(virtual_clock: cs.VirtualClock) -> Iterator[cs.NetworkMonitor]:
    """Scope: function. Type: cpcsync.NetworkMonitor.
    Default: connected, no probe, on ``virtual_clock``: it changes only by
    ``set_connected`` (or a Scenario); stopped after the test."""
    m = cs.NetworkMonitor(connected=True, clock=virtual_clock)
    yield m
    m.stop()


@pytest.fixture
def faulty_transport(virtual_clock: cs.VirtualClock) -> Iterator[FaultyTransport]:
    """Scope: function. Type: cpcsync.testing.FaultyTransport.
    Default: a sink (every call succeeds until you script faults), seed 0, no latency,
    on ``virtual_clock``. Override to wrap a real transport, e.g.
    ``FaultyTransport(cs.HttpTransport(sync_server.url), clock=virtual_clock)``."""
    ft = FaultyTransport(seed=0, clock=virtual_clock)
    yield ft
    ft.close()


@pytest.fixture
def sync_engine_options() -> dict[str, Any]:
    """Scope: function. Type: dict of SyncEngine keyword arguments.
    Default: ``{"backoff": ExponentialBackoff(base=1.0, factor=2.0, max_delay=60.0,
    jitter="none"), "max_attempts": 5}``: retries after 1, 2, 4, 8 s, then dead-letter.

    Override to change how ``sync_engine`` is built (resolver, concurrency...)."""
    return {
        "backoff": cs.ExponentialBackoff(base=1.0, factor=2.0, max_delay=60.0, jitter="none"),
        "max_attempts": 5,
    }


@pytest.fixture
def sync_engine(
    sync_queue: cs.SyncQueue,
    faulty_transport: FaultyTransport,
    network: cs.NetworkMonitor,
    virtual_clock: cs.VirtualClock,
    sync_engine_options: dict[str, Any],
) -> Iterator[cs.SyncEngine]:
    """Scope: function. Type: cpcsync.SyncEngine.
    Default: delivers ``sync_queue`` through ``faulty_transport`` while ``network`` says
    connected, on ``virtual_clock``, with ``sync_engine_options``. Not started: drive it
    with ``simulation`` (or ``process_once``/``drain``, or ``start()`` yourself); stopped
    after the test."""
    e = cs.SyncEngine(
        sync_queue, faulty_transport, monitor=network, clock=virtual_clock, **sync_engine_options
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
def simulation(
    sync_engine: cs.SyncEngine, network: cs.NetworkMonitor, faulty_transport: FaultyTransport
) -> Simulation:
    """Scope: function. Type: cpcsync.testing.Simulation.
    Default: drives ``sync_engine`` with ``network`` and ``faulty_transport`` on
    ``virtual_clock``: ``run_until_idle()``, ``run_for(seconds)``, ``apply(Scenario)``."""
    return Simulation(sync_engine, monitor=network, transport=faulty_transport)


@pytest.fixture(scope="session")
def sync_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncServer]:
    """Scope: session. Type: cpcsync.testing.SyncServer.
    Default: one server on 127.0.0.1 (ephemeral port) for the whole session, with its
    SQLite file in a session temporary directory. Tests use ``sync_server``, which resets
    it; use this one directly only to keep state across tests."""
    path = tmp_path_factory.mktemp("cpcsync-server") / "server.db"
    with SyncServer(path) as server:
        yield server


@pytest.fixture
def sync_server(sync_server_session: SyncServer) -> SyncServer:
    """Scope: function. Type: cpcsync.testing.SyncServer.
    Default: the session server, reset before the test (nothing applied or received,
    no pending fail_next, no delay). Same port all session."""
    sync_server_session.reset()
    return sync_server_session


@pytest.fixture
def fault_proxy(sync_server: SyncServer) -> Iterator[FaultProxy]:
    """Scope: function. Type: cpcsync.testing.FaultProxy.
    Default: a started proxy on 127.0.0.1 (ephemeral port) in front of ``sync_server``,
    no toxics; stopped after the test. Point an HttpTransport at
    ``f"http://{host}:{port}/ops"`` from ``fault_proxy.address``."""
    proxy = FaultProxy(upstream=("127.0.0.1", sync_server.port)).start()
    yield proxy
    proxy.stop()
