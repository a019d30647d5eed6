"""The notifier's memory: one record per ``alert_id`` in a Faust table with a changelog.

A record says what the notifier owes an alert and what it has done: the alert itself (kept while
it may still be delivered or escalated), each sink's outcome (``pending``, ``delivered``,
``failed``, ``superseded``), the acknowledgement, the escalation deadline and the escalation's
own sinks. ``"open": true`` marks a record with work left (a pending sink or escalation), so the
scheduler scans only those. Every ``put`` returns once the broker has acknowledged the changelog
record: the notifier acknowledges an alert message only after its record is durable, so a
crash, a redelivery or a replay never loses or repeats a notification (see ``notifier``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any, Protocol

from streams.kafka import codec

OPEN_MARK = b'"open":true'


class Ledger(Protocol):
    """Per-alert records; ``put`` returns once the record is durable (changelog acknowledged)."""

    def get(self, alert_id: str) -> dict[str, Any] | None: ...

    async def put(self, partition: int, alert_id: str, record: dict[str, Any]) -> None: ...

    def pending(self) -> Iterable[tuple[str, dict[str, Any]]]:
        """Records with work left (``open``); a superset is fine."""
        ...


class TableLedger:
    """A Faust table of JSON bytes; each write is awaited until the broker has it."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, alert_id: str) -> dict[str, Any] | None:
        raw = self.table.data.get(alert_id.encode())
        return None if raw is None else json.loads(raw)

    async def put(self, partition: int, alert_id: str, record: dict[str, Any]) -> None:
        key, value = alert_id.encode(), codec.encode(record)
        self.table.data[key] = value
        # Straight to the producer (force: not attached to the current event, not through
        # Faust's send buffer), then wait for the broker's acknowledgement.
        sent = await self.table.changelog_topic.send(
            key=key, value=value, partition=partition, key_serializer="raw",
            value_serializer="raw", callback=self.table._on_changelog_sent, force=True)
        await asyncio.wait_for(sent, timeout=60)

    def pending(self) -> Iterable[tuple[str, dict[str, Any]]]:
        # a byte search first: most records (delivered, acknowledged) are never parsed
        for key, raw in list(self.table.data.items()):
            if raw and OPEN_MARK in raw:
                yield key.decode() if isinstance(key, bytes) else str(key), json.loads(raw)
