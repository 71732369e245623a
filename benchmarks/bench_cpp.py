"""The C++ group: Google Benchmark micro-benchmarks of the core's hot paths.

``benchmarks/cpp/*.cc`` (CMake option ``CPCSYNC_BUILD_BENCHMARKS``) are built in
``build/bench-cpp`` (RelWithDebInfo: -O2, as the Python module is built; no bindings,
no tests) the first time a case runs, then run once with ``--benchmark_format=json``;
each case reads its figures from that one run. A benchmark runs ``REPETITIONS`` times:
the p50/p99 columns are over the repetitions' mean time per iteration, ops/s is
iterations over real time.

    python benchmarks/bench_cpp.py    # build, run, print the JSON summary
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import Case, Group, Measurement

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "bench-cpp"
BINARY = BUILD / "benchmarks" / "cpp" / "cpcsync_benchmarks"
REPETITIONS = 3
MIN_TIME = "0.2"

# (benchmark name as Google Benchmark reports it, the table's label, what one op is)
BENCHMARKS: list[tuple[str, str, str]] = [
    ("BM_TakeAck_Memory/10000", "take(1)+ack, MemoryStorage, backlog 10,000", "take+ack"),
    ("BM_TakeAck_Memory/100000", "take(1)+ack, MemoryStorage, backlog 100,000", "take+ack"),
    ("BM_TakeAck_Sqlite/10000", "take(1)+ack, SqliteStorage, backlog 10,000", "take+ack"),
    ("BM_TakeAck_Sqlite/100000", "take(1)+ack, SqliteStorage, backlog 100,000", "take+ack"),
    ("BM_Peek10_Memory/10000", "peek(10), MemoryStorage, backlog 10,000", "peek(10)"),
    ("BM_Peek10_Memory/100000", "peek(10), MemoryStorage, backlog 100,000", "peek(10)"),
    ("BM_Peek10_Sqlite/10000", "peek(10), SqliteStorage, backlog 10,000", "peek(10)"),
    ("BM_Peek10_Sqlite/100000", "peek(10), SqliteStorage, backlog 100,000", "peek(10)"),
    ("BM_LaneMerge/1000/10", "lane merge alone, 1,000 lanes, first 10", "merge of 10"),
    ("BM_LaneMerge/1000/100", "lane merge alone, 1,000 lanes, first 100", "merge of 100"),
    ("BM_LaneMerge/100000/100", "lane merge alone, 100,000 lanes, first 100", "merge of 100"),
    ("BM_OpEncode_Memory", "operation encode: enqueue into MemoryStorage", "op"),
    ("BM_OpEncode_Sqlite", 'operation encode: enqueue into its SQLite row ("off")', "op"),
    ("BM_OpDecode_Sqlite", "operation decode: get(id) from its SQLite row", "op"),
    ("BM_BackoffNextDelay/0", 'ExponentialBackoff.next_delay, jitter "none"', "delay"),
    ("BM_BackoffNextDelay/1", 'ExponentialBackoff.next_delay, jitter "full"', "delay"),
    ("BM_BackoffNextDelay/2", 'ExponentialBackoff.next_delay, jitter "equal"', "delay"),
    ("BM_BackoffNextDelay/3", 'ExponentialBackoff.next_delay, jitter "decorrelated"', "delay"),
    ("BM_BackoffClone", "ExponentialBackoff clone (per-op copy, decorrelated)", "clone"),
    ("BM_HlcNow", "HybridLogicalClock.now (SystemClock)", "stamp"),
    ("BM_HlcObserve", "HybridLogicalClock.observe (remote ahead)", "observe"),
]

_cache: dict[str, Any] = {}


def build() -> Path:
    """Configures and builds the benchmark binary (incremental); returns its path."""
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "2")
    configure = [
        "cmake",
        "-S",
        str(REPO),
        "-B",
        str(BUILD),
        "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        "-DCPCSYNC_BUILD_PYTHON=OFF",
        "-DCPCSYNC_BUILD_BENCHMARKS=ON",
    ]
    if shutil.which("ninja") and not (BUILD / "CMakeCache.txt").exists():
        configure += ["-G", "Ninja"]
    subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["cmake", "--build", str(BUILD), "-j", jobs, "--target", "cpcsync_benchmarks"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return BINARY


def run_benchmarks(out_dir: Path, filter_regex: str | None = None) -> dict[str, Any]:
    """Runs the binary once; returns its JSON document."""
    binary = build()
    out = out_dir / "cpp-benchmarks.json"
    cmd = [
        str(binary),
        f"--benchmark_out={out}",
        "--benchmark_out_format=json",
        f"--benchmark_repetitions={REPETITIONS}",
        f"--benchmark_min_time={MIN_TIME}",
    ]
    if filter_regex:
        cmd.append(f"--benchmark_filter={filter_regex}")
    env = dict(os.environ, TMPDIR=str(out_dir))  # the SQLite backlogs go next to the report
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    doc: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    return doc


def _document(directory: Path) -> dict[str, Any]:
    if "doc" not in _cache:
        _cache["doc"] = run_benchmarks(directory.parent)
    doc: dict[str, Any] = _cache["doc"]
    return doc


def _to_ns(value: float, unit: str) -> float:
    return value * {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}[unit]


def measurement_of(doc: dict[str, Any], name: str, per: str) -> Measurement:
    """The repetitions of benchmark `name` as one Measurement."""
    runs = [
        b
        for b in doc.get("benchmarks", [])
        if b.get("run_name") == name and b.get("run_type") == "iteration"
    ]
    if not runs:
        raise RuntimeError(f"C++ benchmark {name} did not run")
    iterations = sum(int(b["iterations"]) for b in runs)
    per_iter = [_to_ns(float(b["real_time"]), b["time_unit"]) for b in runs]
    wall = sum(p * int(b["iterations"]) for p, b in zip(per_iter, runs, strict=True))
    cpu = [_to_ns(float(b["cpu_time"]), b["time_unit"]) for b in runs]
    label = runs[0].get("label", "")
    note = f"cpu {min(cpu):,.0f} ns/iter (min of {len(runs)})" + (f"; {label}" if label else "")
    return Measurement(iterations, int(wall), [int(p) for p in per_iter], per=per, note=note)


def _case(name: str, per: str) -> Any:
    def run(directory: Path, ops: int) -> Measurement:
        return measurement_of(_document(directory), name, per)

    return run


def _context_note(results: dict[str, Measurement]) -> list[str]:
    doc = _cache.get("doc")
    if not doc:
        return []
    ctx = doc.get("context", {})
    out = [
        f"- C++ benchmarks: {REPETITIONS} repetitions of >= {MIN_TIME} s each, binary built "
        "RelWithDebInfo (-O2); "
        f"library_build_type {ctx.get('library_build_type', '?')} (Debian's libbenchmark "
        "says debug: that is the library's own build, not the code measured)."
    ]
    for bench, what in (
        ("BM_TakeAck_Memory", "take+ack, MemoryStorage"),
        ("BM_TakeAck_Sqlite", "take+ack, SqliteStorage"),
        ("BM_Peek10_Memory", "peek(10), MemoryStorage"),
        ("BM_Peek10_Sqlite", "peek(10), SqliteStorage"),
    ):
        big, small = results.get(f"cpp.{bench}/100000"), results.get(f"cpp.{bench}/10000")
        if big and small and big.ops and small.ops:
            real = (big.wall_ns / big.ops) / (small.wall_ns / small.ops)
            out.append(
                f"- C++ {what}: cost at backlog 100,000 is {real:.2f}x its cost at 10,000 "
                "(real time; CPU time in the notes)."
            )
    return out


def group() -> Group:
    """The C++ micro-benchmark group for run.py."""
    cases = [
        Case(f"cpp.{name}", label, 1, _case(name, per), timeout_s=1800.0)
        for name, label, per in BENCHMARKS
    ]
    return Group(
        name="cpp",
        title="C++ micro-benchmarks (Google Benchmark)",
        cases=cases,
        checks=_context_note,
        description=(
            "`benchmarks/cpp/*.cc`, no Python involved. Backlogs are half `key=None`, half "
            "over 1,000 keys; SQLite take+ack commit at synchronous=NORMAL (WAL), peek is a "
            "read. The op count is Google Benchmark's iterations; p50/p99 are over the "
            "repetitions' mean real time per iteration (µs); notes give CPU time. "
            "MemoryStorage keeps ordered trees (std::map/std::set): at 100,000 ops a take+ack "
            "walks deeper trees that no longer fit the CPU caches, so it costs more per op "
            "than at 10,000 (O(log n), not O(n)); SqliteStorage's take+ack real time is "
            "WAL writes and checkpoints, its CPU time is flat."
        ),
    )


def main() -> int:
    """Standalone: build and run, print name and real time per iteration."""
    out = REPO / "build"
    doc = run_benchmarks(out)
    for name, label, per in BENCHMARKS:
        try:
            m = measurement_of(doc, name, per)
        except RuntimeError as e:
            print(e)
            continue
        print(f"{label:<60} {m.percentile_us(50) * 1e3:>12,.1f} ns/{per}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
