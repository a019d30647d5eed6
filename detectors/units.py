"""Observation kinds, their canonical units, unit conversions and physiological ranges.

One table for the whole project: the stream ingest, the offline replay and the simulator all read
it. Canonical units follow the event contract in ``docs/contract.md``; the accepted spellings are
the UCUM codes named in ``docs/clinical-criteria.md`` ("Standard codes") plus the spellings bedside
devices and lab systems commonly send. Ranges are the "physiologically possible ranges" of
``docs/clinical-criteria.md``: a value outside them is an artefact (a line flush reading 0 mmHg, a
unit mix-up), never a patient state, and is rejected before it reaches a detector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KindSpec:
    """What one observation kind accepts and how it becomes canonical."""

    canonical_unit: str
    #: accepted unit spelling (lower-cased, spaces removed) -> conversion to the canonical unit
    units: dict[str, Callable[[float], float]]
    low: float
    high: float
    #: where the range comes from (printed in rejection reasons and docs)
    range_source: str


def _scale(factor: float) -> Callable[[float], float]:
    def convert(value: float) -> float:
        return value * factor

    return convert


_SAME = _scale(1.0)
_MMHG_PER_KPA = 7.500617  # 1 kPa = 7.500617 mmHg (definition of the torr)
_KG_PER_LB = 0.45359237  # international avoirdupois pound, exact
_HB_GDL_PER_MMOLL = 1.611  # haemoglobin monomer 16.11 g/mmol -> g/dL
_CRITERIA = "docs/clinical-criteria.md, physiologically possible ranges"
_DESIGN = "[D] wide human-survival bounds; not in the criteria table"

_PRESSURE_UNITS = {"mm[hg]": _SAME, "mmhg": _SAME, "kpa": _scale(_MMHG_PER_KPA)}

KINDS: dict[str, KindSpec] = {
    "weight": KindSpec(
        "kg",
        {"kg": _SAME, "[lb_av]": _scale(_KG_PER_LB), "lb": _scale(_KG_PER_LB),
         "lbs": _scale(_KG_PER_LB), "g": _scale(0.001)},
        0.5, 400.0, _CRITERIA),
    "sbp": KindSpec("mmHg", _PRESSURE_UNITS, 20.0, 300.0, _CRITERIA),
    "dbp": KindSpec("mmHg", _PRESSURE_UNITS, 10.0, 200.0, _CRITERIA),
    "map": KindSpec("mmHg", _PRESSURE_UNITS, 15.0, 250.0, _CRITERIA),
    "heart_rate": KindSpec(
        "/min",
        {"/min": _SAME, "1/min": _SAME, "{beats}/min": _SAME, "bpm": _SAME, "beats/min": _SAME},
        1.0, 300.0, _CRITERIA),
    "hematocrit": KindSpec(
        "%",
        {"%": _SAME, "l/l": _scale(100.0), "fraction": _scale(100.0), "1": _scale(100.0)},
        5.0, 80.0, _CRITERIA),
    "leukocytes": KindSpec(
        "10^9/L",
        {"10*9/l": _SAME, "10^9/l": _SAME, "x10^9/l": _SAME, "g/l": _SAME,
         "10*3/ul": _SAME, "10^3/ul": _SAME, "k/ul": _SAME, "10*3/mm3": _SAME,
         "/ul": _scale(0.001), "/mm3": _scale(0.001), "cells/ul": _scale(0.001)},
        0.05, 1000.0, _CRITERIA),
    "urine_output": KindSpec("mL", {"ml": _SAME, "l": _scale(1000.0)}, 0.0, 48000.0,
                             "[D] 2000 mL/h x 24 h; the per-hour rate is checked with period_min"),
    "albumin": KindSpec("g/dL", {"g/dl": _SAME, "g/l": _scale(0.1)}, 0.5, 6.5, _CRITERIA),
    "hemoglobin": KindSpec(
        "g/dL",
        {"g/dl": _SAME, "g/l": _scale(0.1), "mmol/l": _scale(_HB_GDL_PER_MMOLL)},
        1.5, 25.0, _CRITERIA),
    "temperature": KindSpec(
        "Cel",
        {"cel": _SAME, "°c": _SAME, "c": _SAME, "degc": _SAME,
         "[degf]": lambda f: (f - 32.0) * 5.0 / 9.0, "°f": lambda f: (f - 32.0) * 5.0 / 9.0,
         "degf": lambda f: (f - 32.0) * 5.0 / 9.0},
        25.0, 45.0, _DESIGN),
    "spo2": KindSpec("%", {"%": _SAME}, 20.0, 100.0, _DESIGN),
    "lactate": KindSpec("mmol/L", {"mmol/l": _SAME}, 0.0, 40.0, _DESIGN),
}

#: Aliases for kind names as lab systems and monitors send them (LOINC codes from
#: docs/clinical-criteria.md "Standard codes"), all mapped onto the contract's names.
KIND_ALIASES: dict[str, str] = {
    "29463-7": "weight", "body_weight": "weight",
    "8480-6": "sbp", "systolic": "sbp", "nibp_sys": "sbp", "abp_sys": "sbp",
    "8462-4": "dbp", "diastolic": "dbp", "nibp_dia": "dbp", "abp_dia": "dbp",
    "8478-0": "map", "mean_arterial_pressure": "map", "nibp_mean": "map", "abp_mean": "map",
    "8867-4": "heart_rate", "hr": "heart_rate", "pulse": "heart_rate",
    "4544-3": "hematocrit", "hct": "hematocrit",
    "6690-2": "leukocytes", "wbc": "leukocytes",
    "1751-7": "albumin",
    "718-7": "hemoglobin", "hb": "hemoglobin", "hgb": "hemoglobin",
    "9192-6": "urine_output", "urine": "urine_output",
    "temp": "temperature", "8310-5": "temperature",
    "59408-5": "spo2", "2708-6": "spo2",
}

#: Upper bound of a plausible urine flow (docs/clinical-criteria.md: 0-2000 mL per hour).
URINE_MAX_ML_PER_H = 2000.0


def unit_key(unit: str) -> str:
    """Fold a unit spelling for lookup: case and spaces do not matter ('mm Hg' -> 'mmhg')."""
    return unit.replace(" ", "").lower()


def canonical_kind(kind: str) -> str | None:
    """The contract's name for a kind, or None when the kind is unknown."""
    k = kind.strip().lower()
    if k in KINDS:
        return k
    return KIND_ALIASES.get(k)
