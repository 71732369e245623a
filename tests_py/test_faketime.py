"""Real processes with a stepped wall clock (libfaketime): nothing that waits notices.

Each test runs tests_py/_faketime_child.py with libfaketime preloaded. The child's wall
clock (time.time(), std::chrono::system_clock) reads an offset from a control file
that this test rewrites (FAKETIME_TIMESTAMP_FILE, FAKETIME_NO_CACHE=1); its monotonic
clock is left alone (FAKETIME_DONT_FAKE_MONOTONIC=1), as NTP leaves it alone when it
steps a device's clock. The step happens at the moment the child says it is ready (no
sleeps: both sides synchronise on lines of the protocol). The bounds are generous on
purpose: they tell "about 2 s" from "22 s", not fast from slow.

libfaketime is a Debian package (scripts/bootstrap.sh installs it).
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import cpcsync as cs

HERE = Path(__file__).resolve().parent
CHILD = HERE / "_faketime_child.py"
LIBFAKETIME_CANDIDATES = [
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/faketime/libfaketime.so.1"),
    Path("/usr/local/lib/faketime/libfaketime.so.1"),
]
LIBFAKETIME = next((p for p in LIBFAKETIME_CANDIDATES if p.exists()), None)
PATIENCE = 120.0  # seconds to wait for a line from the child before failing

pytestmark = pytest.mark.skipif(
    LIBFAKETIME is None, reason="libfaketime is not installed (apt-get install libfaketime)"
)


class FakedChild:
    """A child process whose wall clock this object steps."""

    def __init__(self, scenario: str, tmp_path: Path, start: float = 0.0) -> None:
        self.control = tmp_path / "faketime"
        self.control.write_text(f"{start:+g}\n")
        env = dict(os.environ)
        env.update(
            # after any preload already there (make sanitize preloads ASan, which must
            # come first in the list)
            LD_PRELOAD=":".join(
                [p for p in os.environ.get("LD_PRELOAD", "").split(":") if p] + [str(LIBFAKETIME)]
            ),
            FAKETIME_TIMESTAMP_FILE=str(self.control),
            FAKETIME_NO_CACHE="1",
            FAKETIME_DONT_FAKE_MONOTONIC="1",
            PYTHONUNBUFFERED="1",
        )
        env.pop("FAKETIME", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), scenario],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []

    def expect(self, word: str) -> str:
        """The rest of the child's next line, which must start with `word`."""
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + PATIENCE
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(timeout=left):
                    raise AssertionError(f"no '{word}' line from the child; got {self.lines}")
                line = self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"the child ended before '{word}': {self.stderr()}")
                self.lines.append(line.rstrip("\n"))
                head, _, rest = line.strip().partition(" ")
                if head == word:
                    return rest
        finally:
            sel.close()

    def step(self, seconds: float) -> None:
        """Steps the child's wall clock to `seconds` from real time, then tells it."""
        tmp = self.control.with_suffix(".new")
        tmp.write_text(f"{seconds:+g}\n")
        tmp.replace(self.control)  # atomic: the child never reads half a file
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stderr(self) -> str:
        self.proc.kill()
        _, err = self.proc.communicate(timeout=PATIENCE)
        return err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=PATIENCE)


def run(scenario: str, step: float, tmp_path: Path) -> dict[str, Any]:
    """Runs `scenario` in a child, stepping its wall clock by `step` when it is ready."""
    child = FakedChild(scenario, tmp_path)
    try:
        before = float(child.expect("ready"))
        child.step(step)
        after = float(child.expect("stepped"))
        # The step really happened (otherwise the test would prove nothing).
        assert abs((after - before) - step) < 10.0, (before, after, step)
        result = json.loads(child.expect("result"))
        assert child.proc.wait(timeout=PATIENCE) == 0, child.stderr()
        return result
    finally:
        child.close()


def test_a_2s_retry_after_a_backward_step_comes_after_about_2s(tmp_path: Path) -> None:
    r = run("retry", -20.0, tmp_path)
    assert r["due"] is True
    assert 1.5 <= r["elapsed"] < 10.0, r  # it came after 22 s


def test_a_forward_step_does_not_make_a_retry_due_early(tmp_path: Path) -> None:
    r = run("retry", 60.0, tmp_path)
    assert r["early"] == [], r
    assert r["due"] is True
    assert 1.5 <= r["elapsed"] < 10.0, r


@pytest.mark.parametrize("step", [-20.0, 60.0])
def test_queue_wait_2_returns_after_about_2s(tmp_path: Path, step: float) -> None:
    r = run("wait", step, tmp_path)
    assert r["ready"] is False
    assert 1.5 <= r["elapsed"] < 10.0, r  # 22 s after a -20 s step; at once after +60


@pytest.mark.parametrize("step", [-20.0, 60.0])
def test_drain_2_returns_after_about_2s(tmp_path: Path, step: float) -> None:
    r = run("drain", step, tmp_path)
    assert r["successful"] == 0
    assert 1.5 <= r["elapsed"] < 10.0, r


def test_a_forward_step_does_not_expire_a_ttl_op(tmp_path: Path) -> None:
    r = run("ttl", 60.0, tmp_path)
    assert r["taken"] == [r["op"]], r  # it was dead-lettered as expired at once
    assert r["dead"] == []


@pytest.mark.parametrize("step", [-60.0, 60.0])
def test_oldest_pending_age_is_not_moved_by_a_step(tmp_path: Path, step: float) -> None:
    r = run("age", step, tmp_path)
    assert 0.0 <= r["age"] < 10.0, r  # it showed -60 s


@pytest.mark.parametrize("step", [-20.0, 60.0])
def test_a_02s_monitor_keeps_probing_across_a_step(tmp_path: Path, step: float) -> None:
    r = run("monitor", step, tmp_path)
    assert r["ok"], r  # one probe in 3 s
    assert r["elapsed"] < 10.0, r


def test_processes_started_on_either_side_of_a_step_share_one_timeline(tmp_path: Path) -> None:
    # A web worker started after an NTP step must store times on the consumer's
    # timeline, or its ops look due an hour (or years) late to the consumer. The
    # anchor is shared per user and boot (/dev/shm); this process made it first.
    here = cs.SystemClock()
    our_offset = here.now() - time.monotonic()
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    if not Path(f"/dev/shm/cpcsync-clock-{os.geteuid()}-{boot_id}").exists():
        pytest.skip("no shared anchor here (no /dev/shm): each process anchors alone")
    child = FakedChild("anchor", tmp_path, start=3600.0)  # its wall clock an hour ahead
    try:
        child.expect("ready")
        child.step(3600.0)
        child.expect("stepped")
        r = json.loads(child.expect("result"))
    finally:
        child.close()
    assert r["wall"] - time.time() > 3000.0, r  # libfaketime really moved its wall clock
    assert abs(r["offset"] - our_offset) < 1.0, (r, our_offset)
