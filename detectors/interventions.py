"""Interventions: what was given to the patient (blood products, albumin, fluids, pressors,
diuretics), the second input of the engine besides observations.

Real ICU alerts are explained away by treatment the detectors would otherwise never see: a
transfusion raises the Hct, albumin raises serum albumin, a vasopressor holds the pressure
(docs/clinical-criteria.md, "Confounders from treatment and charting"). This module is the gate
for them, the twin of ``detectors.observation.normalise``: ``parse_intervention`` never raises
and returns either an ``Intervention`` in canonical units or a ``Rejection`` with the same stable
reason codes as observations (``missing_field``, ``unknown_kind``, ``unknown_unit``,
``bad_value``, ``bad_time``, ``out_of_range``, ``inconsistent``), so the stream dead-letters and
the replay's rejects file speak one language.

``record`` folds a validated intervention into ``PatientState.iv``: per kind, the latest few
rows ``[start_ms, end_ms, amount, rate, tag]`` sorted by start (order-free, bounded,
redelivery-safe); a vasopressor's rate is kept as its norepinephrine-equivalent dose; fluids and
blood products also go into the fluid balance (``PatientState.fb``). ``detectors.confounders``
reads them: red cells explain a Hct rise, albumin a high albumin, a running vasopressor a normal
pressure, fluids a weight gain.

Kinds and canonical units:

| kind | amount | rate |
|---|---|---|
| red_cells, plasma, platelets, albumin, crystalloid | mL | mL/h |
| vasopressor, inotrope | mg (vasopressin: units) | mcg/kg/min (vasopressin: units/min) |
| diuretic | mg | mg/h |

``inotrope`` (dobutamine, milrinone) is its own kind: an inotrope raises cardiac output, not
vascular tone, so it is not the "pressure held by a vasopressor" confounder.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from detectors.config import DEFAULT_THRESHOLDS, Thresholds
from detectors.observation import Rejection, parse_time_ms
from detectors.state import PatientState, add_fluid

_FLUIDS = ("red_cells", "plasma", "platelets", "albumin", "crystalloid")
KINDS = (*_FLUIDS, "vasopressor", "inotrope", "diuretic")
MODES = ("bolus", "infusion", "unknown")


class Intervention(NamedTuple):
    """A validated intervention in canonical units (see the module docstring)."""

    patient_id: str
    kind: str
    started_at_ms: int
    ended_at_ms: int | None = None  # None: a dose at one time, or an end not (yet) known
    amount: float | None = None  # canonical amount unit of the kind
    amount_unit: str = ""
    rate: float | None = None  # canonical rate unit of the kind
    rate_unit: str = ""
    agent: str = ""  # e.g. norepinephrine, albumin 25%, NaCl 0.9%
    mode: str = "unknown"  # bolus | infusion | unknown
    source: str = ""
    id: str = ""
    #: when the record became available (charted/stored); None = when it started
    available_at_ms: int | None = None


def _same(v: float) -> float:
    return v


def _scale(f: float) -> Callable[[float], float]:
    return lambda v: v * f


_ML = {"ml": _same, "l": _scale(1000.0)}
_ML_H = {"ml/h": _same, "ml/hr": _same, "ml/hour": _same, "l/h": _scale(1000.0)}
_MG = {"mg": _same, "g": _scale(1000.0), "mcg": _scale(0.001), "ug": _scale(0.001)}
_UNITS = {"units": _same, "u": _same, "[iu]": _same, "iu": _same}
_PER_KG_MIN = {"mcg/kg/min": _same, "ug/kg/min": _same, "ug/kg/min{}": _same,
               "mg/kg/min": _scale(1000.0)}
_UNITS_MIN = {"units/min": _same, "u/min": _same, "[iu]/min": _same,
              "units/h": _scale(1 / 60), "units/hour": _scale(1 / 60), "u/h": _scale(1 / 60),
              "[iu]/h": _scale(1 / 60)}
_MG_H = {"mg/h": _same, "mg/hr": _same, "mg/hour": _same}


class _Spec(NamedTuple):
    #: accepted amount unit (lower-cased, no spaces) -> (canonical unit, conversion)
    amounts: dict[str, tuple[str, Callable[[float], float]]]
    rates: dict[str, tuple[str, Callable[[float], float]]]


def _units(canonical: str, table: Mapping[str, Callable[[float], float]]
           ) -> dict[str, tuple[str, Callable[[float], float]]]:
    return {k: (canonical, f) for k, f in table.items()}


_FLUID_SPEC = _Spec(_units("mL", _ML), _units("mL/h", _ML_H))
_PRESSOR_SPEC = _Spec({**_units("mg", _MG), **_units("units", _UNITS)},
                      {**_units("mcg/kg/min", _PER_KG_MIN), **_units("units/min", _UNITS_MIN)})
SPECS: dict[str, _Spec] = {
    **dict.fromkeys(_FLUIDS, _FLUID_SPEC),
    "vasopressor": _PRESSOR_SPEC, "inotrope": _PRESSOR_SPEC,
    "diuretic": _Spec(_units("mg", _MG), _units("mg/h", _MG_H)),
}

#: Largest possible amount of one record, per canonical unit: more is a unit mix-up or a typing
#: error, never a dose ([D] wide bounds, above any dose in the MIMIC-III demo: OR red cells
#: 2,400 mL, crystalloid 5 L in one OR record; massive transfusion protocols give ~10 units).
MAX_AMOUNT = {"mL": 20_000.0, "mg": 5_000.0, "units": 1_000.0}
#: Largest possible rate, per canonical unit ([D]: dopamine is dosed up to 20-50 mcg/kg/min,
#: vasopressin to 0.04-0.1 units/min, furosemide infusions to 40-160 mg/h; a pressure bag runs
#: ~ 6 L/h, and the demo's fastest red-cell record is 1,994 mL/h).
MAX_RATE = {"mL/h": 20_000.0, "mcg/kg/min": 100.0, "units/min": 2.0, "mg/h": 500.0}

_ALIASES = {"rbc": "red_cells", "prbc": "red_cells", "packed_red_cells": "red_cells",
            "ffp": "plasma", "fresh_frozen_plasma": "plasma", "pressor": "vasopressor",
            "fluid": "crystalloid", "fluids": "crystalloid"}


def canonical_kind(kind: str) -> str | None:
    k = kind.strip().lower().replace(" ", "_")
    if k in SPECS:
        return k
    return _ALIASES.get(k)


def _number(raw: Any) -> float | None | Rejection:
    """None when absent; the number; a Rejection when present but not a finite number."""
    if raw is None or raw == "" or (isinstance(raw, float) and math.isnan(raw)):
        return None
    if isinstance(raw, bool):
        return Rejection("bad_value", f"{raw!r} is not a number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return Rejection("bad_value", f"{raw!r} is not a number")
    if not math.isfinite(value):
        return Rejection("bad_value", f"{raw!r} is not a finite number")
    return value


def _convert(kind: str, what: str, raw_value: Any, raw_unit: Any,
             table: dict[str, tuple[str, Callable[[float], float]]],
             limits: dict[str, float]) -> tuple[float | None, str] | Rejection:
    value = _number(raw_value)
    if isinstance(value, Rejection):
        return Rejection("bad_value", f"{kind} {what}: {value.detail}")
    if value is None:
        return None, ""
    unit = raw_unit.replace(" ", "").lower() if isinstance(raw_unit, str) else ""
    found = table.get(unit)
    if found is None:
        accepted = sorted({canonical for canonical, _ in table.values()})
        return Rejection("unknown_unit", f"{kind} {what} unit {raw_unit!r} not accepted "
                                         f"(canonical: {', '.join(accepted)})")
    canonical_unit, convert = found
    canonical = convert(value)
    high = limits[canonical_unit]
    if not 0.0 < canonical <= high:
        return Rejection("out_of_range", f"{kind} {what} {canonical:g} {canonical_unit} is not "
                                         f"possible (must be > 0 and <= {high:g}): a unit "
                                         "mix-up or a typing error")
    return canonical, canonical_unit


def parse_intervention(raw: Mapping[str, Any]) -> Intervention | Rejection:
    """Validate one raw intervention (a JSON object or a CSV row) and convert it to canonical
    units; never raises. Needs an amount or a rate (or both)."""
    if not isinstance(raw, Mapping):
        return Rejection("not_an_object", f"expected a JSON object, got {type(raw).__name__}")
    pid = raw.get("patient_id")
    if not isinstance(pid, str) or not pid.strip():
        return Rejection("missing_field", "patient_id is missing or not a non-empty string")
    kind_raw = raw.get("kind")
    if not isinstance(kind_raw, str) or not kind_raw.strip():
        return Rejection("missing_field", "kind is missing or not a string")
    kind = canonical_kind(kind_raw)
    if kind is None:
        return Rejection("unknown_kind", f"unknown intervention kind {kind_raw!r}; known: "
                                         f"{', '.join(KINDS)}")
    spec = SPECS[kind]
    start = parse_time_ms(raw.get("started_at"))
    if start is None:
        return Rejection("bad_time", f"started_at {raw.get('started_at')!r} is not ISO 8601 "
                                     "with an offset or plausible epoch milliseconds")
    end = None
    if raw.get("ended_at") not in (None, ""):
        end = parse_time_ms(raw.get("ended_at"))
        if end is None:
            return Rejection("bad_time", f"ended_at {raw.get('ended_at')!r} is not ISO 8601 "
                                         "with an offset or plausible epoch milliseconds")
        if end < start:
            return Rejection("inconsistent", f"{kind} ends ({raw.get('ended_at')}) before it "
                                             f"starts ({raw.get('started_at')})")
    available = None
    if raw.get("available_at") not in (None, ""):
        available = parse_time_ms(raw.get("available_at"))
        if available is None:
            return Rejection("bad_time", f"available_at {raw.get('available_at')!r} is not "
                                         "ISO 8601 with an offset or epoch milliseconds")
    amount = _convert(kind, "amount", raw.get("amount"), raw.get("amount_unit"), spec.amounts,
                      MAX_AMOUNT)
    if isinstance(amount, Rejection):
        return amount
    rate = _convert(kind, "rate", raw.get("rate"), raw.get("rate_unit"), spec.rates, MAX_RATE)
    if isinstance(rate, Rejection):
        return rate
    if amount[0] is None and rate[0] is None:
        return Rejection("bad_value", f"{kind}: neither an amount nor a rate")
    mode_raw = raw.get("mode")
    mode = mode_raw.strip().lower() if isinstance(mode_raw, str) and mode_raw.strip() \
        else "unknown"
    if mode not in MODES:
        return Rejection("bad_value", f"mode {mode_raw!r} is not one of {', '.join(MODES)}")

    def text(key: str) -> str:
        v = raw.get(key)
        return v if isinstance(v, str) else ""

    return Intervention(pid.strip(), kind, start, end, amount[0], amount[1], rate[0], rate[1],
                        text("agent"), mode, text("source"), text("id"), available)


# --- state ----------------------------------------------------------------------------------

#: short state keys per kind (the changelog stores the state once per update)
STATE_KEYS = {"red_cells": "rc", "plasma": "pl", "platelets": "pt", "albumin": "al",
              "crystalloid": "cr", "vasopressor": "vp", "inotrope": "in", "diuretic": "di"}
#: [D] rows kept per kind: enough for the 24-48 h a confounder explains an observation
#: (a night of red cells, a pressor titrated a few times), few enough to keep the state small;
#: red cells are kept for the baseline's lifetime (a relative Hct rise is judged against the
#: baseline plus every unit given since), the others 48 h
IV_KEEP = {"red_cells": 16, "plasma": 4, "platelets": 4, "albumin": 4, "crystalloid": 4,
           "vasopressor": 8, "inotrope": 4, "diuretic": 4}
#: [D] rows that ended longer ago than this (event time) no longer explain anything
IV_HORIZON_MS = 48 * 3_600_000
#: [Q] norepinephrine-equivalent dose per unit of each agent's rate (Goradia et al., "Vasopressor
#: dose equivalence: a scoping review and suggested formula", J Crit Care 2021;61:233-240):
#: NE = norepinephrine + epinephrine + phenylephrine/10 + dopamine/100 + vasopressin (U/min) x 2.5
NE_EQUIVALENT = {"norepinephrine": 1.0, "epinephrine": 1.0, "phenylephrine": 0.1,
                 "dopamine": 0.01, "vasopressin": 2.5}
#: volume kinds that enter the fluid balance (in)
FLUID_KINDS = _FLUIDS


def _volume_ml(iv: Intervention) -> float | None:
    """The volume given: the amount in mL, else rate x duration when both ends are known."""
    if iv.amount is not None and iv.amount_unit == "mL":
        return iv.amount
    if iv.rate is not None and iv.rate_unit == "mL/h" and iv.ended_at_ms is not None:
        return iv.rate * (iv.ended_at_ms - iv.started_at_ms) / 3_600_000
    return None


def ne_factor(agent: str) -> float:
    """The norepinephrine-equivalent factor of a vasopressor agent (1 when not known)."""
    a = agent.strip().lower()
    for name, factor in NE_EQUIVALENT.items():
        if name in a:
            return factor
    return 1.0


def as_row(iv: Intervention) -> list[float | None]:
    """The state row ``[start_ms, end_ms, amount, rate, tag]`` (end = start for a one-time
    dose; a vasopressor's rate as norepinephrine equivalent, a fluid's amount in mL from its
    rate when only that is given). ``tag`` (CRC-32 of the id, else the agent) tells two records
    of the same time and amount apart (two bags hung together) while a redelivery of one record
    stays a duplicate."""
    end = iv.ended_at_ms if iv.ended_at_ms is not None else iv.started_at_ms
    tag = zlib.crc32((iv.id or iv.agent).encode()) & 0xFFFF
    rate = iv.rate
    if iv.kind == "vasopressor" and rate is not None:
        rate = rate * ne_factor(iv.agent)
    amount = _volume_ml(iv) if iv.kind in FLUID_KINDS else iv.amount
    return [iv.started_at_ms, end, amount, rate, tag]


def record(st: PatientState, iv: Intervention, th: Thresholds = DEFAULT_THRESHOLDS) -> str:
    """Fold one intervention into the state; ``accepted`` or ``duplicate`` (a redelivery)."""
    rows = st.iv.setdefault(STATE_KEYS[iv.kind], [])
    row = as_row(iv)
    if row in rows:
        return "duplicate"
    start = iv.started_at_ms
    i = len(rows)
    while i and (rows[i - 1][0] or 0) > start:
        i -= 1
    rows.insert(i, row)
    horizon = th.baseline_max_age_ms if iv.kind == "red_cells" else IV_HORIZON_MS
    cutoff = max(st.max_t, row[1] or 0) - horizon
    rows[:] = [r for r in rows if (r[1] or 0) >= cutoff][-IV_KEEP[iv.kind]:]
    volume = row[2]
    if iv.kind in FLUID_KINDS and volume is not None:
        add_fluid(st, start, int(row[1] or start), float(volume), 0)
    return "accepted"
