"""The demo's verdict: was every operation applied exactly once, critical ones first?"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Verdict:
    """What the run proved (or not); ``ok`` when every check passed."""

    enqueued: int = 0
    applied: int = 0
    superseded: int = 0
    duplicates: list[str] = field(default_factory=list)  # applied more than once
    missing: list[str] = field(default_factory=list)  # enqueued, never applied nor superseded
    phantoms: list[str] = field(default_factory=list)  # applied, never enqueued
    reconnects: int = 0
    critical_first_failures: list[dict[str, Any]] = field(default_factory=list)
    drain_seconds: float | None = None

    @property
    def ok(self) -> bool:
        """True when nothing was lost, duplicated or invented, and every first call
        after a reconnect carried the highest ready priority."""
        return (
            not (self.duplicates or self.missing or self.phantoms or self.critical_first_failures)
            and self.enqueued > 0
        )

    def lines(self) -> list[str]:
        """The verdict as printable lines."""
        mark = {True: "PASS", False: "FAIL"}
        out = [
            f"{mark[not self.missing]}  every enqueued operation completed: {self.enqueued} "
            f"enqueued = {self.applied} applied + {self.superseded} superseded by a newer "
            f"remote write" + (f"; missing {self.missing[:5]}" if self.missing else ""),
            f"{mark[not self.duplicates]}  applied exactly once on the server"
            + (f"; duplicated {self.duplicates[:5]}" if self.duplicates else ""),
            f"{mark[not self.phantoms]}  nothing applied that was not enqueued"
            + (f"; phantoms {self.phantoms[:5]}" if self.phantoms else ""),
            f"{mark[not self.critical_first_failures]}  highest ready priority first after "
            f"each of {self.reconnects} reconnects"
            + (
                f"; violations {self.critical_first_failures[:3]}"
                if self.critical_first_failures
                else ""
            ),
        ]
        if self.drain_seconds is not None:
            out.append(
                f"      drained {self.drain_seconds:.1f} s after the link came back for good"
            )
        return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a torn line from a kill mid-write
    return rows


def judge(
    workdir: Path,
    server_log: list[dict[str, Any]],
    client_events: list[dict[str, Any]],
    back_online_at: float | None,
) -> Verdict:
    """Compare the client's ledger with what the server applied."""
    intents = {str(r["idempotency_key"]) for r in _read_jsonl(workdir / "ledger.jsonl")}
    superseded = {str(r["idempotency_key"]) for r in _read_jsonl(workdir / "superseded.jsonl")}
    counts = Counter(
        str(b["idempotency_key"])
        for b in server_log
        if str(b.get("idempotency_key", "")).startswith("demo-")
    )
    applied = set(counts)
    v = Verdict(
        enqueued=len(intents),
        applied=len(applied & intents),
        superseded=len((superseded - applied) & intents),
    )
    v.duplicates = sorted(k for k, n in counts.items() if n > 1)
    v.missing = sorted(intents - applied - superseded)
    v.phantoms = sorted(applied - intents)
    firsts = [e for e in client_events if e.get("event") == "first_after_reconnect"]
    v.reconnects = len(firsts)
    v.critical_first_failures = [e for e in firsts if e["priority"] < e["max_ready"]]
    done = [e["t"] for e in client_events if e.get("event") == "done"]
    if done and back_online_at is not None:
        v.drain_seconds = max(0.0, done[-1] - back_online_at)
    return v
