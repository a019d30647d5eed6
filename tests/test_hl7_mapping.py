"""HL7 v2 in, as pure mapping: what each sender's habit becomes, and how a bad message is told."""

from __future__ import annotations

from datetime import timedelta

import hl7
import pytest
from hl7_corpus import (
    T,
    adt,
    bad_messages,
    join,
    lab_panel,
    lab_retraction,
    monitor_loinc,
    monitor_mdc,
    msh,
    pid,
)

from detectors.observation import Observation, normalise
from streams.interfaces.codes import load_tables
from streams.interfaces.hl7.ack import build_ack
from streams.interfaces.hl7.inbound import Hl7Settings, read_message

SETTINGS = Hl7Settings(load_tables(), id_authority="HOSP")
NOW_MS = 1_795_950_000_000


def docs(raw: bytes, settings: Hl7Settings = SETTINGS) -> list[dict]:
    reading = read_message(raw, settings)
    assert reading.ack == "AA", reading.errs
    return [r.doc for r in reading.records]


def canonical(doc: dict) -> Observation:
    obs = normalise(doc)
    assert isinstance(obs, Observation), obs
    return obs


def test_a_pcd01_monitor_message_gives_its_vitals_and_skips_the_rest() -> None:
    reading = read_message(monitor_mdc("M1", T, 84, 42, 56, 118), SETTINGS)
    assert reading.ack == "AA" and not reading.errs
    by_kind = {r.doc["kind"]: r for r in reading.records}
    assert sorted(by_kind) == ["dbp", "heart_rate", "map", "sbp"]
    assert {r.role for r in reading.records} == {"vitals"}
    assert by_kind["sbp"].doc["unit"] == "mm[Hg]" and by_kind["sbp"].doc["value"] == 84
    assert by_kind["sbp"].doc["status"] == "unverified"  # OBX-11 R: device data
    # two containment rows (X) and the SpO2 pulse rate (a second heart-rate source)
    assert reading.skipped == 3
    # OBX-14 20261129100000+0100 is 09:00Z (fromisoformat would have said 09:00+01:00)
    assert by_kind["sbp"].doc["observed_at"] == "2026-11-29T09:00:00Z"


def test_mdc_and_loinc_codes_and_either_mmhg_spelling_give_the_same_observation() -> None:
    mdc = canonical(docs(monitor_mdc("M1", T, 84, 42, 56, 118))[0])
    for unit in ("mm[Hg]", "mmHg"):
        loinc = canonical(docs(monitor_loinc("L1", T, 84, 56, unit=unit))[0])
        assert (loinc.kind, loinc.value, loinc.observed_at_ms) == (
            mdc.kind, mdc.value, mdc.observed_at_ms)


@pytest.mark.parametrize("ending", ["\r", "\r\n", "\n"])
def test_line_endings_of_files_and_gateways_all_read(ending: str) -> None:
    got = docs(monitor_loinc("L1", T, 84, 56, ending=ending))
    assert [d["kind"] for d in got] == ["sbp", "map"]


def test_a_lab_message_reads_its_groups_latin1_escapes_and_report_time() -> None:
    reading = read_message(lab_panel("LAB1", T, 58, 2.1), SETTINGS)
    assert reading.ack == "AA", reading.errs
    hct, albumin = (r.doc for r in reading.records)
    assert {r.role for r in reading.records} == {"labs"}
    # no OBX-14: the draw time of the OBX's own OBR group (OBR-7)
    assert hct["observed_at"] == albumin["observed_at"] == "2026-11-29T09:00:00Z"
    assert hct["available_at"] == "2026-11-29T10:00:00Z"  # OBR-22
    assert (hct["kind"], hct["value"], albumin["kind"], albumin["value"]) == (
        "hematocrit", 58, "albumin", 2.1)
    # escapes are for the text, not for us to trip over: the message is read as a whole
    assert reading.message is not None
    nte = [s for s in reading.message if str(s[0]) == "NTE"][0]
    assert "\u00e4" in reading.message.unescape(str(nte[3]))
    assert "&" in reading.message.unescape(str(nte[3]))


def test_an_escaped_delimiter_in_the_ward_is_unescaped() -> None:
    raw = adt("A1", "A02", ward="ICU\\T\\HDU")
    (doc,) = docs(raw)
    assert doc["ward"] == "ICU&HDU"


def test_a_retraction_carries_the_id_of_the_result_it_withdraws() -> None:
    (hct, _) = docs(lab_panel("LAB1", T, 58, 2.1))
    (withdrawn,) = docs(lab_retraction("LAB2", T, 58))
    assert withdrawn["status"] == "entered-in-error" and withdrawn["id"] == hct["id"]
    assert withdrawn["observed_at"] == hct["observed_at"]


def test_a_corrected_result_is_marked_corrected() -> None:
    (hct, _) = docs(lab_panel("LAB1", T, 58, 2.1, hct_status="C"))
    assert hct["status"] == "corrected"


@pytest.mark.parametrize(("trigger", "event", "extra"), [
    ("A01", "admit", {}), ("A04", "admit", {}), ("A02", "transfer", {}),
    ("A03", "discharge", {}), ("A08", "update", {}),
    ("A11", "cancel", {"cancels": "admit"}), ("A13", "cancel", {"cancels": "discharge"})])
def test_adt_events_become_patient_context(trigger: str, event: str, extra: dict) -> None:
    reading = read_message(adt("A1", trigger), SETTINGS)
    (record,) = reading.records
    assert record.role == "patients"
    assert record.doc == {"patient_id": "12345", "event": event, "source": "ADT/ICU3",
                          "sex": "F", "birth_year": 1980, "ward": "ICU3", "bed": "BED07",
                          "weight_kg": 72.5, **extra}


def test_the_patient_is_the_identifier_of_the_configured_authority() -> None:
    raw = monitor_loinc("L1", T, 84, 56)
    assert docs(raw)[0]["patient_id"] == "12345"
    nhs = Hl7Settings(SETTINGS.tables, id_authority="NHS")
    assert docs(raw, nhs)[0]["patient_id"] == "99887766"
    # two identifiers and no authority configured: ambiguous, refused
    unset = read_message(raw, Hl7Settings(SETTINGS.tables))
    assert unset.ack == "AE" and unset.errs[0].location() == "PID-3.4"


def test_a_sender_zone_reads_local_times_that_have_no_offset() -> None:
    from zoneinfo import ZoneInfo

    raw = join(msh("Z1", "ORU^R01"), pid(),
               "OBX|1|NM|8480-6^SBP^LN||120|mm[Hg]|||||F|||20261129101500")
    assert read_message(raw, SETTINGS).ack == "AE"
    berlin = Hl7Settings(SETTINGS.tables, "HOSP", ZoneInfo("Europe/Berlin"))
    assert docs(raw, berlin)[0]["observed_at"] == "2026-11-29T09:15:00Z"


@pytest.mark.parametrize(("name", "raw", "ack", "reason"), bad_messages(),
                         ids=[b[0] for b in bad_messages()])
def test_each_bad_message_gets_its_ack_code_and_a_reason(name: str, raw: bytes, ack: str,
                                                        reason: str) -> None:
    reading = read_message(raw, SETTINGS)
    assert (reading.ack, reading.dead_letter_reason) == (ack, reason)
    assert not reading.records
    reply = hl7.parse(build_ack(reading, NOW_MS).decode())
    assert str(reply.segment("MSA")(1)) == ack
    err = reply.segment("ERR")
    assert str(err(4)) == "E" and str(err(8))  # severity and a text for people
    assert str(err(2)(1)(1)) in ("MSH", "PID", "OBX", "OBR")  # the segment it names


def test_a_partly_bad_message_is_accepted_with_warnings_naming_each_field() -> None:
    t = (T + timedelta(minutes=5)).strftime("%Y%m%d%H%M%S+0000")
    raw = join(msh("P1", "ORU^R01"), pid(),
               f"OBX|1|NM|8480-6^SBP^LN||12O|mm[Hg]|||||F|||{t}",
               f"OBX|2|NM|8478-0^MAP^LN||61|mm[Hg]|||||F|||{t}",
               "OBX|3|NM|8867-4^HR^LN||101|/min|||||F|||2026-11-29T10:40:00+01:00")
    reading = read_message(raw, SETTINGS)
    assert reading.ack == "AA" and [r.doc["kind"] for r in reading.records] == ["map"]
    assert [(e.location(), e.severity, e.reason) for e in reading.errs] == [
        ("OBX-5", "W", "bad_value"), ("OBX-14.1", "W", "bad_time")]
    assert reading.dead_letter_reason == "bad_value"
    reply = hl7.parse(build_ack(reading, NOW_MS).decode())
    assert str(reply.segment("MSA")(1)) == "AA" and str(reply.segment("MSA")(2)) == "P1"
    assert [str(s(2)) for s in reply.segments("ERR")] == ["OBX^1^5", "OBX^3^14^1^1"]
    assert "+0000" in str(reply.segment("MSH")(7))  # the ACK's own time has an offset
