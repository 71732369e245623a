"""Timing, percentiles, machine facts and the Markdown report for `benchmarks/run.py`.

A benchmark *group* (queue, later backoff, engine, proxy, ...) is a list of
:class:`Case` plus the :class:`Target` ratios computed from them. Each case
gets a fresh directory and an op count; it returns a :class:`Measurement`
(wall time of the timed loop and one latency sample per timed call).
"""

from __future__ import annotations

import gc
import math
import os
import platform
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

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

`make bench` installs the peer libraries (persist-queue, litequeue) into `.venv` and
runs `.venv/bin/python benchmarks/run.py`, which overwrites this file. All cases run in
one process, one after another, each on fresh files in a temporary directory under
`build/bench-tmp/` (on the repository's disk, not tmpfs: the fsync cost is part of what
is measured), and the ratios above come from that one run. `benchmarks/run.py --quick`
divides every op count by 10 for a smoke test; its numbers are noisier. Throughput is
ops over the wall time of the timed loop (harness overhead included, see *Timer overhead*);
latencies are `time.perf_counter_ns` around each call, nearest-rank percentiles.
"""


def write_report(
    path: Path,
    *,
    facts: list[tuple[str, str]],
    groups: list[Group],
    results: dict[str, Measurement],
    mode: str,
) -> list[TargetOutcome]:
    """Writes the Markdown report to `path` (overwriting it); returns the target outcomes."""
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
