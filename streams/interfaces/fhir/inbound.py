"""FHIR R4 in: Observation (one value, or the blood-pressure panel 85354-9), Bundle, Patient and
Encounter JSON -> contract records, or problems that name the FHIRPath of the bad element.

Models: ``fhir.resources`` 6.4.0, the last release whose models are FHIR R4 (4.0.1) itself (7.x
and 8.x ship R4B and R5 only); it needs pydantic 1, pinned. Validation errors come back as
FHIRPaths (``Observation.component[1].valueQuantity.value``, ``Bundle.entry[2].resource...``).
What the models do not check is checked here: JSON ``null`` (FHIR forbids it), numbers sent as
strings, ``status`` codes, and every time, read from the raw JSON with the strict parser (the
R4 models accept a dateTime without an offset and keep only microseconds).

Mapping: ``code`` (LOINC, or MDC with system ``urn:iso:std:iso:11073:10101``) through the code
table; ``valueQuantity`` (UCUM ``code``, an MDC unit code, else ``unit``); event time
``effectiveDateTime`` / ``effectiveInstant`` / ``effectivePeriod.end`` (``start`` too, for a
urine collection's period); ``issued`` is ``available_at``; ``status`` final/amended/corrected/
preliminary as the contract's, ``entered-in-error`` a retraction, registered/cancelled/unknown
no value. The patient: ``subject.identifier`` of the configured system (a server id such as
``Patient/123`` is not the hospital's patient id), or a Bundle entry's Patient it refers to.
Patient: sex and birth year (an ``update``). Encounter: in-progress/arrived admit, finished
discharge, cancelled/entered-in-error cancel; its active location is the ward. A collection
Bundle is read entry by entry (a bad entry does not hide the good ones); a transaction Bundle is
all or nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from detectors.observation import Rejection, format_time, normalise, parse_context
from detectors.times import ISO_FORMS, ParsedTime, parse_time
from streams.interfaces.codes import MDC_SYSTEM_URI, CodeTables, system_name
from streams.kafka.topics import LAB_KINDS

RESOURCES = ("Observation", "Bundle", "Patient", "Encounter")
BP_PANEL = "85354-9"
UCUM_URI = "http://unitsofmeasure.org"
VALUE_STATUS = {"final": "final", "amended": "corrected", "corrected": "corrected",
                "preliminary": "preliminary"}
NO_VALUE_STATUS = ("registered", "cancelled", "unknown")
ENCOUNTER_EVENT = {"in-progress": "admit", "arrived": "admit", "finished": "discharge",
                   "cancelled": "cancel", "entered-in-error": "cancel"}
_CHOICE = re.compile(r"^(value|effective|deceased|multipleBirth|onset|abatement|occurrence|"
                     r"content|born|timing)([A-Z][A-Za-z]*)$")
_PY_TO_FHIR = {"resource_type": "resourceType", "class_fhir": "class"}


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong, where: the FHIRPath of the element and a text for people."""

    path: str
    detail: str
    reason: str = "invalid_fhir"


@dataclass(slots=True)
class FhirReading:
    records: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # role, pid
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FhirSettings:
    tables: CodeTables
    #: Identifier.system of the hospital's patient ids; None: a subject's one identifier
    patient_system: str | None = None


def is_fhir(doc: Any) -> bool:
    """A JSON object that is a FHIR resource (it has a ``resourceType``)."""
    return isinstance(doc, dict) and "resourceType" in doc


# --- validation -----------------------------------------------------------------------------

def fhirpath(root: str, loc: tuple[Any, ...], raw: Any) -> str:
    """A pydantic error location as a FHIRPath: choice types as ``value.ofType(Quantity)``."""
    out, node = root, raw
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if part == "__root__":
            continue
        name = _PY_TO_FHIR.get(str(part), str(part))
        node = node.get(name) if isinstance(node, dict) else None
        choice = _CHOICE.match(name)
        out += f".{choice.group(1)}.ofType({choice.group(2)})" if choice else f".{name}"
    return out


def _nulls(node: Any, path: str) -> list[Problem]:
    if node is None:
        return [Problem(path, "null is not allowed in FHIR JSON")]
    found: list[Problem] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _nulls(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _nulls(value, f"{path}[{i}]")
    return found


def validate_resource(doc: dict[str, Any], root: str | None = None) -> list[Problem]:
    """Problems of one resource against the FHIR R4 model of its type (empty: valid)."""
    from fhir.resources import get_fhir_model_class
    from pydantic import ValidationError

    rtype = doc.get("resourceType")
    root = root or str(rtype)
    try:
        model = get_fhir_model_class(str(rtype))
    except (KeyError, ValueError):
        return [Problem(f"{root}.resourceType", f"{rtype!r} is not a FHIR R4 resource type")]
    problems = _nulls(doc, root)
    try:
        model.parse_obj(doc)
    except ValidationError as exc:
        for err in exc.errors():
            problems.append(Problem(fhirpath(root, tuple(err["loc"]), doc), err["msg"][:200]))
    except (TypeError, KeyError, ValueError) as exc:  # raised raw by some validators
        problems.append(Problem(root, f"{type(exc).__name__}: {exc}"))
    return problems


# --- mapping --------------------------------------------------------------------------------

def read_fhir(data: bytes | str | dict[str, Any], settings: FhirSettings) -> FhirReading:
    """Map one FHIR JSON document to contract records; never raises."""
    out = FhirReading()
    if isinstance(data, dict):
        doc: Any = data
    else:
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            out.problems.append(Problem("(document)", f"not JSON: {exc}", "malformed_json"))
            return out
    if not is_fhir(doc):
        out.problems.append(Problem("(document)", "not a FHIR resource (no resourceType)"))
        return out
    rtype = doc["resourceType"]
    if rtype not in RESOURCES:
        out.problems.append(Problem(f"{rtype}.resourceType", f"{rtype!r} is not read here "
                                    f"({', '.join(RESOURCES)})"))
        return out
    if rtype != "Bundle":
        problems = validate_resource(doc)
        if problems:
            out.problems += problems
            return out
        _one(doc, rtype, settings, out, {})
        return out
    entries = doc.get("entry") if isinstance(doc.get("entry"), list) else []
    envelope = {k: v for k, v in doc.items() if k != "entry"}
    out.problems += validate_resource(envelope, "Bundle")
    index = {e.get("fullUrl"): e.get("resource") for e in entries if isinstance(e, dict)}
    bad: dict[int, list[Problem]] = {}
    for i, entry in enumerate(entries):
        path = f"Bundle.entry[{i}].resource"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            bad[i] = [Problem(path, "an entry without a resource")]
        elif resource.get("resourceType") in ("Observation", "Patient", "Encounter"):
            found = validate_resource(resource, f"{path}.ofType({resource['resourceType']})")
            if found:
                bad[i] = found
    out.problems += [p for found in bad.values() for p in found]
    if out.problems and doc.get("type") == "transaction":
        return out  # all or nothing
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if i not in bad and isinstance(resource, dict):
            _one(resource, f"Bundle.entry[{i}].resource.ofType({resource.get('resourceType')})",
                 settings, out, index)
    if out.problems and doc.get("type") == "transaction":
        out.records.clear()  # a problem found while mapping: still all or nothing
    return out


def _one(r: dict[str, Any], path: str, settings: FhirSettings, out: FhirReading,
         index: dict[Any, Any]) -> None:
    rtype = r.get("resourceType")
    if rtype == "Observation":
        _observation(r, path, settings, out, index)
    elif rtype == "Patient":
        _patient_resource(r, path, settings, out)
    elif rtype == "Encounter":
        _encounter(r, path, settings, out, index)


def _identifier(idents: Any, settings: FhirSettings) -> str | None:
    found = [i for i in idents or [] if isinstance(i, dict) and i.get("value")
             and (settings.patient_system is None or i.get("system") == settings.patient_system)]
    return str(found[0]["value"]) if len(found) == 1 or (found and settings.patient_system) \
        else None


def _subject(ref: Any, path: str, settings: FhirSettings, out: FhirReading,
             index: dict[Any, Any]) -> str | None:
    ref = ref if isinstance(ref, dict) else {}
    pid = _identifier([ref.get("identifier")], settings) if ref.get("identifier") else None
    target = index.get(ref.get("reference"))
    if pid is None and isinstance(target, dict) and target.get("resourceType") == "Patient":
        pid = _identifier(target.get("identifier"), settings)
    if pid is None:
        system = settings.patient_system or "the hospital's"
        out.problems.append(Problem(f"{path}.identifier", f"no patient identifier of system "
                                    f"{system} (a server id such as 'Patient/123' is not the "
                                    "patient id)", "missing_field"))
    return pid


def _time(raw: Any, path: str, out: FhirReading) -> ParsedTime | None:
    parsed = parse_time(raw, forms=ISO_FORMS)
    if isinstance(parsed, ParsedTime):
        return parsed
    out.problems.append(Problem(path, parsed.detail, "bad_time"))
    return None


def _effective(r: dict[str, Any], path: str, out: FhirReading
               ) -> tuple[ParsedTime, ParsedTime | None] | None:
    for name in ("effectiveDateTime", "effectiveInstant"):
        if name in r:
            at = _time(r[name], f"{path}.effective.ofType({name[9:]})", out)
            return (at, None) if at else None
    period = r.get("effectivePeriod")
    if isinstance(period, dict) and (period.get("end") or period.get("start")):
        which = "end" if period.get("end") else "start"
        at = _time(period[which], f"{path}.effective.ofType(Period).{which}", out)
        start = (_time(period["start"], f"{path}.effective.ofType(Period).start", out)
                 if which == "end" and period.get("start") else None)
        return (at, start) if at else None
    out.problems.append(Problem(f"{path}.effective", "no effectiveDateTime, effectiveInstant "
                                "or effectivePeriod: the event time is unknown", "bad_time"))
    return None


def _codes(cc: Any) -> list[tuple[str, str]]:
    coding = cc.get("coding") if isinstance(cc, dict) else None
    return [(str(c.get("system", "")), str(c.get("code", ""))) for c in coding or []
            if isinstance(c, dict)]


def _kind(cc: Any, tables: CodeTables) -> str | None:
    for system, code in _codes(cc):
        kind = tables.kind(system, code)
        if kind:
            return kind
    return None


def _unit(q: dict[str, Any], tables: CodeTables) -> str:
    system, code = str(q.get("system", "")), str(q.get("code", ""))
    if system == MDC_SYSTEM_URI and code:
        return tables.ucum(code) or f"MDC {code}"
    if system_name(system) == "UCUM" and code:
        return code
    return str(q.get("unit") or code)


def _observation(r: dict[str, Any], path: str, settings: FhirSettings, out: FhirReading,
                 index: dict[Any, Any]) -> None:
    status = r.get("status")
    if status in NO_VALUE_STATUS:
        return
    if status not in VALUE_STATUS and status != "entered-in-error":
        out.problems.append(Problem(f"{path}.status", f"status {status!r} is not an "
                                    "ObservationStatus", "bad_status"))
        return
    pid = _subject(r.get("subject"), f"{path}.subject", settings, out, index)
    when = _effective(r, path, out)
    if pid is None or when is None:
        return
    at, start = when
    issued = _time(r["issued"], f"{path}.issued", out) if "issued" in r else None
    items = ([(c.get("code"), c, f"{path}.component[{i}]")
              for i, c in enumerate(r.get("component") or []) if isinstance(c, dict)]
             if any(code == BP_PANEL for _, code in _codes(r.get("code")))
             or ("component" in r and "valueQuantity" not in r)
             else [(r.get("code"), r, path)])
    ident = next((i for i in r.get("identifier") or [] if isinstance(i, dict)
                  and i.get("value")), None)
    base = f"{ident.get('system', '')}|{ident['value']}" if ident else str(r.get("id") or "")
    for code, holder, item_path in items:
        kind = _kind(code, settings.tables)
        if kind is None:
            continue  # a code clsmon does not use
        oid = hashlib.sha256(f"{pid}|{base}|{_codes(code)}|{at.epoch_ms}".encode()
                             ).hexdigest()[:16]
        doc: dict[str, Any] = {"patient_id": pid, "kind": kind, "source": "fhir", "id": oid,
                               "observed_at": format_time(at.epoch_ms)}
        if issued is not None and issued.epoch_ms >= at.epoch_ms:
            doc["available_at"] = format_time(issued.epoch_ms)
        if status == "entered-in-error":
            doc["status"] = "entered-in-error"
        else:
            q = holder.get("valueQuantity")
            if not isinstance(q, dict) or "value" not in q:
                out.problems.append(Problem(f"{item_path}.value.ofType(Quantity)",
                                            f"{kind} needs a Quantity value", "bad_value"))
                continue
            value = q["value"]
            if isinstance(value, bool) or not isinstance(value, int | float):
                out.problems.append(Problem(f"{item_path}.value.ofType(Quantity).value",
                                            f"{value!r} is not a JSON number", "bad_value"))
                continue
            doc.update(value=float(value), unit=_unit(q, settings.tables),
                       status=VALUE_STATUS[str(status)])
            if kind == "urine_output" and start is not None and start.epoch_ms < at.epoch_ms:
                doc["period_min"] = (at.epoch_ms - start.epoch_ms) / 60_000
        checked = normalise(doc)
        if isinstance(checked, Rejection):
            out.problems.append(Problem(f"{item_path}.value.ofType(Quantity)", checked.detail,
                                        checked.reason))
            continue
        out.records.append(("labs" if kind in LAB_KINDS else "vitals", pid, doc))


def _context(doc: dict[str, Any], path: str, out: FhirReading) -> None:
    checked = parse_context(doc)
    if isinstance(checked, Rejection):
        out.problems.append(Problem(path, checked.detail, checked.reason))
    else:
        out.records.append(("patients", str(doc["patient_id"]), doc))


def _patient_resource(r: dict[str, Any], path: str, settings: FhirSettings,
                      out: FhirReading) -> None:
    pid = _identifier(r.get("identifier"), settings)
    if pid is None:
        out.problems.append(Problem(f"{path}.identifier", "no identifier of the patient-id "
                                    "system", "missing_field"))
        return
    doc: dict[str, Any] = {"patient_id": pid, "event": "update", "source": "fhir"}
    sex = {"female": "F", "male": "M"}.get(str(r.get("gender")))
    if sex:
        doc["sex"] = sex
    birth = str(r.get("birthDate") or "")
    if re.fullmatch(r"[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?", birth, re.ASCII):
        doc["birth_year"] = int(birth[:4])
    _context(doc, path, out)


def _encounter(r: dict[str, Any], path: str, settings: FhirSettings, out: FhirReading,
               index: dict[Any, Any]) -> None:
    event = ENCOUNTER_EVENT.get(str(r.get("status")))
    if event is None:
        return  # planned, triaged, onleave, unknown: nothing changes
    pid = _subject(r.get("subject"), f"{path}.subject", settings, out, index)
    if pid is None:
        return
    doc: dict[str, Any] = {"patient_id": pid, "event": event, "source": "fhir"}
    locations = [loc.get("location") for loc in r.get("location") or []
                 if isinstance(loc, dict) and loc.get("status", "active") == "active"]
    if locations and isinstance(locations[-1], dict):
        ward = locations[-1].get("display") or locations[-1].get("reference")
        if ward:
            doc["ward"] = str(ward)
    _context(doc, path, out)
