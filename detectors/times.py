"""The one strict event-time parser: ISO 8601 / RFC 3339, HL7 v2 DTM, epoch milliseconds.

Every time that enters clsmon (an observation's ``observed_at``, an HL7 OBX-14, a FHIR
``effectiveDateTime``) is read here, and a time is either read exactly or refused: never a
shifted instant. Python's ``datetime.fromisoformat`` reads the HL7 DTM ``20261129101500+0100`` as
01:50+01:00 (00:50Z instead of 09:15Z) without an error, and ``int('1764410400000²')`` raises
because ``'²'.isdigit()`` is true; that is why this module exists (issue 15, cases 08 and 11).

Grammars (ASCII digits only: ``[0-9]`` and ``re.ASCII``, so '²', '٢' or '２' never match):

* ``rfc3339``   ``YYYY-MM-DD(T|t| )hh:mm[:ss[(.|,)f{1,9}]](Z|z|±hh:mm|±hhmm|±hh)``: RFC 3339
  plus the unambiguous ISO 8601 extended-format variants (minutes only, comma fraction, offsets
  without a colon);
* ``iso_basic`` ``YYYYMMDDThhmm[ss[(.|,)f{1,9}]](Z|±hhmm|±hh)``: ISO 8601 basic format; the ``T``
  is mandatory, which is what tells it apart from an HL7 DTM;
* ``hl7_dtm``   ``YYYY[MM[DD[HH[MM[SS[.S{1,4}]]]]]][±ZZZZ]`` (HL7 v2.5+ DTM, the TS.1 component);
* ``epoch_ms``  an int (not a bool), a finite float, or the text ``-?[0-9]{1,16}``.

The caller names the grammars a field may use (``JSON_FORMS`` for a JSON ``observed_at``,
``DTM_FORMS`` for an HL7 field): a string of digits is never guessed between an HL7 DTM and
epoch milliseconds.

Refused, with a ``BadTime`` saying what is wrong: no offset (an HL7 sender's zone may be named by
the caller as a ``tzinfo``; then local times that do not exist or are ambiguous at a DST change
are refused), the leap second ``:60`` (epoch ms cannot hold it), hour 24, a day the month does
not have, week and ordinal dates, offsets beyond ±14:00, more than 9 fraction digits, a precision
coarser than ``min_precision`` (default: minute), and, when plausibility is checked (``window``):
an instant outside 1800-2499 or an epoch-ms number that is really epoch seconds.
Sub-millisecond digits are truncated (floor); the precision that was written is returned so a
consumer can tell ``10:15`` from ``10:15:00.000``. Pure: no clock, no I/O; never raises.
"""

from __future__ import annotations

import calendar
import math
import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import NamedTuple

#: [D] plausible instants: 1800-01-01 to 2500-01-01 (UTC). Wider than bedside times need, because
#: de-identified real data is date-shifted (MIMIC-III charts in 2100-2210; its birth dates of
#: patients over 89 lie before 1900); the window still refuses a year 1 or 9999 from a default.
MIN_EPOCH_MS = -5_364_662_400_000  # 1800-01-01T00:00:00Z
MAX_EPOCH_MS = 16_725_225_600_000  # 2500-01-01T00:00:00Z
PLAUSIBLE = (MIN_EPOCH_MS, MAX_EPOCH_MS)
PLAUSIBLE_YEARS = (1800, 2500)  # the same window in years (birth years are checked against it)
#: [D] an epoch-ms number smaller than 10^11 in magnitude (1966-10 to 1973-03) is refused: every
#: date of the window written in epoch SECONDS lands there (1.8e9 s read as ms is 1970-01-21), and
#: no bedside time does
MIN_ABS_EPOCH_MS = 100_000_000_000
MAX_LEN = 64
MAX_OFFSET_MIN = 14 * 60  # UTC-12:00 to UTC+14:00 are the offsets in use (ISO 8601 allows ±14)

PRECISIONS = ("year", "month", "day", "hour", "minute", "second", "fraction")
_RANK = {p: i for i, p in enumerate(PRECISIONS)}
ALL_FORMS = ("rfc3339", "iso_basic", "hl7_dtm", "epoch_ms")
#: a JSON ``observed_at``: ISO 8601 / RFC 3339 or epoch milliseconds, never an HL7 DTM
JSON_FORMS = ("rfc3339", "iso_basic", "epoch_ms")
#: an HL7 v2 DTM field (OBX-14, OBR-7, MSH-7, PID-7)
DTM_FORMS = ("hl7_dtm",)
#: an ISO 8601 text only (FHIR dateTime / instant; a number is not a time there)
ISO_FORMS = ("rfc3339",)


class ParsedTime(NamedTuple):
    """An instant read exactly: epoch milliseconds (UTC) and what the text said about it."""

    epoch_ms: int
    precision: str  # one of PRECISIONS: the finest unit written
    frac_digits: int  # fraction-of-second digits written (0 when none)
    offset_min: int | None  # the offset written in the text; None when the caller's zone applied
    form: str  # the grammar that matched (one of ALL_FORMS)


class BadTime(NamedTuple):
    """Why a time was refused; ``detail`` says what is wrong in words (reason ``bad_time``)."""

    detail: str

    @property
    def reason(self) -> str:
        return "bad_time"


_OFF = r"(?P<off>[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?"
_RFC3339 = re.compile(
    r"(?P<Y>[0-9]{4})-(?P<M>[0-9]{2})-(?P<D>[0-9]{2})[Tt ]"
    r"(?P<h>[0-9]{2}):(?P<m>[0-9]{2})(?::(?P<s>[0-9]{2})(?:[.,](?P<f>[0-9]{1,9}))?)?" + _OFF,
    re.ASCII)
_ISO_BASIC = re.compile(
    r"(?P<Y>[0-9]{4})(?P<M>[0-9]{2})(?P<D>[0-9]{2})T"
    r"(?P<h>[0-9]{2})(?P<m>[0-9]{2})(?:(?P<s>[0-9]{2})(?:[.,](?P<f>[0-9]{1,9}))?)?"
    r"(?P<off>Z|[+-][0-9]{2}(?:[0-9]{2})?)?",
    re.ASCII)
_DTM = re.compile(
    r"(?P<Y>[0-9]{4})(?:(?P<M>[0-9]{2})(?:(?P<D>[0-9]{2})(?:(?P<h>[0-9]{2})(?:(?P<m>[0-9]{2})"
    r"(?:(?P<s>[0-9]{2})(?:\.(?P<f>[0-9]{1,4}))?)?)?)?)?)?(?P<off>[+-][0-9]{4})?",
    re.ASCII)
_EPOCH = re.compile(r"-?[0-9]{1,16}", re.ASCII)
_GRAMMARS = (("rfc3339", _RFC3339), ("iso_basic", _ISO_BASIC), ("hl7_dtm", _DTM))
_EPOCH_DT = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(raw: object, *, forms: tuple[str, ...] = JSON_FORMS,
               min_precision: str = "minute", zone: tzinfo | None = None,
               window: tuple[int, int] | None = PLAUSIBLE) -> ParsedTime | BadTime:
    """Read one event time; never raises.

    Args:
        raw: the value as received (text, int or float; anything else is refused).
        forms: the grammars this field may use (``JSON_FORMS``, ``DTM_FORMS``, ...).
        min_precision: the coarsest precision accepted (``"minute"``: a bedside reading
            timed to the hour cannot be placed in a 5-minute blood-pressure slot).
        zone: the sender's time zone for a text without an offset (HL7 senders that send
            local time); None refuses such a text.
        window: plausible instants ``[lo, hi)`` in epoch ms, and the seconds-for-ms check;
            None turns both off (tests, formats with their own rules).

    Returns:
        ``ParsedTime`` or ``BadTime`` (reason ``bad_time``, with a detail for people).
    """
    result = _parse(raw, forms, min_precision, zone)
    if isinstance(result, BadTime) or window is None:
        return result
    if result.form == "epoch_ms" and abs(result.epoch_ms) < MIN_ABS_EPOCH_MS:
        return BadTime(f"{raw!r} as epoch milliseconds is {_iso(result.epoch_ms)}: "
                       "probably epoch seconds (send milliseconds)")
    lo, hi = window
    if not lo <= result.epoch_ms < hi:
        return BadTime(f"{raw!r} is {_iso(result.epoch_ms)}, outside the plausible "
                       f"{_iso(lo)[:10]} to {_iso(hi)[:10]}")
    return result


def parse_time_ms(raw: object, forms: tuple[str, ...] = JSON_FORMS) -> int | None:
    """Epoch milliseconds of a plausible time in ``forms``, or None (see ``parse_time``)."""
    parsed = parse_time(raw, forms=forms)
    return parsed.epoch_ms if isinstance(parsed, ParsedTime) else None


def format_iso(epoch_ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with a 'Z' (milliseconds only when not zero)."""
    dt = _EPOCH_DT + timedelta(milliseconds=epoch_ms)
    ms = epoch_ms % 1000
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms:03d}Z" if ms else "Z")


def format_dtm(epoch_ms: int, offset_min: int = 0) -> str:
    """Epoch milliseconds as an HL7 DTM with milliseconds and an explicit offset
    (``YYYYMMDDHHMMSS.SSS±ZZZZ``), the form outgoing HL7 messages carry."""
    local = _EPOCH_DT + timedelta(milliseconds=epoch_ms + offset_min * 60_000)
    sign = "-" if offset_min < 0 else "+"
    off = abs(offset_min)
    return (local.strftime("%Y%m%d%H%M%S") + f".{epoch_ms % 1000:03d}"
            + f"{sign}{off // 60:02d}{off % 60:02d}")


# --- internals ------------------------------------------------------------------------------

def _iso(epoch_ms: int) -> str:
    try:
        return format_iso(epoch_ms)
    except OverflowError:
        return f"{epoch_ms} ms"


def _parse(raw: object, forms: tuple[str, ...], min_precision: str,
           zone: tzinfo | None) -> ParsedTime | BadTime:
    if isinstance(raw, bool) or raw is None:
        return BadTime(f"{raw!r} is not a time")
    if isinstance(raw, int | float):
        if "epoch_ms" not in forms:
            return BadTime(f"a number ({raw!r}) is not a time here: expected "
                           f"{_forms_text(forms)}")
        if isinstance(raw, float) and not math.isfinite(raw):
            return BadTime(f"{raw!r} is not a finite number of milliseconds")
        return ParsedTime(math.floor(raw), "fraction", 3, 0, "epoch_ms")
    if not isinstance(raw, str):
        return BadTime(f"expected text or a number, got {type(raw).__name__}")
    text = raw.strip(" \t")
    if not text:
        return BadTime("empty time")
    if len(text) > MAX_LEN:
        return BadTime(f"time text longer than {MAX_LEN} characters")
    if "epoch_ms" in forms and _EPOCH.fullmatch(text):
        return ParsedTime(int(text), "fraction", 3, 0, "epoch_ms")
    for form, grammar in _GRAMMARS:
        if form in forms:
            m = grammar.fullmatch(text)
            if m:
                return _from_fields(form, m.groupdict(), min_precision, zone)
    return BadTime(f"{raw!r} is not {_forms_text(forms)}" + _hint(text, forms))


_FORM_TEXT = {"rfc3339": "ISO 8601 with an offset", "iso_basic": "ISO 8601 basic format",
              "hl7_dtm": "an HL7 DTM (YYYYMMDDHHMM[SS[.S]][+/-ZZZZ])",
              "epoch_ms": "epoch milliseconds"}


def _forms_text(forms: tuple[str, ...]) -> str:
    names = [_FORM_TEXT[f] for f in forms if f != "iso_basic" or "rfc3339" not in forms]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _hint(text: str, forms: tuple[str, ...]) -> str:
    if not text.isascii():
        return " (only ASCII digits 0-9 are read)"
    if "hl7_dtm" not in forms and _DTM.fullmatch(text) and len(text) > 8:
        return " (it looks like an HL7 DTM, which is only read from HL7 fields)"
    return ""


def _offset_minutes(text: str) -> int | BadTime:
    if text in ("Z", "z"):
        return 0
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours = int(digits[:2])
    minutes = int(digits[2:4]) if len(digits) > 2 else 0
    if minutes > 59:
        return BadTime(f"offset {text}: minutes {minutes} > 59")
    total = hours * 60 + minutes
    if total > MAX_OFFSET_MIN:
        return BadTime(f"offset {text} is beyond ±14:00")
    return sign * total


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant, "chrono-Compatible
    Low-Level Date Algorithms"): integer arithmetic, no float, no platform ``time_t``."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _local_to_utc_ms(fields: tuple[int, int, int, int, int, int], frac_ms: int,
                     zone: tzinfo) -> int | BadTime:
    y, mo, d, h, mi, s = fields
    naive = datetime(y, mo, d, h, mi, s)
    early, late = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
    for candidate in (early, late):
        try:
            back = candidate.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
        except (OverflowError, ValueError):  # within hours of year 1 or 9999
            return BadTime(f"local time {naive.isoformat()} cannot be placed in {zone}")
        if back != naive:
            return BadTime(f"local time {naive.isoformat()} does not exist in {zone} "
                           "(skipped at a DST change)")
    if early.utcoffset() != late.utcoffset():
        return BadTime(f"local time {naive.isoformat()} is ambiguous in {zone} "
                       "(repeated at a DST change)")
    return (early - _EPOCH_DT) // timedelta(seconds=1) * 1000 + frac_ms


def _from_fields(form: str, g: dict[str, str | None], min_precision: str,
                 zone: tzinfo | None) -> ParsedTime | BadTime:
    parts = [g.get(k) for k in ("Y", "M", "D", "h", "m", "s")]
    frac = g.get("f") or ""
    given = sum(p is not None for p in parts)
    precision = "fraction" if frac else PRECISIONS[given - 1]
    if _RANK[precision] < _RANK[min_precision]:
        return BadTime(f"precision {precision} is coarser than the {min_precision} required")
    y, mo, d, h, mi, s = (int(p) if p is not None else default
                          for p, default in zip(parts, (0, 1, 1, 0, 0, 0), strict=True))
    if y < 1:
        return BadTime("year 0000 does not exist")
    if not 1 <= mo <= 12:
        return BadTime(f"month {mo:02d} does not exist")
    if not 1 <= d <= calendar.monthrange(y, mo)[1]:
        return BadTime(f"day {d:02d} does not exist in {y:04d}-{mo:02d}")
    if h > 23:
        return BadTime(f"hour {h:02d} out of range (24:00 is refused: say 00:00 of the next day)")
    if mi > 59:
        return BadTime(f"minute {mi:02d} out of range")
    if s == 60:
        return BadTime("leap second :60 cannot be represented in epoch milliseconds")
    if s > 59:
        return BadTime(f"second {s:02d} out of range")
    frac_ms = int(frac.ljust(3, "0")[:3])
    off_text = g.get("off")
    if off_text is None:
        if zone is None:
            return BadTime("no UTC offset (Z or +hh:mm): the instant is unknown")
        local = _local_to_utc_ms((y, mo, d, h, mi, s), frac_ms, zone)
        if isinstance(local, BadTime):
            return local
        return ParsedTime(local, precision, len(frac), None, form)
    off = _offset_minutes(off_text)
    if isinstance(off, BadTime):
        return off
    seconds = ((_days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60 + s - off * 60
    return ParsedTime(seconds * 1000 + frac_ms, precision, len(frac), off, form)
