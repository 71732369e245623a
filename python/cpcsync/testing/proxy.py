"""FaultProxy: a real TCP proxy with Toxiproxy-style toxics, controlled from Python.

Put it between a client and a server on 127.0.0.1 and script bad networks while
traffic flows: latency, bandwidth limits, stalled or reset connections, sliced or
truncated streams, the server going away. It runs in-process (a C++ proxy on its own
I/O thread): nothing to install, no control port. See docs/fault-proxy.md.

Toxic types and attributes (all ints, as Toxiproxy names them; missing ones are 0):

- ``latency(latency, jitter)``: milliseconds added to each chunk, +/- jitter.
- ``bandwidth(rate)``: at most ``rate`` KB/s (1 KB = 1000 bytes); 0: the stream
  stalls until the rate changes or the toxic is removed.
- ``timeout(timeout)``: data is dropped and the connection closes after ``timeout``
  ms (0: it does not); removing the toxic closes the connections it applied to.
- ``reset_peer(timeout)``: ``timeout`` ms after the first data, both peers get a
  TCP RST.
- ``slow_close(delay)``: the close (EOF) is passed on ``delay`` ms late.
- ``slicer(average_size, size_variation, delay)``: data is cut into slices of
  ``average_size`` +/- ``size_variation`` bytes, ``delay`` microseconds apart.
- ``limit_data(bytes)``: the connection closes after ``bytes`` bytes.

Each toxic acts on one ``stream``: ``"upstream"`` (client to server) or
``"downstream"`` (server to client, the default), and applies to a connection with
probability ``toxicity``, drawn per connection from ``seed`` and again on every
update of the toxic (as in Toxiproxy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from cpcsync import _core
from cpcsync.errors import InvalidArgumentError

__all__ = ["FaultProxy"]


def _endpoint(value: Any, what: str) -> tuple[str, int]:
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not isinstance(value[0], str)
        or isinstance(value[1], bool)
        or not isinstance(value[1], int)
    ):
        raise InvalidArgumentError(f"{what} must be a (host, port) tuple, not {value!r}")
    return value[0], value[1]


class FaultProxy:
    """A TCP proxy from ``listen`` to ``upstream`` that injects network faults.

    ``upstream``: the ``(host, port)`` to forward to. ``listen``: where to listen
    (port 0: an ephemeral port, chosen by :meth:`start` and kept, also across
    :meth:`disable`/:meth:`enable` and :meth:`stop`/:meth:`start`). ``seed``: the seed
    of the per-connection toxicity draws, jitter and slice sizes (None: random; see
    :attr:`seed`).

    ``with proxy:`` starts and stops it. Every method is thread-safe; the ones that
    change the proxy return once the change is in effect on every open connection,
    and release the GIL while they wait.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        listen: tuple[str, int] = ("127.0.0.1", 0),
        seed: int | None = None,
    ) -> None:
        up_host, up_port = _endpoint(upstream, "upstream")
        host, port = _endpoint(listen, "listen")
        self._core = _core._FaultProxy(up_host, up_port, host, port, seed)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FaultProxy:
        """Listen and start forwarding; returns the proxy. No-op when running."""
        self._core.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection, and end the I/O thread. Idempotent."""
        self._core.stop()

    def disable(self) -> None:
        """Take the proxy down: new connections are refused and open ones reset (the
        client gets a TCP RST, the server a FIN). No-op when disabled."""
        self._core.disable()

    def enable(self) -> None:
        """Listen again, on the same port. No-op when enabled. Raises OSError if the
        port was taken meanwhile."""
        self._core.enable()

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """``with proxy.disabled():`` the proxy is down inside the block, up after it."""
        self.disable()
        try:
            yield
        finally:
            self.enable()

    def __enter__(self) -> FaultProxy:
        """Starts the proxy."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stops the proxy."""
        self.stop()

    # ------------------------------------------------------------------ toxics

    def add_toxic(
        self,
        type: str,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
        **attributes: int,
    ) -> str:
        """Add a toxic and return its name (default ``"<type>_<stream>"``).

        It applies at once, to open connections too. Raises
        :class:`~cpcsync.InvalidArgumentError` for an unknown type or attribute, a
        value out of range, a toxicity outside 0..1 or a name already in use.
        """
        return self._core.add_toxic(type, stream, toxicity, name, attributes)

    def update_toxic(self, name: str, *, toxicity: float | None = None, **attributes: int) -> None:
        """Change some attributes of toxic ``name`` (the others keep their values) and,
        if given, its toxicity. Raises :class:`~cpcsync.InvalidArgumentError` for an
        unknown name or a bad value."""
        self._core.update_toxic(name, attributes, toxicity)

    def remove_toxic(self, name: str) -> None:
        """Remove toxic ``name``; raises :class:`~cpcsync.InvalidArgumentError` if there
        is none."""
        self._core.remove_toxic(name)

    @contextlib.contextmanager
    def toxic(
        self,
        type: str,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
        **attributes: int,
    ) -> Iterator[str]:
        """``with proxy.toxic("latency", latency=200) as name:`` the toxic is in place
        inside the block (the name is yielded) and removed after it."""
        added = self.add_toxic(type, stream, toxicity, name, **attributes)
        try:
            yield added
        finally:
            if any(t["name"] == added for t in self.toxics):
                self.remove_toxic(added)

    @property
    def toxics(self) -> list[dict[str, Any]]:
        """The toxics in the order added: dicts with ``name``, ``type``, ``stream``,
        ``toxicity`` and ``attributes`` (every attribute of the type)."""
        return self._core.toxics()

    # ------------------------------------------------------------------ state

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to connect to (the port is 0 before the first start())."""
        return self._core.listen_host, self._core.port

    @property
    def upstream(self) -> tuple[str, int]:
        """``(host, port)`` the proxy forwards to."""
        return self._core.upstream_host, self._core.upstream_port

    @property
    def seed(self) -> int:
        """The seed of the proxy's random draws (the given one, or the random one
        chosen; pass it back to replay a run)."""
        return self._core.seed

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._core.running

    @property
    def enabled(self) -> bool:
        """False after disable(), until enable()."""
        return self._core.enabled

    def reset(self) -> None:
        """Toxiproxy's ``POST /reset``: enable the proxy and remove every toxic (a
        removed ``timeout`` closes the connections it applied to)."""
        self.enable()
        for t in self.toxics:
            self.remove_toxic(t["name"])

    def stats(self) -> dict[str, int]:
        """Counters: ``connections`` accepted in total, ``active`` open now,
        ``bytes_upstream`` / ``bytes_downstream`` forwarded each way,
        ``upstream_failures`` (connections closed because the upstream refused or
        was unreachable), ``held_bytes`` (read and not yet written: held by toxics)
        and ``held_memory`` (the memory holding them: 64 KiB blocks shared by the
        reads, plus 16 bytes per read)."""
        return self._core.stats()

    def __repr__(self) -> str:
        host, port = self.address
        up_host, up_port = self.upstream
        state = ("running" if self.running else "stopped") + ("" if self.enabled else ", disabled")
        return (
            f"FaultProxy({host}:{port} -> {up_host}:{up_port}, {state}, "
            f"toxics={[t['name'] for t in self.toxics]})"
        )
