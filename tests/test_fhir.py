"""FHIR R4 in (Observation, blood-pressure panel, Bundle, Patient, Encounter; errors by FHIRPath)
and out (DetectedIssue + Communication, idempotent by alert id), validated with fhir.resources'
R4 models."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fhir.resources
import pytest
from notify_support import alert_doc

from detectors.observation import Observation, Retraction
from streams.interfaces.codes import load_tables
from streams.interfaces.fhir.inbound import FhirSettings, read_fhir, validate_resource
from streams.interfaces.fhir.outbound import alert_bundle
from streams.notify.routing import load_routing
from streams.worker.ingest import Mapped, ingest

MRN = "https://hospital.example.org/mrn"
SETTINGS = FhirSettings(load_tables(), MRN)
SUBJECT = {"identifier": {"system": MRN, "value": "12345"}}


def bp_panel(**change: Any) -> dict[str, Any]:
    def component(code: str, value: Any) -> dict[str, Any]:
        return {"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {"value": value, "unit": "mmHg",
                                  "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}

    doc = {"resourceType": "Observation", "id": "bp1", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
           "subject": SUBJECT, "effectiveDateTime": "2026-11-29T10:14:00+01:00",
           "component": [component("8480-6", 84), component("8462-4", 42),
                         component("8478-0", 56)]}
    doc.update(change)
    return doc


def hematocrit(value: Any = 58, status: str = "final", **change: Any) -> dict[str, Any]:
    doc = {"resourceType": "Observation", "status": status,
           "code": {"coding": [{"system": "http://loinc.org", "code": "4544-3"}]},
           "subject": SUBJECT, "effectiveDateTime": "2026-11-29T09:05:00Z",
           "issued": "2026-11-29T10:15:00Z",
           "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "%"}}
    doc.update(change)
    return doc


def test_the_models_are_fhir_r4_itself() -> None:
    """fhir.resources 6.4.0 is R4 (4.0.1); 7.x/8.x would be R4B or R5 (README, Integrating)."""
    assert fhir.resources.__fhir_version__ == "4.0.1"


def test_a_blood_pressure_panel_gives_one_observation_per_component() -> None:
    reading = read_fhir(json.dumps(bp_panel()), SETTINGS)
    assert not reading.problems
    assert [(r[0], r[2]["kind"], r[2]["value"], r[2]["observed_at"]) for r in reading.records] == [
        ("vitals", "sbp", 84, "2026-11-29T09:14:00Z"), ("vitals", "dbp", 42,
                                                        "2026-11-29T09:14:00Z"),
        ("vitals", "map", 56, "2026-11-29T09:14:00Z")]


def test_issued_is_the_availability_and_entered_in_error_a_retraction() -> None:
    (record,) = read_fhir(hematocrit(), SETTINGS).records
    assert record[0] == "labs" and record[2]["available_at"] == "2026-11-29T10:15:00Z"
    (withdrawn,) = read_fhir(hematocrit(status="entered-in-error"), SETTINGS).records
    assert withdrawn[2]["status"] == "entered-in-error"
    assert not read_fhir(hematocrit(status="cancelled"), SETTINGS).records  # not done: no value


@pytest.mark.parametrize(("doc", "path"), [
    (bp_panel(component=[{"code": {"coding": [{"system": "http://loinc.org",
                                                "code": "8480-6"}]},
                          "valueQuantity": {"value": "high"}}]),
     "Observation.component[0].value.ofType(Quantity).value"),
    (hematocrit(value="58"), "Observation.value.ofType(Quantity).value"),
    (hematocrit(effectiveDateTime="2026-11-29T09:05:00"),
     "Observation.effective.ofType(DateTime)"),
    (hematocrit(effectiveDateTime="20261129090500+0100"),
     "Observation.effective.ofType(DateTime)"),
    (hematocrit(subject={"reference": "Patient/123"}), "Observation.subject.identifier"),
    (hematocrit(status="done"), "Observation.status"),
    (hematocrit(valueQuantity=None), "Observation.valueQuantity"),
    (hematocrit(value=580), "Observation.value.ofType(Quantity)"),  # 580 %: out of range
])
def test_what_is_wrong_is_named_by_its_fhirpath(doc: dict[str, Any], path: str) -> None:
    reading = read_fhir(json.dumps(doc), SETTINGS)
    assert not reading.records
    assert reading.problems and reading.problems[0].path == path, reading.problems


def test_a_collection_bundle_keeps_its_good_entries_and_a_transaction_is_all_or_nothing() -> None:
    patient = {"resourceType": "Patient", "identifier": [{"system": MRN, "value": "12345"}],
               "gender": "female", "birthDate": "1980-04-12"}
    encounter = {"resourceType": "Encounter", "status": "in-progress",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                           "code": "IMP"},
                 "subject": {"reference": "urn:uuid:p1"},
                 "location": [{"location": {"display": "ICU3"}, "status": "active"}]}
    entries = [{"fullUrl": "urn:uuid:p1", "resource": patient},
               {"fullUrl": "urn:uuid:e1", "resource": encounter},
               {"resource": bp_panel()}, {"resource": hematocrit(value="58")}]
    collection = read_fhir({"resourceType": "Bundle", "type": "collection", "entry": entries},
                           SETTINGS)
    assert [(r[0], r[2].get("event") or r[2]["kind"]) for r in collection.records] == [
        ("patients", "update"), ("patients", "admit"), ("vitals", "sbp"), ("vitals", "dbp"),
        ("vitals", "map")]
    assert collection.records[1][2]["ward"] == "ICU3"
    assert [p.path for p in collection.problems] == [
        "Bundle.entry[3].resource.ofType(Observation).value.ofType(Quantity).value"]
    transaction = read_fhir({"resourceType": "Bundle", "type": "transaction", "entry": [
        {**e, "request": {"method": "POST", "url": e["resource"]["resourceType"]}}
        for e in entries]}, SETTINGS)
    assert not transaction.records and transaction.problems


def test_fhir_on_an_input_topic_is_read_by_the_worker_and_checked_against_the_key() -> None:
    mapped = ingest(b"12345", json.dumps(bp_panel()).encode(), is_context=False)
    assert isinstance(mapped, Mapped) and mapped.refused is None
    assert [v.kind for v in mapped.values if isinstance(v, Observation)] == ["sbp", "dbp", "map"]
    wrong_key = ingest(b"99999", json.dumps(bp_panel()).encode(), is_context=False)
    assert isinstance(wrong_key, Mapped) and not wrong_key.values
    assert wrong_key.refused is not None and wrong_key.refused.rejection.reason == "inconsistent"
    retraction = ingest(b"12345", json.dumps(hematocrit(status="entered-in-error")).encode(),
                        is_context=False)
    assert isinstance(retraction, Mapped) and isinstance(retraction.values[0], Retraction)


def test_the_alert_bundle_is_valid_r4_and_the_same_for_the_same_alert() -> None:
    alert = alert_doc("12345", severity="high", evidence=[
        {"criterion": "hypotension", "value": 78, "unit": "mmHg", "threshold": "SBP <= 90",
         "observed_at": "2026-11-25T03:52:00Z", "baseline": 121.0},
        {"criterion": "hemoconcentration", "value": 55, "unit": "%", "threshold": "Hct > 50",
         "observed_at": "2026-11-25T03:40:00Z"}])
    bundle = alert_bundle(alert)
    assert validate_resource(bundle) == []
    issue, note = (e["resource"] for e in bundle["entry"])
    assert validate_resource(issue) == [] and validate_resource(note) == []
    assert [c["valueQuantity"]["code"] for c in issue["contained"]] == ["mm[Hg]", "%"]
    assert issue["evidence"][0]["detail"][0]["reference"] == "#ev1"
    assert bundle["entry"][0]["request"]["ifNoneExist"].endswith(f"|{alert['alert_id']}")
    assert note["about"][0]["reference"] == bundle["entry"][0]["fullUrl"]
    assert alert_bundle(alert) == bundle  # deterministic: a retry is the same request


class FhirServer:
    """A stand-in FHIR server: transaction Bundles with conditional creates on identifier
    (what ``ifNoneExist`` asks a real server for); answers 503 to the first ``busy`` posts."""

    def __init__(self, busy: int = 0) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self.posts = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                bundle = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.posts += 1
                if server.posts <= busy:
                    self.send_response(503)
                else:
                    for entry in bundle["entry"]:
                        key = entry["request"]["ifNoneExist"]
                        server.resources.setdefault(key, entry["resource"])
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/fhir"

    def stop(self) -> None:
        self.http.shutdown()


def test_the_fhir_sink_is_idempotent_by_alert_id_and_retries_a_busy_server(tmp_path) -> None:
    server = FhirServer(busy=2)
    try:
        config = tmp_path / "notify.toml"
        config.write_text(f'[sinks.ehr]\ntype = "fhir"\nbase_url = "{server.url}"\n'
                          'backoff_s = 0\n\n[default]\nsinks = ["ehr"]\n')
        sink = load_routing(str(config)).sinks["ehr"]
        alert = alert_doc("12345", severity="critical")
        delivery = sink.deliver(alert, alert["alert_id"])
        assert (delivery.ok, delivery.attempts) == (True, 3)
        assert sink.deliver(alert, alert["alert_id"]).ok  # a redelivery: nothing new
        kinds = sorted(r["resourceType"] for r in server.resources.values())
        assert kinds == ["Communication", "DetectedIssue"]
    finally:
        server.stop()
