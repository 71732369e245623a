"""cpcsync's pytest plugin itself (cpcsync.testing.plugin), tested with ``pytester``.

The generated projects run under the same strict settings as this repository's own
suite (--strict-markers, --strict-config, --import-mode=importlib, every warning an
error), so a plugin that warns, leaks a socket or a thread, or needs a marker it does
not register fails here the way it would fail a strict user.
"""

from __future__ import annotations

import importlib.metadata
import re

import pytest

import cpcsync.testing.plugin as plugin_module

pytest_plugins = ["pytester"]

# name -> scope, for every fixture the plugin defines (short names without the prefix).
SHORT_FIXTURES = {
    "virtual_clock_start": "function",
    "virtual_clock": "function",
    "sync_queue_options": "function",
    "sync_queue": "function",
    "network": "function",
    "faulty_transport": "function",
    "sync_engine_options": "function",
    "sync_engine": "function",
    "simulation": "function",
    "sync_server_session": "session",
    "sync_server": "function",
    "fault_proxy": "function",
    "postgres_dsn": "session",
    "postgres_db": "function",
}
FIXTURES = {f"cpcsync_{name}": scope for name, scope in SHORT_FIXTURES.items()}
_NAMES = re.compile(r"\b({})\b".format("|".join(sorted(SHORT_FIXTURES, key=len, reverse=True))))


def prefixed(source: str) -> str:
    """``source`` with every short fixture name given its ``cpcsync_`` prefix."""
    return _NAMES.sub(r"cpcsync_\1", source)


STRICT_INI = """
[pytest]
addopts = --strict-markers --strict-config --import-mode=importlib -p no:cacheprovider
filterwarnings = error
xfail_strict = true
"""


@pytest.fixture
def strict(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester project configured as strictly as this repository."""
    pytester.makeini(STRICT_INI)
    return pytester


def test_entry_point_registers_the_plugin(pytestconfig: pytest.Config) -> None:
    """The pytest11 entry point names cpcsync.testing.plugin, and pytest loaded it in
    this very session under that name (nothing in our conftest imports it)."""
    eps = [ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.name == "cpcsync"]
    assert [ep.value for ep in eps] == ["cpcsync.testing.plugin"]
    assert eps[0].load() is plugin_module
    assert pytestconfig.pluginmanager.get_plugin("cpcsync") is plugin_module


def _fixture_blocks(lines: list[str], module: str) -> dict[str, tuple[str, str]]:
    """Parse ``pytest --fixtures`` output: the section of ``module``
    (``cpcsync.testing.plugin``, ``cpcsync.testing.short_names``), as
    name -> (scope, docstring text)."""
    title = f"fixtures defined from {module} "
    start = next(i for i, line in enumerate(lines) if title in line)
    header = re.compile(r"^(\w+)(?: \[(\w+) scope\])? -- (.+):(\d+)$")
    blocks: dict[str, tuple[str, str]] = {}
    name: str | None = None
    for line in lines[start + 1 :]:
        if line.startswith("---") or line.startswith("==="):
            break  # the next section
        m = header.match(line)
        if m:
            name = m.group(1)
            assert module.replace(".", "/") + ".py" in m.group(3), line
            blocks[name] = (m.group(2) or "function", "")
        elif name is not None and line.startswith("    "):
            scope, doc = blocks[name]
            blocks[name] = (scope, f"{doc} {line.strip()}".strip())
    return blocks


def test_pytest_fixtures_lists_every_fixture_with_scope_type_default(
    strict: pytest.Pytester,
) -> None:
    """``pytest --fixtures`` lists exactly the plugin's fixtures, each with a docstring
    stating its Scope (matching the real scope), Type and Default; and every short
    name, each saying which ``cpcsync_*`` fixture it stands for."""
    strict.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = strict.runpytest("--fixtures")
    assert result.ret == 0
    blocks = _fixture_blocks(result.outlines, "cpcsync.testing.plugin")
    short = _fixture_blocks(result.outlines, "cpcsync.testing.short_names")
    assert set(blocks) == set(FIXTURES)
    assert set(short) == set(SHORT_FIXTURES)
    for name, (scope, doc) in [*blocks.items(), *short.items()]:
        assert scope == {**FIXTURES, **SHORT_FIXTURES}[name], name
        assert f"Scope: {scope}." in doc, (name, doc)
        assert "Type: " in doc and "Default: " in doc, (name, doc)
    for name, (_, doc) in short.items():
        assert f"Default: ``cpcsync_{name}``." in doc, (name, doc)
    assert "cpcsync.SyncQueue" in blocks["cpcsync_sync_queue"][1]
    assert "tmp_path" in blocks["cpcsync_sync_queue"][1]
    assert '{"durability": "normal"}' in blocks["cpcsync_sync_queue_options"][1]
    assert "Default: 0.0" in blocks["cpcsync_virtual_clock_start"][1]


def test_short_names_off_leaves_only_the_prefixed_fixtures(strict: pytest.Pytester) -> None:
    """With ``cpcsync_short_names = false`` a suite's own ``network`` fixture (here a
    string) is its own business: the plugin's fixtures neither offer nor use it."""
    strict.makeini(STRICT_INI + "cpcsync_short_names = false\n")
    strict.makeconftest(
        "import pytest\n\n@pytest.fixture\ndef network():\n    return 'docker-net-1'\n"
    )
    strict.makepyfile(
        test_own="""
import cpcsync as cs

def test_own_network_untouched(network, cpcsync_sync_engine, cpcsync_network, cpcsync_simulation):
    assert network == 'docker-net-1'
    assert isinstance(cpcsync_network, cs.NetworkMonitor)
    assert cpcsync_simulation.monitor is cpcsync_network
    assert cpcsync_simulation.engine is cpcsync_sync_engine

def test_short_name_is_gone(sync_engine):
    pass
"""
    )
    result = strict.runpytest("-v")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'sync_engine' not found*"])
    fixtures = strict.runpytest("--fixtures")
    assert not any("cpcsync.testing.short_names" in line for line in fixtures.outlines)


FRESH_TESTS = """
import cpcsync as cs

SEEN = {}


def test_first(sync_queue, virtual_clock, network, faulty_transport, sync_engine,
               simulation, sync_server):
    assert virtual_clock.now() == 0.0
    assert simulation.engine is sync_engine and simulation.transport is faulty_transport
    assert simulation.monitor is network
    first = sync_queue.enqueue("set", {"v": 1}, key="x")
    faulty_transport.fail_next(1)
    assert simulation.run_until_idle()
    assert faulty_transport.outcomes() == ["transient", "delivered"]
    assert virtual_clock.now() == 1.0  # the default backoff's first delay

    # Leave state everywhere for the next test to (not) see.
    virtual_clock.advance(100.0)
    network.set_connected(False)
    sync_queue.enqueue("set", {"v": 2}, key="x")
    sync_queue.enqueue("set", {"v": 3}, key="y")
    faulty_transport.fail_next(3, "permanent")
    faulty_transport.set_latency(5.0)
    with cs.HttpTransport(sync_server.url) as http:
        http(sync_queue.peek(1)[0])
    assert sync_server.applied["x"]["version"] == 1
    sync_server.fail_next(4, status=503)
    SEEN.update(port=sync_server.port, path=sync_queue.path, first=first)


def test_second(sync_queue, virtual_clock, network, faulty_transport, sync_engine,
                simulation, sync_server):
    assert len(sync_queue) == 0 and sync_queue.dead_letters() == []
    assert sync_queue.path != SEEN["path"]  # a new file in this test's tmp_path
    assert virtual_clock.now() == 0.0
    assert network.is_connected
    assert faulty_transport.history == []
    assert sync_server.port == SEEN["port"]  # the same session server...
    assert sync_server.applied == {} and sync_server.received == []  # ...reset
    assert sync_server.requests == []

    op = sync_queue.enqueue("set", {"v": 9}, key="x")
    with cs.HttpTransport(sync_server.url) as http:
        http(sync_queue.peek(1)[0])  # no 503 left over from test_first
    assert sync_server.applied["x"]["version"] == 1
    assert simulation.run_until_idle()
    # No fault, no latency left over in the transport; a fresh engine.
    assert [(a.op_id, a.outcome, a.time, a.latency) for a in faulty_transport.history] == [
        (op, "delivered", 0.0, 0.0)
    ]
    assert sync_engine.stats()["delivered"] == 1
"""


def test_fixtures_work_without_import_and_are_fresh_per_test(strict: pytest.Pytester) -> None:
    """A generated test file uses the fixtures without importing anything from the
    plugin; state a test leaves (queue contents, clock, network, scripted faults,
    server state and scripted 503s) is not seen by the next test."""
    strict.makepyfile(test_fresh=FRESH_TESTS, test_fresh_prefixed=prefixed(FRESH_TESTS))
    result = strict.runpytest("-v")
    result.assert_outcomes(passed=4)


OVERRIDE_CONFTEST = """
import pytest

import cpcsync as cs
from cpcsync.testing import FaultyTransport


@pytest.fixture
def virtual_clock_start():
    return 1_700_000_000.0


@pytest.fixture
def sync_queue_options():
    return {"durability": "off", "max_ops": 3}


class FarEnd:
    def __init__(self):
        self.got = []
        self.refuse = set()

    def __call__(self, op):
        if op.id in self.refuse:
            raise cs.TransientError("HTTP 503")
        self.got.append(op.id)


@pytest.fixture
def far_end():
    return FarEnd()


@pytest.fixture
def faulty_transport(virtual_clock, far_end):
    ft = FaultyTransport(inner=far_end, latency=0.5, seed=1, clock=virtual_clock)
    yield ft
    ft.close()


@pytest.fixture
def sync_engine_options(sync_engine_options):
    return {**sync_engine_options, "max_attempts": 2}
"""

OVERRIDE_TESTS = """
import pytest

import cpcsync as cs

T0 = 1_700_000_000.0


def test_overrides_reach_the_fixtures_built_on_them(
        virtual_clock, sync_queue, network, faulty_transport, sync_engine, simulation, far_end):
    # virtual_clock_start -> virtual_clock -> sync_queue, network, faulty_transport
    assert virtual_clock.now() == T0
    assert sync_queue.clock.now() == T0 and network.clock.now() == T0
    assert faulty_transport.clock.now() == T0
    # sync_queue_options -> sync_queue
    ids = [sync_queue.enqueue("set", {"n": n}, key=f"k{n}") for n in range(3)]
    with pytest.raises(cs.QueueFullError):
        sync_queue.enqueue("set", {"n": 3}, key="k3")
    # faulty_transport -> sync_engine, simulation
    assert simulation.transport is faulty_transport
    far_end.refuse.add(ids[0])
    assert simulation.run_until_idle()
    assert far_end.got == ids[1:]
    history = faulty_transport.history
    assert [a.time - T0 for a in history] == [0.0, 0.5, 1.0, 1.5]
    assert {a.latency for a in history} == {0.5}
    # sync_engine_options (extending the plugin's own) -> sync_engine: with
    # max_attempts=2 the refused op is dead after its second attempt
    assert [a.op_id for a in history if a.outcome == "transient"] == [ids[0], ids[0]]
    assert [(d.id, d.attempts) for d in sync_queue.dead_letters()] == [(ids[0], 2)]


def test_defaults_not_overridden_stay_the_plugins(sync_engine_options):
    backoff = sync_engine_options["backoff"]
    assert [backoff.next_delay(n) for n in range(1, 5)] == [1.0, 2.0, 4.0, 8.0]
    assert sync_engine_options["max_attempts"] == 2
"""


@pytest.mark.parametrize(
    ("conftest_names", "test_names"),
    [("short", "short"), ("prefixed", "prefixed"), ("prefixed", "short")],
)
def test_conftest_overrides_change_what_dependent_fixtures_get(
    strict: pytest.Pytester, conftest_names: str, test_names: str
) -> None:
    """A conftest.py overriding ``virtual_clock_start``, ``sync_queue_options``,
    ``faulty_transport`` and ``sync_engine_options`` (the last extending the
    plugin's own value) changes what ``sync_queue``, ``network``, ``sync_engine``
    and ``simulation`` get: overridden under either name, asked for under the same name,
    or (an override of a ``cpcsync_*`` name) under the short one. (A test that asks for
    ``cpcsync_X`` directly gets ``cpcsync_X``'s own definition even where a conftest
    overrides ``X``: docs/testing-with-faults.md says so.)"""

    def names(source: str, which: str) -> str:
        return prefixed(source) if which == "prefixed" else source

    strict.makeconftest(names(OVERRIDE_CONFTEST, conftest_names))
    strict.makepyfile(test_overrides=names(OVERRIDE_TESTS, test_names))
    result = strict.runpytest("-v")
    result.assert_outcomes(passed=2)


TEARDOWN_TESTS = """
import threading

import cpcsync as cs
from cpcsync.testing import FaultyTransport
import pytest

SEEN = {}


@pytest.fixture
def called():
    return threading.Event()


@pytest.fixture
def faulty_transport(virtual_clock, called):
    ft = FaultyTransport(inner=lambda op: called.set(), seed=0, clock=virtual_clock)
    yield ft
    ft.close()


def test_started_engine_left_idle(sync_engine):
    sync_engine.start()
    assert sync_engine.running
    SEEN["idle"] = sync_engine


def test_started_engine_left_inside_a_call(sync_engine, sync_queue, faulty_transport, called):
    sync_engine.start()
    sync_queue.enqueue("set", {"n": 1}, key="a")
    assert called.wait(30)  # the worker delivered the first op
    # The next call waits an hour of virtual time that nobody advances: the test
    # ends with a worker inside the transport.
    faulty_transport.set_latency(3600.0)
    sync_queue.enqueue("set", {"n": 2}, key="a")
    SEEN["busy"] = sync_engine


def test_next_test_runs_fine(sync_engine, sync_queue, simulation):
    assert not SEEN["idle"].running and not SEEN["busy"].running  # both stopped
    sync_queue.enqueue("set", {"n": 3}, key="a")
    assert simulation.run_until_idle()
    sync_engine.start()  # and a started engine works here too
    sync_queue.enqueue("set", {"n": 4}, key="a")
    assert sync_engine.wait_idle()
    assert len(sync_queue) == 0
"""


def test_teardown_stops_a_started_engine_and_the_next_test_runs(strict: pytest.Pytester) -> None:
    """After tests that started the engine (idle, and with a worker left inside a
    transport call waiting on the virtual clock), teardown stops it without hanging
    and the next test runs fine. In a subprocess with a timeout, so a hang fails this
    test instead of hanging the suite."""
    strict.makepyfile(test_teardown=TEARDOWN_TESTS)
    result = strict.runpytest_subprocess("-v", timeout=120)
    result.assert_outcomes(passed=3)


BLOCKED_TESTS = """
import threading

import pytest

from cpcsync.testing import FaultyTransport

ENTERED = threading.Event()
NEVER = threading.Event()  # the test would have set it; it failed first


class TestBlocked:
    @pytest.fixture
    def faulty_transport(self, virtual_clock):
        def blocking(op):
            ENTERED.set()
            NEVER.wait()

        ft = FaultyTransport(inner=blocking, seed=0, clock=virtual_clock)
        yield ft
        ft.close()

    def test_fails_while_its_transport_is_blocked(self, sync_engine, sync_queue):
        sync_engine.start()
        sync_queue.enqueue("set", {"n": 1}, key="a")
        assert ENTERED.wait(30)
        assert False, "failing before the transport is released"


def test_next_test_runs(sync_queue, simulation):
    sync_queue.enqueue("set", {"n": 2}, key="a")
    assert simulation.run_until_idle()
"""


def test_teardown_does_not_hang_when_a_failed_test_left_its_transport_blocked(
    strict: pytest.Pytester,
) -> None:
    """A test that started the engine fails while a worker is inside a transport call
    that only the test would have released (a threading.Event it never sets). The
    session must go on: that test reported as failed, the next test run, the
    session over, instead of pytest hanging in the engine's teardown."""
    strict.makepyfile(test_blocked=BLOCKED_TESTS)
    # a hang detector, not a speed check: teardown waits ENGINE_STOP_TIMEOUT for the
    # blocked worker, and a loaded or sanitizer build starts pytest slowly
    result = strict.runpytest_subprocess("-v", timeout=120)
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1 and outcomes.get("passed") == 1, result.outlines
