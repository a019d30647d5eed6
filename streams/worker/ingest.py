"""The gate between a Kafka record and the detectors: decode, validate, check the key.

The same validation the replay uses (``detectors.observation``), plus what only a stream has: a
value that is not one UTF-8 JSON object, and a key that is not the record's patient (keys route
a patient to one partition, so a wrong key would split a patient's state). Pure: bytes in, a
decision out, so every refusal can be dead-lettered with its reason and counted by kind.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

from detectors.interventions import Intervention, parse_intervention
from detectors.observation import (
    Observation,
    PatientContext,
    Rejection,
    Retraction,
    normalise,
    parse_context,
)
from detectors.units import KINDS, canonical_kind
from streams.interfaces.codes import load_tables
from streams.interfaces.fhir.inbound import FhirSettings, is_fhir, read_fhir
from streams.kafka import codec


class Refused(NamedTuple):
    """Why a record cannot be used, and the ``kind`` metric label to count it under."""

    rejection: Rejection
    kind: str


#: the metric label of every intervention (one label: the kinds are a closed list anyway)
INTERVENTION = "intervention"

Value = Observation | Retraction | PatientContext | Intervention


class Mapped(NamedTuple):
    """A FHIR resource or Bundle: the values it gave, and what of it was refused (if any)."""

    values: tuple[Value, ...]
    refused: Refused | None


@functools.cache
def fhir_settings() -> FhirSettings:
    """The worker reads FHIR with the built-in code tables (or ``CLSMON_CODES`` /
    ``CLSMON_UNITS``) and the patient-id system ``CLSMON_FHIR_PATIENT_SYSTEM``."""
    return FhirSettings(load_tables(os.environ.get("CLSMON_CODES") or None,
                                    os.environ.get("CLSMON_UNITS") or None),
                        os.environ.get("CLSMON_FHIR_PATIENT_SYSTEM") or None)


def ingest_fhir(key: bytes | None, doc: dict[str, object]) -> Mapped:
    """A FHIR R4 value on an input topic (docs/contract.md, "FHIR R4"): its observations and
    context, each checked like a contract record and against the message key."""
    reading = read_fhir(doc, fhir_settings())
    key_text = codec.key_text(key)
    values: list[Value] = []
    problems = [(p.reason, f"{p.path}: {p.detail}") for p in reading.problems]
    for role, pid, record in reading.records:
        parsed = parse_context(record) if role == "patients" else normalise(record)
        if isinstance(parsed, Rejection):
            problems.append((parsed.reason, parsed.detail))
        elif pid != key_text:
            problems.append(("inconsistent", f"message key {key_text!r} is not the patient "
                             f"{pid!r} of the resource (keys route a patient to one partition)"))
        else:
            values.append(parsed)
    refused = None
    if problems:
        refused = Refused(Rejection(problems[0][0], "; ".join(d for _, d in problems)[:2000]),
                          "fhir")
    return Mapped(tuple(values), refused)


def ingest(key: bytes | None, value: bytes | None, is_context: bool,
           is_intervention: bool = False
           ) -> Value | Refused | Mapped:
    """Decode and validate one record of ``patients`` (``is_context``), ``interventions``
    (``is_intervention``), ``vitals`` or ``labs``.

    Returns the validated observation, context or intervention, ``Mapped`` for a FHIR value,
    or ``Refused`` (never raises).
    """
    doc = codec.decode_object(value)
    kind = "context" if is_context else INTERVENTION if is_intervention else "unknown"
    if isinstance(doc, Rejection):
        return Refused(doc, kind)
    if not is_intervention and is_fhir(doc):
        return ingest_fhir(key, doc)
    if kind == "unknown":
        raw_kind = doc.get("kind")
        kind = kind_label(raw_kind.strip().lower() if isinstance(raw_kind, str) else "unknown")
    parsed: Observation | Retraction | PatientContext | Intervention | Rejection
    if is_context:
        parsed = parse_context(doc)
    elif is_intervention:
        parsed = parse_intervention(doc)
    else:
        parsed = normalise(doc)
    if isinstance(parsed, Rejection):
        return Refused(parsed, kind)
    key_text = codec.key_text(key)
    if key_text != parsed.patient_id:
        return Refused(Rejection(
            "inconsistent", f"message key {key_text!r} is not the patient_id "
            f"{parsed.patient_id!r} (keys route a patient to one partition)"),
            parsed.kind if isinstance(parsed, Observation | Retraction) else kind)
    return parsed


def kind_label(kind: str) -> str:
    """Metric label for a kind: canonical kinds and ``context``; anything else is ``unknown``
    (a label per misspelt kind would let bad input grow the series without bound)."""
    if kind in ("context", INTERVENTION, "fhir"):
        return kind
    canonical = canonical_kind(kind) if kind else None
    return canonical if canonical in KINDS else "unknown"
