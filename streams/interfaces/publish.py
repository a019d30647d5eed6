"""``clsmon publish FILE``: a file of observations, FHIR resources or HL7 v2 messages to the
input topics, for interface engineers to test with.

The format is told from the content (``--format`` overrides): Parquet (by its magic bytes),
HL7 v2 (MLLP-framed, or plain text starting with ``MSH|``, several messages, any line
endings, ``FHS``/``BHS`` batch envelopes skipped), JSON (one FHIR resource or Bundle, or JSON
lines of contract records or FHIR resources), else CSV (the replay's long format). Every record
goes through the same mapping as the listener and the worker (``hl7.inbound``, ``fhir.inbound``,
``detectors.observation``) before it is sent: what would be refused is printed with its reason
(line, field or FHIRPath) and not sent. ``--dry-run`` only validates. Records are keyed by
patient and stamped with per-patient increasing timestamps (the worker's arrival order).
Exit code: 0 when everything was accepted, 1 when something was refused, 2 for a file that
cannot be read at all.

``--patients`` and ``--interventions`` take the replay's side files (``clsmon import mimic3``
writes them): their records are sent among the observations where the replay applies them
(``streams.offline.sources``, "Arrival order"), so the worker, which restores each patient's
arrival order from the timestamps, folds them in at the same places and raises the replay's
alerts (admissions months apart are separate stays in both).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from detectors.observation import (
    PatientContext,
    Rejection,
    normalise,
    parse_context,
    parse_time_ms,
)
from streams.interfaces.codes import InterfaceError
from streams.interfaces.fhir.inbound import FhirSettings, is_fhir, read_fhir
from streams.interfaces.hl7.inbound import Hl7Settings, read_message
from streams.kafka.connection import Connectable
from streams.kafka.topics import LAB_KINDS, TopicNames

FORMATS = ("auto", "csv", "parquet", "jsonl", "fhir", "hl7")


@dataclass(slots=True)
class Item:
    """One record to send (role, key, document), or why a piece of the file was refused."""

    where: str  # line / message / FHIRPath, for people
    record: tuple[str, str, dict[str, Any]] | None = None
    refused: str = ""
    reason: str = ""


@dataclass(slots=True)
class Summary:
    sent: dict[str, int] = field(default_factory=dict)
    refused: list[Item] = field(default_factory=list)


def detect(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith((b"\x0b", b"MSH|", b"FHS|", b"BHS|")):
        return "hl7"
    if text.startswith(b"{"):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return "jsonl"
        return "fhir" if is_fhir(doc) else "jsonl"
    if text.startswith(b"["):
        return "fhir"
    return "csv"


def hl7_messages(data: bytes) -> Iterator[bytes]:
    """The messages of an HL7 v2 file: MLLP blocks, or text split at each ``MSH|`` segment."""
    if b"\x0b" in data[:16]:
        for block in data.split(b"\x1c"):
            block = block.strip(b"\r\n ").lstrip(b"\x0b")
            if block:
                yield block
        return
    segments = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
    current: list[bytes] = []
    for seg in segments:
        if seg.startswith((b"FHS|", b"BHS|", b"BTS|", b"FTS|")) or not seg.strip():
            continue
        if seg.startswith(b"MSH|") and current:
            yield b"\r".join(current) + b"\r"
            current = []
        current.append(seg)
    if current:
        yield b"\r".join(current) + b"\r"


def _contract(doc: Any, where: str) -> Item:
    if not isinstance(doc, dict):
        return Item(where, refused="not a JSON object", reason="not_an_object")
    if "kind" in doc:
        checked = normalise(doc)
        if isinstance(checked, Rejection):
            return Item(where, refused=checked.detail, reason=checked.reason)
        return Item(where, ("labs" if checked.kind in LAB_KINDS else "vitals",
                            checked.patient_id, doc))
    context = parse_context(doc)
    if isinstance(context, Rejection):
        return Item(where, refused=context.detail, reason=context.reason)
    return Item(where, ("patients", context.patient_id, doc))


def read_items(path: Path, fmt: str, hl7: Hl7Settings, fhir: FhirSettings) -> Iterator[Item]:
    """Every record of the file, or why a piece of it was refused, in file order."""
    if fmt == "hl7":
        for n, raw in enumerate(hl7_messages(path.read_bytes()), 1):
            reading = read_message(raw, hl7)
            where = f"message {n} ({reading.control_id or '?'})"
            for r in reading.records:
                yield Item(where, (r.role, r.patient_id, r.doc))
            for e in reading.errs:
                yield Item(f"{where} {e.location()}", refused=e.text, reason=e.reason)
    elif fmt == "fhir":
        data = json.loads(path.read_text(encoding="utf-8"))
        for doc in data if isinstance(data, list) else [data]:
            yield from _fhir_items(doc, "document", fhir)
    elif fmt == "jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except ValueError as exc:
                    yield Item(f"line {n}", refused=f"not JSON: {exc}", reason="malformed_json")
                    continue
                if is_fhir(doc):
                    yield from _fhir_items(doc, f"line {n}", fhir)
                else:
                    yield _contract(doc, f"line {n}")
    else:
        from streams.offline.sources import iter_observations

        offset = 0
        for chunk in iter_observations(path):
            for i, row in enumerate(chunk.to_dict("records")):
                doc = {k: v for k, v in row.items() if v is not None and v == v and v != ""}
                yield _contract(doc, f"row {offset + i + 2}")
            offset += len(chunk)


def with_side_events(items: Iterable[Item], patients: str | None,
                     interventions: str | None) -> Iterator[Item]:
    """``items`` with the records of the side files among them, in the replay's order: a
    side event goes out just before the first observation whose running arrival clock
    (``available_at``, else ``observed_at``) reaches its time (a discharge: passes it), one
    without a time first, the rest at the end; rows the side files refuse come first, as
    refusals. Raises ``ReplayError`` for a side file that cannot be read."""
    from streams.offline.sources import read_contexts, read_interventions, side_input

    side = side_input(read_contexts(patients) if patients else None,
                      read_interventions(interventions) if interventions else None)
    for r in side.rejects:
        yield Item(f"{r['file']} row {r['row']}", refused=r["detail"], reason=r["reason"])
    events, k = side.events, 0

    def due(clock: int | None) -> Iterator[Item]:  # clock None: the end, everything is due
        nonlocal k
        while k < len(events):
            e = events[k]
            if clock is not None and not e.due_before(clock):
                return
            k += 1
            role = "patients" if isinstance(e.value, PatientContext) else "interventions"
            yield Item(f"{role} record {e.seq + 1}", (role, e.value.patient_id, e.doc))

    clock: int | None = None
    yield from due(-(2**63))  # the events without a time: before everything
    for item in items:
        if item.record is not None and item.record[0] in ("vitals", "labs"):
            doc = item.record[2]
            arrival = parse_time_ms(doc.get("available_at"))
            if arrival is None:
                arrival = parse_time_ms(doc.get("observed_at"))
            if arrival is not None and (clock is None or arrival > clock):
                clock = arrival
                yield from due(clock)
        yield item
    yield from due(None)


def _fhir_items(doc: Any, where: str, fhir: FhirSettings) -> Iterator[Item]:
    reading = read_fhir(doc, fhir)
    for role, pid, record in reading.records:
        yield Item(where, (role, pid, record))
    for p in reading.problems:
        yield Item(f"{where} {p.path}", refused=p.detail, reason=p.reason)


class _Progress:
    """One line on a terminal, updated at most every 0.2 s; silent otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.enabled, self.last = out, out.isatty(), 0.0
        self.started = time.monotonic()

    def __call__(self, n: int, done: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and not done):
            return
        self.last = now
        rate = n / max(now - self.started, 1e-9)
        self.out.write(f"\r  {n:>10,} records  {rate:,.0f}/s" + ("\n" if done else ""))
        self.out.flush()


def run_publish(path: str, *, bootstrap: Connectable | None, names: TopicNames, fmt: str,
                hl7: Hl7Settings, fhir: FhirSettings, dry_run: bool, partitions: int = 3,
                out: TextIO | None = None, patients: str | None = None,
                interventions: str | None = None) -> int:
    """``clsmon publish``: returns the exit code (see the module docstring)."""
    out = out or sys.stdout
    p = Path(path)
    if not p.is_file():
        raise InterfaceError(f"file not found: {p}")
    fmt = detect(p) if fmt == "auto" else fmt
    publisher = None
    if not dry_run:
        if bootstrap is None:
            raise InterfaceError("--broker is needed (or --dry-run)")
        from streams.kafka.topics import ensure_topics
        from streams.offline.publish import Publisher

        ensure_topics(bootstrap, names, partitions)
        publisher = Publisher(bootstrap, acks="all")
    summary = Summary()
    progress = _Progress(sys.stderr)
    n = 0
    # a worker refuses readings dated more than stream_future_h after its clock (bad_time):
    # de-identified data shifted into the future (MIMIC-III: 2100-2210) would all be refused
    from detectors.config import DEFAULT_THRESHOLDS

    future_after = int(time.time() * 1000 + DEFAULT_THRESHOLDS.stream_future_h * 3_600_000)
    future, first_future = 0, ""
    try:
        items: Iterable[Item] = read_items(p, fmt, hl7, fhir)
        if patients or interventions:
            items = with_side_events(items, patients, interventions)
        for item in items:
            if item.record is None:
                summary.refused.append(item)
                print(f"refused {item.where}: {item.reason}: {item.refused}", file=out)
                continue
            role, pid, doc = item.record
            if role in ("vitals", "labs"):
                at = parse_time_ms(doc.get("observed_at"))
                if at is not None and at > future_after:
                    future += 1
                    first_future = first_future or str(doc.get("observed_at"))
            if publisher is not None:
                publisher.send(getattr(names, role), pid, json.dumps(
                    doc, separators=(",", ":")).encode(), pid)
            summary.sent[role] = summary.sent.get(role, 0) + 1
            n += 1
            progress(n)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InterfaceError(f"{p}: cannot be read as {fmt}: {exc}") from exc
    finally:
        if publisher is not None:
            publisher.close()
    progress(n, done=True)
    verb = "would send" if dry_run else "sent"
    counts = ", ".join(f"{names.prefix}{role} {k}" for role, k in sorted(summary.sent.items()))
    print(f"{p} ({fmt}): {verb} {n} records ({counts or 'none'}); refused "
          f"{len(summary.refused)}", file=out)
    if future:
        print(f"note: {future} readings are dated more than "
              f"{DEFAULT_THRESHOLDS.stream_future_h:g} h after now (the first {first_future}): "
              "a worker dead-letters them as bad_time unless its thresholds raise "
              "stream_future_h (date-shifted data: deploy/thresholds.shifted-dates.toml)",
              file=out)
    return 1 if summary.refused else 0
