"""A patient's timeline as server-rendered SVG: blood pressure and hematocrit (and albumin,
weight when present) over the last hours held by the board, the alerts as labelled vertical
lines whose line style also tells the phase (colour is never the only cue), dark theme.

matplotlib's object API (no pyplot, no global state). CPU-bound: the board runs it in a
one-process pool, never on its event loop (in a thread it stalled every live stream 1-4 s).
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

FG, BG = "#ffffff", "#000000"
PHASE_STYLE: dict[str, tuple[str, Any]] = {
    "prodromal": ("#ffd400", (0, (6, 3))), "leak": ("#ff5c5c", "solid"),
    "recovery": ("#6cb8ff", (0, (1, 2))), "none": ("#bbbbbb", (0, (3, 3, 1, 3)))}
#: kind -> (label, colour, line style, right-hand axis)
SERIES = {"sbp": ("SBP mmHg", "#ffffff", "-", False), "map": ("MAP mmHg", "#9fd3ff", "--", False),
          "hematocrit": ("Hct %", "#ff9f9f", "-o", True),
          "albumin": ("Albumin g/dL x10", "#c8ff8a", ":s", True)}
SBP_LIMIT = 90.0  # docs/clinical-criteria.md: SBP <= 90 mmHg (hypotension)


def _when(t_ms: int) -> datetime:
    return datetime.fromtimestamp(t_ms / 1000, UTC)


def timeline_svg(title: str, points: dict[str, list[tuple[int, float]]],
                 alerts: list[dict[str, Any]], tz: Any = None) -> bytes:
    """SVG bytes. ``points``: kind -> [(event time ms, value in its canonical unit)]."""
    fig = Figure(figsize=(9, 3.6), facecolor=BG, layout="constrained")
    ax = fig.add_subplot()
    ax.set_facecolor(BG)
    shown = {k: v for k, v in points.items() if k in SERIES and v}
    ax2 = ax.twinx() if any(SERIES[k][3] for k in shown) else None
    lines = []
    for kind, pts in shown.items():
        label, colour, style, right = SERIES[kind]
        scale = 10.0 if kind == "albumin" else 1.0
        target = ax2 if right and ax2 is not None else ax
        lines += target.plot(mdates.date2num([_when(t) for t, _ in pts]),
                             [v * scale for _, v in pts], style,
                             color=colour, lw=1.4, ms=4, label=label)
    if "sbp" in shown:
        lines.append(ax.axhline(SBP_LIMIT, color="#ffd400", lw=1, ls=":", label="SBP 90 limit"))
    for i, a in enumerate(sorted(alerts, key=lambda a: str(a.get("raised_at", ""))), start=1):
        try:
            t = datetime.fromisoformat(str(a.get("raised_at")).replace("Z", "+00:00"))
        except ValueError:
            continue
        colour, style = PHASE_STYLE.get(str(a.get("phase", "none")), PHASE_STYLE["none"])
        x = mdates.date2num(t)
        ax.axvline(x, color=colour, lw=2, ls=style)
        ax.annotate(f"{i} {str(a.get('phase', '?')).upper()} {a.get('severity', '')}", (x, 1.0),
                    xycoords=("data", "axes fraction"), xytext=(3, -14 - 12 * ((i - 1) % 3)),
                    textcoords="offset points", color=colour, fontsize=10, fontweight="bold")
    for axis in (ax, ax2) if ax2 is not None else (ax,):
        axis.tick_params(colors=FG, labelsize=10)
        for spine in axis.spines.values():
            spine.set_color("#888888")
    ax.set_ylabel("mmHg", color=FG)
    if ax2 is not None:
        ax2.set_ylabel("Hct % / albumin g/dL x10", color=FG)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%d %b\n%H:%M", tz=tz))
    ax.set_title(title, color=FG, fontsize=12, loc="left")
    if lines:
        legend = ax.legend(handles=lines, loc="lower left", fontsize=9, facecolor=BG,
                           edgecolor="#888888")
        for text in legend.get_texts():
            text.set_color(FG)
    else:
        ax.text(0.5, 0.5, "no vitals or labs held by the board for this patient",
                transform=ax.transAxes, ha="center", color=FG, fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", facecolor=BG, metadata={"Date": None})
    return buf.getvalue()
