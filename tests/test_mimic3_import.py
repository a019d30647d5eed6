"""`clsmon import mimic3` on the shared MIMIC-III demo: the facts a reader of the raw tables can
check (row counts, a known patient's first Hct, known transfusions, admission boundaries), and a
replay of the result."""

from __future__ import annotations

import pandas as pd
import pytest
from realdata import need

from streams.cli import main
from streams.offline import replay as rp


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    demo = need("mimic3-demo")
    out = tmp_path_factory.mktemp("mimic3")
    assert main(["import", "mimic3", str(demo), "--out", str(out), "--quiet"]) == 0
    read = {name: pd.read_csv(out / f"{name}.csv", dtype=str, keep_default_na=False)
            for name in ("observations", "patients", "interventions")}
    return out, read


def test_rows_by_kind(imported):
    _, f = imported
    assert f["observations"]["kind"].value_counts().to_dict() == {
        "sbp": 15_897, "dbp": 15_907, "map": 15_872, "heart_rate": 15_484, "spo2": 15_296,
        "temperature": 4_668, "weight": 355, "hematocrit": 1_921, "hemoglobin": 1_666,
        "leukocytes": 1_545, "lactate": 543, "albumin": 299, "urine_output": 9_041}
    assert f["interventions"]["kind"].value_counts().to_dict() == {
        "crystalloid": 7_912, "vasopressor": 1_119, "diuretic": 186, "red_cells": 166,
        "plasma": 149, "albumin": 76, "platelets": 70, "inotrope": 40}
    assert len(f["patients"]) == 129 and f["observations"]["patient_id"].nunique() == 100
    assert set(f["interventions"]["mode"]) == {"bolus", "infusion", "unknown"}


def test_a_known_patients_first_hct_and_when_it_was_available(imported):
    _, f = imported
    obs = f["observations"]
    hct = obs[(obs["patient_id"] == "10045") & (obs["kind"] == "hematocrit")]
    first = hct.sort_values("observed_at").iloc[0]
    assert (first["observed_at"], float(first["value"]), first["source"], first["id"]) == (
        "2129-11-23T18:59:00Z", 31.0, "mimic3:labevents:51221", "mimic3-le-6259151")
    high = hct[hct["observed_at"] == "2129-11-25T02:53:00Z"].iloc[0]
    assert float(high["value"]) == 38.5
    assert (high["available_at"], high["available_basis"]) == ("2129-11-25T03:46:00Z",
                                                               "chart_copy_storetime")
    # labs come from LABEVENTS only: no chart copy of a lab is written
    assert not obs["source"].str.startswith("mimic3:chartevents:813").any()


def test_known_transfusions_and_a_vasopressor_period(imported):
    _, f = imported
    iv = f["interventions"]
    first = iv[iv["id"] == "mimic3-cv-6272540"].iloc[0]
    assert (first["patient_id"], first["encounter_id"], first["kind"], float(first["amount"]),
            first["started_at"], first["ended_at"], first["mode"]) == (
        "10059", "122098", "red_cells", 375.0, "2150-08-25T00:30:00Z", "", "unknown")
    big = iv[iv["id"] == "mimic3-mv-261337"].iloc[0]
    assert (big["patient_id"], float(big["amount"]), big["started_at"], big["ended_at"],
            float(big["rate"]), big["available_at"]) == (
        "42281", 1994.0, "2119-11-10T12:45:00Z", "2119-11-10T13:45:00Z", 1994.0,
        "2119-11-10T16:03:00Z")
    phenyl = iv[(iv["patient_id"] == "10126") & (iv["agent"] == "phenylephrine")]
    held = phenyl[phenyl["started_at"] == "2171-08-05T02:25:00Z"].iloc[0]
    assert (float(held["rate"]), held["rate_unit"], held["ended_at"]) == (
        4.0, "mcg/kg/min", "2171-08-05T10:50:00Z")
    assert float(phenyl.sort_values("started_at").iloc[0]["rate"]) == 1.0


def test_admission_boundaries_and_birth_years(imported):
    _, f = imported
    p = f["patients"]
    stays = p[p["patient_id"] == "10059"].set_index("encounter_id")
    assert stays.loc["142582", ["admit", "discharge"]].tolist() == [
        "2150-08-07T21:00:00Z", "2150-08-13T11:33:00Z"]
    assert stays.loc["122098", ["admit", "discharge"]].tolist() == [
        "2150-08-22T14:15:00Z", "2150-08-29T18:20:00Z"]
    assert set(stays["sex"]) == {"M"} and set(stays["birth_year"]) == {"2081"}
    assert (p["patient_id"] == "41976").sum() == 15
    over = p[p["age_over_89"] == "1"]
    assert len(over) == 9 and (over["birth_year"] == "").all() and (over["sex"] != "").all()


def test_bladder_irrigation_and_or_urine_are_left_out_with_a_reason(tmp_path, capsys):
    demo = need("mimic3-demo")
    assert main(["import", "mimic3", str(demo), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "227489 GU Irrigant/Urine Volume Out" in printed and "bladder irrigation" in printed
    assert "40061 OR Out OR Urine" in printed and "period unknown" in printed
    sources = pd.read_csv(tmp_path / "observations.csv", usecols=["source"])["source"]
    assert not sources.str.contains("227489|227488|40061").any()


def test_the_import_replays_with_its_stays_and_interventions(imported):
    out, f = imported
    result = rp.replay_chunks(rp.iter_observations(out / "observations.csv", chunk_rows=20_000),
                              rp.read_contexts(out / "patients.csv"),
                              interventions=rp.read_interventions(out / "interventions.csv"))
    reasons = result.rejects_by_reason()
    assert set(reasons) <= {"bad_time", "out_of_range", "inconsistent", "artefact_jump"}
    assert len(result.patients) == 100
    # every time parses (2100-2210); the only bad times are readings days away from the rest of
    # the patient's series (the engine's plausibility check), a handful at most
    bad_times = [r for r in result.rejects if r["reason"] == "bad_time"]
    assert all("the patient's latest reading" in r["detail"] for r in bad_times)
    assert len(bad_times) < 10
    assert result.contexts == 2 * 129
    assert result.interventions + result.intervention_duplicates > 9_000
    assert any(a.phase == "leak" for a in result.alerts)


def test_a_missing_directory_is_a_one_line_error(tmp_path, capsys):
    assert main(["import", "mimic3", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not a directory" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert main(["import", "mimic3", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "missing table" in capsys.readouterr().err
