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


class ThresholdsError(ValueError):
    """A thresholds file that cannot be used (unknown key, wrong type, impossible value)."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    # --- leak phase: hypotension ------------------------------------------------------------
    #: [Q] Karsen 2017 case definition: SBP <= 90 mmHg
    sbp_low_mmhg: float = 90.0
    #: [Q] Karsen 2017: a fall >= 40 mmHg from the patient's baseline
    sbp_fall_mmhg: float = 40.0
    #: [Q] Sepsis-3 (Singer, JAMA 2016): MAP < 65 mmHg
    map_low_mmhg: float = 65.0
    #: [D] alarm-fatigue literature (re-check before notifying): low pressure held >= 10 min
    #: (first to last low reading of a run) over >= 3 readings at distinct times, so that one
    #: reading, or one SBP/MAP pair, never raises it
    hypotension_hold_min: float = 10.0
    hypotension_min_readings: int = 3
    #: [D] a run of low pressure continues across a gap without readings up to this long: 90 min
    #: bridges hourly charting with its usual irregularity (MIMIC-III demo: 92.7 % of consecutive
    #: SBP chartings of an admission are <= 60 min apart, 95.6 % <= 90 min; a 5-min monitor has
    #: no gaps at all); a normal reading in between still ends the run, and two isolated low
    #: readings hours apart never join
    hypotension_gap_min: float = 90.0
    #: [D] closed blood-pressure runs are kept 72 h; a decision that rests on the ABSENCE of a
    #: shock (the prodrome) is only taken on evidence younger than 72 h minus its 48 h look-back
    run_retention_h: float = 72.0
    # --- leak phase: hemoconcentration ------------------------------------------------------
    #: [D] upper reference limits: Hct > 45 % (F), > 50 % (M), > 45 % when sex is unknown; the
    #: hemoglobin cut-off is the Hct cut-off / 3 ([Q] "rule of three": Hct ~ 3 x Hb)
    hct_high_female_pct: float = 45.0
    hct_high_male_pct: float = 50.0
    hct_high_unknown_sex_pct: float = 45.0
    #: [Q]/[D] Druey & Greipp 2010 (Hct > 60 from 35-40): a rise >= 15 % relative to baseline
    hct_rise_relative: float = 0.15
    #: [D] Hct and Hb of one draw "agree" when the Hb also lies above its cut-off or has risen
    #: over its own baseline by more than its reference change value: RCV = 2.77 x sqrt(CVa^2 +
    #: CVi^2) ~ 8 % with CVi 2.7 % (EFLM biological variation database) and CVa ~ 1.5 % (Fraser,
    #: "Biological variation: from principles to practice", 2001)
    hb_agree_rise_relative: float = 0.08
    #: [D] a draw whose Hct stands >= 3 points (above lab analytic variation) above the draw of the
    #: same kind taken less than 2 h before it is checked against the next draw: if that one is
    #: also >= 3 points lower the draw was a spike (sampling or point-of-care error, e.g. one
    #: blood-gas Hct between two laboratory values) and never counts; the wait is at most 6 h
    hct_spike_points: float = 3.0
    hct_spike_window_h: float = 2.0
    hct_spike_wait_h: float = 6.0
    #: [D] hypotension and a hemoconcentrated sample belong to the same leak when they lie within
    #: this many hours of each other: ICU labs are drawn every 4-12 h and a leak lasts 24-36 h
    #: (Wu 2019), so 6 h pairs a draw with the shock it explains without reaching the next day;
    #: a second hemoconcentrated draw within it confirms the first
    triad_window_h: float = 6.0
    # --- transfusion (docs/clinical-criteria.md, "Confounders from treatment") -----------------
    #: [Q] one unit of red cells (~300 mL) raises the Hct by ~3 points in an average (70 kg)
    #: adult without bleeding (NCCN rule of thumb); scaled by 70 kg / the patient's weight
    red_cell_unit_ml: float = 300.0
    hct_rise_per_unit: float = 3.0
    #: [D] red cells given in the 24 h before a draw explain its Hct above the absolute cut-off
    #: (the Hct settles within 15 min to 24 h of a transfusion, Wiesen 1994); a RELATIVE rise is
    #: judged against the baseline plus every unit given since the baseline readings
    transfusion_window_h: float = 24.0
    # --- leak phase: hypoalbuminemia (raises severity) ----------------------------------------
    #: [Q] Karsen 2017: albumin < 3.0 g/dL or a fall >= 0.5 g/dL from baseline; the fall from the
    #: stay's baseline escalates a leak to critical
    albumin_low_gdl: float = 3.0
    albumin_fall_gdl: float = 0.5
    #: [D] without a measurable fall, only a severe hypoalbuminemia (< 2.5 g/dL, below the
    #: moderate 2.5-3.0 range that half of ICU patients have: MIMIC-III demo median 2.9-3.0)
    #: drawn with the triad escalates to critical
    albumin_critical_gdl: float = 2.5
    #: [D] albumin infused in the 24 h before a draw explains a high albumin (25 g of 25 %
    #: albumin raise serum albumin by ~0.5-1 g/dL for hours): that draw neither rules out a leak
    #: as "concentrated" nor enters the baseline
    albumin_infusion_window_h: float = 24.0
    # --- dehydration exclusion (the triad counts "after other causes are excluded") -------------
    #: [D] hypotension and hemoconcentration with the weight falling >= 2 % within 48 h, or an
    #: albumin concentrated (>= 0.5 g/dL over baseline, or > 4.5 g/dL: above the upper reference
    #: limit) within the triad window, is volume loss, not a leak
    dehydration_weight_loss_pct: float = 2.0
    albumin_concentrated_rise_gdl: float = 0.5
    albumin_concentrated_gdl: float = 4.5
    # --- supportive signs ---------------------------------------------------------------------
    #: [Q] SIRS: WBC > 12 x10^9/L
    wbc_high: float = 12.0
    #: [Q] KDIGO 2012 stage 1: urine < 0.5 mL/kg/h for 6 h
    oliguria_ml_per_kg_h: float = 0.5
    oliguria_hours: float = 6.0
    #: [D] a urine window less than 90 % covered by collections gives no rate (a missing hour of
    #: charting is not anuria)
    urine_min_coverage: float = 0.9
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
    #: [D] the admission flow is the mean of the stay's first 3 urine collections (hourly
    #: charting: the first 3 h), so one short or spilled collection does not set it
    prodrome_urine_baseline_collections: int = 3
    #: [D] Wu 2019: the prodrome precedes the leak by 1-2 days; a prodrome with no leak after 72 h
    #: is closed (back to none) so a patient does not stay flagged for good.
    prodrome_expiry_h: float = 72.0
    #: [D] a prodrome is only raised from a weighing at most 24 h old (older than the shock runs
    #: kept to rule it out, and no longer a warning)
    prodrome_max_age_h: float = 24.0
    #: [D] 1 L of fluid weighs ~1 kg: a gain of which the fluid balance over the same interval
    #: (crystalloid, blood products and albumin in, urine out) explains at least half is
    #: resuscitation, not a prodrome
    fluid_balance_explains: float = 0.5
    # --- leak episode ---------------------------------------------------------------------------
    #: [D] a leak is raised from evidence at most 12 h old: labs arrive hours late, but the
    #: albumin and weighings that rule out dehydration are kept for about two days, and a decision
    #: must never become possible only because the evidence against it has aged out of the state
    leak_max_age_h: float = 12.0
    #: [D] labs drawn within 10 minutes of each other are one panel (Hct, Hb, albumin and WBC of
    #: one draw reach the lab feed as separate messages; a decision waits for the whole panel, so
    #: that the albumin which rules out dehydration is not one message too late)
    panel_min: float = 10.0
    #: [D] Wu 2019: a leak lasts 24-36 h; an episode with neither persistent hypotension nor a
    #: hemoconcentrated draw for 24 h is closed (it never lingers into another admission)
    leak_quiet_h: float = 24.0
    # --- vasopressors (recovery is not called on pressors) ----------------------------------------
    #: [Q] norepinephrine-equivalent dose (Goradia 2021, J Crit Care 61:233): phenylephrine / 10,
    #: dopamine / 100, vasopressin (units/min) x 2.5, epinephrine x 1; a pressure held while a
    #: vasopressor runs is shock treated, not recovery, unless the pressor is weaning: [D] its
    #: norepinephrine-equivalent rate at most half the highest rate of the last 6 h. A dose with
    #: no end or a bolus counts as running for 1 h [D]
    pressor_weaning_ratio: float = 0.5
    pressor_weaning_h: float = 6.0
    pressor_open_h: float = 1.0
    # --- recovery phase -----------------------------------------------------------------------
    #: [D] criteria "SBP > 100 held": held for 60 min
    recovery_sbp_mmhg: float = 100.0
    recovery_hold_min: float = 60.0
    #: [D] Hct "falling": 3 points below the episode peak, above lab analytic variation (~1-2 %)
    hct_fall_points: float = 3.0
    #: [Q] StatPearls: polyuria > 2.1 mL/kg/h sustained >= 3 h (= 50 mL/kg/24 h)
    polyuria_ml_per_kg_h: float = 2.1
    polyuria_hours: float = 3.0
    #: [Q] Druey 2010, Cordemans 2012: polyuria with weight >= 5 % over baseline -> fluid overload
    fluid_overload_weight_pct: float = 5.0
    #: [D] the weighing that shows the overload lies within 24 h of the polyuria
    fluid_overload_pairing_h: float = 24.0
    #: [Q] Wu 2019: recovery lasts 48 h to 1 week; closed after 48 h once calm (no polyuria and
    #: no hypotension in the last 6 h), at 7 days anyway
    recovery_min_h: float = 48.0
    recovery_max_h: float = 168.0
    recovery_calm_h: float = 6.0
    # --- stays and baselines ------------------------------------------------------------------
    #: [D] conservative adult reference weight when neither context nor a weighing is known
    default_weight_kg: float = 70.0
    #: [D] baselines: the first hours of the stay (6 h of SBP, 24 h of labs and weighings), from
    #: normal readings only, frozen once the first episode begins; a decision uses only baseline
    #: readings drawn before the value it judges (no look-ahead), labs as their median
    baseline_vitals_h: float = 6.0
    baseline_labs_h: float = 24.0
    baseline_min_vitals: int = 5
    #: [D] a baseline older than 7 days no longer judges a relative change (Hb falls ~0.5 g/dL a
    #: day in the first ICU days without bleeding, Nguyen 2003, Crit Care Med 31:406): only the
    #: absolute cut-offs apply then
    baseline_max_age_h: float = 168.0
    #: [D] a patient with no reading for 72 h (and no ADT feed saying so) is on a new stay: its
    #: windows, baselines and episode start anew (MIMIC-III demo: 10 gaps > 48 h within 129
    #: admissions, none > 138 h; readmissions median 45 days apart)
    stay_gap_h: float = 72.0
    # --- plausibility against the patient's own series ----------------------------------------
    #: [D] a reading more than 72 h (the stay gap) after everything else known of the patient is
    #: held back as "in the future" (a mistyped date) until a second reading confirms the
    #: patient's time moved on (then a new stay); it never moves the patient's horizon (cases/07:
    #: one SBP dated a year ahead). Shorter would refuse ward labs: MIMIC-III demo admissions
    #: have 175 gaps of 24-48 h between readings. The stream also refuses a reading more than
    #: 24 h after the worker's clock (``stream_future_h``)
    future_tolerance_h: float = 72.0
    stream_future_h: float = 24.0
    #: [D] a weighing is an artefact when it differs from the median of the patient's recent
    #: weighings (and the admission weight) by more than 5 kg or 10 % (bed scale vs standing) plus
    #: 1 kg per hour between them: fluid balances of even massive resuscitation stay below
    #: 1 L/h (a weight of 8.2 kg between 82 kg, +35 kg in 51 min, 263 kg for a 64 kg patient)
    weight_jump_kg: float = 5.0
    weight_jump_pct: float = 10.0
    weight_jump_kg_per_h: float = 1.0
    #: [D] the reference is the median of the last 3 weighings (and the admission weight): one
    #: wrong weighing among them cannot move it
    weight_jump_reference_weighings: int = 3
    #: [D] with only an admission weight (no weighing yet) its time is unknown: taken as 24 h
    #: before, so the allowance is 24 kg more than the fixed bound (an admission weight is
    #: often days old or estimated, and must not refuse the first real weighing)
    weight_jump_unknown_age_h: float = 24.0
    #: [D] a Hct that differs from both neighbouring draws by more than 20 points plus 10 points
    #: per hour between them is an artefact (the fastest real change in the MIMIC-III demo:
    #: 23 -> 39.6 % in 50 min under massive transfusion, 15.5 -> 8.9 % in 47 min in haemorrhage)
    hct_jump_points: float = 20.0
    hct_jump_points_per_h: float = 10.0
    # --- windows kept in the state (bounded, see detectors.state) -----------------------------
    #: [D] readings kept per lab kind: enough for a trend over the 48-72 h of a leak with
    #: 6-12-hourly draws; older readings no longer change a decision
    labs_kept: int = 8
    wbc_kept: int = 3
    weighings_kept: int = 12
    #: [D] baseline readings kept per kind (the first 24 h of draws of the stay)
    baseline_kept: int = 6
    #: [D] 5-minute blood-pressure slots; a slot is hypotensive when most readings in it are, so a
    #: single artefact inside a slot neither raises nor clears hypotension
    bp_slot_min: float = 5.0
    #: [D] how far back (event time) a late vital still lands in its slot: monitors publish within
    #: seconds; later vitals are accepted and counted as late but do not rewrite blood-pressure runs
    bp_late_horizon_min: float = 60.0

    #: derived once (hot path): slot length in milliseconds, late horizon in slots
    bp_slot_ms: int = field(init=False, repr=False, compare=False, default=0)
    bp_horizon_slots: int = field(init=False, repr=False, compare=False, default=0)
    bp_gap_ms: int = field(init=False, repr=False, compare=False, default=0)
    panel_ms: int = field(init=False, repr=False, compare=False, default=0)
    #: the hour windows the hot path asks for at every reading or decision, as ``ms(hours)``
    #: (whole milliseconds), so that no call converts them again
    baseline_vitals_ms: int = field(init=False, repr=False, compare=False, default=0)
    baseline_labs_ms: int = field(init=False, repr=False, compare=False, default=0)
    baseline_max_age_ms: int = field(init=False, repr=False, compare=False, default=0)
    run_retention_ms: int = field(init=False, repr=False, compare=False, default=0)
    transfusion_window_ms: int = field(init=False, repr=False, compare=False, default=0)
    hct_spike_window_ms: int = field(init=False, repr=False, compare=False, default=0)
    hct_spike_wait_ms: int = field(init=False, repr=False, compare=False, default=0)
    triad_window_ms: int = field(init=False, repr=False, compare=False, default=0)
    future_tolerance_ms: int = field(init=False, repr=False, compare=False, default=0)
    stay_gap_ms: int = field(init=False, repr=False, compare=False, default=0)
    albumin_infusion_window_ms: int = field(init=False, repr=False, compare=False, default=0)
    pressor_open_ms: int = field(init=False, repr=False, compare=False, default=0)
    pressor_weaning_ms: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        if self.bp_slot_min <= 0:
            raise ThresholdsError("bp_slot_min must be positive")
        derived = {
            "bp_slot_ms": int(self.bp_slot_min * MIN_MS),
            "bp_horizon_slots": int(self.bp_late_horizon_min * MIN_MS)
            // int(self.bp_slot_min * MIN_MS),
            "bp_gap_ms": int(self.hypotension_gap_min * MIN_MS),
            "panel_ms": int(self.panel_min * MIN_MS),
        }
        for name in ("baseline_vitals", "baseline_labs", "baseline_max_age", "run_retention",
                     "transfusion_window", "hct_spike_window", "hct_spike_wait", "triad_window",
                     "future_tolerance", "stay_gap", "albumin_infusion_window", "pressor_open",
                     "pressor_weaning"):
            derived[f"{name}_ms"] = self.ms(getattr(self, f"{name}_h"))
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @staticmethod
    def ms(hours: float) -> int:
        """Hours as milliseconds (thresholds are in clinical units; state times in ms)."""
        return int(hours * HOUR_MS)

    def hct_high_pct(self, sex: str | None) -> float:
        """The sex-specific hemoconcentration cut-off (conservative 45 % when sex is unknown)."""
        if sex == "M":
            return self.hct_high_male_pct
        if sex == "F":
            return self.hct_high_female_pct
        return self.hct_high_unknown_sex_pct


DEFAULT_THRESHOLDS = Thresholds()


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
