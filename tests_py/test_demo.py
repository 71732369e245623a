"""The demo (README's main job) end to end: a short run passes its own verdict, its
progress lines add up, and Ctrl-C or SIGTERM stops it cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import cpcsync as cs
from cpcsync.demo.client import VersionedTransport, load_versions
from cpcsync.demo.plan import make_plan
from cpcsync.demo.runner import OpCounter
from cpcsync.demo.verdict import judge
from cpcsync.http import HttpTransport
from cpcsync.testing import SyncServer

PROGRESS = re.compile(
    r"^\[\s*(?P<t>[\d.]+)s\] (?P<phase>.+?)\s+client (?P<client>\S+)\s+pending .+? "
    r"enqueued\s+(?P<enqueued>\d+)\s+applied\s+(?P<applied>\d+)\s+"
    r"retries\s+(?P<retries>\d+)\s+conflicts (?P<conflicts>\d+)$"
)


def progress_lines(out: str) -> list[dict[str, str]]:
    """The plain progress lines of a demo run, parsed."""
    rows = []
    for line in out.splitlines():
        m = PROGRESS.match(line)
        if m:
            rows.append(m.groupdict())
        else:
            assert not line.startswith("["), f"a progress line the test cannot read: {line!r}"
    return rows


def test_a_short_demo_run_passes_and_draws_its_chart(tmp_path: Path) -> None:
    chart = tmp_path / "timeline.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpcsync.demo",
            "--duration",
            "12",
            "--seed",
            "3",
            "--workdir",
            str(tmp_path / "run"),
            "--chart",
            str(chart),
            "--no-live",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for check in (
        "every enqueued operation completed",
        "applied exactly once on the server",
        "nothing applied that was not enqueued",
        "highest ready priority first",
    ):
        assert f"PASS  {check}" in out, out + proc.stderr
    assert "1 client restart(s)" in out, out + proc.stderr
    assert "verdict: PASS" in out, out + proc.stderr
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ledger = (tmp_path / "run" / "ledger.jsonl").read_text().splitlines()
    assert len(ledger) >= 12 * 20 * 0.9  # users kept enqueuing through the faults

    # The progress lines add up.
    plan = make_plan(12)
    rows = progress_lines(out)
    assert len(rows) >= 5, out
    first_fault = plan.phases[0].start
    for r in rows:
        # "applied" counts operations the server applied, each once: never more than
        # the users enqueued (the old "delivered" counted redeliveries too).
        assert int(r["applied"]) <= int(r["enqueued"]), r
        # The monitor starts out assuming "down"; until the first fault the client is
        # starting, connecting or online, never reported offline.
        if float(r["t"]) < first_fault:
            assert r["client"] in ("starting", "connecting", "online"), r
            assert r["phase"] == "link normal", r
    # retries and conflicts are totals over both client processes: they never go back
    for name in ("retries", "conflicts", "enqueued", "applied"):
        values = [int(r[name]) for r in rows]
        assert values == sorted(values), (name, values)
    # The last line is the end of the run, and it matches the verdict.
    m = re.search(r"(\d+) enqueued = (\d+) applied \+ (\d+) superseded", out)
    assert m, out
    assert (int(rows[-1]["enqueued"]), int(rows[-1]["applied"])) == (
        int(m.group(1)),
        int(m.group(2)),
    )
    assert rows[-1]["phase"] == "draining"
    # A conflict comes from another device's write (at most one each) or from the kill
    # (a write applied but not acknowledged, at most one): the restarted client knows
    # the versions its predecessor saw, so it does not conflict once on every key.
    writes = int(re.search(r"(\d+) writes by another device", out).group(1))  # type: ignore[union-attr]
    assert writes == len(plan.device_b_writes)
    assert int(rows[-1]["conflicts"]) <= writes + 1, out


def test_the_plan_scales_and_keeps_its_order() -> None:
    for d in (10, 40, 300):
        p = make_plan(d)
        times = [s.time for s in p.scenario.steps]
        # the users enqueue for the whole duration the user asked for, faults inside it
        assert times == sorted(times) and times[-1] < p.users_until == p.duration
        assert p.kill_at < p.restart_at < p.users_until
        assert p.phases[0].label == "link down"
        assert [ph.start for ph in p.phases] == sorted(ph.start for ph in p.phases)
        assert p.phase_at(0.0) == "link normal"
        assert p.phase_at(p.kill_at) == "client killed"
        assert p.phase_at(p.users_until) == "draining"


def test_the_verdict_catches_loss_duplicates_and_phantoms(tmp_path: Path) -> None:
    (tmp_path / "ledger.jsonl").write_text(
        "".join(f'{{"i": {i}, "idempotency_key": "demo-1-{i}"}}\n' for i in range(4))
        + '{"i": 9, "idempotency_k'  # a torn last line from a kill mid-write is ignored
    )
    (tmp_path / "superseded.jsonl").write_text('{"idempotency_key": "demo-1-3"}\n')
    log = [
        {"idempotency_key": k}
        for k in ("demo-1-0", "demo-1-1", "demo-1-1", "demo-1-7", "device-b-1")
    ]
    events = [
        {"event": "first_after_reconnect", "priority": 25, "max_ready": 100},
        {"event": "first_after_reconnect", "priority": 100, "max_ready": 100},
        {"event": "done", "t": 30.0},
    ]
    v = judge(tmp_path, log, events, back_online_at=25.0)
    assert (v.enqueued, v.applied, v.superseded) == (4, 2, 1)
    assert v.missing == ["demo-1-2"]
    assert v.duplicates == ["demo-1-1"]
    assert v.phantoms == ["demo-1-7"]
    assert v.reconnects == 2 and len(v.critical_first_failures) == 1
    assert v.drain_seconds == 5.0
    assert not v.ok
    assert sum(line.startswith("FAIL") for line in v.lines()) == 4


# ----------------------------------------------------------------- counting


def _post(server: SyncServer, ikey: str, key: str, base: int | None = None) -> int:
    body = {
        "id": 1,
        "kind": "update_record",
        "key": key,
        "priority": 50,
        "payload": {"by": "test"},
        "idempotency_key": ikey,
        "hlc": cs.HybridLogicalClock().now(),
        "base_version": base,
    }
    req = urllib.request.Request(
        server.url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()
        return int(resp.status)


def test_the_counter_counts_distinct_operations(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    with SyncServer(tmp_path / "server.db") as server:
        counter = OpCounter(ledger, lambda: server.log)
        assert counter.read() == (0, 0)  # no ledger yet
        with ledger.open("w") as f:
            for i in range(3):
                f.write(json.dumps({"i": i, "idempotency_key": f"demo-1-{i}"}) + "\n")
            # a restarted client re-enqueues its last intent: the same operation
            f.write(json.dumps({"i": 2, "idempotency_key": "demo-1-2"}) + "\n")
            f.write('{"i": 3, "idempotency_k')  # being written (or torn by a kill)
        for i in range(3):
            assert _post(server, f"demo-1-{i}", f"patient:{i}") == 200
        assert _post(server, "demo-1-1", "patient:1") == 200  # delivered again: duplicate
        assert _post(server, "device-b-1", "patient:0", base=1) == 200  # not the users'
        assert counter.read() == (3, 3)
        with ledger.open("a") as f:
            f.write('ey": "demo-1-3"}\n')  # the line completed
        assert counter.read() == (4, 3)


def test_a_restarted_client_knows_the_versions_its_predecessor_saw(tmp_path: Path) -> None:
    versions = tmp_path / "versions.jsonl"
    reports: list[dict[str, object]] = []
    with (
        SyncServer(tmp_path / "server.db") as server,
        cs.SyncQueue.open(tmp_path / "outbox.db") as q,
    ):
        monitor = cs.NetworkMonitor(connected=True)
        q.enqueue("update_record", {"n": 1}, key="patient:1", idempotency_key="demo-1-1")
        q.enqueue("update_record", {"n": 2}, key="patient:1", idempotency_key="demo-1-2")
        q.enqueue("update_record", {"n": 3}, key="patient:1", idempotency_key="demo-1-3")

        def take_one() -> cs.Operation:
            ops = q.take(1)
            assert len(ops) == 1
            return ops[0]

        http = HttpTransport(server.url, timeout=5.0)
        first = VersionedTransport(http, q, monitor, reports.append, versions)
        op1 = take_one()
        first(op1)  # applied: version 1
        first.close()
        assert load_versions(versions) == ({"patient:1": 1}, {"patient:1": "demo-1-1"})

        # The process is killed before the ack: a new one sends op1 again, then op2.
        second = VersionedTransport(http, q, monitor, reports.append, versions)
        assert second.version("patient:1") == 1
        second(op1)  # the server answers "duplicate": the version stays 1
        assert second.version("patient:1") == 1
        q.ack(op1.id)
        op2 = take_one()
        second(op2)  # base version 1 is right: applied, no conflict (a 409 would raise)
        assert server.entity("patient:1")["version"] == 2  # type: ignore[index]
        second.adopt("patient:1", 7)  # a version learned from a conflict
        second.close()
        http.close()
        assert load_versions(versions) == ({"patient:1": 7}, {})
        with versions.open("a") as f:
            f.write('{"key": "patient:1", "vers')  # torn by a kill mid-write: ignored
        assert load_versions(versions) == ({"patient:1": 7}, {})


# ----------------------------------------------------------------- Ctrl-C, SIGTERM


def _descendants(pid: int) -> set[int]:
    """Every live descendant of `pid`, from /proc (ppid is the 4th field of stat)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _lines(stream: object) -> Iterator[str]:
    """The lines of a text stream, read by a thread, each within 60 s."""
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        line = q.get(timeout=60)
        if line is None:
            return
        yield line


@contextlib.contextmanager
def _demo_online(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, start_new_session: bool = False
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """Runs `python -m cpcsync.demo *args` and yields it with its output so far once a
    progress line shows the client online (mid-run); kills it on the way out if alive."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpcsync.demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
        start_new_session=start_new_session,
    )
    try:
        out: list[str] = []
        for line in _lines(proc.stdout):
            out.append(line)
            if line.startswith("[") and "client online" in line:
                break  # mid-run: the client runs and delivers
        else:
            pytest.fail("no progress line: " + "".join(out) + proc.stderr.read())  # type: ignore[union-attr]
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_demo_cleanly(tmp_path: Path, signum: signal.Signals) -> None:
    chart = tmp_path / "timeline.png"
    tmp = tmp_path / "tmp"  # the default workdir goes here (TMPDIR)
    tmp.mkdir()
    args = ["--duration", "30", "--no-live", "--chart", str(chart)]
    workdir = tmp_path / "run"
    if signum == signal.SIGINT:
        args += ["--workdir", str(workdir)]  # a folder the demo creates
    with _demo_online(
        args,
        tmp_path,
        env={**os.environ, "TMPDIR": str(tmp)},
        start_new_session=True,  # its own process group, as a terminal's job is
    ) as (proc, out):
        children = _descendants(proc.pid)
        assert children, "the demo runs its client as a child process"
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        else:
            proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
    stdout = "".join(out) + rest
    assert proc.returncode == 128 + signum, stdout + err
    assert "Traceback" not in stdout + err, stdout + err
    assert err.count("\n") == 1, err
    name = signal.Signals(signum).name
    assert err.startswith(f"cpcsync demo: stopped by {name}; client stopped, removed "), err
    made = workdir if signum == signal.SIGINT else tmp
    if signum == signal.SIGINT:
        assert not workdir.exists(), list(workdir.iterdir())
    else:
        assert list(tmp.iterdir()) == [], "the temporary workdir was left behind"
    assert str(made) in err
    assert not chart.exists()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling a condition with a deadline, not synchronisation
    assert not [p for p in children if _alive(p)], "a child process outlived the demo"


def test_the_demo_keeps_a_given_workdir_and_removes_only_its_files(tmp_path: Path) -> None:
    workdir = tmp_path / "mine"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("not the demo's")
    args = ["--duration", "30", "--no-live", "--workdir", str(workdir)]
    with _demo_online([*args, "--chart", str(tmp_path / "c.png")], tmp_path) as (proc, _):
        assert (workdir / "ledger.jsonl").exists()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert f"removed its files in {workdir}" in err
    assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt"]
