"""HL7 v2 in: one message (bytes of one MLLP block) -> contract records and the ACK decision.

Pure: ``read_message(raw, settings)`` returns the records to produce, the acknowledgement code
and the ERR rows; the listener (``streams.interfaces.hl7.listener``) produces the records and
only then sends the ACK. Parsing is python-hl7's; what it leaves to the caller is done here:

- line endings: ``\\r\\n`` and ``\\n`` are made ``\\r`` (python-hl7 reads an LF-only message as
  one segment and CRLF ones with ``'\\nPID'`` segment ids, without an error);
- character set: MSH-18 (``UNICODE UTF-8`` default, ``8859/1``, ``ASCII``), decoded strictly;
- values are unescaped (``\\F\\``, ``\\S\\``, ``\\T\\``, ``\\R\\``, ``\\E\\``, ``\\Xhh\\``);
- a field past the end of a short segment reads as empty (python-hl7 raises ``IndexError``).

Messages (HL7 v2.5+, IHE PCD-01 for monitor gateways):

- ``ORU^R01``: each OBX with a code in the code table (OBX-3, else its alternate coding
  CWE.4-6) becomes an observation. OBX-5 numeric (OBX-2 NM, SN without a comparator, ST or
  empty); OBX-6 a UCUM unit or an MDC unit code; event time OBX-14, else OBR-7 (never MSH-7);
  availability OBR-22 (results reported). OBX-11 (HL7 table 0085): F, U final; C, A corrected;
  P, S preliminary; R unverified (PCD-01 monitors send R); D, W a retraction of the earlier
  result (the same id); X ("no result"), N, I, O no value, skipped. Unknown codes are skipped
  (a monitor sends dozens of parameters) and counted.
- ``ADT`` A01/A04 admit, A02 transfer, A03 discharge, A08 update, A11 cancel (of an admission),
  A13 cancel (of a discharge): a PatientContext with sex (PID-8), birth year (PID-7), ward and
  bed (PV1-3 point of care / room-bed) and an admission weight from an OBX, if any.
- The patient is PID-3's identifier (CX.1) whose assigning authority (CX.4) is the configured
  one; with none configured, PID-3 must hold exactly one identifier.

Observation ``id`` = sha256(authority|patient|system|code|OBX-4|OBX-14)[:16]: the same for a
result and its later correction or retraction. Every record is checked with the contract's own
gate (``detectors.observation``) before it is produced, so the sender learns of a bad value in
the ACK instead of it being dead-lettered later. ACK codes: AA (accepted; warnings for refused
OBX rows), AE (the message cannot be used: no patient, bad character set, nothing usable),
AR (not HL7, unsupported type, or Kafka did not acknowledge: send again).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, tzinfo
from typing import Any

import hl7

from detectors.observation import Rejection, format_time, normalise, parse_context
from detectors.times import DTM_FORMS, PLAUSIBLE, ParsedTime, parse_time
from detectors.units import KINDS, unit_key
from streams.interfaces.codes import CodeTables, system_name
from streams.kafka.topics import LAB_KINDS

#: (message type, trigger) -> PatientContext event (and what a cancel undoes)
ADT_EVENTS = {"A01": ("admit", ""), "A04": ("admit", ""), "A02": ("transfer", ""),
              "A03": ("discharge", ""), "A08": ("update", ""), "A11": ("cancel", "admit"),
              "A13": ("cancel", "discharge")}
#: OBX-11 result status (HL7 table 0085) -> the contract's status
VALUE_STATUS = {"F": "final", "U": "final", "C": "corrected", "A": "corrected",
                "P": "preliminary", "S": "preliminary", "R": "unverified"}
RETRACT_STATUS = frozenset({"D", "W"})
CHARSETS = {"": "utf-8", "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8", "ASCII": "ascii",
            "8859/1": "latin-1", "8859/15": "iso8859-15"}
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)


@dataclass(frozen=True, slots=True)
class Hl7Settings:
    """How a site's HL7 feed is read (``clsmon hl7 listen`` flags)."""

    tables: CodeTables
    #: PID-3 assigning authority (CX.4) of the patient id; None: PID-3 must be unambiguous
    id_authority: str | None = None
    #: the senders' time zone for DTM without an offset; None refuses such times
    sender_zone: tzinfo | None = None


@dataclass(frozen=True, slots=True)
class Err:
    """One ERR segment: where (segment, its sequence, field, component), HL7 table 0357 code,
    severity (E error, W warning) and a text for people; ``reason`` is the dead-letter code."""

    segment: str
    seq: int
    field_no: int
    component: int | None
    code: str
    text: str
    severity: str = "E"
    reason: str = "bad_value"

    def location(self) -> str:
        return f"{self.segment}-{self.field_no}" + (f".{self.component}" if self.component
                                                     else "")


@dataclass(frozen=True, slots=True)
class Record:
    """One record to produce: topic role (vitals, labs, patients), key, JSON document."""

    role: str
    patient_id: str
    doc: dict[str, Any]


@dataclass(slots=True)
class Reading:
    """What one message gave: records, the ACK code and ERR rows, counts for the metrics."""

    ack: str = "AA"
    errs: list[Err] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    message: hl7.Message | None = None
    control_id: str = ""
    message_type: str = ""
    skipped: int = 0  # OBX rows with an unknown code or no value (X, N, I, O)

    @property
    def dead_letter_reason(self) -> str | None:
        """The reason the raw message goes to dead-letters (None: nothing refused)."""
        if not self.errs:
            return None
        return self.errs[0].reason


def decode(raw: bytes) -> tuple[str | None, str]:
    """(text, codec) per MSH-18, or (None, why). The header itself is ASCII."""
    head = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    charset = ""
    if head.startswith(b"MSH") and len(head) > 8:
        fields = head.split(head[3:4])
        if len(fields) > 17:
            component = fields[1][:1] or b"^"
            charset = fields[17].split(b"~")[0].split(component)[0].decode(
                "ascii", "replace").strip().upper()
    codec = CHARSETS.get(charset)
    if codec is None:
        return None, f"MSH-18 character set {charset!r} is not supported"
    try:
        return raw.decode(codec), codec
    except UnicodeDecodeError as exc:
        return None, f"the bytes are not {codec} (MSH-18 {charset or 'empty'}): {exc.reason}"


def field_text(container: Any, *index: int) -> str:
    """1-based ``seg(field)(repetition)(component)...`` as text; '' where absent."""
    current = container
    try:
        for i in index:
            if isinstance(current, str):
                return current if i == 1 else ""
            limit = len(current) if isinstance(current, hl7.Segment) else len(current) + 1
            if i >= limit:
                return ""
            current = current(i)
    except (IndexError, KeyError):
        return ""
    return str(current)


def read_message(raw: bytes, settings: Hl7Settings) -> Reading:
    """Map one HL7 v2 message to contract records and an ACK decision; never raises."""
    out = Reading()
    text, why = decode(raw)
    if text is None:
        out.ack = "AE"
        out.errs.append(Err("MSH", 1, 18, None, "103", why, reason="bad_encoding"))
        return out
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\x0b\x1c ")
    try:
        msg = hl7.parse(text)
        msh = msg.segment("MSH")
    except Exception as exc:  # noqa: BLE001 - python-hl7 raises ParseException, KeyError, ...
        out.ack = "AR"
        out.errs.append(Err("MSH", 1, 1, None, "100", f"not an HL7 v2 message: {exc}",
                            reason="malformed_hl7"))
        return out
    out.message = msg
    out.control_id = field_text(msh, 10)
    kind, trigger = field_text(msh, 9, 1, 1), field_text(msh, 9, 1, 2)
    out.message_type = f"{kind}^{trigger}"
    if not out.control_id:
        out.ack = "AR"
        out.errs.append(Err("MSH", 1, 10, None, "101", "MSH-10 message control id missing",
                            reason="missing_field"))
        return out
    if not (kind == "ORU" and trigger == "R01") and not (kind == "ADT" and trigger in ADT_EVENTS):
        known = kind in ("ORU", "ADT")
        out.ack = "AR"
        out.errs.append(Err("MSH", 1, 9, 2 if known else 1, "201" if known else "200",
                            f"message type {out.message_type} is not accepted (ORU^R01; ADT "
                            f"{', '.join(ADT_EVENTS)})", reason="unsupported_message"))
        return out
    who = _patient(msg, settings)
    if isinstance(who, Err):
        out.ack = "AE"
        out.errs.append(who)
        return out
    authority, patient_id = who
    source = "/".join(p for p in (field_text(msh, 3, 1, 1), field_text(msh, 4, 1, 1)) if p)
    if kind == "ADT":
        _adt(msg, settings, out, patient_id, trigger, source)
    else:
        _oru(msg, settings, out, authority, patient_id, source)
    if not out.records and out.errs:  # nothing of it could be used: the warnings are errors
        out.ack = "AE"
        out.errs = [replace(e, severity="E") for e in out.errs]
    return out


def _segments(msg: hl7.Message, name: str) -> list[hl7.Segment]:
    return [seg for seg in msg if str(seg[0]) == name]


def _patient(msg: hl7.Message, settings: Hl7Settings) -> tuple[str, str] | Err:
    pids = _segments(msg, "PID")
    if not pids:
        return Err("PID", 1, 3, None, "100", "PID segment missing", reason="missing_field")
    pid = pids[0]
    ids = pid(3) if len(pid) > 3 else []
    reps = [r for r in ids if field_text(r, 1).strip()]
    if not reps:
        return Err("PID", 1, 3, 1, "101", "PID-3 patient identifier list is empty",
                   reason="missing_field")

    def authority(rep: Any) -> str:
        return field_text(rep, 4, 1) or field_text(rep, 4)

    if settings.id_authority is not None:
        for rep in reps:
            if authority(rep) == settings.id_authority:
                return authority(rep), msg.unescape(field_text(rep, 1)).strip()
        got = ", ".join(authority(r) or "-" for r in reps)
        return Err("PID", 1, 3, 4, "204", f"no PID-3 identifier with assigning authority "
                   f"{settings.id_authority!r} (got {got})", reason="missing_field")
    if len(reps) > 1:
        return Err("PID", 1, 3, 4, "204", "PID-3 has several identifiers and no assigning "
                   "authority is configured (--id-authority)", reason="missing_field")
    return authority(reps[0]), msg.unescape(field_text(reps[0], 1)).strip()


def _dtm(raw: str, settings: Hl7Settings, min_precision: str = "minute") -> ParsedTime | str:
    parsed = parse_time(raw, forms=DTM_FORMS, zone=settings.sender_zone,
                        min_precision=min_precision)
    return parsed if isinstance(parsed, ParsedTime) else parsed.detail


def _place(msg: hl7.Message) -> tuple[str | None, str | None]:
    """(ward, bed) from PV1-3 (PL: point of care ^ room ^ bed ^ facility)."""
    pv1 = _segments(msg, "PV1")
    if not pv1:
        return None, None
    ward = msg.unescape(field_text(pv1[0], 3, 1, 1)).strip()
    room = msg.unescape(field_text(pv1[0], 3, 1, 2)).strip()
    bed = msg.unescape(field_text(pv1[0], 3, 1, 3)).strip()
    return ward or None, "/".join(p for p in (room, bed) if p) or None


def _adt(msg: hl7.Message, settings: Hl7Settings, out: Reading, patient_id: str,
         trigger: str, source: str) -> None:
    event, cancels = ADT_EVENTS[trigger]
    pid = _segments(msg, "PID")[0]
    doc: dict[str, Any] = {"patient_id": patient_id, "event": event, "source": source}
    if cancels:
        doc["cancels"] = cancels
    sex = field_text(pid, 8).strip().upper()[:1]
    if sex in ("F", "M"):
        doc["sex"] = sex
    birth_raw = field_text(pid, 7, 1, 1)
    if birth_raw:  # a birth date has no time zone: read it as UTC, year precision suffices
        birth = parse_time(birth_raw, forms=DTM_FORMS, zone=UTC, min_precision="year",
                           window=PLAUSIBLE)
        if isinstance(birth, ParsedTime):
            doc["birth_year"] = int(birth_raw[:4])
        else:
            out.errs.append(Err("PID", 1, 7, None, "102", f"PID-7 {birth_raw!r}: {birth.detail}",
                                "W", reason="bad_context"))
    ward, bed = _place(msg)
    if ward:
        doc["ward"] = ward
    if bed:
        doc["bed"] = bed
    for seq, obx in enumerate(_segments(msg, "OBX"), 1):
        if _kind(obx, settings.tables) == "weight":
            kg = _weight_kg(obx, settings.tables)
            if kg is None:
                out.errs.append(Err("OBX", seq, 5, None, "102", "admission weight is not a "
                                    "number in a weight unit", "W", reason="bad_context"))
            else:
                doc["weight_kg"] = kg
    checked = parse_context(doc)
    if isinstance(checked, Rejection):
        out.errs.append(Err("PID", 1, 3, None, "102", checked.detail, reason=checked.reason))
        return
    out.records.append(Record("patients", patient_id, doc))


def _weight_kg(obx: hl7.Segment, tables: CodeTables) -> float | None:
    value = _number(obx)
    convert = KINDS["weight"].units.get(unit_key(_unit(obx, tables) or "kg"))
    return None if value is None or convert is None else round(float(convert(value)), 3)


def _kind(obx: hl7.Segment, tables: CodeTables) -> str | None:
    kind = tables.kind(field_text(obx, 3, 1, 3), field_text(obx, 3, 1, 1))
    if kind is None and field_text(obx, 3, 1, 4):  # the alternate coding, e.g. LOINC
        kind = tables.kind(field_text(obx, 3, 1, 6), field_text(obx, 3, 1, 4))
    return kind


def _unit(obx: hl7.Segment, tables: CodeTables) -> str:
    code, text = field_text(obx, 6, 1, 1).strip(), field_text(obx, 6, 1, 2).strip()
    system = system_name(field_text(obx, 6, 1, 3))
    if system == "MDC" or (code.isdigit() and tables.ucum(code) is not None):
        return tables.ucum(code) or f"MDC {code}"  # an unknown MDC unit is refused downstream
    return code or text


def _number(obx: hl7.Segment) -> float | None:
    value_type = field_text(obx, 2).strip()
    if value_type == "SN":  # structured numeric: comparator ^ number; only '=' or none
        comparator, text = field_text(obx, 5, 1, 1).strip(), field_text(obx, 5, 1, 2).strip()
        if comparator not in ("", "="):
            return None
    elif value_type in ("NM", "ST", ""):
        text = field_text(obx, 5).strip()
    else:
        return None
    return float(text) if _NUMBER.fullmatch(text) else None


def _obs_id(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _oru(msg: hl7.Message, settings: Hl7Settings, out: Reading, authority: str,
         patient_id: str, source: str) -> None:
    obr_time = obr_reported = ""
    obr_seq = obx_seq = 0
    for seg in msg:
        name = str(seg[0])
        if name == "OBR":
            obr_seq += 1
            obr_time, obr_reported = field_text(seg, 7, 1, 1), field_text(seg, 22, 1, 1)
            continue
        if name != "OBX":
            continue
        obx_seq += 1
        kind = _kind(seg, settings.tables)
        status = field_text(seg, 11).strip().upper()
        if kind is None or (status not in VALUE_STATUS and status not in RETRACT_STATUS):
            out.skipped += 1  # unknown parameter, or no result (X, N, I, O)
            continue
        raw_time, where = ((field_text(seg, 14, 1, 1), ("OBX", obx_seq, 14))
                           if field_text(seg, 14) else (obr_time, ("OBR", obr_seq, 7)))
        at = _dtm(raw_time, settings)
        if isinstance(at, str):
            out.errs.append(Err(*where, 1, "102", f"{kind}: event time {raw_time!r}: {at}",
                                "W", reason="bad_time"))
            continue
        system = system_name(field_text(seg, 3, 1, 3))
        doc: dict[str, Any] = {
            "patient_id": patient_id, "kind": kind, "observed_at": format_time(at.epoch_ms),
            "source": source, "id": _obs_id(authority, patient_id, system,
                                            field_text(seg, 3, 1, 1), field_text(seg, 4),
                                            raw_time)}
        if status in RETRACT_STATUS:
            doc["status"] = "entered-in-error"
        else:
            value = _number(seg)
            if value is None:
                out.errs.append(Err("OBX", obx_seq, 5, None, "102", f"{kind}: OBX-5 "
                                    f"{field_text(seg, 5)!r} is not a number", "W"))
                continue
            doc.update(value=value, unit=_unit(seg, settings.tables),
                       status=VALUE_STATUS[status])
            if kind == "urine_output" and doc["unit"] == "mL/h":  # MDC_FLOW_URINE_PREV_HR
                doc.update(unit="mL", period_min=60.0)
            reported = _dtm(obr_reported, settings) if obr_reported else None
            if isinstance(reported, ParsedTime) and reported.epoch_ms >= at.epoch_ms:
                doc["available_at"] = format_time(reported.epoch_ms)
        checked = normalise(doc)
        if isinstance(checked, Rejection):
            out.errs.append(Err("OBX", obx_seq, 5 if checked.reason != "unknown_unit" else 6,
                                None, "102", checked.detail, "W", reason=checked.reason))
            continue
        out.records.append(Record("labs" if kind in LAB_KINDS else "vitals", patient_id, doc))
