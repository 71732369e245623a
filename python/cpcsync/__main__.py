"""``python -m cpcsync``: the cpcsync command line (see :mod:`cpcsync.cli`)."""

from __future__ import annotations

from cpcsync.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
