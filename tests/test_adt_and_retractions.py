"""ADT events (transfer, cancel; ward and bed) and withdrawn results (retractions, corrections)
in the engine: what a monitor gateway and a lab system send besides plain values."""

from __future__ import annotations

from builders import HOUR, T0, obs, run, vitals

from detectors.observation import PatientContext, Rejection, Retraction, normalise, parse_context
from detectors.phases import apply_context, step
from detectors.state import PatientState
from streams.worker.ingest import Refused, ingest


def ctx(**fields) -> PatientContext:
    parsed = parse_context({"patient_id": "p1", **fields})
    assert isinstance(parsed, PatientContext), parsed
    return parsed


def test_a_transfer_moves_the_patient_and_keeps_the_state() -> None:
    st = apply_context(None, ctx(event="admit", sex="F", ward="icu3", bed="07"))
    assert st is not None and (st.ward, st.bed, st.sex) == ("icu3", "07", "F")
    st.episode = 1
    moved = apply_context(st, ctx(event="transfer", ward="icu1", bed="02"))
    assert moved is st and (moved.ward, moved.bed, moved.episode) == ("icu1", "02", 1)
    # a transfer that names no bed clears the old ward's bed; an update keeps what it omits
    assert apply_context(st, ctx(event="transfer", ward="hdu")).bed is None
    assert apply_context(st, ctx(event="update", bed="05")).ward == "hdu"


def test_ward_and_bed_survive_the_changelog() -> None:
    st = apply_context(None, ctx(ward="icu3", bed="07"))
    assert st is not None
    again = PatientState.from_json(st.to_json())
    assert (again.ward, again.bed) == ("icu3", "07")


def test_a_cancelled_admission_forgets_the_patient_like_a_discharge() -> None:
    st = apply_context(None, ctx(ward="icu3"))
    assert apply_context(st, ctx(event="cancel")) is None
    assert apply_context(st, ctx(event="discharge")) is None
    # a cancelled discharge (A13): detection continues, from a fresh state
    back = apply_context(None, ctx(event="cancel", cancels="discharge", ward="icu3"))
    assert back is not None and back.ward == "icu3"


def test_bad_adt_fields_are_refused_with_a_reason() -> None:
    for bad in ({"event": "merge"}, {"event": "cancel", "cancels": "transfer"},
                {"ward": {"x": 1}}, {"bed": "x" * 65}):
        parsed = parse_context({"patient_id": "p1", **bad})
        assert isinstance(parsed, Rejection) and parsed.reason == "bad_context", bad


def leak_course(pid: str = "p1") -> list[dict]:
    """Normal 8 h, then shock with a hemoconcentrated Hct: a leak alert."""
    rows = vitals(0, 8, 120, 85, pid=pid)
    rows += [obs("hematocrit", 40, T0 + HOUR, "%", pid), obs("albumin", 3.8, T0 + HOUR, "g/dL",
                                                                 pid),
             obs("hemoglobin", 13.3, T0 + HOUR, "g/dL", pid)]
    rows += vitals(8, 10, 80, 58, pid=pid)
    # a CBC: the Hb of the draw confirms its Hct (detectors.criteria.hemoconcentration)
    rows += [obs("hematocrit", 55, T0 + 9 * HOUR, "%", pid),
             obs("hemoglobin", 18.3, T0 + 9 * HOUR, "g/dL", pid)]
    rows += vitals(10, 11, 80, 58, pid=pid)
    return rows


def test_alerts_carry_the_ward_and_bed_the_adt_feed_told() -> None:
    alerts, _ = run(leak_course(), {"patient_id": "p1", "sex": "M", "ward": "icu3", "bed": "07"})
    leak = [a for a in alerts if a.phase == "leak"]
    assert leak and leak[0].to_dict()["ward"] == "icu3" and leak[0].to_dict()["bed"] == "07"
    plain, _ = run(leak_course(), {"patient_id": "p1", "sex": "M"})
    assert "ward" not in plain[0].to_dict()
    assert [a.alert_id for a in plain] == [a.alert_id for a in alerts]  # not part of the id


def test_a_retracted_hematocrit_is_taken_out_of_the_window_before_it_decides() -> None:
    rows = leak_course()
    retract = {"patient_id": "p1", "kind": "hematocrit", "observed_at": T0 + 9 * HOUR,
               "status": "entered-in-error", "value": 55, "unit": "%"}
    i = next(i for i, r in enumerate(rows) if r["kind"] == "hematocrit" and r["value"] == 55)
    alerts, state = run([*rows[:i + 1], retract, *rows[i + 1:]], {"patient_id": "p1",
                                                                  "sex": "M"})
    assert [a.phase for a in alerts] == []
    assert state is not None and [r[1] for r in state.labs["hematocrit"]] == [40]
    baseline, _ = run(rows, {"patient_id": "p1", "sex": "M"})
    assert [a.phase for a in baseline] == ["leak"]  # the same course without the retraction


def test_a_retraction_the_engine_cannot_apply_is_reported_not_dropped() -> None:
    st = PatientState("p1")
    r = normalise({"patient_id": "p1", "kind": "sbp", "observed_at": T0,
                   "status": "entered-in-error"})
    assert isinstance(r, Retraction) and r.value is None
    assert step(st, r).status == "not_retracted"  # folded into a 5-minute slot
    gone = normalise({"patient_id": "p1", "kind": "albumin", "observed_at": T0,
                      "status": "entered-in-error", "value": 2.0})
    assert isinstance(gone, Retraction)
    assert step(st, gone).status == "not_retracted"  # never seen


def test_a_retraction_also_leaves_the_baseline() -> None:
    st = PatientState("p1")
    for t, v in ((T0, 40.0), (T0 + 2 * HOUR, 44.0)):
        o = normalise(obs("hematocrit", v, t, "%"))
        step(st, o)
    assert st.blr["hematocrit"] == [[T0, 40.0], [T0 + 2 * HOUR, 44.0]]  # baseline readings
    r = normalise({"patient_id": "p1", "kind": "hematocrit", "observed_at": T0 + 2 * HOUR,
                   "status": "entered-in-error"})
    assert step(st, r).status == "retracted"
    assert st.blr["hematocrit"] == [[T0, 40.0]]


def test_a_corrected_weighing_replaces_the_first_one() -> None:
    st = PatientState("p1")
    step(st, normalise(obs("weight", 80, T0, "kg")))
    step(st, normalise(obs("weight", 70, T0, "kg", status="corrected")))
    assert st.wt == [[T0, 70.0, 0]]  # [t, kg, minutes after t it was known]
    assert st.blr["weight"] == [[T0, 70.0]]


def test_the_stream_gate_refuses_a_superscript_digit_as_bad_time() -> None:
    """Case 11 on the stream: was `internal_error`, is `bad_time` with its reason."""
    value = (b'{"patient_id":"u2","kind":"sbp","value":120,"unit":"mmHg",'
             b'"observed_at":"1764410400000\xc2\xb2"}')
    refused = ingest(b"u2", value, is_context=False)
    assert isinstance(refused, Refused) and refused.rejection.reason == "bad_time"
    retraction = ingest(b"u2", b'{"patient_id":"u2","kind":"hct","status":"entered-in-error",'
                               b'"observed_at":"2026-11-29T10:00:00Z"}', is_context=False)
    assert isinstance(retraction, Retraction) and retraction.kind == "hematocrit"
