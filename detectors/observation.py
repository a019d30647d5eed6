"""The observation model: one measured value of one patient at one event time, in canonical units.

``normalise`` is the single gate between the outside world and the detectors. It never raises:
whatever arrives (a dict from JSON, a CSV row) comes out either as an ``Observation`` in the
canonical unit of its kind, or as a ``Rejection`` whose ``reason`` is a short stable code (used as
a metric label and in the dead-letter record) and whose ``detail`` tells a person what was wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from detectors.times import JSON_FORMS, PLAUSIBLE_YEARS, BadTime, format_iso, parse_time
from detectors.units import KINDS, URINE_MAX_ML_PER_H, canonical_kind, unit_key

#: Result statuses an observation may carry (FHIR ObservationStatus words; HL7 OBX-11 F, C, P/R/S
#: map onto them). A missing status is ``final``. ``entered-in-error`` makes the record a
#: ``Retraction`` (docs/contract.md, "Retraction").
STATUSES = ("final", "corrected", "preliminary", "unverified")
RETRACTED = "entered-in-error"


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
    #: one of STATUSES; ``corrected`` replaces the reading of the same kind and time
    status: str = "final"
    #: "<" or ">" when the lab reported a bound ("<2.0"): ``value`` is the bound
    censored: str = ""


class Retraction(NamedTuple):
    """A reading withdrawn by its sender (HL7 OBX-11 D/W, FHIR ``entered-in-error``).

    It names the reading by kind and event time (and value, when given in canonical units):
    that is how the engine's windows hold readings (docs/contract.md, "Retraction").
    """

    patient_id: str
    kind: str
    observed_at_ms: int
    value: float | None = None
    id: str = ""
    source: str = ""


class Rejection(NamedTuple):
    """Why an input was not accepted. ``reason`` is a stable code, ``detail`` is for people."""

    reason: str
    detail: str


#: ADT events a PatientContext may carry: admit (A01/A04), update (A08), transfer (A02: new
#: ward/bed), discharge (A03: state forgotten), cancel (A11/A13: an admission or a discharge
#: entered in error; see ``detectors.phases.apply_context``)
CONTEXT_EVENTS = ("admit", "update", "transfer", "discharge", "cancel")


class PatientContext(NamedTuple):
    """Admission/ADT facts that change how criteria apply (docs/contract.md, PatientContext)."""

    patient_id: str
    event: str = "admit"  # one of CONTEXT_EVENTS
    sex: str | None = None  # "F" | "M" | None
    weight_kg: float | None = None
    birth_year: int | None = None
    history: tuple[str, ...] = ()
    ward: str | None = None  # the point of care (HL7 PV1-3.1), routes notifications
    bed: str | None = None  # room/bed within the ward (PV1-3.2/3.3), shown on the board
    #: what a ``cancel`` undoes: ``admit`` (default) or ``discharge``
    cancels: str = "admit"


#: Reason codes (metric label values and dead-letter reasons).
REASONS = (
    "malformed_json", "not_an_object", "missing_field", "unknown_kind", "unknown_unit",
    "bad_value", "bad_status", "bad_time", "out_of_range", "inconsistent", "bad_context",
    "artefact_jump",
)


def parse_time_ms(raw: Any) -> int | None:
    """Event time as epoch milliseconds, from ISO 8601 with an offset or from epoch ms.

    A timestamp without an offset is refused (None): in an ICU feed its time zone is a guess, and
    a guess of one hour moves a hypotension episode past a lab draw. An HL7 DTM is refused too
    (only HL7 fields are read as DTM). ``detectors.times.parse_time`` says why.
    """
    parsed = parse_time(raw, forms=JSON_FORMS)
    return None if isinstance(parsed, BadTime) else parsed.epoch_ms


def format_time(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with a 'Z' (the form alerts carry)."""
    return format_iso(ms)


def _event_time(raw: Mapping[str, Any], name: str) -> int | Rejection:
    parsed = parse_time(raw.get(name), forms=JSON_FORMS)
    if isinstance(parsed, BadTime):
        return Rejection("bad_time", f"{name}: {parsed.detail}")
    return parsed.epoch_ms


def _censored(raw: Any) -> tuple[Any, str]:
    """A censored lab result ("<2.0", ">70", "< 0.5") as (bound, "<" or ">"); else (raw, "")."""
    if isinstance(raw, str):
        text = raw.strip()
        if text[:1] in ("<", ">"):
            return text[1:].lstrip("=").strip(), text[0]
    return raw, ""


def _as_float(raw: Any) -> float | None:
    if isinstance(raw, bool) or raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def normalise(raw: Mapping[str, Any]) -> Observation | Retraction | Rejection:
    """Validate one raw observation and convert it to canonical units; never raises.

    A record whose ``status`` is ``entered-in-error`` is a ``Retraction`` (value and unit
    optional); any other status must be one of ``STATUSES``.
    """
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
    status = raw.get("status")
    if status is None or status == "":
        status = "final"
    elif status == RETRACTED:
        return _retraction(raw, patient_id.strip(), kind)
    elif status not in STATUSES:
        return Rejection("bad_status", f"{kind}: status {status!r} is not one of "
                         f"{', '.join(STATUSES)} or {RETRACTED}")
    spec = KINDS[kind]
    # a censored result ("<2.0", or a `censored` field of "<"/">") is read as its bound: the
    # evidence says so (detectors.criteria); the true value lies beyond it
    bound, censored = _censored(raw.get("value"))
    if not censored and raw.get("censored") in ("<", ">"):
        censored = str(raw.get("censored"))
    value = _as_float(bound)
    if value is None:
        return Rejection("bad_value", f"{kind}: value {raw.get('value')!r} is not a finite number")
    canonical_or_why = _canonical(kind, value, raw.get("unit"))
    if isinstance(canonical_or_why, Rejection):
        return canonical_or_why
    t_ms = _event_time(raw, "observed_at")
    if isinstance(t_ms, Rejection):
        return t_ms
    canonical = canonical_or_why
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
        available = _event_time(raw, "available_at")
        if isinstance(available, Rejection):
            return available
        if available < t_ms:
            return Rejection("inconsistent", f"available_at {available_raw} is before "
                             f"observed_at {raw.get('observed_at')}: a value cannot be known "
                             "before it was measured")
        available_ms = available
    source = raw.get("source")
    obs_id = raw.get("id")
    return Observation(
        patient_id.strip(), kind, canonical, t_ms,
        source if isinstance(source, str) else "",
        period_min,
        obs_id if isinstance(obs_id, str) else "",
        available_ms,
        status,
        censored,
    )


def _canonical(kind: str, value: float, unit_raw: Any) -> float | Rejection:
    """``value`` in ``unit_raw`` converted to the canonical unit of ``kind`` (an omitted unit
    means the contract's canonical unit)."""
    spec = KINDS[kind]
    if unit_raw is None or unit_raw == "":
        unit_raw = spec.canonical_unit
    if not isinstance(unit_raw, str):
        return Rejection("unknown_unit", f"{kind}: unit {unit_raw!r} is not a string")
    convert = spec.units.get(unit_key(unit_raw))
    if convert is None:
        return Rejection(
            "unknown_unit",
            f"{kind}: unit {unit_raw!r} not accepted (canonical {spec.canonical_unit})",
        )
    return float(convert(value))


def _retraction(raw: Mapping[str, Any], patient_id: str, kind: str) -> Retraction | Rejection:
    t_ms = _event_time(raw, "observed_at")
    if isinstance(t_ms, Rejection):
        return t_ms
    value: float | None = None
    if raw.get("value") is not None and raw.get("value") != "":
        number = _as_float(raw.get("value"))
        if number is None:
            return Rejection("bad_value", f"{kind}: value {raw.get('value')!r} of a retraction "
                             "is not a finite number")
        converted = _canonical(kind, number, raw.get("unit"))
        if isinstance(converted, Rejection):
            return converted
        value = converted
    source = raw.get("source")
    obs_id = raw.get("id")
    return Retraction(patient_id, kind, t_ms, value, obs_id if isinstance(obs_id, str) else "",
                      source if isinstance(source, str) else "")


def parse_context(raw: Mapping[str, Any]) -> PatientContext | Rejection:
    """Validate a PatientContext (ADT) record; never raises."""
    if not isinstance(raw, Mapping):
        return Rejection("not_an_object", f"expected a JSON object, got {type(raw).__name__}")
    patient_id = raw.get("patient_id")
    if not isinstance(patient_id, str) or not patient_id.strip():
        return Rejection("missing_field", "patient_id is missing or not a non-empty string")
    event = raw.get("event") or "admit"
    if event not in CONTEXT_EVENTS:
        return Rejection("bad_context",
                         f"event {event!r} is not one of {', '.join(CONTEXT_EVENTS)}")
    cancels = raw.get("cancels") or "admit"
    if event == "cancel" and cancels not in ("admit", "discharge"):
        return Rejection("bad_context", f"cancels {cancels!r} is not admit or discharge")
    place = {}
    for name in ("ward", "bed"):
        text = raw.get(name)
        if text is not None and not isinstance(text, str | int):
            return Rejection("bad_context", f"{name} {text!r} is not text")
        text = str(text).strip() if text is not None else ""
        if len(text) > 64:
            return Rejection("bad_context", f"{name} is longer than 64 characters")
        place[name] = text or None
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
        # an odd birth year (de-identified data shifts the ages of the very old before 1900)
        # leaves the rest of the context intact: it is dropped, never the row
        if as_float is not None and PLAUSIBLE_YEARS[0] <= as_float < PLAUSIBLE_YEARS[1]:
            birth_year = int(as_float)
    history_raw = raw.get("history") or ()
    if isinstance(history_raw, str):
        history_raw = [h for h in history_raw.replace(";", ",").split(",") if h.strip()]
    history = tuple(str(h).strip().lower() for h in history_raw)
    return PatientContext(patient_id.strip(), event, sex, weight_kg, birth_year, history,
                          place["ward"], place["bed"], cancels if event == "cancel" else "admit")
