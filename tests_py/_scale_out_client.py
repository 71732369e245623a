"""One client process of test_scale_out.py (run as a script, config as JSON in argv[1]).

It runs `count` devices, each a real SyncQueue file with a SyncEngine delivering in
batches over HttpTransport (device name and the queue's low_water in every batch) to
one of the receiver URLs. Each device enqueues `per_device` ops: on keys of its own
(per-key order is checked on these) and on a few keys every device shares (conflicts,
resolved by LastWriteWins). It writes a ledger of what it enqueued and what its
engines superseded or dead-lettered, then prints one JSON line when every queue is
empty.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import cpcsync as cs
from cpcsync.http import HttpTransport


def main() -> int:
    cfg = json.loads(sys.argv[1])
    workdir, urls = cfg["workdir"], cfg["urls"]
    lock = threading.Lock()
    outcomes: dict[str, list[str]] = {"superseded": [], "dead_letter": []}

    def note(event: str) -> Any:
        def on(info: dict[str, Any]) -> None:
            with lock:
                outcomes[event].append(info["op"].idempotency_key)

        return on

    devices = []
    ledger = []
    for d in range(cfg["first"], cfg["first"] + cfg["count"]):
        name = f"dev{d}"
        q = cs.SyncQueue.open(f"{workdir}/{name}.db")
        t = HttpTransport(
            urls[d % len(urls)], timeout=5.0, device=name, low_water=lambda q=q: q.low_water
        )
        e = cs.SyncEngine(
            q,
            t,
            monitor=cs.NetworkMonitor(connected=True),
            resolver=cs.LastWriteWins(),
            backoff=cs.ExponentialBackoff(base=0.05, max_delay=0.5, jitter="full", seed=d),
            batch_size=cfg["batch"],
            max_attempts=1000,
        )
        for event in outcomes:
            e.on(event, note(event))
        for j in range(cfg["per_device"]):
            key = f"shared:{j % cfg['shared_keys']}" if j % 4 == 0 else f"{name}:k{j % 3}"
            op_id = q.enqueue("set", {"d": d, "j": j}, key=key)
            op = q.get(op_id)
            ledger.append({"ikey": op.idempotency_key, "key": key, "hlc": op.hlc, "d": d, "j": j})
        devices.append((q, t, e))
    for _, _, e in devices:
        e.start()
    drained = all(e.stop(drain=True, timeout=cfg["timeout"]) for _, _, e in devices)
    left = sum(len(q) for q, _, _ in devices)
    for q, t, _ in devices:
        t.close()
        q.close()
    with open(f"{workdir}/ledger-{cfg['first']}.json", "w") as f:
        json.dump({"ledger": ledger, **outcomes}, f)
    print(json.dumps({"drained": drained, "left": left}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
