"""The runnable examples: each runs to completion and says what it should; all pass
``mypy --strict``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(name: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_sync_example_delivers_critical_first() -> None:
    out = _run("sync_example.py")
    assert "offline: 1001 operations queued" in out
    assert "while offline: ProcessingSummary(successful=0" in out
    assert "after reconnect: ProcessingSummary(successful=1001, retried=0, failed=0" in out
    assert "first delivered: set_currency {'currency': 'BTC'} (priority 100)" in out
    assert "queue now holds 0" in out


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_examples_pass_mypy_strict(name: str) -> None:
    mypy = Path(sys.executable).parent / "mypy"
    assert mypy.exists(), "mypy belongs to the test tools (scripts/bootstrap.sh installs it)"
    proc = subprocess.run(
        [str(mypy), "--strict", "--no-incremental", str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_full_integration_example_survives_its_faults() -> None:
    out = _run("full_integration_example.py")
    assert (
        "offline: reads from the local copy -> {'units': 35} ; server still has {'units': 40}"
        in out
    )
    assert "back:    server now has -> {'units': 35} {'today': 12}" in out
    assert "slow + 503s: delivered after retries -> {'units': 30}" in out
    assert "server applied 4 writes, each once: True" in out
