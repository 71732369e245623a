"""Python side of SyncEngine: calling transports, classifying what they raise.

The C++ engine calls :func:`invoke` for every delivery (with the GIL taken only for
the call and no C++ lock held) and :func:`classify` for every exception, so the
rules users rely on live in one readable place.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from cpcsync import errors

# Kinds, as the C++ DeliveryResult::Kind numbers them.
DELIVERED, TRANSIENT, NETWORK, RETRY_AFTER, PERMANENT, CONFLICT = range(6)


async def _carry(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """(True, result), or (False, exc) for a BaseException that would stop the loop."""
    try:
        return True, await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        raise
    except BaseException as exc:  # KeyboardInterrupt, SystemExit, ...
        return False, exc


class LoopRunner:
    """Runs coroutines of async transports: on the user's loop, or on one it owns."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop
        self._own: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _target(self) -> asyncio.AbstractEventLoop:
        if self._loop is not None:
            return self._loop
        with self._lock:
            if self._own is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="cpcsync-engine-loop", daemon=True
                )
                thread.start()
                self._own, self._thread = loop, thread
            return self._own

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run `coro` to completion from a worker thread and return its result.

        A KeyboardInterrupt or SystemExit raised by the coroutine is carried back and
        raised here, in the calling thread: left alone it would stop the event loop
        itself (asyncio lets those through), and this call would wait forever."""
        ok, value = asyncio.run_coroutine_threadsafe(_carry(coro), self._target()).result()
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """Stop the loop this runner owns (not the user's)."""
        with self._lock:
            loop, thread, self._own, self._thread = self._own, self._thread, None, None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()


def invoke(fn: Callable[..., Any], arg: Any, runner: LoopRunner) -> Any:
    """Call a transport (or its send_batch); await it if it is async."""
    result = fn(arg)
    if inspect.iscoroutine(result):
        result = runner.run(result)
    return result


def describe(exc: BaseException) -> str:
    """The exception and its cause chain as one line: 'A: x <- caused by B: y'."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        try:
            text = str(current)
        except BaseException:  # an exception whose __str__ raises (anything at all)
            text = "<unprintable>"
        if not isinstance(text, str):  # a __str__ that returned something else
            text = "<unprintable>"
        # lone surrogates would make the text unencodable for the C++ side
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        name = type(current).__name__
        parts.append(f"{name}: {text}" if text else name)
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    return " <- caused by ".join(parts)


def classify(exc: BaseException) -> tuple[int, str, float, Any, Any, Any]:
    """(kind, error text, retry_after, remote value, remote hlc, remote version)."""
    text = describe(exc)
    if isinstance(exc, errors.RetryAfter):
        return RETRY_AFTER, text, float(exc.seconds), None, None, None
    if isinstance(exc, errors.ConflictError):
        return CONFLICT, text, 0.0, exc.remote, exc.remote_timestamp, exc.remote_version
    if isinstance(exc, errors.PermanentError):
        return PERMANENT, text, 0.0, None, None, None
    if isinstance(exc, OSError):  # also TimeoutError, ConnectionError, NetworkError
        return NETWORK, text, 0.0, None, None, None
    return TRANSIENT, text, 0.0, None, None, None  # TransientError and anything unknown


def _short_repr(item: Any) -> str:
    """repr(item), at most 80 characters, never raising (it is only for an error text)."""
    try:
        text = repr(item)
    except BaseException:
        text = f"<{type(item).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def outcome_of(item: Any, what: str = "send_batch returned") -> BaseException | None:
    """A send_batch result entry: None/True (delivered) or an exception (instance).

    Anything else is not a delivery: it becomes a TransientError, so a transport that
    breaks its contract gets the op retried (and eventually dead-lettered), never
    silently acknowledged."""
    if item is None or item is True:
        return None
    if isinstance(item, BaseException):
        return item
    return errors.TransientError(
        f"{what} {_short_repr(item)} for an operation; expected None (delivered) or an exception"
    )


def result_of(item: Any) -> BaseException | None:
    """What a plain transport's return value means: None or True is delivered, an
    exception instance is that failure, anything else (False, a status code, a
    response object...) a TransientError naming it (transports signal failure by
    raising)."""
    return outcome_of(item, "the transport returned")


FAULT_KINDS = ("transient", "network", "timeout", "reset", "permanent", "conflict", "retry_after")
_SUCCESS = (None, True, "ok", "success", "delivered")

FaultSpec = tuple[str, str, float, float, Any, Any, Any]


def fault_spec(spec: Any) -> FaultSpec | None:
    """A FaultyTransport fault from a friendly spec, or None for "succeed".

    Specs: None, True, "ok" -> succeed; False -> a transient failure; a kind name
    (one of FAULT_KINDS); an exception instance or class, classified as the engine
    classifies what a transport raises (TimeoutError -> "timeout",
    ConnectionResetError -> "reset", other OSError -> "network", RetryAfter,
    ConflictError with its remote, PermanentError, anything else -> "transient").
    Returns (kind, message, retry_after, delay, remote, remote_hlc, remote_version).
    """
    if isinstance(spec, str):
        if spec in _SUCCESS:
            return None
        if spec not in FAULT_KINDS:
            raise errors.InvalidArgumentError(
                f"unknown fault kind {spec!r}; expected one of {', '.join(FAULT_KINDS)}"
            )
        return spec, "", 0.0, 0.0, None, None, None
    if spec is None or spec is True:
        return None
    if spec is False:
        return "transient", "", 0.0, 0.0, None, None, None
    if isinstance(spec, type) and issubclass(spec, BaseException):
        spec = spec()
    if not isinstance(spec, BaseException):
        raise TypeError(
            "a fault is None/True (succeed), False, a kind name or an exception, "
            f"not {type(spec).__name__}"
        )
    text = describe(spec)
    if isinstance(spec, errors.RetryAfter):
        return "retry_after", text, spec.seconds, 0.0, None, None, None
    if isinstance(spec, errors.ConflictError):
        return ("conflict", text, 0.0, 0.0, spec.remote, spec.remote_timestamp, spec.remote_version)
    if isinstance(spec, errors.PermanentError):
        return "permanent", text, 0.0, 0.0, None, None, None
    if isinstance(spec, TimeoutError):
        return "timeout", text, 0.0, 0.0, None, None, None
    if isinstance(spec, ConnectionResetError):
        return "reset", text, 0.0, 0.0, None, None, None
    if isinstance(spec, OSError):
        return "network", text, 0.0, 0.0, None, None, None
    return "transient", text, 0.0, 0.0, None, None, None


def raise_result(
    kind: int, error: str, retry_after: float, remote: Any, hlc: Any, version: Any
) -> None:
    """Raise the exception a Python transport would raise for a C++ failure result."""
    if kind == RETRY_AFTER:
        raise errors.RetryAfter(retry_after)
    if kind == CONFLICT:
        value = remote
        if isinstance(remote, bytes):
            try:
                value = json.loads(remote) if remote else None
            except ValueError:
                value = remote
        raise errors.ConflictError(value, hlc, version)
    if kind == PERMANENT:
        raise errors.PermanentError(error)
    if kind == NETWORK:
        raise errors.NetworkError(error)
    raise errors.TransientError(error)


async def wait_idle_async(engine: Any, timeout: float | None = None) -> bool:
    """``await engine.wait_idle_async()``: wait_idle without blocking the event loop."""
    return bool(await asyncio.get_running_loop().run_in_executor(None, engine.wait_idle, timeout))
