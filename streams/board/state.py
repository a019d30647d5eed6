"""The board's picture, rebuilt from events, and the fan-out to the open live streams.

Events: alerts, acknowledgements and escalation requests (``alert-acks``), delivery outcomes
(``notifications``), the worker's per-patient phase records (``patient-phase``, compacted) and
the patients' recent vitals and labs (for the timeline and for "no data since"). Pure in-memory
and confined to the event loop; the Kafka reader (``kafka_io``) and the tests feed it the same
events, so a restarted board that re-reads the topics shows the same picture.

Bounded: per patient at most ``max_points`` readings per charted kind, and only the last
``keep_hours`` of event time; alerts and their history are small (a few per patient-week).
"""

from __future__ import annotations

import asyncio
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from detectors.alerts import SEVERITY_RANK
from detectors.wording import evidence_line

#: alerts that wait for a person (info: an episode closed)
NEEDS_ACK = frozenset({"warning", "high", "critical"})
#: what the timeline draws (canonical units, detectors.units)
CHART_KINDS = ("sbp", "map", "hematocrit", "albumin", "weight")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(s: Any) -> datetime | None:
    if not isinstance(s, str):
        return None
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def ward_of(doc: dict[str, Any]) -> str:
    """The ward the ADT feed gave; else the patient id's prefix (``icu3-bed07`` -> ``icu3``),
    the convention the notifier's routes use; else "-"."""
    ward = doc.get("ward")
    if isinstance(ward, str) and ward:
        return ward
    pid = str(doc.get("patient_id") or "")
    return pid.split("-", 1)[0] if "-" in pid else "-"


class Series:
    """One patient's readings of one kind: event times (ms) and values, oldest first."""

    __slots__ = ("times", "values")

    def __init__(self) -> None:
        self.times = array("q")
        self.values = array("d")

    def add(self, t_ms: int, value: float, max_points: int, keep_ms: int) -> None:
        if self.times and t_ms < self.times[-1]:  # late: keep order (rare; labs)
            i = len(self.times)
            while i and self.times[i - 1] > t_ms:
                i -= 1
            self.times.insert(i, t_ms)
            self.values.insert(i, value)
        else:
            self.times.append(t_ms)
            self.values.append(value)
        horizon = self.times[-1] - keep_ms
        drop = 0
        while drop < len(self.times) and self.times[drop] < horizon:
            drop += 1
        drop = max(drop, len(self.times) - max_points)
        if drop > 0:
            del self.times[:drop]
            del self.values[:drop]


@dataclass
class Bed:
    patient_id: str
    ward: str
    bed: str | None = None
    phase: str = "none"
    severity: str = "none"
    since: str | None = None
    episode: int | None = None
    last_evidence: str = ""
    alert_ids: list[str] = field(default_factory=list)
    last_seen: float | None = None  # wall clock (s) of the last vital or lab record


class BoardState:
    def __init__(self, max_points: int = 1000, keep_hours: float = 72.0) -> None:
        self.alerts: dict[str, dict[str, Any]] = {}
        self.acks: dict[str, list[dict[str, Any]]] = {}
        self.escalation_requests: dict[str, list[dict[str, Any]]] = {}
        self.outcomes: dict[str, list[dict[str, Any]]] = {}
        self.beds: dict[str, Bed] = {}
        self.series: dict[str, dict[str, Series]] = {}
        self.max_points = max_points
        self.keep_ms = int(keep_hours * 3_600_000)
        self.version = 0
        self.caught_up = False  # set by the reader once the history has been read
        self._subscribers: set[asyncio.Queue[tuple[int, str]]] = set()

    # --- events -----------------------------------------------------------------------
    def _bed(self, pid: str, doc: dict[str, Any]) -> Bed:
        bed = self.beds.get(pid)
        if bed is None:
            bed = self.beds[pid] = Bed(pid, ward_of({**doc, "patient_id": pid}))
        elif isinstance(doc.get("ward"), str) and doc["ward"]:
            bed.ward = doc["ward"]
        if isinstance(doc.get("bed"), str) and doc["bed"]:
            bed.bed = doc["bed"]
        return bed

    def apply_alert(self, doc: dict[str, Any]) -> None:
        aid, pid = doc.get("alert_id"), doc.get("patient_id")
        if not isinstance(aid, str) or not isinstance(pid, str):
            return  # the notifier dead-letters bad input; the board only skips it
        if aid in self.alerts:
            return  # at-least-once upstream: same id, same alert
        doc = {**doc, "received_at": doc.get("emitted_at") or now_iso()}
        self.alerts[aid] = doc
        bed = self._bed(pid, doc)
        bed.alert_ids.append(aid)
        newest = parse_time(doc.get("raised_at"))
        if bed.since is None or (newest and newest >= (parse_time(bed.since) or newest)):
            bed.phase, bed.severity = doc.get("phase", "none"), doc.get("severity", "none")
            bed.since = doc.get("raised_at")
            bed.episode = doc.get("episode") if isinstance(doc.get("episode"), int) else None
            evidence = doc.get("evidence") or []
            if evidence and isinstance(evidence[0], dict):
                bed.last_evidence = evidence_line(evidence[0])
        self._changed(pid)

    def apply_ack(self, doc: dict[str, Any], patient_id: str | None = None) -> None:
        """An acknowledgement or an escalation request (``action``), from ``alert-acks``."""
        aid = doc.get("alert_id")
        if not isinstance(aid, str) or not isinstance(doc.get("by"), str):
            return
        kind = self.escalation_requests if doc.get("action") == "escalate" else self.acks
        history = kind.setdefault(aid, [])
        if any(a.get("at") == doc.get("at") and a.get("by") == doc.get("by") for a in history):
            return  # the same one read again (or applied locally before)
        history.append(doc)
        self._changed_alert(aid, patient_id)

    def apply_outcome(self, doc: dict[str, Any]) -> None:
        """A delivery outcome from ``notifications``."""
        aid = doc.get("alert_id")
        if not isinstance(aid, str):
            return
        self.outcomes.setdefault(aid, []).append(doc)
        self._changed_alert(aid, doc.get("patient_id"))

    def apply_phase(self, pid: str, doc: dict[str, Any] | None) -> None:
        """The worker's per-patient phase record (``patient-phase``); None: discharged."""
        if doc is None:
            if self.beds.pop(pid, None) is not None:
                self.series.pop(pid, None)
                self._changed(pid)
            return
        bed = self._bed(pid, doc)
        for name in ("phase", "severity", "since"):
            if isinstance(doc.get(name), str):
                setattr(bed, name, doc[name])
        if isinstance(doc.get("episode"), int):
            bed.episode = doc["episode"]
        if isinstance(doc.get("last_evidence"), str):
            bed.last_evidence = doc["last_evidence"]
        self._changed(pid)

    def apply_observation(self, pid: str, kind: str, t_ms: int, value: float,
                          arrived: float | None = None) -> None:
        """One validated reading (canonical unit); ``arrived`` is its record's wall clock."""
        bed = self.beds.get(pid)
        if bed is not None and arrived is not None:
            bed.last_seen = max(bed.last_seen or 0.0, arrived)
        if kind in CHART_KINDS:
            self.series.setdefault(pid, {}).setdefault(kind, Series()).add(
                t_ms, value, self.max_points, self.keep_ms)

    # --- views ------------------------------------------------------------------------
    def unacked(self, bed: Bed) -> list[dict[str, Any]]:
        return [self.alerts[a] for a in bed.alert_ids
                if self.alerts[a].get("severity") in NEEDS_ACK and not self.acks.get(a)
                and not self._superseded(a)]

    def _superseded(self, aid: str) -> bool:
        return any(o.get("outcome") == "superseded" for o in self.outcomes.get(aid, ()))

    def failures(self, aid: str) -> list[dict[str, Any]]:
        return [o for o in self.outcomes.get(aid, ()) if o.get("outcome") == "failed"]

    def escalations(self, aid: str) -> list[dict[str, Any]]:
        return [o for o in self.outcomes.get(aid, ()) if o.get("kind") == "escalation"]

    def row(self, pid: str, now: float, silent_after_s: float) -> dict[str, Any]:
        bed = self.beds[pid]
        open_ = self.unacked(bed)
        oldest = min((a["received_at"] for a in open_), default=None)
        latest = self.alerts[bed.alert_ids[-1]] if bed.alert_ids else None
        last_ack = None
        if latest and self.acks.get(latest["alert_id"]):
            last_ack = self.acks[latest["alert_id"]][-1]
        failed = [f for a in bed.alert_ids for f in self.failures(a)]
        escalated = [e for a in bed.alert_ids for e in self.escalations(a)
                     if e.get("outcome") == "delivered"]
        silent = bed.last_seen is not None and now - bed.last_seen > silent_after_s
        return {"bed": bed, "unacked": open_, "oldest_unacked": oldest, "latest": latest,
                "last_ack": last_ack, "failed": failed, "escalated": escalated,
                "silent_min": int((now - bed.last_seen) // 60) if silent and bed.last_seen
                else None, "sort": self.sort_key(bed, open_, oldest)}

    @staticmethod
    def sort_key(bed: Bed, open_: list[dict[str, Any]], oldest: str | None) -> str:
        """Unacknowledged first (worst severity, then longest waiting), then by severity."""
        if open_:
            worst = max(SEVERITY_RANK.get(a.get("severity", "none"), 0) for a in open_)
            return f"0-{9 - worst}-{oldest}-{bed.patient_id}"
        return f"1-{9 - SEVERITY_RANK.get(bed.severity, 0)}-{bed.patient_id}"

    def rows(self, ward: str | None, now: float, silent_after_s: float) -> list[dict[str, Any]]:
        rows = [self.row(p, now, silent_after_s) for p, b in self.beds.items()
                if not ward or b.ward == ward]
        return sorted(rows, key=lambda r: r["sort"])

    def wards(self) -> list[str]:
        return sorted({b.ward for b in self.beds.values()})

    def silent_beds(self, now: float, silent_after_s: float) -> list[Bed]:
        """Beds whose last vital or lab is older than ``silent_after_s`` (oldest first)."""
        silent = [b for b in self.beds.values()
                  if b.last_seen is not None and now - b.last_seen > silent_after_s]
        return sorted(silent, key=lambda b: b.last_seen or 0.0)

    def chart_points(self, pid: str) -> dict[str, list[tuple[int, float]]]:
        return {k: list(zip(s.times, s.values, strict=True))
                for k, s in self.series.get(pid, {}).items()}

    # --- fan-out ------------------------------------------------------------------------
    def _changed_alert(self, aid: str, pid: Any) -> None:
        pid = pid if isinstance(pid, str) else (self.alerts.get(aid) or {}).get("patient_id")
        if isinstance(pid, str) and pid in self.beds:
            self._changed(pid)

    def _changed(self, pid: str) -> None:
        self.version += 1
        for q in list(self._subscribers):
            try:
                q.put_nowait((self.version, pid))
            except asyncio.QueueFull:  # a stuck client: drop it, its EventSource reconnects
                self._subscribers.discard(q)

    def subscribe(self) -> asyncio.Queue[tuple[int, str]]:
        q: asyncio.Queue[tuple[int, str]] = asyncio.Queue(maxsize=1000)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[tuple[int, str]]) -> None:
        self._subscribers.discard(q)

    def snapshot(self) -> dict[str, Any]:
        return {"beds": len(self.beds), "alerts": len(self.alerts),
                "acks": sum(len(v) for v in self.acks.values()), "version": self.version}
