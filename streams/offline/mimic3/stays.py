"""Admissions (one stay per HADM_ID, its window), patients (sex, admission weight, birth
year), the three output files and the summary."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from streams.offline.mimic3.charts import (
    chart_observations,
    drop_repeated_admission_weights,
    drop_same_time_duplicates,
    lab_availability,
    lab_observations,
    urine_observations,
)
from streams.offline.mimic3.inputs import cv_interventions, mv_interventions
from streams.offline.mimic3.mapping import (
    INTERVENTION_COLUMNS,
    KG_PER_LB,
    MAX_REAL_AGE,
    OBS_COLUMNS,
    PATIENT_COLUMNS,
    Items,
    Mimic3Error,
    Tally,
    iso_z,
    parse_times,
    read_table,
)

# --- admissions ----------------------------------------------------------------------------------

def admission_windows(directory: Path, tagged: Iterable[pd.DataFrame], tally: Tally
                      ) -> pd.DataFrame:
    """One window per HADM_ID: from min(ADMITTIME, EDREGTIME, first row tagged with it) to
    max(DISCHTIME, last row tagged with it). ED labs are drawn before ADMITTIME."""
    adm = read_table(directory, "ADMISSIONS", dtype={"ADMITTIME": "string", "DISCHTIME":
                                                     "string", "EDREGTIME": "string"})
    tally.read["admissions"] += len(adm)
    adm = adm.assign(admittime=parse_times(adm["ADMITTIME"]),
                     dischtime=parse_times(adm["DISCHTIME"]),
                     edreg=parse_times(adm["EDREGTIME"]))
    times = pd.concat([t[["HADM_ID", "t"]] for t in tagged]).dropna()
    # a row stored after the discharge time still belongs to the stay: the discharge is
    # applied after the last row of the stay has ARRIVED (the replay's arrival order)
    arrived = pd.concat([t[["HADM_ID", "available"]].rename(columns={"available": "t"})
                         for t in tagged]).dropna()
    span = times.groupby("HADM_ID")["t"].agg(["min", "max"])
    last_arrival = arrived.groupby("HADM_ID")["t"].max()
    first = adm["HADM_ID"].map(span["min"])
    last = pd.concat([adm["HADM_ID"].map(span["max"]), adm["HADM_ID"].map(last_arrival)],
                     axis=1).max(axis=1)
    admit = pd.concat([adm["admittime"], adm["edreg"], first], axis=1).min(axis=1)
    discharge = pd.concat([adm["dischtime"], last], axis=1).max(axis=1)
    w = adm.assign(admit=admit, discharge=discharge).sort_values(["SUBJECT_ID", "admit"])
    overlap = w.groupby("SUBJECT_ID")["admit"].shift(-1) < w["discharge"]
    if overlap.any():
        tally.warnings.append(f"{int(overlap.sum())} admission windows overlap the next one")
    return w


def assign_encounters(obs: pd.DataFrame, windows: pd.DataFrame, tally: Tally, table: str
                      ) -> pd.DataFrame:
    """Rows without HADM_ID (outpatient labs) belong to the admission whose window holds them;
    the others are refused: a later admission is a new stay, and a baseline from months before
    is not this stay's baseline."""
    untagged = obs["HADM_ID"].isna()
    if not untagged.any():
        return obs
    cand = (obs[untagged].reset_index()[["index", "SUBJECT_ID", "t"]]
            .merge(windows[["SUBJECT_ID", "HADM_ID", "admit", "discharge"]], on="SUBJECT_ID"))
    cand = cand[(cand["t"] >= cand["admit"]) & (cand["t"] <= cand["discharge"])]
    cand = cand.drop_duplicates("index")
    obs = obs.copy()
    obs.loc[cand["index"].to_numpy(), "HADM_ID"] = cand["HADM_ID"].to_numpy()
    tally.fold(table, "no_hadm_id_assigned_by_time", len(cand))
    return tally.refuse(obs, obs["HADM_ID"].isna(), table, "outside_any_admission")


# --- patients ------------------------------------------------------------------------------------

def patient_rows(directory: Path, windows: pd.DataFrame, obs: pd.DataFrame, tally: Tally
                 ) -> pd.DataFrame:
    """One 'admit' row per admission. Birth year and age are left empty above 89 (MIMIC-III
    shifts those dates of birth ~300 years back; clsmon refuses birth years before 1880)."""
    pat = read_table(directory, "PATIENTS", dtype={"DOB": "string"})
    tally.read["patients"] += len(pat)
    w = windows.merge(pat[["SUBJECT_ID", "GENDER", "DOB"]], on="SUBJECT_ID", how="left")
    dob = parse_times(w["DOB"])
    age = (w["admittime"].dt.year - dob.dt.year
           - ((w["admittime"].dt.month < dob.dt.month) |
              ((w["admittime"].dt.month == dob.dt.month) &
               (w["admittime"].dt.day < dob.dt.day))).astype(int))
    over = age > MAX_REAL_AGE
    # admission weight: the first admission-weight item of the stay, else the first weighing
    wt = obs[obs["kind"] == "weight"].copy()
    wt["kg"] = np.where(wt["unit"] == "[lb_av]", wt["value"] * KG_PER_LB, wt["value"])
    wt["rank"] = np.where(wt["weight_role"] == "admission", 0, 1)
    first = (wt.sort_values(["HADM_ID", "rank", "t"]).drop_duplicates("HADM_ID")
             .set_index("HADM_ID"))
    return pd.DataFrame({
        "patient_id": w["SUBJECT_ID"].astype(str), "encounter_id": w["HADM_ID"].astype(str),
        "admit": iso_z(w["admit"]), "discharge": iso_z(w["discharge"]),
        "admittime": iso_z(w["admittime"]), "dischtime": iso_z(w["dischtime"]),
        "sex": w["GENDER"].fillna(""),
        "weight_kg": w["HADM_ID"].map(first["kg"]).round(1),
        "weight_source": w["HADM_ID"].map(first["source"]).fillna(""),
        "birth_year": dob.dt.year.where(~over).astype("Int64"),
        "age_over_89": over.astype(int), "age_at_admit": age.where(~over).astype("Int64"),
        "admission_type": w["ADMISSION_TYPE"].fillna(""),
        "died_in_hospital": w["HOSPITAL_EXPIRE_FLAG"].fillna(0).astype(int)})[PATIENT_COLUMNS]


# --- output --------------------------------------------------------------------------------------

def finish_observations(obs: pd.DataFrame) -> pd.DataFrame:
    obs = obs.sort_values(["available", "t", "SUBJECT_ID", "kind"], kind="stable")
    return pd.DataFrame({
        "patient_id": obs["SUBJECT_ID"].astype(str), "observed_at": iso_z(obs["t"]),
        "kind": obs["kind"], "value": obs["value"].round(3), "unit": obs["unit"],
        "source": obs["source"], "period_min": obs["period_min"].round(1), "id": obs["id"],
        "available_at": iso_z(obs["available"]), "available_basis": obs["available_basis"],
        "encounter_id": obs["HADM_ID"].astype("int64").astype(str), "censored": obs["censored"],
        "flag": obs["flag"]})[OBS_COLUMNS]


def finish_interventions(iv: pd.DataFrame) -> pd.DataFrame:
    iv = iv.sort_values(["SUBJECT_ID", "t", "kind"], kind="stable")
    return pd.DataFrame({
        "patient_id": iv["SUBJECT_ID"].astype(str),
        "encounter_id": iv["HADM_ID"].astype("int64").astype(str), "kind": iv["kind"],
        "agent": iv["agent"], "mode": iv["mode"], "started_at": iso_z(iv["t"]),
        "ended_at": iso_z(pd.to_datetime(iv["end"])), "amount": iv["amount"].round(3),
        "amount_unit": iv["amount_unit"], "rate": iv["rate"].round(4),
        "rate_unit": iv["rate_unit"], "source": iv["source"], "id": iv["id"],
        "available_at": iso_z(iv["available"]), "order_id": iv["order_id"].replace("<NA>", ""),
        "status": iv["status"], "weight_kg": iv["weight_kg"].round(1)})[INTERVENTION_COLUMNS]


def run(directory: Path, out: Path, items_path: Path, progress: bool = False) -> Tally:
    """Import a MIMIC-III directory into ``out`` (observations.csv, patients.csv,
    interventions.csv); returns the tally of every row read, written, folded and refused."""
    from detectors.observation import parse_time_ms

    if not directory.is_dir():
        raise Mimic3Error(f"not a directory: {directory}")
    started = time.perf_counter()
    tally = Tally()
    items = Items.load(items_path)
    items.check_against_dictionary(directory, tally)
    chart, copies = chart_observations(directory, items, tally, progress)
    labs = lab_availability(lab_observations(directory, items, tally), copies)
    urine = urine_observations(directory, items, tally)
    interventions = pd.concat([mv_interventions(directory, items, tally),
                               cv_interventions(directory, items, tally)], ignore_index=True)
    windows = admission_windows(directory, [chart, labs, urine, interventions], tally)
    labs = assign_encounters(labs, windows, tally, "labevents")
    obs = drop_same_time_duplicates(pd.concat([chart, labs, urine], ignore_index=True), tally)
    obs = drop_repeated_admission_weights(obs, tally)
    patients = patient_rows(directory, windows, obs, tally)
    out.mkdir(parents=True, exist_ok=True)
    observations = finish_observations(obs)
    observations.to_csv(out / "observations.csv", index=False)
    patients.to_csv(out / "patients.csv", index=False)
    iv = finish_interventions(interventions)
    iv.to_csv(out / "interventions.csv", index=False)
    for kind, n in observations["kind"].value_counts().items():
        tally.written[("observations", str(kind))] = int(n)
    for kind, n in iv["kind"].value_counts().items():
        tally.written[("interventions", str(kind))] = int(n)
    tally.written[("patients", "admissions")] = len(patients)
    if parse_time_ms("2200-01-01T00:00:00Z") is None:  # the engine's time bound (issue 15)
        late = int((observations["observed_at"] >= "2200").sum())
        if late:
            tally.warnings.append(f"{late:,} observations are dated 2200 or later: this "
                                  "version's time check refuses them (bad_time)")
    tally.warnings.append(f"done in {time.perf_counter() - started:.1f} s")
    return tally


def summary_lines(t: Tally, items: Items) -> Iterable[str]:
    """The import in numbers: rows read, left out (with the mapping's reason), written, folded
    into another row and refused, by reason."""
    yield "rows read:"
    for table, n in t.read.items():
        yield f"  {table:<16} {n:>9,}   not in the mapping {t.unmapped.get(table, 0):>9,}"
    yield f"  chart copies of labs (used for availability only): {t.lab_copies:,}"
    yield "left out by the mapping (rows, item, reason):"
    notes = {(r.table, r.itemid): (r.label, r.notes) for r in items.frame.itertuples()}
    for (table, itemid), n in t.left_out.most_common():
        label, why = notes.get((table, itemid), ("", ""))
        why = why.removeprefix("left out: ")
        yield f"  {n:>7,}  {table} {itemid} {label}: {why[:90]}"
    yield "written:"
    for (out, kind), n in sorted(t.written.items()):
        yield f"  {out:<14} {kind:<20} {n:>9,}"
    yield "folded (kept inside another written row, or informational):"
    for (table, reason), n in sorted(t.folded.items()):
        yield f"  {table:<16} {reason:<46} {n:>8,}"
    yield "refused:"
    for (table, reason), n in sorted(t.refused.items()):
        yield f"  {table:<16} {reason:<46} {n:>8,}"
    for w in t.warnings:
        yield f"note: {w}"
