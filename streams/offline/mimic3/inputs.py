"""INPUTEVENTS_MV and INPUTEVENTS_CV: blood products, albumin, crystalloids, vasopressors,
inotropes and diuretics as interventions (amount and/or rate, start and end)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from streams.offline.mimic3.mapping import (
    AMOUNT_UNITS,
    CV_ASSUMED_LAST_RATE,
    CV_MAX_RATE_GAP,
    MV_MODES,
    PER_WEIGHT_UNITS,
    RATE_UNITS,
    Items,
    Tally,
    parse_times,
    read_table,
    source_of,
    split_roles,
)

# --- interventions -------------------------------------------------------------------------------

def convert_rates(df: pd.DataFrame, rate_col: str, unit_col: str, target: pd.Series,
                  weight_kg: pd.Series | None = None) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(rate in the item's canonical rate unit, that unit, mask of rates that cannot convert).
    A mcg/min rate of a mcg/kg/min drug is divided by the weight when one is given."""
    src = df[unit_col].fillna("").astype(str).str.lower()
    conv = src.map({k: v[0] for k, v in RATE_UNITS.items()})
    factor = src.map({k: v[1] for k, v in RATE_UNITS.items()})
    if weight_kg is not None:
        per_kg = src.map(PER_WEIGHT_UNITS)
        usable = per_kg.notna() & (weight_kg > 0)
        conv = conv.where(~usable, per_kg)
        factor = factor.where(~usable, 1.0 / weight_kg)
    has_rate = df[rate_col].notna()
    bad = has_rate & (conv.isna() | (conv != target))
    return (df[rate_col] * factor).where(has_rate & ~bad), target.where(has_rate, ""), bad


def mv_interventions(directory: Path, items: Items, tally: Tally) -> pd.DataFrame:
    """MetaVision: each row is a period (STARTTIME-ENDTIME) with its amount and constant rate.
    'Rewritten' rows were replaced by a corrected order and are dropped (also every row with a
    CANCELREASON); 'Changed', 'Paused', 'Stopped', 'FinishedRunning', 'Flushed' are real."""
    table = "inputevents_mv"
    mapping = items.table(table, roles=("intervention",))
    df = read_table(directory, "INPUTEVENTS_MV",
                    dtype={c: "string" for c in ("STARTTIME", "ENDTIME", "STORETIME",
                                                 "AMOUNTUOM", "RATEUOM")})
    tally.read[table] += len(df)
    df = split_roles(df, table, items, tally, keep=("intervention",))
    df = tally.refuse(df, df["STATUSDESCRIPTION"] == "Rewritten", table, "rewritten_order")
    df = tally.refuse(df, df["CANCELREASON"].fillna(0) != 0, table, "cancelled")
    df = tally.refuse(df, df["AMOUNT"] < 0, table, "negative_amount")
    df = tally.refuse(df, (df["AMOUNT"].fillna(0) == 0) & (df["RATE"].fillna(0) == 0), table,
                      "zero_amount_and_rate")
    amount_unit = df["AMOUNTUOM"].fillna("").str.lower().map(AMOUNT_UNITS)
    expected = df["ITEMID"].map(mapping["unit"])
    df = tally.refuse(df, amount_unit != expected, table, "unexpected_amount_unit")
    rate, rate_unit, bad = convert_rates(df, "RATE", "RATEUOM",
                                         df["ITEMID"].map(mapping["rate_unit"]),
                                         weight_kg=df["PATIENTWEIGHT"])
    df, rate, rate_unit = (tally.refuse(df, bad, table, "unexpected_rate_unit"), rate[~bad],
                           rate_unit[~bad])
    kind = df["ITEMID"].map(mapping["kind"])
    mode = df["ORDERCATEGORYDESCRIPTION"].map(MV_MODES).fillna("unknown")
    # a crystalloid ordered as 'Continuous Med' is the diluent of a drug drip: an infusion,
    # named as such in the agent (642 rows of NaCl 0.9 %, 42 mL on average, in the demo)
    carrier = ((kind == "crystalloid") & (df["ORDERCATEGORYDESCRIPTION"] == "Continuous Med"))
    agent = df["ITEMID"].map(mapping["agent"])
    agent = agent.where(~carrier, agent + " (drug carrier)")
    start, end = parse_times(df["STARTTIME"]), parse_times(df["ENDTIME"])
    return pd.DataFrame({
        "SUBJECT_ID": df["SUBJECT_ID"], "HADM_ID": df["HADM_ID"], "kind": kind,
        "agent": agent, "mode": mode, "t": start, "end": end,
        "amount": df["AMOUNT"], "amount_unit": df["ITEMID"].map(mapping["unit"]),
        "rate": rate, "rate_unit": rate_unit, "source": source_of(table, df["ITEMID"]),
        "id": "mimic3-mv-" + df["ROW_ID"].astype(str), "available": parse_times(df["STORETIME"]),
        "order_id": df["LINKORDERID"].astype("Int64").astype(str),
        "status": df["STATUSDESCRIPTION"].fillna(""), "weight_kg": df["PATIENTWEIGHT"]})


def cv_rate_periods(rates: pd.DataFrame) -> pd.DataFrame:
    """CareVue charts a drip's rate at times, never its end. A rate (> 0, not a 'Stopped' or
    "D/C'd" row) holds until the next charted rate of that item in that stay if it comes within
    CV_MAX_RATE_GAP, else for CV_ASSUMED_LAST_RATE. Consecutive equal rates are merged."""
    r = rates.sort_values(["stay", "ITEMID", "t"]).copy()
    nxt = r.groupby(["stay", "ITEMID"])["t"].shift(-1)
    on = (r["rate"] > 0) & ~r["STOPPED"].isin(["Stopped", "D/C'd"])
    close = (nxt - r["t"]) <= CV_MAX_RATE_GAP
    r["end"] = nxt.where(close, r["t"] + CV_ASSUMED_LAST_RATE)
    r["end_assumed"] = ~close
    r = r[on]
    # merge runs: same stay/item, same rate, contiguous
    prev_end = r.groupby(["stay", "ITEMID"])["end"].shift(1)
    prev_rate = r.groupby(["stay", "ITEMID"])["rate"].shift(1)
    new_run = ~((prev_end == r["t"]) & (prev_rate == r["rate"]))
    r["run"] = new_run.cumsum()
    agg = r.groupby("run").agg(
        SUBJECT_ID=("SUBJECT_ID", "first"), HADM_ID=("HADM_ID", "first"), stay=("stay", "first"),
        ITEMID=("ITEMID", "first"), t=("t", "first"), end=("end", "last"),
        rate=("rate", "first"), rate_unit=("rate_unit", "first"),
        available=("available", "first"), id=("rid", "first"), n=("rid", "size"),
        end_assumed=("end_assumed", "last"))
    return agg.reset_index(drop=True)


def cv_interventions(directory: Path, items: Items, tally: Tally) -> pd.DataFrame:
    """CareVue: rows are charted amounts (mL or mg at CHARTTIME, start and end unknown) or drip
    rates. Drip rates become periods (cv_rate_periods); an amount charted inside a period of the
    same drug is the hourly tally of that drip and is dropped; other amounts are single doses."""
    table = "inputevents_cv"
    mapping = items.table(table, roles=("intervention",))
    df = read_table(directory, "INPUTEVENTS_CV", low_memory=False,
                    dtype={c: "string" for c in ("CHARTTIME", "STORETIME", "AMOUNTUOM",
                                                 "RATEUOM", "STOPPED")})
    tally.read[table] += len(df)
    df = split_roles(df, table, items, tally, keep=("intervention",))
    df = df.assign(t=parse_times(df["CHARTTIME"]), available=parse_times(df["STORETIME"]),
                   stay=df["ICUSTAY_ID"].fillna(-df["HADM_ID"]).astype("int64"),
                   rid="mimic3-cv-" + df["ROW_ID"].astype(str))
    df = tally.refuse(df, df["AMOUNT"].isna() & df["RATE"].isna(), table,
                      "no_amount_no_rate_(stop_marker)")
    df = tally.refuse(df, df["t"].isna(), table, "bad_time")
    is_rate = df["RATE"].notna()
    rates, amounts = df[is_rate], df[~is_rate]
    # rate rows -> periods
    rate, rate_unit, bad = convert_rates(rates, "RATE", "RATEUOM",
                                         rates["ITEMID"].map(mapping["rate_unit"]))
    rates = tally.refuse(rates.assign(rate=rate, rate_unit=rate_unit), bad, table,
                         "unexpected_rate_unit")
    periods = cv_rate_periods(rates)
    tally.fold(table, "rate_rows_merged_into_periods_or_ending_them", len(rates) - len(periods))
    # amount rows: inside a drip period of the same item = the drip's hourly tally
    amounts = tally.refuse(amounts, amounts["AMOUNT"] <= 0, table, "zero_amount")
    amount_unit = amounts["AMOUNTUOM"].fillna("").str.lower().map(AMOUNT_UNITS)
    amounts = tally.refuse(amounts, amount_unit.notna() &
                           (amount_unit != amounts["ITEMID"].map(mapping["unit"])), table,
                           "unexpected_amount_unit")
    inside = pd.Series(False, index=amounts.index)
    if not periods.empty and not amounts.empty:
        m = (amounts.reset_index()[["index", "stay", "ITEMID", "t"]]
             .merge(periods[["stay", "ITEMID", "t", "end"]], on=["stay", "ITEMID"],
                    suffixes=("", "_p")))
        hit = m[(m["t"] >= m["t_p"]) & (m["t"] <= m["end"] + CV_ASSUMED_LAST_RATE)]
        inside.loc[hit["index"].unique()] = True
    amounts = tally.refuse(amounts, inside, table, "amount_during_own_infusion_(hourly_tally)")
    kind_a = amounts["ITEMID"].map(mapping["kind"])
    doses = pd.DataFrame({
        "SUBJECT_ID": amounts["SUBJECT_ID"], "HADM_ID": amounts["HADM_ID"], "kind": kind_a,
        "agent": amounts["ITEMID"].map(mapping["agent"]),
        # CareVue charts fluid volumes at a time: bolus or maintenance cannot be told apart
        "mode": np.where(kind_a.isin(["vasopressor", "inotrope", "diuretic"]), "bolus",
                         "unknown"),
        "t": amounts["t"], "end": pd.NaT, "amount": amounts["AMOUNT"],
        "amount_unit": amounts["ITEMID"].map(mapping["unit"]), "rate": np.nan, "rate_unit": "",
        "source": source_of(table, amounts["ITEMID"]), "id": amounts["rid"],
        "available": amounts["available"], "order_id": amounts["LINKORDERID"].astype("Int64")
        .astype(str), "status": amounts["STOPPED"].fillna(""), "weight_kg": np.nan})
    drips = pd.DataFrame({
        "SUBJECT_ID": periods["SUBJECT_ID"], "HADM_ID": periods["HADM_ID"],
        "kind": periods["ITEMID"].map(mapping["kind"]),
        "agent": periods["ITEMID"].map(mapping["agent"]), "mode": "infusion", "t": periods["t"],
        "end": periods["end"], "amount": np.nan, "amount_unit": "", "rate": periods["rate"],
        "rate_unit": periods["rate_unit"], "source": source_of(table, periods["ITEMID"]),
        "id": periods["id"],  # the period's first rate row
        "available": periods["available"], "order_id": "",
        "status": np.where(periods["end_assumed"], "end_assumed", ""), "weight_kg": np.nan})
    return pd.concat([doses, drips], ignore_index=True)


