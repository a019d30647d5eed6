"""Observation codes and units of the clinical interfaces, read from data files.

``data/codes.csv`` maps (coding system, code) to a clsmon kind: IEEE 11073-10101 MDC numeric
codes (what PCD-01 monitor gateways send in OBX-3) and LOINC (labs, FHIR vital signs). An empty
kind marks a code that is known and deliberately not used (a second heart-rate source, a
compound code). ``data/units.csv`` maps MDC unit codes (OBX-6 ``266016^MDC_DIM_MMHG^MDC``) to
UCUM, which ``detectors.units`` reads; a UCUM unit is passed through unchanged.

Sources of the codes (each row's note): the MDC numbers are partition * 65536 + term code from a
transcription of ISO/IEEE 11073-10101, cross-checked against vendors' PCD-01 examples; 150017-19
are blood pressure with the site unspecified, the arterial ones are 150033-35 and 150037-39.
A site changes the table, not the code: ``CLSMON_CODES`` / ``--codes`` names its own file.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

#: coding-system spellings seen in HL7 v2 (CWE.3) and FHIR (Coding.system), to one short name
SYSTEM_ALIASES = {
    "MDC": "MDC", "URN:ISO:STD:ISO:11073:10101": "MDC", "ISO11073": "MDC",
    "LN": "LN", "LOINC": "LN", "HTTP://LOINC.ORG": "LN",
    "UCUM": "UCUM", "HTTP://UNITSOFMEASURE.ORG": "UCUM",
}
MDC_SYSTEM_URI = "urn:iso:std:iso:11073:10101"


class InterfaceError(ValueError):
    """A setting or file of the clinical interfaces a user can fix (reported in one line)."""


class CodesError(InterfaceError):
    """A code or unit table that cannot be read."""


def system_name(system: str) -> str:
    """The short name of a coding system (``MDC``, ``LN``, ``UCUM``) or the text upper-cased."""
    text = system.strip().upper()
    return SYSTEM_ALIASES.get(text, text)


@dataclass(frozen=True, slots=True)
class CodeTables:
    """(system, code) -> kind ('' = known, not used) and MDC unit code -> UCUM."""

    kinds: dict[tuple[str, str], str]
    units: dict[str, str]

    def kind(self, system: str, code: str) -> str | None:
        """The kind of a code, or None when the code is unknown or deliberately unused."""
        return self.kinds.get((system_name(system), code.strip())) or None

    def known(self, system: str, code: str) -> bool:
        return (system_name(system), code.strip()) in self.kinds

    def ucum(self, mdc_unit: str) -> str | None:
        return self.units.get(mdc_unit.strip())


def _rows(text: str, where: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise CodesError(f"{where}: missing column(s) {', '.join(missing)}")
    return list(reader)


def _read(path: str | Path | None, name: str) -> tuple[str, str]:
    if path is None:
        return resources.files("streams.interfaces").joinpath("data", name).read_text(
            encoding="utf-8"), f"streams/interfaces/data/{name}"
    try:
        return Path(path).read_text(encoding="utf-8"), str(path)
    except OSError as exc:
        raise CodesError(f"cannot read {path}: {exc.strerror or exc}") from exc


def load_tables(codes: str | Path | None = None, units: str | Path | None = None) -> CodeTables:
    """The code and unit tables (the package's unless a file is named).

    Raises:
        CodesError: a file missing, unreadable or without the columns
            ``system, code, kind`` (codes) / ``system, code, ucum`` (units).
    """
    from detectors.units import KINDS

    text, where = _read(codes, "codes.csv")
    kinds: dict[tuple[str, str], str] = {}
    for row in _rows(text, where, ("system", "code", "kind")):
        kind = (row["kind"] or "").strip()
        if kind and kind not in KINDS:
            raise CodesError(f"{where}: kind {kind!r} of {row['system']} {row['code']} is not "
                             f"one of {', '.join(KINDS)}")
        kinds[(system_name(row["system"]), row["code"].strip())] = kind
    text, where = _read(units, "units.csv")
    table = {row["code"].strip(): row["ucum"].strip()
             for row in _rows(text, where, ("system", "code", "ucum"))}
    return CodeTables(kinds, table)
