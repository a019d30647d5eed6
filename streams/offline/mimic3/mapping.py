"""The MIMIC-III item mapping (a data file, not code), the bookkeeping of every row, and the
small helpers every table reader shares.

The mapping, ``streams/offline/data/mimic3_items.csv``, says per (table, itemid) what a row is:
``observation`` (kind and unit), ``intervention`` (kind, agent, units), ``lab_copy`` (an ICU chart
copy of a LABEVENTS result: never written, only its STORETIME is used) or ``left_out`` (with the
reason in ``notes``). Every id was checked against D_ITEMS / D_LABITEMS; the importer checks the
labels again on every run and reports a mismatch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd


class Mimic3Error(Exception):
    """A directory or mapping file the importer cannot use (reported in one line, exit 2)."""


OBS_COLUMNS = ["patient_id", "observed_at", "kind", "value", "unit", "source", "period_min",
               "id", "available_at", "available_basis", "encounter_id", "censored", "flag"]
INTERVENTION_COLUMNS = ["patient_id", "encounter_id", "kind", "agent", "mode", "started_at",
                        "ended_at", "amount", "amount_unit", "rate", "rate_unit", "source", "id",
                        "available_at", "order_id", "status", "weight_kg"]
PATIENT_COLUMNS = ["patient_id", "encounter_id", "admit", "discharge", "admittime",
                   "dischtime", "sex", "weight_kg", "weight_source", "birth_year", "age_over_89",
                   "age_at_admit", "admission_type", "died_in_hospital"]

MIMIC_TIME = "%Y-%m-%d %H:%M:%S"
CHART_CHUNK_ROWS = 250_000
#: a urine period longer than this is not a collection period but a gap in charting (the
#: replay refuses period_min > 1440)
MAX_URINE_PERIOD_MIN = 24 * 60
#: CareVue drips: a rate holds until the next charted rate if that comes within this gap ...
CV_MAX_RATE_GAP = pd.Timedelta(hours=4)
#: ... otherwise it is assumed to have run for one charting interval
CV_ASSUMED_LAST_RATE = pd.Timedelta(hours=1)
#: a MetaVision chart copy of a lab is at the lab time or 60 min later (daylight saving time)
LAB_COPY_OFFSETS_MIN = (0, 60)
#: ages above 89 are shifted to ~300 years in MIMIC-III: the birth year is not known
MAX_REAL_AGE = 89
KG_PER_LB = 0.45359237

#: rate units as charted -> (canonical rate unit, factor); anything else is refused
RATE_UNITS: dict[str, tuple[str, float]] = {
    "mcg/kg/min": ("mcg/kg/min", 1.0), "mcgkgmin": ("mcg/kg/min", 1.0),
    "units/min": ("units/min", 1.0), "umin": ("units/min", 1.0),
    "units/hour": ("units/min", 1 / 60), "uhr": ("units/min", 1 / 60),
    "mg/hour": ("mg/h", 1.0), "mghr": ("mg/h", 1.0),
    "ml/hour": ("mL/h", 1.0), "mlhr": ("mL/h", 1.0),
}
#: per-minute doses that become per-kg with the patient's weight (MetaVision PATIENTWEIGHT)
PER_WEIGHT_UNITS = {"mcg/min": "mcg/kg/min", "mcgmin": "mcg/kg/min"}
AMOUNT_UNITS = {"ml": "mL", "mg": "mg", "u": "units", "units": "units"}
#: MetaVision order category -> mode (a crystalloid given as 'Continuous Med' is a drug diluent)
MV_MODES = {"Bolus": "bolus", "Drug Push": "bolus", "Continuous IV": "infusion",
            "Continuous Med": "infusion"}
#: the mapping shipped with clsmon (package data)
DEFAULT_ITEMS = "mimic3_items.csv"
#: used only to compare a pound/Fahrenheit reading with a kg/Celsius one at the same time
TO_CANONICAL: dict[str, Callable[[pd.Series], pd.Series]] = {
    "[lb_av]": lambda v: v * KG_PER_LB,
    "[degF]": lambda v: (v - 32.0) * 5.0 / 9.0,
}



@dataclass
class Tally:
    """Rows read per table; rows written per output/kind; rows folded or refused, by reason."""

    read: Counter[str] = field(default_factory=Counter)
    unmapped: Counter[str] = field(default_factory=Counter)
    left_out: Counter[tuple[str, int]] = field(default_factory=Counter)
    lab_copies: int = 0
    written: Counter[tuple[str, str]] = field(default_factory=Counter)
    folded: Counter[tuple[str, str]] = field(default_factory=Counter)
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    def refuse(self, df: pd.DataFrame, mask: pd.Series | np.ndarray, table: str,
               reason: str) -> pd.DataFrame:
        """Count the rows under ``mask`` as refused for ``reason`` and return the others."""
        if isinstance(mask, pd.Series):
            mask = mask.astype("boolean").fillna(False).to_numpy(dtype=bool)
        if mask.any():
            self.refused[(table, reason)] += int(mask.sum())
        return df[~mask]

    def fold(self, table: str, reason: str, n: int) -> None:
        if n:
            self.folded[(table, reason)] += n


# --- the mapping file ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Items:
    """The item mapping (one row per table and itemid)."""

    frame: pd.DataFrame

    @classmethod
    def load(cls, path: Path) -> Items:
        if not path.exists():
            raise Mimic3Error(f"mapping file not found: {path}")
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        need = {"table", "itemid", "label", "role", "kind", "agent", "unit_in_source", "unit",
                "rate_unit", "weight_role", "priority"}
        missing = need - set(df.columns)
        if missing:
            raise Mimic3Error(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        df["itemid"] = df["itemid"].astype(int)
        df["priority"] = pd.to_numeric(df["priority"], errors="coerce").fillna(9).astype(int)
        if df.duplicated(["table", "itemid"]).any():
            raise Mimic3Error(f"{path}: duplicate (table, itemid) rows")
        return cls(df)

    def table(self, table: str, roles: Iterable[str] | None = None) -> pd.DataFrame:
        t = self.frame[self.frame["table"] == table]
        if roles is not None:
            t = t[t["role"].isin(list(roles))]
        return t.set_index("itemid")

    def allowed_units(self, table: str) -> set[str]:
        """'itemid|unit' keys of the accepted source units (several spellings split by '|')."""
        keys = set()
        for itemid, spelled in self.table(table)["unit_in_source"].items():
            for u in spelled.split("|"):
                if u:
                    keys.add(f"{itemid}|{u}")
        return keys

    def check_against_dictionary(self, directory: Path, tally: Tally) -> None:
        """Every id must exist in D_ITEMS / D_LABITEMS with the same label and table."""
        d_items = read_table(directory, "D_ITEMS", usecols=["ITEMID", "LABEL", "LINKSTO"])
        d_lab = read_table(directory, "D_LABITEMS", usecols=["ITEMID", "LABEL"])
        known = {("labevents", int(i)): str(lab)
                 for i, lab in zip(d_lab.ITEMID, d_lab.LABEL, strict=True)}
        known.update({(str(t), int(i)): str(lab) for i, lab, t in
                      zip(d_items.ITEMID, d_items.LABEL, d_items.LINKSTO, strict=True)})
        for r in self.frame.itertuples(index=False):
            label = known.get((r.table, r.itemid))
            if label is None:
                tally.warnings.append(f"item {r.itemid} is not a {r.table} item in the dictionary")
            elif label.strip() != r.label.strip():
                tally.warnings.append(f"item {r.itemid}: label {r.label!r} in the mapping, "
                                      f"{label!r} in the dictionary")


# --- small helpers -------------------------------------------------------------------------------

def table_path(directory: Path, name: str) -> Path:
    """``NAME.csv.gz`` or ``NAME.csv`` (PhysioNet's UPPERCASE names; lower case accepted)."""
    for candidate in (name, name.lower()):
        for suffix in (".csv.gz", ".csv"):
            path = directory / f"{candidate}{suffix}"
            if path.exists():
                return path
    raise Mimic3Error(f"missing table {name}.csv.gz (or {name}.csv) in {directory}")


def read_table(directory: Path, name: str, **kwargs: object) -> pd.DataFrame:
    path = table_path(directory, name)
    try:
        return pd.read_csv(path, **kwargs)
    except ValueError as exc:  # e.g. a column the release does not have
        raise Mimic3Error(f"cannot read {path}: {exc}") from exc


def default_items() -> Path:
    """The mapping file shipped with clsmon."""
    return Path(str(resources.files("streams.offline").joinpath("data", DEFAULT_ITEMS)))


def parse_times(text: pd.Series) -> pd.Series:
    """MIMIC 'YYYY-MM-DD HH:MM:SS' -> datetime64 (NaT where empty or malformed)."""
    return pd.to_datetime(text, format=MIMIC_TIME, errors="coerce")


def iso_z(times: pd.Series) -> pd.Series:
    """datetime64 -> 'YYYY-MM-DDTHH:MM:SSZ' ('' for NaT). The wall clock is written as UTC."""
    out = times.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return out.fillna("")


def clean_float32(values: pd.Series) -> pd.Series:
    """CHARTEVENTS values went through float32 in this release (34.299999237 for 34.3): the
    shortest decimal that round-trips the float32 is the charted value."""
    as32 = values.to_numpy(dtype=np.float32, na_value=np.nan)
    return pd.Series(as32.astype(str), index=values.index).astype(float)


def unit_key(itemid: pd.Series, unit: pd.Series) -> pd.Series:
    return itemid.astype(str) + "|" + unit.fillna("").astype(str)


def bad_unit(df: pd.DataFrame, unit_col: str, allowed: set[str]) -> pd.Series:
    """A source unit that is given and is not one the mapping expects for the item. An empty
    unit is accepted (CareVue leaves many units empty): the mapping's unit is then used."""
    given = df[unit_col].fillna("").astype(str) != ""
    return given & ~unit_key(df["ITEMID"], df[unit_col]).isin(allowed)


def source_of(table: str, itemid: pd.Series) -> pd.Series:
    return f"mimic3:{table}:" + itemid.astype(str)


def split_roles(df: pd.DataFrame, table: str, items: Items, tally: Tally,
                keep: Iterable[str]) -> pd.DataFrame:
    """Count unmapped and left-out rows; return the rows whose role is in ``keep``."""
    roles = df["ITEMID"].map(items.table(table)["role"])
    tally.unmapped[table] += int(roles.isna().sum())
    left = df.loc[roles == "left_out", "ITEMID"].value_counts()
    for itemid, n in left.items():
        tally.left_out[(table, int(itemid))] += int(n)
    # assign before filtering: pandas gives an EMPTY frame the index of an assigned Series
    return df.assign(role=roles)[roles.isin(list(keep)).to_numpy()]


