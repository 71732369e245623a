"""The demo's live display: a rich table on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from cpcsync.demo.chart import NAMES
from cpcsync.demo.plan import Plan
from cpcsync.demo.runner import RunState


def _row(state: RunState, plan: Plan) -> dict[str, Any]:
    with state.lock:
        last = dict(state.last)
    t = state.now()
    depth = last.get("depth", {})
    return {
        "t": t,
        "phase": plan.phase_at(t),
        "net": "up" if last.get("connected") else "down",
        "depth": " ".join(f"{NAMES[p][0].upper()}:{depth.get(str(p), 0)}" for p in NAMES),
        "delivered": last.get("delivered_total", 0),
        "retried": last.get("retried", 0),
        "conflicts": last.get("conflicts", 0),
        "enqueued": last.get("enqueued", 0),
        "restarts": state.restarts,
    }


class PlainDisplay:
    """One line every two seconds (for logs and CI)."""

    def __init__(self) -> None:
        self._next = 0.0

    def update(self, state: RunState, plan: Plan) -> None:
        """Print a progress line if one is due."""
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + 2.0
        r = _row(state, plan)
        print(
            f"[{r['t']:5.1f}s] {r['phase']:<18} network {r['net']:<4} pending {r['depth']:<28}"
            f" enqueued {r['enqueued']:>4}  delivered {r['delivered']:>4}  retries "
            f"{r['retried']:>4}  conflicts {r['conflicts']}",
            flush=True,
        )

    def close(self) -> None:
        """Nothing to tear down."""


class LiveDisplay:
    """A rich Live table refreshed four times a second."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self._console = Console()
        self._live = Live(console=self._console, refresh_per_second=4, transient=False)
        self._live.start()

    def update(self, state: RunState, plan: Plan) -> None:
        """Redraw the table with the latest client status."""
        from rich.table import Table

        r = _row(state, plan)
        table = Table(title=f"cpcsync demo  t={r['t']:.1f}s  ({r['phase']})", min_width=72)
        for col in (
            "network",
            "pending by priority",
            "enqueued",
            "delivered",
            "retries",
            "conflicts",
            "restarts",
        ):
            table.add_column(col, justify="right")
        net = "[green]up[/]" if r["net"] == "up" else "[red]down[/]"
        table.add_row(
            net,
            r["depth"],
            str(r["enqueued"]),
            str(r["delivered"]),
            str(r["retried"]),
            str(r["conflicts"]),
            str(r["restarts"]),
        )
        self._live.update(table)

    def close(self) -> None:
        """Stop the live region (the last table stays on screen)."""
        self._live.stop()


def make_display(live: bool) -> PlainDisplay | LiveDisplay:
    """A live table when asked for and stdout is a terminal, else plain lines."""
    if live and sys.stdout.isatty():
        try:
            return LiveDisplay()
        except ImportError:
            pass
    return PlainDisplay()
