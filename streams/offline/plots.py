"""Per-patient timelines: what a clinician would rather look at than read.

One PNG per patient: blood pressure, hematocrit (with the patient's sex-specific cut-off),
albumin and WBC on their own axes, weight, urine flow from the charted collection periods, on one
time axis (date with year, UTC) limited to the window of the episodes shown (never ten months of
admissions). True phases are shaded when a truth file is given; reviewed episodes are marked;
every alert is a line at its ``raised_at`` with a number that never overlaps the next one, and
its phase, severity and first evidence in the legend. Rendered off-screen (Agg).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from detectors.config import DEFAULT_THRESHOLDS, HOUR_MS  # noqa: E402
from detectors.observation import parse_time_ms  # noqa: E402

if TYPE_CHECKING:
    from streams.offline.replay import ReplayResult

PHASE_COLOURS = {"prodromal": "#f6c85f", "leak": "#e4572e", "recovery": "#4c9be8",
                 "none": "#8a8a8a"}
#: the window drawn: from a day before the first episode or alert to a day after the last,
#: at most ten days
MARGIN_MS = 24 * HOUR_MS
MAX_WINDOW_MS = 10 * 24 * HOUR_MS


def _dt(ms: Any) -> Any:
    return pd.to_datetime(ms, unit="ms", utc=True)


def _ms(value: Any) -> int | None:
    if isinstance(value, int | float) and value == value:
        return int(value)
    return parse_time_ms(str(value)) if value not in (None, "") else None


def urine_rate(urine: pd.DataFrame, weight_kg: float | None) -> pd.DataFrame:
    """mL/kg/h per collection: over its charted ``period`` (minutes) when given, else since
    the previous collection; collections at the same minute are summed first (no spikes)."""
    u = urine.groupby("t", as_index=False).agg(value=("value", "sum"),
                                               period=("period", "max")).sort_values("t")
    since_previous = u["t"].diff() / 60_000
    minutes = u["period"].where(u["period"].notna(), since_previous)
    rate = u["value"] / (minutes / 60) / (weight_kg or DEFAULT_THRESHOLDS.default_weight_kg)
    return pd.DataFrame({"t": u["t"], "rate": rate}).dropna()


def plot_patient(patient_id: str, observations: pd.DataFrame, alerts: Iterable[dict[str, Any]],
                 path: str | Path, truth: Iterable[dict[str, Any]] = (),
                 weight_kg: float | None = None, sex: str | None = None,
                 reviewed: Iterable[dict[str, Any]] = ()) -> Path:
    """Draw one patient's timeline.

    Args:
        observations: canonical observations of this patient, columns ``kind, value, t`` (epoch
            ms) and ``period`` (urine minutes), as ``streams.offline.replay`` keeps them.
        alerts: alerts in the contract's JSON shape (``raised_at`` ISO, ``phase``, ...).
        truth: optional ground-truth intervals ``{phase, start, end}`` (ISO) to shade.
        weight_kg: normalises urine output to mL/kg/h (70 kg when unknown).
        sex: selects the hematocrit cut-off line (F 45 %, M 50 %, unknown 45 %).
        reviewed: optional reviewed episodes ``{phase, around, verdict}`` to mark.
    """
    alerts, truth, reviewed = list(alerts), list(truth), list(reviewed)
    anchors = [_ms(a["raised_at"]) for a in alerts]
    anchors += [_ms(x) for i in truth for x in (i["start"], i["end"])]
    anchors += [_ms(r.get("around_ms", r["around"])) for r in reviewed]
    known = sorted(a for a in anchors if a is not None)
    obs = observations
    if known:
        lo = known[0] - MARGIN_MS
        hi = min(known[-1] + MARGIN_MS, lo + MAX_WINDOW_MS)
        obs = obs[(obs["t"] >= lo) & (obs["t"] <= hi)]
        alerts = [a for a in alerts if lo <= (_ms(a["raised_at"]) or 0) <= hi]
    obs = obs.assign(when=_dt(obs["t"]))
    fig, axes = plt.subplots(6, 1, figsize=(13, 12 + 0.15 * len(alerts)), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2, 1.5, 1.5, 1.5, 1.5]})
    th = DEFAULT_THRESHOLDS
    panels = [
        ("Blood pressure (mmHg)", (("sbp", "SBP", "#1f3b73"), ("map", "MAP", "#6f8fd0")),
         [(th.sbp_low_mmhg, "SBP 90"), (th.map_low_mmhg, "MAP 65")]),
        ("Hematocrit (%)", (("hematocrit", "Hct", "#b22222"),),
         [(th.hct_high_pct(sex), f"cut-off {th.hct_high_pct(sex):g} % ({sex or 'sex unknown'})")]),
        ("Albumin (g/dL)", (("albumin", "albumin", "#2e8b57"),),
         [(th.albumin_low_gdl, f"{th.albumin_low_gdl:g} g/dL")]),
        ("WBC (10^9/L)", (("leukocytes", "WBC", "#8b5a2b"),), []),
        ("Weight (kg)", (("weight", "weight", "#444444"),), []),
    ]
    for ax, (title, series, cuts) in zip(axes, panels, strict=False):
        for kind, label, colour in series:
            rows = obs[obs["kind"] == kind]
            if len(rows):
                style = "-" if kind in ("sbp", "map") else "o-"
                ax.plot(rows["when"], rows["value"], style, ms=3, lw=0.8, color=colour,
                        label=label)
        for value, label in cuts:
            ax.axhline(value, color="#999999", lw=0.8, ls="--", label=label)
        ax.set_ylabel(title, fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=7, frameon=False)
    ax = axes[5]
    urine = obs[obs["kind"] == "urine_output"]
    if len(urine):
        flow = urine_rate(urine, weight_kg)
        ax.step(_dt(flow["t"]), flow["rate"], where="pre", color="#8064a2", lw=0.9,
                label="urine (charted periods)")
        ax.axhline(th.oliguria_ml_per_kg_h, color="#999999", lw=0.8, ls="--",
                   label=f"oliguria {th.oliguria_ml_per_kg_h:g}")
        ax.axhline(th.polyuria_ml_per_kg_h, color="#999999", lw=0.8, ls=":",
                   label=f"polyuria {th.polyuria_ml_per_kg_h:g}")
        ax.legend(loc="upper left", fontsize=7, frameon=False)
    ax.set_ylabel("Urine (mL/kg/h)", fontsize=8)
    for interval in truth:
        start, end = _dt(_ms(interval["start"])), _dt(_ms(interval["end"]))
        colour = PHASE_COLOURS.get(interval["phase"], "#dddddd")
        for a in axes:
            a.axvspan(start, end, color=colour, alpha=0.12, lw=0)
        axes[0].text(start, 1.02, f"true {interval['phase']}",
                     transform=axes[0].get_xaxis_transform(), fontsize=7, color=colour)
    for r in reviewed:
        when = _dt(_ms(r.get("around_ms", r["around"])))
        for a in axes:
            a.axvline(when, color="#555555", lw=0.8, ls=":")
        axes[0].text(when, 1.08, f"reviewed {r['phase']}: {r['verdict']}",
                     transform=axes[0].get_xaxis_transform(), fontsize=7, color="#555555")
    legend_lines = []
    for i, alert in enumerate(alerts, start=1):
        when = _dt(alert["raised_at"])
        colour = PHASE_COLOURS.get(alert["phase"], "#333333")
        for a in axes:
            a.axvline(when, color=colour, lw=1.2)
        # staggered rows: numbers of alerts close in time never overlap
        axes[0].annotate(str(i), (when, 1.0), xycoords=("data", "axes fraction"),
                         xytext=(2, -10 - 10 * ((i - 1) % 4)), textcoords="offset points",
                         fontsize=8, color=colour, fontweight="bold")
        evidence = "; ".join(f"{e['criterion']} {e['value']:g} {e['unit']}"
                             for e in (alert.get("evidence") or [])[:3])
        legend_lines.append(f"{i}. {when:%Y-%m-%d %H:%M}  {alert['phase']}/"
                            f"{alert['severity']}  {evidence}")
    if legend_lines:
        fig.text(0.01, 0.005, "\n".join(legend_lines), fontsize=7.5, family="monospace",
                 va="bottom")
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d\n%H:%M UTC", tz=UTC))
    shown = ["observations"]
    if truth:
        shown.append("true phases (shaded)")
    if reviewed:
        shown.append("reviewed episodes (dotted)")
    shown.append("alerts (lines)")
    fig.suptitle(f"{patient_id}: " + ", ".join(shown), fontsize=11)
    fig.tight_layout(rect=(0, 0.012 * (len(legend_lines) + 1), 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def write_timelines(result: ReplayResult, out_dir: str | Path,
                    contexts: list[dict[str, Any]] | None, truth: pd.DataFrame | None = None,
                    review: pd.DataFrame | None = None) -> list[str]:
    """One PNG per alerted patient in ``out_dir``, and per patient with a true leak or a
    reviewed episode (missed ones included); returns the patient ids drawn."""
    canon = result.canonical
    assert canon is not None  # set when plots are asked for
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for a in result.alerts:
        by_patient.setdefault(a.patient_id, []).append(a.to_dict())
    wanted = set(by_patient)
    if truth is not None:
        wanted |= set(truth.loc[truth["phase"] == "leak", "patient_id"])
    if review is not None:
        wanted |= set(review["patient_id"])
    facts: dict[str, dict[str, Any]] = {}
    for c in contexts or []:
        facts.setdefault(str(c.get("patient_id")), {}).update(
            {k: c.get(k) for k in ("weight_kg", "sex") if c.get(k) not in (None, "")})
    drawn = []
    for pid in sorted(wanted):
        rows = canon[canon["patient_id"] == pid]
        if not len(rows):
            continue
        intervals = [] if truth is None else truth[truth["patient_id"] == pid].to_dict("records")
        reviewed = [] if review is None else review[review["patient_id"] == pid].to_dict(
            "records")
        f = facts.get(pid, {})
        weight = f.get("weight_kg")
        plot_patient(pid, rows, by_patient.get(pid, []), Path(out_dir) / f"{pid}.png",
                     intervals, float(weight) if weight is not None else None, f.get("sex"),
                     reviewed)
        drawn.append(pid)
    return drawn
