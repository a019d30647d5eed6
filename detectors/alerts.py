"""Alerts and their evidence, in the event contract's shape (docs/contract.md, Alert).

An alert is advisory (IHE ACM advisory class, docs/clinical-criteria.md "What good looks like"): it
tells a clinician which phase the patient entered and shows the numbers behind it, so the person
at the bedside can check the decision instead of trusting it.

``alert_id`` is a pure function of (patient, episode, phase, severity): the same decision made
again after a redelivery, a worker restart or an offline replay has the same id, so a notifier
that remembers ids never notifies twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from detectors.observation import format_time

PHASES = ("none", "prodromal", "leak", "recovery")
SEVERITIES = ("none", "info", "warning", "high", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True, slots=True)
class Evidence:
    """One criterion's numbers: what was measured, against what, and when."""

    criterion: str
    value: float
    unit: str
    threshold: str
    observed_at_ms: int
    baseline: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"criterion": self.criterion, "value": round(self.value, 2),
                             "unit": self.unit, "threshold": self.threshold,
                             "observed_at": format_time(self.observed_at_ms)}
        if self.baseline is not None:
            d["baseline"] = round(self.baseline, 2)
        return d


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    patient_id: str
    phase: str
    previous_phase: str
    severity: str
    raised_at_ms: int  # event time of the deciding observation
    episode: int
    summary: str
    evidence: tuple[Evidence, ...] = field(default_factory=tuple)
    #: where the patient lies when known (ADT PV1-3): notifications route on the ward
    ward: str | None = None
    bed: str | None = None

    def to_dict(self, emitted_at: str | None = None) -> dict[str, Any]:
        """The contract's JSON object; ``emitted_at`` (wall clock) is added by the I/O edge."""
        d: dict[str, Any] = {
            "alert_id": self.alert_id, "patient_id": self.patient_id, "phase": self.phase,
            "previous_phase": self.previous_phase, "severity": self.severity,
            "raised_at": format_time(self.raised_at_ms), "episode": self.episode,
            "summary": self.summary, "evidence": [e.to_dict() for e in self.evidence],
        }
        if self.ward is not None:
            d["ward"] = self.ward
        if self.bed is not None:
            d["bed"] = self.bed
        if emitted_at is not None:
            d["emitted_at"] = emitted_at
        return d


def alert_id(patient_id: str, episode: int, phase: str, severity: str) -> str:
    """Deterministic id: sha256 of ``patient_id|episode|phase|severity``, first 16 hex digits."""
    key = f"{patient_id}|{episode}|{phase}|{severity}".encode()
    return hashlib.sha256(key).hexdigest()[:16]


_HEADLINES = {
    "prodromal": "Prodromal phase (capillary leak may follow in 1-2 days): watch closely",
    "leak": "Leak phase (shock): fluids and pressors per protocol",
    "recovery": "Recovery phase (fluid returning): review and stop fluids, watch the lungs",
    "none": "Episode closed",
}


def _fmt(e: Evidence) -> str:
    base = f" (baseline {e.baseline:.3g} {e.unit})" if e.baseline is not None else ""
    return f"{e.criterion} {e.value:.3g} {e.unit}{base}"


def make_alert(patient_id: str, episode: int, phase: str, previous_phase: str, severity: str,
               raised_at_ms: int, evidence: list[Evidence], headline: str | None = None, *,
               ward: str | None = None, bed: str | None = None) -> Alert:
    """Build an alert whose summary reads as one line at the bedside; ``ward`` and ``bed``
    (when the ADT feed told them) are carried, not part of ``alert_id``."""
    head = headline or _HEADLINES[phase]
    detail = "; ".join(_fmt(e) for e in evidence[:4])
    summary = f"{head}. {detail}" if detail else head
    return Alert(alert_id(patient_id, episode, phase, severity), patient_id, phase,
                 previous_phase, severity, raised_at_ms, episode, summary, tuple(evidence),
                 ward, bed)
