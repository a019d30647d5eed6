"""Per-patient state over the Faust table: a parsed cache, coalesced writes, phase counts, and
what is kept of a discharged patient.

The table (with its changelog) is the source of truth; the cache holds parsed ``PatientState``
objects so a message costs one ``step`` and not a JSON round trip. Writes are explicit: the
detector writes each changed patient once per tick or batch, and only then acknowledges the
messages that changed it (``streams.worker.detector``).

**Discharged patients.** A discharge does not delete the patient's row: it replaces the state
with a small ``Discharged`` record holding the state's input positions (``applied``) and the
discharge's own. The input topics commit independently, so the discharge's offset may be
committed while the patient's earlier vitals or labs (folded in and written, their commit still
pending) are not; after a crash those come again. With nothing left to compare them with they
started a new state: a patient who had left was monitored again (the board, the phase gauge, a
silent-bed alert later), and no discharge ever came to end it. Against the discharged record
they are ``duplicate``, as they are against a live state. A record genuinely after the
discharge (a readmission's ``admit``, new readings) is not at or before those positions and
starts a fresh state, as in the replay; the fresh state takes the positions over, so the
earlier records, resent later still, stay duplicates.

A discharged record is never a patient: ``get`` returns None for it, the phase counts skip it,
and nothing of it goes to ``patient-phase`` (the discharge's tombstone stays the last word). It
is dropped (a tombstone in the table) by ``settle``: once every position it holds is below its
partition's committed offset no record it guards can be delivered again (a restarted worker and
a rebalanced one begin at the commit), so from then on it only costs memory; a position whose
commit the worker cannot see (a misrouted record's partition now held by another worker, a
topic created again with lower offsets) keeps it at most ``WorkerConfig.discharged_keep_s``.
Not a time alone: a worker down for a weekend gets the uncommitted records again when it comes
back, however long after the discharge. The check runs on the partition's ticks
(``Detector.on_tick``), so a partition that has gone quiet keeps its few until it has work
again (a tick is a broker record: none is sent for this alone).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from detectors.alerts import PHASES
from detectors.state import PatientState

#: ``{source: [offset, timestamp_ms]}``: ``PatientState.applied``
Positions = dict[str, list[int]]


def already_applied(applied: Positions, source: str, offset: int, timestamp_ms: int) -> bool:
    """Was this record of ``source`` folded in already (a redelivery)? ``applied``: the
    positions of the patient's state, or of its discharged record.

    At-least-once: the state is written before the offsets that led to it are committed, so
    after a crash or a rebalance the records between the last commit and the last write come
    again, onto a state that holds them (hundreds per patient in a backlog: more than the
    engine's ``seen`` fingerprints remember). A patient's records of one source are all on one
    partition (co-partitioning, forwarding to the home partition) and are folded in offset
    order, so "at or before the last position applied" is exact. The timestamp must not be
    later either: a topic deleted and created again starts its offsets at 0, and its records
    must not be taken for old ones."""
    mark = applied.get(source)
    return mark is not None and offset <= mark[0] and timestamp_ms <= mark[1]


def mark_applied(st: PatientState, source: str, offset: int, timestamp_ms: int) -> None:
    """Record that the record at ``offset`` of ``source`` is folded into ``st`` (written with
    the state in the same changelog record)."""
    st.applied[source] = [offset, timestamp_ms]


@dataclass(slots=True)
class Discharged:
    """What the table keeps of a discharged patient (module doc): never shown as a patient.

    ``applied``: the positions of every record folded in up to and including the discharge;
    ``partition``: the partition it is written to (the patient's home partition, whose input
    offsets ``settle`` compares); ``discharged_at_ms``: the worker's wall clock when it took
    the discharge (for ``discharged_keep_s``)."""

    patient_id: str
    partition: int
    discharged_at_ms: int
    applied: Positions = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"pid": self.patient_id, "discharged_at_ms": self.discharged_at_ms,
                           "partition": self.partition, "applied": self.applied},
                          separators=(",", ":")).encode()

    def settled(self, commit_head: Callable[[str, int], int | None]) -> bool:
        """True when no record it guards can come again: every position is below
        ``commit_head(source, partition)``, the first uncommitted offset of that source's
        partition (None: not known here, so not settled)."""
        for source, (offset, _) in self.applied.items():
            head = commit_head(source, self.partition)
            if head is None or offset >= head:
                return False
        return True


def parse_row(raw: bytes) -> PatientState | Discharged:
    """A table value: a patient's state, or the record kept of a discharged patient."""
    d = json.loads(raw)
    return _discharged(d) or PatientState.from_dict(d)


def _discharged(d: dict[str, Any]) -> Discharged | None:
    """The discharged record a table value's JSON holds, None when it holds a state."""
    if "discharged_at_ms" not in d:
        return None
    return Discharged(d["pid"], int(d["partition"]), int(d["discharged_at_ms"]),
                      d.get("applied", {}))


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
        self._discharged: dict[str, Discharged] = {}
        self._phase_of: dict[str, str] = {}
        self._phases_dirty = True
        #: ``settle`` read the table whole since the cache was last dropped (it runs from the
        #: stream, so after the table's recovery; a timer's gauge refresh may come during one)
        self._settle_scanned = False

    def get(self, pid: str) -> PatientState | None:
        """The patient's state (cached, else read from the table), or None for a new or a
        discharged one."""
        st = self._states.get(pid)
        if st is None and pid not in self._discharged:
            raw = self.table.data.get(pid.encode())
            if raw is not None:
                row = parse_row(raw)
                if isinstance(row, Discharged):
                    self._discharged[pid] = row
                    return None
                st = self._states[pid] = row
        return st

    def positions(self, pid: str) -> Positions | None:
        """The input positions folded in for ``pid``: its state's, else its discharged
        record's; None when neither exists."""
        st = self.get(pid)
        if st is not None:
            return st.applied
        gone = self._discharged.get(pid)
        return None if gone is None else gone.applied

    def put(self, pid: str, st: PatientState) -> None:
        """Cache a new or replaced state (written by the next ``write``). A patient discharged
        before: the new stay takes over the discharged record's positions it has none of yet,
        so the old stay's records, resent later still, stay duplicates."""
        gone = self._discharged.pop(pid, None)
        if gone is not None:
            for source, mark in gone.applied.items():
                st.applied.setdefault(source, list(mark))
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

    def discharge(self, partition: int, pid: str, source: str, offset: int, timestamp_ms: int,
                  now_ms: int) -> None:
        """Discharged by the record at ``offset`` of ``source``: the state becomes a
        ``Discharged`` record (module doc), written to the table and its changelog at once, so
        it is there before the discharge's offset can be committed. Nothing is written for a
        patient never seen."""
        held = self.positions(pid)  # the state's, or an earlier discharge's
        self._states.pop(pid, None)
        self._discharged.pop(pid, None)
        if self._phase_of.pop(pid, None) is not None:
            self._phases_dirty = True
        if held is None:
            return
        applied = {s: list(mark) for s, mark in held.items()}
        applied[source] = [offset, timestamp_ms]
        marker = self._discharged[pid] = Discharged(pid, partition, now_ms, applied)
        key, value = pid.encode(), marker.to_json()
        self.table.data[key] = value
        self.table.send_changelog(partition, key, value)

    def settle(self, partition: int, commit_head: Callable[[str, int], int | None],
               now_ms: int, keep_ms: int) -> int:
        """Drop the discharged records of ``partition`` that ``Discharged.settled`` says no
        redelivery can need any more, or that are older than ``keep_ms`` (module doc); returns
        how many were dropped."""
        if not self._settle_scanned:
            self._scan()
            self._settle_scanned = True
        dropped = 0
        for pid, gone in list(self._discharged.items()):
            if gone.partition != partition:
                continue
            if now_ms - gone.discharged_at_ms < keep_ms and not gone.settled(commit_head):
                continue
            del self._discharged[pid]
            key = pid.encode()
            if self.table.data.get(key) is not None:
                del self.table.data[key]
                self.table.send_changelog(partition, key, None)
            dropped += 1
        return dropped

    def clear(self) -> None:
        """Partitions are moving: drop the cache (the table is re-read on demand)."""
        self._states.clear()
        self._discharged.clear()
        self._phase_of.clear()
        self._phases_dirty = True
        self._settle_scanned = False

    def _scan(self) -> None:
        """Read the table whole: the phase of every patient and every discharged record."""
        self._phases_dirty = True
        for raw in list(self.table.data.values()):
            if not raw:
                continue
            d = json.loads(raw)  # the phase is all a state is read for here
            pid = d["pid"]
            cached = self._states.get(pid)  # maybe newer than the table (written next)
            gone = None if cached is not None else _discharged(d)
            if gone is not None:
                self._discharged.setdefault(pid, gone)
            elif pid not in self._discharged:
                self._phase_of.setdefault(pid, cached.phase if cached else d.get("ph", "none"))

    def phase_counts(self) -> Counter[str] | None:
        """Patients by current phase, or None when nothing changed since the last call.
        Discharged patients are not patients here."""
        if not self._phases_dirty:
            return None
        if not self._phase_of:  # after a start or a rebalance
            self._scan()
        self._phases_dirty = False
        counts = Counter(self._phase_of.values())
        return Counter({phase: counts.get(phase, 0) for phase in PHASES})
