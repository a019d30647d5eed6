"""What the detection agent does with each message: ingest, arrival order, the engine, and the
acknowledgement discipline.

Per message of ``patients``, ``interventions``, ``vitals`` or ``labs``: validate
(``streams.worker.ingest``; refusals go to ``dead-letters`` at once);
hold it in its partition's arrival-order merge (``streams.worker.ordering``); when released,
fold it into the patient's state (``detectors.phases.step``) and publish any alerts
(``streams.worker.outputs``). Faust-free: the agent and the timers in ``streams.worker.app``
call in, so this class is tested with plain objects.

Delivery discipline (at-least-once, nothing lost, nothing acknowledged early): a processed
message is acknowledged only after the state it changed was written (``StateStore.write``,
the table's changelog); writes are coalesced per tick (``tick_s``) or per ``write_batch``
messages, because a changelog write per message halves throughput. Alerts are not delayed by
this: they are sent at once. After a crash the unacknowledged messages come again: the state
carries the position of the last record folded into it (``PatientState.applied``, written in
the same changelog record), so a record it already holds is counted ``duplicate`` and skipped,
and alert ids are deterministic, so downstream sees duplicates at worst, never a gap and never
a reading counted twice. A discharge leaves those positions behind in a small discharged record
(``streams.worker.store``), so a discharged patient's earlier records, resent because their
offsets were not committed yet, are duplicates too and never bring the patient back; the
record is dropped on a tick once the input offsets past it are committed (``commit_head``).

Ticks (``on_tick``): release messages the ordering buffer held for a silent source, and take
the decision a lab panel is waiting for (``detectors.phases.flush``) once its patient has been
quiet for ``flush_idle_s`` and nothing of its partition is held in the merge (the rest of the
panel may be there).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from detectors.config import Thresholds
from detectors.interventions import Intervention
from detectors.observation import Observation, PatientContext, Rejection, format_time
from detectors.phases import apply_context, flush, step
from streams.kafka.topics import HomePartitions
from streams.worker.beds import SilentBeds
from streams.worker.config import WorkerConfig
from streams.worker.ingest import INTERVENTION, Mapped, Refused, ingest
from streams.worker.metrics import Metrics
from streams.worker.ordering import Arrival, PartitionMerge, clamped
from streams.worker.outputs import Outputs
from streams.worker.store import StateStore, already_applied, mark_applied

log = logging.getLogger(__name__)
_NEVER = -(2**62)
_ALWAYS = 2**62


@dataclass(slots=True)
class _Item:
    event: Any  # faust Event (acknowledged once processed)
    value: Any  # Observation | Retraction | PatientContext | Intervention, or a list of them


class Detector:
    """Per-partition merges, pending lab panels and unacknowledged messages of one worker."""

    def __init__(self, cfg: WorkerConfig, th: Thresholds, metrics: Metrics, store: StateStore,
                 outputs: Outputs) -> None:
        self.cfg = cfg
        self.th = th
        self.metrics = metrics
        self.names = cfg.names
        # read once per message: TopicNames builds each name on every access
        self._ticks, self._patients = self.names.ticks, self.names.patients
        #: input topic -> the source name its positions are stored under in the state
        #: (``PatientState.applied``): the role, not the topic, so a prefix is not repeated
        self._sources = {self.names.vitals: "vitals", self.names.labs: "labs",
                         self._patients: "patients", self.names.interventions: "interventions"}
        self._topic_of = {source: topic for topic, source in self._sources.items()}
        self._interventions = self.names.interventions
        self.store = store
        self.outputs = outputs
        self._home = HomePartitions(cfg.partitions)
        self._merges: dict[int, PartitionMerge[_Item]] = {}
        self._last_active: dict[str, float] = {}
        self._pending: dict[int, set[str]] = {}
        self._dirty: dict[int, set[str]] = {}
        self._unacked: dict[int, list[Any]] = {}
        #: per partition, its misrouted records held in their home partition's merge
        self._held_for: dict[int, int] = {}
        self.beds = SilentBeds()
        self._bed_wards: set[str] = set()
        self._beds_counted = 0.0
        #: ``(topic, partition) -> ms | None``: when the consumer last saw that partition hold
        #: nothing this worker has not received (``streams.worker.ordering``); set by
        #: ``streams.worker.app.build`` from the consumer
        self.caught_up: Callable[[str, int], int | None] | None = None
        #: ``(topic, partition, offset) -> UndecodableBatch | None``: the record batch a
        #: message without key and value stands for (``streams.kafka.records``)
        self.undecodable: Callable[[str, int, int], Any] | None = None
        #: ``() -> partitions``: the input partitions this worker holds (read once per
        #: batch). A misrouted record whose home partition it holds is merged there at once
        #: (forwarded, it would reach the log later than its timestamp, after records sent
        #: after it), and each merge then waits for the other held partitions of every source
        #: too (``_frontier``); None: misrouted records are always forwarded
        self.held: Callable[[], frozenset[int]] | None = None
        self._held: frozenset[int] = frozenset()
        #: per input partition ``(topic, partition)``, the latest (clamped) timestamp taken
        #: from it: nothing earlier can still come from that log (``_frontier``)
        self._taken: dict[tuple[str, int], int] = {}
        #: ``_passed_by`` per input partition, for the batch or tick under way
        self._passed: dict[tuple[str, int], int] = {}
        #: ``(topic, partition) -> offset | None``: the first offset of that input partition
        #: not committed yet (None: not known here); a discharged record is dropped once every
        #: position it holds is below it (``StateStore.settle``); None: only by age
        self.commit_head: Callable[[str, int], int | None] | None = None
        self._buffered = -1  # the last value of clsmon_ordering_buffer_messages
        #: event time (ms) of the last observation processed by the running release, for
        #: clsmon_event_time_lag_seconds (set once per release, not per message: a lock each)
        self._last_observed_ms: int | None = None
        self._counters: dict[tuple[str, str], Any] = {}

    # -- entry points ------------------------------------------------------------------------
    def on_event(self, event: Any, now: float | None = None) -> None:
        """Handle one message of any input topic; never raises."""
        self.on_batch((event,), now)

    def on_batch(self, events: Any, now: float | None = None) -> None:
        """Handle messages of any input topics, in the order given (per partition, their
        offset order); never raises. The arrival-order merge of each partition is asked for
        what it can release once per batch, after every message of it was taken in: the
        same records in the same order as message by message (the merge orders what it
        holds, and holding more only gives it more to order), for a fraction of the cost."""
        now = time.time() if now is None else now
        self._passed.clear()
        if self.held is not None:
            self._held = self.held()
        touched: set[int] = set()
        ticks: list[Any] = []
        take, ticks_topic = self._take, self._ticks
        for event in events:
            if event.message.topic == ticks_topic:
                ticks.append(event)
                continue
            partition = take(event, now)
            if partition is not None:
                touched.add(partition)
        # ticks last: the consumer counts a whole batch received before this call, so a
        # release in the middle of it would take a source for caught up while messages of
        # it later in the batch are not in its merge yet (labs released ahead of vitals)
        ticked = {event.message.partition for event in ticks}
        for partition in sorted(touched - ticked):
            try:
                self._release(partition, now)
            except Exception:  # noqa: BLE001 - _release handles its messages' errors itself
                log.exception("internal error releasing partition %s", partition)
        for partition in sorted(ticked):
            try:
                self.on_tick(partition, now)
            except Exception:  # noqa: BLE001 - a tick comes again; one must not stop the rest
                log.exception("internal error on a tick of partition %s", partition)
        for event in ticks:
            event.ack()

    def _take(self, event: Any, now: float) -> int | None:
        """Take one message (not a tick) in; the partition whose merge now holds it, else
        None (dead-lettered, forwarded or handled already)."""
        msg = event.message
        try:
            topic = msg.topic
            if event.value is None and self._undecodable(event):
                return None
            partition = msg.partition
            ts_ms, now_ms = _ts_ms(msg, now), int(now * 1000)
            taken = clamped(ts_ms, now_ms, self.cfg.grace_ms)  # as the merge orders it
            if taken > self._taken.get((topic, partition), _NEVER):
                self._taken[(topic, partition)] = taken
            key = event.key
            if key is not None:
                home = self._home.of(key)
                if home != partition:  # never split a patient
                    self.metrics.misrouted.labels(topic).inc()
                    if self.held is None or home not in self._held:
                        self.outputs.forward(event, home)
                        return None
                    partition = home  # merged there, in arrival order with the rest of it
                    self._held_for[msg.partition] = self._held_for.get(msg.partition, 0) + 1
            value = ingest(key, event.value, topic == self._patients,
                           topic == self._interventions)
            if isinstance(value, Observation):
                value = self._not_in_the_future(value, now)
            if isinstance(value, Refused):
                self.outputs.dead_letter(event, value.rejection, value.kind)
                return None
            if isinstance(value, Mapped):  # FHIR: several values; the refused part dead-lettered
                if value.refused is not None:
                    self.outputs.dead_letter(event, value.refused.rejection, value.refused.kind,
                                             ack=not value.values)
                if not value.values:
                    return None
            item = _Item(event, list(value.values) if isinstance(value, Mapped) else value)
            merge = self._merge(partition, now)
            arrival = merge.push(topic, ts_ms, msg.offset, item, now_ms, key,
                                 foreign=partition != msg.partition)
            if arrival:
                if arrival & Arrival.CLAMPED:
                    self.metrics.future_timestamps.labels(topic).inc()
                if arrival & Arrival.BEHIND:
                    self.metrics.merged_behind.labels(topic).inc()
            return int(partition)
        except Exception as exc:  # noqa: BLE001 - an escaping exception stalls the partition
            log.exception("internal error on %s[%s]@%s", msg.topic, msg.partition, msg.offset)
            self.outputs.internal_error(event, exc)
            return None

    def _not_in_the_future(self, obs: Observation, now: float) -> Observation | Refused:
        """An observation dated more than ``stream_future_h`` after the wall clock is
        ``bad_time`` (a mistyped date, a skewed device clock): it never reaches the engine,
        where it would move the patient's horizon (the engine checks the patient's own series
        too, so the replay gives the same alerts)."""
        ahead_ms = obs.observed_at_ms - int(now * 1000)
        if ahead_ms <= self.th.stream_future_h * 3_600_000:
            return obs
        return Refused(Rejection("bad_time", f"observed_at {format_time(obs.observed_at_ms)} is "
                                 f"{ahead_ms / 3_600_000:.1f} h after the worker's clock: in the "
                                 "future"), obs.kind)

    def _undecodable(self, event: Any) -> bool:
        """Dead-letter the message if it stands for a batch the consumer could not decode."""
        msg = event.message
        batch = None if self.undecodable is None else \
            self.undecodable(msg.topic, msg.partition, msg.offset)
        if batch is None:
            return False
        self.outputs.dead_letter(event, Rejection("undecodable_batch", batch.reason()),
                                 "unknown")
        return True

    def has_work(self, partition: int) -> bool:
        """Something a tick would act on: held messages, unwritten state, unacknowledged
        messages, or a lab panel waiting for its patient to go quiet."""
        merge = self._merges.get(partition)
        return bool((merge is not None and len(merge)) or self._dirty.get(partition)
                    or self._unacked.get(partition) or self._pending.get(partition)
                    or self._held_for.get(partition))

    def on_tick(self, partition: int, now: float) -> None:
        """Release what a silent source held back; flush lab panels of quiet patients;
        persist the state changed since the last tick."""
        self._passed.clear()
        self._release(partition, now)
        self._persist(partition)
        self.store.settle(partition, self._commit_head_of, int(now * 1000),
                          int(self.cfg.discharged_keep_s * 1000))
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
            st = self.store.get(pid)
            if st is None:
                continue
            alerts = flush(st, self.th)
            self.store.write(partition, pid)
            self.outputs.alerts(alerts, None)
            if alerts:
                self.outputs.phase(st, alerts)
        self.refresh_gauges()

    def on_revoked(self) -> None:
        """Partitions are moving: drop buffers and caches; unacknowledged work comes again."""
        self._merges.clear()
        self._dirty.clear()
        self._unacked.clear()
        self._held_for.clear()
        self._taken.clear()
        self._pending.clear()
        self.store.clear()
        # the beds of revoked partitions are another worker's now: stop reporting them here,
        # or their "last seen" would age into a false "no data from bed" alert
        self.beds.clear()
        self.metrics.consumer_lag.clear()
        self._update_buffered()  # the buffers were dropped: the gauge must say so

    def refresh_gauges(self) -> None:
        """Patients by phase, when a write changed any phase since the last refresh."""
        counts = self.store.phase_counts()
        if counts is not None:
            for phase, n in counts.items():
                self.metrics.patients.labels(phase).set(n)
        now = time.time()
        if now - self._beds_counted >= 5.0:
            self._beds_counted = now
            self.refresh_beds(now)

    def refresh_beds(self, now: float) -> None:
        """Beds monitored and silent, by ward; a ward with no bed left loses its series."""
        monitored, silent = self.beds.counts(now, self.cfg.silent_after_s,
                                             self.cfg.silent_expire_s)
        for ward in self._bed_wards - set(monitored):
            for gauge in (self.metrics.beds_monitored, self.metrics.beds_silent):
                try:
                    gauge.remove(ward)
                except KeyError:
                    pass
        self._bed_wards = set(monitored)
        for ward, n in monitored.items():
            self.metrics.beds_monitored.labels(ward).set(n)
            self.metrics.beds_silent.labels(ward).set(silent.get(ward, 0))

    # -- detection -----------------------------------------------------------------------------
    def _release(self, partition: int, now: float) -> None:
        merge = self._merges.get(partition)
        if merge is None:
            return
        probe = self.caught_up
        items = merge.pop_ready(
            int(now * 1000), None if probe is None else lambda source: probe(source, partition),
            None if len(self._held) < 2 else lambda source: self._frontier(source, partition))
        if not items:
            self._update_buffered()
            return
        dirty = self._dirty.setdefault(partition, set())
        done = self._unacked.setdefault(partition, [])
        held_for = self._held_for
        for item in items:
            came_from = item.event.message.partition
            if came_from != partition:  # a misrouted record merged here
                held_for[came_from] -= 1
            try:
                self._process(item, partition, now, dirty)
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the rest
                log.exception("internal error processing %r", item.value)
                self.outputs.internal_error(item.event, exc)
                continue
            done.append(item.event)
        if self._last_observed_ms is not None:
            self.metrics.event_time_lag.set(max(0.0, now - self._last_observed_ms / 1000))
            self._last_observed_ms = None
        if len(done) >= self.cfg.write_batch:
            self._persist(partition)
        self._update_buffered()

    def _frontier(self, source: str, partition: int) -> int:
        """The timestamp (ms) before which no other held partition of ``source`` can still
        bring a misrouted record for ``partition``'s merge: per partition, the later of the
        latest timestamp taken from it (its log is in timestamp order) and its caught-up time
        less the grace (``streams.worker.ordering``); the earliest of those."""
        bound = _ALWAYS
        cache = self._passed
        for other in self._held:
            if other == partition:
                continue
            passed = cache.get((source, other))
            if passed is None:
                passed = cache[(source, other)] = self._passed_by(source, other)
            if passed < bound:
                bound = passed
        return bound

    def _passed_by(self, source: str, partition: int) -> int:
        """How far that input partition's log has come (``_frontier``); read once per batch
        or tick (``_passed``): a later answer is only later, so an earlier one is safe."""
        probe = self.caught_up
        at = None if probe is None else probe(source, partition)
        return max(self._taken.get((source, partition), _NEVER),
                   _NEVER if at is None else at - self.cfg.grace_ms)

    def _update_buffered(self) -> None:
        # once per message: set the gauge (a lock) only when the count changed
        buffered = sum(map(len, self._merges.values()))
        if buffered != self._buffered:
            self._buffered = buffered
            self.metrics.buffered.set(buffered)

    def _persist(self, partition: int) -> None:
        """Write each patient changed since the last call once, then acknowledge the messages
        that changed them (never before: an offset must not be committed ahead of its state)."""
        for pid in self._dirty.pop(partition, ()):
            self.store.write(partition, pid)
        for event in self._unacked.pop(partition, ()):
            event.ack()

    def _process(self, item: _Item, partition: int, now: float, dirty: set[str]) -> None:
        # a list: the values of one FHIR resource (a NamedTuple value is a tuple: not a list)
        values = item.value if isinstance(item.value, list) else (item.value,)
        msg = item.event.message
        source = self._sources.get(msg.topic, msg.topic)
        if msg.partition != partition:  # misrouted, merged here: its offsets are another log's
            source = f"{source}@{msg.partition}"
        position = (source, msg.offset, _ts_ms(msg, now))
        # per patient, whether this record was folded in before (the values of one FHIR
        # Bundle share its offset: all are judged by the position before the first of them)
        redelivered: dict[str, bool] = {}
        for value in values:  # one, or the values of a FHIR Bundle
            self._process_one(item, value, partition, now, dirty, position, redelivered)

    def _process_one(self, item: _Item, value: Any, partition: int, now: float,
                     dirty: set[str], position: tuple[str, int, int],
                     redelivered: dict[str, bool]) -> None:
        pid = value.patient_id
        msg = item.event.message
        self._last_active[pid] = now
        st = self.store.get(pid)
        self.metrics.processing_latency.observe(max(0.0, now - (msg.timestamp or now)))
        again = redelivered.get(pid)
        if again is None:
            # a discharged patient has no state, only the positions it had
            applied = self.store.positions(pid)
            again = redelivered[pid] = applied is not None and already_applied(
                applied, *position)
        if st is not None or not again:  # a discharged patient's bed is not monitored
            self.beds.seen(pid, getattr(st, "ward", None), now)
        if again:  # written with the state before the crash or rebalance that resent it
            self._counter(_label(value), "duplicate").inc()
            return
        if isinstance(value, PatientContext):
            self._on_context(value, partition, dirty, position, now)
            return
        result = step(st, value, self.th)
        if st is None:
            self.store.put(pid, result.state)
        if result.status == "rejected":  # e.g. an impossible urine rate: an artefact
            why = result.rejection or Rejection("rejected", "rejected by the detectors")
            self.outputs.dead_letter(item.event, why, value.kind, ack=False)
        else:
            self._counter(_label(value), result.status).inc()
        if result.status != "duplicate":
            mark_applied(result.state, *position)
            dirty.add(pid)
        if result.state.pending:
            self._pending.setdefault(partition, set()).add(pid)
        else:
            self._pending.get(partition, set()).discard(pid)
        if isinstance(value, Observation):
            self._last_observed_ms = value.observed_at_ms
        self.outputs.alerts(result.alerts, msg.timestamp)
        if result.alerts:
            self.outputs.phase(result.state, result.alerts)

    def _on_context(self, ctx: PatientContext, partition: int, dirty: set[str],
                    position: tuple[str, int, int], now: float) -> None:
        pid = ctx.patient_id
        before = self.store.get(pid)
        st = apply_context(before, ctx)
        self._counter("context", "context").inc()
        if st is not None:
            mark_applied(st, *position)
            self.store.put(pid, st)
            dirty.add(pid)
            self.outputs.phase(st, ())
            return
        if before is not None:  # the decision a lab panel waits for, before forgetting (as
            self.outputs.alerts(flush(before, self.th), None)  # the replay does)
        self.beds.forget(pid)  # discharged: not a silent bed
        self._pending.get(partition, set()).discard(pid)
        # its positions stay behind: its earlier records, resent, are duplicates (module doc)
        self.store.discharge(partition, pid, *position, int(now * 1000))
        self.outputs.discharged(pid)

    def _commit_head_of(self, source: str, partition: int) -> int | None:
        """``commit_head`` for a source name as stored in ``PatientState.applied`` (a role;
        ``role@n`` for a misrouted record of partition n merged here); None when not known."""
        role, at, other = source.partition("@")
        topic, probe = self._topic_of.get(role), self.commit_head
        if topic is None or probe is None:
            return None
        return probe(topic, int(other) if at else partition)

    def _counter(self, kind: str, outcome: str) -> Any:
        """``clsmon_observations_total{kind, outcome}``'s child, looked up once per pair
        (``labels()`` takes a lock and builds a key on every call: a few % of the worker)."""
        key = (kind, outcome)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self.metrics.observations.labels(kind, outcome)
        return child

    def _merge(self, partition: int, now: float) -> PartitionMerge[_Item]:
        merge = self._merges.get(partition)
        if merge is None:
            merge = PartitionMerge(self.names.inputs, self.cfg.grace_ms, int(now * 1000))
            self._merges[partition] = merge
        return merge


def _label(value: Any) -> str:
    """The ``kind`` label of ``clsmon_observations_total`` for a released value."""
    if isinstance(value, PatientContext):
        return "context"
    return INTERVENTION if isinstance(value, Intervention) else value.kind


def _ts_ms(msg: Any, now: float) -> int:
    return int((msg.timestamp if msg.timestamp else now) * 1000)
