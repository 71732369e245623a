"""The README's quickstart runs: offline, and against a real server.

The quickstart is marked a fragment (it names a server that does not exist), so
test_docs_examples.py does not run it; this file runs it with the server's address
replaced by a local SyncServer's. The README's test block runs in test_docs_examples.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cpcsync as cs
from _docs_blocks import README, python_blocks
from cpcsync.testing import SyncServer


def _python_blocks() -> list[str]:
    return [b.code for b in python_blocks(README)]


def _run_quickstart(where: Path, code: str) -> dict[str, object]:
    cwd = os.getcwd()
    os.chdir(where)
    try:
        scope: dict[str, object] = {}
        exec(compile(code, "README quickstart", "exec"), scope)
        return scope
    finally:
        os.chdir(cwd)


def test_quickstart_runs_offline_and_keeps_the_ops(tmp_path: Path) -> None:
    # No network here: the probe fails, so both ops wait on disk for the next run and
    # stop(drain=True) reports that it did not drain (after its timeout: shortened here).
    quickstart = _python_blocks()[0]
    assert "engine.stop(drain=True, timeout=30)" in quickstart
    code = quickstart.replace(
        "engine.stop(drain=True, timeout=30)", "drained = engine.stop(drain=True, timeout=0.5)"
    )
    scope = _run_quickstart(tmp_path, code)
    scope["queue"].close()  # type: ignore[attr-defined]
    assert scope["drained"] is False
    with cs.SyncQueue.open(tmp_path / "outbox.db", read_only=True) as q:
        assert [op.kind for op in q.peek(10)] == ["set_currency", "add_note"]


@pytest.mark.parametrize("run", range(20))  # 20 runs out of 20 must deliver
def test_quickstart_delivers_every_time_against_a_real_server(tmp_path: Path, run: int) -> None:
    # Before: stop(drain=True) returned at once while the monitor had not probed yet
    # (offline counted as idle), so about one run in five delivered nothing.
    with SyncServer() as server:
        host, port = "127.0.0.1", server.port
        code = (
            _python_blocks()[0]
            .replace("https://sync.example.org/ops", server.url)
            .replace('cs.TcpProbe("sync.example.org", 443)', f"cs.TcpProbe({host!r}, {port})")
            .replace(
                "engine.stop(drain=True, timeout=30)",
                "drained = engine.stop(drain=True, timeout=30)",
            )
        )
        assert server.url in code and "sync.example.org" not in code
        scope = _run_quickstart(tmp_path, code)
        scope["monitor"].stop()  # type: ignore[attr-defined]
        scope["queue"].close()  # type: ignore[attr-defined]
        assert scope["drained"] is True
        assert sorted(server.applied) == ["patient:9", "user:42"]
