"""``demo`` and ``bench``: thin hooks that hand their arguments to other programs.

``cpcsync demo ARGS...`` calls ``cpcsync.demo.main(ARGS)``; ``cpcsync bench ARGS...``
runs ``benchmarks/run.py ARGS`` of a source checkout with this Python. Arguments are
passed through untouched (``cpcsync demo --help`` shows the demo's own help).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import cpcsync
from cpcsync.cli.access import EXIT_OK, EXIT_USAGE, CliError

__all__ = ["HOOKS", "find_bench_script", "run_bench", "run_demo"]


def run_demo(argv: Sequence[str]) -> int:
    """Run ``cpcsync.demo.main(argv)``; a missing demo is a one-line error (exit 2)."""
    try:
        module = importlib.import_module("cpcsync.demo")
    except ModuleNotFoundError as exc:
        if exc.name == "cpcsync.demo":
            raise CliError(
                "demo: not available (cpcsync.demo is not installed)", EXIT_USAGE
            ) from None
        raise CliError(f"demo: cannot start: {exc}", EXIT_USAGE) from exc
    except ImportError as exc:
        raise CliError(f"demo: cannot start: {exc}", EXIT_USAGE) from exc
    entry = getattr(module, "main", None)
    if not callable(entry):
        raise CliError("demo: cpcsync.demo has no main()", EXIT_USAGE)
    result = entry(list(argv))
    return result if isinstance(result, int) else EXIT_OK


def source_root() -> Path:
    """The directory two levels above the package (the checkout root when cpcsync is
    imported from ``python/cpcsync`` in a source tree)."""
    return Path(cpcsync.__file__).resolve().parent.parent.parent


def find_bench_script() -> Path | None:
    """``benchmarks/run.py`` under the current directory, else under :func:`source_root`."""
    for base in (Path.cwd(), source_root()):
        script = base / "benchmarks" / "run.py"
        if script.is_file():
            return script
    return None


def run_bench(argv: Sequence[str]) -> int:
    """Run ``benchmarks/run.py argv`` with this interpreter; its exit status is ours."""
    script = find_bench_script()
    if script is None:
        raise CliError(
            "bench: benchmarks/run.py not found (run from a cpcsync source checkout)",
            EXIT_USAGE,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    rc = subprocess.run([sys.executable, str(script), *argv], check=False).returncode
    return 128 - rc if rc < 0 else rc  # killed by a signal: the shell's convention


HOOKS = {
    "demo": (run_demo, "run the live demo (cpcsync.demo); arguments go to it"),
    "bench": (run_bench, "run benchmarks/run.py of a source checkout; arguments go to it"),
}
"""Hook commands: name -> (runner, one-line help)."""
