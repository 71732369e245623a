"""The demo's orchestrator: server, proxy, the client process, faults, display, verdict."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cpcsync as cs
from cpcsync.demo.plan import Plan
from cpcsync.demo.verdict import Verdict, judge
from cpcsync.testing import FaultProxy, SyncServer


@dataclass
class RunState:
    """What the orchestrator saw; read by the display, the verdict and the chart."""

    epoch: float
    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    down: list[tuple[float, float]] = field(default_factory=list)
    kills: list[float] = field(default_factory=list)
    restarts: int = 0
    device_b: int = 0
    delivered_base: int = 0  # deliveries by earlier client processes
    last: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        """Seconds since the run started."""
        return time.time() - self.epoch


class ClientProcess:
    """The client (cpcsync.demo.client) as a child process whose JSON lines we read."""

    def __init__(self, state: RunState, args: list[str]) -> None:
        self.state = state
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cpcsync.demo.client", *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.exit_code: int | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            with self.state.lock:
                if rec.get("event") == "status":
                    rec["delivered_total"] = self.state.delivered_base + rec["delivered"]
                    self.state.samples.append(rec)
                    self.state.last = rec
                else:
                    rec.setdefault("t", self.state.now())
                    self.state.events.append(rec)

    def kill(self) -> None:
        """SIGKILL: no clean-up runs, as in a power cut of the process."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join()
        with self.state.lock:
            self.state.delivered_base = self.state.last.get("delivered_total", 0)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after `timeout` seconds."""
        try:
            self.exit_code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join()
        return self.exit_code


def _device_b_write(server: SyncServer, n: int, key: str) -> None:
    """Another device writes `key` straight to the server (not through our proxy)."""
    hlc = cs.HybridLogicalClock().now()
    body = {
        "id": n,
        "kind": "update_record",
        "key": key,
        "priority": 75,
        "payload": {"by": "device-b", "n": n},
        "idempotency_key": f"device-b-{n}",
        "hlc": hlc,
        "base_version": None,
    }
    req = urllib.request.Request(
        server.url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()


def run(
    plan: Plan, workdir: Path, seed: int, rate: float, display: Any
) -> tuple[Verdict, RunState]:
    """Run the whole demo once; returns the verdict and what was recorded."""
    workdir.mkdir(parents=True, exist_ok=True)
    state = RunState(epoch=time.time())
    with (
        SyncServer(workdir / "server.db") as server,
        FaultProxy(upstream=("127.0.0.1", server.port)) as proxy,
    ):
        port = proxy.address[1]
        deadline = plan.duration + max(60.0, plan.duration)
        client_args = [
            "--workdir",
            str(workdir),
            "--proxy-port",
            str(port),
            "--seed",
            str(seed),
            "--rate",
            str(rate),
            "--epoch",
            str(state.epoch),
            "--users-until",
            str(plan.users_until),
            "--deadline",
            str(deadline),
        ]
        client = ClientProcess(state, client_args)
        player = plan.scenario.play(proxy, server=server)
        # Record when the link was down, from the plan's own timeline.
        opened: float | None = None
        for step in plan.scenario.steps:
            if step.action in ("offline", "partition") and opened is None:
                opened = step.time
            elif step.action in ("online", "heal") and opened is not None:
                state.down.append((opened, step.time))
                opened = None
        pending = sorted(
            [(t, "device_b") for t in plan.device_b_writes]
            + [(plan.kill_at, "kill"), (plan.restart_at, "restart")]
        )
        entities = [f"patient:{i}" for i in range(40)]
        try:
            for when, what in pending:
                while state.now() < when:
                    display.update(state, plan)
                    time.sleep(min(0.1, max(0.0, when - state.now())))
                if what == "device_b":
                    state.device_b += 1
                    _device_b_write(
                        server,
                        state.device_b,
                        entities[(seed + state.device_b * 7) % len(entities)],
                    )
                elif what == "kill":
                    client.kill()
                    state.kills.append(state.now())
                else:
                    state.restarts += 1
                    client = ClientProcess(state, client_args)
            while client.wait(timeout=0.1) is None:
                display.update(state, plan)
                if state.now() > deadline + 5:
                    client.kill()
                    break
            display.update(state, plan)
        finally:
            player.stop()
            if client.proc.poll() is None:
                client.kill()
        back_online = max((b for _, b in state.down), default=None)
        verdict = judge(workdir, server.log, state.events, back_online)
    return verdict, state


def default_workdir() -> Path:
    """A fresh folder under the system's temporary directory."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="cpcsync-demo-"))


__all__ = ["ClientProcess", "RunState", "default_workdir", "run"]
