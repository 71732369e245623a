"""The receiver's HTTP API, independent of any web framework (docs/protocol.md).

:func:`handle` maps one request (method, path, query, headers, body bytes) to one
response (status, headers, body bytes). The ASGI and WSGI adapters, and the reference
``testing.SyncServer``, are thin shells around it.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from cpcsync.server.backend import BackendUnavailable
from cpcsync.server.protocol import ProtocolError
from cpcsync.server.receiver import RETRY_LATER_SECONDS, Receiver, Request

__all__ = ["PROTOCOL_VERSION", "Response", "handle", "too_large"]

#: The wire protocol's version, served by ``GET /health`` (docs/protocol.md).
PROTOCOL_VERSION = 1


@dataclass
class Response:
    """One HTTP answer: status, headers (name -> value) and a JSON body (bytes)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, doc: Any, headers: dict[str, str] | None = None) -> Response:
        """A JSON response."""
        data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        return cls(status, data, h)


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    return Response.json(status, {"error": reason}, headers)


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def too_large(rx: Receiver) -> Response:
    """413 for a body above ``rx.max_body_bytes`` (adapters answer it before reading)."""
    return _error(413, f"the body is larger than {rx.max_body_bytes} bytes")


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError("the body is not UTF-8") from None
    except RecursionError:
        raise ProtocolError("the body is nested too deeply") from None
    except ValueError as e:
        raise ProtocolError(f"malformed JSON: {str(e).splitlines()[0]}") from None


def _single_status(result: dict[str, Any]) -> Response:
    status = result["status"]
    if status in ("applied", "duplicate"):
        return Response.json(200, result)
    if status == "conflict":
        return Response.json(409, result)
    if status == "retry_later":
        return Response.json(503, result, _retry_after(float(result["retry_after"])))
    if result.get("forbidden"):
        return Response.json(403, _public(result))
    if result.get("mismatch"):
        return Response.json(422, _public(result))
    return Response.json(400, _public(result))


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("forbidden", "mismatch")}


def _unavailable(results: list[dict[str, Any]]) -> bool:
    return any(
        r["status"] == "retry_later" and str(r.get("reason", "")).startswith("database unavailable")
        for r in results
    )


def handle(
    rx: Receiver,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    client: str | None = None,
) -> Response:
    """One request. ``headers`` with lower-case names; ``query`` the raw query string.
    Blocking (database calls, the long poll): call it from a worker thread."""
    try:
        return _route(rx, method.upper(), path, query, headers, body, client)
    except ProtocolError as e:
        return _error(400, str(e))
    except BackendUnavailable as e:
        return _error(503, f"database unavailable: {e}", _retry_after(RETRY_LATER_SECONDS))


def _route(
    rx: Receiver,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    client: str | None,
) -> Response:
    if len(body) > rx.max_body_bytes:
        return too_large(rx)
    request = Request(method, path, headers, client)
    if path in ("/ops", "/ops/"):
        if method != "POST":
            return _error(405, "POST an op to /ops", {"Allow": "POST"})
        doc = _parse_json(body)
        if not isinstance(doc, dict):
            raise ProtocolError("the body must be a JSON object (one op)")
        header_key = headers.get("idempotency-key")
        if header_key is not None and "idempotency_key" not in doc:
            doc = dict(doc, idempotency_key=header_key)
        elif header_key is not None and doc.get("idempotency_key") != header_key:
            raise ProtocolError("the Idempotency-Key header and the body's idempotency_key differ")
        [result] = rx.apply_batch([doc], request=request)
        return _single_status(result)
    if path == "/ops/batch":
        if method != "POST":
            return _error(405, "POST a batch to /ops/batch", {"Allow": "POST"})
        doc = _parse_json(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("ops"), list):
            raise ProtocolError('the body must be a JSON object with "ops": [...]')
        ops = doc["ops"]
        if len(ops) > rx.max_batch:
            return _error(413, f"the batch has {len(ops)} ops; at most {rx.max_batch} are accepted")
        results = rx.apply_batch(
            ops, device=doc.get("device"), low_water=doc.get("low_water"), request=request
        )
        if ops and _unavailable(results):
            reason = results[0].get("reason", "database unavailable")
            doc = {"error": reason, "results": [_public(r) for r in results]}
            return Response.json(503, doc, _retry_after(RETRY_LATER_SECONDS))
        return Response.json(200, {"results": [_public(r) for r in results]})
    readable = path in ("/changes", "/health") or path.startswith("/entities/")
    if not readable:
        return _error(
            404,
            "no such endpoint (POST /ops, POST /ops/batch, GET /changes, "
            "GET /entities/<key>, GET /health)",
        )
    if method != "GET":
        return _error(405, f"{path} is read with GET", {"Allow": "GET"})
    if path == "/changes":
        params = urllib.parse.parse_qs(query, keep_blank_values=True)
        since = _one(params, "since")
        limit = _number(_one(params, "limit"), "limit", 1000.0)
        wait = _number(_one(params, "wait"), "wait", 0.0)
        if limit != int(limit):
            raise ProtocolError("limit must be an integer")
        return Response.json(200, rx.changes(since, int(limit), wait))
    if path.startswith("/entities/"):
        try:
            key = urllib.parse.unquote(path[len("/entities/") :], errors="strict")
        except UnicodeDecodeError:
            raise ProtocolError("the key in the path is not UTF-8") from None
        entity = rx.get(key)
        if entity is None:
            return _error(404, "no such key")
        return Response.json(200, entity)
    return Response.json(200, dict(rx.health(), protocol=PROTOCOL_VERSION))


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ProtocolError(f"{name} is given more than once")
    return values[0]


def _number(text: str | None, name: str, default: float) -> float:
    if text is None or text == "":
        return default
    try:
        v = float(text)
    except ValueError:
        raise ProtocolError(f"{name} must be a number") from None
    if not math.isfinite(v):
        raise ProtocolError(f"{name} must be a finite number")
    return v
