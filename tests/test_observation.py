"""Normalisation: every unit to canonical, every bad input to a reason, never a raise."""

from __future__ import annotations

import pytest

from detectors.observation import Observation, Rejection, format_time, normalise, parse_time_ms
from detectors.units import KINDS

ISO = "2026-11-25T04:10:00Z"


def n(kind, value, unit, **extra):
    return normalise({"patient_id": "icu3-bed07", "kind": kind, "value": value, "unit": unit,
                      "observed_at": ISO, **extra})


@pytest.mark.parametrize("kind, value, unit, expected", [
    ("weight", 70, "kg", 70.0),
    ("weight", 154.3236, "[lb_av]", 70.0),
    ("weight", 154.3236, "lb", 70.0),
    ("weight", 70000, "g", 70.0),
    ("sbp", 120, "mm[Hg]", 120.0),
    ("sbp", 120, "mmHg", 120.0),
    ("sbp", 120, "mm Hg", 120.0),
    ("dbp", 10.666, "kPa", 80.0),
    ("map", 12, "kPa", 90.0),
    ("heart_rate", 80, "/min", 80.0),
    ("heart_rate", 80, "bpm", 80.0),
    ("hematocrit", 0.52, "L/L", 52.0),
    ("hematocrit", 52, "%", 52.0),
    ("hematocrit", 0.52, "fraction", 52.0),
    ("leukocytes", 12, "10*9/L", 12.0),
    ("leukocytes", 12, "10^9/L", 12.0),
    ("leukocytes", 12, "10*3/uL", 12.0),
    ("leukocytes", 12000, "/uL", 12.0),
    ("albumin", 21, "g/L", 2.1),
    ("albumin", 2.1, "g/dL", 2.1),
    ("hemoglobin", 200, "g/L", 20.0),
    ("hemoglobin", 12.4, "mmol/L", 19.98),
    ("urine_output", 0.05, "L", 50.0),
    ("urine_output", 50, "mL", 50.0),
    ("temperature", 98.6, "[degF]", 37.0),
    ("temperature", 37, "Cel", 37.0),
    ("spo2", 97, "%", 97.0),
    ("lactate", 2.5, "mmol/L", 2.5),
])
def test_units_convert_to_the_canonical_unit(kind, value, unit, expected):
    o = n(kind, value, unit)
    assert isinstance(o, Observation), o
    assert o.kind == kind
    assert o.value == pytest.approx(expected, rel=1e-3)


def test_every_kind_of_the_contract_is_known():
    assert set(KINDS) == {"weight", "sbp", "dbp", "map", "heart_rate", "hematocrit", "leukocytes",
                          "urine_output", "albumin", "hemoglobin", "temperature", "spo2",
                          "lactate"}


def test_loinc_codes_and_aliases_map_to_kinds():
    assert n("4544-3", 45, "%").kind == "hematocrit"
    assert n("8480-6", 120, "mm[Hg]").kind == "sbp"
    assert n("HCT", 45, "%").kind == "hematocrit"


@pytest.mark.parametrize("raw, reason", [
    ({"patient_id": "p", "kind": "glucose", "value": 5, "unit": "mmol/L", "observed_at": ISO},
     "unknown_kind"),
    ({"patient_id": "p", "kind": "sbp", "value": 120, "unit": "psi", "observed_at": ISO},
     "unknown_unit"),
    ({"patient_id": "p", "kind": "hematocrit", "value": 45, "unit": "g/dL", "observed_at": ISO},
     "unknown_unit"),
    ({"patient_id": "p", "kind": "sbp", "value": 0, "unit": "mmHg", "observed_at": ISO},
     "out_of_range"),
    ({"patient_id": "p", "kind": "hematocrit", "value": 45, "unit": "L/L", "observed_at": ISO},
     "out_of_range"),
    ({"patient_id": "p", "kind": "weight", "value": 700, "unit": "kg", "observed_at": ISO},
     "out_of_range"),
    ({"patient_id": "p", "kind": "sbp", "value": "high", "unit": "mmHg", "observed_at": ISO},
     "bad_value"),
    ({"patient_id": "p", "kind": "sbp", "value": float("nan"), "unit": "mmHg",
      "observed_at": ISO}, "bad_value"),
    ({"patient_id": "p", "kind": "sbp", "value": True, "unit": "mmHg", "observed_at": ISO},
     "bad_value"),
    ({"patient_id": "p", "kind": "sbp", "value": 120, "unit": "mmHg",
      "observed_at": "2026-11-25T04:10:00"}, "bad_time"),
    ({"patient_id": "p", "kind": "sbp", "value": 120, "unit": "mmHg",
      "observed_at": "yesterday"}, "bad_time"),
    ({"patient_id": "p", "kind": "sbp", "value": 120, "unit": "mmHg",
      "observed_at": 1_764_043_800}, "bad_time"),  # seconds sent as milliseconds: 1970
    ({"kind": "sbp", "value": 120, "unit": "mmHg", "observed_at": ISO}, "missing_field"),
    ({"patient_id": "p", "value": 120, "unit": "mmHg", "observed_at": ISO}, "missing_field"),
    ({"patient_id": "p", "kind": "urine_output", "value": 5000, "unit": "mL", "observed_at": ISO,
      "period_min": 60}, "out_of_range"),
    ({"patient_id": "p", "kind": "urine_output", "value": 50, "unit": "mL", "observed_at": ISO,
      "period_min": -5}, "bad_value"),
])
def test_bad_input_is_rejected_with_a_reason(raw, reason):
    r = normalise(raw)
    assert isinstance(r, Rejection)
    assert r.reason == reason
    assert r.detail


def test_a_line_flush_reading_of_zero_is_an_artefact_not_shock():
    r = n("sbp", 0, "mmHg")
    assert isinstance(r, Rejection) and "artefact" in r.detail


def test_non_objects_are_rejected_not_raised():
    for raw in (None, 3, "text", [1, 2]):
        assert normalise(raw).reason == "not_an_object"


def test_event_time_accepts_iso_with_offset_and_epoch_ms():
    assert parse_time_ms("2026-11-25T05:10:00+01:00") == parse_time_ms("2026-11-25T04:10:00Z")
    assert parse_time_ms(1_764_043_800_000) == parse_time_ms("2025-11-25T04:10:00Z")
    assert parse_time_ms("1764043800000") == 1_764_043_800_000
    assert format_time(parse_time_ms(ISO)) == ISO


def test_missing_unit_means_the_canonical_unit():
    o = normalise({"patient_id": "p", "kind": "sbp", "value": 120, "observed_at": ISO})
    assert isinstance(o, Observation) and o.value == 120.0
