"""The demo's orchestrator: server, proxy, the client process, faults, display, verdict."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cpcsync as cs
from cpcsync.demo.plan import Plan
from cpcsync.demo.verdict import Verdict, judge
from cpcsync.testing import FaultProxy, SyncServer


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM arrived: the run stops and cleans up (see
    :func:`catch_signals`). A BaseException, so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        """``"SIGINT"`` or ``"SIGTERM"``."""
        return signal.Signals(self.signum).name


def catch_signals() -> None:
    """From now on SIGINT and SIGTERM raise :class:`Interrupted` in the main thread,
    once: the first one also makes both ignored, so a second Ctrl-C cannot break the
    clean-up the first one started. Call from the main thread."""

    def handler(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


class OpCounter:
    """How many distinct operations the users enqueued (the client's ``ledger.jsonl``,
    which has each intent before it is enqueued) and how many the server applied (its
    log, where each idempotency key appears once however often it was delivered).

    :meth:`read` reads the server first, then the ledger: an operation is in the ledger
    before it can reach the server, so ``applied <= enqueued`` in every reading."""

    def __init__(self, ledger: Path, server_log: Callable[[], list[dict[str, Any]]]) -> None:
        self._ledger = ledger
        self._server_log = server_log
        self._offset = 0
        self._seen: set[int] = set()

    def _read_ledger(self) -> int:
        try:
            with self._ledger.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return 0
        end = chunk.rfind(b"\n") + 1  # a line being written is read next time
        for line in chunk[:end].splitlines():
            try:
                self._seen.add(int(json.loads(line)["i"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn line from a kill mid-write
        self._offset += end
        return len(self._seen)

    def read(self) -> tuple[int, int]:
        """``(enqueued, applied)`` now."""
        applied = len(
            {
                str(b["idempotency_key"])
                for b in self._server_log()
                if str(b.get("idempotency_key", "")).startswith("demo-")
            }
        )
        return self._read_ledger(), applied


@dataclass
class RunState:
    """What the orchestrator saw; read by the display, the verdict and the chart."""

    epoch: float
    samples: list[dict[str, Any]] = field(default_factory=list)  # client status lines
    events: list[dict[str, Any]] = field(default_factory=list)
    down: list[tuple[float, float]] = field(default_factory=list)
    kills: list[float] = field(default_factory=list)
    restarts: int = 0
    device_b: int = 0
    last: dict[str, Any] = field(default_factory=dict)  # the latest status line
    by_pid: dict[int, dict[str, Any]] = field(default_factory=dict)  # latest per process
    client_pid: int | None = None  # the running client process; None while it is killed
    enqueued: int = 0
    applied: int = 0
    counts: list[tuple[float, int, int]] = field(default_factory=list)  # (t, enq., applied)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        """Seconds since the run started."""
        return time.time() - self.epoch

    def total(self, name: str) -> int:
        """A client counter (``"retried"``, ``"conflicts"``, ...) summed over every
        client process of the run: each process's engine counts from zero, and the
        last status of a killed one stands for it (what it did in the last 0.2 s
        before the SIGKILL is not counted)."""
        with self.lock:
            return sum(int(s.get(name, 0)) for s in self.by_pid.values())

    def count(self, counter: OpCounter) -> None:
        """Read the enqueued and applied counts now."""
        enqueued, applied = counter.read()
        with self.lock:
            self.enqueued, self.applied = enqueued, applied
            self.counts.append((self.now(), enqueued, applied))


class ClientProcess:
    """The client (cpcsync.demo.client) as a child process whose JSON lines we read.

    It runs in a session of its own: a Ctrl-C on the terminal reaches the demo, which
    stops it, and not the client directly."""

    def __init__(self, state: RunState, args: list[str]) -> None:
        self.state = state
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cpcsync.demo.client", *args, "--parent-pid", str(os.getpid())],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        with state.lock:
            state.client_pid = self.proc.pid
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
                    self.state.samples.append(rec)
                    self.state.last = rec
                    self.state.by_pid[int(rec["pid"])] = rec
                else:
                    rec.setdefault("t", self.state.now())
                    self.state.events.append(rec)

    def kill(self) -> None:
        """SIGKILL: no clean-up runs, as in a power cut of the process."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join()
        with self.state.lock:
            if self.state.client_pid == self.proc.pid:
                self.state.client_pid = None

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
        counter = OpCounter(workdir / "ledger.jsonl", lambda: server.log)
        next_count = 0.0

        def tick() -> None:
            nonlocal next_count
            if time.monotonic() >= next_count:
                state.count(counter)
                next_count = time.monotonic() + 0.25
            display.update(state, plan)

        try:
            for when, what in pending:
                while state.now() < when:
                    tick()
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
                tick()
                if state.now() > deadline + 5:
                    client.kill()
                    break
            state.count(counter)
            display.update(state, plan, final=True)
        finally:
            player.stop()
            client.kill()
        back_online = max((b for _, b in state.down), default=None)
        verdict = judge(workdir, server.log, state.events, back_online)
    return verdict, state


def default_workdir() -> Path:
    """A fresh folder under the system's temporary directory."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="cpcsync-demo-"))


__all__ = [
    "ClientProcess",
    "Interrupted",
    "OpCounter",
    "RunState",
    "catch_signals",
    "default_workdir",
    "run",
]
