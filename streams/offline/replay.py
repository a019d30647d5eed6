"""Offline replay: recorded observations (CSV or Parquet, long format) through the same engine.

Rows are processed in FILE order, which is taken as arrival order (as a stream would deliver them);
``sort=True`` sorts by event time first (stable). Validation is vectorised with pandas for speed,
but every row it would reject is passed to the scalar ``detectors.observation.normalise`` so that
reasons and details are exactly the ones the stream worker dead-letters; accepted rows carry the
same canonical values (tests/test_replay.py pins both).
"""

from __future__ import annotations

import csv
import gc
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from detectors.alerts import Alert
from detectors.config import DEFAULT_THRESHOLDS, Thresholds
from detectors.observation import (
    Observation,
    Rejection,
    normalise,
    parse_context,
)
from detectors.phases import apply_context, flush, step
from detectors.state import PatientState
from detectors.units import KINDS, URINE_MAX_ML_PER_H, canonical_kind, unit_key

REQUIRED = ("patient_id", "observed_at", "kind", "value", "unit")
OPTIONAL = ("source", "period_min", "id")
_ISO_WITH_OFFSET = r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)$"


class ReplayError(Exception):
    """A file that cannot be replayed at all (missing, unreadable, wrong columns)."""


@dataclass
class ReplayResult:
    alerts: list[Alert] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    observations: int = 0
    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    states: dict[str, PatientState] = field(default_factory=dict)
    seconds: float = 0.0
    #: canonical observations of the rows the bulk validation accepted (patient_id, kind,
    #: value, t, period): what evaluation and plots read, without validating the file again
    canonical: pd.DataFrame | None = None

    def rejects_by_reason(self) -> Counter[str]:
        return Counter(r["reason"] for r in self.rejects)

    def alerts_by_phase(self) -> Counter[str]:
        return Counter(f"{a.phase}/{a.severity}" for a in self.alerts)


def read_observations(path: str | Path) -> pd.DataFrame:
    """Read a long-format CSV or Parquet file; every column as text (validation decides)."""
    p = Path(path)
    if not p.exists():
        raise ReplayError(f"observations file not found: {p}")
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(p)
            df = df.astype({c: "string" for c in df.columns if c not in ("value",)})
        else:
            df = pd.read_csv(p, dtype="string", keep_default_na=False, engine="pyarrow")
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise ReplayError(f"cannot read {p}: {exc}") from exc
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ReplayError(f"{p}: missing column(s) {', '.join(missing)}; "
                          f"expected {', '.join(REQUIRED)} (+ optional {', '.join(OPTIONAL)})")
    return df


def read_contexts(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        raise ReplayError(f"patients file not found: {p}")
    df = pd.read_csv(p, dtype="string", keep_default_na=False)
    if "patient_id" not in df.columns:
        raise ReplayError(f"{p}: needs a patient_id column (and sex, weight_kg, birth_year)")
    return df.to_dict("records")


def _epoch_ms(times: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised event time: (ms as int64, ok mask). ISO 8601 needs an explicit offset.

    Fast path: Arrow's ISO 8601 cast of the whole column (it refuses a time without an offset,
    as the contract does); any unparseable row sends the column to the row-wise path below.
    """
    try:
        stamps = pc.cast(pa.array(times.to_numpy(dtype=object, na_value=None), pa.string()),
                         pa.timestamp("ms", tz="UTC"))
        ms = stamps.cast(pa.int64()).to_numpy(zero_copy_only=False)
        if stamps.null_count == 0:
            ok = (ms >= 631_152_000_000) & (ms < 7_258_118_400_000)
            return ms.astype(np.int64), ok
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    text = times.fillna("").astype(str).str.strip()
    ms = np.zeros(len(text), dtype=np.int64)
    ok = np.zeros(len(text), dtype=bool)
    iso = text.str.match(_ISO_WITH_OFFSET).to_numpy(dtype=bool, na_value=False)
    rest = ~iso
    if rest.any():
        numeric = np.zeros(len(text), dtype=bool)
        numeric[rest] = text[rest].str.fullmatch(r"-?\d{1,15}").to_numpy(dtype=bool,
                                                                        na_value=False)
        if numeric.any():
            ms[numeric] = text[numeric].astype(np.int64).to_numpy()
            ok[numeric] = True
    if iso.any():
        parsed = pd.to_datetime(text[iso], utc=True, errors="coerce", format="ISO8601")
        good = parsed.notna().to_numpy()
        idx = np.flatnonzero(iso)
        vals = parsed.to_numpy(dtype="datetime64[ms]").astype(np.int64)
        ms[idx[good]] = vals[good]
        ok[idx[good]] = True
    ok &= (ms >= 631_152_000_000) & (ms < 7_258_118_400_000)
    return ms, ok


def _numbers(column: pd.Series) -> np.ndarray:
    """Floats, NaN where the text is not a number (fast path first: a clean numeric column)."""
    try:
        return column.astype("float64").to_numpy(dtype=float, na_value=np.nan)
    except (ValueError, TypeError):
        return pd.to_numeric(column, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def validate(df: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Canonical kind/value/time for every row the fast path accepts; mask of those rows."""
    n = len(df)
    kinds_raw = df["kind"].fillna("").astype("category")
    kind = kinds_raw.map({k: canonical_kind(k) for k in kinds_raw.cat.categories}).astype(object)
    value = _numbers(df["value"])
    ok = kind.notna().to_numpy() & np.isfinite(value)
    units = df["unit"].fillna("").astype(str)
    canonical = np.full(n, np.nan)
    pairs = pd.DataFrame({"k": kind, "u": units}).groupby(["k", "u"], sort=False).indices
    for (k, u), idx in pairs.items():
        spec = KINDS[k]
        convert = spec.units.get(unit_key(u)) if u else spec.units.get(
            unit_key(spec.canonical_unit))
        if convert is None:
            continue
        converted = np.asarray(convert(value[idx]), dtype=float)
        in_range = (converted >= spec.low) & (converted <= spec.high)
        canonical[idx[in_range]] = converted[in_range]
    ok &= np.isfinite(canonical)
    t_ms, t_ok = _epoch_ms(df["observed_at"])
    ok &= t_ok
    period = np.full(n, np.nan)
    if "period_min" in df.columns:
        raw = df["period_min"].fillna("").astype(str)
        given = (raw != "").to_numpy()
        period[given] = pd.to_numeric(raw[given], errors="coerce").to_numpy(dtype=float)
        is_urine = (kind == "urine_output").to_numpy()
        bad = given & (~np.isfinite(period) | (period <= 0) | (period > 1440))
        rate = np.divide(canonical, period / 60.0, out=np.zeros(n), where=period > 0)
        bad |= given & is_urine & (rate > URINE_MAX_ML_PER_H)
        ok &= ~(bad & is_urine)
        period[~is_urine] = np.nan
    pid = df["patient_id"].fillna("").astype(str).str.strip()
    ok &= (pid != "").to_numpy()
    out = pd.DataFrame({"patient_id": pid, "kind": kind, "value": canonical, "t": t_ms,
                        "period": period})
    return out, ok


def _row_dict(df: pd.DataFrame, i: int) -> dict[str, Any]:
    row = {c: df[c].iat[i] for c in df.columns}
    return {k: (None if v is pd.NA else v) for k, v in row.items()}


def replay_frame(df: pd.DataFrame, contexts: list[dict[str, Any]] | None = None,
                 th: Thresholds = DEFAULT_THRESHOLDS, sort: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> ReplayResult:
    """Run every row through normalise + step in file order (or event-time order).

    The cyclic garbage collector is paused meanwhile: building a million observation tuples
    otherwise triggers it over and over (1.7 s instead of 0.5 s per million rows), and nothing
    the replay allocates forms a reference cycle.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _replay_frame(df, contexts, th, sort, progress)
    finally:
        if was_enabled:
            gc.enable()


def _replay_frame(df: pd.DataFrame, contexts: list[dict[str, Any]] | None, th: Thresholds,
                  sort: bool, progress: Callable[[int, int], None] | None) -> ReplayResult:
    started = time.perf_counter()
    result = ReplayResult(observations=len(df))
    states = result.states
    for raw in contexts or []:
        ctx = parse_context(raw)
        if isinstance(ctx, Rejection):
            result.rejects.append({"row": None, "reason": ctx.reason, "detail": ctx.detail,
                                   "input": raw})
            continue
        state = apply_context(states.get(ctx.patient_id), ctx)
        if state is not None:
            states[ctx.patient_id] = state
    norm, ok = validate(df)
    result.canonical = norm[ok]
    order = np.arange(len(df))
    if sort:
        order = order[np.argsort(np.where(ok, norm["t"].to_numpy(), np.iinfo(np.int64).max),
                                 kind="stable")]
    n_rows = len(df)
    periods = norm["period"].astype(object).where(norm["period"].notna(), None).tolist()
    sources = (df["source"].fillna("").astype(str).tolist() if "source" in df
               else [""] * n_rows)
    ids = df["id"].fillna("").astype(str).tolist() if "id" in df else [""] * n_rows
    # Observations for all rows at C speed; rows the fast path rejected are never read from it
    observations = list(map(partial(tuple.__new__, Observation), zip(
        norm["patient_id"].tolist(), norm["kind"].tolist(), norm["value"].tolist(),
        norm["t"].tolist(), sources, periods, ids, strict=True)))
    ok_list = ok.tolist()
    alerts = result.alerts
    counts = {"accepted": 0, "duplicate": 0, "late": 0, "rejected": 0}
    states_get = states.get
    rows: Sequence[int] = order.tolist() if sort else range(n_rows)
    chunk = max(1, n_rows // 50)
    for start in range(0, n_rows, chunk):
        if progress is not None:
            progress(start, n_rows)
        for i in rows[start:start + chunk]:
            if ok_list[i]:
                obs = observations[i]
            else:
                checked = normalise(_row_dict(df, i))
                if isinstance(checked, Rejection):
                    result.rejects.append({"row": i + 2, "reason": checked.reason,
                                           "detail": checked.detail, "input": _row_dict(df, i)})
                    continue
                obs = checked
            state = states_get(obs.patient_id)
            r = step(state, obs, th)
            if state is None:
                states[obs.patient_id] = r.state
            if r.status != "accepted":
                counts[r.status] += 1
                if r.rejection is not None:
                    result.rejects.append({"row": i + 2, "reason": r.rejection.reason,
                                           "detail": r.rejection.detail,
                                           "input": _row_dict(df, i)})
            elif r.alerts:
                alerts.extend(r.alerts)
    for state in states.values():
        alerts.extend(flush(state, th))
    if progress is not None:
        progress(len(df), len(df))
    result.accepted = len(observations) - len(result.rejects) - counts["duplicate"]
    result.duplicates = counts["duplicate"]
    result.late = counts["late"]
    result.seconds = time.perf_counter() - started
    return result


# --- output -------------------------------------------------------------------------------------

ALERT_CSV_COLUMNS = ("alert_id", "patient_id", "phase", "previous_phase", "severity", "raised_at",
                     "episode", "summary", "evidence")


def write_alerts(alerts: list[Alert], path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8", newline="") as f:
        if p.suffix.lower() == ".csv":
            w = csv.DictWriter(f, fieldnames=ALERT_CSV_COLUMNS)
            w.writeheader()
            for a in alerts:
                d = a.to_dict()
                d["evidence"] = json.dumps(d["evidence"], separators=(",", ":"))
                w.writerow(d)
        else:
            for a in alerts:
                f.write(json.dumps(a.to_dict(), separators=(",", ":")) + "\n")


def write_rejects(rejects: list[dict[str, Any]], path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8", newline="") as f:
        if p.suffix.lower() == ".csv":
            w = csv.writer(f)
            w.writerow(("row", "reason", "detail", "input"))
            for r in rejects:
                w.writerow((r["row"], r["reason"], r["detail"],
                            json.dumps(r["input"], default=str)))
        else:
            for r in rejects:
                f.write(json.dumps(r, default=str) + "\n")


def summary_lines(result: ReplayResult) -> Iterator[str]:
    rate = result.observations / result.seconds if result.seconds else 0.0
    yield (f"patients {len(result.states):>8}   observations {result.observations:>10}   "
           f"accepted {result.accepted:>10}   duplicates {result.duplicates}   "
           f"late vitals {result.late}")
    yield f"time {result.seconds:.2f} s   ({rate:,.0f} observations/s)"
    yield "rejected by reason:" + ("" if result.rejects else " none")
    for reason, n in result.rejects_by_reason().most_common():
        yield f"  {reason:<16} {n:>8}"
    yield "alerts by phase/severity:" + ("" if result.alerts else " none")
    for key, n in sorted(result.alerts_by_phase().items()):
        yield f"  {key:<20} {n:>8}"


class Progress:
    """A one-line progress indicator on a terminal (silent when not a TTY, e.g. in CI)."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.started = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total < 100_000:
            return
        elapsed = time.perf_counter() - self.started
        pct = done / total * 100 if total else 100.0
        rate = done / elapsed if elapsed else 0.0
        self.stream.write(f"\r  {pct:5.1f} %  {done:>10,}/{total:,} rows  {rate:,.0f}/s ")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def run_replay(observations: str, *, patients: str | None = None, out: str | None = None,
               rejects: str | None = None, sort: bool = False, plots: str | None = None,
               thresholds: Thresholds = DEFAULT_THRESHOLDS, quiet: bool = False) -> int:
    """``clsmon replay``: replay a file, write alerts, rejects and plots, print a summary.

    Returns the exit code (0). Raises ``ReplayError`` for a file that cannot be replayed.
    """
    from streams.offline.plots import write_timelines

    df = read_observations(observations)
    contexts = read_contexts(patients) if patients else None
    result = replay_frame(df, contexts, thresholds, sort=sort,
                          progress=None if quiet else Progress())
    if out:
        write_alerts(result.alerts, out)
    if rejects:
        write_rejects(result.rejects, rejects)
    written = write_timelines(result, plots, contexts) if plots else 0
    if not quiet:
        for line in summary_lines(result):
            print(line)
        if out:
            print(f"alerts written to {out}")
        if rejects:
            print(f"rejected rows written to {rejects}")
        if plots:
            print(f"{written} timeline plots written to {plots}")
    return 0

