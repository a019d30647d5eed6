"""Offline replay: recorded observations (CSV or Parquet, long format) through the same engine.

Rows are processed in FILE order, which is taken as arrival order (as a stream would deliver them);
``sort=True`` sorts by event time first (stable; the whole file is then read at once). Otherwise
the file is read in chunks (``streams.offline.sources``): memory does not grow with the file.
Patient context and interventions are side events merged into that order at their time
(``streams.offline.sources``, "Arrival order"), so an admission months later is a new stay.

Validation is vectorised with pandas for speed, but every row it would reject is passed to the
scalar ``detectors.observation.normalise`` so that reasons and details are exactly the ones the
stream worker dead-letters; accepted rows carry the same canonical values (tests/test_replay.py
pins both).
"""

from __future__ import annotations

import contextlib
import csv
import gc
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np
import pandas as pd
import pyarrow as pa

from detectors.alerts import Alert
from detectors.config import DEFAULT_THRESHOLDS, Thresholds
from detectors.observation import Observation, PatientContext, Rejection, Retraction, normalise
from detectors.phases import apply_context, flush, step
from detectors.state import PatientState
from streams.offline.sources import (  # noqa: F401  (re-exported: the replay's public names)
    BEFORE,
    NO_TIME,
    OPTIONAL,
    REQUIRED,
    ReplayError,
    SideEvent,
    SideInput,
    arrival_ms,
    distinct,
    iter_observations,
    read_contexts,
    read_interventions,
    read_observations,
    side_input,
    texts,
    validate,
    validate_columns,
)

_CANONICAL = ["patient_id", "kind", "value", "t", "period"]


@dataclass
class ReplayResult:
    alerts: list[Alert] = field(default_factory=list)
    #: the refused rows (file, row, reason, detail, input), unless a sink took them
    #: (``replay_chunks(on_reject=...)``: a file of millions of refused rows is not kept)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    #: refused rows by (file, reason), whether kept or not
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    observations: int = 0  # rows read from the observations file
    accepted: int = 0  # observations folded into a state (late ones included)
    duplicates: int = 0
    late: int = 0
    retracted: int = 0  # retractions that removed their reading
    not_retracted: int = 0  # retractions the engine could not apply (detectors.phases._retract)
    interventions: int = 0  # interventions accepted into a state
    intervention_duplicates: int = 0  # the same record twice (a redelivery)
    contexts: int = 0  # context events applied (admissions, updates, discharges)
    #: the live states at the end (discharged patients are forgotten, as in the stream)
    states: dict[str, PatientState] = field(default_factory=dict)
    patients: set[str] = field(default_factory=set)  # every patient with an accepted row
    seconds: float = 0.0
    #: canonical observations of the accepted rows (patient_id, kind, value, t, period): what
    #: evaluation and plots read, without validating the file again; only when asked for
    canonical: pd.DataFrame | None = None

    def rejects_by_reason(self) -> Counter[str]:
        by_reason: Counter[str] = Counter()
        for (_, reason), n in self.rejected.items():
            by_reason[reason] += n
        return by_reason

    def alerts_by_phase(self) -> Counter[str]:
        return Counter(f"{a.phase}/{a.severity}" for a in self.alerts)


def _raw_columns(df: pd.DataFrame) -> list[tuple[str, Any]]:
    """A chunk's columns for reading refused rows back: text columns as their Arrow array (an
    element in ~1 µs, where pandas' ``__getitem__`` takes ~20 µs), others as pandas arrays."""
    columns: list[tuple[str, Any]] = []
    for c in df.columns:
        values = df[c].array
        if isinstance(values, pd.arrays.ArrowExtensionArray):
            arrow = values.__arrow_array__()
            if pa.types.is_string(arrow.type) or pa.types.is_large_string(arrow.type):
                values = arrow  # as_py() gives the str (None for null) that pandas gives
        columns.append((c, values))
    return columns


def _row_dict(columns: list[tuple[str, Any]], i: int) -> dict[str, Any]:
    """Row ``i`` of a chunk as the scalar gate reads it (``columns`` from ``_raw_columns``;
    a missing value is None)."""
    row: dict[str, Any] = {}
    for c, values in columns:
        if isinstance(values, pa.ChunkedArray):
            row[c] = values[i].as_py()
        else:
            v = values[i]
            row[c] = None if v is pd.NA else v
    return row


def _row_dicts(columns: list[tuple[str, Any]], rows: np.ndarray) -> list[dict[str, Any]]:
    """``_row_dict`` of every row in ``rows``, column by column (a file whose values are all
    refused has every row here: one at a time it took 180 µs a row)."""
    names = [c for c, _ in columns]
    values = [v.take(rows).to_pylist() if isinstance(v, pa.ChunkedArray)
              else [None if x is pd.NA else x for x in v.take(rows)] for _, v in columns]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


class _Batch(NamedTuple):
    """One chunk ready for the loop: its rows in processing order and their observations."""

    columns: list[tuple[str, Any]]  # the chunk's raw columns (``_raw_columns``)
    rows: Sequence[int]  # file row (within the chunk) of each position
    observations: list[Observation | None]  # None: refused by the bulk gate (scalar gate next)
    offset: int  # rows read before this chunk
    refused: dict[int, dict[str, Any]]  # position -> raw row, for the bulk gate's refusals


class _Replay:
    """The replay loop: chunks of rows in arrival order, side events applied in between."""

    def __init__(self, side: SideInput, th: Thresholds, keep_canonical: bool,
                 progress: Callable[[int, int | None], None] | None,
                 on_reject: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.th = th
        self.result = ReplayResult()
        self.on_reject = on_reject or self.result.rejects.append
        for row in side.rejects:
            self.reject(row)
        self.events = side.events
        self.next_event = 0
        self.clock = np.iinfo(np.int64).min
        self.keep_canonical = keep_canonical
        self.canonical: list[pd.DataFrame] = []
        self.progress = progress
        self.counts: Counter[str] = Counter()
        #: patients whose state exists but none of whose rows was accepted yet
        self.unseen: set[str] = set()

    def feed(self, df: pd.DataFrame, sort: bool = False) -> None:
        """Replay one chunk (``sort``: in event-time order; only for a whole file)."""
        offset = self.result.observations
        n = len(df)
        self.result.observations += n
        if not n:
            return
        if self.progress is not None:
            self.progress(offset, None)
        v = validate_columns(df)
        if self.keep_canonical:
            self.canonical.append(v.frame().loc[v.ok, _CANONICAL])
        arrival = arrival_ms(v, v.ok)
        rows: np.ndarray | None = None  # file row (within the chunk) of each position
        if sort:
            rows = np.argsort(np.where(v.ok, v.t, np.iinfo(np.int64).max), kind="stable")
            arrival = np.where(v.ok, v.t, arrival)[rows]
            v = v.take(rows)
        clock = np.maximum(np.maximum.accumulate(arrival), self.clock)
        self.clock = int(clock[-1])
        # Observations for all rows at C speed (one shared string per distinct patient, kind,
        # source); the rows the fast path refused are None and go to the scalar gate
        observations: list[Observation | None] = list(map(
            tuple.__new__, repeat(Observation), zip(
                v.patient_id.tolist(), v.kind.tolist(), v.value.tolist(), v.t.tolist(),
                _column(df, "source", rows), _or_none(v.period, np.isnan(v.period)),
                _column(df, "id", rows), _or_none(v.avail, v.avail == NO_TIME),
                v.status.tolist(), _censored(df, rows), strict=True)))
        refused = np.flatnonzero(~v.ok)
        for j in refused.tolist():
            observations[j] = None
        columns = _raw_columns(df)
        raw = _row_dicts(columns, refused if rows is None else rows[refused]) if len(refused) \
            else []
        batch = _Batch(columns, range(n) if rows is None else rows.tolist(), observations, offset,
                       dict(zip(refused.tolist(), raw, strict=True)))
        start = 0
        for pos, event in self._events_within(clock):
            self._rows(batch, start, pos)
            self._apply(event)
            start = pos
        self._rows(batch, start, n)

    def _events_within(self, clock: np.ndarray) -> Iterator[tuple[int, SideEvent]]:
        """Side events due before a row of this chunk, with the row's position."""
        events, n = self.events, len(clock)
        while self.next_event < len(events):
            event = events[self.next_event]
            if event.at_ms is None:
                pos = 0
            else:
                pos = int(np.searchsorted(clock, event.at_ms,
                                          "left" if event.rank == BEFORE else "right"))
            if pos >= n:
                return
            self.next_event += 1
            yield pos, event

    def _apply(self, event: SideEvent) -> None:
        value = event.value
        states = self.result.states
        pid = value.patient_id
        if pid not in self.result.patients:
            self.unseen.add(pid)  # a state made by a side event: see ``_rows``
        if isinstance(value, PatientContext):
            self.result.contexts += 1
            st = apply_context(states.get(pid), value)
            if st is None:  # discharged, or an admission cancelled: forgotten
                gone = states.pop(pid, None)
                if gone is not None:  # the decision a lab panel waits for, before forgetting
                    self.result.alerts.extend(flush(gone, self.th))
                return
            states[pid] = st
            return
        r = step(states.get(pid), value, self.th)
        states[pid] = r.state
        if r.status == "accepted":
            self.result.interventions += 1
        else:
            self.result.intervention_duplicates += 1

    def _rows(self, batch: _Batch, start: int, stop: int) -> None:
        """Rows ``start:stop`` of a chunk (positions in processing order).

        The per-row work is kept to the engine's ``step``: the common outcome (accepted, no
        alert) touches no counter; the others are counted on their own branch. A file's rows
        come in runs of one patient (a vital set, a patient's export), so the state of the
        previous row's patient is reused without a lookup (``step`` updates it in place; the
        bulk gate gives one shared string per patient id, so ``is`` recognises it)."""
        observations = batch.observations
        result, th, counts = self.result, self.th, self.counts
        states = result.states
        states_get = states.get
        alerts = result.alerts
        seen, unseen = result.patients, self.unseen
        others = 0  # rows not accepted (refused, duplicates, late, retractions)
        pid: str | None = None  # the previous row's patient, whose state is ``state``
        state: PatientState | None = None
        o: Observation | Retraction | None
        for j, o in enumerate(observations[start:stop], start):
            if o is None:
                checked = normalise(batch.refused[j])
                if isinstance(checked, Rejection):
                    self._reject(batch, j, checked)
                    others += 1
                    continue
                o = checked
            p = o.patient_id
            if p is not pid:
                pid, state = p, states_get(p)
            new_state, raised, status, rejection = step(state, o, th)
            if state is None:
                states[p] = state = new_state
                if status != "rejected":
                    seen.add(p)
            elif unseen and p in unseen and status != "rejected":
                seen.add(p)
                unseen.discard(p)
            if status != "accepted":
                others += 1
                counts[status] += 1
                if status == "rejected":
                    if p not in seen:
                        unseen.add(p)  # its state exists, but no row of it was accepted yet
                else:
                    seen.add(p)
                if rejection is not None:
                    self._reject(batch, j, rejection)
            if raised:  # as the worker: a late reading or a retraction may decide too
                alerts.extend(raised)
        counts["accepted"] += stop - start - others

    def _reject(self, batch: _Batch, j: int, why: Rejection | None) -> None:
        if why is None:
            return
        i = batch.rows[j]
        raw = batch.refused.get(j)
        self.reject({"file": "observations", "row": batch.offset + i + 2, "reason": why.reason,
                     "detail": why.detail,
                     "input": dict(raw) if raw is not None else _row_dict(batch.columns, i)})

    def reject(self, row: dict[str, Any]) -> None:
        """A refused row of any file: counted, then kept or handed to the sink."""
        self.result.rejected[(row.get("file", "observations"), row["reason"])] += 1
        self.on_reject(row)

    def finish(self) -> ReplayResult:
        for event in self.events[self.next_event:]:
            self._apply(event)
        self.next_event = len(self.events)
        result = self.result
        for state in result.states.values():
            result.alerts.extend(flush(state, self.th))
        c = self.counts
        result.accepted = c["accepted"] + c["late"]
        result.duplicates = c["duplicate"]
        result.late = c["late"]
        result.retracted = c["retracted"]
        result.not_retracted = c["not_retracted"]
        if self.keep_canonical:
            result.canonical = (pd.concat(self.canonical, ignore_index=True) if self.canonical
                                else pd.DataFrame(columns=_CANONICAL))
        if self.progress is not None:
            self.progress(result.observations, result.observations)
        return result


def _column(df: pd.DataFrame, column: str, rows: np.ndarray | None) -> list[str]:
    """An optional text column as one Python string per row ("" when absent or empty)."""
    if column not in df:
        return [""] * len(df)
    values = texts(df[column])
    return (values if rows is None else values[rows]).tolist()


def _censored(df: pd.DataFrame, rows: np.ndarray | None) -> list[str]:
    """The optional ``censored`` column ("<" or ">": the value is a reported bound)."""
    if "censored" not in df:
        return [""] * len(df)
    codes, values = distinct(df["censored"])
    marks = np.array([m if m in ("<", ">") else "" for m in values] + [""], dtype=object)[codes]
    return (marks if rows is None else marks[rows]).tolist()


def _or_none(values: np.ndarray, missing: np.ndarray) -> list[Any]:
    """``values`` as Python numbers, None where ``missing``."""
    if not missing.any():
        return values.tolist()
    if missing.all():
        return [None] * len(values)
    out = values.astype(object)
    out[missing] = None
    return out.tolist()


def _without_gc(run: Callable[[], ReplayResult]) -> ReplayResult:
    """The cyclic garbage collector is paused meanwhile: building a million observation tuples
    otherwise triggers it over and over (1.7 s instead of 0.5 s per million rows), and nothing
    the replay allocates forms a reference cycle."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return run()
    finally:
        if was_enabled:
            gc.enable()


def replay_frame(df: pd.DataFrame, contexts: list[dict[str, Any]] | None = None,
                 th: Thresholds = DEFAULT_THRESHOLDS, sort: bool = False,
                 progress: Callable[[int, int | None], None] | None = None,
                 interventions: list[dict[str, Any]] | None = None,
                 keep_canonical: bool = True,
                 on_reject: Callable[[dict[str, Any]], None] | None = None) -> ReplayResult:
    """Run every row of an in-memory frame through normalise + step in file order (or
    event-time order), with the context and intervention rows as side events."""
    return replay_chunks([df], contexts, th, sort=sort, progress=progress,
                         interventions=interventions, keep_canonical=keep_canonical,
                         on_reject=on_reject)


def replay_chunks(chunks: Iterable[pd.DataFrame], contexts: list[dict[str, Any]] | None = None,
                  th: Thresholds = DEFAULT_THRESHOLDS, sort: bool = False,
                  progress: Callable[[int, int | None], None] | None = None,
                  interventions: list[dict[str, Any]] | None = None,
                  keep_canonical: bool = False,
                  on_reject: Callable[[dict[str, Any]], None] | None = None) -> ReplayResult:
    """The replay over consecutive chunks of one file (``iter_observations``): the same
    alerts as one frame of the whole file, in memory bounded by the chunk size.

    ``on_reject``: where each refused row goes, in file order (e.g. ``RejectsWriter.write``);
    None keeps them in ``ReplayResult.rejects``. Either way ``ReplayResult.rejected`` counts
    them by file and reason."""
    def run() -> ReplayResult:
        started = time.perf_counter()
        loop = _Replay(side_input(contexts, interventions), th, keep_canonical, progress,
                       on_reject)
        for df in chunks:
            loop.feed(df, sort=sort)
        result = loop.finish()
        result.seconds = time.perf_counter() - started
        return result

    return _without_gc(run)


# --- output -------------------------------------------------------------------------------------

ALERT_CSV_COLUMNS = ("alert_id", "patient_id", "phase", "previous_phase", "severity", "raised_at",
                     "onset_at", "stay_started_at", "episode", "summary", "evidence", "ward",
                     "bed", "supersedes")


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


class RejectsWriter:
    """Refused rows written one by one as the replay finds them (``.csv``: file, row, reason,
    detail and the input as JSON; otherwise JSON lines), so they are never all in memory."""

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        self._file = p.open("w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._file) if p.suffix.lower() == ".csv" else None
        if self._csv is not None:
            self._csv.writerow(("file", "row", "reason", "detail", "input"))

    def write(self, r: dict[str, Any]) -> None:
        if self._csv is not None:
            self._csv.writerow((r.get("file", "observations"), r["row"], r["reason"],
                                r["detail"], json.dumps(r["input"], default=str)))
        else:
            self._file.write(json.dumps(r, default=str) + "\n")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RejectsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_rejects(rejects: list[dict[str, Any]], path: str | Path) -> None:
    with RejectsWriter(path) as out:
        for r in rejects:
            out.write(r)


def summary_lines(result: ReplayResult) -> Iterator[str]:
    rate = result.observations / result.seconds if result.seconds else 0.0
    yield (f"patients {len(result.patients):>8}   observations {result.observations:>10}   "
           f"accepted {result.accepted:>10}   duplicates {result.duplicates}   "
           f"late vitals {result.late}"
           + (f"   retracted {result.retracted} (not applied {result.not_retracted})"
              if result.retracted or result.not_retracted else ""))
    if result.contexts or result.interventions:
        yield (f"context events applied {result.contexts}   interventions accepted "
               f"{result.interventions}   duplicates {result.intervention_duplicates}")
    yield f"time {result.seconds:.2f} s   ({rate:,.0f} observations/s)"
    yield "rejected by reason:" + ("" if result.rejected else " none")
    for (file, reason), n in result.rejected.most_common():
        yield f"  {file:<14} {reason:<16} {n:>8}"
    yield "alerts by phase/severity:" + ("" if result.alerts else " none")
    for key, n in sorted(result.alerts_by_phase().items()):
        yield f"  {key:<20} {n:>8}"


class Progress:
    """A one-line progress indicator on a terminal (silent when not a TTY, e.g. in CI)."""

    def __init__(self, stream: TextIO = sys.stderr, what: str = "rows") -> None:
        self.stream = stream
        self.what = what
        self.enabled = stream.isatty()
        self.started = time.perf_counter()
        self.shown = False

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled or (done < 100_000 and not self.shown):
            return
        self.shown = True
        elapsed = time.perf_counter() - self.started
        rate = done / elapsed if elapsed else 0.0
        share = f"{done / total * 100:5.1f} %  " if total else ""
        self.stream.write(f"\r  {share}{done:>12,} {self.what}  {rate:,.0f}/s  "
                          f"{elapsed:6.1f} s ")
        if total is not None and done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _count_only(row: dict[str, Any]) -> None:
    """The sink of refused rows nobody asked for: ``ReplayResult.rejected`` has counted it."""


def run_replay(observations: str, *, patients: str | None = None, out: str | None = None,
               rejects: str | None = None, sort: bool = False, plots: str | None = None,
               thresholds: Thresholds = DEFAULT_THRESHOLDS, quiet: bool = False,
               interventions: str | None = None, engine: str | None = None) -> int:
    """``clsmon replay``: replay a file, write alerts, rejects and plots, print a summary
    (``engine``: the engine's name for it, ``streams.ops.engine.label``).

    The file is read in chunks unless ``sort`` (memory bounded by the chunk, not the file).
    Returns the exit code (0). Raises ``ReplayError`` for a file that cannot be replayed.
    """
    for flag, path in (("--out", out), ("--rejects", rejects)):
        if path and Path(path).is_dir():  # found before the replay, not after it
            raise ReplayError(f"{flag} {path} is a folder: give a file name")
    contexts = read_contexts(patients) if patients else None
    given = read_interventions(interventions) if interventions else None
    chunks = [read_observations(observations)] if sort else iter_observations(observations)
    # refused rows go to their file as they are found, or are only counted: never all kept
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(RejectsWriter(rejects)).write if rejects else _count_only
        result = replay_chunks(chunks, contexts, thresholds, sort=sort,
                               progress=None if quiet else Progress(),
                               interventions=given, keep_canonical=bool(plots), on_reject=sink)
    if out:
        write_alerts(result.alerts, out)
    written = 0
    if plots:  # matplotlib is imported only then (~0.5 s of every replay otherwise)
        from streams.offline.plots import write_timelines

        written = len(write_timelines(result, plots, contexts))
    if not quiet:
        for line in summary_lines(result):
            print(line)
        if engine:
            print(f"engine: {engine}")
        if out:
            print(f"alerts written to {out}")
        if rejects:
            print(f"rejected rows written to {rejects}")
        if plots:
            print(f"{written} timeline plots written to {plots}")
    return 0
