"""Alerts and their evidence, in the event contract's shape (docs/contract.md, Alert).

An alert is advisory (IHE ACM advisory class, docs/clinical-criteria.md "What good looks like"): it
tells a clinician which phase the patient entered and shows the numbers behind it, so the person
at the bedside can check the decision instead of trusting it.

``alert_id`` is a pure function of (patient, stay, episode, phase, severity), the stay being the
event time of the stay's first reading: the same decision made again after a redelivery, a worker
restart or an offline replay has the same id, so a notifier that remembers ids never notifies
twice, and a later admission of the same patient (a new stay, episodes counted from 1 again)
never repeats an id.

Times: ``onset_at`` is when the evidence says the criteria were met (event time), ``raised_at``
when the decision first became possible given what had ARRIVED: never before ``onset_at`` and
never before any of its evidence was available (a lab reported hours after its draw raises the
alert at its report, not at its draw).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from detectors.observation import format_time

PHASES = ("none", "prodromal", "leak", "recovery")
SEVERITIES = ("none", "info", "warning", "high", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
#: units of evidence that counts things (``phases._with_late_readings``)
COUNT_UNITS = ("readings",)


@dataclass(frozen=True, slots=True)
class Evidence:
    """One criterion's numbers: what was measured, against what, and when.

    ``criterion`` is a stable code (for machines); ``text`` says it in clinical words, e.g.
    "MAP 56 mmHg (< 65)" or "SBP 78 mmHg (<= 90; baseline 122)"; ``available_at_ms`` is when
    the evidence was known (0 = at ``observed_at_ms``)."""

    criterion: str
    value: float
    unit: str
    threshold: str
    observed_at_ms: int
    baseline: float | None = None
    text: str = ""
    available_at_ms: int = 0

    @property
    def known_at_ms(self) -> int:
        """When this evidence existed for the engine: its availability, else its event time."""
        return self.available_at_ms if self.available_at_ms > self.observed_at_ms \
            else self.observed_at_ms

    def to_dict(self) -> dict[str, Any]:
        """The evidence as the alert's JSON carries it; a count (unit ``readings``) as a whole
        number (``8``, never ``8.0``, also when a compiled build stored it as a float)."""
        value = int(self.value) if self.unit in COUNT_UNITS else round(self.value, 2)
        d: dict[str, Any] = {"criterion": self.criterion, "value": value,
                             "unit": self.unit, "threshold": self.threshold,
                             "observed_at": format_time(self.observed_at_ms)}
        if self.baseline is not None:
            d["baseline"] = round(self.baseline, 2)
        if self.text:
            d["text"] = self.text
        if self.available_at_ms > self.observed_at_ms:
            d["available_at"] = format_time(self.available_at_ms)
        return d


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    patient_id: str
    phase: str
    previous_phase: str
    severity: str
    raised_at_ms: int  # when the decision became possible given what had arrived (event time)
    episode: int
    summary: str
    evidence: tuple[Evidence, ...] = field(default_factory=tuple)
    #: where the patient lies when known (ADT PV1-3): notifications route on the ward
    ward: str | None = None
    bed: str | None = None
    onset_at_ms: int = 0  # when the evidence met the criteria (event time; <= raised_at)
    stay: int = 0  # event time of the stay's first reading (part of the id)
    supersedes: str = ""  # the id of the less severe alert of the same event it escalates

    def to_dict(self, emitted_at: str | None = None) -> dict[str, Any]:
        """The contract's JSON object; ``emitted_at`` (wall clock) is added by the I/O edge."""
        d: dict[str, Any] = {
            "alert_id": self.alert_id, "patient_id": self.patient_id, "phase": self.phase,
            "previous_phase": self.previous_phase, "severity": self.severity,
            "raised_at": format_time(self.raised_at_ms), "episode": self.episode,
            "summary": self.summary, "evidence": [e.to_dict() for e in self.evidence],
            "onset_at": format_time(self.onset_at_ms or self.raised_at_ms),
        }
        if self.ward is not None:
            d["ward"] = self.ward
        if self.bed is not None:
            d["bed"] = self.bed
        if self.stay:
            d["stay_started_at"] = format_time(self.stay)
        if self.supersedes:
            d["supersedes"] = self.supersedes
        if emitted_at is not None:
            d["emitted_at"] = emitted_at
        return d


def alert_id(patient_id: str, episode: int, phase: str, severity: str,
             stay: int | None = None) -> str:
    """Deterministic id, the first 16 hex digits of sha256 of ``patient_id|stay|episode|phase|
    severity`` (``stay``: epoch ms of the stay's first reading); without a stay (tools that
    build an alert by hand) of ``patient_id|episode|phase|severity``."""
    key = (f"{patient_id}|{episode}|{phase}|{severity}" if stay is None
           else f"{patient_id}|{stay}|{episode}|{phase}|{severity}")
    return hashlib.sha256(key.encode()).hexdigest()[:16]


_HEADLINES = {
    "prodromal": "Prodromal phase (capillary leak may follow in 1-2 days): watch closely",
    "leak": "Leak phase (shock): fluids and pressors per protocol",
    "recovery": "Recovery phase (fluid returning): review and stop fluids, watch the lungs",
    "none": "Episode closed",
}


def _fmt(e: Evidence) -> str:
    if e.text:
        return e.text
    base = f" (baseline {e.baseline:.3g} {e.unit})" if e.baseline is not None else ""
    return f"{e.criterion.replace('_', ' ')} {e.value:.3g} {e.unit}{base}"


def make_alert(patient_id: str, episode: int, phase: str, previous_phase: str, severity: str,
               onset_at_ms: int, evidence: list[Evidence], headline: str | None = None, *,
               stay: int = 0, not_before_ms: int = 0, ward: str | None = None,
               bed: str | None = None, supersedes: str = "") -> Alert:
    """Build an alert whose summary reads as one line at the bedside.

    ``raised_at`` is the latest of ``onset_at_ms``, ``not_before_ms`` (e.g. when a lab panel or
    a waiting period completed) and the availability of every piece of evidence; ``ward`` and
    ``bed`` (when the ADT feed told them) are carried, not part of ``alert_id``."""
    head = headline or _HEADLINES[phase]
    detail = "; ".join(_fmt(e) for e in evidence[:5])
    summary = f"{head}. {detail}" if detail else head
    raised = max(onset_at_ms, not_before_ms, *(e.known_at_ms for e in evidence)) \
        if evidence else max(onset_at_ms, not_before_ms)
    return Alert(alert_id(patient_id, episode, phase, severity, stay or None), patient_id,
                 phase, previous_phase, severity, raised, episode, summary, tuple(evidence),
                 ward, bed, onset_at_ms, stay, supersedes)
