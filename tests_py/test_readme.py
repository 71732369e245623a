"""The README's code runs: the quickstart as a script, its test through pytest."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import cpcsync as cs

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_quickstart_runs_offline_and_keeps_the_ops(tmp_path: Path) -> None:
    quickstart = _python_blocks()[0]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        scope: dict[str, object] = {}
        exec(compile(quickstart, "README quickstart", "exec"), scope)
        scope["queue"].close()  # type: ignore[attr-defined]
    finally:
        os.chdir(cwd)
    # No network here: the probe fails, so both ops wait on disk for the next run.
    with cs.SyncQueue.open(tmp_path / "outbox.db", read_only=True) as q:
        assert [op.kind for op in q.peek(10)] == ["set_currency", "add_note"]


def test_readme_test_passes_under_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_from_readme=_python_blocks()[1])
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
