"""The demo's timeline chart: queue depth by priority and network state over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

NAMES = {100: "critical", 75: "high", 50: "medium", 25: "low"}
COLORS = {100: "#c0392b", 75: "#e67e22", 50: "#2980b9", 25: "#7f8c8d"}


def write_chart(
    path: Path,
    samples: list[dict[str, Any]],
    down: list[tuple[float, float]],
    kills: list[float],
    phases: tuple[tuple[float, float, str], ...],
) -> bool:
    """Write the PNG; False (and nothing written) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    status = [s for s in samples if s.get("event") == "status"]
    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    t = [s["t"] for s in status]
    stacks = [[s["depth"].get(str(p), 0) for s in status] for p in NAMES]
    if t:
        ax.stackplot(
            t,
            stacks,
            labels=[f"{NAMES[p]} pending" for p in NAMES],
            colors=[COLORS[p] for p in NAMES],
            alpha=0.85,
            step="post",
        )
    for a, b in down:
        for axis in (ax, ax2):
            axis.axvspan(a, b, color="#34495e", alpha=0.15, lw=0)
    for k in kills:
        for axis in (ax, ax2):
            axis.axvline(k, color="black", ls="--", lw=1)
        ax.annotate(
            "client killed", (k, ax.get_ylim()[1] * 0.92), rotation=90, fontsize=8, ha="right"
        )
    for start, _end, label in phases:
        ax.annotate(
            label,
            (start, 0),
            xytext=(2, 4),
            textcoords="offset points",
            fontsize=7,
            color="#34495e",
        )
    ax.set_ylabel("operations pending")
    ax.set_title("cpcsync demo: queue depth by priority (shaded: network down)")
    ax.legend(loc="upper left", fontsize=8)
    ax2.step(t, [s["delivered_total"] for s in status], where="post", color="#27ae60")
    ax2.set_ylabel("delivered")
    ax2.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
