"""cpcsync's testing toolkit: script bad networks, deterministically or for real.

- :class:`FaultyTransport`: scripted delivery failures, latency and partitions on a
  clock (virtual in tests), with a ``history`` of every attempt.
- :class:`Simulation`: runs an engine, queue, monitor and FaultyTransport on one
  VirtualClock from the calling thread: ``run_until_idle()``, ``run_for(seconds)``.
- :class:`Scenario`: a timeline (offline 30 s, flap, 5xx, partition, latency...)
  applied to a Simulation or played in real time against a FaultProxy.
- :class:`FaultProxy`: a real TCP proxy with Toxiproxy's toxics (docs/fault-proxy.md).
- :class:`SyncServer`: a real HTTP sync server on 127.0.0.1 with its own SQLite file,
  the counterpart of :class:`cpcsync.HttpTransport` (wire format in docs/http.md).
- :class:`PostgresCluster`: a throwaway PostgreSQL cluster on 127.0.0.1 (``initdb`` in
  a temporary directory), for tests, scripts and benchmarks of the server side
  (:mod:`cpcsync.testing.postgres`).
- A pytest plugin (:mod:`cpcsync.testing.plugin`) with fixtures for all of them.
Guide: docs/testing-with-faults.md.
"""

from __future__ import annotations

from cpcsync.testing.faulty import Attempt, FaultyTransport
from cpcsync.testing.postgres import PostgresCluster
from cpcsync.testing.proxy import FaultProxy
from cpcsync.testing.scenario import Scenario, ScenarioPlayer, Step
from cpcsync.testing.server import SyncServer
from cpcsync.testing.simulation import Simulation, SimulationStuck

__all__ = [
    "Attempt",
    "FaultProxy",
    "FaultyTransport",
    "PostgresCluster",
    "Scenario",
    "ScenarioPlayer",
    "Simulation",
    "SimulationStuck",
    "Step",
    "SyncServer",
]
