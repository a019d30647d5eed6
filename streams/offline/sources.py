"""The replay's inputs: observation files read in chunks, validated in bulk; patient context and
interventions as time-stamped side events merged into the observations' arrival order.

Observations (CSV or Parquet, long format) are read ``chunk_rows`` at a time (pyarrow's streaming
CSV reader, Parquet record batches), so memory does not grow with the file. ``validate`` turns a
chunk into canonical kind/value/time with pandas; every row it refuses goes through the scalar
``detectors.observation.normalise`` in the replay, so reasons are the stream's.

**Arrival order.** A file's rows are in arrival order (as a stream delivers them). Each row's
arrival time is its ``available_at`` when the file has one, else its ``observed_at``; the running
maximum of that time is the replay's clock. A side event (a context row at its ``at``/``admit``/
``discharge`` time, an intervention at its ``available_at``, else ``started_at``) is applied
just before the first row whose clock reaches its time: admissions, updates and interventions
before a row of the same time, a discharge after it. A context row without a time applies before
everything (the context files of earlier versions).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from detectors.interventions import Intervention, parse_intervention
from detectors.observation import (
    STATUSES,
    PatientContext,
    Rejection,
    parse_context,
    parse_time_ms,
)
from detectors.times import (
    JSON_FORMS,
    MAX_EPOCH_MS,
    MIN_ABS_EPOCH_MS,
    MIN_EPOCH_MS,
    ParsedTime,
    parse_time,
)
from detectors.units import KINDS, URINE_MAX_ML_PER_H, canonical_kind, unit_key

REQUIRED = ("patient_id", "observed_at", "kind", "value", "unit")
OPTIONAL = ("source", "period_min", "id", "available_at", "status")
INTERVENTION_REQUIRED = ("patient_id", "kind", "started_at")
#: rows per chunk: ~6 MB of CSV and ~25 MB of observations in flight for a long-format file
#: (the replay's peak memory is set by this, not by the file; bench/chunked_replay_bench.py)
CHUNK_ROWS = 100_000
#: bytes pyarrow's streaming CSV reader parses at a time (one block is one record batch). Its
#: background reader queues up to 32 blocks ahead of the consumer: with 64 MB blocks that was the
#: whole of a 550 MB file in memory; with 1 MB blocks it is 32 MB whatever the file
BLOCK_BYTES = 1 << 20
_FIRST = np.iinfo(np.int64).min
#: ``avail`` of a row without an available_at (epoch ms may be negative: 1800-1969 are real)
NO_TIME = np.iinfo(np.int64).min


class ReplayError(Exception):
    """A file that cannot be replayed at all (missing, unreadable, wrong columns)."""


def _check_columns(path: Path, columns: list[str]) -> None:
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ReplayError(f"{path}: missing column(s) {', '.join(missing)}; "
                          f"expected {', '.join(REQUIRED)} (+ optional {', '.join(OPTIONAL)})")


def _is_parquet(p: Path) -> bool:
    return p.suffix.lower() in (".parquet", ".pq")


def _as_text(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype({c: "string" for c in df.columns if c != "value"})


def read_observations(path: str | Path) -> pd.DataFrame:
    """The whole file at once (``--sort`` and small files); every column as text."""
    p = Path(path)
    if not p.exists():
        raise ReplayError(f"observations file not found: {p}")
    try:
        if _is_parquet(p):
            df = _as_text(pd.read_parquet(p))
        else:
            df = pd.read_csv(p, dtype="string", keep_default_na=False, engine="pyarrow")
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise ReplayError(f"cannot read {p}: {exc}") from exc
    _check_columns(p, list(df.columns))
    return df


def iter_observations(path: str | Path, chunk_rows: int = CHUNK_ROWS,
                      block_bytes: int = BLOCK_BYTES) -> Iterator[pd.DataFrame]:
    """The file in chunks of about ``chunk_rows`` rows, every column as text, in file order
    (a CSV is parsed ``block_bytes`` at a time; a chunk is whole blocks)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise ReplayError(f"observations file not found: {p}")
    try:
        if _is_parquet(p):
            pf = pq.ParquetFile(p)
            _check_columns(p, pf.schema_arrow.names)
            batches: Iterator[pa.RecordBatch] = pf.iter_batches(batch_size=chunk_rows)
        else:
            with p.open("rb") as f:
                header = f.readline().decode("utf-8-sig").strip().split(",")
            names = [h.strip().strip('"') for h in header]
            _check_columns(p, names)
            reader = pacsv.open_csv(
                p, read_options=pacsv.ReadOptions(block_size=block_bytes, use_threads=False),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.string()),
                    strings_can_be_null=False, quoted_strings_can_be_null=False))
            batches = iter(reader)
        pending: list[pa.RecordBatch] = []
        size = 0
        for batch in batches:
            pending.append(batch)
            size += batch.num_rows
            if size >= chunk_rows:
                yield _chunk(pending)
                pending, size = [], 0
        if pending:
            yield _chunk(pending)
    except ReplayError:
        raise
    except Exception as exc:  # pyarrow raises many types for unreadable files
        raise ReplayError(f"cannot read {p}: {exc}") from exc


def _chunk(batches: list[pa.RecordBatch]) -> pd.DataFrame:
    """Arrow batches as a frame of text columns, without copying the strings (pandas' Arrow
    string dtype; converting to Python strings first cost ~0.5 s and ~250 B per row)."""
    table = pa.Table.from_batches(batches).combine_chunks()
    if all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in table.schema.types):
        return table.to_pandas(types_mapper=_ARROW_TEXT.get)
    return _as_text(table.to_pandas())


_ARROW_TEXT = {pa.string(): pd.StringDtype("pyarrow"), pa.large_string(): pd.StringDtype("pyarrow")}


# --- bulk validation ------------------------------------------------------------------------

#: The shapes the vectorised path reads with Arrow: a strict subset of ``detectors.times``'
#: JSON grammar (ASCII digits, 'T' or space, seconds optional, at most 3 fraction digits, 'Z' or
#: an offset within ±14:00). Anything else, and any chunk Arrow refuses (a 30 February, 24:00,
#: a leap second), is read row by row with the scalar parser itself, so the accepted set and
#: the instants are the scalar parser's (tests/test_replay.py pins this with hypothesis).
_FAST_ISO = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,3})?)?"
             r"(Z|[+-](0[0-9]|1[0-3]):?[0-5][0-9]|[+-]14:?00)$")
_FAST_EPOCH = r"^-?[0-9]{1,16}$"
_ARROW_CHUNK = 8192


def _text(column: pd.Series | pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A column as an Arrow string array (no copy for pandas' Arrow strings; other dtypes are
    read as text first, as ``astype("string")`` would)."""
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        arr = column
    else:
        arr = pa.array(column, from_pandas=True)
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            arr = pa.array(column.astype("string"), from_pandas=True)
    return arr


def epoch_ms(times: pd.Series | pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised event time: (epoch ms as int64, ok mask), exactly as
    ``detectors.times.parse_time(..., forms=JSON_FORMS)`` reads each row.

    Each distinct text is parsed once (a vital set shares one time: ~3x fewer to parse)."""
    codes, distinct_times = _encoded(_text(times))
    ms, ok = _epoch_ms(distinct_times)
    return ms[codes], ok[codes]


def _epoch_ms(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    n = len(arr)
    ms = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    iso = pc.fill_null(pc.match_substring_regex(arr, _FAST_ISO), False).to_numpy(
        zero_copy_only=False)
    epoch = np.zeros(n, dtype=bool) if iso.all() else pc.fill_null(
        pc.match_substring_regex(arr, _FAST_EPOCH), False).to_numpy(zero_copy_only=False)
    if epoch.any():
        idx = np.flatnonzero(epoch)
        values = pc.cast(arr.take(pa.array(idx)), pa.int64()).to_numpy(zero_copy_only=False)
        ms[idx] = values
        ok[idx] = np.abs(values) >= MIN_ABS_EPOCH_MS
    rows = np.flatnonzero(iso)
    every = len(rows) == n  # the usual file: every row in the fast shape, no gather needed
    for start in range(0, len(rows), _ARROW_CHUNK):
        idx = rows[start:start + _ARROW_CHUNK]
        part = arr.slice(start, len(idx)) if every else arr.take(pa.array(idx))
        try:
            stamps = pc.cast(part, pa.timestamp("ms", tz="UTC"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            stamps = None
        if stamps is not None and stamps.null_count == 0:
            ms[idx] = stamps.cast(pa.int64()).to_numpy(zero_copy_only=False)
            ok[idx] = True
            continue
        for i in idx:  # a chunk with a row Arrow refuses: the scalar parser, row by row
            parsed = parse_time(arr[int(i)].as_py(), forms=JSON_FORMS)
            if isinstance(parsed, ParsedTime):
                ms[i], ok[i] = parsed.epoch_ms, True
    ok &= (ms >= MIN_EPOCH_MS) & (ms < MAX_EPOCH_MS)
    return ms, ok


def _numbers(column: pd.Series) -> np.ndarray:
    """Floats, NaN where the text is not a number (fast path first: a clean numeric column
    parsed by Arrow, whose accepted spellings Python's ``float`` accepts too)."""
    try:
        arr = pa.array(column, from_pandas=True)
        return pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    try:
        return column.astype("float64").to_numpy(dtype=float, na_value=np.nan)
    except (ValueError, TypeError):
        return pd.to_numeric(column, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def distinct(column: pd.Series | pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list[Any]]:
    """(code of each row, the distinct texts, ``None`` for a missing one): a column of few
    distinct values (patient ids, kinds, units, sources) is then mapped once per value, and
    the rows share one Python string per value instead of one each."""
    codes, values = _encoded(_text(column))
    return codes, values.to_pylist()


def _encoded(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(code of each row, the distinct values, a null among them for missing rows)."""
    if isinstance(arr, pa.ChunkedArray):  # one dictionary for the whole column
        arr = arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    enc = pc.dictionary_encode(arr, null_encoding="encode")
    return enc.indices.to_numpy(zero_copy_only=False), enc.dictionary


def texts(column: pd.Series | pa.Array | pa.ChunkedArray, missing: str = "") -> np.ndarray:
    """Each row's text as an object array of Python strings (``missing`` for a null)."""
    codes, values = distinct(column)
    return np.array([missing if v is None else v for v in values] + [missing],
                    dtype=object)[codes]


class Validated(NamedTuple):
    """The bulk gate's verdict on a chunk, one entry per row (``validate``)."""

    patient_id: np.ndarray  # object: str, whitespace stripped
    kind: np.ndarray  # object: canonical kind or None
    value: np.ndarray  # float: canonical unit, NaN where refused
    t: np.ndarray  # int64: event time, epoch ms
    period: np.ndarray  # float: urine collection minutes, NaN when none
    avail: np.ndarray  # int64: epoch ms the value became available; NO_TIME when none
    status: np.ndarray  # object: a STATUSES word
    ok: np.ndarray  # bool: the fast path accepts the row

    def take(self, order: np.ndarray) -> Validated:
        return Validated(*(a[order] for a in self))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"patient_id": self.patient_id, "kind": self.kind,
                             "value": self.value, "t": self.t, "period": self.period,
                             "avail": self.avail, "status": self.status})


def validate(df: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Canonical kind/value/time for every row the fast path accepts; mask of those rows.

    Columns of the result: patient_id, kind, value, t (event time, epoch ms), period (urine
    minutes or NaN), avail (epoch ms the value became available; ``NO_TIME`` when none), status
    (``final`` when the file has none; a retraction or an unknown status is left to the scalar
    gate).
    """
    v = validate_columns(df)
    return v.frame(), v.ok


def validate_columns(df: pd.DataFrame) -> Validated:
    """``validate`` as arrays (what the replay loop reads; no frame is built)."""
    n = len(df)
    codes, values = distinct(df["patient_id"])
    stripped = np.array([v.strip() if isinstance(v, str) else "" for v in values] + [""],
                        dtype=object)
    pid = stripped[codes]
    ok = (stripped != "")[codes]
    codes, values = distinct(df["kind"])
    kinds = [canonical_kind(v) if isinstance(v, str) else None for v in values]
    kind = np.array(kinds + [None], dtype=object)[codes]
    kind_codes = codes
    value = _numbers(df["value"])
    ok &= np.array([k is not None for k in kinds] + [False])[codes] & np.isfinite(value)
    unit_codes, units = distinct(df["unit"])
    canonical = np.full(n, np.nan)
    pairs = kind_codes.astype(np.int64) * (len(units) + 1) + unit_codes
    for pair in np.unique(pairs):
        k, u = kinds[pair // (len(units) + 1)], units[pair % (len(units) + 1)]
        if k is None:
            continue
        spec = KINDS[k]
        convert = spec.units.get(unit_key(u)) if u else spec.units.get(
            unit_key(spec.canonical_unit))
        if convert is None:
            continue
        idx = np.flatnonzero(pairs == pair)
        given: Any = value[idx]  # the unit converters are plain arithmetic: arrays work too
        converted = np.asarray(convert(given), dtype=float)
        in_range = (converted >= spec.low) & (converted <= spec.high)
        canonical[idx[in_range]] = converted[in_range]
    ok &= np.isfinite(canonical)
    t_ms, t_ok = epoch_ms(df["observed_at"])
    ok &= t_ok
    avail = np.full(n, NO_TIME, dtype=np.int64)
    if "available_at" in df.columns:
        raw = _text(df["available_at"])
        given = _given(raw)
        if given.any():
            idx = np.flatnonzero(given)
            a_ms, a_ok = epoch_ms(raw.filter(pa.array(given)))
            avail[idx] = a_ms
            ok[idx] &= a_ok & (a_ms >= t_ms[idx])
    period = np.full(n, np.nan)
    if "period_min" in df.columns:
        raw = _text(df["period_min"])
        given = _given(raw)
        if given.any():
            period[given] = pd.to_numeric(pd.Series(raw.filter(pa.array(given)).to_pylist()),
                                          errors="coerce").to_numpy(dtype=float)
            is_urine = kind == "urine_output"
            bad = given & (~np.isfinite(period) | (period <= 0) | (period > 1440))
            rate = np.divide(canonical, period / 60.0, out=np.zeros(n), where=period > 0)
            bad |= given & is_urine & (rate > URINE_MAX_ML_PER_H)
            ok &= ~(bad & is_urine)
            period[~is_urine] = np.nan
    if "status" in df.columns:
        codes, values = distinct(df["status"])
        words = ["final" if v is None or v == "" else v for v in values]
        ok &= np.array([w in STATUSES for w in words] + [False])[codes]
        status = np.array(words + ["final"], dtype=object)[codes]
    else:
        status = np.empty(n, dtype=object)
        status.fill("final")  # 10x faster than np.full for an object array
    return Validated(pid, kind, canonical, t_ms, period, avail, status, ok)


def _given(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Rows with a non-empty text."""
    mask = pc.fill_null(pc.not_equal(arr, ""), False)
    if isinstance(mask, pa.ChunkedArray):
        mask = mask.combine_chunks()
    return mask.to_numpy(zero_copy_only=False)


def arrival_ms(norm: pd.DataFrame | Validated, ok: np.ndarray) -> np.ndarray:
    """Each row's arrival time (available_at, else observed_at; rows refused: no time)."""
    if isinstance(norm, Validated):
        t, avail = norm.t, norm.avail
    else:
        t, avail = norm["t"].to_numpy(), norm["avail"].to_numpy()
    return np.where(ok, np.where(avail != NO_TIME, avail, t), _FIRST)


# --- side events: patient context and interventions -------------------------------------------

#: tie-break rank of side events against an observation of the same arrival time
BEFORE, AFTER = 0, 2


@dataclass(frozen=True, slots=True)
class SideEvent:
    """A context or an intervention, applied when the observations' clock reaches ``at_ms``
    (``None``: before everything)."""

    at_ms: int | None
    rank: int  # BEFORE a row of the same time (admit, update, intervention) or AFTER it
    seq: int  # file order among events of the same time
    value: PatientContext | Intervention
    #: the record a stream receives for it (``clsmon publish --patients``): the file's row
    #: without its empty cells; a stay's row becomes its admit and its discharge record
    doc: dict[str, Any]

    def key(self) -> tuple[int, int, int]:
        return (_FIRST if self.at_ms is None else self.at_ms, self.rank, self.seq)

    def due_before(self, clock: int) -> bool:
        """Is it applied before a row whose arrival clock is ``clock``? (At the row's time:
        BEFORE it, AFTER not.) The rule the replay applies to a whole chunk at once with
        ``searchsorted`` (``_Replay._events_within``: side "left" for BEFORE, "right" for
        AFTER); ``clsmon publish --patients`` applies it row by row."""
        return self.at_ms is None or self.at_ms < clock or (
            self.at_ms == clock and self.rank == BEFORE)


@dataclass(slots=True)
class SideInput:
    """The side events of a replay, sorted, and the rows refused while reading them."""

    events: list[SideEvent]
    rejects: list[dict[str, Any]]


def _read_table(path: str | Path, what: str) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise ReplayError(f"{what} file not found: {p}")
    try:
        if _is_parquet(p):
            return _as_text(pd.read_parquet(p)).fillna("")
        return pd.read_csv(p, dtype="string", keep_default_na=False)
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise ReplayError(f"cannot read {p}: {exc}") from exc


def read_contexts(path: str | Path) -> list[dict[str, Any]]:
    """Context rows: ``patient_id, sex, weight_kg, birth_year`` and optionally ``event`` with
    ``at``, or ``admit`` and ``discharge`` times (one row per stay, see ``context_events``)."""
    df = _read_table(path, "patients")
    if "patient_id" not in df.columns:
        raise ReplayError(f"{path}: needs a patient_id column (and sex, weight_kg, birth_year)")
    # a context row needs only patient_id, so the wrong file would pass row by row: the
    # columns of observations or interventions say what it is
    wrong = [c for c in ("kind", "observed_at", "started_at") if c in df.columns]
    if wrong:
        raise ReplayError(f"{path}: is not a patients file: it has {', '.join(wrong)} "
                          "(observations or interventions?)")
    return df.to_dict("records")


def read_interventions(path: str | Path) -> list[dict[str, Any]]:
    """Intervention rows (``patient_id, kind, started_at`` and the optional columns of
    ``detectors.interventions.parse_intervention``)."""
    df = _read_table(path, "interventions")
    missing = [c for c in INTERVENTION_REQUIRED if c not in df.columns]
    if missing:
        raise ReplayError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                          f"{', '.join(INTERVENTION_REQUIRED)}, amount, amount_unit, rate, "
                          "rate_unit, ended_at, ...")
    return df.to_dict("records")


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if v is pd.NA or v == "" else v) for k, v in row.items()}


def context_events(rows: list[dict[str, Any]], side: SideInput, seq: int = 0) -> int:
    """Expand context rows into side events. A row with ``at`` is one event (its ``event``,
    default admit) at that time; a row with ``admit`` (and ``discharge``) is an admit event at
    its admission and a discharge event at its discharge, so a later admission is a new stay;
    a row with neither applies before everything. Returns the next ``seq``."""
    for i, raw in enumerate(rows):
        row = _clean(raw)
        ctx = parse_context(row)
        if isinstance(ctx, Rejection):
            side.rejects.append({"file": "patients", "row": i + 2, "reason": ctx.reason,
                                 "detail": ctx.detail, "input": raw})
            continue
        times: list[tuple[str, str | None]] = []
        if row.get("at") is not None:
            times = [(ctx.event, "at")]
        elif row.get("admit") is not None:
            times = [("admit", "admit")]
            if row.get("discharge") is not None:
                times.append(("discharge", "discharge"))
        else:
            times = [(ctx.event, None)]
        parsed: list[tuple[str, int | None]] = []
        for event, column in times:
            at = None if column is None else parse_time_ms(row[column])
            if column is not None and at is None:
                side.rejects.append({"file": "patients", "row": i + 2, "reason": "bad_time",
                                     "detail": f"{column} {row[column]!r} is not ISO 8601 "
                                               "with an offset or epoch milliseconds",
                                     "input": raw})
                break
            parsed.append((event, at))
        else:
            if len(parsed) == 2 and parsed[1][1] < parsed[0][1]:  # type: ignore[operator]
                side.rejects.append({"file": "patients", "row": i + 2, "reason": "inconsistent",
                                     "detail": f"discharge {row['discharge']} is before admit "
                                               f"{row['admit']}", "input": raw})
                continue
            kept = {k: v for k, v in row.items()
                    if v is not None and k not in ("admit", "discharge")}
            for event, at in parsed:
                rank = AFTER if event == "discharge" else BEFORE
                side.events.append(SideEvent(at, rank, seq, ctx._replace(event=event),
                                             {**kept, "event": event}))
                seq += 1
    return seq


def intervention_events(rows: list[dict[str, Any]], side: SideInput, seq: int = 0) -> int:
    """Validate intervention rows into side events at their availability (else start) time."""
    for i, raw in enumerate(rows):
        iv = parse_intervention(_clean(raw))
        if isinstance(iv, Rejection):
            side.rejects.append({"file": "interventions", "row": i + 2, "reason": iv.reason,
                                 "detail": iv.detail, "input": raw})
            continue
        at = iv.available_at_ms if iv.available_at_ms is not None else iv.started_at_ms
        doc = {k: v for k, v in _clean(raw).items() if v is not None}
        side.events.append(SideEvent(at, BEFORE, seq, iv, doc))
        seq += 1
    return seq


def side_input(contexts: list[dict[str, Any]] | None,
               interventions: list[dict[str, Any]] | None) -> SideInput:
    """Contexts and interventions as one sorted list of side events."""
    side = SideInput([], [])
    seq = context_events(contexts or [], side)
    intervention_events(interventions or [], side, seq)
    side.events.sort(key=SideEvent.key)
    return side
