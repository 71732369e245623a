"""The proxy group: what FaultProxy (no toxics) costs against a direct connection.

The upstream is a small Python socket server in a *separate process* (so its GIL is
not the client's): a thread per connection, TCP_NODELAY, the connection's first byte
choosing echo (`E`) or sink (`S`: count bytes until EOF, then answer the count).

- Ping-pong: one kept-alive connection, a 64-byte message sent and echoed back per
  op; each round trip is timed. The proxy's added latency is the proxied p50 (p99)
  minus the direct p50 (p99) of the same run.
- Streaming: 4 MiB `sendall` calls from the client, then a half-close; the sink
  answers the byte count. Throughput is bytes over the time from the first send to
  the answer (GB = 10^9 bytes).

Targets: under 100 µs added latency, at least 1 GB/s through the proxy.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cpcsync.testing import FaultProxy
from harness import Case, Group, Measurement, percentile, time_calls

MESSAGE = 64
BLOCK = 4 << 20  # bytes per sendall
WARMUP = 500
LATENCY_TARGET_US = 100.0
THROUGHPUT_TARGET_GBPS = 1.0

_SERVER = r"""
import socket, sys, threading

def serve(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        mode = conn.recv(1)
        if mode == b"E":
            while data := conn.recv(65536):
                conn.sendall(data)
        elif mode == b"S":
            buf, total = bytearray(1 << 20), 0
            while n := conn.recv_into(buf):
                total += n
            conn.sendall(str(total).encode())

ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(16)
print(ls.getsockname()[1], flush=True)
threading.Thread(target=lambda: (sys.stdin.read(), ls.close()), daemon=True).start()
while True:
    try:
        conn, _ = ls.accept()
    except OSError:
        break
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@contextmanager
def _upstream() -> Iterator[int]:
    """The server process; yields its port. It exits when its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        yield int(proc.stdout.readline())
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def _target(port: int, proxied: bool) -> Iterator[tuple[str, int]]:
    """Where the client connects: the server itself, or a FaultProxy in front of it."""
    if not proxied:
        yield ("127.0.0.1", port)
        return
    with FaultProxy(upstream=("127.0.0.1", port)) as proxy:
        yield proxy.address


def _connect(address: tuple[str, int], mode: bytes) -> socket.socket:
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(mode)
    return sock


def _ping_pong(proxied: bool, n: int) -> Measurement:
    message = b"p" * MESSAGE
    with _upstream() as port, _target(port, proxied) as address:
        sock = _connect(address, b"E")
        recv = sock.recv

        def call() -> None:
            sock.sendall(message)
            got = len(recv(MESSAGE))
            while got < MESSAGE:
                got += len(recv(MESSAGE - got))

        with sock:
            m = time_calls(call, n, warmup=WARMUP, per="round trip")
    m.note = f"{MESSAGE}-byte echo, one kept-alive connection"
    return m


def _stream(proxied: bool, n: int) -> Measurement:
    block = memoryview(bytes(BLOCK))
    with _upstream() as port, _target(port, proxied) as address:
        sock = _connect(address, b"S")
        with sock:
            latencies = [0] * n
            clock = time.perf_counter_ns
            start = clock()
            for i in range(n):
                t0 = clock()
                sock.sendall(block)
                latencies[i] = clock() - t0
            sock.shutdown(socket.SHUT_WR)
            answer = sock.recv(64)
            wall = clock() - start
    sent = n * BLOCK
    if int(answer) != sent:
        raise RuntimeError(f"proxy bench: sent {sent} bytes, the sink counted {answer!r}")
    gbps = sent / wall  # bytes per ns = GB/s
    return Measurement(
        n, wall, latencies, per="4 MiB sendall", note=f"{sent / 2**30:.2f} GiB, {gbps:.2f} GB/s"
    )


def pingpong_direct(d: Path, n: int) -> Measurement:
    return _ping_pong(False, n)


def pingpong_proxied(d: Path, n: int) -> Measurement:
    return _ping_pong(True, n)


def stream_direct(d: Path, n: int) -> Measurement:
    return _stream(False, n)


def stream_proxied(d: Path, n: int) -> Measurement:
    return _stream(True, n)


def _gbps(m: Measurement) -> float:
    return m.ops * BLOCK / m.wall_ns


def _checks(results: dict[str, Measurement]) -> list[str]:
    out = []
    direct, proxied = results.get("proxy.pingpong.direct"), results.get("proxy.pingpong.proxied")
    if direct and proxied:
        added = {
            q: (percentile(proxied.latencies_ns, q) - percentile(direct.latencies_ns, q)) / 1e3
            for q in (50, 99)
        }
        verdict = "PASS" if added[50] < LATENCY_TARGET_US else "MISS"
        out.append(
            f"- FaultProxy added latency per round trip (no toxics): p50 {added[50]:.1f} µs, "
            f"p99 {added[99]:.1f} µs (target p50 < {LATENCY_TARGET_US:.0f} µs: {verdict}; "
            f"p99 {'within' if added[99] < LATENCY_TARGET_US else 'over'} it)."
        )
    direct, proxied = results.get("proxy.stream.direct"), results.get("proxy.stream.proxied")
    if direct and proxied:
        ok = _gbps(proxied) >= THROUGHPUT_TARGET_GBPS
        out.append(
            f"- FaultProxy throughput (no toxics): {_gbps(proxied):.2f} GB/s against "
            f"{_gbps(direct):.2f} GB/s direct ({_gbps(proxied) / _gbps(direct):.0%}; target >= "
            f"{THROUGHPUT_TARGET_GBPS:g} GB/s: {'PASS' if ok else 'MISS'})."
        )
    return out


def group() -> Group:
    cases = [
        Case("proxy.pingpong.direct", "ping-pong, direct (reference)", 20_000, pingpong_direct),
        Case("proxy.pingpong.proxied", "ping-pong through FaultProxy", 20_000, pingpong_proxied),
        Case("proxy.stream.direct", "stream 2 GiB, direct (reference)", 512, stream_direct),
        Case("proxy.stream.proxied", "stream 2 GiB through FaultProxy", 512, stream_proxied),
    ]
    return Group(
        name="proxy",
        title="FaultProxy",
        cases=cases,
        checks=_checks,
        description=(
            "FaultProxy with no toxics beside a direct connection, in the same run, to an "
            "upstream in a separate Python process (thread per connection, TCP_NODELAY). "
            "Ping-pong: one op = one 64-byte message echoed back on a kept-alive connection. "
            "Streaming: one op = one 4 MiB `sendall`; ops/s x 4 MiB is the throughput, and "
            "the note gives it in GB/s (10^9 bytes), timed until the sink has counted every "
            "byte."
        ),
    )
