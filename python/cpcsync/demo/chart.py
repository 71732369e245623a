"""The demo's timeline chart: the faults, queue depth by priority, and enqueued vs applied.

Three panels on one time axis (the whole run, users and final drain):

- the faults, one lane each for the link (the fault proxy), the server and the client;
- the client's queue depth by priority, stacked, with the link's down times shaded;
- how many operations the users had enqueued and the server had applied.

Labels sit in their own lanes or outside the plots, so none overprints another.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cpcsync.demo.plan import Plan
    from cpcsync.demo.runner import RunState

__all__ = ["COLORS", "NAMES", "write_chart"]

NAMES = {100: "critical", 75: "high", 50: "medium", 25: "low"}
"""Priority -> name, highest first."""
COLORS = {100: "#c0392b", 75: "#e67e22", 50: "#2980b9", 25: "#95a5a6"}
"""Priority -> colour of its band."""

_LANES = {"link": 2, "server": 1, "client": 0}
_LANE_COLORS = {"link": "#34495e", "server": "#8e44ad", "client": "#c0392b"}
_DOWN = "#34495e"


def write_chart(path: Path, state: RunState, plan: Plan) -> bool:
    """Write the PNG; False (and nothing written) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError:
        return False

    with state.lock:
        samples = [s for s in state.samples if s.get("event") == "status"]
        counts = list(state.counts)
        down = list(state.down)
        kills = list(state.kills)
        done = [e["t"] for e in state.events if e.get("event") == "done"]
    end = max([plan.users_until, *(s["t"] for s in samples), *(c[0] for c in counts), *done])
    x_max = end * 1.02

    fig, (lanes, ax, ax2) = plt.subplots(
        3, 1, figsize=(12, 7.5), sharex=True, gridspec_kw={"height_ratios": [1.1, 3, 1.5]}
    )
    fig.suptitle(
        f"cpcsync demo: {plan.duration:.0f} s of users, then the queue drains", fontsize=13
    )

    # -- the faults, one lane each: labels inside a wide bar, else right of it
    lanes.set_xlim(0, x_max)
    lanes.set_ylim(-0.6, len(_LANES) - 0.4)
    lanes.set_yticks(list(_LANES.values()), list(_LANES))
    lanes.tick_params(axis="y", length=0)
    for side in ("top", "right", "left"):
        lanes.spines[side].set_visible(False)
    lanes.set_title("faults", loc="left", fontsize=9, color="#555555")
    for ph in plan.phases:
        y = _LANES[ph.lane]
        color = _LANE_COLORS[ph.lane]
        lanes.broken_barh(
            [(ph.start, max(ph.end - ph.start, 0.004 * x_max))],
            (y - 0.3, 0.6),
            color=color,
            alpha=0.35,
        )
        label = "killed, restarted" if ph.lane == "client" else ph.label
        # about 0.0055 of the axis per character at this size: inside when it fits
        if ph.end - ph.start >= (len(label) + 2) * 0.0055 * x_max:
            lanes.text((ph.start + ph.end) / 2, y, label, ha="center", va="center", fontsize=8)
        else:
            lanes.text(ph.end + 0.005 * x_max, y, label, ha="left", va="center", fontsize=8)
    lanes.text(
        plan.users_until - 0.005 * x_max,
        _LANES["client"],
        "users stop, queue drains",
        ha="right",
        va="center",
        fontsize=8,
    )

    # -- queue depth by priority, link-down times shaded
    t = [s["t"] for s in samples]
    if t:
        ax.stackplot(
            t,
            [[s["depth"].get(str(p), 0) for s in samples] for p in NAMES],
            labels=[f"{NAMES[p]} pending" for p in NAMES],
            colors=[COLORS[p] for p in NAMES],
            alpha=0.9,
            step="post",
        )
    for a, b in down:
        for axis in (ax, ax2):
            axis.axvspan(a, b, color=_DOWN, alpha=0.12, lw=0)
    for axis in (ax, ax2):
        for k in kills:
            axis.axvline(k, color="black", ls="--", lw=0.9)
    for axis in (lanes, ax, ax2):
        axis.axvline(plan.users_until, color="black", ls=":", lw=0.9)
    ax.set_ylabel("operations pending\n(client queue)")
    ax.set_ylim(bottom=0)
    handles, _labels = ax.get_legend_handles_labels()
    handles += [
        Patch(color=_DOWN, alpha=0.12, label="link down"),
        Line2D([], [], color="black", ls="--", lw=0.9, label="client killed"),
        Line2D([], [], color="black", ls=":", lw=0.9, label="users stop"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)

    # -- enqueued by the users vs applied on the server
    if counts:
        ct = [c[0] for c in counts]
        ax2.step(ct, [c[1] for c in counts], where="post", color="#2c3e50", label="enqueued")
        ax2.step(
            ct, [c[2] for c in counts], where="post", color="#27ae60", label="applied on server"
        )
    ax2.set_ylabel("operations")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("seconds since the start")
    ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax2.set_xlim(0, x_max)

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
