"""What aiokafka's record parsing cannot decode, and which offsets of a partition hold no record:
two corrections to aiokafka 0.14.0 (pinned) below Faust's consumer (``streams.kafka.consumer``,
corrections 6 and 7).

6. **An undecodable batch.** aiokafka decodes a fetched record batch while Faust iterates it
   (``PartitionRecords._unpack_records``). A batch it cannot decode raises out of
   ``getmany``: ``UnsupportedCodecError`` for a codec whose library is missing (snappy, lz4 and
   zstd need the ``cramjam`` extra) or unknown, ``CorruptRecordException`` for a bad CRC, and
   whatever the decompressor raises for a damaged payload. Faust's fetcher crashes on it, the
   worker exits, and it crash-loops on restart because the batch is fetched again (issue 14).
   Here each batch is decoded on its own: one that fails is replaced by a single
   ``UndecodableBatch`` record at its first offset not yet delivered, carrying the batch's
   extent and the error, and reading goes on with the next batch. The worker dead-letters it
   (``undecodable_batch``) and acknowledges it; the batch's bytes stay in the log (until
   retention) for a client that can read them. Other batches and partitions never stop.

7. **Offsets without a record.** A transactional producer's commit and abort markers take
   offsets of the log but are never handed to the consumer (``_unpack_records`` skips control
   batches, and aborted batches under ``read_committed``); so does the rest of an undecodable
   batch. The consumer then sees a jump in offsets, and a commit rule that waits for every
   offset to be acknowledged waits for ever (issue 14: the committed offset stopped at the
   first marker and the acknowledged-offset list grew). While iterating a fetched chunk we
   know exactly which offsets it skipped, so each such span is recorded here (``NO_RECORDS``)
   before the records reach Faust; the consumer's commit rule, its offset-order check and the
   stall guard step over them.

Source: aiokafka 0.14.0 ``aiokafka/consumer/fetcher.py`` (``PartitionRecords``, the module
global that ``Fetcher._proc_fetch_request`` instantiates) and ``aiokafka/record``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.structs import ConsumerRecord

#: Kafka's record-batch compression codes (attributes bits 0-2), for the dead letter's wording
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
#: spans kept per partition at most (compacted changelogs have many, never pruned: bounded)
MAX_SPANS = 1024


@dataclass
class UndecodableBatch(ConsumerRecord[bytes, bytes]):
    """Stands for a record batch that could not be decoded: offsets ``offset`` up to
    ``next_offset - 1`` (key and value None; ``timestamp`` is the batch's largest)."""

    next_offset: int = 0
    codec: str = "none"
    error: str = ""

    def reason(self) -> str:
        """One sentence for the dead letter: what, where, why, and where the bytes are."""
        last = self.next_offset - 1
        span = f"offset {self.offset}" if last <= self.offset else \
            f"offsets {self.offset}..{last}"
        return (f"record batch at {span} of {self.topic}[{self.partition}] (compression "
                f"{self.codec}) could not be decoded: {self.error}; skipped, its bytes are "
                "still in the log for a client that can read them")


class NoRecords:
    """Per partition, spans of offsets known to hold no record: ``start -> end`` (exclusive).

    Keyed by the partition as a ``(topic, partition)`` tuple (aiokafka's ``TopicPartition`` and
    Faust's ``TP`` are equal named tuples). Written by the consumer's thread while it iterates
    fetched chunks, read by the event loop (Faust's consumer): single dict operations, atomic
    under the GIL.
    """

    def __init__(self) -> None:
        self._spans: dict[Any, dict[int, int]] = {}

    def add(self, tp: Any, start: int, end: int) -> None:
        if end <= start:
            return
        spans = self._spans.get(tp)
        if spans is None:
            spans = self._spans[tp] = {}
        spans[start] = end
        if len(spans) > MAX_SPANS:  # the oldest span first (insertion order)
            spans.pop(next(iter(spans)), None)

    def spans_of(self, tp: Any) -> dict[int, int] | None:
        """The partition's spans (``start -> end``), or None (the common case: none)."""
        return self._spans.get(tp) or None

    def skip(self, tp: Any, offset: int) -> int:
        """The first offset at or after ``offset`` that may hold a record."""
        spans = self._spans.get(tp)
        if spans:
            end = spans.get(offset)
            while end is not None and end > offset:
                offset = end
                end = spans.get(offset)
        return offset

    def forget_below(self, tp: Any, offset: int) -> None:
        """Drop the spans that end at or below ``offset`` (committed already)."""
        spans = self._spans.get(tp)
        if spans:
            for start, end in list(spans.items()):
                if end <= offset:
                    spans.pop(start, None)

    def clear(self) -> None:
        self._spans.clear()


#: the process's record of offsets without a record (one consumer per process: worker, notifier)
NO_RECORDS = NoRecords()


class _Tracking:
    """A ``MemoryRecords`` that remembers the batch it handed out last."""

    def __init__(self, records: Any) -> None:
        self._records = records
        self.current: Any = None

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        self.current = None
        self.current = self._records.next_batch()
        return self.current

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())


class PartitionRecords(aiokafka_fetcher.PartitionRecords):
    """aiokafka's records of one fetched chunk, decoded batch by batch (6.), recording the
    offsets it skips (7.)."""

    _tp: Any
    _records: Any
    next_fetch_offset: int

    def _unpack_records(self) -> Iterator[Any]:
        tp = self._tp
        tracking = _Tracking(self._records)
        self._records = tracking
        expected = self.next_fetch_offset  # the chunk's fetch offset
        while True:
            try:
                for record in super()._unpack_records():
                    if record.offset > expected:  # control or aborted batches, compaction
                        NO_RECORDS.add(tp, expected, record.offset)
                    expected = record.offset + 1
                    yield record
            except Exception as exc:  # noqa: BLE001 - whatever decoding raised: see 6.
                batch = tracking.current
                if batch is None:  # the chunk's framing itself is broken: aiokafka's error
                    raise
                start, end = max(batch.base_offset, expected), batch.next_offset
                self.next_fetch_offset = max(end, start)
                if end <= start:  # the error came after the batch's last record
                    continue
                if start > expected:
                    NO_RECORDS.add(tp, expected, start)
                NO_RECORDS.add(tp, start + 1, end)
                expected = end
                yield UndecodableBatch(
                    topic=tp.topic, partition=tp.partition, offset=start,
                    timestamp=batch.max_timestamp, timestamp_type=batch.timestamp_type,
                    key=None, value=None, checksum=None, serialized_key_size=-1,
                    serialized_value_size=-1, headers=[], next_offset=end,
                    codec=CODECS.get(batch.compression_type, str(batch.compression_type)),
                    error=f"{type(exc).__name__}: {exc}")
                continue  # a fresh aiokafka generator goes on with the next batch
            if self.next_fetch_offset > expected:  # trailing markers of the chunk
                NO_RECORDS.add(tp, expected, self.next_fetch_offset)
            return


def install() -> None:
    """Make aiokafka's fetcher build ``PartitionRecords`` from this module (idempotent)."""
    aiokafka_fetcher.PartitionRecords = PartitionRecords
