"""The demo's live display: a rich table on a terminal, plain lines otherwise.

Each row shows what the run is doing (the fault under way, from the plan), what the
client's network monitor believes (it lags the link by a probe or two), the client's
queue by priority, how many operations the users enqueued and how many the server
has applied (each once, however often it was delivered), and the retries and
conflicts of every client process so far.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from cpcsync.demo.chart import NAMES
from cpcsync.demo.plan import Plan
from cpcsync.demo.runner import RunState


def row(state: RunState, plan: Plan) -> dict[str, Any]:
    """The figures one progress line or table row shows, at the current time."""
    t = state.now()
    retried, conflicts = state.total("retried"), state.total("conflicts")
    with state.lock:
        last = dict(state.last)
        pid, enqueued, applied = state.client_pid, state.enqueued, state.applied
    if pid is None:
        client = "killed"
    elif last.get("pid") != pid:
        client = "starting"  # no status line from this process yet
    else:
        client = str(last.get("network", "connecting"))
    depth = last.get("depth", {})
    return {
        "t": t,
        "phase": plan.phase_at(t),
        "client": client,
        "depth": " ".join(f"{NAMES[p][0].upper()}:{depth.get(str(p), 0)}" for p in NAMES),
        "enqueued": enqueued,
        "applied": applied,
        "retried": retried,
        "conflicts": conflicts,
        "restarts": state.restarts,
    }


class PlainDisplay:
    """One line every two seconds, and a last one at the end (for logs and CI)."""

    def __init__(self) -> None:
        self._next = 0.0

    def update(self, state: RunState, plan: Plan, final: bool = False) -> None:
        """Print a progress line if one is due (always when ``final``)."""
        if time.monotonic() < self._next and not final:
            return
        self._next = time.monotonic() + 2.0
        r = row(state, plan)
        print(
            f"[{r['t']:5.1f}s] {r['phase']:<18} client {r['client']:<10} pending "
            f"{r['depth']:<24} enqueued {r['enqueued']:>4}  applied {r['applied']:>4}  "
            f"retries {r['retried']:>3}  conflicts {r['conflicts']}",
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

    def update(self, state: RunState, plan: Plan, final: bool = False) -> None:
        """Redraw the table with the latest figures."""
        from rich.table import Table

        r = row(state, plan)
        table = Table(title=f"cpcsync demo  t={r['t']:.1f}s  ({r['phase']})", min_width=72)
        for col in (
            "client network",
            "pending by priority",
            "enqueued",
            "applied",
            "retries",
            "conflicts",
            "restarts",
        ):
            table.add_column(col, justify="right")
        colour = {"online": "green", "offline": "red", "killed": "red"}.get(r["client"], "yellow")
        table.add_row(
            f"[{colour}]{r['client']}[/]",
            r["depth"],
            str(r["enqueued"]),
            str(r["applied"]),
            str(r["retried"]),
            str(r["conflicts"]),
            str(r["restarts"]),
        )
        self._live.update(table, refresh=final)

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
