"""The happy path: queue while offline, deliver critical operations first on reconnect.

Run: ``python examples/sync_example.py``. It starts a local SyncServer (a real HTTP
server on 127.0.0.1), records 1,000 low-priority cart updates and one critical
currency change while the network is down, then reconnects and drains the queue
through HttpTransport, printing the ProcessingSummary and what the server received
first.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cpcsync as cs
from cpcsync.testing import SyncServer


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="cpcsync-example-"))
    with (
        SyncServer() as server,
        cs.HttpTransport(server.url) as transport,
        cs.SyncQueue.open(folder / "outbox.db", durability="normal") as queue,
    ):
        monitor = cs.NetworkMonitor(connected=False)  # we start offline
        engine = cs.SyncEngine(queue, transport, monitor=monitor)

        for i in range(1000):
            queue.enqueue("add_item", {"sku": f"A-{i}"}, key=f"cart:{i}", priority=cs.Priority.LOW)
        queue.enqueue(
            "set_currency", {"currency": "BTC"}, key="user:42", priority=cs.Priority.CRITICAL
        )
        print(f"offline: {len(queue)} operations queued in {folder / 'outbox.db'}")

        nothing = engine.process_once()  # offline: nothing is sent
        print(f"while offline: {nothing}")

        monitor.set_connected(True)
        summary = engine.drain(timeout=60)
        print(f"after reconnect: {summary}")
        first = server.received[0]
        print(f"first delivered: {first['kind']} {first['payload']} (priority {first['priority']})")
        print(f"server applied {len(server.applied)} keys; queue now holds {len(queue)}")


if __name__ == "__main__":
    main()
