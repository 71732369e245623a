"""User preferences (each user's preferred currency) kept on an OfflineFirstStore.

Run it: ``python examples/user_preferences.py``. Everything runs in this process: a
preferences server (an in-process object standing in for a remote preferences service),
a SQLite queue and a local copy in a temporary folder, and a network monitor this
script switches by hand to play the network going away and coming back:

1. online: a preference is written straight to the server;
2. offline: a preference is written to the local copy and queued, and reads still work;
3. reconnect: the store's engine delivers the queued write by itself;
4. the server fails while the monitor still says online: reads fall back to the local
   copy, and writes are queued until the server answers again.

The factory takes no user id (the user is an argument of each call), so one
preferences object serves every user, and it is never recreated when the network
changes: the store follows the monitor.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any, Literal, cast

import cpcsync as cs

Currency = Literal["USD", "EUR", "GBP", "KES", "BTC"]
CURRENCIES: tuple[Currency, ...] = ("USD", "EUR", "GBP", "KES", "BTC")
DEFAULT_CURRENCY: Currency = "USD"


class PreferencesServer:
    """The remote: a thread-safe in-process key-value service that can be taken down.

    It follows cs.RemoteStore: ``get`` raises KeyError for an unknown key, and both
    methods raise ConnectionError while the server is down.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        self.writes: list[tuple[str, Any]] = []  # every write applied, in order
        self.up = True

    def get(self, key: str) -> Any:
        with self._lock:
            if not self.up:
                raise ConnectionError("preferences server unreachable")
            return self._values[key]

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            if not self.up:
                raise ConnectionError("preferences server unreachable")
            self._values[key] = value
            self.writes.append((key, value))

    def peek(self, key: str) -> Any:
        """What the server holds, for this demo's printouts (None if nothing)."""
        with self._lock:
            return self._values.get(key)


class UserPreferences:
    """The preferences service: the preferred currency of each user."""

    def __init__(self, store: cs.OfflineFirstStore) -> None:
        self._store = store

    @staticmethod
    def _key(user_id: int) -> str:
        return f"user:{user_id}:currency"

    def get_preferred_currency(self, user_id: int) -> Currency:
        value = self._store.get(self._key(user_id), None)
        if value is None:
            return DEFAULT_CURRENCY
        return cast(Currency, value["currency"])

    def set_preferred_currency(self, user_id: int, currency: Currency) -> str:
        if currency not in CURRENCIES:
            raise ValueError(f"unknown currency {currency!r}")
        return self._store.set(
            self._key(user_id), {"currency": currency}, priority=cs.Priority.HIGH
        )


def create_user_preferences(
    folder: Path, server: PreferencesServer, queue: cs.SyncQueue, monitor: cs.NetworkMonitor
) -> tuple[UserPreferences, cs.OfflineFirstStore]:
    """The factory, without a user id: one preferences object for all users."""
    store = cs.OfflineFirstStore(
        folder / "preferences.db",
        server,
        queue,
        monitor,
        timeout=2.0,
        backoff=cs.ConstantBackoff(0.05),
    )
    return UserPreferences(store), store


def main() -> int:
    folder = Path(tempfile.mkdtemp(prefix="cpcsync-prefs-"))
    server = PreferencesServer()
    monitor = cs.NetworkMonitor(connected=True)
    delivered = threading.Semaphore(0)

    with cs.SyncQueue.open(folder / "outbox.db") as queue:
        prefs, store = create_user_preferences(folder, server, queue, monitor)
        with store:
            store.engine.on("delivered", lambda info: delivered.release())

            how = prefs.set_preferred_currency(42, "BTC")
            print(f"user 42 prefers {prefs.get_preferred_currency(42)} (set online: {how})")

            monitor.set_connected(False)  # the network goes away
            how = prefs.set_preferred_currency(7, "EUR")
            print(f"offline: user 7 prefers {prefs.get_preferred_currency(7)} (set offline: {how})")
            print(f"server still has user 7 -> {server.peek('user:7:currency') or '(none)'}")

            monitor.set_connected(True)  # back: the engine drains the queue by itself
            if not delivered.acquire(timeout=10):
                print("the queued write was not delivered")
                return 1
            print(f"reconnected: server has user 7 -> {server.peek('user:7:currency')['currency']}")

            server.up = False  # the server fails; the monitor has not noticed
            print(
                "server down, monitor not told yet: user 42 prefers "
                f"{prefs.get_preferred_currency(42)} (from the local copy)"
            )
            how = prefs.set_preferred_currency(42, "KES")
            print(f"user 42 switches to KES while the server is down ({how})")
            server.up = True  # the engine's next retry gets through
            if not delivered.acquire(timeout=10):
                print("the queued write was not delivered")
                return 1
            print(f"server back: user 42 -> {server.peek('user:42:currency')['currency']}")
            print(f"user 99 has no preference: {prefs.get_preferred_currency(99)} (the default)")

            stats = store.stats()
            print(
                f"store: {stats['direct_writes']} direct, {stats['queued_writes']} queued, "
                f"{stats['fallback_reads']} fallback read(s), {stats['transitions']} network "
                f"transitions followed, {len(queue)} left on the queue"
            )

    expected = [
        ("user:42:currency", {"currency": "BTC"}),
        ("user:7:currency", {"currency": "EUR"}),
        ("user:42:currency", {"currency": "KES"}),
    ]
    if server.writes != expected:
        print(f"unexpected server writes: {server.writes}")
        return 1
    print("every write reached the server exactly once, in order")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
