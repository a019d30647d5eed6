"""Put one partition's inputs back into arrival order before they reach the detectors.

The detectors decide at each observation with the evidence seen so far, so the ORDER in which a
patient's vitals and labs are processed changes decisions (a lab panel processed after instead of
before a weighing can turn a prodrome alert on or off; a lab processed hours of event time ahead
of the vitals before it makes those vitals "late" for the blood-pressure rules). Kafka keeps order
within a partition of one topic, but a consumer reading ``vitals`` and ``labs`` interleaves the two
arbitrarily (fetch sizes, backlog, rebalances). The offline replay processes rows in arrival
order; to give the same alerts the worker must too.

Arrival order across topics is the producers' message timestamp (Kafka ``CreateTime``). A
``PartitionMerge`` buffers the messages of one partition number from every co-partitioned source
topic and releases them in ``(timestamp, source rank, offset)`` order once no source can still
deliver an earlier one. A source cannot when it has delivered a message at or after that
timestamp, or when it is **caught up**: a fetch response the consumer received at least
``grace_ms`` after the message's timestamp showed that the source's partition held nothing the
worker has not received (``caught_up(source)``, from ``streams.kafka.consumer``). ``grace_ms``
is the bound on how much later than its timestamp a producer's record may be appended to the log.
Such a response stays true once seen: every record the source delivers later was appended after
it, so its timestamp is at least that response's time minus ``grace_ms``. The merge therefore
remembers the latest caught-up time each source was seen at and asks the consumer again only
when a message is too recent for it (in a backlog almost never: an empty ``patients`` topic would
otherwise be asked about at every message).

Why the broker's word and not a quiet spell (issue 14, item 8): this merge used to take a source
that had delivered nothing for ``grace_ms`` of wall clock for a silent one. Under a backlog a busy
topic goes quiet too, between two fetches or while the machine is loaded, and a burst of ~30k
observations into a running worker then had labs released ahead of the vitals before them: 0 to
2,438 vitals counted ``late`` and 4 to 11 of the replay's alerts, a different number each run.
A partition whose highwater is ahead of what the worker received is never silent, however long
the pause: under a backlog (and after a restart with one) the merge is exact, whatever the
timing, for any feed whose order within each topic is the arrival order and whose records reach
the log within ``grace_ms`` of their timestamp. No consumer can know of a record not yet in the
log (Kafka Streams makes the same bargain: KIP-695, ``max.task.idle.ms``); a message that
arrives after a later one was released is counted (``Arrival.BEHIND``), so a grace too short
for the producers is visible to ops, and its readings, if late for the patient, are shown on
the patient's alerts.

A producer timestamp ahead of the message's arrival at this worker by more than ``grace_ms`` (a
gateway with a skewed clock) is **clamped** to its arrival time (``push`` says so; the worker
counts it): a message dated a day ahead would otherwise be held, with everything behind it in
the commit, until the wall clock reached it. A lead within the grace (two machines' clocks a
few ms apart, or a producer stamping strictly increasing ms a little ahead of its clock) is
kept as it is: it holds the message at most that long, whereas clamping it would order the
sources by when the worker happened to receive them (a lab received before the vital sent just
ahead of it would be released first).

Misrouted records (a producer with another partitioner; ``streams.worker.detector``) are merged
into their home partition's merge by the worker that holds both partitions. Such a record speaks
for another partition's log, not this one's (``push(foreign=True)`` leaves the source's mark
alone), and the merge waits until the other partitions the worker holds have passed a message's
time too (``pop_ready``'s ``frontier``): without that, a CRC32 monitor gateway beside a murmur2
lab system had a lab released ahead of the patient's earlier vitals still on another partition
(11,860 vitals merged behind, 5,112 late, in a breaker's run).

Pure: no Kafka, no clock reads (callers pass ``now_ms`` and the probe), so it is tested without a
broker. Without a probe (tests of the detector alone) a source counts as caught up once it has
delivered nothing for ``grace_ms``, the old rule.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
_NEVER = -(2**62)
_ALWAYS = 2**62
#: how long a patient's latest released timestamp is remembered (1 h: a message arriving later
#: than that behind the partition's merge is flagged whoever it belongs to), and how many
#: patients a partition remembers before forgetting the old ones
_KEY_MEMORY_MS = 3_600_000
_KEYS_BEFORE_PRUNING = 4_096

#: ``caught_up(source) -> ms or None``: when the source was last seen to hold nothing more
CaughtUp = Callable[[str], "int | None"]
#: ``frontier(source) -> ms``: nothing before it can still come from the source's other
#: partitions (``PartitionMerge.pop_ready``)
Frontier = Callable[[str], int]


def clamped(ts_ms: int, now_ms: int, grace_ms: int) -> int:
    """A producer timestamp as the merge orders it: one ahead of its arrival ``now_ms`` by
    more than ``grace_ms`` is taken as the arrival (a skewed clock; module doc)."""
    return now_ms if ts_ms - now_ms > grace_ms else ts_ms


class Arrival(enum.IntFlag):
    """What ``PartitionMerge.push`` noticed about a message (falsy when nothing)."""

    #: its timestamp was ahead of its arrival by more than the grace: clamped to the arrival
    CLAMPED = 1
    #: a message with a later timestamp had already been released: this one reached the log
    #: (or the worker) more than the grace after its timestamp, so it is merged late
    BEHIND = 2


class PartitionMerge(Generic[T]):
    """Merge the co-partitioned sources of one partition number into timestamp order.

    Args:
        sources: the source topics; their order is the tie-break rank for equal timestamps.
        grace_ms: how much later than its timestamp a record may reach the log (ms).
        now_ms: wall clock at creation (a source never heard from counts as silent since then).
    """

    def __init__(self, sources: Sequence[str], grace_ms: int, now_ms: int) -> None:
        self._rank = {s: i for i, s in enumerate(sources)}
        self._grace = grace_ms
        self._heap: list[tuple[int, int, int, int, object, T]] = []
        self._last_ts = dict.fromkeys(sources, _NEVER)
        self._last_seen = dict.fromkeys(sources, now_ms)
        #: per source, the latest time it was seen caught up (``caught_up``); never lowered
        self._caught_up_at: dict[str, int] = {}
        self._seq = itertools.count()
        self._released = _NEVER  # the latest timestamp released so far
        self._released_by_key: dict[object, int] = {}  # ... per key (patient), recent ones

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, source: str, ts_ms: int, offset: int, item: T, now_ms: int,
             key: object = None, foreign: bool = False) -> Arrival:
        """Buffer one message of ``source`` (its producer timestamp and offset) that arrived
        at ``now_ms``. A timestamp ahead of ``now_ms`` by more than ``grace_ms`` is clamped to
        ``now_ms`` (``Arrival.CLAMPED``: a skewed clock, worth counting); a smaller lead is kept
        (the jitter between two machines' clocks; see the module doc). ``Arrival.BEHIND``: a
        later message of the same ``key`` (the patient: only one patient's order matters, and
        a producer stamps each patient's messages in increasing order, not the whole
        partition's) was already released, so the grace did not cover this one's way to the
        log (worth counting: its readings may be late for the patient).

        ``foreign``: the message came from another partition of ``source`` (a misrouted
        record merged into its home partition): it is ordered with the rest, but it says
        nothing of how far THIS partition's log of ``source`` has come (``pop_ready``'s
        ``frontier`` speaks for the other partitions)."""
        arrival = Arrival(0)
        if clamped(ts_ms, now_ms, self._grace) != ts_ms:
            ts_ms = now_ms
            arrival |= Arrival.CLAMPED
        released = self._released_by_key.get(key)
        if (ts_ms < released if released is not None
                else ts_ms < self._released - _KEY_MEMORY_MS):
            arrival |= Arrival.BEHIND
        heapq.heappush(self._heap,
                       (ts_ms, self._rank[source], offset, next(self._seq), key, item))
        if foreign:
            return arrival
        if ts_ms > self._last_ts[source]:
            self._last_ts[source] = ts_ms
        self._last_seen[source] = now_ms
        return arrival

    def pop_ready(self, now_ms: int, caught_up: CaughtUp | None = None,
                  frontier: Frontier | None = None) -> list[T]:
        """Every buffered message that no source can precede any more, in arrival order.

        ``caught_up(source)`` is asked only when a release depends on that source and the
        latest time it was seen caught up is too early for the message, and at most once per
        source and call (the consumer is read on the hot path; an empty ``patients`` topic is
        in every decision).

        ``frontier(source)``, when given: the timestamp (ms) before which no OTHER partition
        of ``source`` can still bring a message for this merge (misrouted records merged
        here, ``push(foreign=True)``); a message at or after it waits. Asked once per source
        and call.
        """
        out: list[T] = []
        heap = self._heap
        if not heap:
            return out
        if caught_up is None:
            caught_up = self._quiet_since(now_ms)
        by_key = self._released_by_key
        asked: dict[str, int | None] = {}
        limit = _ALWAYS if frontier is None else min(frontier(s) for s in self._rank)
        while heap and heap[0][0] < limit and self._may_release(heap[0][0], heap[0][1],
                                                                 caught_up, asked):
            ts, _, _, _, key, item = heapq.heappop(heap)
            if ts > self._released:
                self._released = ts
            if ts > by_key.get(key, _NEVER):
                by_key[key] = ts
            out.append(item)
        if len(by_key) > _KEYS_BEFORE_PRUNING:
            self._forget_old_keys()
        return out

    def _forget_old_keys(self) -> None:
        """Keys released longer than ``_KEY_MEMORY_MS`` before the newest release: a message
        of theirs that far behind is flagged anyway (bounded memory over months of patients)."""
        floor = self._released - _KEY_MEMORY_MS
        self._released_by_key = {k: ts for k, ts in self._released_by_key.items() if ts >= floor}

    def drain(self) -> list[T]:
        """Everything buffered, in order (used when a partition is given up)."""
        out = [entry[5] for entry in sorted(self._heap, key=lambda e: e[:4])]
        self._heap.clear()
        return out

    def _may_release(self, ts: int, rank: int, caught_up: CaughtUp,
                     asked: dict[str, int | None]) -> bool:
        """No source can still deliver a message before ``(ts, rank)``; ``asked`` holds the
        answers of ``caught_up`` given in this release (one snapshot per call), and
        ``_caught_up_at`` the latest time each source was seen caught up (module doc)."""
        for source, source_rank in self._rank.items():
            last = self._last_ts[source]
            # a source ranked before this message must have moved strictly past its timestamp
            # (an equal timestamp from it would sort first); one ranked after, at least to it
            if last > ts or (last == ts and source_rank >= rank):
                continue
            known = self._caught_up_at.get(source, _NEVER)
            if known >= ts + self._grace:
                continue  # seen caught up grace_ms after this message: nothing earlier
            if source not in asked:  # its answer in this call is in ``known`` already
                at = asked[source] = caught_up(source)
                if at is not None and at > known:
                    self._caught_up_at[source] = at
                    if at >= ts + self._grace:
                        continue
            return False
        return True

    def _quiet_since(self, now_ms: int) -> CaughtUp:
        """The rule without a consumer to ask: quiet for ``grace_ms`` counts as caught up."""
        grace, last_seen = self._grace, self._last_seen

        def probe(source: str) -> int | None:
            return now_ms if now_ms - last_seen[source] >= grace else None

        return probe
