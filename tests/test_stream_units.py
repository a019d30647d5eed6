"""Broker-free tests of the stream layer: ordering merge, codec, the detector's error path, CLI."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from detectors.config import DEFAULT_THRESHOLDS
from streams.cli import build_parser
from streams.kafka import codec
from streams.kafka.topics import TopicNames
from streams.offline.publish import cohort_messages
from streams.offline.simulator import cohort
from streams.ops.counts import final_counts
from streams.worker import detector as streams_worker
from streams.worker.config import WorkerConfig
from streams.worker.detector import Detector
from streams.worker.metrics import Metrics
from streams.worker.ordering import PartitionMerge
from streams.worker.outputs import Outputs
from streams.worker.store import StateStore

SOURCES = ("p", "v", "l")


def test_merge_restores_timestamp_order_across_sources_in_backlog() -> None:
    now = 10_000  # backlog: every timestamp is old, every source is active
    m: PartitionMerge[str] = PartitionMerge(SOURCES, grace_ms=300, now_ms=now)
    m.push("p", 0, 0, "p0", now)
    for ts in (1, 4, 6):
        m.push("l", ts, ts, f"l{ts}", now)
    assert m.pop_ready(now) == []  # v and p could still deliver something earlier
    for ts in (2, 3, 5, 7):
        m.push("v", ts, ts, f"v{ts}", now)
    m.push("p", 8, 0, "p8", now)
    assert m.pop_ready(now) == ["p0", "l1", "v2", "v3", "l4", "v5", "l6"]
    assert len(m) == 2  # v7 waits: l has not reached 7 and is not silent yet


def test_merge_releases_after_grace_when_a_source_is_silent() -> None:
    m: PartitionMerge[str] = PartitionMerge(SOURCES, grace_ms=300, now_ms=0)
    m.push("v", 1_000, 0, "v", now_ms=1_005)
    assert m.pop_ready(1_100) == []
    assert m.pop_ready(1_305) == ["v"]


def test_merge_never_takes_a_source_with_a_backlog_for_a_silent_one() -> None:
    """However long labs have delivered nothing, a lab partition whose highwater is ahead of
    what the worker received may still hold an earlier message (issue 14, item 8)."""
    m: PartitionMerge[str] = PartitionMerge(SOURCES, grace_ms=300, now_ms=0)
    m.push("v", 1_000, 0, "v", now_ms=1_005)
    caught_up: dict[str, int | None] = {"p": 60_000, "l": None}  # labs: more on the broker
    assert m.pop_ready(60_000, caught_up.get) == []
    m.push("l", 900, 0, "lab", now_ms=60_001)
    assert m.pop_ready(60_002, caught_up.get) == ["lab"]  # labs passed 900, not 1,000
    caught_up["l"] = 1_299  # caught up, but too soon after the vital's time: may still come
    assert m.pop_ready(60_003, caught_up.get) == []
    caught_up["l"] = 1_300  # a fetch response grace_ms after it: nothing earlier can come
    assert m.pop_ready(60_004, caught_up.get) == ["v"]


def test_a_release_asks_the_consumer_once_per_source() -> None:
    """The probe reads the consumer's state on the hot path: a release of many messages asks
    it about each silent source once, and about a source that has moved past them never."""
    m: PartitionMerge[str] = PartitionMerge(SOURCES, grace_ms=300, now_ms=0)
    for i in range(5):
        m.push("v", 1_000 + i, i, f"v{i}", now_ms=60_000)
    m.push("l", 2_000, 0, "lab", now_ms=60_000)
    asked: list[str] = []

    def probe(source: str) -> int | None:
        asked.append(source)
        return None if source == "v" else 60_000  # vitals: more on the broker

    assert m.pop_ready(60_000, probe) == ["v0", "v1", "v2", "v3", "v4"]  # the lab waits
    assert asked == ["p", "v"]  # labs are at 2,000, past every vital: never asked


def test_a_source_seen_caught_up_stays_caught_up_for_the_messages_before_it() -> None:
    """Labs seen holding nothing more at 5,000: whatever they deliver later was appended after
    that, so dated 4,700 or later; a vital dated 4,700 or earlier needs no new answer, even
    when labs have more on the broker by now; one dated later does."""
    m: PartitionMerge[str] = PartitionMerge(SOURCES, grace_ms=300, now_ms=0)
    answers: dict[str, int | None] = {"p": 60_000, "l": 5_000}
    asked: list[str] = []

    def probe(source: str) -> int | None:
        asked.append(source)
        return answers[source]

    m.push("v", 1_000, 0, "v1", now_ms=60_000)
    assert m.pop_ready(60_000, probe) == ["v1"]
    answers["l"] = None  # more labs on the broker now
    asked.clear()
    m.push("v", 4_700, 1, "v2", now_ms=60_001)
    m.push("v", 4_701, 2, "v3", now_ms=60_001)
    assert m.pop_ready(60_001, probe) == ["v2"]  # v3 may still have a lab before it
    assert asked == ["l"]  # p (60,000) and l (5,000) were remembered; l asked for v3 only
    m.push("l", 4_800, 0, "lab", now_ms=60_002)
    answers["v"] = None  # vitals: more on the broker, so the lab waits for them
    assert m.pop_ready(60_002, probe) == ["v3"]


def test_a_timestamp_ahead_of_the_arrival_is_clamped_to_it() -> None:
    """A gateway clock a day ahead: its message is merged at its arrival, not held a day."""
    day = 86_400_000
    m: PartitionMerge[str] = PartitionMerge(SOURCES, grace_ms=300, now_ms=0)
    assert m.push("v", 10_000 + day, 0, "future", now_ms=10_000)
    assert not m.push("v", 10_050, 1, "next", now_ms=10_001)  # clock jitter: not counted
    caught_up = {"p": 10_400, "l": 10_400}
    assert m.pop_ready(10_400, caught_up.get) == ["future", "next"]


def test_a_small_lead_keeps_the_order_the_producer_gave() -> None:
    """A producer stamping strictly increasing ms runs a few ms ahead of its clock in a burst;
    the lab it sent after a vital reaches the worker first. Clamping both to their arrival
    would release the lab first and make the vital late."""
    m: PartitionMerge[str] = PartitionMerge(SOURCES, grace_ms=300, now_ms=0)
    assert not m.push("l", 1_011, 0, "lab", now_ms=999)
    assert not m.push("v", 1_010, 0, "vital", now_ms=1_000)
    caught_up = {"p": 1_400, "l": 1_400, "v": 1_400}
    assert m.pop_ready(1_400, caught_up.get) == ["vital", "lab"]


def test_a_message_arriving_after_a_later_one_was_released_is_flagged_behind() -> None:
    """A producer whose record reached the log more than the grace after its timestamp: the
    merge cannot undo the release, but it says so (the worker counts it for ops)."""
    from streams.worker.ordering import Arrival

    m: PartitionMerge[str] = PartitionMerge(SOURCES, grace_ms=300, now_ms=0)
    assert m.push("l", 1_000, 0, "lab", now_ms=1_001, key="ann") == Arrival(0)
    assert m.pop_ready(1_400, {"p": 1_400, "v": 1_400}.get) == ["lab"]
    assert m.push("v", 999, 0, "vital", now_ms=1_500, key="ann") == Arrival.BEHIND
    assert m.push("v", 1_000, 1, "vital2", now_ms=1_500, key="ann") == Arrival(0)
    # another patient's stamps interleave with Ann's by a few ms: no concern of hers
    assert m.push("v", 998, 2, "bob", now_ms=1_500, key="bob") == Arrival(0)
    # but anyone's message an hour behind the merge is
    assert m.push("v", 1_000 - 3_600_001, 3, "eve", now_ms=1_500, key="eve") == Arrival.BEHIND
    assert m.push("v", 90_000, 4, "skewed", now_ms=1_500, key="ann") == Arrival.CLAMPED


def test_merge_ties_follow_source_rank() -> None:
    m: PartitionMerge[str] = PartitionMerge(SOURCES, grace_ms=300, now_ms=10_000)
    m.push("p", 4, 0, "ctx4", 10_000)
    m.push("l", 5, 0, "lab", 10_000)
    m.push("v", 5, 0, "vital", 10_000)
    assert m.pop_ready(10_000) == ["ctx4"]  # p ranks first and could still send ts 5
    m.push("p", 6, 0, "ctx", 10_000)
    assert m.pop_ready(10_000) == ["vital"]  # v could still send another ts 5 before lab
    m.push("v", 6, 1, "vital6", 10_000)
    assert m.pop_ready(10_000) == ["lab"]


def test_decode_and_dead_letter_records() -> None:
    assert codec.decode_object(b'{"a": 1}') == {"a": 1}
    assert codec.decode_object(b"\xff").reason == "malformed_json"
    assert codec.decode_object(b"[]").reason == "not_an_object"
    assert codec.decode_object(None).reason == "malformed_json"
    assert codec.decode_object(b"[" * 100_000).reason == "malformed_json"
    rec = json.loads(codec.dead_letter(key=b"k", value=b"\xff\x00", topic="t", partition=1,
                                       offset=7, reason="malformed_json", detail="d"))
    assert rec["value_encoding"] == "base64" and base64.b64decode(rec["value"]) == b"\xff\x00"
    assert (rec["key"], rec["topic"], rec["partition"], rec["offset"]) == ("k", "t", 1, 7)


# --- the detector with fake Faust objects --------------------------------------------------------

@dataclass
class _Msg:
    topic: str
    partition: int = 0
    offset: int = 0
    timestamp: float = 1_800_000_000.0
    headers: Any = None


@dataclass
class _Event:
    message: _Msg
    key: bytes | None
    value: bytes | None
    acked: bool = False

    def ack(self) -> bool:
        self.acked = True
        return True


@dataclass
class _Topic:
    sent: list[tuple[Any, Any]] = field(default_factory=list)
    options: list[dict[str, Any]] = field(default_factory=list)

    def send_soon(self, key: Any = None, value: Any = None, **kw: Any) -> None:
        self.sent.append((key, value))
        self.options.append(kw)


@dataclass
class _Table:
    data: dict[bytes, bytes] = field(default_factory=dict)
    changelog: list[tuple[int, bytes, bytes | None]] = field(default_factory=list)

    def send_changelog(self, partition: int, key: bytes, value: bytes | None) -> None:
        self.changelog.append((partition, key, value))


def _detector() -> tuple[Detector, Metrics, _Table, _Topic, _Topic]:
    metrics, table, alerts, dead = Metrics(), _Table(), _Topic(), _Topic()
    cfg = WorkerConfig(topic_prefix="u.", grace_ms=0, partitions=1)
    return _new_detector(cfg, metrics, table, alerts, dead), metrics, table, alerts, dead


def _new_detector(cfg: WorkerConfig, metrics: Metrics, table: _Table, alerts: _Topic,
                  dead: _Topic) -> Detector:
    return Detector(cfg, DEFAULT_THRESHOLDS, metrics, StateStore(table),
                    Outputs(alerts, dead, metrics))


def _obs(t: str = "2026-11-25T04:10:00Z") -> bytes:
    return json.dumps({"patient_id": "bed1", "kind": "sbp", "value": 120, "unit": "mmHg",
                       "observed_at": t}).encode()


def test_detector_stores_state_and_acks_after_the_write() -> None:
    det, metrics, table, _, dead = _detector()
    event = _Event(_Msg("u.vitals", offset=1), b"bed1", _obs())
    det.on_event(event, now=1_800_000_001.0)
    assert not event.acked and not table.data  # state and ack wait for the next tick
    det.on_tick(0, now=1_800_000_001.1)
    assert event.acked and b"bed1" in table.data and table.changelog[-1][:2] == (0, b"bed1")
    assert metrics.registry.get_sample_value(
        "clsmon_observations_total", {"kind": "sbp", "outcome": "accepted"}) == 1
    assert dead.sent == []


def test_an_internal_error_is_dead_lettered_counted_and_acked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    det, metrics, _, _, dead = _detector()

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("engine bug")

    monkeypatch.setattr("streams.worker.detector.step", boom)
    event = _Event(_Msg("u.vitals", offset=3), b"bed1", _obs())
    det.on_event(event, now=1_800_000_001.0)  # must not raise
    assert event.acked
    record = json.loads(dead.sent[0][1])
    assert record["reason"] == "internal_error" and "engine bug" in record["detail"]
    assert metrics.registry.get_sample_value(
        "clsmon_dead_letters_total", {"reason": "internal_error"}) == 1


def test_simulate_needs_exactly_one_of_to_and_broker(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for argv in (["simulate"], ["simulate", "--to", "x.csv", "--broker", "h:1"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2
    args = parser.parse_args(["simulate", "--broker", "h:1", "--speed", "60"])
    assert (args.broker, args.speed, args.to) == ("h:1", 60.0, None)
    help_text = parser.format_help()
    for var in ("CLSMON_BROKER", "CLSMON_TOPIC_PREFIX", "CLSMON_METRICS_PORT", "CLSMON_STORE",
                "CLSMON_THRESHOLDS"):
        assert var in help_text


def test_the_ordering_buffer_gauge_follows_the_buffer_through_a_revoke() -> None:
    metrics, table, alerts, dead = Metrics(), _Table(), _Topic(), _Topic()
    cfg = WorkerConfig(topic_prefix="u.", grace_ms=60_000, partitions=1)  # labs may still come
    det = _new_detector(cfg, metrics, table, alerts, dead)
    det.on_event(_Event(_Msg("u.vitals", offset=1), b"bed1", _obs()), now=1_800_000_001.0)
    gauge = metrics.registry.get_sample_value
    assert gauge("clsmon_ordering_buffer_messages") == 1  # held for the silent sources
    det.on_revoked()  # the partition moves: its buffer is dropped (it will be redelivered)
    assert gauge("clsmon_ordering_buffer_messages") == 0


def test_a_lab_panel_is_not_flushed_while_its_partition_holds_messages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A patient counts as quiet (its pending panel decided without the rest) only when nothing
    of its partition waits in the ordering merge: the rest of the panel may be there, or on its
    way (fetched, not yet received)."""
    flushed: list[str] = []
    real_flush = streams_worker.flush

    def recording_flush(state: Any, th: Any) -> Any:
        flushed.append(state.patient_id)
        return real_flush(state, th)

    monkeypatch.setattr(streams_worker, "flush", recording_flush)
    t0 = 1_800_000_000.0
    lab = json.dumps({"patient_id": "bed1", "kind": "hematocrit", "value": 55, "unit": "%",
                      "observed_at": "2026-11-25T04:00:00Z"}).encode()
    for vital_held in (True, False):
        det, *_ = _detector()
        # labs fetched but not received yet; the other topics are caught up
        det.caught_up = lambda topic, partition: None if topic == "u.labs" else int(
            (t0 + 100) * 1000)
        det.on_event(_Event(_Msg("u.labs", offset=0, timestamp=t0), b"bed1", lab), now=t0 + 1)
        assert det._pending.get(0) == {"bed1"}  # the hematocrit waits for the rest of its panel
        if vital_held:
            det.on_event(_Event(_Msg("u.vitals", offset=0, timestamp=t0 + 1), b"bed1", _obs()),
                         now=t0 + 1.1)
            assert len(det._merges[0]) == 1  # held behind the labs on their way
        flushed.clear()
        det.on_tick(0, now=t0 + 10)  # the patient has been quiet for long
        assert flushed == ([] if vital_held else ["bed1"])


def _cohort_events(names: TopicNames) -> list[_Event]:
    """A simulated cohort as the worker would receive it on one partition: offsets per topic,
    timestamps in send order (1 ms apart)."""
    offsets: dict[str, int] = {}
    events = []
    for i, m in enumerate(cohort_messages(cohort(6, seed=11, hours=72), names)):
        offset = offsets[m.topic] = offsets.get(m.topic, -1) + 1
        events.append(_Event(_Msg(m.topic, 0, offset, 1_800_000_000.0 + i / 1000),
                             m.patient_id.encode(), json.dumps(m.doc).encode()))
    return events


def _alert_ids(topic: _Topic) -> set[str]:
    return {json.loads(value)["alert_id"] for _, value in topic.sent}


def _feed(det: Detector, events: list[_Event]) -> None:
    for e in events:  # "now" is the record's time: no patient is ever quiet for a panel flush
        det.on_event(_Event(e.message, e.key, e.value), now=e.message.timestamp)


def test_records_resent_after_a_crash_are_not_folded_in_twice() -> None:
    """At-least-once: the state is written before the offsets are committed, so after a crash
    the records since the last commit come again onto a state that already holds them:
    thousands of them in a backlog. Counted twice they changed alerts (CI, the rebalance test:
    one alert the replay never raised). The alert ids after any crash are the clean run's."""
    names = TopicNames("u.")
    cfg = WorkerConfig(topic_prefix="u.", grace_ms=0, partitions=1)
    events = _cohort_events(names)
    clean_alerts = _Topic()
    clean = _new_detector(cfg, Metrics(), _Table(), clean_alerts, _Topic())
    _feed(clean, events)
    expected = _alert_ids(clean_alerts)
    assert len(expected) >= 4
    for written, resent in ((9000, 2000), (11800, 500)):
        table, alerts, metrics = _Table(), _Topic(), Metrics()
        before = _new_detector(cfg, Metrics(), table, alerts, _Topic())
        _feed(before, events[:written])
        before.on_tick(0, now=events[written - 1].message.timestamp)  # state written
        # the crash: a new worker on the written state, from the last committed offset on
        after = _new_detector(cfg, metrics, table, alerts, _Topic())
        _feed(after, events[written - resent:])
        got = _alert_ids(alerts)
        assert got == expected, (written, resent, got ^ expected)
        assert metrics.registry.get_sample_value(
            "clsmon_observations_total", {"kind": "sbp", "outcome": "duplicate"}) > 0


def test_the_final_counts_line_carries_every_counter_with_its_labels() -> None:
    metrics = Metrics()
    metrics.observations.labels("sbp", "accepted").inc(3)
    metrics.dead_letters.labels("malformed_json").inc()
    counts = final_counts(metrics.registry)
    assert counts['clsmon_observations_total{kind="sbp",outcome="accepted"}'] == 3
    assert counts['clsmon_dead_letters_total{reason="malformed_json"}'] == 1
    assert not any("latency" in name or "buffer" in name for name in counts)  # counters only


def test_a_record_on_another_partition_than_its_key_hashes_to_is_forwarded_there() -> None:
    """A librdkafka producer (CRC32 partitioner) put bed1's vital on a partition that is not
    murmur2(bed1) % 3: it goes, byte for byte with its timestamp, to the right one, so one
    worker holds all of the patient; counted, acknowledged, not processed here."""
    from streams.kafka.topics import HomePartitions

    metrics, table, alerts, dead, vitals = Metrics(), _Table(), _Topic(), _Topic(), _Topic()
    cfg = WorkerConfig(topic_prefix="u.", grace_ms=0, partitions=3)
    det = Detector(cfg, DEFAULT_THRESHOLDS, metrics, StateStore(table),
                   Outputs(alerts, dead, metrics, input_topics={"u.vitals": vitals}))
    home = HomePartitions(3).of(b"bed1")
    stray = _Event(_Msg("u.vitals", partition=(home + 1) % 3, offset=4, timestamp=1_800_000_000.5),
                   b"bed1", _obs())
    det.on_event(stray, now=1_800_000_001.0)
    assert stray.acked and vitals.sent == [(b"bed1", _obs())]
    assert vitals.options[0]["partition"] == home
    assert vitals.options[0]["timestamp"] == 1_800_000_000.5
    sample = metrics.registry.get_sample_value
    assert sample("clsmon_forwarded_total", {"topic": "u.vitals"}) == 1
    assert sample("clsmon_observations_total", {"kind": "sbp", "outcome": "accepted"}) is None
    det.on_event(_Event(_Msg("u.vitals", partition=home, offset=9), b"bed1", _obs()),
                 now=1_800_000_002.0)
    assert len(vitals.sent) == 1 and len(det._merges[home]) + sample(
        "clsmon_observations_total", {"kind": "sbp", "outcome": "accepted"}) == 1


def test_a_batch_the_consumer_could_not_decode_is_dead_lettered_with_its_extent() -> None:
    """The consumer hands an undecodable batch over as one message without key and value
    (streams.kafka.records); the worker dead-letters it with a reason a person can act on."""
    from streams.kafka.records import UndecodableBatch

    det, metrics, _, _, dead = _detector()
    batch = UndecodableBatch(topic="u.vitals", partition=0, offset=40, timestamp=0,
                             timestamp_type=0, key=None, value=None, checksum=None,
                             serialized_key_size=-1, serialized_value_size=-1, headers=[],
                             next_offset=52, codec="zstd",
                             error="UnsupportedCodecError: Libraries for zstd not found")
    det.undecodable = lambda t, p, o: batch if (t, p, o) == ("u.vitals", 0, 40) else None
    event = _Event(_Msg("u.vitals", offset=40), None, None)
    det.on_event(event, now=1_800_000_001.0)
    assert event.acked and len(dead.sent) == 1
    record = json.loads(dead.sent[0][1])
    assert record["reason"] == "undecodable_batch" and record["value_encoding"] == "none"
    assert "offsets 40..51 of u.vitals[0] (compression zstd)" in record["detail"]
    sample = metrics.registry.get_sample_value
    assert sample("clsmon_dead_letters_total", {"reason": "undecodable_batch"}) == 1
    other = _Event(_Msg("u.vitals", offset=41), None, None)  # a null value, not a batch
    det.on_event(other, now=1_800_000_001.0)
    assert json.loads(dead.sent[1][1])["reason"] == "malformed_json"


def test_the_values_of_one_fhir_record_are_all_folded_in_and_skipped_together_when_resent() -> None:
    """A FHIR blood-pressure panel is one record with three values (SBP, DBP, MAP) at one
    offset: the first value's position must not make the other two look resent, and the whole
    record resent after a crash is skipped as a whole."""
    from test_fhir import bp_panel

    cfg = WorkerConfig(topic_prefix="u.", grace_ms=0, partitions=1)
    table = _Table()
    record = json.dumps(bp_panel()).encode()
    counts = []
    for _ in range(2):  # the first worker, then a new one on its written state
        metrics = Metrics()
        det = _new_detector(cfg, metrics, table, _Topic(), _Topic())
        det.on_event(_Event(_Msg("u.vitals", 0, 7, 1_800_000_000.0), b"12345", record),
                     now=1_800_000_000.0)
        det.on_tick(0, now=1_800_000_000.1)
        counts.append({(kind, outcome): metrics.registry.get_sample_value(
            "clsmon_observations_total", {"kind": kind, "outcome": outcome})
            for kind in ("sbp", "dbp", "map") for outcome in ("accepted", "duplicate")})
    assert counts[0] == {("sbp", "accepted"): 1, ("dbp", "accepted"): 1, ("map", "accepted"): 1,
                         ("sbp", "duplicate"): None, ("dbp", "duplicate"): None,
                         ("map", "duplicate"): None}
    assert counts[1] == {("sbp", "accepted"): None, ("dbp", "accepted"): None,
                         ("map", "accepted"): None, ("sbp", "duplicate"): 1,
                         ("dbp", "duplicate"): 1, ("map", "duplicate"): 1}


def test_a_discharge_takes_the_decision_a_lab_panel_waits_for_like_the_replay() -> None:
    """A discharge forgets the patient; the replay first takes the decision a lab panel was
    waiting for (``phases.flush``), and so must the worker, or the alert it decides is lost
    (a newcomer's check: 3 of the MIMIC-III demo's 24 alerts missing in the stream)."""
    import pandas as pd
    from builders import HOUR, T0, obs, vitals

    from detectors.observation import format_time
    from streams.offline import replay as rp

    def cbc(h: int, hct: float) -> list[dict[str, Any]]:  # Hct and Hb of one draw
        return [obs("hematocrit", hct, T0 + h * HOUR, "%", "bed1"),
                obs("hemoglobin", hct / 3, T0 + h * HOUR, "g/dL", "bed1")]

    rows = vitals(0, 8, 120, 85, pid="bed1") + vitals(8, 10.5, 78, 55, pid="bed1") + cbc(1, 40)
    rows.sort(key=lambda r: r["observed_at"])
    rows += cbc(10, 58)  # reported last: its panel waits for more of the draw
    docs = [{**r, "observed_at": format_time(r["observed_at"])} for r in rows]
    discharge = {"patient_id": "bed1", "event": "discharge"}
    replayed = rp.replay_frame(pd.DataFrame(docs).astype("string"),
                               [{**discharge, "at": format_time(T0 + 11 * HOUR)}])
    expected = {a.alert_id for a in replayed.alerts}
    assert expected and replayed.states == {}
    det, _, _, alerts, _ = _detector()
    t = 1_800_000_000.0
    for i, doc in enumerate(docs):
        topic = "u.labs" if doc["kind"] in ("hematocrit", "hemoglobin") else "u.vitals"
        det.on_event(_Event(_Msg(topic, offset=i, timestamp=t + i / 1000), b"bed1",
                            json.dumps(doc).encode()), now=t + i / 1000)
    assert det._pending.get(0) == {"bed1"}  # the last panel waits
    det.on_event(_Event(_Msg("u.patients", offset=0, timestamp=t + 1), b"bed1",
                        json.dumps(discharge).encode()), now=t + 1)
    det.on_tick(0, now=t + 1.001)
    assert _alert_ids(alerts) == expected


def _outcomes(metrics: Metrics) -> dict[tuple[str, ...], float]:
    return {tuple(sorted(s.labels.values())): s.value
            for family in metrics.registry.collect() if family.name == "clsmon_observations"
            for s in family.samples if s.name == "clsmon_observations_total"}


@pytest.mark.parametrize("size", [2, 37, 100, 5000])
def test_a_batch_gives_what_its_messages_give_one_by_one(size: int) -> None:
    """The worker hands the detector a fetched batch at once (streams.kafka.consumer, 11.), and
    the merge is asked what it can release once per batch: the same alerts in the same order,
    the same counts by outcome and the same state as message by message, with the ordering
    grace in play (each batch at the time of its last message)."""
    names = TopicNames("u.")
    cfg = WorkerConfig(topic_prefix="u.", grace_ms=300, partitions=1)
    events = _cohort_events(names)
    runs = []
    for batch_size in (1, size):
        metrics, table, alerts = Metrics(), _Table(), _Topic()
        det = _new_detector(cfg, metrics, table, alerts, _Topic())
        for i in range(0, len(events), batch_size):
            chunk = [_Event(e.message, e.key, e.value) for e in events[i:i + batch_size]]
            det.on_batch(chunk, now=chunk[-1].message.timestamp)
        det.on_tick(0, now=events[-1].message.timestamp + 10)  # the grace is over: all out
        docs = [json.loads(value) for _, value in alerts.sent]
        for doc in docs:
            doc.pop("emitted_at")
        runs.append((docs, _outcomes(metrics), dict(table.data)))
    (one_docs, one_counts, one_state), (docs, counts, state) = runs
    assert len(one_docs) >= 4
    assert docs == one_docs
    assert counts == one_counts
    assert state == one_state


def test_a_tick_in_a_batch_acts_after_every_message_of_the_batch_is_merged() -> None:
    """The agent counts a whole batch received before the detector takes it (the consumer's
    caught-up test), so a tick in the middle of a batch must not release: a source would count
    as caught up while its messages later in the batch are not merged yet."""
    det, metrics, _, _, _ = _detector()
    det.cfg = WorkerConfig(topic_prefix="u.", grace_ms=300, partitions=1)
    det.caught_up = lambda source, partition: 1_800_000_100_000  # every source received
    t0 = 1_800_000_000.0

    def lab(ts: float, offset: int) -> _Event:
        doc = {"patient_id": "bed1", "kind": "albumin", "value": 3.5, "unit": "g/dL",
               "observed_at": "2026-11-25T04:30:00Z"}
        return _Event(_Msg("u.labs", offset=offset, timestamp=ts), b"bed1",
                      json.dumps(doc).encode())

    batch = [_Event(_Msg("u.vitals", offset=0, timestamp=t0 + 1), b"bed1", _obs()),
             lab(t0 + 10, 0),
             _Event(_Msg("u.ticks", offset=0, timestamp=t0 + 11), None, b""),
             _Event(_Msg("u.vitals", offset=1, timestamp=t0 + 5), b"bed1",
                    _obs("2026-11-25T04:15:00Z"))]
    det.on_batch(batch, now=t0 + 20)
    assert batch[2].acked
    behind = metrics.registry.get_sample_value("clsmon_merged_behind_total",
                                               {"topic": "u.vitals"})
    assert not behind  # the vital sent before the lab was merged before it
    assert metrics.registry.get_sample_value(
        "clsmon_observations_total", {"kind": "sbp", "outcome": "accepted"}) == 2


def test_a_misrouted_record_whose_home_partition_this_worker_holds_is_merged_there() -> None:
    """Forwarded, a misrouted record reaches its home partition's log later than its timestamp,
    after records sent after it (kcat: a patient's vitals on the CRC32 partition, then its labs:
    the labs were released first, 10,657 vitals merged behind, one alert the replay never
    raised). When this worker holds the home partition the record goes straight into that
    partition's merge, in arrival order; its position is kept apart from the home log's."""
    from streams.kafka.topics import HomePartitions

    metrics, table, alerts, dead, vitals = Metrics(), _Table(), _Topic(), _Topic(), _Topic()
    cfg = WorkerConfig(topic_prefix="u.", grace_ms=0, partitions=3)
    det = Detector(cfg, DEFAULT_THRESHOLDS, metrics, StateStore(table),
                   Outputs(alerts, dead, metrics, input_topics={"u.vitals": vitals}))
    det.held = lambda: frozenset({0, 1, 2})
    det.caught_up = lambda source, partition: 1_800_000_100_000  # nothing more anywhere
    home = HomePartitions(3).of(b"bed1")
    stray_partition = (home + 1) % 3
    stray = _Event(_Msg("u.vitals", partition=stray_partition, offset=4), b"bed1", _obs())
    det.on_event(stray, now=1_800_000_001.0)
    assert vitals.sent == [] and not stray.acked
    assert det.has_work(home)
    det.on_tick(home, now=1_800_000_001.1)
    assert stray.acked  # after the home partition's state was written
    assert table.changelog[-1][:2] == (home, b"bed1")
    state = json.loads(table.data[b"bed1"])
    assert state["applied"] == {f"vitals@{stray_partition}": [4, 1_800_000_000_000]}
    sample = metrics.registry.get_sample_value
    assert sample("clsmon_misrouted_total", {"topic": "u.vitals"}) == 1
    assert sample("clsmon_forwarded_total", {"topic": "u.vitals"}) is None
    assert sample("clsmon_observations_total", {"kind": "sbp", "outcome": "accepted"}) == 1
    # a record of the home log with a higher offset is not taken for the same one
    det.on_event(_Event(_Msg("u.vitals", partition=home, offset=9), b"bed1",
                        _obs("2026-11-25T04:20:00Z")), now=1_800_000_002.0)
    assert sample("clsmon_observations_total", {"kind": "sbp", "outcome": "accepted"}) == 2
    assert not det.has_work(stray_partition)


# --- a discharged patient's records resent after a crash ----------------------------------------

def _context_event(names: TopicNames, pid: str, event: str, offset: int,
                   timestamp: float) -> _Event:
    return _Event(_Msg(names.patients, 0, offset, timestamp), pid.encode(),
                  json.dumps({"patient_id": pid, "event": event}).encode())


def _stay_ended(events: list[_Event], names: TopicNames, pid: str, at: int,
                readmit_at: int | None = None) -> tuple[list[_Event], list[int]]:
    """The cohort with ``pid`` discharged right after event ``at`` (none of its records after
    that) and, with ``readmit_at``, admitted again right after that event (its records from
    there on kept); with the indexes of the discharge and the admission in the list."""
    out, adt, offset = [], [], 1 + max(e.message.offset for e in events
                                       if e.message.topic == names.patients)
    for i, e in enumerate(events):
        away = at < i <= (readmit_at if readmit_at is not None else len(events))
        if not (away and e.key == pid.encode()):
            out.append(e)
        if i in (at, readmit_at):
            adt.append(len(out))
            out.append(_context_event(names, pid, "discharge" if i == at else "admit",
                                      offset, e.message.timestamp + 0.0005))
            offset += 1
    return out, adt


def _patients_by_phase(metrics: Metrics) -> float:
    return sum(s.value for family in metrics.registry.collect() if family.name == "clsmon_patients"
               for s in family.samples)


def _crash_and_resend(cfg: WorkerConfig, events: list[_Event], written: int, resend_from: int,
                      committed: set[int]) -> tuple[Detector, Metrics, _Topic, _Topic]:
    """A worker that wrote its state after ``events[:written]`` and crashed; a new one on its
    table gets ``events[resend_from:]`` again but for the ``committed`` ones (the discharge,
    whose topic committed on its own). Returns the new worker, its metrics, the alerts of both
    and the new one's ``patient-phase`` records."""
    table, alerts = _Table(), _Topic()
    before = _new_detector(cfg, Metrics(), table, alerts, _Topic())
    _feed(before, events[:written])
    before.on_tick(0, now=events[written - 1].message.timestamp)  # state written
    metrics, phases = Metrics(), _Topic()
    after = Detector(cfg, DEFAULT_THRESHOLDS, metrics, StateStore(table),
                     Outputs(alerts, _Topic(), metrics, phases))
    _feed(after, [e for i, e in enumerate(events[resend_from:], resend_from)
                  if i not in committed])
    after.on_tick(0, now=events[-1].message.timestamp)
    return after, metrics, alerts, phases


def test_a_discharged_patients_records_resent_after_a_crash_do_not_bring_the_patient_back() -> None:
    """The inputs commit on their own: the discharge's offset was committed, the patient's
    vitals and labs before it were written but not committed yet, and the worker crashed. They
    come again, onto no state: folded into a new one, a patient who had left was monitored
    again (board, phase gauge, a silent bed later) and nothing ever discharged them. Against
    the record the discharge left they are duplicates; the alerts are the clean run's."""
    names = TopicNames("u.")
    cfg = WorkerConfig(topic_prefix="u.", grace_ms=0, partitions=1)
    pid = "sim-0003"
    events, (discharge,) = _stay_ended(_cohort_events(names), names, pid, at=6000)
    clean_alerts = _Topic()
    clean = _new_detector(cfg, Metrics(), _Table(), clean_alerts, _Topic())
    _feed(clean, events)
    expected = _alert_ids(clean_alerts)
    assert clean.store.get(pid) is None and len(expected) >= 4
    for written, resend_from in ((discharge + 1, discharge - 400), (9000, 3000)):
        after, metrics, alerts, phases = _crash_and_resend(cfg, events, written, resend_from,
                                                           {discharge})
        resent = sum(e.key == pid.encode() for e in events[resend_from:discharge])
        assert resent > 50
        assert after.store.get(pid) is None, (written, resend_from)
        assert _alert_ids(alerts) == expected
        assert _patients_by_phase(metrics) == 5  # the five still in the unit
        assert pid.encode() not in {key for key, _ in phases.sent}
        monitored, _ = after.beds.counts(events[-1].message.timestamp, 900, 86_400)
        assert sum(monitored.values()) == 5  # its bed is not watched for silence
        assert sum(v for k, v in _outcomes(metrics).items() if "duplicate" in k) >= resent


def test_a_patient_admitted_again_after_a_discharge_starts_a_fresh_stay_a_crash_keeps() -> None:
    """A record genuinely after the discharge (a new admit, then readings) starts a fresh
    stay, as before and as in the replay: the same state as a worker that never saw the first
    stay. After a crash, the first stay's records that come again (their offsets were not
    committed; the discharge's and the admission's were) are duplicates of the new stay too:
    folded into it they mixed two admissions."""
    names = TopicNames("u.")
    cfg = WorkerConfig(topic_prefix="u.", grace_ms=0, partitions=1)
    pid = "sim-0003"
    events, (discharge, admit) = _stay_ended(_cohort_events(names), names, pid, at=6000,
                                             readmit_at=9000)
    clean_alerts = _Topic()
    clean = _new_detector(cfg, Metrics(), _Table(), clean_alerts, _Topic())
    _feed(clean, events)
    readmitted = clean.store.get(pid)
    assert readmitted is not None
    fresh = _new_detector(cfg, Metrics(), _Table(), _Topic(), _Topic())
    _feed(fresh, [e for e in events[admit:] if e.key == pid.encode()])
    assert fresh.store.get(pid) == readmitted  # nothing of the first stay in it
    expected = _alert_ids(clean_alerts)
    # the crash right after the admission was written, or once the new stay had readings
    for written in (admit + 1, admit + 1500):
        after, metrics, alerts, _ = _crash_and_resend(cfg, events, written, discharge - 400,
                                                      {discharge, admit})
        assert after.store.get(pid) == readmitted, written
        assert _alert_ids(alerts) == expected
        assert _patients_by_phase(metrics) == 6


def _bed1_discharged(names: TopicNames, table: _Table, t0: float) -> None:
    """bed1: two vitals (offsets 0 and 1), then discharged (patients offset 0), all written."""
    det = _new_detector(WorkerConfig(topic_prefix="u.", grace_ms=0, partitions=1), Metrics(),
                        table, _Topic(), _Topic())
    for offset, minute in enumerate((10, 15)):
        det.on_event(_Event(_Msg(names.vitals, 0, offset, t0 + offset), b"bed1",
                            _obs(f"2026-11-25T04:{minute}:00Z")), now=t0 + offset)
    det.on_event(_context_event(names, "bed1", "discharge", 0, t0 + 2), now=t0 + 2)
    det.on_tick(0, now=t0 + 2.1)


def test_a_discharged_record_is_no_patient_and_is_dropped_once_the_offsets_past_it_are_committed(
        ) -> None:
    """What a discharge keeps must not grow without bound, nor ever show as a patient: it is
    dropped (a tombstone in the table's changelog) on a tick once every input offset it holds
    is committed; a position whose commit this worker cannot see keeps it at most
    ``discharged_keep_s``. A new worker on the table (a restart) finds it too."""
    from streams.worker.store import Discharged, parse_row

    names = TopicNames("u.")
    cfg = WorkerConfig(topic_prefix="u.", grace_ms=0, partitions=1)
    t0 = 1_800_000_000.0
    table = _Table()
    _bed1_discharged(names, table, t0)
    row = parse_row(table.data[b"bed1"])
    assert isinstance(row, Discharged)
    assert row.applied == {"vitals": [1, int((t0 + 1) * 1000)],
                           "patients": [0, int((t0 + 2) * 1000)]}
    metrics, phases = Metrics(), _Topic()
    restarted = Detector(cfg, DEFAULT_THRESHOLDS, metrics, StateStore(table),
                         Outputs(_Topic(), _Topic(), metrics, phases))
    heads = {names.patients: 1, names.vitals: 1}  # the last vital is not committed yet
    restarted.commit_head = lambda topic, partition: heads.get(topic)
    restarted.on_tick(0, now=t0 + 3)
    assert b"bed1" in table.data and _patients_by_phase(metrics) == 0 and phases.sent == []
    heads[names.vitals] = 2  # it is: nothing the record guards can come again
    restarted.on_tick(0, now=t0 + 4)
    assert b"bed1" not in table.data and table.changelog[-1] == (0, b"bed1", None)
    # a position this worker cannot place (a commit not known): kept, until it is too old
    _bed1_discharged(names, table, t0)
    restarted = _new_detector(cfg, Metrics(), table, _Topic(), _Topic())
    restarted.commit_head = lambda topic, partition: None
    restarted.on_tick(0, now=t0 + 2 + cfg.discharged_keep_s - 1)
    assert b"bed1" in table.data
    restarted.on_tick(0, now=t0 + 3 + cfg.discharged_keep_s)
    assert b"bed1" not in table.data


def test_new_readings_after_a_discharge_start_a_new_stay_that_keeps_the_old_positions() -> None:
    """A reading after the discharge (no admit) starts a new state, as before and as in the
    replay; it takes the discharged record's positions over, so the first stay's vitals, resent
    after a crash, are still duplicates, and a second discharge ends it like the first."""
    names = TopicNames("u.")
    t0 = 1_800_000_000.0
    table = _Table()
    _bed1_discharged(names, table, t0)
    cfg = WorkerConfig(topic_prefix="u.", grace_ms=0, partitions=1)
    metrics, phases = Metrics(), _Topic()
    det = Detector(cfg, DEFAULT_THRESHOLDS, metrics, StateStore(table),
                   Outputs(_Topic(), _Topic(), metrics, phases))
    det.on_event(_Event(_Msg(names.vitals, 0, 2, t0 + 3), b"bed1",
                        _obs("2026-11-25T04:20:00Z")), now=t0 + 3)
    det.on_tick(0, now=t0 + 3.1)
    st = det.store.get("bed1")
    assert st is not None and st.applied == {"vitals": [2, int((t0 + 3) * 1000)],
                                             "patients": [0, int((t0 + 2) * 1000)]}
    assert _patients_by_phase(metrics) == 1
    det.on_event(_Event(_Msg(names.vitals, 0, 1, t0 + 1), b"bed1",
                        _obs("2026-11-25T04:15:00Z")), now=t0 + 3.2)  # resent
    assert _outcomes(metrics)[("duplicate", "sbp")] == 1
    det.on_event(_context_event(names, "bed1", "discharge", 1, t0 + 4), now=t0 + 4)
    det.on_tick(0, now=t0 + 4.1)
    assert det.store.get("bed1") is None and _patients_by_phase(metrics) == 0
    assert phases.sent[-1] == (b"bed1", None)


def test_a_lab_waits_for_the_vitals_another_held_partition_may_still_bring() -> None:
    """A breaker's finding: with misrouted vitals merged at home, a vital misrouted from one
    partition with a later time said "vitals have moved past" for the whole merge, and a lab
    was released ahead of the same patient's earlier vitals still on another partition (a live
    feed of a CRC32 monitor gateway and a murmur2 lab system: 11,860 vitals merged behind,
    5,112 late). Each other partition the worker holds must have passed the lab's time."""
    from streams.kafka.topics import HomePartitions

    metrics, table, alerts, dead = Metrics(), _Table(), _Topic(), _Topic()
    cfg = WorkerConfig(topic_prefix="u.", grace_ms=300, partitions=3)
    det = Detector(cfg, DEFAULT_THRESHOLDS, metrics, StateStore(table), Outputs(alerts, dead,
                                                                                  metrics))
    home = HomePartitions(3).of(b"bed1")
    ahead, behind = (home + 1) % 3, (home + 2) % 3
    det.held = lambda: frozenset({0, 1, 2})
    caught: dict[int, int] = {home: 1_800_000_100_000, ahead: 1_800_000_100_000}
    det.caught_up = lambda source, partition: caught.get(partition)
    t0 = 1_800_000_000.0
    lab_doc = {"patient_id": "bed1", "kind": "albumin", "value": 3.5, "unit": "g/dL",
               "observed_at": "2026-11-25T04:30:00Z"}
    lab = _Event(_Msg("u.labs", home, 0, t0 + 10), b"bed1", json.dumps(lab_doc).encode())
    late_vital = _Event(_Msg("u.vitals", ahead, 0, t0 + 20), b"bed1",
                        _obs("2026-11-25T04:40:00Z"))
    det.on_batch([lab, late_vital], now=t0 + 30)
    processed = metrics.registry.get_sample_value
    assert processed("clsmon_observations_total", {"kind": "albumin", "outcome": "accepted"}) \
        is None  # the partition "behind" may still hold an earlier vital of the patient
    early_vital = _Event(_Msg("u.vitals", behind, 0, t0 + 5), b"bed1",
                         _obs("2026-11-25T04:20:00Z"))
    det.on_batch([early_vital], now=t0 + 31)
    caught[behind] = 1_800_000_100_000  # that partition holds nothing more
    det.on_tick(home, now=t0 + 32)
    assert processed("clsmon_observations_total", {"kind": "albumin", "outcome": "accepted"}) == 1
    assert processed("clsmon_observations_total", {"kind": "sbp", "outcome": "accepted"}) == 2
    assert not processed("clsmon_merged_behind_total", {"topic": "u.vitals"})
    assert not processed("clsmon_observations_total", {"kind": "sbp", "outcome": "late"})


def test_a_foreign_message_says_nothing_of_how_far_its_sources_own_log_has_come() -> None:
    """A misrouted vital merged here came from another partition's log: its time must not
    let a lab pass ahead of vitals this partition's own log may still bring."""
    for foreign, released in ((True, []), (False, ["lab"])):
        m: PartitionMerge[str] = PartitionMerge(["v", "l"], 300, 0)
        m.push("l", 10_000, 0, "lab", 10_000)
        m.push("v", 20_000, 0, "vital from elsewhere", 20_000, foreign=foreign)
        assert m.pop_ready(20_001, lambda source: None) == released
