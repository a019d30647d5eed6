"""Evidence in a clinician's words: what each criterion is called at the bedside, and one line
per piece of evidence ("Low blood pressure: 78 mmHg (limit SBP <= 90 mmHg ...; at 03:52)").

Used where a person reads an alert: the ward board and the per-patient phase record the worker
publishes. Pure: the evidence objects of the event contract (docs/contract.md, Alert) in, text
out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

#: criterion (detectors.criteria) -> what a clinician calls it; the evidence's numbers follow
CLINICAL_WORDS = {
    "hypotension": "Low blood pressure",
    "hemoconcentration": "Blood concentrated (hematocrit up)",
    "hypoalbuminemia": "Low albumin",
    "rapid_weight_gain": "Rapid weight gain",
    "weight_over_baseline": "Weight above baseline",
    "blood_pressure_recovered": "Blood pressure recovered",
    "hematocrit_falling": "Hematocrit falling",
    "polyuria": "High urine output",
    "oliguria": "Low urine output",
    "falling_urine_output": "Urine output falling",
    "leukocytosis": "High white cell count",
    "late_bp_readings": "Late blood-pressure readings (not used)",
}


def criterion_words(criterion: object) -> str:
    """The clinical name of a criterion (unknown ones: the code with spaces)."""
    text = str(criterion)
    return CLINICAL_WORDS.get(text, text.replace("_", " "))


def _hhmm(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%H:%M")
    except ValueError:
        return None


def evidence_line(evidence: dict[str, Any]) -> str:
    """One piece of evidence (the contract's evidence object) as one readable line: the
    engine's own clinical text when it gave one ("Low blood pressure: MAP 56 mmHg (< 65; low
    for 35 min)"), else built from the numbers."""
    text = evidence.get("text")
    if isinstance(text, str) and text:
        return f"{criterion_words(evidence.get('criterion', '?'))}: {text}"
    value = evidence.get("value")
    number = f"{value:g}" if isinstance(value, int | float) else str(value)
    text = f"{criterion_words(evidence.get('criterion', '?'))}: {number} " \
           f"{evidence.get('unit', '')}".rstrip()
    extra = []
    if evidence.get("threshold"):
        extra.append(f"limit {evidence['threshold']}")
    baseline = evidence.get("baseline")
    if isinstance(baseline, int | float):
        extra.append(f"baseline {baseline:g}")
    when = _hhmm(evidence.get("observed_at"))
    if when:
        extra.append(f"at {when}")
    return text + (f" ({'; '.join(extra)})" if extra else "")
