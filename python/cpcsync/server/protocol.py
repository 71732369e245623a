"""The wire format of an operation, as HttpTransport sends it (docs/protocol.md).

:func:`parse_op` turns one JSON object into a :class:`WireOp` or says, in one line,
why it is not one. Nothing here touches a database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_HLC", "MAX_KEY_CHARS", "ProtocolError", "WireOp", "dumps", "parse_op"]

#: Stamps are stored as signed 64-bit integers (SQLite INTEGER, PostgreSQL BIGINT):
#: an HLC at or above 2**63 (year ~6400) is refused rather than wrapped.
MAX_HLC = 2**63 - 1
#: Versions and op ids: the same signed 64-bit range, and never negative.
MAX_INT = 2**63 - 1
#: Longest key, idempotency key, kind and device accepted (characters).
MAX_KEY_CHARS = 1024
#: The op kind that deletes its key (the value becomes null, ``deleted`` true).
DELETE_KIND = "delete"


class ProtocolError(ValueError):
    """A body or field that is not what docs/protocol.md says; the message is one line."""


def dumps(value: Any) -> str:
    """Compact JSON text of ``value`` as the receiver stores it; ProtocolError for text
    that is not valid Unicode (a lone surrogate) and for NaN/Infinity."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("the value holds text that is not valid Unicode") from None
    except ValueError:
        raise ProtocolError("the value holds NaN or Infinity, which JSON cannot carry") from None
    return text


def _text(body: dict[str, Any], name: str, required: bool) -> str | None:
    v = body.get(name)
    if v is None:
        if required:
            raise ProtocolError(f"{name} is required")
        return None
    if not isinstance(v, str):
        raise ProtocolError(f"{name} must be a string{'' if required else ' or null'}")
    if not v:
        raise ProtocolError(f"{name} must not be empty")
    if len(v) > MAX_KEY_CHARS:
        raise ProtocolError(f"{name} is longer than {MAX_KEY_CHARS} characters")
    if "\x00" in v:
        raise ProtocolError(f"{name} contains a NUL character")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"{name} is not valid Unicode (a lone surrogate)") from None
    return v


def _int(body: dict[str, Any], name: str, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise ProtocolError(f"{name} must be an integer or null")
    if not 0 <= v <= hi:
        raise ProtocolError(f"{name} must be in [0, {hi}]")
    return v


@dataclass(frozen=True)
class WireOp:
    """One operation as received. ``value`` is what the key's value becomes: the
    payload (any JSON value), ``{"payload_b64": ...}`` for a binary payload, None for a
    delete. ``fingerprint`` identifies the body for idempotency (kind, key, payload)."""

    idempotency_key: str
    kind: str | None
    key: str | None
    value: Any
    value_json: str
    hlc: int | None
    base_version: int | None
    op_id: int | None
    fingerprint: str
    body: dict[str, Any]

    @property
    def deletes(self) -> bool:
        """True for an op of kind ``"delete"``."""
        return self.kind == DELETE_KIND


def parse_op(body: Any, header_key: str | None = None) -> WireOp:
    """Validate one op body (a JSON object); ``header_key`` is the Idempotency-Key
    header of a single-op request. Raises ProtocolError."""
    if not isinstance(body, dict):
        raise ProtocolError("an op must be a JSON object")
    ikey = body.get("idempotency_key")
    if ikey is None and header_key is not None:
        ikey = header_key
    if header_key is not None and ikey != header_key:
        raise ProtocolError("the Idempotency-Key header and the body's idempotency_key differ")
    ikey = _text({"idempotency_key": ikey}, "idempotency_key", True) or ""
    kind = _text(body, "kind", False)
    key = _text(body, "key", False)
    hlc = _int(body, "hlc", MAX_HLC)
    base = _int(body, "base_version", MAX_INT)
    op_id = _int(body, "id", MAX_INT)
    if "payload" in body:
        if "payload_b64" in body:
            raise ProtocolError("send payload or payload_b64, not both")
        value: Any = body["payload"]
    elif "payload_b64" in body:
        b64 = body["payload_b64"]
        if not isinstance(b64, str):
            raise ProtocolError("payload_b64 must be a string")
        try:
            base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("payload_b64 is not standard base64") from None
        value = {"payload_b64": b64}
    elif kind == DELETE_KIND:
        value = None
    else:
        raise ProtocolError("payload or payload_b64 is required")
    if kind == DELETE_KIND:
        value = None
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError("the payload is NaN or Infinity")
    value_json = dumps(value)
    # kind and key were checked above (valid Unicode): no second encoding of the value
    head = repr((kind, key)).encode("utf-8")
    fingerprint = hashlib.sha256(head + b"\n" + value_json.encode("utf-8")).hexdigest()
    return WireOp(
        idempotency_key=ikey,
        kind=kind,
        key=key,
        value=value,
        value_json=value_json,
        hlc=hlc,
        base_version=base,
        op_id=op_id,
        fingerprint=fingerprint,
        body=body,
    )
