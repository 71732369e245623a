"""Two devices edit one key offline, one clock 10 minutes ahead; whatever order they
sync in, the server ends with the same value (last-write-wins on HLC, decided by each
client's resolver when the receiver reports the older write as a conflict).

Before the receiver, the reference server applied whatever arrived last: syncing A
then B left B's value, B then A left A's.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import cpcsync as cs
from cpcsync.http import HttpTransport
from cpcsync.server import Receiver, SqliteBackend
from cpcsync.testing import SyncServer

SKEW = 600.0  # seconds one device's clock is ahead


class Device:
    def __init__(self, name: str, path: Path, wall: float, url: str) -> None:
        self.name = name
        self.clock = cs.VirtualClock(start=wall)
        self.queue = cs.SyncQueue.open(path, clock=self.clock)
        self.http = HttpTransport(url, timeout=10.0)
        self.engine = cs.SyncEngine(
            self.queue,
            self.http,
            monitor=cs.NetworkMonitor(connected=True),
            resolver=cs.LastWriteWins(),
        )
        self.events: list[str] = []
        for event in ("delivered", "conflict", "superseded"):
            self.engine.on(event, lambda info, e=event: self.events.append(e))

    def edit_offline(self, value: str) -> None:
        self.queue.enqueue("set", {"v": value}, key="shared")

    def sync(self) -> None:
        self.engine.drain(timeout=30.0)
        assert len(self.queue) == 0

    def close(self) -> None:
        self.http.close()
        self.queue.close()


@pytest.mark.parametrize("ahead", ["A", "B"])
@pytest.mark.parametrize("order", ["AB", "BA"])
def test_devices_converge_whatever_order_they_sync_in(
    tmp_path: Path, ahead: str, order: str
) -> None:
    now = time.time()
    backend = SqliteBackend(tmp_path / "server.db")
    # the device ahead must not be refused for its skew
    with SyncServer(receiver=Receiver(backend, max_clock_skew=2 * SKEW)) as server:
        devices = {
            name: Device(
                name, tmp_path / f"{name}.db", now + (SKEW if name == ahead else 0), server.url
            )
            for name in "AB"
        }
        try:
            # B edits after A in real time, but the device ahead has the later stamp
            devices["A"].edit_offline("from A")
            devices["B"].edit_offline("from B")
            for name in order:
                devices[name].sync()
            assert server.entity("shared")["value"] == {"v": f"from {ahead}"}  # type: ignore[index]
            second = devices[order[1]]
            if second.name == ahead:
                assert second.events == ["delivered"]
            else:  # its older write came back as a conflict; its resolver kept the server's
                assert second.events == ["conflict", "superseded"]
        finally:
            for d in devices.values():
                d.close()
    backend.close()
