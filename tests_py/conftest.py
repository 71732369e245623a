# pyproject runs pytest with --import-mode=importlib, which does not put tests_py/ on
# sys.path; the queue tests import their helper modules (_helpers, queue_model) by
# name, and spawned child processes import _helpers by name too.
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
