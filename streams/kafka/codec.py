"""Bytes on the wire <-> Python values, and the dead-letter record.

Decoding never raises: a message is either a JSON object (dict) or a ``Rejection`` with the same
reason codes ``detectors.observation`` uses, so every bad input can be dead-lettered and counted.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from detectors.observation import Rejection


def decode_object(value: bytes | None) -> dict[str, Any] | Rejection:
    """Decode a message value that must be one UTF-8 JSON object."""
    if value is None:
        return Rejection("malformed_json", "empty message (null value)")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("malformed_json", f"not UTF-8: {exc}")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return Rejection("malformed_json", f"not JSON: {exc}")
    except RecursionError:  # e.g. 100,000 nested brackets: bad input, not an internal error
        return Rejection("malformed_json", "not JSON: nested too deeply")
    if not isinstance(doc, dict):
        return Rejection("not_an_object", f"expected a JSON object, got {type(doc).__name__}")
    return doc


def key_text(key: bytes | None) -> str | None:
    """A message key as text (None if absent or not UTF-8)."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _original(data: bytes | None) -> tuple[str | None, str]:
    """(text, encoding): UTF-8 text when it is, else base64 so no byte is lost."""
    if data is None:
        return None, "none"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def dead_letter(*, key: bytes | None, value: bytes | None, topic: str, partition: int,
                offset: int, reason: str, detail: str, at: str | None = None) -> bytes:
    """The dead-letter record (JSON): enough to find, read and re-publish the original."""
    key_out, key_enc = _original(key)
    value_out, value_enc = _original(value)
    record = {"reason": reason, "detail": detail, "topic": topic, "partition": partition,
              "offset": offset, "key": key_out, "key_encoding": key_enc,
              "value": value_out, "value_encoding": value_enc,
              "dead_lettered_at": at or now_iso()}
    return json.dumps(record, separators=(",", ":")).encode()


def encode(doc: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(doc, separators=(",", ":")).encode()


def now_iso() -> str:
    """Wall clock as ISO 8601 UTC with milliseconds (``emitted_at``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
