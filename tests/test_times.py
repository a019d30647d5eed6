"""The strict time parser: every time read exactly or refused with a reason, never shifted.

References the properties are checked against: Python's own datetime arithmetic on the generated
aware datetime (independent of the parser's integer calendar maths) and ciso8601's strict
RFC 3339 mode (a C parser nobody here wrote), plus zoneinfo for local times.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import ciso8601
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from detectors.observation import Observation, Rejection, normalise
from detectors.times import (
    ALL_FORMS,
    DTM_FORMS,
    JSON_FORMS,
    BadTime,
    ParsedTime,
    format_dtm,
    format_iso,
    parse_time,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NINE_FIFTEEN_Z = 1_795_943_700_000  # 2026-11-29T09:15:00Z


def ms_of(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(milliseconds=1)


@pytest.mark.parametrize(("raw", "expected"), [
    ("2026-11-29T10:15:00+01:00", NINE_FIFTEEN_Z),
    ("2026-11-29T09:15:00Z", NINE_FIFTEEN_Z),
    ("2026-11-29T09:15:00z", NINE_FIFTEEN_Z),
    ("2026-11-29 10:15:00+01:00", NINE_FIFTEEN_Z),
    ("2026-11-29 10:15:00+01", NINE_FIFTEEN_Z),
    ("2026-11-29T10:15:00+0100", NINE_FIFTEEN_Z),
    ("2026-11-29T09:15Z", NINE_FIFTEEN_Z),  # minute precision
    ("2026-11-29T09:15:00-00:00", NINE_FIFTEEN_Z),  # RFC 3339: UTC, local offset unknown
    ("20261129T101500+0100", NINE_FIFTEEN_Z),  # ISO 8601 basic format (with its 'T')
    ("2026-11-29T10:15:00.1234567+01:00", NINE_FIFTEEN_Z + 123),  # 7 digits, truncated
    ("2026-11-29T09:15:00.123456789Z", NINE_FIFTEEN_Z + 123),
    ("2026-11-29T10:15:00,5+01:00", NINE_FIFTEEN_Z + 500),
    (str(NINE_FIFTEEN_Z), NINE_FIFTEEN_Z),
    (NINE_FIFTEEN_Z, NINE_FIFTEEN_Z),
    (NINE_FIFTEEN_Z + 0.9, NINE_FIFTEEN_Z),
    ("2150-06-01T12:00:00Z", ms_of(datetime(2150, 6, 1, 12, tzinfo=UTC))),  # MIMIC's shifted
    ("1850-06-01T12:00:00Z", ms_of(datetime(1850, 6, 1, 12, tzinfo=UTC))),  # years are real data
])
def test_times_in_the_json_forms_are_read_exactly(raw: object, expected: int) -> None:
    parsed = parse_time(raw)
    assert isinstance(parsed, ParsedTime), parsed
    assert parsed.epoch_ms == expected


@pytest.mark.parametrize(("raw", "why"), [
    ("20261129101500+0100", "HL7 DTM"),  # fromisoformat: 01:50+01:00, a shifted instant
    ("202611291000+0100", "HL7 DTM"),
    ("2026-11-29T10:15:00", "no UTC offset"),
    ("1764410400000²", "ASCII"),  # case 11: int() raises on it
    ("١٧٦٤٤١٠٤٠٠٠٠٠", "ASCII"),
    ("２０２６-11-29T10:15:00Z", "ASCII"),
    ("2026-11-29T23:59:60Z", "leap second"),
    ("2026-11-29T24:00:00Z", "hour 24"),
    ("2026-02-29T10:00:00Z", "day 29 does not exist"),
    ("2026-13-01T10:00:00Z", "month 13"),
    ("2026-11-29T10:15:00+15:00", "beyond ±14:00"),
    ("2026-11-29T10:15:00+01:60", "minutes 60"),
    ("2026-11-29T10:00:00.123+01:00:00", "is not ISO 8601"),
    ("2026-W48-7T10:00:00Z", "is not ISO 8601"),
    ("2026-333T10:15:00Z", "is not ISO 8601"),
    ("Sun, 29 Nov 2026 10:00:00 GMT", "is not ISO 8601"),
    ("2026-11-29T10:00:00Z[UTC]", "is not ISO 8601"),
    ("2026-11-29T10:00:00.1234567891Z", "is not ISO 8601"),
    ("1764410400000.0", "is not ISO 8601"),
    ("2026-11-29", "is not ISO 8601"),
    ("1764410400", "epoch seconds"),  # seconds sent as milliseconds: 1970-01-21
    (1_764_410_400, "epoch seconds"),
    ("2600-01-01T00:00:00Z", "outside the plausible"),
    ("1799-12-31T23:59:59Z", "outside the plausible"),
    ("", "empty"), (" ", "empty"), (None, "not a time"), (True, "not a time"),
    (float("nan"), "finite"), (float("inf"), "finite"), ([], "expected text"),
    (b"2026-11-29T10:15:00Z", "expected text"),
])
def test_anything_else_is_refused_saying_what_is_wrong(raw: object, why: str) -> None:
    parsed = parse_time(raw)
    assert isinstance(parsed, BadTime), parsed
    assert parsed.reason == "bad_time"
    assert why in parsed.detail


def test_a_valid_iso_time_outside_the_window_is_not_called_invalid() -> None:
    bad = normalise({"patient_id": "p", "kind": "sbp", "value": 120, "unit": "mmHg",
                     "observed_at": "2600-01-01T00:00:00Z"})
    assert isinstance(bad, Rejection) and bad.reason == "bad_time"
    assert "outside the plausible 1800-01-01 to 2500-01-01" in bad.detail
    assert "not ISO 8601" not in bad.detail
    missing = normalise({"patient_id": "p", "kind": "sbp", "value": 120, "unit": "mmHg",
                         "observed_at": "2026-11-29T10:00:00"})
    assert isinstance(missing, Rejection) and "no UTC offset" in missing.detail


def test_an_hl7_dtm_is_read_only_where_the_caller_asks_for_it() -> None:
    parsed = parse_time("20261129101500+0100", forms=DTM_FORMS)
    assert isinstance(parsed, ParsedTime)
    assert parsed.epoch_ms == NINE_FIFTEEN_Z  # 09:15Z, not fromisoformat's 00:50Z
    assert (parsed.precision, parsed.offset_min, parsed.form) == ("second", 60, "hl7_dtm")
    frac = parse_time("20261129101500.1234+0100", forms=DTM_FORMS)
    assert isinstance(frac, ParsedTime)
    assert (frac.epoch_ms, frac.precision, frac.frac_digits) == (NINE_FIFTEEN_Z + 123,
                                                                 "fraction", 4)
    minute = parse_time("202611291015+0100", forms=DTM_FORMS)
    assert isinstance(minute, ParsedTime) and minute.precision == "minute"
    # python-hl7's parse_datetime reads -0030 as +00:30
    west = parse_time("20261129101500-0030", forms=DTM_FORMS)
    assert isinstance(west, ParsedTime) and west.epoch_ms == NINE_FIFTEEN_Z + 90 * 60_000
    for bad in ("2026112910+0100", "20261129", "20261129101500", "20261129101500+0100x",
                "2026-11-29T10:15:00+01:00", "20261129101500.12345+0100", "20261",
                str(NINE_FIFTEEN_Z)):
        assert isinstance(parse_time(bad, forms=DTM_FORMS), BadTime), bad
    # and a digit string in a JSON field is epoch ms or nothing, never a DTM
    assert isinstance(parse_time("202611291015+0100", forms=JSON_FORMS), BadTime)


def test_a_sender_zone_reads_local_dtm_and_refuses_dst_gaps_and_repeats() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    local = parse_time("20261129101500", forms=DTM_FORMS, zone=berlin)
    assert isinstance(local, ParsedTime)
    assert local.epoch_ms == NINE_FIFTEEN_Z and local.offset_min is None
    gap = parse_time("20260329023000", forms=DTM_FORMS, zone=berlin)
    assert isinstance(gap, BadTime) and "does not exist" in gap.detail
    repeat = parse_time("20261025023000", forms=DTM_FORMS, zone=berlin)
    assert isinstance(repeat, BadTime) and "ambiguous" in repeat.detail


def test_precision_coarser_than_a_minute_is_refused_unless_allowed() -> None:
    assert isinstance(parse_time("2026112910+0100", forms=DTM_FORMS), BadTime)
    day = parse_time("20261129+0100", forms=DTM_FORMS, min_precision="day")
    assert isinstance(day, ParsedTime) and day.precision == "day"


def test_outgoing_formats_round_trip() -> None:
    assert format_iso(NINE_FIFTEEN_Z) == "2026-11-29T09:15:00Z"
    assert format_iso(NINE_FIFTEEN_Z + 7) == "2026-11-29T09:15:00.007Z"
    assert format_dtm(NINE_FIFTEEN_Z + 123, 60) == "20261129101500.123+0100"
    back = parse_time(format_dtm(NINE_FIFTEEN_Z + 123, -210), forms=DTM_FORMS)
    assert isinstance(back, ParsedTime) and back.epoch_ms == NINE_FIFTEEN_Z + 123


def test_the_stdlib_behaviour_this_parser_replaces() -> None:
    """Why the parser exists (Python 3.11): a shifted instant and a crash, both silent."""
    shifted = datetime.fromisoformat("20261129101500+0100")
    assert shifted.isoformat() == "2026-11-29T01:50:00+01:00"
    with pytest.raises(ValueError):
        int("1764410400000²")
    assert normalise({"patient_id": "p", "kind": "sbp", "value": 120, "unit": "mmHg",
                      "observed_at": "1764410400000²"}).reason == "bad_time"


# --- properties --------------------------------------------------------------------------------

_offsets = st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-14 * 60, 14 * 60))
aware = st.datetimes(min_value=datetime(1800, 1, 2), max_value=datetime(2499, 12, 30),
                     timezones=_offsets)


def _offset(dt: datetime, style: str) -> str:
    delta = dt.utcoffset()
    assert delta is not None
    total = int(delta // timedelta(minutes=1))
    if total == 0 and style == "Z":
        return "Z"
    sign = "-" if total < 0 else "+"
    h, m = divmod(abs(total), 60)
    return f"{sign}{h:02d}{m:02d}" if style == "basic" else f"{sign}{h:02d}:{m:02d}"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dt=aware, digits=st.integers(0, 9), sep=st.sampled_from(["T", "t", " "]),
       off=st.sampled_from(["colon", "Z", "basic"]))
def test_iso_times_match_datetime_and_ciso8601(dt: datetime, digits: int, sep: str,
                                               off: str) -> None:
    frac = f"{dt.microsecond:06d}987"[:digits]
    text = (dt.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + (f".{frac}" if digits else "")
            + _offset(dt, off))
    parsed = parse_time(text)
    assert isinstance(parsed, ParsedTime), (text, parsed)
    expected = ms_of(dt.replace(microsecond=0)) + int(frac.ljust(3, "0")[:3])
    assert parsed.epoch_ms == expected, text
    if off != "basic" and sep in "Tt":  # strict RFC 3339: the independent C reference
        reference = ciso8601.parse_rfc3339(text)
        assert ms_of(reference) == parsed.epoch_ms


@settings(max_examples=400, deadline=None)
@given(dt=aware, digits=st.integers(0, 4), seconds=st.booleans())
def test_hl7_dtm_matches_datetime(dt: datetime, digits: int, seconds: bool) -> None:
    body = dt.strftime("%Y%m%d%H%M" + ("%S" if seconds else ""))
    frac = f"{dt.microsecond:06d}"[:digits] if seconds else ""
    text = body + (f".{frac}" if frac else "") + _offset(dt, "basic")
    parsed = parse_time(text, forms=DTM_FORMS)
    assert isinstance(parsed, ParsedTime), (text, parsed)
    base = dt.replace(second=dt.second if seconds else 0, microsecond=0)
    assert parsed.epoch_ms == ms_of(base) + int(frac.ljust(3, "0")[:3]), text
    assert parsed.precision == ("fraction" if frac else "second" if seconds else "minute")


@settings(max_examples=300, deadline=None)
@given(local=st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2199, 12, 30)),
       zone=st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe",
                             "Asia/Kolkata", "UTC"]))
def test_local_dtm_with_a_sender_zone_matches_zoneinfo(local: datetime, zone: str) -> None:
    local = local.replace(microsecond=0)
    z = ZoneInfo(zone)
    parsed = parse_time(local.strftime("%Y%m%d%H%M%S"), forms=DTM_FORMS, zone=z)
    early, late = local.replace(tzinfo=z, fold=0), local.replace(tzinfo=z, fold=1)
    exists = all(c.astimezone(UTC).astimezone(z).replace(tzinfo=None) == local
                 for c in (early, late))
    if exists and early.utcoffset() == late.utcoffset():
        assert isinstance(parsed, ParsedTime) and parsed.epoch_ms == ms_of(early)
    else:
        assert isinstance(parsed, BadTime)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789+-:.,TtZz W²٢０\u0660\u06f1\u0966", max_size=32),
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,12})?)?"
                  r"([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?", fullmatch=True),
    st.from_regex(r"[0-9]{4,14}(\.[0-9]{1,6})?([+-][0-9]{4})?", fullmatch=True),
    st.integers(), st.floats(), st.booleans(), st.none(),
))
@example("20261129101500+0100")
@example("1764410400000²")
def test_never_raises_never_reads_non_ascii_and_agrees_with_ciso8601(raw: object) -> None:
    for forms in (JSON_FORMS, DTM_FORMS, ALL_FORMS):
        for window in ((-(2**62), 2**62), None):
            parsed = parse_time(raw, forms=forms, window=window)
            assert isinstance(parsed, ParsedTime | BadTime)
            if not isinstance(parsed, ParsedTime) or not isinstance(raw, str):
                continue
            assert raw.strip(" \t").isascii(), raw
            if parsed.form == "rfc3339":
                try:
                    reference = ciso8601.parse_rfc3339(raw.strip(" \t"))
                except ValueError:
                    continue  # ISO 8601 variants RFC 3339 does not have (space, +hh, minutes)
                assert ms_of(reference) == parsed.epoch_ms, raw


def test_the_observation_gate_keeps_status_and_availability() -> None:
    obs = normalise({"patient_id": "p", "kind": "hematocrit", "value": 52, "unit": "%",
                     "observed_at": "2026-11-29T08:00:00Z", "status": "preliminary",
                     "available_at": "2026-11-29T09:30:00Z"})
    assert isinstance(obs, Observation)
    assert obs.status == "preliminary"
    assert obs.available_at_ms == ms_of(datetime(2026, 11, 29, 9, 30, tzinfo=UTC))
    early = normalise({"patient_id": "p", "kind": "hematocrit", "value": 52, "unit": "%",
                       "observed_at": "2026-11-29T08:00:00Z",
                       "available_at": "2026-11-29T07:00:00Z"})
    assert isinstance(early, Rejection) and early.reason == "inconsistent"
    unknown = normalise({"patient_id": "p", "kind": "hematocrit", "value": 52, "unit": "%",
                         "observed_at": "2026-11-29T08:00:00Z", "status": "amended"})
    assert isinstance(unknown, Rejection) and unknown.reason == "bad_status"
