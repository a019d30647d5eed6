"""Synthetic ICU patients: CLS episodes and the confounders that must not alert.

Deterministic for a seed (no clock, no I/O), so tests, the demo, the benchmark and the evaluation
all draw the same cohort. Each patient follows a piecewise-linear trajectory per kind with noise;
vitals are sampled every few minutes, labs (a panel of Hct, Hb, albumin and WBC) are drawn every
few hours and REPORTED one to three hours later (the output is in arrival order, as a lab system
publishes), weights are taken twice a day, urine is charted hourly. Labs, weights and urine draw
their noise from their own random streams, so the same cohort with vitals charted at another
rate (``vitals_every_min=60``: hourly charting) has the same labs. Ground truth is the phase
intervals of each patient.

Profiles (numbers from docs/clinical-criteria.md):
- ``stable``: nothing happens.
- ``scls``: baseline, prodrome (weight +4-6 %), leak (SBP 70-85, Hct 55-65 %, albumin 2.0-2.6,
  WBC 15-25, urine 0.2-0.4 mL/kg/h) for 24-36 h (Wu 2019), recovery with polyuria and falling Hct.
- ``scls_relapse``: the same with a second leak during recovery.
- ``septic_shock``: hypotension with WBC up and hemodilution from fluids (Hct falls), weight up.
- ``dehydration``: hypotension and Hct up but albumin concentrated and weight falling.
- ``diuretic``: polyuria with normal blood pressure and no preceding leak.
- ``artefact``: stable, with line-flush zeros, single low spikes and one bad weighing.
- secondary CLS: ``sepsis_cls`` (no prodrome, WBC very high, Hct 48-54 %), ``gemcitabine_cls``
  (slow oedematous prodrome, milder shock, Hct 46-50 %), ``engraftment_cls`` (post-transplant
  anaemia: Hct rises 20-30 % from a 26-30 % baseline, below every absolute cut-off, so only the
  relative criterion can see it).

``missing`` drops that share of vitals at random and opens monitor gaps (30-120 min) now and then;
``labs_missing`` skips that share of lab draws: real charts have holes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detectors.observation import format_time

HOUR_MS = 3_600_000
MIN_MS = 60_000
PROFILES = ("stable", "scls", "scls_relapse", "septic_shock", "dehydration", "diuretic",
            "artefact", "sepsis_cls", "gemcitabine_cls", "engraftment_cls")
#: [D] per-bed vital-sign intervals in minutes when varied: continuous monitors every 2-5 min,
#: non-invasive cuffs every 15 min
VARIED_SAMPLING_MIN = (2.0, 5.0, 5.0, 15.0)
#: profiles with a capillary-leak episode (ground truth has a leak interval)
CLS_PROFILES = ("scls", "scls_relapse", "sepsis_cls", "gemcitabine_cls", "engraftment_cls")


@dataclass
class Patient:
    patient_id: str
    profile: str
    sex: str | None
    weight_kg: float
    observations: list[dict[str, Any]] = field(default_factory=list)  # arrival order
    truth: list[dict[str, Any]] = field(default_factory=list)  # phase intervals

    def context(self) -> dict[str, Any]:
        return {"patient_id": self.patient_id, "event": "admit", "sex": self.sex,
                "weight_kg": self.weight_kg, "birth_year": None, "history": []}


class _Track:
    """Piecewise-linear target values over hours since admission."""

    def __init__(self, start: float) -> None:
        self.points: list[tuple[float, float]] = [(0.0, start)]

    def to(self, hour: float, value: float) -> _Track:
        self.points.append((hour, value))
        return self

    def hold(self, hour: float) -> _Track:
        return self.to(hour, self.points[-1][1])

    def at(self, hour: float) -> float:
        pts = self.points
        if hour <= pts[0][0]:
            return pts[0][1]
        for (h0, v0), (h1, v1) in zip(pts, pts[1:], strict=False):
            if hour <= h1:
                return v0 if h1 == h0 else v0 + (v1 - v0) * (hour - h0) / (h1 - h0)
        return pts[-1][1]


def _plan(profile: str, rng: random.Random, weight: float, hours: float
          ) -> tuple[dict[str, _Track], list[tuple[str, float, float]]]:
    sbp = _Track(rng.uniform(110, 135))
    mapp = _Track(rng.uniform(78, 92))
    hct = _Track(rng.uniform(36, 42))
    alb = _Track(rng.uniform(3.6, 4.2))
    wbc = _Track(rng.uniform(5, 9))
    wt = _Track(weight)
    uo = _Track(rng.uniform(0.8, 1.4))  # mL/kg/h
    hr = _Track(rng.uniform(65, 90))
    truth: list[tuple[str, float, float]] = []
    tracks = {"sbp": sbp, "map": mapp, "hematocrit": hct, "albumin": alb, "leukocytes": wbc,
              "weight": wt, "urine": uo, "heart_rate": hr}
    if profile in ("scls", "scls_relapse"):
        p0 = rng.uniform(20, 40)  # prodrome starts
        l0 = p0 + rng.uniform(24, 40)  # leak starts
        l1 = l0 + rng.uniform(24, 36)  # leak ends (Wu 2019: 24-36 h)
        r1 = min(hours, l1 + rng.uniform(60, 90))
        gain = weight * rng.uniform(0.04, 0.06)
        peak_hct = rng.uniform(55, 65)
        for tr in (sbp, mapp, hct, alb, wbc, uo, hr):
            tr.hold(p0)
        wt.hold(p0).to(l0, weight + gain).to(l1, weight + gain * 1.6).to(r1, weight + gain)
        hct.to(l0, hct.at(p0) + 2).to(l0 + 3, peak_hct).hold(l1).to(l1 + 30, hct.at(0) + 1)
        sbp.hold(l0).to(l0 + 1, rng.uniform(70, 84)).hold(l1).to(l1 + 2, rng.uniform(110, 125))
        mapp.hold(l0).to(l0 + 1, rng.uniform(48, 60)).hold(l1).to(l1 + 2, rng.uniform(78, 88))
        alb.hold(l0).to(l0 + 6, rng.uniform(2.0, 2.6)).hold(l1).to(r1, 3.2)
        wbc.hold(l0).to(l0 + 4, rng.uniform(15, 25)).hold(l1).to(l1 + 24, 9)
        uo.to(p0 + 12, 0.6).to(l0, 0.5).to(l0 + 2, rng.uniform(0.2, 0.4)).hold(l1)
        uo.to(l1 + 4, rng.uniform(2.6, 4.0)).hold(l1 + 40).to(l1 + 52, 1.2)
        hr.hold(l0).to(l0 + 1, 125).hold(l1).to(l1 + 4, 90)
        truth = [("prodromal", p0, l0), ("leak", l0, l1), ("recovery", l1, r1)]
        if profile == "scls_relapse":
            x0 = l1 + 30  # relapse in recovery
            x1 = x0 + 20
            sbp.points = [p for p in sbp.points if p[0] < x0 - 1]
            sbp.to(x0 - 1, 118).to(x0, 76).hold(x1).to(x1 + 2, 118)
            mapp.points = [p for p in mapp.points if p[0] < x0 - 1]
            mapp.to(x0 - 1, 84).to(x0, 54).hold(x1).to(x1 + 2, 84)
            hct.points = [p for p in hct.points if p[0] < x0 - 1]
            hct.to(x0 - 1, 46).to(x0 + 2, 58).hold(x1).to(x1 + 24, 42)
            uo.points = [p for p in uo.points if p[0] < x0 - 1]
            uo.to(x0 - 1, 3.0).to(x0 + 1, 0.3).hold(x1).to(x1 + 4, 3.2).hold(x1 + 30)
            truth = [("prodromal", p0, l0), ("leak", l0, l1), ("recovery", l1, x0),
                     ("leak", x0, x1), ("recovery", x1, min(hours, x1 + 60))]
    elif profile in ("sepsis_cls", "gemcitabine_cls", "engraftment_cls"):
        truth = _secondary_cls(profile, rng, tracks, weight, hours)
    elif profile == "septic_shock":
        s0 = rng.uniform(12, 36)
        s1 = s0 + rng.uniform(18, 30)
        for tr in (sbp, mapp, hct, wbc, wt, alb):
            tr.hold(s0)
        sbp.to(s0 + 1, rng.uniform(72, 85)).hold(s1).to(s1 + 3, 110)
        mapp.to(s0 + 1, rng.uniform(50, 60)).hold(s1).to(s1 + 3, 78)
        hct.to(s0 + 12, hct.at(0) - 6)  # hemodilution from resuscitation fluids
        wbc.to(s0 + 6, rng.uniform(18, 26)).hold(s1).to(s1 + 24, 10)
        alb.to(s0 + 12, 2.8)
        wt.to(s0 + 12, weight * 1.06).hold(s1 + 24)
    elif profile == "dehydration":
        d0 = rng.uniform(8, 30)
        for tr in (sbp, mapp, hct, alb, wt, uo):
            tr.hold(d0)
        wt.to(d0 + 12, weight * 0.95)
        hct.to(d0 + 4, rng.uniform(51, 55)).hold(d0 + 24).to(d0 + 36, hct.at(0))
        alb.to(d0 + 4, rng.uniform(4.7, 5.1)).hold(d0 + 24).to(d0 + 36, alb.at(0))
        sbp.to(d0 + 2, rng.uniform(80, 88)).hold(d0 + 20).to(d0 + 24, 115)
        mapp.to(d0 + 2, rng.uniform(58, 63)).hold(d0 + 20).to(d0 + 24, 82)
        uo.to(d0 + 2, 0.3).hold(d0 + 20).to(d0 + 24, 1.0)
    elif profile == "diuretic":
        d0 = rng.uniform(8, 30)
        uo.hold(d0).to(d0 + 1, rng.uniform(3.0, 4.5)).hold(d0 + 14).to(d0 + 16, 1.0)
        wt.hold(d0).to(d0 + 16, weight * 0.97)
    return tracks, truth


def _secondary_cls(profile: str, rng: random.Random, tr: dict[str, _Track], weight: float,
                   hours: float) -> list[tuple[str, float, float]]:
    """Secondary capillary leak: the same three phases with etiology-specific severity."""
    sbp, mapp, hct, alb, wbc, wt, uo, hr = (tr[k] for k in ("sbp", "map", "hematocrit", "albumin",
                                                          "leukocytes", "weight", "urine",
                                                          "heart_rate"))
    truth: list[tuple[str, float, float]] = []
    if profile == "engraftment_cls":
        hct.points = [(0.0, rng.uniform(26, 30))]
    base_hct = hct.at(0)
    if profile == "sepsis_cls":
        p0 = None
        l0 = rng.uniform(12, 40)
        peak = rng.uniform(48, 54)
        nadir_sbp, nadir_map = rng.uniform(72, 86), rng.uniform(50, 60)
        alb_low, wbc_peak, gain = rng.uniform(2.2, 2.7), rng.uniform(18, 30), 0.05
    elif profile == "gemcitabine_cls":
        p0 = rng.uniform(16, 30)
        l0 = p0 + rng.uniform(36, 48)
        peak = rng.uniform(46, 50)
        nadir_sbp, nadir_map = rng.uniform(80, 87), rng.uniform(56, 62)
        alb_low, wbc_peak, gain = rng.uniform(2.0, 2.5), rng.uniform(8, 13), 0.06
    else:  # engraftment
        p0 = rng.uniform(16, 30)
        l0 = p0 + rng.uniform(24, 36)
        peak = base_hct * rng.uniform(1.22, 1.32)
        nadir_sbp, nadir_map = rng.uniform(75, 88), rng.uniform(52, 62)
        alb_low, wbc_peak, gain = rng.uniform(2.3, 2.8), rng.uniform(2, 6), 0.045
    l1 = l0 + rng.uniform(18, 36)
    r1 = min(hours, l1 + rng.uniform(48, 80))
    start = p0 if p0 is not None else l0
    for track in (sbp, mapp, hct, alb, wbc, uo, hr, wt):
        track.hold(start)
    if p0 is not None:
        wt.to(l0, weight * (1 + gain))
        truth.append(("prodromal", p0, l0))
    wt.to(l1, weight * (1 + gain * 1.5)).to(r1, weight * (1 + gain))
    hct.hold(l0).to(l0 + 3, peak).hold(l1).to(l1 + 30, base_hct + 0.5)
    sbp.hold(l0).to(l0 + 1, nadir_sbp).hold(l1).to(l1 + 3, rng.uniform(108, 122))
    mapp.hold(l0).to(l0 + 1, nadir_map).hold(l1).to(l1 + 3, rng.uniform(76, 86))
    alb.hold(l0).to(l0 + 8, alb_low).hold(l1).to(r1, 3.1)
    wbc.hold(l0).to(l0 + 6, wbc_peak).hold(l1).to(l1 + 24, wbc.at(0))
    uo.hold(l0).to(l0 + 2, rng.uniform(0.2, 0.45)).hold(l1)
    uo.to(l1 + 4, rng.uniform(2.4, 3.6)).hold(l1 + 36).to(l1 + 48, 1.1)
    hr.hold(l0).to(l0 + 1, rng.uniform(110, 135)).hold(l1).to(l1 + 4, 88)
    truth += [("leak", l0, l1), ("recovery", l1, r1)]
    return truth


def make_patient(patient_id: str, profile: str, seed: int, start_ms: int, hours: float = 168.0,
                 vitals_every_min: float = 5.0, labs_every_h: float = 6.0,
                 alt_units: bool = False, sex: str | None = "?", missing: float = 0.0,
                 labs_missing: float = 0.0) -> Patient:
    """One synthetic patient; ``alt_units`` sends kPa, lb, L/L, g/L, /uL (UCUM) instead."""
    rng = random.Random(seed)
    holes = random.Random(seed ^ 0x5EED)  # missing data drawn apart: the course stays the same
    gap_until = 0
    if sex == "?":
        sex = rng.choice(("F", "M", None))
    weight = round(rng.uniform(50, 100), 1)
    tracks, truth = _plan(profile, rng, weight, hours)
    patient = Patient(patient_id, profile, sex, weight)
    arrivals: list[tuple[int, int, dict[str, Any]]] = []
    seq = 0

    def emit(kind: str, value: float, t_ms: int, unit: str, arrive_ms: int,
             **extra: Any) -> None:
        nonlocal seq
        seq += 1
        obs = {"patient_id": patient_id, "kind": kind, "value": round(value, 3),
               "unit": unit, "observed_at": format_time(t_ms), "source": "sim"}
        obs.update(extra)
        arrivals.append((arrive_ms, seq, obs))

    step_ms = int(vitals_every_min * MIN_MS)
    t = start_ms
    end = start_ms + int(hours * HOUR_MS)
    while t < end:
        h = (t - start_ms) / HOUR_MS
        if missing and t >= gap_until and holes.random() < missing / 50:
            gap_until = t + int(holes.uniform(30, 120) * MIN_MS)  # monitor off the patient
        skip = missing > 0 and (t < gap_until or holes.random() < missing)
        sbp = tracks["sbp"].at(h) + rng.gauss(0, 4)
        mapp = tracks["map"].at(h) + rng.gauss(0, 3)
        if profile == "artefact" and rng.random() < 0.01:
            sbp = 0.0  # line flush: must be rejected, never read as shock
        if profile == "artefact" and rng.random() < 0.01:
            sbp = 62.0  # a single spike: must not raise hypotension
        heart_rate = tracks["heart_rate"].at(h) + rng.gauss(0, 3)
        if skip:
            t += step_ms
            continue
        if alt_units:
            emit("sbp", sbp / 7.500617, t, "kPa", t)
            emit("map", mapp / 7.500617, t, "kPa", t)
        else:
            emit("sbp", sbp, t, "mm[Hg]", t)
            emit("map", mapp, t, "mmHg", t)
        emit("heart_rate", heart_rate, t, "/min", t)
        t += step_ms
    lab_ms = int(labs_every_h * HOUR_MS)
    lab_rng = random.Random(seed ^ 0x1AB5)  # the labs do not depend on the vitals sampled
    lab_holes = random.Random(seed ^ 0x0DE1)
    t = start_ms + int(lab_rng.uniform(0, 2) * HOUR_MS)
    while t < end:
        h = (t - start_ms) / HOUR_MS
        delay = int(lab_rng.uniform(1, 3) * HOUR_MS)
        hct = tracks["hematocrit"].at(h) + lab_rng.gauss(0, 0.7)
        hb = tracks["hematocrit"].at(h) / 3.0 + lab_rng.gauss(0, 0.25)  # Hct ~ 3 x Hb
        alb = tracks["albumin"].at(h) + lab_rng.gauss(0, 0.08)
        wbc = max(0.5, tracks["leukocytes"].at(h) + lab_rng.gauss(0, 0.6))
        if labs_missing and lab_holes.random() < labs_missing:
            t += lab_ms
            continue
        if alt_units:
            emit("hematocrit", hct / 100, t, "L/L", t + delay)
            emit("hemoglobin", hb * 10, t, "g/L", t + delay)
            emit("albumin", alb * 10, t, "g/L", t + delay)
            emit("leukocytes", wbc * 1000, t, "/uL", t + delay)
        else:
            emit("hematocrit", hct, t, "%", t + delay)
            emit("hemoglobin", hb, t, "g/dL", t + delay)
            emit("albumin", alb, t, "g/dL", t + delay)
            emit("leukocytes", wbc, t, "10*9/L", t + delay)
        t += lab_ms
    rng = random.Random(seed ^ 0x3E16)  # weights and urine: their own stream too
    t = start_ms + 2 * HOUR_MS
    bad_weighing_done = False
    while t < end:
        h = (t - start_ms) / HOUR_MS
        kg = tracks["weight"].at(h) + rng.gauss(0, 0.2)
        if profile == "artefact" and not bad_weighing_done and h > 30:
            kg += 4.0  # one weighing with a pump on the bed
            bad_weighing_done = True
        if alt_units:
            emit("weight", kg / 0.45359237, t, "[lb_av]", t)
        else:
            emit("weight", kg, t, "kg", t)
        t += 12 * HOUR_MS
    t = start_ms + HOUR_MS
    while t < end:
        h = (t - start_ms) / HOUR_MS
        ml = max(0.0, tracks["urine"].at(h) * weight + rng.gauss(0, 3))
        emit("urine_output", ml, t, "mL", t, period_min=60)
        t += HOUR_MS
    arrivals.sort(key=lambda a: (a[0], a[1]))
    patient.observations = [a[2] for a in arrivals]
    if not truth:  # no CLS course: one "none" interval, so the profile is on record
        truth = [("none", 0.0, hours)]
    patient.truth = [{"patient_id": patient_id, "phase": ph,
                      "start": format_time(start_ms + int(a * HOUR_MS)),
                      "end": format_time(start_ms + int(min(b, hours) * HOUR_MS))}
                     for ph, a, b in truth]
    return patient


def cohort(n: int, seed: int = 7, start_ms: int = 1_790_000_000_000, hours: float = 168.0,
           mix: dict[str, float] | None = None, **kwargs: Any) -> list[Patient]:
    """``n`` patients with profiles drawn from ``mix`` (default: a third CLS, rest confounders
    and stable); patient ids are ``sim-0001`` ... ``vitals_every_min=0`` gives each patient
    its own sampling interval from VARIED_SAMPLING_MIN (monitors and cuffs differ by bed)."""
    mix = mix or {"stable": 0.3, "scls": 0.2, "scls_relapse": 0.05, "septic_shock": 0.15,
                  "dehydration": 0.1, "diuretic": 0.1, "artefact": 0.1}
    rng = random.Random(seed)
    names = list(mix)
    weights = [mix[k] for k in names]
    varied = kwargs.get("vitals_every_min") == 0
    sampling = random.Random(seed ^ 0x5A5A)
    patients = []
    for i in range(n):
        profile = rng.choices(names, weights)[0]
        if varied:
            kwargs["vitals_every_min"] = sampling.choice(VARIED_SAMPLING_MIN)
        patients.append(make_patient(f"sim-{i + 1:04d}", profile, seed * 100_003 + i, start_ms,
                                     hours, **kwargs))
    return patients


def simulate_to_file(to: str, patients: list[Patient]) -> int:
    """``clsmon simulate --to FILE``: observations to ``FILE`` (CSV or Parquet), context to
    ``FILE.patients.csv``, ground truth to ``FILE.truth.csv``; returns the exit code (0)."""
    import pandas as pd

    out = Path(to)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [o for p in patients for o in p.observations]
    frame = pd.DataFrame(rows, columns=["patient_id", "observed_at", "kind", "value", "unit",
                                        "source", "period_min"])
    if out.suffix.lower() in (".parquet", ".pq"):
        frame.to_parquet(out, index=False)
    else:
        frame.to_csv(out, index=False)
    stem = out.with_suffix("")
    contexts = pd.DataFrame([p.context() for p in patients])[
        ["patient_id", "sex", "weight_kg", "birth_year"]]
    contexts.to_csv(f"{stem}.patients.csv", index=False)
    truth = pd.DataFrame([t | {"profile": p.profile} for p in patients for t in p.truth],
                         columns=["patient_id", "phase", "start", "end", "profile"])
    truth.to_csv(f"{stem}.truth.csv", index=False)
    print(f"{len(patients)} patients, {len(frame)} observations -> {out}; "
          f"context -> {stem}.patients.csv; ground truth -> {stem}.truth.csv")
    return 0

