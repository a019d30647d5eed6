"""How well do the detectors work? Alerts from a replay scored against ground truth.

The figures are the ones docs/clinical-criteria.md asks for ("What good looks like"): sensitivity
per episode and per phase, lead time, alerts per patient-day and PPV, not only AUROC, plus false
alerts by confounder so a reader sees WHICH patients the detector bothers clinicians about.

Definitions (stated in the report):
- a leak episode is *detected* when a leak alert is raised between 2 h before its true start
  (labs drawn just before the true onset) and its true end;
- *leak delay* is raised_at minus the time the criteria became measurable: the first Hct draw
  inside the true leak that meets the hemoconcentration criterion, and at least 10 minutes of
  hypotension (the persistence rule), whichever is later; raised_at is event time, so the wait
  for the lab result itself (1-3 h in the simulator) comes on top at the bedside; the delay
  from the true onset is reported too (it includes the wait for the next draw);
- a prodrome is detected when a prodromal alert falls inside the true prodrome or between it and
  the leak; *lead time* is true leak start minus the prodromal alert;
- recovery is detected when a recovery alert falls inside the true recovery interval;
- an alert is a *true positive* when it lies within a patient's true CLS course (prodrome start
  - 6 h to recovery end + 24 h); PPV = true positive alerts / all alerts. Only alerts of severity
  warning and above count (info = an episode closed);
- alerts per patient-day on non-CLS patients = their alerts / their days of data;
- days of data are stay-days: the sum of a patient's stays (context ``admit``/``discharge``),
  else first to last accepted observation; patients with no accepted observation do not count;
- a prodrome belongs to the next leak only if it ends after the previous leak (a relapse
  without its own prodrome has no prodrome to detect); a leak alert raised before the criteria
  were measurable on the truth's clock (the 2-h tolerance) counts as a delay of 0 h and is
  flagged ``early`` in episodes.csv;
- with ``--review``: see ``streams/offline/review.py`` (found within 6 h, still alerting within
  12 h of a reviewed episode).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detectors.config import DEFAULT_THRESHOLDS, HOUR_MS, MIN_MS, Thresholds
from detectors.criteria import hemoconcentration
from detectors.observation import parse_time_ms
from streams.offline import replay as rp
from streams.offline.review import read_review, review_summary, score_review, stay_days

DETECT_BEFORE_MS = 2 * HOUR_MS
COURSE_BEFORE_MS = 6 * HOUR_MS
COURSE_AFTER_MS = 24 * HOUR_MS
COUNTED_SEVERITIES = ("warning", "high", "critical")
TARGETS = {"leak_sensitivity": 0.95, "median_leak_delay_h": 1.0,
           "non_cls_alerts_per_patient_day": 0.05}


@dataclass
class Evaluation:
    patients: int = 0
    patient_days: float = 0.0
    episodes: list[dict[str, Any]] = field(default_factory=list)  # one row per true leak
    phases: dict[str, dict[str, float | None]] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)  # one row per counted alert
    by_profile: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    by_phase: list[dict[str, Any]] = field(default_factory=list)  # alerts per patient by phase
    review: list[dict[str, Any]] = field(default_factory=list)  # one row per reviewed episode


def read_truth(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise rp.ReplayError(f"truth file not found: {p}")
    truth = pd.read_csv(p, dtype="string", keep_default_na=False)
    missing = [c for c in ("patient_id", "phase", "start", "end") if c not in truth.columns]
    if missing:
        raise rp.ReplayError(f"{p}: missing column(s) {', '.join(missing)}")
    truth = truth.assign(start_ms=truth["start"].map(parse_time_ms),
                         end_ms=truth["end"].map(parse_time_ms))
    if "profile" not in truth.columns:
        truth["profile"] = ""
    return truth


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "q1": None, "q3": None, "n": 0}
    arr = np.asarray(values, dtype=float)
    return {"median": float(np.median(arr)), "q1": float(np.percentile(arr, 25)),
            "q3": float(np.percentile(arr, 75)), "n": len(values)}


def evaluate(observations: pd.DataFrame, truth: pd.DataFrame | None,
             contexts: list[dict[str, Any]] | None = None,
             th: Thresholds = DEFAULT_THRESHOLDS,
             interventions: list[dict[str, Any]] | None = None,
             review: pd.DataFrame | None = None) -> tuple[Evaluation, rp.ReplayResult,
                                                           pd.DataFrame]:
    """Replay ``observations`` and score the alerts against ``truth`` (simulated cohorts)
    and/or a clinician's ``review`` (real stays); either may be None."""
    result = rp.replay_frame(observations, contexts, th, interventions=interventions)
    canon = result.canonical
    assert canon is not None  # replay_frame always sets it
    ev = Evaluation()
    span = canon.groupby("patient_id")["t"].agg(["min", "max"])
    ev.patients = len(span)
    days = pd.Series(stay_days(contexts, span), dtype=float)
    ev.patient_days = float(days.sum())
    if truth is None:
        truth = pd.DataFrame(columns=["patient_id", "phase", "start", "end", "profile",
                                      "start_ms", "end_ms"])
    profile_of = truth.groupby("patient_id")["profile"].first().to_dict()
    alerts_of: dict[str, list[dict[str, Any]]] = {}
    for a in result.alerts:
        if a.severity in COUNTED_SEVERITIES:
            alerts_of.setdefault(a.patient_id, []).append(a.to_dict() | {"t": a.raised_at_ms})
    hct = canon[canon["kind"] == "hematocrit"].sort_values("t")
    hct_of = {pid: g[["t", "value"]].to_numpy() for pid, g in hct.groupby("patient_id")}
    cls_truth = truth[truth["phase"].isin(["prodromal", "leak", "recovery"])]
    detected = {"prodromal": [0, 0], "leak": [0, 0], "recovery": [0, 0]}
    delays_h: list[float] = []
    onset_h: list[float] = []
    lead_h: list[float] = []
    for pid, rows in cls_truth.groupby("patient_id"):
        rows = rows.sort_values("start_ms")
        alerts = alerts_of.get(pid, [])
        state = result.states.get(pid)
        sex = state.sex if state else None
        first = state.blr.get("hematocrit") if state else None
        baseline = hemoconcentration.median([r[1] for r in first]) if first else None
        leaks = rows[rows["phase"] == "leak"]
        previous_leak_end = None
        for _, leak in leaks.iterrows():
            start, end = int(leak["start_ms"]), int(leak["end_ms"])
            # a leak enters at high, or at critical when the triad is complete at once
            hits = [a for a in alerts if a["phase"] == "leak"
                    and a["severity"] in ("high", "critical") and a["previous_phase"] != "leak"
                    and start - DETECT_BEFORE_MS <= a["t"] <= end]
            detected["leak"][1] += 1
            measurable = None
            for t, value in hct_of.get(pid, np.empty((0, 2))):
                if start - DETECT_BEFORE_MS <= t <= end and hemoconcentration.is_hemoconcentrated(
                        value, baseline, sex, th):
                    measurable = max(int(t), start + int(th.hypotension_hold_min * MIN_MS))
                    break
            row = {"patient_id": pid, "profile": profile_of.get(pid, ""),
                   "leak_start": leak["start"], "leak_end": leak["end"],
                   "detected": bool(hits), "alert_at": None, "delay_h": None,
                   "from_onset_h": None, "early": False,
                   "measurable": measurable is not None}
            if hits:
                detected["leak"][0] += 1
                row["alert_at"] = hits[0]["raised_at"]
                row["from_onset_h"] = (hits[0]["t"] - start) / HOUR_MS
                onset_h.append(row["from_onset_h"])
                if measurable is not None:
                    delay = (hits[0]["t"] - measurable) / HOUR_MS
                    row["early"] = delay < 0
                    row["delay_h"] = max(0.0, delay)
                    delays_h.append(row["delay_h"])
            ev.episodes.append(row)
            prodromes = rows[(rows["phase"] == "prodromal") & (rows["end_ms"] <= start + 1)]
            if previous_leak_end is not None:
                prodromes = prodromes[prodromes["end_ms"] > previous_leak_end]
            previous_leak_end = end
            for _, pro in prodromes.tail(1).iterrows():
                detected["prodromal"][1] += 1
                early = [a for a in alerts if a["phase"] == "prodromal"
                         and int(pro["start_ms"]) <= a["t"] <= start]
                if early:
                    detected["prodromal"][0] += 1
                    lead_h.append((start - early[0]["t"]) / HOUR_MS)
        for _, rec in rows[rows["phase"] == "recovery"].iterrows():
            detected["recovery"][1] += 1
            if any(a["phase"] == "recovery" and int(rec["start_ms"]) <= a["t"] <= int(
                    rec["end_ms"]) for a in alerts):
                detected["recovery"][0] += 1
    course = {pid: (int(g["start_ms"].min()) - COURSE_BEFORE_MS,
                    int(g["end_ms"].max()) + COURSE_AFTER_MS)
              for pid, g in cls_truth.groupby("patient_id")}
    true_positive = 0
    for pid, alerts in alerts_of.items():
        window = course.get(pid)
        for alert in alerts:
            tp = window is not None and window[0] <= alert["t"] <= window[1]
            true_positive += tp
            ev.alerts.append({"patient_id": pid, "profile": profile_of.get(pid, ""),
                              "phase": alert["phase"], "severity": alert["severity"],
                              "raised_at": alert["raised_at"], "true_positive": tp})
    n_alerts = len(ev.alerts)
    days_of = days.to_dict()
    profiles = sorted({profile_of.get(pid, "") for pid in span.index})
    for profile in profiles:
        pids = [pid for pid in span.index if profile_of.get(pid, "") == profile]
        n = sum(len(alerts_of.get(pid, [])) for pid in pids)
        d = sum(days_of[pid] for pid in pids)
        false = sum(1 for a in ev.alerts if a["profile"] == profile and not a["true_positive"])
        ev.by_profile.append({"profile": profile or "(unknown)", "patients": len(pids),
                              "patient_days": round(d, 1), "alerts": n,
                              "false_alerts": false,
                              "alerts_per_patient_day": round(n / d, 4) if d else None})
    cls_pids = set(cls_truth["patient_id"])
    non_cls = [pid for pid in span.index if pid not in cls_pids]
    non_cls_days = sum(days_of[pid] for pid in non_cls)
    non_cls_alerts = sum(len(alerts_of.get(pid, [])) for pid in non_cls)
    for phase, (hit, total) in detected.items():
        ev.phases[phase] = {"detected": hit, "episodes": total,
                            "sensitivity": hit / total if total else None}
    delay = _quantiles(delays_h)
    counted = [a for alerts in alerts_of.values() for a in alerts]
    for phase in ("prodromal", "leak", "recovery"):
        of_phase = [a for a in counted if a["phase"] == phase]
        alerted = {a["patient_id"] for a in of_phase}
        ev.by_phase.append({"phase": phase, "alerts": len(of_phase),
                            "patients_alerted": len(alerted),
                            "alerts_per_patient": round(len(of_phase) / ev.patients, 3)
                            if ev.patients else None,
                            "alerts_per_stay_day": round(len(of_phase) / ev.patient_days, 4)
                            if ev.patient_days else None})
    if review is not None:
        ev.review = score_review(review, result.alerts)
    ev.summary = {
        "patients": ev.patients, "patient_days": round(ev.patient_days, 1),
        "cls_patients": len(cls_pids), "non_cls_patients": len(non_cls),
        "leak_episodes": detected["leak"][1],
        "leak_sensitivity": ev.phases["leak"]["sensitivity"],
        "prodrome_sensitivity": ev.phases["prodromal"]["sensitivity"],
        "recovery_sensitivity": ev.phases["recovery"]["sensitivity"],
        "leak_delay_h": delay, "leak_delay_from_onset_h": _quantiles(onset_h),
        "prodrome_lead_time_h": _quantiles(lead_h),
        "alerts": n_alerts, "ppv": true_positive / n_alerts if n_alerts else None,
        "alerts_per_patient_day": n_alerts / ev.patient_days if ev.patient_days else None,
        "non_cls_alerts_per_patient_day": (non_cls_alerts / non_cls_days
                                           if non_cls_days else None),
        "observations": result.observations, "rejected": result.rejected.total(),
        "interventions": result.interventions,
        "review": review_summary(ev.review) if review is not None else None,
        "replay_seconds": round(result.seconds, 2),
    }
    ev.summary["targets"] = TARGETS
    ev.summary["met"] = {
        "leak_sensitivity": ev.summary["leak_sensitivity"] is not None
        and ev.summary["leak_sensitivity"] >= TARGETS["leak_sensitivity"],
        "median_leak_delay_h": delay["median"] is not None
        and delay["median"] < TARGETS["median_leak_delay_h"],
        "non_cls_alerts_per_patient_day": ev.summary["non_cls_alerts_per_patient_day"]
        is not None and ev.summary["non_cls_alerts_per_patient_day"]
        < TARGETS["non_cls_alerts_per_patient_day"],
    }
    return ev, result, canon


# --- report ----------------------------------------------------------------------------------

def _figure_png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _figures(ev: Evaluation) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")  # off-screen: reports are written on servers and in CI
    import matplotlib.pyplot as plt

    figs = {}
    onset = [e["from_onset_h"] for e in ev.episodes if e["from_onset_h"] is not None]
    measurable = [e["delay_h"] for e in ev.episodes if e["delay_h"] is not None]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if onset:
        ax.hist(onset, bins=min(30, max(5, len(onset) // 3)), color="#e4572e",
                label=f"after true onset (median {np.median(onset):.1f} h)")
    if measurable:
        ax.axvline(float(np.median(measurable)), color="black", ls="--", lw=1,
                   label=f"after criteria measurable (median {np.median(measurable):.2f} h)")
    if onset or measurable:
        ax.legend(fontsize=8)
    ax.set_title("Leak alert delay", fontsize=10)
    ax.set_xlabel("leak alert delay (h, event time)")
    ax.set_ylabel("episodes")
    figs["delay"] = _figure_png(fig)
    frame = pd.DataFrame(ev.episodes)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if len(frame):
        sens = frame.groupby("profile")["detected"].mean().sort_values()
        ax.barh(sens.index, sens.values * 100, color="#4c9be8")
        ax.axvline(95, color="black", ls="--", lw=1, label="target >= 95 %")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Leak episodes detected, by profile", fontsize=10)
    ax.set_xlabel("leak episodes detected (%)")
    figs["sensitivity"] = _figure_png(fig)
    prof = pd.DataFrame(ev.by_profile)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if len(prof):
        prof = prof.sort_values("alerts_per_patient_day")
        ax.barh(prof["profile"], prof["alerts_per_patient_day"], color="#8a8a8a")
        ax.axvline(TARGETS["non_cls_alerts_per_patient_day"], color="black", ls="--", lw=1,
                   label="target < 0.05 (non-CLS patients)")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Alert burden, by profile", fontsize=10)
    ax.set_xlabel("alerts per stay-day (warning and above)")
    figs["burden"] = _figure_png(fig)
    return figs


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.3g}"
        return html.escape("" if v is None else str(v))

    body = "".join("<tr>" + "".join(f"<td>{fmt(r[c])}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _hours(q: dict[str, Any]) -> str:
    if not q["n"]:
        return "n/a"
    return f"{q['median']:.2f} h (IQR {q['q1']:.2f}-{q['q3']:.2f}, n={q['n']})"


def _definitions() -> str:
    """The module docstring's definitions as a table (term, definition)."""
    text = (__doc__ or "").split("Definitions (stated in the report):", 1)[-1]
    items = [" ".join(line.split()) for line in text.split("\n- ")[1:]]
    rows = []
    for item in items:
        term, _, rest = item.partition(" is ") if " is " in item[:60] else item.partition(" = ")
        rows.append({"measure": term.strip("* ").replace("*", ""), "definition": rest or item})
    return _table(rows)


def _review_lines(s: dict[str, Any]) -> list[tuple[str, str]]:
    r = s["review"]
    return [
        (f"true episodes found (alert of their phase within {r['found_window_h']:g} h)",
         f"{r['true_found']} / {r['true_episodes']}"),
        (f"false episodes still alerting (within {r['still_alerting_window_h']:g} h)",
         f"{r['false_still_alerting']} / {r['false_episodes']}"),
        ("alerts per stay-day (warning and above)", _rate(s["alerts_per_patient_day"])),
    ]


def _rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def write_report(ev: Evaluation, out_dir: str | Path, timelines: list[str] | None = None
                 ) -> Path:
    """DIR/report.html (tables and figures), DIR/metrics.json, DIR/episodes.csv, and with a
    review DIR/review.csv; ``timelines`` (patient ids) are linked to DIR/timelines/ID.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(
        {"summary": ev.summary, "phases": ev.phases, "by_profile": ev.by_profile,
         "alerts_by_phase": ev.by_phase}, indent=2, default=str) + "\n")
    pd.DataFrame(ev.episodes).to_csv(out / "episodes.csv", index=False)
    s = ev.summary
    figs = _figures(ev)
    headline = [
        {"measure": "leak episodes detected", "value": _pct(s["leak_sensitivity"]),
         "target": ">= 95 %", "met": s["met"]["leak_sensitivity"]},
        {"measure": "leak alert delay after criteria measurable (median)",
         "value": _hours(s["leak_delay_h"]), "target": "< 1 h",
         "met": s["met"]["median_leak_delay_h"]},
        {"measure": "alerts per stay-day, non-CLS patients",
         "value": _rate(s["non_cls_alerts_per_patient_day"]),
         "target": "< 0.05", "met": s["met"]["non_cls_alerts_per_patient_day"]},
        {"measure": "leak alert after the true onset (median; labs every 6 h)",
         "value": _hours(s["leak_delay_from_onset_h"]), "target": "", "met": ""},
        {"measure": "prodromes detected", "value": _pct(s["prodrome_sensitivity"]),
         "target": "", "met": ""},
        {"measure": "prodrome lead time before the leak", "value": _hours(
            s["prodrome_lead_time_h"]), "target": "", "met": ""},
        {"measure": "recoveries detected", "value": _pct(s["recovery_sensitivity"]),
         "target": "", "met": ""},
        {"measure": "PPV (alerts within a true CLS course)", "value": _pct(s["ppv"]),
         "target": "", "met": ""},
        {"measure": "alerts per stay-day, all patients",
         "value": _rate(s["alerts_per_patient_day"]), "target": "", "met": ""},
    ]
    review_html = ""
    if s.get("review"):
        pd.DataFrame(ev.review).to_csv(out / "review.csv", index=False)
        review_html = ("<h2>Against the clinician's review</h2>"
                       + _table([{"measure": m, "value": v} for m, v in _review_lines(s)])
                       + _table(ev.review))
    missed = [e for e in ev.episodes if not e["detected"]]
    false_alerts = [a for a in ev.alerts if not a["true_positive"]]
    links = ""
    if timelines:
        links = "<h2>Timelines</h2><p>" + " · ".join(
            f'<a href="timelines/{html.escape(pid)}.png">{html.escape(pid)}</a>'
            for pid in sorted(timelines)) + "</p>"
    truth_html = ""
    if s["leak_episodes"] or s["cls_patients"]:
        truth_html = f"""<h2>Against the ground truth</h2>{_table(headline)}
<img src="data:image/png;base64,{figs['delay']}" alt="leak alert delay">
<img src="data:image/png;base64,{figs['sensitivity']}" alt="sensitivity by profile">
<img src="data:image/png;base64,{figs['burden']}" alt="alert burden by profile">
<h2>By phase</h2>{_table([{"phase": k, **v} for k, v in ev.phases.items()])}
<h2>By profile (false alerts by confounder type)</h2>{_table(ev.by_profile)}
<h2>Missed leak episodes</h2>{_table(missed)}
<h2>False alerts</h2>{_table(false_alerts[:200])}"""
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>clsmon evaluation</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:left}}th{{background:#f3f3f3}}img{{margin:0 1em 1em 0}}</style>
</head><body>
<h1>clsmon evaluation</h1>
<p>{s['patients']} patients with data, {s['patient_days']} stay-days, {s['cls_patients']} with a
true CLS course ({s['leak_episodes']} leak episodes), {s['observations']:,} observations
({s['rejected']:,} rejected rows), {s['interventions']:,} interventions, replayed in
{s['replay_seconds']} s.</p>
{review_html}
<h2>Alerts per patient, by phase</h2>{_table(ev.by_phase)}
{truth_html}
{links}
<h2>Definitions</h2>{_definitions()}
</body></html>"""
    path = out / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path


def run_evaluate(observations: str, *, truth: str | None, patients: str | None, report: str,
                 plots: bool = False, thresholds: Thresholds = DEFAULT_THRESHOLDS,
                 interventions: str | None = None, review: str | None = None) -> int:
    """``clsmon evaluate``: replay, score against ``truth`` and/or ``review``, write the
    report, print the headline figures; returns the exit code (0)."""
    from streams.offline.plots import write_timelines

    if truth is None and review is None:
        raise rp.ReplayError("give --truth (simulated cohort) and/or --review (real stays)")
    truth_df = read_truth(truth) if truth else None
    review_df = read_review(review) if review else None
    df = rp.read_observations(observations)
    contexts = rp.read_contexts(patients) if patients else None
    given = rp.read_interventions(interventions) if interventions else None
    scored, result, _ = evaluate(df, truth_df, contexts, thresholds, given, review_df)
    drawn = None
    if plots:
        drawn = write_timelines(result, Path(report) / "timelines", contexts, truth_df,
                                review_df)
    path = write_report(scored, report, drawn)
    s = scored.summary
    print(f"patients {s['patients']}, stay-days {s['patient_days']}, alerts {s['alerts']} "
          f"(warning and above), interventions {s['interventions']:,}")
    if truth_df is not None:
        print(f"leak sensitivity {_pct(s['leak_sensitivity'])}   prodrome "
              f"{_pct(s['prodrome_sensitivity'])}   recovery {_pct(s['recovery_sensitivity'])}")
        d = s["leak_delay_h"]
        if d["n"]:
            print(f"leak delay after criteria measurable: median {d['median']:.2f} h "
                  f"(IQR {d['q1']:.2f}-{d['q3']:.2f})")
        print(f"PPV {_pct(s['ppv'])}   alerts/stay-day non-CLS "
              f"{_rate(s['non_cls_alerts_per_patient_day'])}")
    if review_df is not None:
        lines = _review_lines(s)
        width = max(len(m) for m, _ in lines)
        print(f"| {'against the review':<{width}} | result |")
        print(f"|{'-' * (width + 2)}|--------|")
        for measure, value in lines:
            print(f"| {measure:<{width}} | {value:>6} |")
    print("alerts per patient by phase: " + ", ".join(
        f"{r['phase']} {r['alerts']} ({r['patients_alerted']} "
        f"{'patient' if r['patients_alerted'] == 1 else 'patients'})" for r in scored.by_phase))
    print(f"report: {path}")
    return 0
