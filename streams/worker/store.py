"""Per-patient state over the Faust table: a parsed cache, coalesced writes, phase counts.

The table (with its changelog) is the source of truth; the cache holds parsed ``PatientState``
objects so a message costs one ``step`` and not a JSON round trip. Writes are explicit: the
detector writes each changed patient once per tick or batch, and only then acknowledges the
messages that changed it (``streams.worker.detector``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from detectors.alerts import PHASES
from detectors.state import PatientState


def already_applied(st: PatientState, source: str, offset: int, timestamp_ms: int) -> bool:
    """Was this record of ``source`` folded into ``st`` already (a redelivery)?

    At-least-once: the state is written before the offsets that led to it are committed, so
    after a crash or a rebalance the records between the last commit and the last write come
    again, onto a state that holds them (hundreds per patient in a backlog: more than the
    engine's ``seen`` fingerprints remember). A patient's records of one source are all on one
    partition (co-partitioning, forwarding to the home partition) and are folded in offset
    order, so "at or before the last position applied" is exact. The timestamp must not be
    later either: a topic deleted and created again starts its offsets at 0, and its records
    must not be taken for old ones."""
    mark = st.applied.get(source)
    return mark is not None and offset <= mark[0] and timestamp_ms <= mark[1]


def mark_applied(st: PatientState, source: str, offset: int, timestamp_ms: int) -> None:
    """Record that the record at ``offset`` of ``source`` is folded into ``st`` (written with
    the state in the same changelog record)."""
    st.applied[source] = [offset, timestamp_ms]


class StateStore:
    """The worker's patients, keyed by patient_id, over a raw-bytes Faust table."""

    def __init__(self, table: Any, on_write: Any = None) -> None:
        """Args:
            table: a Faust table of bytes -> bytes (``streams.kafka.faust_app.raw_table``).
            on_write: ``(size_bytes) -> None``, called with the JSON size of each write.
        """
        self.table = table
        self._on_write = on_write
        self._states: dict[str, PatientState] = {}
        self._phase_of: dict[str, str] = {}
        self._phases_dirty = True

    def get(self, pid: str) -> PatientState | None:
        """The patient's state (cached, else read from the table), or None for a new one."""
        st = self._states.get(pid)
        if st is None:
            raw = self.table.data.get(pid.encode())
            if raw is not None:
                st = PatientState.from_json(raw)
                self._states[pid] = st
        return st

    def put(self, pid: str, st: PatientState) -> None:
        """Cache a new or replaced state (written by the next ``write``)."""
        self._states[pid] = st

    def write(self, partition: int, pid: str) -> None:
        """Write the cached state to the table and its changelog partition."""
        st = self._states.get(pid)
        if st is None:
            return
        key, value = pid.encode(), st.to_json()
        if self._on_write is not None:
            self._on_write(len(value))
        self.table.data[key] = value
        self.table.send_changelog(partition, key, value)
        if self._phase_of.get(pid) != st.phase:
            self._phase_of[pid] = st.phase
            self._phases_dirty = True

    def forget(self, partition: int, pid: str) -> None:
        """Discharged: drop the patient from the cache and the table (a tombstone)."""
        key = pid.encode()
        self._states.pop(pid, None)
        self._phase_of.pop(pid, None)
        self._phases_dirty = True
        if self.table.data.get(key) is not None:
            del self.table.data[key]
            self.table.send_changelog(partition, key, None)

    def clear(self) -> None:
        """Partitions are moving: drop the cache (the table is re-read on demand)."""
        self._states.clear()
        self._phase_of.clear()
        self._phases_dirty = True

    def phase_counts(self) -> Counter[str] | None:
        """Patients by current phase, or None when nothing changed since the last call."""
        if not self._phases_dirty:
            return None
        if not self._phase_of:
            for raw in list(self.table.data.values()):
                if raw:
                    st = PatientState.from_json(raw)
                    self._phase_of[st.patient_id] = st.phase
        self._phases_dirty = False
        counts = Counter(self._phase_of.values())
        return Counter({phase: counts.get(phase, 0) for phase in PHASES})
