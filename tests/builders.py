"""Small builders for observation streams in tests: readable scenarios without a simulator."""

from __future__ import annotations

from typing import Any

from detectors.alerts import Alert
from detectors.config import DEFAULT_THRESHOLDS, Thresholds
from detectors.observation import Rejection, normalise, parse_context
from detectors.phases import apply_context, flush, step
from detectors.state import PatientState

T0 = 1_790_000_000_000  # 2026-09-21T15:13:20Z
MIN = 60_000
HOUR = 3_600_000


def obs(kind: str, value: float, t_ms: int, unit: str | None = None, pid: str = "p1",
        **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"patient_id": pid, "kind": kind, "value": value, "observed_at": t_ms}
    if unit is not None:
        d["unit"] = unit
    d.update(extra)
    return d


def vitals(start_h: float, end_h: float, sbp: float, map_: float, every_min: float = 5,
           pid: str = "p1") -> list[dict[str, Any]]:
    out = []
    t = T0 + int(start_h * HOUR)
    while t < T0 + int(end_h * HOUR):
        out.append(obs("sbp", sbp, t, "mmHg", pid))
        out.append(obs("map", map_, t, "mmHg", pid))
        t += int(every_min * MIN)
    return out


def by_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda d: d["observed_at"])


def run(rows: list[dict[str, Any]], context: dict[str, Any] | None = None,
        th: Thresholds = DEFAULT_THRESHOLDS) -> tuple[list[Alert], PatientState | None]:
    """Feed raw rows (in the given order) through normalise + step; flush at the end."""
    state: PatientState | None = None
    if context is not None:
        ctx = parse_context(context)
        assert not isinstance(ctx, Rejection), ctx
        state = apply_context(None, ctx)
    alerts: list[Alert] = []
    for row in rows:
        o = normalise(row)
        if isinstance(o, Rejection):
            continue
        r = step(state, o, th)
        state = r.state
        alerts.extend(r.alerts)
    if state is not None:
        alerts.extend(flush(state, th))
    return alerts, state


def phases(alerts: list[Alert]) -> list[str]:
    return [f"{a.phase}/{a.severity}" for a in alerts]
