"""Small builders for observation streams in tests: readable scenarios without a simulator."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from detectors.alerts import Alert
from detectors.config import DEFAULT_THRESHOLDS, Thresholds
from detectors.interventions import parse_intervention
from detectors.observation import Rejection, normalise, parse_context
from detectors.phases import apply_context, flush, step
from detectors.state import PatientState

T0 = 1_790_000_000_000  # 2026-09-21T15:13:20Z
MIN = 60_000
HOUR = 3_600_000

#: what ``feed`` returns: the alerts, the final state and the readings refused
Fed = tuple[list[Alert], PatientState | None, list[Rejection]]


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


def lab_panel(t_ms: int, hct: float, hb: float | None = None, albumin: float | None = None,
              **extra: Any) -> list[dict[str, Any]]:
    """One draw: the Hct, its Hb (Hct / 3 unless given) and optionally an albumin."""
    rows = [obs("hematocrit", hct, t_ms, "%", **extra)]
    rows.append(obs("hemoglobin", hb if hb is not None else hct / 3.0, t_ms, "g/dL", **extra))
    if albumin is not None:
        rows.append(obs("albumin", albumin, t_ms, "g/dL", **extra))
    return rows


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


def feed(rows: list[dict[str, Any]], interventions: Iterable[dict[str, Any]] = (),
         context: dict[str, Any] | None = None, th: Thresholds = DEFAULT_THRESHOLDS,
         ordered: bool = False) -> Fed:
    """Rows and interventions merged by time (``ordered``: rows in the given arrival order),
    through normalise/parse + step; the alerts, the final state and the readings refused."""
    items = [(i if ordered else r["observed_at"], 0, r) for i, r in enumerate(rows)]
    items += [(iv["started_at"], 1, iv) for iv in interventions]
    if not ordered:
        items.sort(key=lambda x: (x[0], x[1]))
    st = apply_context(None, parse_context(context)) if context else None
    alerts: list[Alert] = []
    rejected: list[Rejection] = []
    for _, is_iv, raw in items:
        value = parse_intervention(raw) if is_iv else normalise(raw)
        assert not isinstance(value, Rejection), value
        r = step(st, value, th)
        st = r.state
        alerts.extend(r.alerts)
        if r.rejection is not None:
            rejected.append(r.rejection)
    if st is not None:
        alerts.extend(flush(st, th))
    return alerts, st, rejected



def leak_with_signs(wbc: float = 13.0, wbc_h: float = 19, urine_ml_h: float = 20,
                    urine_reported_after_ms: int = 0, th: Thresholds = DEFAULT_THRESHOLDS) -> Fed:
    """Leak at 21 h (shock 20-30 h, Hct 55 %), a WBC drawn at ``wbc_h``, hourly urine from 21 h
    (70 kg: 20 mL/h = 0.29 mL/kg/h), each collection reported ``urine_reported_after_ms`` after
    it ended."""
    rows = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58) + \
        lab_panel(T0 + 4 * HOUR, 40, albumin=4.0) + lab_panel(T0 + 21 * HOUR, 55, albumin=3.9)
    rows.append(obs("leukocytes", wbc, T0 + int(wbc_h * HOUR), "10*9/L"))
    for h in range(22, 31):
        ended = T0 + h * HOUR
        late = {"available_at": ended + urine_reported_after_ms} if urine_reported_after_ms else {}
        rows.append(obs("urine_output", urine_ml_h, ended, "mL", period_min=60, **late))
    return feed(by_time(rows), th=th)


def recovery_course(end_h: float = 60.0, recovery_hct: float = 50.0,
                    urine_ml_h: float | None = None, extra: Iterable[dict[str, Any]] = (),
                    context: dict[str, Any] | None = None, sbp: float = 115) -> Fed:
    """Shock 20-30 h with Hct 56 at 21 h (leak), ``sbp`` charted every 15 min from 30 h until
    ``end_h`` (the last reading exactly at ``end_h``), the Hct at 33 h; hourly urine of
    ``urine_ml_h`` mL from 30 h to ``end_h`` (70 kg: 150 mL/h = 2.14 mL/kg/h)."""
    rows = vitals(0, 20, 120, 85) + vitals(20, 30, 80, 58) + vitals(30, end_h + 0.01, sbp, 80, 15)
    rows += lab_panel(T0 + 4 * HOUR, 40, albumin=4.0)
    rows += lab_panel(T0 + 21 * HOUR, 56, albumin=3.9)
    rows += lab_panel(T0 + 33 * HOUR, recovery_hct, albumin=3.9)
    if urine_ml_h is not None:
        rows += [obs("urine_output", urine_ml_h, T0 + h * HOUR, "mL", period_min=60)
                 for h in range(31, int(end_h) + 1)]
    return feed(by_time(rows + list(extra)), context=context)


def phases(alerts: list[Alert]) -> list[str]:
    return [f"{a.phase}/{a.severity}" for a in alerts]
