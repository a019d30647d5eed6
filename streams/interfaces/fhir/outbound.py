"""Alerts out to a FHIR R4 server: a DetectedIssue carrying the evidence, and a Communication.

``alert_bundle(alert, systems)`` builds one transaction Bundle (validated with fhir.resources'
R4 models) holding both resources as **conditional creates**: ``POST DetectedIssue`` with
``ifNoneExist: identifier=<alert system>|<alert_id>`` and ``POST Communication`` with
``ifNoneExist: identifier=<alert system>|<alert_id>-notify``. Sending the same alert again (a
redelivery, a restart, a retry after a lost response) creates nothing new: idempotent by
``alert_id``, and the transaction keeps the two together.

DetectedIssue: ``status final``, ``code`` the phase (a local CodeSystem: there is no standard
code for capillary leak syndrome phases), ``severity`` (critical/high -> high, warning ->
moderate, info -> low), ``patient`` by identifier (the hospital's patient-id system),
``identifiedDateTime`` the alert's ``raised_at``, ``evidence`` one entry per criterion pointing
at a contained Observation with the number, its unit (UCUM) and time, ``detail`` the summary.
Communication: ``status completed``, category ``alert``, priority (critical -> stat, high ->
urgent, warning -> asap, info -> routine), ``about`` the DetectedIssue, ``sent`` the
``emitted_at``, the summary as payload.

The notifier's ``fhir`` sink POSTs the Bundle to the server's base URL with the webhook's
delivery (``application/fhir+json``; retries on connection errors, timeouts, 5xx, 408, 429).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALERT_SYSTEM = "urn:clsmon:alert-id"
PATIENT_SYSTEM = "urn:clsmon:patient-id"
PHASE_SYSTEM = "urn:clsmon:CodeSystem:cls-phase"
SEVERITY = {"critical": "high", "high": "high", "warning": "moderate", "info": "low"}
PRIORITY = {"critical": "stat", "high": "urgent", "warning": "asap", "info": "routine"}
#: evidence criterion -> (LOINC code, display, UCUM unit) when the number is a measurement
LOINC = {
    "hypotension": ("8480-6", "Systolic blood pressure", "mm[Hg]"),
    "blood_pressure_recovered": ("8480-6", "Systolic blood pressure", "mm[Hg]"),
    "hemoconcentration": ("4544-3", "Hematocrit", "%"),
    "hematocrit_falling": ("4544-3", "Hematocrit", "%"),
    "hypoalbuminemia": ("1751-7", "Albumin", "g/dL"),
    "leukocytosis": ("6690-2", "Leukocytes", "10*9/L"),
    "weight_gain": ("29463-7", "Body weight", "kg"),
    "weight_over_baseline": ("29463-7", "Body weight", "kg"),
}
_UCUM = {"mmHg": "mm[Hg]", "10^9/L": "10*9/L"}


@dataclass(frozen=True, slots=True)
class FhirSystems:
    """Identifier systems of the site: its patient ids, and the alert ids clsmon writes."""

    patient_system: str = PATIENT_SYSTEM
    alert_system: str = ALERT_SYSTEM


def _patient(alert: dict[str, Any], s: FhirSystems) -> dict[str, Any]:
    return {"identifier": {"system": s.patient_system, "value": str(alert["patient_id"])}}


def detected_issue(alert: dict[str, Any], s: FhirSystems) -> dict[str, Any]:
    contained, evidence = [], []
    for i, ev in enumerate(alert.get("evidence") or [], 1):
        code = LOINC.get(str(ev.get("criterion")))
        unit = str(ev.get("unit", ""))
        obs: dict[str, Any] = {
            "resourceType": "Observation", "id": f"ev{i}", "status": "final",
            "code": {"text": str(ev.get("criterion", "")).replace("_", " ")},
            "subject": _patient(alert, s), "effectiveDateTime": ev.get("observed_at"),
            "valueQuantity": {"value": ev.get("value"), "unit": unit,
                              "system": "http://unitsofmeasure.org",
                              "code": _UCUM.get(unit, unit)},
            "note": [{"text": f"threshold: {ev.get('threshold', '')}"
                      + (f"; baseline {ev['baseline']}" if ev.get("baseline") is not None
                         else "")}]}
        if code is not None:
            obs["code"]["coding"] = [{"system": "http://loinc.org", "code": code[0],
                                      "display": code[1]}]
        contained.append(obs)
        evidence.append({"detail": [{"reference": f"#ev{i}", "display":
                                     f"{ev.get('criterion')} {ev.get('value')} {unit}"}]})
    phase = str(alert["phase"])
    issue: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "identifier": [{"system": s.alert_system, "value": str(alert["alert_id"])}],
        "status": "final",
        "code": {"coding": [{"system": PHASE_SYSTEM, "code": phase,
                             "display": f"Capillary leak syndrome, {phase} phase"}],
                 "text": f"Capillary leak syndrome, {phase} phase (episode "
                         f"{alert.get('episode')})"},
        "severity": SEVERITY.get(str(alert.get("severity")), "low"),
        "patient": _patient(alert, s),
        "identifiedDateTime": alert.get("raised_at"),
        "author": {"display": "clsmon (advisory decision support)"},
        "detail": str(alert.get("summary", "")),
    }
    if contained:
        issue["contained"] = contained
        issue["evidence"] = evidence
    return issue


def communication(alert: dict[str, Any], s: FhirSystems, issue_ref: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resourceType": "Communication",
        "identifier": [{"system": s.alert_system, "value": f"{alert['alert_id']}-notify"}],
        "status": "completed",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                  "communication-category", "code": "alert"}]}],
        "priority": PRIORITY.get(str(alert.get("severity")), "routine"),
        "subject": _patient(alert, s),
        "about": [{"reference": issue_ref}],
        "sender": {"display": "clsmon"},
        "payload": [{"contentString": str(alert.get("summary", ""))}],
    }
    if alert.get("emitted_at"):
        doc["sent"] = alert["emitted_at"]
    return doc


def alert_bundle(alert: dict[str, Any], s: FhirSystems = FhirSystems()) -> dict[str, Any]:
    """The transaction Bundle for one alert (validated: raises ``ValueError`` naming the
    FHIRPath of what is wrong, which would be a bug here)."""
    from streams.interfaces.fhir.inbound import validate_resource

    issue_url = f"urn:uuid:{_uuid(alert['alert_id'], 'issue')}"
    aid = str(alert["alert_id"])
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": issue_url, "resource": detected_issue(alert, s),
         "request": {"method": "POST", "url": "DetectedIssue",
                     "ifNoneExist": f"identifier={s.alert_system}|{aid}"}},
        {"fullUrl": f"urn:uuid:{_uuid(aid, 'notify')}",
         "resource": communication(alert, s, issue_url),
         "request": {"method": "POST", "url": "Communication",
                     "ifNoneExist": f"identifier={s.alert_system}|{aid}-notify"}}]}
    problems = validate_resource(bundle)
    if problems:
        raise ValueError("; ".join(f"{p.path}: {p.detail}" for p in problems))
    return bundle


def _uuid(alert_id: Any, what: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"clsmon:{alert_id}:{what}"))
