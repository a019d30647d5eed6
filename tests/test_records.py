"""aiokafka's record parsing as corrected in streams.kafka.records (issue 14): a batch that cannot
be decoded is one marker record and reading goes on; offsets without a record are known.

The batches are real Kafka v2 record batches built with aiokafka's own builder, then damaged the
way a broken producer or a missing codec library would leave them (CRC recomputed, so only the
decoding fails), and parsed by aiokafka's real fetcher class through the correction.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from streams.kafka import records

TP = TopicPartition("vitals", 0)
T0 = 1_790_000_000_000
_ATTRIBUTES, _CRC, _RECORDS = 21, 17, 61  # byte positions in a v2 batch header


def _batch(base: int, n: int, codec: int = 0, damage: bool = False,
           codec_bits: int | None = None) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=0,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 20)
    for i in range(n):
        builder.append(i, timestamp=T0 + base + i, key=b"bed1",
                       value=b'{"n": %d}' % (base + i), headers=[])
    buf = bytearray(builder.build())
    struct.pack_into(">q", buf, 0, base)
    if damage:  # garbage in the middle of the compressed payload
        middle = (_RECORDS + len(buf)) // 2
        buf[middle:middle + 8] = b"\xff" * 8
    if codec_bits is not None:
        (attributes,) = struct.unpack_from(">h", buf, _ATTRIBUTES)
        struct.pack_into(">h", buf, _ATTRIBUTES, (attributes & ~0x07) | codec_bits)
    struct.pack_into(">I", buf, _CRC, calc_crc32c(bytes(buf[_ATTRIBUTES:])))
    return bytes(buf)


def _parse(chunk: bytes, cls: Any, fetch_offset: int = 0) -> tuple[list[Any], int]:
    parsed = cls(TP, MemoryRecords(chunk), [], fetch_offset, None, None, True,
                 aiokafka_fetcher.READ_UNCOMMITTED)
    return list(parsed), parsed.next_fetch_offset


@pytest.fixture(autouse=True)
def _fresh_spans() -> Any:
    records.NO_RECORDS.clear()
    yield
    records.NO_RECORDS.clear()


@pytest.mark.parametrize("damaged", [
    pytest.param(_batch(3, 4, codec=4, damage=True), id="zstd-payload-damaged"),
    pytest.param(_batch(3, 4, codec=1, damage=True), id="gzip-payload-damaged"),
    pytest.param(_batch(3, 4, codec_bits=5), id="unknown-codec-5"),
])
def test_an_undecodable_batch_is_one_marker_and_the_batches_after_it_are_read(
        damaged: bytes) -> None:
    chunk = _batch(0, 3) + damaged + _batch(7, 2, codec=4)
    aiokafkas_own = records.PartitionRecords.__mro__[1]  # as installed before the correction
    with pytest.raises(Exception):  # noqa: B017 - aiokafka's own class: whatever it raises
        _parse(chunk, aiokafkas_own)
    got, next_offset = _parse(chunk, records.PartitionRecords)
    assert [r.offset for r in got] == [0, 1, 2, 3, 7, 8]
    marker = got[3]
    assert isinstance(marker, records.UndecodableBatch)
    assert (marker.key, marker.value, marker.next_offset) == (None, None, 7)
    assert "offsets 3..6 of vitals[0]" in marker.reason() and marker.error
    assert [r.value for r in got if r is not marker] == [
        b'{"n": 0}', b'{"n": 1}', b'{"n": 2}', b'{"n": 7}', b'{"n": 8}']
    assert next_offset == 9
    # the rest of the batch holds nothing to wait for; the offsets around it do
    assert records.NO_RECORDS.skip(TP, 4) == 7
    assert records.NO_RECORDS.skip(TP, 3) == 3 and records.NO_RECORDS.skip(TP, 8) == 8


def test_a_fetch_inside_an_undecodable_batch_marks_only_what_is_left_of_it() -> None:
    got, next_offset = _parse(_batch(0, 5, codec=4, damage=True), records.PartitionRecords,
                              fetch_offset=2)
    assert [(r.offset, r.next_offset) for r in got] == [(2, 5)]
    assert next_offset == 5


def test_offsets_the_chunk_skips_are_recorded_as_holding_no_record() -> None:
    """Two batches with a gap between them (a transaction marker at 3, which aiokafka skips),
    and a fetch that began before the first record it returns."""
    chunk = _batch(1, 2) + _batch(4, 2)
    got, next_offset = _parse(chunk, records.PartitionRecords, fetch_offset=0)
    assert [r.offset for r in got] == [1, 2, 4, 5] and next_offset == 6
    assert records.NO_RECORDS.skip(TP, 0) == 1
    assert records.NO_RECORDS.skip(TP, 3) == 4
    assert records.NO_RECORDS.skip(TP, 2) == 2


def test_spans_chain_and_are_forgotten_once_committed_past() -> None:
    spans = records.NoRecords()
    spans.add(TP, 10, 12)
    spans.add(TP, 12, 13)
    spans.add(TP, 20, 20)  # empty: ignored
    assert spans.skip(TP, 10) == 13 and spans.skip(TP, 11) == 11
    spans.forget_below(TP, 12)
    assert spans.skip(TP, 10) == 10 and spans.skip(TP, 12) == 13
