"""The demo (README's main job) end to end: a short run passes its own verdict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cpcsync.demo.plan import make_plan
from cpcsync.demo.verdict import judge


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
    assert len(ledger) >= 12 * 0.85 * 20 * 0.9  # users kept enqueuing through the faults


def test_the_plan_scales_and_keeps_its_order() -> None:
    for d in (10, 40, 300):
        p = make_plan(d)
        times = [s.time for s in p.scenario.steps]
        assert times == sorted(times) and times[-1] < p.users_until < p.duration
        assert p.kill_at < p.restart_at < p.users_until
        assert next(label for *_, label in p.phases) == "offline"
        assert p.phase_at(p.kill_at) == "client killed"


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
