"""Producer timestamps in the order the worker restores (``streams.worker.ordering``).

The worker merges a partition's topics by the producer's timestamp (Kafka ``CreateTime``), so a
producer that feeds several topics must stamp its records in the order it sends them. One rule,
used by ``clsmon publish`` / the simulator (``streams.offline.publish.Publisher``) and by the
HL7 listener (``streams.interfaces.hl7.listener``).
"""

from __future__ import annotations


class SendOrderStamps:
    """Timestamps (ms) in send order: never before the previous stamp given to any key, and
    strictly after the previous one given to the same key (the patient) when that was for
    another topic (``topic`` None: always).

    Why both: within every partition the stamps are then in the order of its records, the
    arrival order the merge relies on. Stamped per patient only, one patient's stamp ran a ms
    or two ahead of the next patient's in the same partition, and the merge released a lab of
    that next patient ahead of its earlier vital (34 merged behind in one run of
    tests/test_stream_backlog.py). Between a patient's topics a stamp always moves on, so they
    merge in send order; within one topic an equal stamp keeps the order by offset. Strictly
    increasing for every record, a producer could send no more than about one record per ms.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, str | None]] = {}  # key -> (stamp, topic)
        self._last_any = 0

    def __len__(self) -> int:
        return len(self._last)

    def next(self, key: str, topic: str | None, now_ms: int) -> int:
        """The stamp of a record of ``key`` for ``topic`` sent at ``now_ms`` (wall clock)."""
        ts = max(now_ms, self._last_any)
        last = self._last.get(key)
        if last is not None:
            ts = max(ts, last[0] + 1 if topic is None or topic != last[1] else last[0])
        self._last[key] = (ts, topic)
        self._last_any = ts
        return ts

    def forget_before(self, ms: int) -> None:
        """Forget the keys last stamped before ``ms`` (bounded memory; a later record of theirs
        is stamped at or after every stamp given since, so after theirs)."""
        self._last = {k: v for k, v in self._last.items() if v[0] > ms}
