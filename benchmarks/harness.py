"""Timing, percentiles, machine facts and the Markdown report for `benchmarks/run.py`.

A benchmark *group* (queue, later backoff, engine, proxy, ...) is a list of
:class:`Case` plus the :class:`Target` ratios computed from them. Each case
gets a fresh directory and an op count; it returns a :class:`Measurement`
(wall time of the timed loop and one latency sample per timed call).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    """What one case measured: `ops` units of work in `wall_ns`, one latency per call."""

    ops: int
    wall_ns: int
    latencies_ns: list[int]
    per: str = "op"  # what one latency sample covers ("op", "take+ack", "1,000-row batch")
    note: str = ""

    @property
    def ops_per_s(self) -> float:
        return self.ops / (self.wall_ns / 1e9) if self.wall_ns else math.inf

    def percentile_us(self, q: float) -> float:
        return percentile(self.latencies_ns, q) / 1e3


def percentile(samples: Sequence[int], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted samples; nan when empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[rank - 1])


class _GcPaused:
    """Collects, then disables the cyclic GC for the timed region (as timeit does)."""

    def __enter__(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self._was_enabled:
            gc.enable()


def time_calls(
    call: Callable[[], object],
    calls: int,
    *,
    ops_per_call: int = 1,
    warmup: int = 0,
    per: str = "op",
    note: str = "",
) -> Measurement:
    """Runs `call` `warmup` times untimed, then `calls` times, timing each call."""
    for _ in range(warmup):
        call()
    latencies = [0] * calls
    clock = time.perf_counter_ns
    with _GcPaused():
        start = clock()
        for i in range(calls):
            t0 = clock()
            call()
            latencies[i] = clock() - t0
        wall = clock() - start
    return Measurement(calls * ops_per_call, wall, latencies, per, note)


def time_threads(
    make_call: Callable[[int], Callable[[], object]],
    threads: int,
    calls_per_thread: int,
    *,
    per: str = "op",
    note: str = "",
) -> Measurement:
    """`threads` threads each time `calls_per_thread` calls of `make_call(thread_index)`.

    Throughput is aggregate: all ops over the wall time from the common start to
    the last thread's end. Latencies of all threads are pooled.
    """
    calls = [make_call(t) for t in range(threads)]
    results: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)
    clock = time.perf_counter_ns

    def worker(index: int) -> None:
        call = calls[index]
        lat = [0] * calls_per_thread
        barrier.wait()
        try:
            for i in range(calls_per_thread):
                t0 = clock()
                call()
                lat[i] = clock() - t0
        except BaseException as e:  # reported by the main thread
            errors.append(e)
        results[index] = lat

    pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    with _GcPaused():
        for t in pool:
            t.start()
        barrier.wait()
        start = clock()
        for t in pool:
            t.join()
        wall = clock() - start
    if errors:
        raise errors[0]
    pooled = [x for lat in results for x in lat]
    return Measurement(threads * calls_per_thread, wall, pooled, per, note)


def timer_overhead_ns(samples: int = 200_000) -> float:
    """Median cost of one timed empty call in `time_calls` (loop + two clock reads)."""
    m = time_calls(lambda: None, samples)
    return percentile(m.latencies_ns, 50)


# --------------------------------------------------------------------------- defining


@dataclass(frozen=True)
class Case:
    """One benchmark. `run(directory, ops)` measures `ops` ops with files only in `directory`."""

    key: str  # stable id targets refer to, e.g. "cpcsync.enqueue.full"
    label: str  # the table's text
    ops: int  # op count of a full run (--quick divides it by 10)
    run: Callable[[Path, int], Measurement]
    multiple_of: int = 1  # the scaled op count is rounded to a multiple of this
    timeout_s: float | None = None  # run.py's per-case watchdog; None: its default


@dataclass(frozen=True)
class Target:
    """A ratio between two cases' ops/s, computed from one run.

    mode "at_least": ours / theirs >= factor.
    mode "within":   theirs / ours <= factor (ours within `factor` of a ceiling).
    """

    label: str
    ours: str
    theirs: str
    factor: float
    mode: str = "at_least"
    # A case that bounds what `ours` can reach on this machine (e.g. raw SQLite at the same
    # pragmas); a miss note says how the needed rate compares with it.
    reference: str | None = None

    def ratio(self, ours: float, theirs: float) -> float:
        return ours / theirs if self.mode == "at_least" else theirs / ours

    def passes(self, ratio: float) -> bool:
        return ratio >= self.factor if self.mode == "at_least" else ratio <= self.factor

    def needed_ops_per_s(self, theirs: float) -> float:
        """The ops/s `ours` needs to meet the target."""
        return theirs * self.factor if self.mode == "at_least" else theirs / self.factor

    @property
    def requirement(self) -> str:
        return f">= {self.factor:g}x" if self.mode == "at_least" else f"<= {self.factor:g}x"


@dataclass(frozen=True)
class Limit:
    """An absolute bound on one measured figure (RSS, seconds), not a ratio of two cases.

    ``value`` is what the run measured (None: not measured); it must be <= ``bound``.
    """

    label: str
    value: float | None
    bound: float
    unit: str

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a (not measured)"
        return "PASS" if self.value <= self.bound else "MISS"

    @property
    def margin(self) -> float | None:
        """bound / value: >= 1 passes (the chart's scale)."""
        if self.value is None:
            return None
        return math.inf if self.value <= 0 else self.bound / self.value


@dataclass
class Group:
    """A named set of cases with its targets and data-derived remarks."""

    name: str
    title: str
    cases: list[Case]
    targets: list[Target] = field(default_factory=list)
    # Inspects all results of the run (key -> Measurement); returns remarks (Markdown bullets).
    checks: Callable[[dict[str, Measurement]], list[str]] | None = None
    description: str = ""
    packages: list[str] = field(default_factory=list)  # distributions whose versions to report
    # Absolute bounds computed from all results of the run (a "Limits" table in the report).
    limits: Callable[[dict[str, Measurement]], list[Limit]] | None = None


def scaled(case: Case, divisor: int) -> int:
    n = max(case.multiple_of, case.ops // divisor)
    return n - n % case.multiple_of


# --------------------------------------------------------------------------- the machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mount_of(path: Path) -> str:
    """'<fstype> on <device> (<options>)' of the mount holding `path`, from /proc/mounts."""
    target = str(path.resolve())
    best: tuple[str, str, str, str] | None = None
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        dev, mnt, fstype, opts = parts[0], parts[1].replace("\\040", " "), parts[2], parts[3]
        inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
        if inside and (best is None or len(mnt) >= len(best[1])):
            best = (dev, mnt, fstype, opts)
    if best is None:
        return "unknown"
    dev, mnt, fstype, opts = best
    return f"{fstype} on {dev}, mounted at {mnt} ({opts})"


def machine_facts(tmp_dir: Path, extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores = f"{os.cpu_count()} logical" + (f" ({affinity} usable)" if affinity else "")
    return [
        ("Date (UTC)", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")),
        ("CPU", _cpu_model()),
        ("Cores", cores),
        ("Kernel", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {sys.version.split()[0]}"),
        ("SQLite (Python sqlite3)", sqlite3.sqlite_version),
        ("Temp dir", f"`{tmp_dir}`"),
        ("Temp dir filesystem", _mount_of(tmp_dir)),
        *extra,
    ]


# --------------------------------------------------------------------------- the report


def _fmt_rate(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def _fmt_us(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


@dataclass
class TargetOutcome:
    target: Target
    ours: float | None
    theirs: float | None

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.theirs is None:
            return None
        return self.target.ratio(self.ours, self.theirs)

    @property
    def verdict(self) -> str:
        r = self.ratio
        if r is None:
            return "n/a (case not run)"
        if self.target.passes(r):
            return "PASS"
        assert self.ours is not None and self.theirs is not None
        short = self.target.needed_ops_per_s(self.theirs) / self.ours
        return f"MISS (ours needs {short:.2f}x its ops/s)"


def evaluate(targets: Iterable[Target], results: dict[str, Measurement]) -> list[TargetOutcome]:
    def rate(key: str) -> float | None:
        m = results.get(key)
        return m.ops_per_s if m else None

    return [TargetOutcome(t, rate(t.ours), rate(t.theirs)) for t in targets]


def _miss_note(o: TargetOutcome, labels: dict[str, str], results: dict[str, Measurement]) -> str:
    t = o.target
    assert o.ours is not None and o.theirs is not None and o.ratio is not None
    needed = t.needed_ops_per_s(o.theirs)
    if t.mode == "at_least":
        shape = f"ours / theirs = {o.ratio:.2f}x, needed {t.requirement}"
    else:
        shape = f"theirs / ours = {o.ratio:.2f}x, needed {t.requirement}"
    note = (
        f"- **{t.label}**: {labels[t.ours]} ran at {_fmt_rate(o.ours)} ops/s, "
        f"{labels[t.theirs]} at {_fmt_rate(o.theirs)} ops/s ({shape}). "
        f"Meeting it needs {_fmt_rate(needed)} ops/s: {needed / o.ours:.2f}x the measured rate "
        f"(short by {_fmt_rate(needed - o.ours)} ops/s)."
    )
    ref = results.get(t.reference) if t.reference else None
    if t.reference and ref is not None:
        r = ref.ops_per_s
        note += (
            f" For scale: {labels[t.reference]} ran at {_fmt_rate(r)} ops/s "
            f"(p50 {_fmt_us(ref.percentile_us(50))} µs) in this run; the needed rate is "
            f"{needed / r:.2f}x that."
        )
    return note


RERUN = """\
## Rerunning

`make bench` (or `cpcsync bench`, which runs `benchmarks/run.py` with the same
arguments) installs the peer libraries (persist-queue, litequeue, tenacity) into `.venv`
and runs `.venv/bin/python benchmarks/run.py`, which overwrites this file and the chart
`benchmarks.png` beside it. Every group runs in one invocation, one case after another,
each on fresh files in a temporary directory under `build/bench-tmp/` (on the
repository's disk, not tmpfs: the fsync cost is part of what is measured), and the
ratios above come from that one run. The scale and soak groups run in worker
subprocesses (their RSS is their own); the C++ group builds `benchmarks/cpp` in
`build/bench-cpp` (RelWithDebInfo) and runs it once with JSON output. The server group
starts `cpcsync serve` processes and client processes per case, and for its PostgreSQL
rows one throwaway cluster (`cpcsync.testing.PostgresCluster`, fsync on) under
`build/bench-tmp/`; without PostgreSQL or `PostgresBackend` those rows are left out and
a remark says why.

- `--quick` divides op counts by 10 (scale: backlogs of 1,000 and 10,000; soak: 100,000
  ops) for a smoke run; its numbers are noisier.
- `--scale-max N` sets the scale group's largest backlog (default 1,000,000, which keeps
  `make bench` near 15 minutes here); the recorded run says which it used under
  *Machine*. `make bench BENCH_ARGS="--scale-max 10000000"` passes it through make.
- `--only SUBSTRING` runs the cases whose key contains it (report to
  `build/benchmarks-partial.md`; `--only server.` is the server group);
  `benchmarks/bench_scale.py`, `bench_soak.py`, `bench_cpp.py` and `bench_server.py`
  also run alone.

Throughput is ops over the wall time of the timed loop (harness overhead included, see
*Timer overhead*); latencies are `time.perf_counter_ns` around each call, nearest-rank
percentiles.
"""


def write_report(
    path: Path,
    *,
    facts: list[tuple[str, str]],
    groups: list[Group],
    results: dict[str, Measurement],
    mode: str,
    chart: str | None = None,
) -> list[TargetOutcome]:
    """Writes the Markdown report to `path` (overwriting it); returns the target outcomes.

    `chart`: a relative link to the chart image (see :func:`write_chart`), shown after
    the targets.
    """
    labels = {c.key: c.label for g in groups for c in g.cases}
    out: list[str] = [
        "# Benchmarks",
        "",
        f"Written by `benchmarks/run.py` ({mode} run); do not edit by hand, rerun it "
        "(see *Rerunning*).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in facts),
        "",
    ]
    outcomes: list[TargetOutcome] = []
    remarks: list[str] = []
    for g in groups:
        out += [f"## {g.title}", ""]
        if g.description:
            out += [g.description, ""]
        out += [
            "| Case | ops | ops/s | p50 µs | p99 µs | latency per | notes |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        for c in g.cases:
            m = results.get(c.key)
            if m is None:
                continue
            out.append(
                f"| {c.label} | {m.ops:,} | {_fmt_rate(m.ops_per_s)} | "
                f"{_fmt_us(m.percentile_us(50))} | {_fmt_us(m.percentile_us(99))} | "
                f"{m.per} | {m.note} |"
            )
        out.append("")
        outcomes += evaluate(g.targets, results)
        if g.checks is not None:
            remarks += g.checks(results)

    out += [
        "## Targets",
        "",
        "| Target | ours ops/s | theirs ops/s | ratio | needed | result |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for o in outcomes:
        t = o.target
        ratio = "n/a" if o.ratio is None else f"{o.ratio:.2f}x"
        ours = "n/a" if o.ours is None else _fmt_rate(o.ours)
        theirs = "n/a" if o.theirs is None else _fmt_rate(o.theirs)
        out.append(f"| {t.label} | {ours} | {theirs} | {ratio} | {t.requirement} | {o.verdict} |")
    out += [
        "",
        "*ratio* is ours / theirs for `>=` targets and theirs / ours for the `<=` target "
        "(the raw SQLite ceiling over cpcsync).",
        "",
    ]

    limits = all_limits(groups, results)
    if limits:
        out += [
            "## Limits",
            "",
            "| Limit | measured | bound | result |",
            "|---|---:|---:|---|",
        ]
        for lim in limits:
            value = "n/a" if lim.value is None else f"{lim.value:,.3g} {lim.unit}"
            out.append(f"| {lim.label} | {value} | <= {lim.bound:g} {lim.unit} | {lim.verdict} |")
        out.append("")
    if chart is not None:
        out += [f"![Every target and limit: measured over needed]({chart})", ""]

    out += ["## Sanity checks", ""]
    out += remarks or ["- Nothing to flag."]
    out.append("")

    out += ["## Notes on misses", ""]
    misses = [o for o in outcomes if o.ratio is not None and not o.target.passes(o.ratio)]
    out += [_miss_note(o, labels, results) for o in misses] or ["- No target missed in this run."]
    out += ["", RERUN]

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out))
    return outcomes


def all_limits(groups: Iterable[Group], results: dict[str, Measurement]) -> list[Limit]:
    """Every group's absolute bounds for this run's results."""
    return [lim for g in groups if g.limits is not None for lim in g.limits(results)]


def _short(label: str, width: int = 90) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def write_chart(path: Path, outcomes: Sequence[TargetOutcome], limits: Sequence[Limit]) -> bool:
    """A horizontal bar per target and limit: measured over needed (>= 1 passes), log scale.

    Returns False (and writes nothing) when matplotlib is missing or nothing was measured.
    """
    rows: list[tuple[str, float]] = []
    for o in outcomes:
        r = o.ratio
        if r is None:
            continue
        t = o.target
        margin = r / t.factor if t.mode == "at_least" else (t.factor / r if r else math.inf)
        rows.append((f"{t.label} ({r:.2f}x, {t.requirement})", margin))
    for lim in limits:
        m = lim.margin
        if m is not None and lim.value is not None:
            rows.append((f"{lim.label} ({lim.value:,.3g} {lim.unit}, <= {lim.bound:g})", m))
    if not rows:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [(_short(label), min(max(m, 1e-3), 1e3)) for label, m in rows]
    height = 1.0 + 0.32 * len(rows)
    fig, ax = plt.subplots(figsize=(13, height))
    ys = list(range(len(rows)))[::-1]
    colors = ["#2e7d32" if m >= 1 else "#c62828" for _, m in rows]
    ax.barh(ys, [m - 1.0 for _, m in rows], color=colors, left=1.0)  # from 1 to the margin
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(ys)
    ax.set_yticklabels([label for label, _ in rows], fontsize=7)
    ax.set_xlabel("measured / needed (log scale; >= 1 passes, green)")
    ax.set_title("cpcsync benchmark targets")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- workers
# Groups that measure memory (RSS) or kill processes run in a worker subprocess:
# `python bench_x.py --worker CONFIG_JSON WORKDIR OUT_JSON`.


def proc_status_mb(name: str) -> float:
    """A size line of /proc/self/status (``VmRSS``, ``VmHWM``) in MB; 0.0 if absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == name:
                return int(value.split()[0]) / 1024
    except OSError:
        pass
    return 0.0


def run_worker(script: str, config: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Runs ``script --worker`` with ``config`` in a fresh directory under ``directory``
    (removed afterwards); returns the JSON document the worker wrote."""
    workdir = Path(tempfile.mkdtemp(prefix=Path(script).stem + "-", dir=directory))
    out = workdir / "result.json"
    try:
        cmd = [sys.executable, script, "--worker", json.dumps(config), str(workdir), str(out)]
        subprocess.run(cmd, check=True)
        doc: dict[str, Any] = json.loads(out.read_text())
        return doc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def worker_main(
    argv: Sequence[str], work: Callable[[dict[str, Any], Path], dict[str, Any]]
) -> bool:
    """The worker side of :func:`run_worker`: when ``argv`` is a ``--worker`` call, runs
    ``work(config, workdir)``, writes its result and returns True; else returns False."""
    if not argv or argv[0] != "--worker":
        return False
    Path(argv[3]).write_text(json.dumps(work(json.loads(argv[1]), Path(argv[2]))))
    return True


def standalone_parser(doc: str, name: str, quick_help: str) -> argparse.ArgumentParser:
    """Arguments of a ``bench_<name>.py`` run alone: ``--quick`` and ``--output``."""
    parser = argparse.ArgumentParser(description=doc.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    default = Path(__file__).resolve().parent.parent / "build" / f"benchmarks-{name}.md"
    parser.add_argument("--output", type=Path, default=default, help="report path")
    return parser


def run_alone(group: Group, output: Path, mode: str) -> dict[str, Measurement]:
    """Runs one group's cases by themselves (each at its full op count) and writes its
    report to ``output``; returns the results."""
    base = Path(__file__).resolve().parent.parent / "build" / "bench-tmp"
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{group.name}-run-", dir=base))
    results: dict[str, Measurement] = {}
    try:
        for i, case in enumerate(group.cases):
            d = tmp / f"case-{i:02d}"
            d.mkdir()
            results[case.key] = case.run(d, case.ops)
        write_report(output, facts=machine_facts(tmp), groups=[group], results=results, mode=mode)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for o in evaluate(group.targets, results):
        print(f"  {o.verdict:<40} {o.target.label}")
    for lim in all_limits([group], results):
        print(f"  {lim.verdict:<40} {lim.label}: {lim.value}")
    print(f"wrote {output}")
    return results
