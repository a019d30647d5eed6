"""Put one partition's inputs back into arrival order before they reach the detectors.

The detectors decide at each observation with the evidence seen so far, so the ORDER in which a
patient's vitals and labs are processed changes decisions (a lab panel processed after instead of
before a weighing can turn a prodrome alert on or off). Kafka keeps order within a partition of one
topic, but a consumer reading ``vitals`` and ``labs`` interleaves the two arbitrarily (fetch sizes,
backlog, rebalances). The offline replay processes rows in arrival order; to give the same alerts
the worker must too.

Arrival order across topics is the producers' message timestamp (Kafka ``CreateTime``). A
``PartitionMerge`` buffers the messages of one partition number from every co-partitioned source
topic and releases them in ``(timestamp, source rank, offset)`` order once no source can still
deliver an earlier one: a source has either delivered a message at or after that timestamp, or has
been silent for ``grace_ms`` while the message is at least ``grace_ms`` old (a bounded-lateness
watermark; a quiet lab feed must not hold the vitals back for ever). Backlog (a restart, a late
start) is merged exactly; live traffic is delayed by up to ``grace_ms``.

Quiet is not the same as silent: a source whose messages this worker has already fetched but not
yet received (held up inside the consumer, or dropped by Faust at a rebalance and waiting for a
re-read, see ``streams.kafka.consumer.StallGuard``) has more to say. The caller tells ``pop_ready``
which sources are in that state (``in_flight``), and those never count as silent: without this a
lab panel re-read a few seconds late was folded in after the vitals that followed it, hours
later in event time on a backlog, and changed an alert (issue 7).

Pure: no Kafka, no clock reads (callers pass ``now_ms``), so it is tested without a broker.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
_NEVER = -(2**62)


class PartitionMerge(Generic[T]):
    """Merge the co-partitioned sources of one partition number into timestamp order.

    Args:
        sources: the source topics; their order is the tie-break rank for equal timestamps.
        grace_ms: how long a silent source may still deliver something older (wall clock).
        now_ms: wall clock at creation (a source never heard from counts as silent since then).
    """

    def __init__(self, sources: Sequence[str], grace_ms: int, now_ms: int) -> None:
        self._rank = {s: i for i, s in enumerate(sources)}
        self._grace = grace_ms
        self._heap: list[tuple[int, int, int, int, T]] = []
        self._last_ts = dict.fromkeys(sources, _NEVER)
        self._last_seen = dict.fromkeys(sources, now_ms)
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, source: str, ts_ms: int, offset: int, item: T, now_ms: int) -> None:
        """Buffer one message of ``source`` (its producer timestamp and offset)."""
        rank = self._rank[source]
        heapq.heappush(self._heap, (ts_ms, rank, offset, next(self._seq), item))
        if ts_ms > self._last_ts[source]:
            self._last_ts[source] = ts_ms
        self._last_seen[source] = now_ms

    def pop_ready(self, now_ms: int, in_flight: Callable[[str], bool] | None = None) -> list[T]:
        """Every buffered message that no source can precede any more, in arrival order.

        ``in_flight(source)`` says whether messages of ``source`` are on their way to this worker;
        it is asked only when a release depends on that source being silent.
        """
        out: list[T] = []
        heap = self._heap
        while heap and self._may_release(heap[0][0], heap[0][1], now_ms, in_flight):
            out.append(heapq.heappop(heap)[4])
        return out

    def drain(self) -> list[T]:
        """Everything buffered, in order (used when a partition is given up)."""
        out = [entry[4] for entry in sorted(self._heap)]
        self._heap.clear()
        return out

    def _may_release(self, ts: int, rank: int, now_ms: int,
                     in_flight: Callable[[str], bool] | None) -> bool:
        old_enough = now_ms - ts >= self._grace
        for source, source_rank in self._rank.items():
            last = self._last_ts[source]
            # a source ranked before this message must have moved strictly past its timestamp
            # (an equal timestamp from it would sort first); one ranked after, at least to it
            if last > ts or (last == ts and source_rank >= rank):
                continue
            if (old_enough and now_ms - self._last_seen[source] >= self._grace
                    and (in_flight is None or not in_flight(source))):
                continue
            return False
        return True
