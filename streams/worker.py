"""The stream worker: Faust app, one detection agent, a state table with a changelog.

One agent reads ``patients``, ``vitals``, ``labs`` (co-partitioned by patient_id) and the worker's
own ``ticks`` topic. Per message it: decodes and validates with the SAME code as the replay
(``detectors.observation``); dead-letters what fails (original key and bytes, topic, partition,
offset, reason); puts the rest back into arrival order (``streams.ordering``); folds them into the
patient's ``PatientState`` (``detectors.phases.step``) and emits alerts.

Delivery discipline (at-least-once, nothing lost, nothing acknowledged early): the agent reads
with acknowledgements off and acknowledges a message only after its effects (state changelog,
alerts, dead letter) were handed to the producer; Faust flushes the producer before it commits
offsets. After a crash the uncommitted messages come again: the engine drops exact redeliveries
and alert ids are deterministic, so downstream sees duplicates at worst, never a gap.

State writes are coalesced: each patient changed since the last write is written once per tick
(``tick_s``) or per ``write_batch`` messages (a changelog write per message halves throughput),
and only then are those messages acknowledged, so coalescing never lets an offset commit run
ahead of the state it produced. Alerts are not delayed by this: they are sent at once.

``ticks``: Faust only lets an agent act when a message arrives, and a table may only be written
from the stream. The worker therefore sends itself a tick every ``tick_s`` for each partition it
holds that has work waiting (``Detector.has_work``); a tick
releases messages the ordering buffer held for a silent source, and takes the decision a lab panel
is waiting for (``detectors.phases.flush``) once its patient has been quiet for ``flush_idle_s``
and nothing of its partition is held in the ordering buffer (the rest of the panel may be there).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import faust

from detectors.alerts import Alert
from detectors.config import Thresholds, load_thresholds
from detectors.observation import Observation, PatientContext, Rejection, normalise, parse_context
from detectors.phases import apply_context, flush, step
from detectors.state import PatientState
from streams import codec, consumer
from streams.metrics import Metrics, final_counts, serve
from streams.ordering import PartitionMerge
from streams.topics import TopicNames, bootstrap_of, ensure_topics

log = logging.getLogger(__name__)
TABLE_NAME = "patient-state"
#: prefix of the line a worker or notifier prints on exit, followed by its counters as JSON
FINAL_COUNTS = "clsmon: final counts "


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Every knob of a worker; the CLI fills it from flags and ``CLSMON_*`` variables."""

    broker: str = "kafka://127.0.0.1:9092"
    topic_prefix: str = "clsmon."
    partitions: int = 3
    web_port: int = 6066  # 0 = no HTTP server
    web_host: str = "0.0.0.0"  # noqa: S104
    data_dir: str | None = None  # None: a fresh temporary directory
    thresholds: str | None = None
    store: str = "memory://"
    #: Faust hard-codes a 1.5 s fetch wait, which sets end-to-end latency
    fetch_wait_ms: int = 100
    #: how long the ordering buffer waits for a silent source (see streams.ordering)
    grace_ms: int = 300
    tick_s: float = 0.25  # every tick is a broker record: see tick() in build()
    lag_interval_s: float = 5.0
    #: re-read a partition whose fetched messages have not reached the agent for this long
    stall_after_s: float = 5.0
    #: state is written (and its messages acknowledged) every tick or every this many messages
    write_batch: int = 500
    flush_idle_s: float = 3.0
    #: seconds; Tansu completes a group join after about half of it (60 s default -> 30 s start)
    session_timeout_s: float = 6.0
    #: 1 = one record per produce batch. Tansu reports a wrong end offset after batched sends,
    #: and Faust's table recovery stops there, losing the last state updates (measured).
    #: Keep 1 on Tansu; on Apache Kafka set 0 (aiokafka's default batching).
    producer_max_batch_size: int = 1
    loglevel: str = "WARNING"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> TopicNames:
        return TopicNames(self.topic_prefix)

    @property
    def app_id(self) -> str:
        """Consumer group and changelog prefix: one per topic prefix."""
        return (self.topic_prefix.rstrip(".-_") or "clsmon") + "-worker"


def faust_settings(cfg: WorkerConfig, data_dir: str) -> dict[str, Any]:
    """Faust settings tuned for a fast start and low latency (see README / design.md)."""
    session = cfg.session_timeout_s
    settings: dict[str, Any] = {
        "broker_session_timeout": session,
        "broker_heartbeat_interval": min(0.5, session / 6),
        "broker_rebalance_timeout": session,
        "broker_request_timeout": max(10.0, session + 4),
        "broker_commit_interval": 0.5,
        "topic_partitions": cfg.partitions,
        "topic_replication_factor": 1,
        "table_standby_replicas": 0,
        "consumer_auto_offset_reset": "earliest",
        "store": cfg.store,
        "datadir": data_dir,
        "web_enabled": False,  # our own server serves /metrics, /healthz, /readyz
        "producer_linger_ms": 0,
        # messages held by the ordering buffer are unacknowledged by design; at shutdown they
        # are left for the next start (at-least-once) instead of blocking the stop
        "stream_wait_empty": False,
    }
    if cfg.producer_max_batch_size > 0:
        settings["producer_max_batch_size"] = cfg.producer_max_batch_size
    settings.update(cfg.extra)
    return settings


# --- the detection logic, Faust-free where it can be ----------------------------------------------

@dataclass(slots=True)
class _Item:
    event: Any  # faust Event (acknowledged once processed)
    value: Observation | PatientContext


class Detector:
    """What the agent does with each message; holds the per-partition buffers and caches.

    The table is the source of truth; ``_states`` caches the parsed ``PatientState`` objects so
    a message costs one ``step`` and not a JSON round trip.
    """

    def __init__(self, cfg: WorkerConfig, th: Thresholds, metrics: Metrics, table: Any,
                 alerts_topic: Any, dead_topic: Any) -> None:
        self.cfg = cfg
        self.th = th
        self.metrics = metrics
        self.names = cfg.names
        self.table = table
        self.alerts_topic = alerts_topic
        self.dead_topic = dead_topic
        self._merges: dict[int, PartitionMerge[_Item]] = {}
        self._states: dict[str, PatientState] = {}
        self._partition_of: dict[str, int] = {}
        self._last_msg_ts: dict[str, float] = {}
        self._last_active: dict[str, float] = {}
        self._pending: dict[int, set[str]] = {}
        self._dirty: dict[int, set[str]] = {}
        self._unacked: dict[int, list[Any]] = {}
        self._phase_of: dict[str, str] = {}
        self._phases_dirty = True
        #: ``(topic, partition) -> bool``: messages fetched but not yet received (the ordering
        #: merge must wait for them); set by ``build`` from the stall guard
        self.in_flight: Callable[[str, int], bool] | None = None

    # -- entry points ------------------------------------------------------------------------
    def on_event(self, event: Any, now: float | None = None) -> None:
        """Handle one message of any input topic; never raises."""
        now = time.time() if now is None else now
        msg = event.message
        try:
            if msg.topic == self.names.ticks:
                self.on_tick(msg.partition, now)
                event.ack()
                return
            item = self._ingest(event)
            if item is None:
                return
            merge = self._merge(msg.partition, now)
            merge.push(msg.topic, _ts_ms(msg, now), msg.offset, item, int(now * 1000))
            self._release(msg.partition, now)
        except Exception as exc:  # noqa: BLE001 - an escaping exception stalls the partition
            log.exception("internal error on %s[%s]@%s", msg.topic, msg.partition, msg.offset)
            self._internal_error(event, exc)

    def has_work(self, partition: int) -> bool:
        """Something a tick would act on: held messages, unwritten state, unacknowledged
        messages, or a lab panel waiting for its patient to go quiet."""
        merge = self._merges.get(partition)
        return bool((merge is not None and len(merge)) or self._dirty.get(partition)
                    or self._unacked.get(partition) or self._pending.get(partition))

    def on_tick(self, partition: int, now: float) -> None:
        """Release what a silent source held back; flush lab panels of quiet patients;
        persist the state changed since the last tick."""
        self._release(partition, now)
        self._persist(partition)
        merge = self._merges.get(partition)
        if merge is not None and len(merge):
            # messages of this partition are still held (a silent topic's grace, or one whose
            # fetched messages are on their way): the rest of a panel may be among them, so no
            # patient of it counts as quiet yet
            self.refresh_gauges()
            return
        quiet = [pid for pid in self._pending.get(partition, ())
                 if now - self._last_active.get(pid, 0.0) >= self.cfg.flush_idle_s]
        for pid in quiet:
            self._pending[partition].discard(pid)
            st = self._state(pid)
            if st is None:
                continue
            alerts = flush(st, self.th)
            self._write(partition, pid)
            self._emit(alerts, None, now)
        self.refresh_gauges()

    def on_revoked(self) -> None:
        """Partitions are moving: drop buffers and caches; unacknowledged work comes again."""
        self._merges.clear()
        self._dirty.clear()
        self._unacked.clear()
        self._states.clear()
        self._pending.clear()
        self._phase_of.clear()
        self._phases_dirty = True
        # the beds of revoked partitions are another worker's now: stop reporting them here,
        # or their "last seen" would age into a false "no data from bed" alert
        self.metrics.bed_last_seen.clear()
        self.metrics.consumer_lag.clear()
        self._update_buffered()  # the buffers were dropped: the gauge must say so

    # -- ingest --------------------------------------------------------------------------------
    def _ingest(self, event: Any) -> _Item | None:
        """Decode + validate; a bad message is dead-lettered and acknowledged here (None)."""
        msg = event.message
        is_context = msg.topic == self.names.patients
        doc = codec.decode_object(event.value)
        kind = "context" if is_context else "unknown"
        if isinstance(doc, Rejection):
            self._dead_letter(event, doc, kind)
            return None
        if not is_context:
            raw_kind = doc.get("kind")
            kind = raw_kind.strip().lower() if isinstance(raw_kind, str) else "unknown"
        value = parse_context(doc) if is_context else normalise(doc)
        if isinstance(value, Rejection):
            self._dead_letter(event, value, _kind_label(kind))
            return None
        key = codec.key_text(event.key)
        if key != value.patient_id:
            self._dead_letter(event, Rejection(
                "inconsistent", f"message key {key!r} is not the patient_id "
                f"{value.patient_id!r} (keys route a patient to one partition)"), value.kind
                if isinstance(value, Observation) else "context")
            return None
        return _Item(event, value)

    # -- detection -----------------------------------------------------------------------------
    def _release(self, partition: int, now: float) -> None:
        merge = self._merges.get(partition)
        if merge is None:
            return
        probe = self.in_flight
        items = merge.pop_ready(int(now * 1000), None if probe is None
                                else lambda source: probe(source, partition))
        if not items:
            self._update_buffered()
            return
        dirty = self._dirty.setdefault(partition, set())
        done = self._unacked.setdefault(partition, [])
        for item in items:
            try:
                self._process(item, partition, now, dirty)
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the rest
                log.exception("internal error processing %r", item.value)
                self._internal_error(item.event, exc)
                continue
            done.append(item.event)
        if len(done) >= self.cfg.write_batch:
            self._persist(partition)
        self._update_buffered()

    def _update_buffered(self) -> None:
        self.metrics.buffered.set(sum(len(m) for m in self._merges.values()))

    def _persist(self, partition: int) -> None:
        """Write each patient changed since the last call once, then acknowledge the messages
        that changed them (never before: an offset must not be committed ahead of its state)."""
        for pid in self._dirty.pop(partition, ()):
            self._write(partition, pid)
        for event in self._unacked.pop(partition, ()):
            event.ack()

    def _process(self, item: _Item, partition: int, now: float, dirty: set[str]) -> None:
        value = item.value
        pid = value.patient_id
        msg = item.event.message
        self._partition_of[pid] = partition
        self._last_active[pid] = now
        self._last_msg_ts[pid] = msg.timestamp or now
        self.metrics.bed_last_seen.labels(pid).set(now)
        self.metrics.processing_latency.observe(max(0.0, now - (msg.timestamp or now)))
        if isinstance(value, PatientContext):
            st = apply_context(self._state(pid), value)
            self.metrics.observations.labels("context", "context").inc()
            if st is None:
                self._forget(partition, pid)
            else:
                self._states[pid] = st
                dirty.add(pid)
            return
        st = self._state(pid)
        result = step(st, value, self.th)
        if st is None:
            self._states[pid] = result.state
        if result.status == "rejected":  # e.g. an impossible urine rate: an artefact
            why = result.rejection or Rejection("rejected", "rejected by the detectors")
            self._dead_letter(item.event, why, value.kind, ack=False)
        else:
            self.metrics.observations.labels(value.kind, result.status).inc()
        if result.status != "duplicate":
            dirty.add(pid)
        if result.state.pending:
            self._pending.setdefault(partition, set()).add(pid)
        else:
            self._pending.get(partition, set()).discard(pid)
        self.metrics.event_time_lag.set(max(0.0, now - value.observed_at_ms / 1000))
        self._emit(result.alerts, msg.timestamp, now)

    def _state(self, pid: str) -> PatientState | None:
        st = self._states.get(pid)
        if st is None:
            raw = self.table.data.get(pid.encode())
            if raw is not None:
                st = PatientState.from_json(raw)
                self._states[pid] = st
        return st

    def _write(self, partition: int, pid: str) -> None:
        st = self._states.get(pid)
        if st is None:
            return
        key, value = pid.encode(), st.to_json()
        self.metrics.state_size.observe(len(value))
        self.table.data[key] = value
        self.table.send_changelog(partition, key, value)
        if self._phase_of.get(pid) != st.phase:
            self._phase_of[pid] = st.phase
            self._phases_dirty = True

    def _forget(self, partition: int, pid: str) -> None:
        key = pid.encode()
        try:
            self.metrics.bed_last_seen.remove(pid)  # discharged: no "silent bed" alert
        except KeyError:
            pass
        self._states.pop(pid, None)
        self._phase_of.pop(pid, None)
        self._phases_dirty = True
        self._pending.get(partition, set()).discard(pid)
        if self.table.data.get(key) is not None:
            del self.table.data[key]
            self.table.send_changelog(partition, key, None)

    def _emit(self, alerts: Iterable[Alert], msg_ts: float | None, now: float) -> None:
        for alert in alerts:
            doc = alert.to_dict(emitted_at=codec.now_iso())
            self.alerts_topic.send_soon(key=alert.patient_id.encode(), value=codec.encode(doc))
            self.metrics.alerts.labels(alert.phase, alert.severity).inc()
            if msg_ts is not None:
                self.metrics.latency.observe(max(0.0, time.time() - msg_ts))

    # -- dead letters --------------------------------------------------------------------------
    def _dead_letter(self, event: Any, why: Rejection, kind: str, ack: bool = True) -> None:
        msg = event.message
        record = codec.dead_letter(key=event.key, value=event.value, topic=msg.topic,
                                   partition=msg.partition, offset=msg.offset,
                                   reason=why.reason, detail=why.detail)
        self.dead_topic.send_soon(key=event.key, value=record)
        self.metrics.dead_letters.labels(why.reason).inc()
        self.metrics.observations.labels(_kind_label(kind), "dead_letter").inc()
        if ack:
            event.ack()

    def _internal_error(self, event: Any, exc: BaseException) -> None:
        try:
            self._dead_letter(event, Rejection("internal_error", f"{type(exc).__name__}: {exc}"),
                              "unknown")
        except Exception:  # noqa: BLE001 - last resort: count it and move on
            log.exception("could not dead-letter after an internal error")
            self.metrics.dead_letters.labels("internal_error").inc()
            event.ack()

    # -- helpers -------------------------------------------------------------------------------
    def _merge(self, partition: int, now: float) -> PartitionMerge[_Item]:
        merge = self._merges.get(partition)
        if merge is None:
            merge = PartitionMerge(self.names.inputs, self.cfg.grace_ms, int(now * 1000))
            self._merges[partition] = merge
        return merge

    def refresh_gauges(self) -> None:
        if not self._phases_dirty:
            return
        if not self._phase_of:
            for raw in list(self.table.data.values()):
                if raw:
                    st = PatientState.from_json(raw)
                    self._phase_of[st.patient_id] = st.phase
        counts = Counter(self._phase_of.values())
        for phase in ("none", "prodromal", "leak", "recovery"):
            self.metrics.patients.labels(phase).set(counts.get(phase, 0))
        self._phases_dirty = False


def _kind_label(kind: str) -> str:
    """Metric label for a kind: canonical kinds and ``context``; anything else is ``unknown``
    (a label per misspelt kind would let bad input grow the series without bound)."""
    from detectors.units import KINDS, canonical_kind

    if kind == "context":
        return kind
    canonical = canonical_kind(kind) if kind else None
    return canonical if canonical in KINDS else "unknown"


def _ts_ms(msg: Any, now: float) -> int:
    return int((msg.timestamp if msg.timestamp else now) * 1000)


# --- the Faust app ------------------------------------------------------------------------------

@dataclass
class Worker:
    app: faust.App
    detector: Detector
    metrics: Metrics
    ready: threading.Event
    data_dir: str


def build(cfg: WorkerConfig, metrics: Metrics | None = None) -> Worker:
    """The Faust app with its topics, table, agent and timers (not started)."""
    th = load_thresholds(cfg.thresholds)
    metrics = metrics or Metrics()
    data_dir = cfg.data_dir or tempfile.mkdtemp(prefix="clsmon-worker-")
    os.makedirs(data_dir, exist_ok=True)
    app = faust.App(cfg.app_id, broker=cfg.broker, **faust_settings(cfg, data_dir))
    consumer.install(app, cfg.fetch_wait_ms)
    names = cfg.names
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
           "value_serializer": "raw"}
    inputs = app.topic(*names.inputs, names.ticks, **raw)
    alerts_topic = app.topic(names.alerts, **raw)
    dead_topic = app.topic(names.dead_letters, **raw)
    ticks_topic = app.topic(names.ticks, **raw)
    # bytes in, bytes out (PatientState.to_json): key_type/value_type=bytes selects the raw
    # serializer for the changelog writes, the schema the same for recovery reads
    table = app.Table(TABLE_NAME, partitions=cfg.partitions, key_type=bytes, value_type=bytes,
                      schema=faust.Schema(**raw))  # type: ignore[arg-type]
    detector = Detector(cfg, th, metrics, table, alerts_topic, dead_topic)
    ready = threading.Event()

    guard = consumer.watch(app, {*names.inputs, names.ticks}, "detect", cfg.stall_after_s,
                           metrics.rereads, idle=lambda tp: not detector.has_work(tp.partition))
    detector.in_flight = consumer.in_flight_probe(app, guard)

    @app.agent(inputs, name="detect")
    async def detect(stream: Any) -> None:
        async for event in stream.noack().events():
            guard.seen(event.message.tp, event.message.offset)
            detector.on_event(event)

    @app.timer(cfg.tick_s)
    async def tick() -> None:
        # only to the partitions this worker holds (another worker ticks its own), and only
        # when there is something to release, write or flush: every tick is a record on the
        # broker, and on the embedded Tansu broker a partition's fetch cost grows with its
        # record count (README, "Embedded broker limits")
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == names.vitals}
        for partition in sorted(owned):
            if detector.has_work(partition):
                await ticks_topic.send(value=b"", partition=partition)
        detector.refresh_gauges()  # e.g. patients by phase right after the table's recovery

    lag_topics = set(names.inputs)

    @app.timer(cfg.lag_interval_s)
    async def measure_lag() -> None:
        """Consumer lag per input partition; measuring must never disturb processing."""
        try:
            app_consumer = app.consumer
            for tp in app_consumer.assignment():
                if tp.topic not in lag_topics:
                    continue
                highwater = app_consumer.highwater(tp)
                position = await app_consumer.position(tp)
                if highwater is not None and highwater >= 0 and position is not None:
                    metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                        max(0, highwater - position))
        except Exception:  # noqa: BLE001 - a metric is not worth a stalled worker
            log.debug("consumer lag not measured", exc_info=True)

    @app.task
    async def started() -> None:  # runs after the table has been recovered
        ready.set()
        metrics.ready.set(1)

    @app.on_partitions_revoked.connect
    async def revoked(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
        detector.on_revoked()

    return Worker(app, detector, metrics, ready, data_dir)


def run(cfg: WorkerConfig) -> int:
    """Create the topics, start the HTTP server and run the worker until SIGTERM/SIGINT.

    Must run in the main thread (Faust installs signal handlers).
    """
    ensure_topics(bootstrap_of(cfg.broker), cfg.names, cfg.partitions)
    worker = build(cfg)
    banner = (f"clsmon worker: broker {cfg.broker}, topics {cfg.topic_prefix}*, "
              f"{cfg.partitions} partitions")
    return serve_and_run(worker.app, worker.metrics, worker.ready, banner, cfg.web_port,
                         cfg.web_host, cfg.loglevel)


def serve_and_run(app: faust.App, metrics: Any, ready: threading.Event, banner: str,
                  web_port: int, web_host: str, loglevel: str) -> int:
    """Serve /metrics, /healthz, /readyz (when ``web_port``), print ``banner`` and run the Faust
    app in the foreground until SIGTERM/SIGINT; the exit code of the Faust worker.

    Shared by the detection worker and the notifier. ``metrics`` is any object with a
    ``registry``.
    """
    server = serve(metrics, ready, web_port, web_host) if web_port else None
    print(banner + (f", metrics http://{web_host}:{web_port}/metrics" if server else ""),
          flush=True)
    try:
        faust.Worker(app, loglevel=loglevel, quiet=True,
                     redirect_stdouts=False).execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        if server is not None:
            server.shutdown()
        # the last word on what this process did: a scrape racing the shutdown can miss the
        # messages processed (and committed) while it stopped
        print(FINAL_COUNTS + json.dumps(final_counts(metrics.registry), sort_keys=True),
              flush=True)
    return 0
