"""`clsmon evaluate` and the timeline plots: scores that can fail, files a person can open."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from streams.cli import main
from streams.offline import evaluate as ev_mod
from streams.offline.simulator import cohort

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sim_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    mix = {"scls": 0.3, "sepsis_cls": 0.2, "stable": 0.2, "septic_shock": 0.15, "diuretic": 0.15}
    assert main(["simulate", "--patients", "12", "--hours", "120", "--seed", "4",
                 "--to", str(d / "cohort.csv"), "--mix", json.dumps(mix)]) == 0
    return d


def test_evaluation_scores_a_simulated_cohort(sim_files, tmp_path):
    report = tmp_path / "report"
    assert main(["evaluate", str(sim_files / "cohort.csv"), "--truth",
                 str(sim_files / "cohort.truth.csv"), "--patients",
                 str(sim_files / "cohort.patients.csv"), "--report", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    s = metrics["summary"]
    assert s["patients"] == 12 and s["leak_episodes"] >= 2
    assert s["leak_sensitivity"] == 1.0
    assert s["non_cls_alerts_per_patient_day"] == 0.0
    assert 0.0 < s["ppv"] <= 1.0
    html = (report / "report.html").read_text()
    assert "leak episodes detected" in html and html.count("data:image/png;base64") == 3
    episodes = pd.read_csv(report / "episodes.csv")
    assert episodes["detected"].all()


def test_a_leak_without_an_alert_counts_as_missed(sim_files):
    obs = pd.read_csv(sim_files / "cohort.csv", dtype="string", keep_default_na=False)
    truth = ev_mod.read_truth(sim_files / "cohort.truth.csv")
    stable = truth[truth["profile"] == "stable"]["patient_id"].iloc[0]
    fake = truth[truth["patient_id"] == stable].iloc[[0]].assign(phase="leak")
    scored, _, _ = ev_mod.evaluate(obs, pd.concat([truth, fake]))
    missed = [e for e in scored.episodes if not e["detected"]]
    assert [e["patient_id"] for e in missed] == [stable]
    assert scored.summary["leak_sensitivity"] < 1.0


def test_alerts_on_a_patient_without_cls_are_false_alerts(sim_files):
    obs = pd.read_csv(sim_files / "cohort.csv", dtype="string", keep_default_na=False)
    truth = ev_mod.read_truth(sim_files / "cohort.truth.csv")
    cls_pid = truth[truth["phase"] == "leak"]["patient_id"].iloc[0]
    relabelled = truth[truth["patient_id"] != cls_pid]
    scored, _, _ = ev_mod.evaluate(obs, relabelled)
    assert scored.summary["ppv"] < 1.0
    assert all(not a["true_positive"] for a in scored.alerts if a["patient_id"] == cls_pid)


def test_replay_draws_one_timeline_per_alerted_patient(sim_files, tmp_path):
    plots = tmp_path / "plots"
    out = tmp_path / "alerts.jsonl"
    assert main(["replay", str(sim_files / "cohort.csv"), "--patients",
                 str(sim_files / "cohort.patients.csv"), "--out", str(out), "--plots",
                 str(plots), "--quiet"]) == 0
    alerted = {json.loads(line)["patient_id"] for line in out.read_text().splitlines()}
    pngs = sorted(plots.glob("*.png"))
    assert {p.stem for p in pngs} == alerted
    assert all(p.read_bytes()[:8] == PNG and p.stat().st_size > 20_000 for p in pngs)


def test_evaluate_reports_missing_truth_clearly(sim_files, tmp_path, capsys):
    assert main(["evaluate", str(sim_files / "cohort.csv"), "--truth",
                 str(tmp_path / "none.csv"), "--report", str(tmp_path / "r")]) == 2
    assert "truth file not found" in capsys.readouterr().err


def test_a_varied_cohort_samples_beds_at_different_rates():
    from detectors.observation import parse_time_ms

    patients = cohort(8, seed=1, hours=6, vitals_every_min=0)
    gaps = set()
    for p in patients:
        times = sorted({parse_time_ms(o["observed_at"]) for o in p.observations
                        if o["kind"] == "sbp"})
        gaps.add(round((times[1] - times[0]) / 60_000))
    assert len(gaps) >= 2 and gaps <= {2, 5, 15}
