"""Every clinical threshold in one typed, frozen object, with its source.

Defaults come from ``docs/clinical-criteria.md``: [Q] marks a number stated by the cited source,
[D] a design default with its reason. No unified CLS definition exists (Wollborn 2021), so every
number here can be overridden from a TOML file (``--thresholds FILE`` / ``CLSMON_THRESHOLDS``)
without touching code; unknown keys are refused so a typo never silently keeps a default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

MIN_MS = 60_000
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Thresholds:
    # --- leak phase: hypotension ------------------------------------------------------------
    #: [Q] Karsen 2017 case definition: SBP <= 90 mmHg
    sbp_low_mmhg: float = 90.0
    #: [Q] Karsen 2017: a fall >= 40 mmHg from the patient's baseline
    sbp_fall_mmhg: float = 40.0
    #: [Q] Sepsis-3 (Singer, JAMA 2016): MAP < 65 mmHg
    map_low_mmhg: float = 65.0
    #: [D] alarm-fatigue literature (re-check before notifying): held >= 10 min, several readings
    hypotension_hold_min: float = 10.0
    hypotension_min_readings: int = 3
    # --- leak phase: hemoconcentration ------------------------------------------------------
    #: [D] upper reference limits: Hct > 45 % (F), > 50 % (M), > 45 % when sex is unknown
    hct_high_female_pct: float = 45.0
    hct_high_male_pct: float = 50.0
    hct_high_unknown_sex_pct: float = 45.0
    #: [Q]/[D] Druey & Greipp 2010 (Hct > 60 from 35-40): a rise >= 15 % relative to baseline
    hct_rise_relative: float = 0.15
    #: [D] hypotension and a hemoconcentrated sample belong to the same leak when they lie within
    #: this many hours of each other: ICU labs are drawn every 4-12 h and a leak lasts 24-36 h
    #: (Wu 2019), so 6 h pairs a draw with the shock it explains without reaching the next day.
    triad_window_h: float = 6.0
    # --- leak phase: hypoalbuminemia (raises severity) ----------------------------------------
    #: [Q] Karsen 2017: albumin < 3.0 g/dL or a fall >= 0.5 g/dL from baseline
    albumin_low_gdl: float = 3.0
    albumin_fall_gdl: float = 0.5
    # --- supportive signs ---------------------------------------------------------------------
    #: [Q] SIRS: WBC > 12 x10^9/L
    wbc_high: float = 12.0
    #: [Q] KDIGO 2012 stage 1: urine < 0.5 mL/kg/h for 6 h
    oliguria_ml_per_kg_h: float = 0.5
    oliguria_hours: float = 6.0
    # --- prodromal phase ----------------------------------------------------------------------
    #: [D] seed "sudden body weight increase"; >5 % over admission carries ICU mortality OR 2.38
    #: (Chittawatanarat 2015): 3 % (or 2 kg) within 48 h flags the prodrome earlier than that.
    weight_gain_pct: float = 3.0
    weight_gain_kg: float = 2.0
    weight_gain_window_h: float = 48.0
    #: [D] persistence: a second weighing must confirm the gain (one scale error never alerts)
    weight_confirm_readings: int = 2
    #: [D] from Wu 2019 ("very low urine output" in the prodrome): a single heavy weighing is
    #: confirmed when the urine flow of the 6 h before it is below 60 % of the admission flow
    prodrome_urine_fall_ratio: float = 0.6
    prodrome_urine_hours: float = 6.0
    #: [D] Wu 2019: the prodrome precedes the leak by 1-2 days; a prodrome with no leak after 72 h
    #: is closed (back to none) so a patient does not stay flagged for good.
    prodrome_expiry_h: float = 72.0
    # --- recovery phase -----------------------------------------------------------------------
    #: [D] criteria "SBP > 100 held": held for 60 min of 5-min slots
    recovery_sbp_mmhg: float = 100.0
    recovery_hold_min: float = 60.0
    #: [D] Hct "falling": 3 points below the episode peak, above lab analytic variation (~1-2 %)
    hct_fall_points: float = 3.0
    #: [Q] StatPearls: polyuria > 2.1 mL/kg/h sustained >= 3 h (= 50 mL/kg/24 h)
    polyuria_ml_per_kg_h: float = 2.1
    polyuria_hours: float = 3.0
    #: [Q] Druey 2010, Cordemans 2012: polyuria with weight >= 5 % over baseline -> fluid overload
    fluid_overload_weight_pct: float = 5.0
    #: [Q] Wu 2019: recovery lasts 48 h to 1 week; closed after 48 h once calm, at 7 days anyway
    recovery_min_h: float = 48.0
    recovery_max_h: float = 168.0
    # --- data handling ------------------------------------------------------------------------
    #: [D] conservative adult reference weight when neither context nor a weighing is known
    default_weight_kg: float = 70.0
    #: [D] baselines: mean of the first hours of data (admission), never updated from an episode
    baseline_vitals_h: float = 6.0
    baseline_labs_h: float = 24.0
    baseline_min_vitals: int = 5
    #: [D] 5-minute blood-pressure slots; a slot is hypotensive when most readings in it are, so a
    #: single artefact inside a slot neither raises nor clears hypotension
    bp_slot_min: float = 5.0
    #: [D] how far back (event time) a late vital still lands in its slot: monitors publish within
    #: seconds; later vitals are accepted and counted as late but do not rewrite blood-pressure runs
    bp_late_horizon_min: float = 60.0

    #: derived once (hot path): slot length in milliseconds, late horizon in slots
    bp_slot_ms: int = field(init=False, repr=False, compare=False, default=0)
    bp_horizon_slots: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bp_slot_ms", int(self.bp_slot_min * MIN_MS))
        object.__setattr__(self, "bp_horizon_slots",
                           int(self.bp_late_horizon_min * MIN_MS) // self.bp_slot_ms)

    def hct_high_pct(self, sex: str | None) -> float:
        """The sex-specific hemoconcentration cut-off (conservative 45 % when sex is unknown)."""
        if sex == "M":
            return self.hct_high_male_pct
        if sex == "F":
            return self.hct_high_female_pct
        return self.hct_high_unknown_sex_pct


DEFAULT_THRESHOLDS = Thresholds()


class ThresholdsError(ValueError):
    """A thresholds file that cannot be used (unknown key, wrong type, impossible value)."""


def thresholds_from_mapping(values: dict[str, Any], base: Thresholds = DEFAULT_THRESHOLDS
                            ) -> Thresholds:
    """Override defaults from a mapping; flat keys or one level of TOML tables are accepted."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    known = {f.name: f for f in fields(Thresholds) if f.init}
    unknown = sorted(set(flat) - set(known))
    if unknown:
        raise ThresholdsError(f"unknown threshold(s): {', '.join(unknown)}")
    typed: dict[str, Any] = {}
    for key, value in flat.items():
        want = int if known[key].type in ("int", int) else float
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ThresholdsError(f"{key} must be a number, got {value!r}")
        if value < 0:
            raise ThresholdsError(f"{key} must not be negative, got {value!r}")
        typed[key] = want(value)
    return replace(base, **typed)


def load_thresholds(path: str | Path | None) -> Thresholds:
    """Defaults, overridden by the TOML file at ``path`` when one is given."""
    if path is None or str(path) == "":
        return DEFAULT_THRESHOLDS
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ThresholdsError(f"thresholds file not found: {p}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ThresholdsError(f"thresholds file {p} is not valid TOML: {exc}") from exc
    return thresholds_from_mapping(data)
