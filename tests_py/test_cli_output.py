"""The ``cpcsync`` command line as a newcomer meets it: help that points at documentation
a pip user has, tables that do not wrap into a pipe, one clear line for a queue in a
read-only folder, and the demo's hint when matplotlib is missing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib

import cpcsync as cs
from cpcsync.cli import build_parser, main
from cpcsync.demo import CHART_HINT

REPO = Path(__file__).resolve().parent.parent
ERROR_LINE = re.compile(r"^cpcsync: error: \S.*\n$")
COMMANDS = ("status", "list", "dead-letters", "export", "requeue", "purge")


def _cli(
    *argv: str, env: dict[str, str] | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    """``python -m cpcsync ARGV`` in a real process, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "cpcsync", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        **kw,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------ help


def test_help_points_at_documentation_that_is_installed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    texts = []
    for argv in (["--help"], *([c, "--help"] for c in COMMANDS)):
        assert main(argv) == 0
        texts.append(capsys.readouterr().out)
    for text in texts:
        # a pip user has no checkout: no repository paths, no design notes
        assert not re.search(r"docs/|\.md\b|DESIGN|issue \d", text), text
    top = " ".join(texts[0].split())
    assert "python -m pydoc cpcsync.cli" in top
    assert "python -m pydoc cpcsync.cli" in " ".join(texts[1].split())  # status --json
    # and that reference is there, in the installed package
    ref = subprocess.run(
        [sys.executable, "-m", "pydoc", "cpcsync.cli"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "PAGER": "cat"},
    ).stdout
    for needed in ("Exit status", "last_errors", "oldest_pending_age", "payload_encoding"):
        assert needed in ref, needed
    assert "docs/" not in ref


def test_every_help_text_of_the_parser_is_free_of_repository_paths() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():  # type: ignore[union-attr]
        for action in p._actions:
            assert "docs/" not in (action.help or ""), (name, action.help)
        assert "docs/" not in (p.description or ""), name


# ------------------------------------------------------------------ list into a pipe


@pytest.fixture
def wide_queue(tmp_path: Path) -> Path:
    path = tmp_path / "q.db"
    with cs.SyncQueue.open(path) as q:
        for i in range(5):
            q.enqueue(
                "update_patient_record_with_a_long_kind",
                {"note": "follow-up in two weeks, bring the lab results", "i": i},
                key=f"patient:{i}-clinic-seven-north-wing",
                priority=50,
            )
    return path


def test_list_into_a_pipe_keeps_one_line_per_operation(wide_queue: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = _cli("list", str(wide_queue), env=env)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if "patient:" in line]
    assert len(rows) == 5, proc.stdout  # rich's 80 columns would fold every cell
    for i, line in enumerate(rows):
        assert "update_patient_record_with_a_long_kind" in line
        assert f"patient:{i}-clinic-seven-north-wing" in line
    assert len(max(rows, key=len)) > 80


def test_list_honours_columns_when_set(wide_queue: Path) -> None:
    proc = _cli("list", str(wide_queue), env={**os.environ, "COLUMNS": "70"})
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 70


# ------------------------------------------------------------------ read-only folder


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A queue in a folder the CLI's user cannot write (chmod 555), and the command
    prefix that runs the CLI as such a user: root writes anywhere, so as root the CLI
    runs without the capabilities that let it (setpriv, from util-linux)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    with cs.SyncQueue.open(folder / "q.db") as q:
        q.enqueue("k", {"a": 1})
    folder.chmod(0o555)
    prefix: list[str] = []
    if os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search,-fowner"
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]
    try:
        yield folder, prefix
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("command", ["status", "list", "export"])
def test_a_queue_in_a_read_only_folder_is_one_clear_line(
    read_only_folder: tuple[Path, list[str]], command: str
) -> None:
    folder, prefix = read_only_folder
    path = folder / "q.db"
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "cpcsync", command, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    err = proc.stderr
    assert ERROR_LINE.match(err), err
    assert not re.search(r"execute '|prepare '|SELECT |PRAGMA |SQLite code", err), err
    assert "folder is not writable" in err and "q.db-wal" in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["q.db"]


# ------------------------------------------------------------------ the demo's chart hint


def test_the_demo_says_how_to_get_its_chart(tmp_path: Path) -> None:
    # the hint names an extra that exists and brings matplotlib
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(d.startswith("matplotlib") for d in extras["demo"])
    assert CHART_HINT == "pip install 'cpcsync[demo]'"
    chart = tmp_path / "c.png"
    # a real run through the CLI, in a Python where matplotlib cannot be imported
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from cpcsync.cli import main\n"
        f"sys.exit(main(['demo', '--duration', '10', '--no-live', '--seed', '2', "
        f"'--workdir', {str(tmp_path / 'run')!r}, '--chart', {str(chart)!r}]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "timeline chart skipped: matplotlib is not installed (pip install 'cpcsync[demo]')"
        in proc.stdout
    ), proc.stdout
    assert not chart.exists()
