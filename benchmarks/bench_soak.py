"""The soak group: one virtual hour, a flapping network, 1,000,000 operations.

A SQLite queue (durability "normal") on a ``cpcsync.VirtualClock``, a SyncEngine driven
by ``cpcsync.testing.Simulation``, and a ``FaultyTransport`` sink that fails 2% of calls
(transient). The network flaps all hour (``Scenario().flap(period=30, count=60)``: down
30 s, up 30 s, so each virtual minute has one outage). A producer enqueues the ops at a
steady rate (one ``enqueue_many`` per virtual second, half keyed over 1,000 keys).

Each virtual minute records: ops delivered (from ``FaultyTransport.history``, cleared
after each minute: it grows ~440 B per call), transport calls, backlog, the wall time
that minute took, and the process RSS. After a warm-up, RSS must stay flat (< 10%
growth) and deliveries per virtual minute steady.

It runs in a worker subprocess so that its RSS is the soak's own.

    python benchmarks/bench_soak.py [--quick] [--ops N] [--output PATH]
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cpcsync as cs
import harness
from cpcsync.testing import FaultyTransport, Scenario, Simulation
from harness import Case, Group, Limit, Measurement

KIND = "set_field"
PAYLOAD = (
    b'{"user_id":"user:000042","field":"currency","value":"BTC","seq":123456,'
    b'"ts":1700000000.123,"device":"ios-17"}'
)
KEYS = 1_000
RSS_GROWTH_LIMIT = 10.0  # percent, after warm-up
STEADY_LIMIT = 10.0  # percent: worst minute's deviation from the median minute


@dataclass
class SoakConfig:
    """One soak run. ``minutes`` virtual minutes; ``ops`` spread evenly over them."""

    ops: int = 1_000_000
    minutes: int = 60
    flap_period: float = 30.0
    failure_rate: float = 0.02
    warmup_minutes: int = 5
    seed: int = 7


@dataclass
class Minute:
    """What one virtual minute did."""

    minute: int
    delivered: int
    calls: int
    backlog: int
    wall_s: float
    rss_mb: float


@dataclass
class SoakResult:
    """The soak's per-minute record and totals."""

    minutes: list[Minute] = field(default_factory=list)
    produced: int = 0
    delivered: int = 0
    dead: int = 0
    wall_s: float = 0.0
    drained_in_s: float = 0.0  # virtual seconds after the hour until the queue was empty
    peak_rss_mb: float = 0.0

    def after_warmup(self, warmup: int) -> list[Minute]:
        return [m for m in self.minutes if m.minute >= warmup]

    def rss_growth_pct(self, warmup: int) -> float:
        tail = self.after_warmup(warmup)
        if not tail:
            return 0.0
        base = tail[0].rss_mb
        return (max(m.rss_mb for m in tail) - base) / base * 100 if base else 0.0

    def worst_deviation_pct(self, warmup: int) -> float:
        tail = [m.delivered for m in self.after_warmup(warmup)]
        if not tail:
            return 0.0
        med = statistics.median(tail)
        return max(abs(x - med) for x in tail) / med * 100 if med else 0.0


def _rss_mb(name: str = "VmRSS") -> float:
    return harness.proc_status_mb(name)


def run_soak(cfg: SoakConfig, workdir: Path, log: Any = None) -> SoakResult:
    """Runs one soak in ``workdir`` (in this process) and deletes its queue file."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "soak.db"
    clock = cs.VirtualClock(0.0)
    result = SoakResult()
    q = cs.SyncQueue.open(str(path), durability="normal", clock=clock)
    try:
        monitor = cs.NetworkMonitor(connected=True, clock=clock)
        ft = FaultyTransport(failure_rate=cfg.failure_rate, seed=cfg.seed, clock=clock)
        backoff = cs.ExponentialBackoff(
            base=1.0, factor=2.0, max_delay=60.0, jitter="full", seed=cfg.seed
        )
        engine = cs.SyncEngine(q, ft, monitor=monitor, backoff=backoff, clock=clock)
        count = int(cfg.minutes * 60 / (2 * cfg.flap_period))
        sim = Simulation(
            engine,
            monitor=monitor,
            transport=ft,
            scenario=Scenario().flap(period=cfg.flap_period, count=count),
        )
        seconds = cfg.minutes * 60
        produced = [0]

        def produce_at(second: int) -> None:
            target = cfg.ops * (second + 1) // seconds
            k = target - produced[0]
            if k > 0:
                start = produced[0]
                q.enqueue_many(
                    [
                        {
                            "kind": KIND,
                            "payload": PAYLOAD,
                            "key": None if (start + i) % 2 == 0 else f"user:{(start + i) % KEYS}",
                        }
                        for i in range(k)
                    ]
                )
                produced[0] = target

        for s in range(seconds):
            sim.at(s + 0.5, functools.partial(produce_at, s))

        started = time.perf_counter()
        for minute in range(cfg.minutes):
            t0 = time.perf_counter()
            sim.run_until((minute + 1) * 60.0)
            history = ft.history
            delivered = sum(1 for a in history if a.outcome == "delivered")
            calls = len(history)
            ft.clear_history()
            del history
            m = Minute(minute, delivered, calls, len(q), time.perf_counter() - t0, _rss_mb())
            result.minutes.append(m)
            result.delivered += delivered
            if log is not None and (minute % 10 == 9 or minute == cfg.minutes - 1):
                print(
                    f"  [soak] minute {minute + 1}: {delivered:,} delivered, backlog "
                    f"{m.backlog:,}, {m.wall_s:.2f} s wall, RSS {m.rss_mb:.0f} MB",
                    file=log,
                    flush=True,
                )
        end = sim.now
        sim.run_until_idle(limit=3600.0)
        result.drained_in_s = sim.now - end
        result.delivered += sum(1 for a in ft.history if a.outcome == "delivered")
        ft.clear_history()
        result.wall_s = time.perf_counter() - started
        result.produced = produced[0]
        result.dead = int(q.stats()["dead"])
        result.peak_rss_mb = _rss_mb("VmHWM")
        if result.delivered + result.dead != result.produced or len(q) != 0:
            raise RuntimeError(
                f"soak lost ops: produced {result.produced}, delivered {result.delivered}, "
                f"dead {result.dead}, left {len(q)}"
            )
    finally:
        q.close()
        for p in workdir.glob("soak.db*"):
            p.unlink(missing_ok=True)
    return result


# --------------------------------------------------------------------------- the group

_config = SoakConfig()
_results: dict[str, SoakResult] = {}


def configure(*, quick: bool = False) -> None:
    """``--quick``: 100,000 ops instead of 1,000,000 (same virtual hour)."""
    global _config
    _config = SoakConfig(ops=100_000) if quick else SoakConfig()


def _experiment(directory: Path) -> SoakResult:
    if "run" not in _results:
        data = harness.run_worker(__file__, asdict(_config), directory)
        data["minutes"] = [Minute(**m) for m in data["minutes"]]
        _results["run"] = SoakResult(**data)
    return _results["run"]


def soak_case(directory: Path, ops: int) -> Measurement:
    """Throughput = ops delivered over the soak's wall time; one sample per virtual minute."""
    r = _experiment(directory)
    return Measurement(
        r.delivered,
        int(r.wall_s * 1e9),
        [int(m.wall_s * 1e9) for m in r.minutes],
        per="virtual minute",
        note=(
            f"{r.produced:,} ops over {len(r.minutes)} virtual minutes; wall time per "
            "virtual minute in the µs columns"
        ),
    )


def _limits(results: dict[str, Measurement]) -> list[Limit]:
    r = _results.get("run")
    w = _config.warmup_minutes
    return [
        Limit(
            f"soak: RSS growth after minute {w}",
            r.rss_growth_pct(w) if r else None,
            RSS_GROWTH_LIMIT,
            "%",
        ),
        Limit(
            f"soak: deliveries per virtual minute, worst deviation from the median (after "
            f"minute {w})",
            r.worst_deviation_pct(w) if r else None,
            STEADY_LIMIT,
            "%",
        ),
    ]


def _checks(results: dict[str, Measurement]) -> list[str]:
    r = _results.get("run")
    if r is None:
        return []
    w = _config.warmup_minutes
    tail = r.after_warmup(w)
    delivered = " ".join(f"{m.delivered / 1000:.1f}" for m in r.minutes)
    real = " ".join(f"{m.delivered / m.wall_s / 1000:.0f}" if m.wall_s else "-" for m in r.minutes)
    rss = " ".join(f"{m.rss_mb:.0f}" for m in r.minutes)
    out = [
        f"- Soak: {r.produced:,} ops produced, {r.delivered:,} delivered, {r.dead:,} dead; "
        f"{r.wall_s:.0f} s wall for the virtual hour; the backlog left at the hour's end "
        f"drained {r.drained_in_s:.0f} virtual s later.",
        f"- Soak, delivered per virtual minute (thousands, minutes 1-{len(r.minutes)}): "
        f"{delivered}.",
        f"- Soak, real delivery rate per virtual minute (thousand ops per wall second): {real}.",
        f"- Soak, RSS at each minute's end (MB): {rss}; VmHWM {r.peak_rss_mb:.0f} MB.",
    ]
    if len(tail) >= 4:
        half = len(tail) // 2
        first = sum(m.delivered for m in tail[:half]) / sum(m.wall_s for m in tail[:half])
        last = sum(m.delivered for m in tail[half:]) / sum(m.wall_s for m in tail[half:])
        out.append(
            f"- Soak, real delivery rate after warm-up: first half {first:,.0f} ops/s, second "
            f"half {last:,.0f} ops/s ({last / first:.2f}x)."
        )
    return out


def group() -> Group:
    """The soak group for run.py (size from :func:`configure`)."""
    cfg = _config
    return Group(
        name="soak",
        title="Soak (one virtual hour, flapping network)",
        cases=[
            Case(
                "soak.hour",
                f"{cfg.ops:,} ops in one virtual hour, network flapping every "
                f"{cfg.flap_period:g} s, {cfg.failure_rate:.0%} transient failures",
                cfg.ops,
                soak_case,
                timeout_s=4 * 3600.0,
            )
        ],
        checks=_checks,
        limits=_limits,
        description=(
            'SQLite queue at "normal" on a VirtualClock, SyncEngine driven by '
            "`cpcsync.testing.Simulation`, FaultyTransport sink with seeded transient "
            f"failures, `Scenario().flap(period={cfg.flap_period:g}, count=...)` for the hour; "
            "ops enqueued at a steady rate (one `enqueue_many` per virtual second, half keyed "
            "over 1,000 keys). ops/s is real time (wall); per-minute figures are under *Sanity "
            f"checks*. Warm-up: the first {cfg.warmup_minutes} virtual minutes. Runs in a "
            "worker subprocess (its own RSS)."
        ),
    )


def _work(config: dict[str, Any], workdir: Path) -> dict[str, Any]:
    return asdict(run_soak(SoakConfig(**config), workdir, log=sys.stderr))


def main(argv: list[str] | None = None) -> int:
    """Standalone: ``python benchmarks/bench_soak.py`` (or the internal ``--worker``)."""
    argv = sys.argv[1:] if argv is None else argv
    if harness.worker_main(argv, _work):
        return 0
    parser = harness.standalone_parser(__doc__, "soak", "100,000 ops")
    parser.add_argument("--ops", type=int, help="ops over the hour (default 1,000,000)")
    args = parser.parse_args(argv)
    configure(quick=args.quick)
    if args.ops:
        _config.ops = args.ops
    harness.run_alone(group(), args.output, "soak only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
