"""The cpcsync demo: the whole system, for real, in one process tree (``make demo``).

A SyncServer (real HTTP, its own SQLite file) behind a FaultProxy (real TCP with
toxics); a client process with a SQLite queue, a TcpProbe monitor and an engine
delivering through HttpTransport. Simulated users enqueue operations of every
priority while the link goes down, flaps, slows and answers 503s; another device
writes some of the same records straight to the server (conflicts, resolved by
last-write-wins on HLC stamps); the client is SIGKILLed midway and restarted. The
run ends with a verdict and a timeline chart (PNG) in the current folder.

Ctrl-C (or SIGTERM) stops the run: the client process is stopped, the files the run
made are removed, and the exit status is 130 (143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

__all__ = ["CHART_HINT", "main"]

CHART_HINT = "pip install 'cpcsync[demo]'"
"""How to get the chart when matplotlib is missing."""

_RUN_FILES = (
    "outbox.db",
    "server.db",
    "ledger.jsonl",
    "superseded.jsonl",
    "versions.jsonl",
)


def _remove_run_files(workdir: Path, made_workdir: bool) -> None:
    """Remove what the run made: the whole folder when the run created it, else the
    files it writes there (queue and server databases with their SQLite companions,
    the ledgers)."""
    if made_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for name in _RUN_FILES:
        for suffix in ("", "-wal", "-shm", "-journal", "-notify"):
            (workdir / (name + suffix)).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; exit code 0 when the verdict passes, 1 when it does not, 128 +
    the signal's number when SIGINT or SIGTERM stopped it."""
    from cpcsync.demo.runner import Interrupted, catch_signals

    catch_signals()
    p = argparse.ArgumentParser(prog="cpcsync demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--duration",
        type=float,
        default=40.0,
        help="seconds the users enqueue, faults included, before the final drain "
        "(default 40, min 10)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the users' operations")
    p.add_argument("--rate", type=float, default=20.0, help="operations per second (default 20)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the queue, server and ledger files go (default: a new temporary folder)",
    )
    p.add_argument(
        "--chart",
        type=Path,
        default=Path("cpcsync-demo-timeline.png"),
        help="the timeline PNG (default ./cpcsync-demo-timeline.png)",
    )
    p.add_argument("--no-live", action="store_true", help="plain progress lines, no live table")
    made_workdir = False
    workdir: Path | None = None
    chart: Path | None = None  # set while the chart is being written
    try:
        args = p.parse_args(argv)
        if args.rate <= 0 or args.duration <= 0:
            p.error("--rate and --duration must be > 0")

        from cpcsync.demo.chart import write_chart
        from cpcsync.demo.display import make_display
        from cpcsync.demo.plan import make_plan
        from cpcsync.demo.runner import default_workdir, run

        plan = make_plan(args.duration)
        if args.workdir is None:
            workdir, made_workdir = default_workdir(), True
        else:
            workdir, made_workdir = args.workdir, not args.workdir.exists()
        print(
            f"cpcsync demo: {plan.users_until:.0f} s of users at {args.rate:g} ops/s, then "
            f"the queue drains; seed {args.seed}; files in {workdir}",
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
        print(
            f"      {state.total('retried')} retries, {state.total('conflicts')} conflicts "
            f"resolved by last-write-wins, {state.device_b} writes by another device, "
            f"{state.restarts} client restart(s)"
        )
        chart = args.chart
        if write_chart(chart, state, plan):
            print(f"timeline chart: {chart.resolve()}")
        else:
            print(f"timeline chart skipped: matplotlib is not installed ({CHART_HINT})")
        chart = None
        print("verdict:", "PASS" if verdict.ok else "FAIL", flush=True)
        return 0 if verdict.ok else 1
    except Interrupted as stop:
        removed = ""
        if workdir is not None:
            _remove_run_files(workdir, made_workdir)
            removed = (
                f", removed {workdir}" if made_workdir else f", removed its files in {workdir}"
            )
        if chart is not None:  # half written
            chart.unlink(missing_ok=True)
        sys.stdout.flush()
        # (on a terminal the ^C echo ends the current line first)
        nl = "\n" if sys.stderr.isatty() else ""
        sys.stderr.write(f"{nl}cpcsync demo: stopped by {stop.name}; client stopped{removed}\n")
        sys.stderr.flush()
        return 128 + stop.signum
