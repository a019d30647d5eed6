"""The observation model: one measured value of one patient at one event time, in canonical units.

``normalise`` is the single gate between the outside world and the detectors. It never raises:
whatever arrives (a dict from JSON, a CSV row) comes out either as an ``Observation`` in the
canonical unit of its kind, or as a ``Rejection`` whose ``reason`` is a short stable code (used as
a metric label and in the dead-letter record) and whose ``detail`` tells a person what was wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from detectors.units import KINDS, URINE_MAX_ML_PER_H, canonical_kind, unit_key

#: Epoch milliseconds outside [1990, 2200) are not plausible bedside times (a seconds-for-ms
#: mix-up lands in 1970): rejected as bad_time rather than silently misplaced in time.
_MIN_EPOCH_MS = 631_152_000_000
_MAX_EPOCH_MS = 7_258_118_400_000


class Observation(NamedTuple):
    """A validated observation in the canonical unit of its kind (see ``detectors.units``)."""

    patient_id: str
    kind: str
    value: float
    observed_at_ms: int
    source: str = ""
    #: for urine_output: the collection period in minutes (None = since the previous one)
    period_min: float | None = None
    id: str = ""
    #: when the value became available (result reported, reading stored); None = when observed.
    #: Carried for honest alert times (an alert never claims a time before its evidence existed)
    available_at_ms: int | None = None


class Rejection(NamedTuple):
    """Why an input was not accepted. ``reason`` is a stable code, ``detail`` is for people."""

    reason: str
    detail: str


class PatientContext(NamedTuple):
    """Admission/ADT facts that change how criteria apply (docs/contract.md, PatientContext)."""

    patient_id: str
    event: str = "admit"  # admit | update | discharge
    sex: str | None = None  # "F" | "M" | None
    weight_kg: float | None = None
    birth_year: int | None = None
    history: tuple[str, ...] = ()


#: Reason codes (metric label values and dead-letter reasons).
REASONS = (
    "malformed_json", "not_an_object", "missing_field", "unknown_kind", "unknown_unit",
    "bad_value", "bad_time", "out_of_range", "inconsistent", "bad_context",
)


def parse_time_ms(raw: Any) -> int | None:
    """Event time as epoch milliseconds, from ISO 8601 with an offset or from epoch ms.

    A timestamp without an offset is refused (None): in an ICU feed its time zone is a guess, and
    a guess of one hour moves a hypotension episode past a lab draw.
    """
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        if not math.isfinite(raw):
            return None
        ms = int(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        if not text:
            return None
        if text.lstrip("-").isdigit():
            ms = int(text)
        else:
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                return None
            if dt.tzinfo is None:
                return None
            ms = int(dt.timestamp() * 1000)
    elif isinstance(raw, datetime):
        if raw.tzinfo is None:
            return None
        ms = int(raw.timestamp() * 1000)
    else:
        return None
    if not _MIN_EPOCH_MS <= ms < _MAX_EPOCH_MS:
        return None
    return ms


def format_time(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with a 'Z' (the form alerts carry)."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms % 1000:03d}Z" if ms % 1000 else "Z")


def _as_float(raw: Any) -> float | None:
    if isinstance(raw, bool) or raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def normalise(raw: Mapping[str, Any]) -> Observation | Rejection:
    """Validate one raw observation and convert it to canonical units; never raises."""
    if not isinstance(raw, Mapping):
        return Rejection("not_an_object", f"expected a JSON object, got {type(raw).__name__}")
    patient_id = raw.get("patient_id")
    if not isinstance(patient_id, str) or not patient_id.strip():
        return Rejection("missing_field", "patient_id is missing or not a non-empty string")
    kind_raw = raw.get("kind")
    if not isinstance(kind_raw, str):
        return Rejection("missing_field", "kind is missing or not a string")
    kind = canonical_kind(kind_raw)
    if kind is None:
        return Rejection("unknown_kind", f"unknown kind {kind_raw!r}; known: {', '.join(KINDS)}")
    spec = KINDS[kind]
    value = _as_float(raw.get("value"))
    if value is None:
        return Rejection("bad_value", f"{kind}: value {raw.get('value')!r} is not a finite number")
    unit_raw = raw.get("unit")
    if unit_raw is None or unit_raw == "":
        unit_raw = spec.canonical_unit  # an omitted unit means the contract's canonical unit
    if not isinstance(unit_raw, str):
        return Rejection("unknown_unit", f"{kind}: unit {unit_raw!r} is not a string")
    convert = spec.units.get(unit_key(unit_raw))
    if convert is None:
        return Rejection(
            "unknown_unit",
            f"{kind}: unit {unit_raw!r} not accepted (canonical {spec.canonical_unit})",
        )
    t_ms = parse_time_ms(raw.get("observed_at"))
    if t_ms is None:
        return Rejection(
            "bad_time",
            f"observed_at {raw.get('observed_at')!r} is not ISO 8601 with an offset "
            "or plausible epoch milliseconds",
        )
    canonical = convert(value)
    if not spec.low <= canonical <= spec.high:
        return Rejection(
            "out_of_range",
            f"{kind} {canonical:g} {spec.canonical_unit} outside {spec.low:g}-{spec.high:g} "
            f"({spec.range_source}): artefact",
        )
    period_min = None
    if kind == "urine_output":
        period_raw = raw.get("period_min")
        if period_raw is not None and period_raw != "":
            period_min = _as_float(period_raw)
            if period_min is None or period_min <= 0 or period_min > 24 * 60:
                return Rejection("bad_value", f"urine_output period_min {period_raw!r} "
                                 "must be a number of minutes in (0, 1440]")
            if canonical / (period_min / 60.0) > URINE_MAX_ML_PER_H:
                return Rejection(
                    "out_of_range",
                    f"urine_output {canonical:g} mL over {period_min:g} min exceeds "
                    f"{URINE_MAX_ML_PER_H:g} mL/h ({KINDS[kind].range_source}): artefact")
    available_ms = None
    available_raw = raw.get("available_at")
    if available_raw is not None and available_raw != "":
        available_ms = parse_time_ms(available_raw)
        if available_ms is None:
            return Rejection("bad_time", f"available_at {available_raw!r} is not ISO 8601 with "
                             "an offset or plausible epoch milliseconds")
        if available_ms < t_ms:
            return Rejection("inconsistent", f"available_at {available_raw} is before "
                             f"observed_at {raw.get('observed_at')}: a value cannot be known "
                             "before it was measured")
    source = raw.get("source")
    obs_id = raw.get("id")
    return Observation(
        patient_id.strip(), kind, canonical, t_ms,
        source if isinstance(source, str) else "",
        period_min,
        obs_id if isinstance(obs_id, str) else "",
        available_ms,
    )


def parse_context(raw: Mapping[str, Any]) -> PatientContext | Rejection:
    """Validate a PatientContext (ADT) record; never raises."""
    if not isinstance(raw, Mapping):
        return Rejection("not_an_object", f"expected a JSON object, got {type(raw).__name__}")
    patient_id = raw.get("patient_id")
    if not isinstance(patient_id, str) or not patient_id.strip():
        return Rejection("missing_field", "patient_id is missing or not a non-empty string")
    event = raw.get("event") or "admit"
    if event not in ("admit", "update", "discharge"):
        return Rejection("bad_context", f"event {event!r} is not admit, update or discharge")
    sex = raw.get("sex")
    if isinstance(sex, str):
        sex = sex.strip().upper()[:1] or None
    if sex not in (None, "F", "M"):
        return Rejection("bad_context", f"sex {raw.get('sex')!r} is not F, M or null")
    weight = raw.get("weight_kg")
    weight_kg = None
    if weight is not None and weight != "" and not (isinstance(weight, float) and weight != weight):
        weight_kg = _as_float(weight)
        if weight_kg is None or not KINDS["weight"].low <= weight_kg <= KINDS["weight"].high:
            return Rejection("bad_context", f"weight_kg {weight!r} is not a plausible weight")
    birth = raw.get("birth_year")
    birth_year = None
    if birth is not None and birth != "" and not (isinstance(birth, float) and birth != birth):
        as_float = _as_float(birth)
        if as_float is None or not 1880 <= as_float <= 2200:
            return Rejection("bad_context", f"birth_year {birth!r} is not a plausible year")
        birth_year = int(as_float)
    history_raw = raw.get("history") or ()
    if isinstance(history_raw, str):
        history_raw = [h for h in history_raw.replace(";", ",").split(",") if h.strip()]
    history = tuple(str(h).strip().lower() for h in history_raw)
    return PatientContext(patient_id.strip(), event, sex, weight_kg, birth_year, history)
