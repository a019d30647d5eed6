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


def _alert(pid: str, phase: str, at_ms: int, severity: str = "high"):
    from detectors.alerts import make_alert

    return make_alert(pid, 1, phase, "none", severity, at_ms, [])


def test_review_windows_found_within_6_h_and_still_alerting_within_12_h():
    from detectors.config import HOUR_MS, MIN_MS
    from streams.offline.review import review_summary, review_time_ms, score_review

    around = review_time_ms("2129-11-25 02:53")
    assert around == review_time_ms("2129-11-25T02:53:00Z")
    review = pd.DataFrame([
        {"patient_id": "a", "phase": "leak", "around": "x", "around_ms": around,
         "verdict": "true", "reason": ""},
        {"patient_id": "b", "phase": "leak", "around": "x", "around_ms": around,
         "verdict": "true", "reason": ""},
        {"patient_id": "c", "phase": "leak", "around": "x", "around_ms": around,
         "verdict": "false", "reason": ""},
        {"patient_id": "d", "phase": "recovery", "around": "x", "around_ms": around,
         "verdict": "false", "reason": ""}])
    alerts = [_alert("a", "leak", around + 6 * HOUR_MS - MIN_MS),
              _alert("b", "leak", around - 6 * HOUR_MS - MIN_MS),
              _alert("c", "leak", around + 11 * HOUR_MS),
              _alert("d", "leak", around),  # another phase does not count
              _alert("d", "recovery", around - HOUR_MS, severity="info")]  # nor info
    rows = score_review(review, alerts)
    assert [r["alerting"] for r in rows] == [True, False, True, False]
    assert review_summary(rows) | {} == {
        "true_episodes": 2, "true_found": 1, "false_episodes": 2, "false_still_alerting": 1,
        "found_window_h": 6.0, "still_alerting_window_h": 12.0}


def test_evaluation_against_the_shared_review_counts_stays_not_years(tmp_path, capsys):
    from realdata import need

    from detectors.config import HOUR_MS
    from streams.offline.review import read_review, review_time_ms

    demo, review = need("mimic3-demo"), need("mimic3-demo-review.csv")
    data = tmp_path / "mimic3"
    assert main(["import", "mimic3", str(demo), "--out", str(data), "--quiet"]) == 0
    report = tmp_path / "report"
    assert main(["evaluate", str(data / "observations.csv"), "--patients",
                 str(data / "patients.csv"), "--interventions", str(data / "interventions.csv"),
                 "--review", str(review), "--report", str(report), "--plots"]) == 0
    printed = capsys.readouterr().out
    assert "true episodes found" in printed and "0.0 %" not in printed
    s = json.loads((report / "metrics.json").read_text())["summary"]
    reviewed = read_review(review)
    assert (s["review"]["true_episodes"], s["review"]["false_episodes"]) == (
        int((reviewed["verdict"] == "true").sum()), int((reviewed["verdict"] == "false").sum()))
    # an independent count of the same windows from the replay's alerts
    out = tmp_path / "alerts.jsonl"
    assert main(["replay", str(data / "observations.csv"), "--patients",
                 str(data / "patients.csv"), "--interventions", str(data / "interventions.csv"),
                 "--out", str(out), "--quiet"]) == 0
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    found = still = 0
    for r in reviewed.itertuples():
        window = (6 if r.verdict == "true" else 12) * HOUR_MS
        hit = any(a["patient_id"] == r.patient_id and a["phase"] == r.phase
                  and a["severity"] != "info"
                  and abs(review_time_ms(a["raised_at"]) - r.around_ms) <= window
                  for a in alerts)
        found += hit and r.verdict == "true"
        still += hit and r.verdict == "false"
    assert (s["review"]["true_found"], s["review"]["false_still_alerting"]) == (found, still)
    # stay-days: the sum of the admissions of the patients with data, not years of calendar
    stays = pd.read_csv(data / "patients.csv", dtype=str, keep_default_na=False)
    stays = stays[stays["admit"] < "2500"]  # every stay: the time check accepts 1800-2499
    days = sum((pd.Timestamp(r.discharge) - pd.Timestamp(r.admit)).total_seconds() / 86400
               for r in stays.itertuples())
    assert s["patient_days"] == pytest.approx(days, abs=30)
    assert s["patient_days"] < 2000 and s["patients"] == 100
    assert s["alerts_per_patient_day"] == pytest.approx(s["alerts"] / s["patient_days"],
                                                        rel=0.01)
    html = (report / "report.html").read_text()
    assert "Against the clinician's review" in html and 'href="timelines/' in html
    assert {p.stem for p in (report / "timelines").glob("*.png")} >= set(
        reviewed["patient_id"])
