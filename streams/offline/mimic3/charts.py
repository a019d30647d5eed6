"""CHARTEVENTS (vitals, weights, chart copies of labs), LABEVENTS (the labs), OUTPUTEVENTS
(urine): rows of the mapping's observation items in the replay's long format, every refusal
counted under its reason."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from streams.offline.mimic3.mapping import (
    CHART_CHUNK_ROWS,
    LAB_COPY_OFFSETS_MIN,
    MAX_URINE_PERIOD_MIN,
    TO_CANONICAL,
    Items,
    Tally,
    bad_unit,
    clean_float32,
    parse_times,
    read_table,
    source_of,
    split_roles,
)

# --- CHARTEVENTS ---------------------------------------------------------------------------------

def chart_observations(directory: Path, items: Items, tally: Tally, progress: bool
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Vitals and weights (observations) and the chart copies of labs (for availability)."""
    table = "chartevents"
    mapping = items.table(table)
    allowed = items.allowed_units(table)
    kinds, units, priorities = mapping["kind"], mapping["unit"], mapping["priority"]
    usecols = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "ITEMID", "CHARTTIME",
               "STORETIME", "VALUENUM", "VALUEUOM", "WARNING", "ERROR", "STOPPED"]
    dtypes = {"VALUEUOM": "string", "STOPPED": "string", "CHARTTIME": "string",
              "STORETIME": "string"}
    observations, copies = [], []
    started = time.perf_counter()
    for chunk in read_table(directory, "CHARTEVENTS", usecols=usecols, dtype=dtypes,
                            chunksize=CHART_CHUNK_ROWS):
        tally.read[table] += len(chunk)
        if progress:
            print(f"\r  CHARTEVENTS {tally.read[table]:>10,} rows "
                  f"{time.perf_counter() - started:5.1f} s", end="", file=sys.stderr)
        df = split_roles(chunk, table, items, tally, keep=("observation", "lab_copy"))
        df = df.assign(value=clean_float32(df["VALUENUM"]), t=parse_times(df["CHARTTIME"]),
                       stored=parse_times(df["STORETIME"]))
        is_copy = (df["role"] == "lab_copy").to_numpy()
        cp = df[is_copy & (df["ERROR"] != 1).to_numpy() & df["value"].notna().to_numpy()]
        tally.lab_copies += int(is_copy.sum())
        copies.append(pd.DataFrame({"SUBJECT_ID": cp["SUBJECT_ID"],
                                    "kind": cp["ITEMID"].map(kinds), "t_chart": cp["t"],
                                    "t_store": cp["stored"], "value": cp["value"].round(2)}))
        df = df[~is_copy]
        df = tally.refuse(df, df["ERROR"] == 1, table, "error_flag")
        no_value = df["value"].isna()
        df = tally.refuse(df, no_value & (df["STOPPED"] == "D/C'd"), table,
                          "no_value_discontinued_marker")
        df = tally.refuse(df, df["value"].isna(), table, "no_numeric_value")
        df = tally.refuse(df, bad_unit(df, "VALUEUOM", allowed), table, "unexpected_unit")
        df = tally.refuse(df, df["t"].isna(), table, "bad_time")
        store = df["stored"].where(df["stored"].notna(), df["t"])
        observations.append(pd.DataFrame({
            "SUBJECT_ID": df["SUBJECT_ID"], "HADM_ID": df["HADM_ID"],
            "kind": df["ITEMID"].map(kinds),
            "value": df["value"], "unit": df["ITEMID"].map(units),
            "source": source_of(table, df["ITEMID"]), "id": "mimic3-ce-" + df["ROW_ID"].astype(str),
            "t": df["t"], "available": store.where(store >= df["t"], df["t"]),
            "available_basis": "storetime", "priority": df["ITEMID"].map(priorities),
            "censored": "", "flag": np.where(df["WARNING"] == 1, "warning", ""),
            "period_min": np.nan, "weight_role": df["ITEMID"].map(mapping["weight_role"])}))
    if progress:
        print(file=sys.stderr)
    return pd.concat(observations, ignore_index=True), pd.concat(copies, ignore_index=True)


# --- LABEVENTS -----------------------------------------------------------------------------------

#: '<2.0', '>= 70', 'LESS THAN 1.0', 'GREATER THAN 30, DILUTION AVAILABLE UPON REQUEST'
CENSORED = r"^\s*(<=|>=|<|>|LESS THAN|GREATER THAN)\s*(\d+(?:\.\d+)?)(?:\s*(?:,.*)?)$"
CENSOR_SIGN = {"<": "<", "<=": "<", "LESS THAN": "<", ">": ">", ">=": ">", "GREATER THAN": ">"}


def lab_observations(directory: Path, items: Items, tally: Tally) -> pd.DataFrame:
    """Hct, Hb, WBC, albumin, lactate. A censored result ('<0.5', '>70') is written as its bound
    with censored = '<' or '>'."""
    table = "labevents"
    mapping = items.table(table)
    allowed = items.allowed_units(table)
    df = read_table(directory, "LABEVENTS", dtype={"VALUE": "string", "VALUEUOM": "string",
                                                    "FLAG": "string", "CHARTTIME": "string"})
    tally.read[table] += len(df)
    df = split_roles(df, table, items, tally, keep=("observation",))
    bound = df["VALUE"].str.extract(CENSORED)
    censored = df["VALUENUM"].isna() & bound[0].notna()
    df = df.assign(value=df["VALUENUM"].where(~censored, pd.to_numeric(bound[1])),
                   censored=bound[0].where(censored).map(CENSOR_SIGN).fillna(""),
                   t=parse_times(df["CHARTTIME"]))
    tally.fold(table, "censored_read_as_bound", int(censored.sum()))
    df = tally.refuse(df, df["value"].isna(), table, "no_numeric_value")
    df = tally.refuse(df, bad_unit(df, "VALUEUOM", allowed), table, "unexpected_unit")
    df = tally.refuse(df, df["t"].isna(), table, "bad_time")
    return pd.DataFrame({
        "SUBJECT_ID": df["SUBJECT_ID"], "HADM_ID": df["HADM_ID"],
        "kind": df["ITEMID"].map(mapping["kind"]), "value": df["value"],
        "unit": df["ITEMID"].map(mapping["unit"]), "source": source_of(table, df["ITEMID"]),
        "id": "mimic3-le-" + df["ROW_ID"].astype(str), "t": df["t"], "available": df["t"],
        "available_basis": "charttime", "priority": df["ITEMID"].map(mapping["priority"]),
        "censored": df["censored"], "flag": df["FLAG"].fillna(""), "period_min": np.nan})


def lab_availability(labs: pd.DataFrame, copies: pd.DataFrame) -> pd.DataFrame:
    """LABEVENTS has no STORETIME. Where the ICU chart holds a copy of the result (same patient,
    kind and value, charted at the lab time or 60 min later), the copy's STORETIME minus its
    CHARTTIME is the delay before the result was visible: available = lab time + that delay."""
    if labs.empty or copies.empty:
        return labs
    key = labs.reset_index()[["index", "SUBJECT_ID", "kind", "t", "value"]]
    key = key.assign(value=key["value"].round(2))
    m = key.merge(copies, on=["SUBJECT_ID", "kind", "value"])
    offset = (m["t_chart"] - m["t"]).dt.total_seconds() / 60
    m = m[offset.isin(LAB_COPY_OFFSETS_MIN)].assign(offset=offset)
    m = m.sort_values(["index", "offset"]).drop_duplicates("index")
    delay = (m["t_store"] - m["t_chart"]).clip(lower=pd.Timedelta(0))
    available = pd.Series((m["t"] + delay).to_numpy(), index=m["index"].to_numpy())
    labs = labs.copy()
    labs.loc[available.index, "available"] = available
    labs.loc[available.index, "available_basis"] = "chart_copy_storetime"
    return labs


# --- OUTPUTEVENTS (urine) ------------------------------------------------------------------------

def urine_observations(directory: Path, items: Items, tally: Tally) -> pd.DataFrame:
    """Urine volumes; items charted at the same time in one ICU stay (Foley + nephrostomy) are
    summed; period_min = minutes since the previous urine charting of the same ICU stay (empty
    for the first one, and for a gap over 24 h: the replay then takes it as a start marker)."""
    table = "outputevents"
    df = read_table(directory, "OUTPUTEVENTS", dtype={"VALUEUOM": "string",
                                                       "CHARTTIME": "string",
                                                       "STORETIME": "string"})
    tally.read[table] += len(df)
    df = split_roles(df, table, items, tally, keep=("observation",))
    df = df.assign(t=parse_times(df["CHARTTIME"]), stored=parse_times(df["STORETIME"]))
    df = tally.refuse(df, df["ISERROR"] == 1, table, "error_flag")
    df = tally.refuse(df, df["VALUE"].isna(), table, "no_numeric_value")
    df = tally.refuse(df, df["VALUE"] < 0, table, "negative_volume")
    df = tally.refuse(df, bad_unit(df, "VALUEUOM", items.allowed_units(table)), table,
                      "unexpected_unit")
    df = tally.refuse(df, df["t"].isna(), table, "bad_time")
    df = df.assign(stay=df["ICUSTAY_ID"].fillna(-df["HADM_ID"]).astype("int64"),
                   rid="mimic3-oe-" + df["ROW_ID"].astype(str),
                   src=source_of(table, df["ITEMID"]))
    keys = ["SUBJECT_ID", "HADM_ID", "stay", "t"]
    shared = df.duplicated(keys, keep=False)
    single = df[~shared].rename(columns={"VALUE": "value", "rid": "id", "src": "source"})
    summed = (df[shared].groupby(keys, as_index=False)
              .agg(value=("VALUE", "sum"), stored=("stored", "max"), id=("rid", "+".join),
                   source=("src", lambda s: "+".join(sorted(set(s))))))
    tally.fold(table, "summed_with_another_item_at_the_same_time",
               int(shared.sum()) - len(summed))
    g = pd.concat([single[[*keys, "value", "stored", "id", "source"]], summed],
                  ignore_index=True)
    g = g.sort_values(["stay", "t"])
    gap = g.groupby("stay")["t"].diff().dt.total_seconds() / 60
    too_long = gap > MAX_URINE_PERIOD_MIN
    tally.fold(table, "period_left_empty_first_of_stay", int(gap.isna().sum()))
    tally.fold(table, "period_left_empty_gap_over_24h", int(too_long.sum()))
    store = g["stored"].where(g["stored"].notna(), g["t"])
    return pd.DataFrame({
        "SUBJECT_ID": g["SUBJECT_ID"], "HADM_ID": g["HADM_ID"], "kind": "urine_output",
        "value": g["value"], "unit": "mL", "source": g["source"], "id": g["id"], "t": g["t"],
        "available": store.where(store >= g["t"], g["t"]), "available_basis": "storetime",
        "priority": 1, "censored": "", "flag": "", "period_min": gap.where(~too_long)})


# --- duplicates ----------------------------------------------------------------------------------

def drop_same_time_duplicates(obs: pd.DataFrame, tally: Tally) -> pd.DataFrame:
    """One reading charted under two items at the same minute (226512 kg and 226531 lb, two
    arterial lines with one value): keep the item with the best priority."""
    comparable = obs["value"].astype(float).copy()
    for unit, convert in TO_CANONICAL.items():
        sel = obs["unit"] == unit
        comparable[sel] = convert(comparable[sel])
    obs = obs.assign(_cmp=comparable).sort_values(["SUBJECT_ID", "kind", "t", "priority"])
    key = [obs["SUBJECT_ID"], obs["kind"], obs["t"]]
    first = obs.groupby(key)["_cmp"].transform("first")
    is_first = obs.groupby(key).cumcount() == 0
    tolerance = np.maximum(0.01 * first.abs(), 0.1)
    dup = ~is_first & ((obs["_cmp"] - first).abs() <= tolerance)
    for kind, n in obs.loc[dup, "kind"].value_counts().items():
        tally.refused[("observations", f"duplicate_same_time_other_item:{kind}")] += int(n)
    return obs[~dup].drop(columns="_cmp")


def drop_repeated_admission_weights(obs: pd.DataFrame, tally: Tally) -> pd.DataFrame:
    """CareVue re-charts 'Admit Wt' with the same value days later (10126: 66.8 kg on 07-12,
    07-16, 07-23, 07-25 and 08-16 between daily weights of 75-112 kg). A repeat of the previous
    value of the same admission-weight item in the same admission is not a new weighing."""
    is_adm = obs["weight_role"] == "admission"
    w = obs[is_adm].sort_values(["HADM_ID", "source", "t"])
    prev = w.groupby(["HADM_ID", "source"])["value"].shift(1)
    repeat = pd.Series(False, index=obs.index)
    repeat.loc[w.index] = (w["value"] == prev).astype("boolean").fillna(False).to_numpy(bool)
    return tally.refuse(obs, repeat, "observations", "admission_weight_recharted_same_value")


