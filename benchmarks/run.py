"""Runs every benchmark group in one invocation; writes docs/benchmarks.md and its chart.

    python benchmarks/run.py [--quick] [--only SUBSTRING] [--output PATH] [--keep]
                             [--scale-max N]

To add a group: write `benchmarks/bench_<name>.py` with a `group() -> harness.Group`
and append it to `GROUPS` below; its cases, targets and checks land in the same report.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib.metadata
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import bench_backoff
import bench_cpp
import bench_engine
import bench_monitor
import bench_proxy
import bench_queue
import bench_scale
import bench_server
import bench_soak
import harness

REPO = Path(__file__).resolve().parent.parent
GROUPS: list[Callable[[], harness.Group]] = [
    bench_queue.group,
    bench_backoff.group,
    bench_monitor.group,
    bench_engine.group,
    bench_proxy.group,
    bench_server.group,
    bench_scale.group,
    bench_soak.group,
    bench_cpp.group,
]
CASE_TIMEOUT_S = 300  # a case that hangs dumps every thread's stack and ends the run


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _load_average() -> str:
    """The 1-minute load average: other work on the machine skews every figure."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="divide every op count by 10")
    parser.add_argument("--only", help="run only cases whose key contains this substring")
    parser.add_argument(
        "--output",
        type=Path,
        help="report path (default docs/benchmarks.md; with --only, build/benchmarks-partial.md)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary files")
    parser.add_argument(
        "--scale-max",
        type=int,
        help="largest backlog of the scale group (default 1,000,000; the recorded run: 10000000)",
    )
    args = parser.parse_args(argv)
    bench_scale.configure(quick=args.quick, scale_max=args.scale_max)
    bench_soak.configure(quick=args.quick)

    if args.output is None:
        partial = args.only is not None
        args.output = REPO / ("build/benchmarks-partial.md" if partial else "docs/benchmarks.md")
    divisor = 10 if args.quick else 1
    groups = [make() for make in GROUPS]
    if args.only:
        for g in groups:
            g.cases = [c for c in g.cases if args.only in c.key]

    base = REPO / "build" / "bench-tmp"
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    results: dict[str, harness.Measurement] = {}
    load_before = _load_average()
    started = time.perf_counter()
    try:
        overhead = harness.timer_overhead_ns()
        for g in groups:
            for i, case in enumerate(g.cases):
                ops = harness.scaled(case, divisor)
                case_dir = tmp / f"{g.name}-{i:02d}"
                case_dir.mkdir()
                print(f"{case.key:<34} {ops:>8,} ops ... ", end="", flush=True)
                faulthandler.dump_traceback_later(case.timeout_s or CASE_TIMEOUT_S, exit=True)
                try:
                    m = case.run(case_dir, ops)
                finally:
                    faulthandler.cancel_dump_traceback_later()
                results[case.key] = m
                print(
                    f"{m.ops_per_s:>12,.0f} ops/s  p50 {m.percentile_us(50):>9.1f} µs"
                    f"  p99 {m.percentile_us(99):>9.1f} µs"
                )
                if not args.keep:
                    shutil.rmtree(case_dir)
        elapsed = time.perf_counter() - started
        dists = sorted({p for g in groups for p in g.packages})
        extra = [
            *((f"{d} version", _version(d)) for d in dists),
            ("Timer overhead", f"{overhead:.0f} ns per timed call (median, empty call)"),
            ("Run", f"{'quick (op counts / 10)' if args.quick else 'full'}, {elapsed:.0f} s"),
            ("Load average (1 min) at start / end", f"{load_before} / {_load_average()}"),
        ]
        if args.scale_max:
            extra.append(("Scale group", f"--scale-max {args.scale_max}"))
        facts = harness.machine_facts(tmp, extra)
        chart = args.output.with_suffix(".png")
        drawn = harness.write_chart(
            chart,
            harness.evaluate([t for g in groups for t in g.targets], results),
            harness.all_limits(groups, results),
        )
        outcomes = harness.write_report(
            args.output,
            facts=facts,
            groups=groups,
            results=results,
            mode="quick" if args.quick else "full",
            chart=chart.name if drawn else None,
        )
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nwrote {args.output} ({elapsed:.0f} s)")
    for o in outcomes:
        ratio = "n/a" if o.ratio is None else f"{o.ratio:.2f}x"
        print(f"  {o.verdict:<40} {ratio:>8} (needed {o.target.requirement})  {o.target.label}")
    for lim in harness.all_limits(groups, results):
        value = "n/a" if lim.value is None else f"{lim.value:,.3g} {lim.unit}"
        print(f"  {lim.verdict:<40} {value:>8} (<= {lim.bound:g} {lim.unit})  {lim.label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
