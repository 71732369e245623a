"""The cpcsync demo: the whole system, for real, in one process tree (``make demo``).

A SyncServer (real HTTP, its own SQLite file) behind a FaultProxy (real TCP with
toxics); a client process with a SQLite queue, a TcpProbe monitor and an engine
delivering through HttpTransport. Simulated users enqueue operations of every
priority while the link goes down, flaps, slows and answers 503s; another device
writes some of the same records straight to the server (conflicts, resolved by
last-write-wins on HLC stamps); the client is SIGKILLed midway and restarted. The
run ends with a verdict and a timeline chart (PNG) in the current folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the demo; exit code 0 when the verdict passes, 1 when it does not."""
    p = argparse.ArgumentParser(prog="cpcsync demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--duration",
        type=float,
        default=40.0,
        help="seconds of simulated use before the final drain (default 40, min 10)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the users' operations")
    p.add_argument("--rate", type=float, default=20.0, help="operations per second (default 20)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the queue, server and ledger files go (default: a temp folder)",
    )
    p.add_argument(
        "--chart",
        type=Path,
        default=Path("cpcsync-demo-timeline.png"),
        help="the timeline PNG (default ./cpcsync-demo-timeline.png)",
    )
    p.add_argument("--no-live", action="store_true", help="plain progress lines, no live table")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0:
        p.error("--rate and --duration must be > 0")

    from cpcsync.demo.chart import write_chart
    from cpcsync.demo.display import make_display
    from cpcsync.demo.plan import make_plan
    from cpcsync.demo.runner import default_workdir, run

    plan = make_plan(args.duration)
    workdir = args.workdir or default_workdir()
    print(
        f"cpcsync demo: {plan.duration:.0f} s of users at {args.rate:g} ops/s, seed "
        f"{args.seed}; files in {workdir}",
        flush=True,
    )
    display = make_display(not args.no_live)
    try:
        verdict, state = run(plan, workdir, args.seed, args.rate, display)
    finally:
        display.close()
    print()
    for line in verdict.lines():
        print(line)
    last = state.last
    print(
        f"      {last.get('delivered_total', 0)} deliveries, {last.get('retried', 0)} retries "
        f"(last client), {state.device_b} writes by another device, "
        f"{state.restarts} client restart(s)"
    )
    if write_chart(args.chart, state.samples, state.down, state.kills, plan.phases):
        print(f"timeline chart: {args.chart.resolve()}")
    else:
        print("timeline chart skipped: matplotlib is not installed (pip install matplotlib)")
    print("verdict:", "PASS" if verdict.ok else "FAIL")
    return 0 if verdict.ok else 1
