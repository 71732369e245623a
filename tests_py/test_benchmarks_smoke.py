"""The scale, soak and server benchmarks work end to end at tiny sizes (behaviour only, no
timing).

`make bench` runs them at full size; these tests prove that their machinery (backlog
building, interleaved rounds, the SIGKILL/reopen scenario, the CLI calls, the soak's
per-minute record, the report's limits table and chart; the server group's receivers,
client processes and applied-op check, on SQLite and on PostgreSQL) does what it says.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_scale  # noqa: E402
import bench_soak  # noqa: E402
import harness  # noqa: E402


def test_scale_experiment_measures_every_case_and_cleans_up(tmp_path: Path) -> None:
    cfg = bench_scale.ScaleConfig(
        sizes=[200, 1_000],
        rounds=2,
        enqueue_full=5,
        enqueue_normal=10,
        take_ack=10,
        peek=5,
        fsync=3,
        reopen_size=1_000,
        dead_letters=5,
        reopen_trials=1,
        warmup=2,
    )
    r = bench_scale.run_experiment(cfg, tmp_path)
    for size in cfg.sizes:
        for d in bench_scale.DURABILITIES:
            for op in bench_scale.OPS:
                m = r.measurement(bench_scale.case_key(op, d, size))
                assert m is not None and m.ops > 0 and len(m.latencies_ns) == m.ops
    # enqueue counts per durability, pooled over the rounds
    m = r.measurement(bench_scale.case_key("enqueue", "normal", 200))
    assert m is not None and m.ops == cfg.rounds * cfg.enqueue_normal
    # the reopened queue delivered, with 1% of 1,000 ops leased by the killed consumer
    assert r.reopen_size == 1_000 and r.in_flight == 10
    (info,) = r.reopen
    assert info["got"] == 1 and info["in_flight_after"] == 1 and info["dead"] == 5
    assert len(r.cli["status"]) == 1 and len(r.cli["dead-letters"]) == 1
    assert r.peak_rss_mb > 0
    assert not list(tmp_path.glob("backlog-*")), "backlog files are deleted"


def test_scale_group_targets_compare_the_largest_size_with_10k() -> None:
    bench_scale.configure(scale_max=100_000)
    try:
        g = bench_scale.group()
    finally:
        bench_scale.configure()
    keys = {c.key for c in g.cases}
    assert "scale.enqueue.full.100000" in keys and "scale.reopen" in keys
    assert all(t.mode == "within" and t.factor == 1.5 for t in g.targets)
    assert {t.theirs.rsplit(".", 1)[1] for t in g.targets} == {"10000"}
    assert {t.ours.rsplit(".", 1)[1] for t in g.targets} == {"100000"}


def test_soak_delivers_everything_and_records_each_minute(tmp_path: Path) -> None:
    cfg = bench_soak.SoakConfig(ops=3_000, minutes=6, flap_period=30.0, warmup_minutes=1)
    r = bench_soak.run_soak(cfg, tmp_path)
    assert r.produced == 3_000
    assert r.delivered + r.dead == r.produced
    assert [m.minute for m in r.minutes] == list(range(6))
    assert all(m.calls >= m.delivered for m in r.minutes)
    assert sum(m.delivered for m in r.minutes) <= r.delivered
    assert r.rss_growth_pct(1) >= 0.0
    assert r.worst_deviation_pct(1) >= 0.0
    assert not list(tmp_path.glob("soak.db*"))


def test_report_has_a_limits_table_and_links_the_chart(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    m = harness.Measurement(10, 1_000_000, [100_000] * 10)
    slow = harness.Measurement(10, 2_000_000, [200_000] * 10)
    g = harness.Group(
        name="g",
        title="G",
        cases=[
            harness.Case("a", "A", 10, lambda d, n: m),
            harness.Case("b", "B", 10, lambda d, n: slow),
        ],
        targets=[harness.Target("b within 1.5x of a", "b", "a", 1.5, mode="within")],
        limits=lambda results: [
            harness.Limit("rss", 40.0, 150.0, "MB"),
            harness.Limit("seconds", 2.0, 1.0, "s"),
        ],
    )
    results = {"a": m, "b": slow}
    chart = tmp_path / "report.png"
    assert harness.write_chart(
        chart, harness.evaluate(g.targets, results), harness.all_limits([g], results)
    )
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    outcomes = harness.write_report(
        tmp_path / "report.md",
        facts=[],
        groups=[g],
        results=results,
        mode="test",
        chart=chart.name,
    )
    text = (tmp_path / "report.md").read_text()
    assert "## Limits" in text and "| rss | 40 MB | <= 150 MB | PASS |" in text
    assert "| seconds | 2 s | <= 1 s | MISS |" in text
    assert "(report.png)" in text
    (o,) = outcomes
    assert o.verdict.startswith("MISS")  # b is 2x slower than a


def test_server_group_measures_the_receiver_over_http_and_in_process(tmp_path: Path) -> None:
    """Tiny runs of the server group's machinery on SQLite: real `cpcsync serve`, client
    processes, every op checked applied in the changes feed (http_run raises otherwise)."""
    pytest.importorskip("uvicorn")
    import bench_server

    single = bench_server.http_run(
        f"sqlite:///{tmp_path / 'single.db'}", 40, batch=0, receiver_count=1, key="s", clients=1
    )
    assert single.ops == 40 and len(single.latencies_ns) == 40
    batch = bench_server.http_run(
        f"sqlite:///{tmp_path / 'batch.db'}",
        400,
        batch=bench_server.BATCH,
        receiver_count=2,
        key="b",
        clients=2,
        threads=1,
    )
    assert batch.ops == 400 and len(batch.latencies_ns) == 4
    assert "2 receivers; 2 client processes x 1 connection" in batch.note
    both = bench_server._inproc_sqlite(tmp_path, 1_000)
    assert [both[side].ops for side in ("receiver", "raw")] == [1_000, 1_000]


def test_server_group_targets_and_postgres_note() -> None:
    import bench_server

    g = bench_server.group()
    keys = {c.key for c in g.cases}
    assert {"server.http.sqlite.single", "server.http.sqlite.batch"} <= keys
    assert {"server.inproc.sqlite.raw", "server.inproc.sqlite.receiver"} <= keys
    assert {(t.mode, t.factor) for t in g.targets} == {("at_least", 10.0), ("within", 2.0)}
    missing = bench_server.postgres_missing()
    remarks = g.checks({}) if g.checks else []
    if missing:
        assert not any(".postgres." in k for k in keys)
        assert any("PostgreSQL cases did not run" in r for r in remarks)
    else:
        assert "server.http.postgres.batch.4rx" in keys and "server.inproc.postgres.raw" in keys


@pytest.mark.postgres
def test_server_group_on_postgres(request: pytest.FixtureRequest) -> None:
    """The PostgreSQL side at tiny sizes, on the test session's server."""
    pytest.importorskip("uvicorn")
    import bench_server

    if bench_server.postgres_missing():
        pytest.skip(str(bench_server.postgres_missing()))
    bench_server._PG.use(request.getfixturevalue("cpcsync_postgres_dsn"))
    try:
        m = bench_server.http_run(
            bench_server._PG.database(),
            400,
            batch=bench_server.BATCH,
            receiver_count=2,
            key="pg",
            clients=2,
            threads=1,
        )
        assert m.ops == 400 and "PostgreSQL" not in m.note  # not its cluster: no CPU figure
        both = bench_server._inproc_postgres(Path("."), 1_000)
        assert [both[side].ops for side in ("receiver", "raw")] == [1_000, 1_000]
    finally:
        bench_server._PG.use(None)
