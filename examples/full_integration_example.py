"""Everything together, for real: composite store, engine, HTTP, and network faults.

Run: ``python examples/full_integration_example.py``. In this one process:

- a SyncServer (real HTTP on 127.0.0.1, its own SQLite file) is the central server;
- a FaultProxy (real TCP proxy with Toxiproxy's toxics) sits between us and it;
- an OfflineFirstStore keeps a local SQLite copy and a SQLite queue, with a
  NetworkMonitor that probes the proxy with a TcpProbe, and its own SyncEngine
  delivering queued writes over HTTP (through the proxy).

Then the network misbehaves: the proxy refuses connections (the link is down), adds
200 ms of latency, and the server answers 503s. Reads keep working from the local
copy, writes are kept and delivered once the link is back, each applied once.
"""

from __future__ import annotations

import json
import tempfile
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

import cpcsync as cs
from cpcsync.testing import FaultProxy, SyncServer


@dataclass(frozen=True)
class _Write:
    """One write as HttpTransport sends it (cpcsync.http.OperationLike)."""

    key: str
    payload: bytes
    idempotency_key: str
    id: int = 0
    kind: str = "set"
    priority: int = int(cs.Priority.HIGH)
    hlc: int = 0
    base_version: int | None = None


class HttpRemote:
    """The store's remote over HTTP: ``GET /entities/<key>`` and POSTed writes."""

    def __init__(self, base: str, timeout: float = 2.0) -> None:
        self._base = base
        self._http = urllib3.PoolManager(timeout=timeout, retries=False)
        self._send = cs.HttpTransport(f"{base}/ops", timeout=timeout)

    def get(self, key: str) -> Any:
        try:
            r = self._http.request("GET", f"{self._base}/entities/{urllib.parse.quote(key)}")
        except urllib3.exceptions.HTTPError as exc:
            raise cs.NetworkError(f"GET {key}: {exc}") from exc
        if r.status == 404:
            raise KeyError(key)
        if r.status != 200:
            raise cs.TransientError(f"GET {key}: HTTP {r.status}")
        return json.loads(r.data)["value"]

    def set(self, key: str, value: Any) -> None:
        payload = json.dumps(value).encode()
        self._send.send(_Write(key=key, payload=payload, idempotency_key=str(uuid.uuid4())))

    def close(self) -> None:
        self._send.close()
        self._http.clear()


def on_server(server: SyncServer, key: str) -> Any:
    """The value the server holds for `key` (None if it has none)."""
    entity = server.entity(key)
    return None if entity is None else entity["value"]


def main() -> int:
    folder = Path(tempfile.mkdtemp(prefix="cpcsync-full-"))
    with (
        SyncServer(folder / "server.db") as server,
        FaultProxy(upstream=("127.0.0.1", server.port)) as proxy,
    ):
        host, port = proxy.address
        # Generous timeouts: a direct write the store gives up on may still reach the
        # server, and its queued retry (a new request) would then apply it a second time.
        remote = HttpRemote(f"http://{host}:{port}", timeout=5.0)
        monitor = cs.NetworkMonitor(
            connected=True, probe=cs.TcpProbe(host, port, timeout=0.5), interval=0.1
        )
        delivered = threading.Semaphore(0)
        with (
            cs.SyncQueue.open(folder / "outbox.db") as queue,
            cs.OfflineFirstStore(
                folder / "local.db",
                remote,
                queue,
                monitor,
                timeout=5.0,
                backoff=cs.ConstantBackoff(0.1),
            ) as store,
        ):
            store.engine.on("delivered", lambda info: delivered.release())
            monitor.start()

            store.set("clinic:7:stock:insulin", {"units": 40})
            print(
                "online:  stock written straight to the server ->",
                on_server(server, "clinic:7:stock:insulin"),
            )

            with proxy.disabled():  # the link goes down: connections refused
                monitor.wait_until(False, timeout=10)
                store.set("clinic:7:stock:insulin", {"units": 35})
                store.set("clinic:7:visits", {"today": 12})
                print(
                    "offline: reads from the local copy ->",
                    store.get("clinic:7:stock:insulin"),
                    "; server still has",
                    on_server(server, "clinic:7:stock:insulin"),
                )
            monitor.wait_until(True, timeout=10)
            for _ in range(2):  # both queued writes reach the server by themselves
                if not delivered.acquire(timeout=20):
                    print("queued writes were not delivered")
                    return 1
            print(
                "back:    server now has ->",
                on_server(server, "clinic:7:stock:insulin"),
                on_server(server, "clinic:7:visits"),
            )

            with proxy.toxic("latency", latency=200):
                server.fail_next(2, status=503)  # and the server has a bad moment
                store.set("clinic:7:stock:insulin", {"units": 30})
                if not delivered.acquire(timeout=20):
                    print("the write was not delivered after the 503s")
                    return 1
            print(
                "slow + 503s: delivered after retries ->",
                on_server(server, "clinic:7:stock:insulin"),
            )

            monitor.stop()
        remote.close()
        log = server.log
        once = len({b["idempotency_key"] for b in log}) == len(log)
        print(f"server applied {len(log)} writes, each once: {once}")
        return 0 if once and on_server(server, "clinic:7:stock:insulin") == {"units": 30} else 1


if __name__ == "__main__":
    raise SystemExit(main())
