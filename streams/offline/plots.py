"""Per-patient timelines: what a clinician would rather look at than read.

One PNG per patient: blood pressure, hematocrit, albumin and WBC, weight, urine flow, on one time
axis; true phases (when known) shaded; every alert drawn as a line at its ``raised_at`` with its
phase, severity and first evidence. Rendered off-screen (Agg), no display needed.
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

if TYPE_CHECKING:
    from streams.offline.replay import ReplayResult

PHASE_COLOURS = {"prodromal": "#f6c85f", "leak": "#e4572e", "recovery": "#4c9be8",
                 "none": "#8a8a8a"}
_PANELS = (
    ("Blood pressure (mmHg)", (("sbp", "SBP", "#1f3b73"), ("map", "MAP", "#6f8fd0")), 90),
    ("Hematocrit (%)", (("hematocrit", "Hct", "#b22222"),), 45),
    ("Albumin (g/dL) · WBC (10^9/L)", (("albumin", "albumin", "#2e8b57"),
                                        ("leukocytes", "WBC", "#8b5a2b")), None),
    ("Weight (kg)", (("weight", "weight", "#444444"),), None),
)


def _dt(ms: Any) -> Any:
    return pd.to_datetime(ms, unit="ms", utc=True)


def plot_patient(patient_id: str, observations: pd.DataFrame, alerts: Iterable[dict[str, Any]],
                 path: str | Path, truth: Iterable[dict[str, Any]] = (),
                 weight_kg: float | None = None) -> Path:
    """Draw one patient's timeline.

    Args:
        observations: canonical observations of this patient, columns ``kind, value, t`` (epoch
            ms), as ``streams.offline.replay.validate`` returns them.
        alerts: alerts in the contract's JSON shape (``raised_at`` ISO, ``phase``, ...).
        truth: optional ground-truth intervals ``{phase, start, end}`` (ISO) to shade.
        weight_kg: normalises urine output to mL/kg/h (70 kg when unknown).
    """
    obs = observations.assign(when=_dt(observations["t"]))
    alerts = list(alerts)
    fig, axes = plt.subplots(5, 1, figsize=(13, 11 + 0.15 * len(alerts)), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2, 2, 1.5, 1.5]})
    for ax, (title, series, cut) in zip(axes, _PANELS, strict=False):
        for kind, label, colour in series:
            rows = obs[obs["kind"] == kind]
            if len(rows):
                style = "-" if kind in ("sbp", "map") else "o-"
                ax.plot(rows["when"], rows["value"], style, ms=3, lw=0.8, color=colour,
                        label=label)
        if cut is not None:
            ax.axhline(cut, color="#999999", lw=0.8, ls="--")
        ax.set_ylabel(title, fontsize=8)
        ax.legend(loc="upper left", fontsize=7, frameon=False)
    urine = obs[obs["kind"] == "urine_output"].sort_values("t")
    ax = axes[4]
    if len(urine):
        hours = urine["t"].diff().div(3_600_000).fillna(1.0).clip(lower=1 / 60)
        rate = urine["value"] / hours / (weight_kg or 70.0)
        ax.step(urine["when"], rate, where="pre", color="#8064a2", lw=0.9)
        ax.axhline(0.5, color="#999999", lw=0.8, ls="--")
        ax.axhline(2.1, color="#999999", lw=0.8, ls=":")
    ax.set_ylabel("Urine (mL/kg/h)", fontsize=8)
    for interval in truth:
        start, end = _dt(interval["start"]), _dt(interval["end"])
        colour = PHASE_COLOURS.get(interval["phase"], "#dddddd")
        for a in axes:
            a.axvspan(start, end, color=colour, alpha=0.12, lw=0)
        axes[0].text(start, 1.02, f"true {interval['phase']}",
                     transform=axes[0].get_xaxis_transform(), fontsize=7, color=colour)
    legend_lines = []
    for i, alert in enumerate(alerts, start=1):
        when = _dt(alert["raised_at"])
        colour = PHASE_COLOURS.get(alert["phase"], "#333333")
        for a in axes:
            a.axvline(when, color=colour, lw=1.2)
        axes[0].annotate(str(i), (when, 1.0), xycoords=("data", "axes fraction"),
                         xytext=(2, -10), textcoords="offset points", fontsize=8,
                         color=colour, fontweight="bold")
        evidence = "; ".join(f"{e['criterion']} {e['value']:g} {e['unit']}"
                             for e in (alert.get("evidence") or [])[:3])
        legend_lines.append(f"{i}. {when:%d %b %H:%M}  {alert['phase']}/{alert['severity']}"
                            f"  {evidence}")
    if legend_lines:
        fig.text(0.01, 0.005, "\n".join(legend_lines), fontsize=7.5, family="monospace",
                 va="bottom")
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%d %b\n%H:%M", tz=UTC))
    fig.suptitle(f"{patient_id}: observations, true phases (shaded) and alerts (lines)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.012 * (len(legend_lines) + 1), 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def write_timelines(result: ReplayResult, out_dir: str | Path,
                    contexts: list[dict[str, Any]] | None, truth: pd.DataFrame | None = None
                    ) -> int:
    """One PNG per alerted patient in ``out_dir`` (observations, alerts, and true phases when
    ``truth`` is given); returns how many were written."""
    canon = result.canonical
    assert canon is not None  # replay_frame always sets it
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for a in result.alerts:
        by_patient.setdefault(a.patient_id, []).append(a.to_dict())
    weights = {str(c.get("patient_id")): c.get("weight_kg") for c in contexts or []}
    for pid, alerts in by_patient.items():
        intervals = [] if truth is None else truth[truth["patient_id"] == pid].to_dict("records")
        weight = weights.get(pid)
        plot_patient(pid, canon[canon["patient_id"] == pid], alerts,
                     Path(out_dir) / f"{pid}.png", intervals,
                     float(weight) if weight not in (None, "") else None)
    return len(by_patient)

