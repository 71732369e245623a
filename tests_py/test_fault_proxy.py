"""FaultProxy over real sockets: cs.HttpTransport -> FaultProxy -> SyncServer.

Delays are asserted as lower bounds on measured time; nothing waits on a sleep.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

import cpcsync as cs
from cpcsync.testing import FaultProxy, SyncServer


@pytest.fixture
def server() -> Iterator[SyncServer]:
    with SyncServer() as s:
        yield s


@pytest.fixture
def proxy(server: SyncServer) -> Iterator[FaultProxy]:
    with FaultProxy(upstream=("127.0.0.1", server.port), seed=1) as p:
        yield p


@pytest.fixture
def queue() -> Iterator[cs.SyncQueue]:
    with cs.SyncQueue.in_memory() as q:
        yield q


def via(proxy: FaultProxy, timeout: float = 10.0) -> cs.HttpTransport:
    host, port = proxy.address
    return cs.HttpTransport(f"http://{host}:{port}/ops", timeout=timeout)


def take_op(q: cs.SyncQueue, key: str = "k", value: Any = 1) -> cs.Operation:
    q.enqueue("set", {"v": value}, key=key)
    (op,) = q.take(1)
    return op


def timed(fn: Any, *args: Any) -> float:
    started = time.monotonic()
    fn(*args)
    return time.monotonic() - started


# ------------------------------------------------------------------ plain forwarding


def test_deliveries_go_through_the_proxy(
    proxy: FaultProxy, server: SyncServer, queue: cs.SyncQueue
) -> None:
    with via(proxy) as t:
        for i in range(5):
            op = take_op(queue, key=f"k{i}", value=i)
            t(op)
            queue.ack(op.id)
    assert {k: v["value"] for k, v in server.applied.items()} == {
        f"k{i}": {"v": i} for i in range(5)
    }
    stats = proxy.stats()
    assert stats["connections"] == 1  # one kept-alive connection carried all five
    assert stats["bytes_upstream"] > 0 and stats["bytes_downstream"] > 0
    assert stats["upstream_failures"] == 0


def test_start_returns_the_proxy_and_address_is_stable(server: SyncServer) -> None:
    p = FaultProxy(upstream=("127.0.0.1", server.port), seed=3)
    assert not p.running and p.address[1] == 0
    assert p.start() is p
    host, port = p.address
    assert host == "127.0.0.1" and port > 0 and p.running and p.enabled
    assert p.upstream == ("127.0.0.1", server.port) and p.seed == 3
    p.stop()
    p.stop()
    assert not p.running
    with p:
        assert p.address == (host, port)
    assert "stopped" in repr(p)


def test_random_seed_is_reported(server: SyncServer) -> None:
    a = FaultProxy(upstream=("127.0.0.1", server.port))
    assert isinstance(a.seed, int) and a.seed >= 0


# ------------------------------------------------------------------ disable / enable


def test_disabled_proxy_fails_transiently_then_delivers_exactly_once(
    proxy: FaultProxy, server: SyncServer, queue: cs.SyncQueue
) -> None:
    with via(proxy) as t:
        warm = take_op(queue, key="warm")
        t(warm)  # a kept-alive connection exists; disable() resets it
        op = take_op(queue, key="user:1", value="x")
        with proxy.disabled():
            assert not proxy.enabled
            with pytest.raises(cs.NetworkError) as info:
                t(op)
            assert isinstance(info.value, cs.TransientError)
            assert proxy.stats()["active"] == 0
        assert "user:1" not in server.applied
        t(op)  # same op, same idempotency key: goes through once the proxy is back
        t(op)  # a duplicate delivery is acknowledged but not applied again
    assert server.applied["user:1"]["version"] == 1
    assert [b["key"] for b in server.log] == ["warm", "user:1"]


def test_engine_retries_while_disabled_and_delivers_after_enable(
    proxy: FaultProxy, server: SyncServer, queue: cs.SyncQueue
) -> None:
    for i in range(3):
        queue.enqueue("set", {"n": i}, key=f"e{i}")
    with via(proxy) as t:
        engine = cs.SyncEngine(queue, t, backoff=cs.ConstantBackoff(0.0))
        proxy.disable()
        summary = engine.process_once()
        assert summary.successful == 0 and len(summary.retried) >= 1
        assert server.received == []
        proxy.enable()
        engine.drain(timeout=30)
    assert len(queue) == 0
    assert {k: v["version"] for k, v in server.applied.items()} == {"e0": 1, "e1": 1, "e2": 1}


# ------------------------------------------------------------------ toxics end to end


def test_latency_toxic_delays_each_request(
    proxy: FaultProxy, server: SyncServer, queue: cs.SyncQueue
) -> None:
    with via(proxy) as t:
        with proxy.toxic("latency", latency=100) as name:
            assert name == "latency_downstream"
            assert timed(t, take_op(queue, key="a")) >= 0.1
        with proxy.toxic("latency", stream="upstream", latency=60):
            assert timed(t, take_op(queue, key="b")) >= 0.06
    assert proxy.toxics == []


def test_reset_peer_is_a_transient_network_error(
    proxy: FaultProxy, server: SyncServer, queue: cs.SyncQueue
) -> None:
    proxy.add_toxic("reset_peer", stream="upstream", timeout=0)
    with via(proxy) as t, pytest.raises(cs.NetworkError) as info:
        t(take_op(queue))
    assert isinstance(info.value, cs.TransientError)
    assert server.received == []  # the request never reached the server


def test_timeout_toxic_stalls_until_the_client_gives_up(
    proxy: FaultProxy, server: SyncServer, queue: cs.SyncQueue
) -> None:
    proxy.add_toxic("timeout", timeout=0)  # responses are held
    with via(proxy, timeout=0.3) as t, pytest.raises(cs.NetworkTimeoutError):
        t(take_op(queue))
    proxy.update_toxic("timeout_downstream", timeout=50)  # now: closed after 50 ms
    with via(proxy) as t, pytest.raises(cs.NetworkError) as info:
        t(take_op(queue, key="later"))
    assert isinstance(info.value, cs.TransientError)


def test_lost_answer_is_retried_and_applied_once(
    proxy: FaultProxy, server: SyncServer, queue: cs.SyncQueue
) -> None:
    op = take_op(queue, key="paid")
    with via(proxy) as t:
        with proxy.toxic("limit_data", bytes=10), pytest.raises(cs.NetworkError):
            t(op)  # applied by the server, but the answer is cut short
        t(op)  # the retry is recognised by its idempotency key
    assert server.applied["paid"]["version"] == 1
    assert len(server.log) == 1


def test_bandwidth_toxic_limits_a_large_payload(
    proxy: FaultProxy, server: SyncServer, queue: cs.SyncQueue
) -> None:
    queue.enqueue("blob", json.dumps({"data": "x" * 40_000}), key="blob")
    (op,) = queue.take(1)
    with via(proxy) as t, proxy.toxic("bandwidth", stream="upstream", rate=100):
        assert timed(t, op) >= 0.35  # 40 KB at 100 KB/s


def test_toxics_listing_update_and_stats(proxy: FaultProxy) -> None:
    name = proxy.add_toxic("slicer", stream="upstream", toxicity=0.5, average_size=64, name="cut")
    assert name == "cut"
    proxy.update_toxic("cut", toxicity=0.25, delay=10)
    assert proxy.toxics == [
        {
            "name": "cut",
            "type": "slicer",
            "stream": "upstream",
            "toxicity": 0.25,
            "attributes": {"average_size": 64, "size_variation": 0, "delay": 10},
        }
    ]
    proxy.remove_toxic("cut")
    assert proxy.toxics == []
    assert set(proxy.stats()) == {
        "connections",
        "active",
        "bytes_upstream",
        "bytes_downstream",
        "upstream_failures",
        "held_bytes",
        "held_memory",
    }


def eventually(condition: Any, seconds: float = 20.0) -> bool:
    """Polls ``condition`` (a state the proxy reaches on its own thread) until it holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_bandwidth_zero_stalls_until_the_rate_changes(
    proxy: FaultProxy, server: SyncServer, queue: cs.SyncQueue
) -> None:
    proxy.add_toxic("bandwidth", rate=0)  # answers stall, as in Toxiproxy
    with via(proxy, timeout=0.3) as t, pytest.raises(cs.NetworkTimeoutError):
        t(take_op(queue, key="stalled"))
    assert "stalled" in server.applied  # the request went through; its answer did not
    proxy.update_toxic("bandwidth_downstream", rate=1000)
    with via(proxy) as t:
        t(take_op(queue, key="flows"))
    assert "flows" in server.applied


def test_removing_a_timeout_closes_the_connection_and_drops_what_it_stopped(
    proxy: FaultProxy, server: SyncServer
) -> None:
    proxy.add_toxic("timeout", stream="upstream", timeout=0)
    with socket.create_connection(proxy.address, timeout=10) as s:
        s.sendall(b"POST /ops HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        assert eventually(lambda: proxy.stats()["active"] == 1)
        proxy.remove_toxic("timeout_upstream")
        with contextlib.suppress(ConnectionResetError):  # a reset is a close too
            assert s.recv(100) == b""  # closed, with no answer
    assert eventually(lambda: proxy.stats()["active"] == 0)
    assert server.received == [] and proxy.stats()["bytes_upstream"] == 0


def test_held_memory_counts_buffers_not_just_bytes(proxy: FaultProxy) -> None:
    proxy.add_toxic("latency", stream="upstream", latency=60_000)
    writes = 30_000
    with socket.create_connection(proxy.address, timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(writes):
            s.send(b"z")
        assert eventually(lambda: proxy.stats()["held_bytes"] == writes)
        memory = proxy.stats()["held_memory"]
        assert 64 * 1024 <= memory <= 64 * 1024 + 16 * writes  # not 64 KiB per write
        proxy.remove_toxic("latency_upstream")  # the bytes move on, the memory is freed
        assert eventually(lambda: proxy.stats()["held_memory"] == 0)


def test_reset_enables_and_removes_every_toxic(proxy: FaultProxy, queue: cs.SyncQueue) -> None:
    proxy.add_toxic("latency", latency=5)
    proxy.add_toxic("bandwidth", stream="upstream", rate=0)
    proxy.disable()
    proxy.reset()
    assert proxy.enabled and proxy.toxics == []
    with via(proxy) as t:
        t(take_op(queue))


def test_upstream_down_closes_the_client_and_counts(queue: cs.SyncQueue) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = sock.getsockname()[1]
    sock.close()
    with FaultProxy(upstream=("127.0.0.1", dead)) as p:
        with via(p) as t, pytest.raises(cs.NetworkError):
            t(take_op(queue))
        assert p.stats()["connections"] == 1


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("latencyy",), {}),
        (("latency",), {"latencyy": 5}),
        (("latency",), {"latency": -1}),
        (("latency",), {"latency": 1.5}),
        (("latency",), {"latency": True}),
        (("latency",), {"latency": 2**70}),
        (("latency", "sideways"), {}),
        (("latency", "downstream", 1.5), {}),
        (("latency", "downstream", float("nan")), {}),
        (("latency", "downstream", 1.0, ""), {}),
        (("slicer",), {}),
        (("slicer",), {"average_size": 4, "size_variation": 4}),
    ],
)
def test_bad_toxics_raise_invalid_argument(
    proxy: FaultProxy, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(cs.InvalidArgumentError):
        proxy.add_toxic(*args, **kwargs)
    assert proxy.toxics == []


def test_duplicate_and_unknown_names_raise_invalid_argument(proxy: FaultProxy) -> None:
    proxy.add_toxic("latency", latency=1)
    with pytest.raises(cs.InvalidArgumentError, match="already exists"):
        proxy.add_toxic("latency", latency=2)
    with pytest.raises(cs.InvalidArgumentError):
        proxy.remove_toxic("nope")
    with pytest.raises(cs.InvalidArgumentError):
        proxy.update_toxic("nope", latency=1)
    with pytest.raises(cs.InvalidArgumentError):
        proxy.update_toxic("latency_downstream", rate=1)
    assert proxy.toxics[0]["attributes"] == {"latency": 1, "jitter": 0}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"upstream": ("127.0.0.1", 0)},
        {"upstream": ("127.0.0.1", 70000)},
        {"upstream": "127.0.0.1:80"},
        {"upstream": ("127.0.0.1", 80), "listen": ("127.0.0.1", -1)},
        {"upstream": ("127.0.0.1", 80), "seed": -1},
        {"upstream": ("", 80)},
    ],
)
def test_bad_addresses_raise_invalid_argument(kwargs: dict[str, Any]) -> None:
    with pytest.raises(cs.InvalidArgumentError):
        FaultProxy(**kwargs)


def test_port_in_use_is_an_os_error(server: SyncServer) -> None:
    p = FaultProxy(upstream=("127.0.0.1", server.port), listen=("127.0.0.1", server.port))
    with pytest.raises(OSError):
        p.start()
    assert not p.running
