"""A corpus of HL7 v2 messages as different senders write them, built here (not copied).

Gateway habits covered: IEEE 11073 MDC codes with MDC units and containment rows (IHE PCD-01,
OBX-11 = R), LOINC codes with UCUM units spelt ``mm[Hg]`` or ``mmHg``, repeating OBX and several
OBR groups, OBX-14 missing (OBR-7 is the event time), escaped delimiters, ``\\r\\n`` or ``\\n``
line endings, Latin-1 (MSH-18 ``8859/1``), corrections and retractions. ``bad_messages`` are the
ones a listener must answer with AE/AR and dead-letter, each with the reason expected.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

T = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


def dtm(at: datetime, offset_h: int = 1) -> str:
    """An HL7 DTM with an explicit offset (local time of a +01:00 hospital by default)."""
    local = at + timedelta(hours=offset_h)
    sign = "+" if offset_h >= 0 else "-"
    return local.strftime("%Y%m%d%H%M%S") + f"{sign}{abs(offset_h):02d}00"


def msh(control_id: str, kind: str, *, app: str = "GW_ICU3", charset: str = "UNICODE UTF-8",
        version: str = "2.6") -> str:
    return (f"MSH|^~\\&|{app}|ICU3|CLSMON|HOSP|{dtm(T)}||{kind}|{control_id}|P|{version}"
            f"|||NE|AL||{charset}")


def pid(patient: str = "12345", authority: str = "HOSP", sex: str = "F") -> str:
    return f"PID|||{patient}^^^{authority}^MR~99887766^^^NHS^NH||Doe^Jane||19800412|{sex}"


def join(*segments: str, ending: str = "\r") -> bytes:
    return (ending.join(segments) + ending).encode("utf-8")


def monitor_mdc(control_id: str, at: datetime, sbp: float, dbp: float, mean: float, hr: float,
                patient: str = "12345") -> bytes:
    """A PCD-01 ORU^R01 from a monitor gateway: MDC codes and units, containment rows (no value,
    OBX-11 X), OBX-11 R (unverified device data), the device in OBX-18."""
    t = dtm(at)
    return join(
        msh(control_id, "ORU^R01^ORU_R01"), pid(patient), "PV1||I|ICU3^^BED07^HOSP",
        f"OBR|1|{control_id}^GW|{control_id}^GW|182777000^monitoring of patient^SCT|||{t}",
        "OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||MON07",
        "OBX|2||69854^MDC_DEV_METER_PRESS_BLD_VMD^MDC|1.1.0.0|||||||X",
        f"OBX|3|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.1.1.1|{sbp:g}|266016^MDC_DIM_MMHG^MDC"
        f"|90-140||||R|||{t}",
        f"OBX|4|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC|1.1.1.2|{dbp:g}|266016^MDC_DIM_MMHG^MDC"
        f"|||||R|||{t}",
        f"OBX|5|NM|150023^MDC_PRESS_BLD_NONINV_MEAN^MDC|1.1.1.3|{mean:g}|266016^MDC_DIM_MMHG^MDC"
        f"|>65||||R|||{t}",
        f"OBX|6|NM|147842^MDC_ECG_HEART_RATE^MDC|1.2.1.1|{hr:g}|264864^MDC_DIM_BEAT_PER_MIN^MDC"
        f"|||||R|||{t}",
        f"OBX|7|NM|149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.3.1.2|{hr + 1:g}|264864^^MDC|||||R|||{t}")


def monitor_loinc(control_id: str, at: datetime, sbp: float, mean: float, unit: str = "mm[Hg]",
                  ending: str = "\r", patient: str = "12345") -> bytes:
    """Another gateway: LOINC codes, UCUM units (``mm[Hg]`` or ``mmHg``), final results."""
    t = dtm(at)
    return join(
        msh(control_id, "ORU^R01", app="GW2"), pid(patient), "PV1||I|ICU3^^BED07^HOSP",
        f"OBR|1|||85354-9^Blood pressure panel^LN|||{t}",
        f"OBX|1|NM|8480-6^Systolic blood pressure^LN||{sbp:g}|{unit}^^UCUM|||||F|||{t}",
        f"OBX|2|NM|8478-0^Mean blood pressure^LN||{mean:g}|{unit}^^UCUM|||||F|||{t}",
        ending=ending)


def lab_panel(control_id: str, drawn: datetime, hct: float, albumin: float,
              reported: datetime | None = None, patient: str = "12345",
              hct_status: str = "F") -> bytes:
    """A laboratory ORU^R01: two OBR groups, OBX-14 missing (OBR-7 is the draw time), OBR-22
    the report time, an NTE with escaped delimiters, Latin-1."""
    reported = reported or drawn + timedelta(hours=1)
    return join(
        msh(control_id, "ORU^R01^ORU_R01", app="LIS", charset="8859/1", version="2.5.1"),
        pid(patient), "PV1||I|ICU3^^BED07^HOSP", "ORC|RE|ORD-1|LAB-1",
        f"OBR|1|ORD-1|LAB-1|57021-8^CBC^LN|||{dtm(drawn)}" + "|" * 15 + f"{dtm(reported)}|||F",
        f"OBX|1|NM|4544-3^Hematocrit^LN||{hct:g}|%^percent^UCUM|36-46|H|||{hct_status}",
        "NTE|1|L|Probe leicht h\u00e4molysiert\\E\\ Wiederholung \\T\\ K\\S\\+ pr\u00fcfen",
        f"OBR|2|ORD-2|LAB-2|24326-1^Electrolytes^LN|||{dtm(drawn)}" + "|" * 15
        + f"{dtm(reported)}|||F",
        f"OBX|1|NM|1751-7^Albumin^LN||{albumin:g}|g/dL^^UCUM|3.5-5.2|L|||F",
    ).decode("utf-8").encode("latin-1")


def lab_retraction(control_id: str, drawn: datetime, hct: float, patient: str = "12345") -> bytes:
    """OBX-11 W: the earlier hematocrit was wrong (same code, OBR-7 and no OBX-4: same id)."""
    return join(
        msh(control_id, "ORU^R01", app="LIS", version="2.5.1"), pid(patient),
        f"OBR|1|ORD-1|LAB-1|57021-8^CBC^LN|||{dtm(drawn)}",
        f"OBX|1|NM|4544-3^Hematocrit^LN||{hct:g}|%^percent^UCUM|||||W")


def adt(control_id: str, trigger: str, patient: str = "12345", ward: str = "ICU3",
        bed: str = "BED07", weight_kg: float | None = 72.5, sex: str = "F") -> bytes:
    segments = [msh(control_id, f"ADT^{trigger}", app="ADT", version="2.5"),
                f"EVN|{trigger}|{dtm(T)}", pid(patient, sex=sex), f"PV1|1|I|{ward}^^{bed}^HOSP"]
    if weight_kg is not None:
        segments.append(f"OBX|1|NM|29463-7^Body weight^LN||{weight_kg:g}|kg^^UCUM|||||F")
    return join(*segments)


def bad_messages() -> list[tuple[str, bytes, str, str]]:
    """(name, message, expected ACK code, expected dead-letter reason)."""
    t = dtm(T)
    return [
        ("not HL7", b"hello, this is not an HL7 message\r", "AR", "malformed_hl7"),
        ("unsupported type", join(msh("B2", "ORM^O01"), pid(), "ORC|NW|1"), "AR",
         "unsupported_message"),
        ("no patient id", join(msh("B3", "ORU^R01"), "PID|||",
                               f"OBX|1|NM|8480-6^SBP^LN||120|mm[Hg]|||||F|||{t}"),
         "AE", "missing_field"),
        ("no control id", join(msh("", "ORU^R01"), pid()), "AR", "missing_field"),
        ("bad characters", join(msh("B5", "ORU^R01"), pid()).replace(b"Doe", b"D\xf6e"), "AE",
         "bad_encoding"),
        ("no usable value", join(msh("B6", "ORU^R01"), pid(),
                                 f"OBX|1|NM|8480-6^SBP^LN||12O|mm[Hg]|||||F|||{t}"),
         "AE", "bad_value"),
        ("time without offset", join(msh("B7", "ORU^R01"), pid(),
                                     "OBX|1|NM|8480-6^SBP^LN||120|mm[Hg]|||||F|||20261129101500"),
         "AE", "bad_time"),
        ("unknown unit", join(msh("B8", "ORU^R01"), pid(),
                              f"OBX|1|NM|8480-6^SBP^LN||120|psi^^UCUM|||||F|||{t}"),
         "AE", "unknown_unit"),
        ("impossible value", join(msh("B9", "ORU^R01"), pid(),
                                  f"OBX|1|NM|8480-6^SBP^LN||0|mm[Hg]|||||F|||{t}"),
         "AE", "out_of_range"),
    ]


def frame(*messages: bytes) -> bytes:
    """MLLP framing: <VT> message <FS><CR>, as ``mllp_send`` reads files by default."""
    return b"".join(b"\x0b" + m + b"\x1c\r" for m in messages)
