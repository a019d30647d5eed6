"""Corrections to Faust's aiokafka consumer (faust-streaming 0.15.3, pinned), used by the worker
and the notifier through ``install``; and ``StallGuard``, the safety net for what remains.

1. **Fetch wait.** Faust hard-codes ``fetch_max_wait_ms=1500``: a quiet partition holds a fetch
   for 1.5 s, and that sets the alert latency. We set it (``--fetch-wait-ms``).

2. **Messages lost at a rebalance when a partition has no committed offset.** When a rebalance
   starts, Faust abandons messages it has already taken from aiokafka: ``Consumer.getmany``
   stops iterating a fetched batch when the flow is suspended or the generation changes, and
   ``_drain_messages`` cancels a delivery in flight. aiokafka's position is already past them.
   Faust counts on ``perform_seek`` ("Seek stream partitions to committed offsets") after the
   rebalance to read them again, but aiokafka's ``seek_to_committed`` only seeks when the
   committed offset is above 0 (``if offset and offset > 0``): a partition with no commit yet
   keeps its advanced position, and the abandoned messages are never delivered. For us that
   was a partition whose committed offset never reached its end (the worker "stopped
   consuming") and a restarted notifier that never delivered some alerts (issues 5 and 7).
   Our ``seek_to_committed`` seeks every stream partition: to its commit, or, without one, to
   where ``consumer_auto_offset_reset`` says a new group starts. Changelog partitions are left
   to Faust's table recovery, which positions them itself. Re-reading is safe: processing is
   at-least-once and idempotent downstream (deterministic alert ids, the notifier's dedup table).

3. **Batches that do not start where the stream is.** ``getmany`` awaits a batch from the
   consumer's thread (up to 1 s) and only then reads the generation it checks records against,
   so a rebalance that completes during that wait (flow stopped, partitions sought back to their
   commits, flow resumed) leaves a batch fetched from the OLD positions, which Faust delivers as
   current. Two things follow. Faust records those offsets as read, and when the messages from
   the commit arrive it drops them as "already read" (``offset >= read_offset`` fails): never
   acknowledged, the committed offset stops for good (a "stalled" partition). Or, worse, it
   takes the jump for a compacted-topic gap (``_add_gap``) and counts the skipped offsets as
   acknowledged: they are committed without ever being processed (lost). Both were seen in the
   rebalance and SIGTERM tests (issue 7). Our ``_drain_messages`` delivers a stream
   partition's messages only in contiguous offset order (from the offset every seek sets): on a
   jump it seeks the partition back to the first missing offset and drops the rest of that
   batch. Our input topics are not compacted, so their offsets are contiguous unless a producer
   writes transactions (its commit markers take offsets): a hole that is there again after the
   re-read is let through, which costs one extra fetch per marker.
   Related: on a FIRST assignment Faust's flow is already on, so it delivered from wherever
   aiokafka started while the seek to the commits was under way, and its commits raced with
   that seek. Between a rebalance and its seek (``seeking``) stream records are not delivered;
   the seek reads them again, and a partition dropped from while the seek was under way is
   sought again right after it.

4. **Commits past unacknowledged messages.** Faust commits the run of acknowledged offsets that
   follows its last commit, but its test for "the message at the head is not acknowledged yet"
   is off by one (``min(acked) - committed > 1``, where ``committed`` is already the NEXT
   offset) and is skipped altogether while nothing has been committed (``if committed:``). Our
   worker acknowledges out of offset order by design: a dead letter at once, the valid message
   before it only once the ordering merge released it and its state was written. So Faust
   committed past messages still held in the merge, and a worker stopped (SIGTERM, rebalance)
   before releasing them lost them: the SIGTERM test counted up to hundreds fewer processed
   messages than sent, all committed (issue 7). ``_new_offset`` is rewritten to commit only
   from the first unacknowledged offset (the commit, or where reading began); our
   ``_drain_messages`` never registers skipped offsets as a gap that counts as acknowledged.

5. **Four tasks per message.** Faust's ``_drain_messages`` hands each message to the agents with
   ``wait_first(deliver(message), suspend_flow.wait())`` so that a rebalance can interrupt a
   delivery blocked by a full agent buffer. ``Service.wait_first`` wraps both, plus "stopped"
   and "crashed", in tasks and ``asyncio.wait``s on them: about a third of a worker's time at
   full speed (py-spy). A delivery almost never blocks, so we run it inline first; only when it
   does block is it continued as a task under Faust's own ``wait_first``, unchanged.
   It does block under a backlog, where the agent is the bottleneck: its buffer
   (``stream_buffer_maxsize``) is full and every delivery waits for one free slot, in tasks
   (the conductor's ``put`` and ``asyncio.wait``, then ours). So when a stream partition's
   buffer is full, the loop first waits, once, until the agent has taken it down to half
   (interrupted by a rebalance like a delivery), and the next few thousand deliveries run
   inline. Same messages, same order, same acknowledgements: only when the fetched ones wait.

6. **Undecodable batches** and 7. **offsets without a record** (transaction markers) are
   corrected below Faust, in aiokafka's record parsing: ``streams.kafka.records``. Here the
   delivery in offset order (3.) steps over the offsets known to hold no record instead of
   reading them again, the commit rule (4.) commits past them, and the stall guard does not
   wait for them; an undecodable batch reaches the agent as one message without key and value
   (``undecodable_batch`` gives its extent and error).

8. **Is a partition caught up?** The ordering merge (``streams.worker.ordering``) may take a
   source for silent only when the broker says so: ``_ConsumerThread.caught_up_at`` is the time
   the last fetch REQUEST was sent whose response's highwater the fetch position has reached,
   once the agent has received the last record handed to Faust. A quiet spell of the agent is
   no evidence: under a backlog it happens between two fetches (issue 14, item 8).
   Why the request's time: aiokafka stamps a partition's state with the time it PROCESSED the
   response (``tp_state.timestamp``, ``Fetcher._proc_fetch_request``), but the broker read the
   highwater when it built the response, which may be long before on a loaded worker (the
   response waits in the socket while the Faust thread holds the GIL). Records appended in
   between have timestamps before aiokafka's stamp, and the merge released later messages of
   the other topic ahead of them (226 and 448 vitals ``late`` in two runs of
   ``tests/test_stream_backlog.py`` under load). The broker built the response after the
   request reached it, so the send time is a safe lower bound: ``_proc_fetch_request`` below
   keeps, per partition, the highwater of the last response together with its request's send
   time (one tuple, written at once, so the main thread never reads a highwater with another
   response's time).

9. **Commit errors after an idle spell.** Faust's livelock check (every 2.5 commit intervals)
   logs ERROR "Has not committed TP(...)" when a partition has records in flight (highwater past
   the fetch position) and its last commit is older than ``broker_commit_livelock_soft_timeout``
   (5 min). A partition with nothing to commit has no recent commit either, so the first records
   after five quiet minutes, caught in flight by the check before the next commit, read as a
   stalled commit: the ticks topic (records only while the worker has work) every few idle
   minutes, and a quiet ward's inputs (issue 14, item 7). ``verify_event_path`` counts a check
   that finds nothing left to commit (the commit at the highwater) as a commit, so "last commit"
   means "last time the commit was up to date"; a commit that stops while records wait is still
   reported.

10. **A traceback at a stop with the broker gone.** aiokafka's ``Fetcher.close`` cancels its
   pending fetch requests and awaits each without suppressing the ``CancelledError`` (its own
   fetch routine, just above, is awaited under ``suppress``; aiokafka issue #647 reports the
   same in the coordinator's close). A fetch request is pending at a stop when it waits for its
   retry backoff, i.e. when the broker does not answer: the error ends the consumer thread's
   stop and prints a 30-line traceback ("Exception in thread ...: CancelledError") into the
   log of a worker or notifier stopped while its broker was gone (a newcomer's check). Our
   ``_proc_fetch_request`` ends quietly, with no result, when it is cancelled because its
   fetcher is closing; a cancellation at any other time is left to propagate.

11. **Batches instead of events** (the worker; ``deliver_in_batches``). Faust hands an agent
   one message at a time: an ``Event`` per message, a queue put and get, the stream's
   bookkeeping (generation check, tracking, sensors, the current event), a task switch. Per
   message, that path cost the worker more than detecting on it: with it, one worker read
   3.5k obs/s where a trivial Faust agent read 7k, 270 against 110 ms of CPU per 1,000
   messages (py-spy, issue 14, item 6). For the topics given to ``deliver_in_batches`` our
   delivery loop (3.) keeps every check above per message (contiguous offsets, nothing while
   a seek is under way, holes read again) but, instead of a delivery per message, collects
   them and hands the agent ONE event per batch, whose value is the list of messages (at most
   the ~100 read between two yields of the loop, before any ``await``: a batch never spans a
   seek or a commit). The batch goes through an in-memory Faust channel, so Faust's stream
   still skips it when the flow is stopped or the generation changed (a rebalance): its
   messages were never acknowledged and the seek reads them again. A full channel makes the
   loop wait (back pressure), interrupted by a rebalance like a delivery. The agent wraps each
   message as a ``Delivery`` (``received``), which acknowledges it with Faust's
   ``Consumer.ack``: the commit rule (4.) is unchanged. The notifier keeps Faust's path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from typing import Any, cast

import aiokafka
import faust
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.structs import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults
from prometheus_client import CollectorRegistry, Counter

from streams.kafka import records
from streams.kafka.records import NO_RECORDS, UndecodableBatch

log = logging.getLogger(__name__)
_CONSUMER_FETCHING = "FETCHING"  # faust.transport.consumer.CONSUMER_FETCHING

#: Faust's own value, kept when --fetch-wait-ms is not given
FAUST_FETCH_WAIT_MS = 1500


#: aiokafka's own ``Fetcher._proc_fetch_request``, wrapped by ``_proc_fetch_request``
_AIOKAFKA_PROC_FETCH_REQUEST = aiokafka_fetcher.Fetcher._proc_fetch_request


async def _proc_fetch_request(self: Any, assignment: Any, node_id: int, request: Any) -> Any:
    """aiokafka's fetch round trip, then, for every partition whose state this response
    updated, ``(highwater, send time in ms)`` in ``self.clsmon_fetch_basis[tp]`` (8. in the
    module doc). A response that did not update a partition (an error, a position that moved
    meanwhile) leaves its previous basis in place, which is only older: safe. Cancelled by a
    closing fetcher, it returns False (no wake-up needed) instead of raising (10.)."""
    sent_ms = int(1000 * time.time())
    tps = [TopicPartition(topic, partition)
           for topic, partitions in request.topics for partition, *_ in partitions]
    before = {tp: _stamp(assignment, tp) for tp in tps}
    try:
        result = await _AIOKAFKA_PROC_FETCH_REQUEST(self, assignment, node_id, request)
    except asyncio.CancelledError:
        if getattr(self, "_closed", False):  # Fetcher.close awaits it unguarded (10.)
            return False
        raise
    basis = self.__dict__.setdefault("clsmon_fetch_basis", {})
    for tp in tps:
        state = assignment.state_value(tp)
        if state is not None and state.timestamp is not None and state.timestamp != before[tp]:
            basis[tp] = (state.highwater, sent_ms)
    return result


def install_fetch_basis() -> None:
    """Make aiokafka's fetcher keep ``clsmon_fetch_basis`` (8. in the module doc; idempotent)."""
    aiokafka_fetcher.Fetcher._proc_fetch_request = _proc_fetch_request


def _stamp(assignment: Any, tp: Any) -> int | None:
    state = assignment.state_value(tp)
    return None if state is None else cast("int | None", state.timestamp)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: int = FAUST_FETCH_WAIT_MS
    #: where the last seek put each stream partition: the first offset to deliver, and the
    #: commit floor before the first commit (read by ``_Consumer``)
    sought: Mapping[Any, int] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: per stream partition, the offset of the last record handed to Faust since the
        #: partition's last seek (8. in the module doc)
        self.last_handed: dict[Any, int] = {}
        #: per stream partition, ``(last record handed, fetch position)`` as of the end of the
        #: last ``_fetch_records``, one tuple written at once: aiokafka moves the position
        #: while it hands records out, before ``last_handed`` can follow (8.)
        self.handed: dict[Any, tuple[int | None, int | None]] = {}
        #: per partition, how many seeks so far: a fetch that straddles a seek records nothing
        self.seeks: dict[Any, int] = {}
        super().__init__(*args, **kwargs)

    def forget(self, tp: Any | None = None) -> None:
        """A seek of ``tp`` (of every partition when None): what was handed before it is read
        again, so nothing recorded about it holds any more."""
        tps = list(self.handed.keys() | self.last_handed.keys() | self.seeks.keys()) \
            if tp is None else [tp]
        for one in tps:
            self.seeks[one] = self.seeks.get(one, 0) + 1
            self.last_handed.pop(one, None)
            self.handed.pop(one, None)

    async def _fetch_records(self, consumer: Any, active_partitions: Any,
                             timeout: float | None = None,
                             max_records: int | None = None) -> Any:
        seeks = dict(self.seeks)
        records = await super()._fetch_records(consumer, active_partitions, timeout=timeout,
                                               max_records=max_records)
        self.note_handed(records, active_partitions, seeks)
        return records

    def note_handed(self, records: Mapping[Any, Any], partitions: Any,
                    seeks_before: Mapping[Any, int]) -> None:
        """After aiokafka handed ``records`` out of ``partitions``: the last offset handed
        and the fetch position, per partition, for ``caught_up_at``; nothing for a partition
        sought since ``seeks_before`` (a copy of ``seeks`` taken before the fetch)."""
        last, handed, now = self.last_handed, self.handed, self.seeks
        for tp, batch in records.items():
            if batch and now.get(tp, 0) == seeks_before.get(tp, 0):
                last[tp] = batch[-1].offset
        for tp in partitions:
            if now.get(tp, 0) != seeks_before.get(tp, 0):
                handed.pop(tp, None)
                continue
            state = self._tp_state(tp)
            handed[tp] = (last.get(tp), None if state is None else state._position)

    def caught_up_at(self, tp: Any, received_next: int | None) -> int | None:
        """Wall clock (ms) of the last fetch response that showed ``tp`` holding nothing
        beyond what the agent has received (``received_next``: the offset after the last one
        it got); None while there is more, in aiokafka or on the broker, or when unknown.

        "Nothing beyond": the fetch position has reached the highwater the broker
        reported in that response, and the agent has the last record handed to Faust since
        the partition's last seek (offsets in between hold no record: markers, 7.). The time
        is when that response's request was sent; the position and the last record handed are
        the pair ``note_handed`` recorded together, never aiokafka's live position, which
        moves before the records it stands for are handed out (8. in the module doc).
        """
        fetcher = getattr(self._consumer, "_fetcher", None)
        basis = getattr(fetcher, "clsmon_fetch_basis", {}).get(tp)
        handed = self.handed.get(tp)
        if basis is None or handed is None:
            return None
        (highwater, at), (last, position) = basis, handed
        if highwater is None or position is None or position < highwater:
            return None
        if last is not None and (received_next is None or received_next <= last):
            return None
        return int(at)

    def verify_event_path(self, now: float, tp: Any) -> None:
        """Faust's livelock check of ``tp``, with an up-to-date commit counting as a commit
        (9. in the module doc)."""
        state = self._tp_state(tp)
        head = cast("_Consumer", self.consumer).commit_head(tp)
        if (state is not None and state.highwater is not None and head is not None
                and NO_RECORDS.skip(tp, head) >= state.highwater):
            self.tp_last_committed_at[tp] = now  # nothing to commit: the commit is current
        super().verify_event_path(now, tp)

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms  # read by consumer.start()
        return consumer

    async def seek_to_committed(self) -> Mapping[Any, int]:
        return await self.call_thread(self._seek_every_stream_partition)

    def _tp_state(self, tp: Any) -> Any:
        """aiokafka's state of an assigned partition (position, highwater, time of the last
        fetch response), None when unknown: read without a round trip to the consumer's thread
        (attributes, atomic under the GIL), because the ordering merge asks on its hot path."""
        consumer = self._consumer
        if consumer is None:
            return None
        try:
            return consumer._subscription.subscription.assignment.state_value(tp)
        except (AttributeError, KeyError, TypeError):  # not assigned (any more)
            return None

    async def _seek_every_stream_partition(self) -> Mapping[Any, int]:
        """Runs in the consumer's thread (aiokafka's loop)."""
        consumer = self._ensure_consumer()
        changelogs = self.app.tables.changelog_topics
        committed: dict[Any, int] = {}
        uncommitted = []
        self.forget()  # records handed before the seek are read again
        for tp in consumer.assignment():
            offset = await consumer.committed(tp)
            committed[tp] = offset
            if tp.topic in changelogs:
                continue
            if offset is not None and offset >= 0:
                consumer.seek(tp, offset)
            else:
                uncommitted.append(tp)
        log.info("seek to committed: %s", {f"{tp.topic}[{tp.partition}]": committed[tp]
                                           for tp in consumer.assignment()
                                           if tp.topic not in changelogs})
        if uncommitted:
            if self.app.conf.consumer_auto_offset_reset == "latest":
                await consumer.seek_to_end(*uncommitted)
            else:
                await consumer.seek_to_beginning(*uncommitted)
        sought = {tp: offset for tp, offset in committed.items()
                  if tp.topic not in changelogs and offset is not None and offset >= 0}
        for tp in uncommitted:
            sought[tp] = await consumer.position(tp)
        self.sought = sought
        return committed


class _Continue:
    """Awaitable that goes on running a coroutine already started by hand (``send(None)``)
    and now waiting on ``pending``: what a task would have done with it from the start."""

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, None, Any]:
        coro, pending = self._coro, self._pending
        while True:
            try:
                yield pending
            except BaseException as exc:  # noqa: BLE001 - e.g. CancelledError: pass it in
                try:
                    pending = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    pending = coro.send(None)
                except StopIteration as done:
                    return done.value


class _Consumer(faust_aiokafka.Consumer):
    #: jumps in a stream partition's offsets, read again from the first missing one
    holes: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: per stream partition, the next offset to deliver (3. in the module doc)
        self._expect: dict[Any, int] = {}
        #: stream partitions whose records were dropped while a seek was under way
        self._dropped_while_seeking: set[Any] = set()
        #: per partition, the last hole read again: (expected, got); the same one twice is real
        self._retried: dict[Any, tuple[int, int]] = {}
        #: undecodable batches delivered as one message each, until the agent takes them
        self._undecodable: dict[tuple[str, int, int], UndecodableBatch] = {}
        #: one ``perform_seek`` at a time: two interleaved would let the first end ``seeking``
        #: (and start deliveries) while the second still moves the partitions back
        self._seek_lock = asyncio.Lock()
        #: stream partitions to seek to their commit again, by the delivery loop (3.)
        self._seek_again: dict[Any, int] = {}
        super().__init__(*args, **kwargs)

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @property
    def _our_thread(self) -> _ConsumerThread:
        """Faust's consumer thread, as the subclass ``_new_consumer_thread`` made."""
        thread: _ConsumerThread = self._thread  # type: ignore[assignment]
        return thread

    #: True from a rebalance until its seek: stream records fetched meanwhile are not delivered
    #: (the seek reads them again from the commit). On the first assignment Faust's flow is
    #: already on and it delivered from wherever aiokafka started while the seek was under way.
    seeking: bool = True

    async def threadsafe_partitions_revoked(self, receiver_loop: Any, revoked: Any) -> None:
        self.seeking = True  # set from the consumer's thread at once (a bool: atomic)
        await super().threadsafe_partitions_revoked(receiver_loop, revoked)

    async def threadsafe_partitions_assigned(self, receiver_loop: Any, assigned: Any,
                                             generation_id: int = 0) -> None:
        self.seeking = True
        await super().threadsafe_partitions_assigned(receiver_loop, assigned, generation_id)

    async def perform_seek(self) -> None:
        """Seek every stream partition to its commit (2. in the module doc); one at a time."""
        self.seeking = True
        async with self._seek_lock:
            self.seeking = True  # a seek that ended while this one waited cleared it
            dropped = self._dropped_while_seeking
            dropped.clear()
            self._seek_again.clear()  # this seek supersedes what an earlier one left
            await super().perform_seek()
            # where the seek put every stream partition (its commit, or the start). Not the
            # live position: on the first assignment the flow is already on and the consumer
            # may have fetched past it by now; what it delivers from there is checked
            # against this.
            sought = self._our_thread.sought
            self._expect.clear()
            self._expect.update(sought)
            # records dropped while the seek was under way may have been fetched after it:
            # those partitions are sought to their commits again, by the delivery loop before
            # it delivers anything more (3.). Sought from here, a batch read from the commit
            # was delivered while this seek waited for the consumer's thread, then again
            # after it, into an ordering merge that had released past it (after a restart
            # with a backlog: ~925 vitals merged behind, ~337 late; issue 14, item 8).
            # No await from here on: the delivery loop sees these and ``seeking`` together.
            self._seek_again.update({tp: sought[tp] for tp in dropped if tp in sought})
            dropped.clear()
            self.seeking = False

    async def _seek_again_now(self, rewinding: set[Any]) -> None:
        """In the delivery loop: the seeks ``perform_seek`` left to it; the rest of the
        current batch of those partitions is dropped (``rewinding``)."""
        pending = dict(self._seek_again)
        self._seek_again.clear()
        for tp, offset in pending.items():
            rewinding.add(tp)
            await self.seek(tp, offset)

    def commit_head(self, tp: Any) -> int | None:
        """The first offset of ``tp`` not committed yet: the commit, or before the first
        commit where the last seek began reading (4. in the module doc); None for a partition
        never sought (not a stream partition of ours)."""
        committed = self._committed_offset.get(tp)
        return committed if committed is not None else self._our_thread.sought.get(tp)

    def _new_offset(self, tp: Any) -> int | None:
        """The offset to commit for ``tp``: past the run of acknowledged offsets and offsets
        without a record (7. in ``streams.kafka.records``) that begins at the first
        unacknowledged one; None while that one is not acknowledged."""
        head = self.commit_head(tp)
        if head is None:
            return None  # never sought (not a stream partition of ours): commit nothing
        acked = self._acked[tp]
        acked.sort()
        index = self._acked_index[tp]
        while acked and acked[0] < head:  # acknowledged again after a re-read: done already
            index.discard(acked.pop(0))
        spans = NO_RECORDS.spans_of(tp)
        offset, taken = NO_RECORDS.skip(tp, head) if spans else head, 0
        while taken < len(acked) and acked[taken] == offset:
            offset += 1
            taken += 1
            if spans and offset in spans:
                offset = NO_RECORDS.skip(tp, offset)
        if offset == head:
            return None
        index.difference_update(acked[:taken])
        del acked[:taken]
        if spans:
            NO_RECORDS.forget_below(tp, offset)
        return offset

    async def seek(self, partition: Any, offset: int) -> None:
        self._our_thread.forget(partition)  # a fetch under way records nothing
        await super().seek(partition, offset)
        self._expect[partition] = offset
        self._our_thread.forget(partition)  # nor one that ended before the seek took effect

    def _to_message(self, tp: Any, record: Any) -> Any:
        message = super()._to_message(tp, record)
        if record.__class__ is UndecodableBatch:  # 6. in streams.kafka.records
            self._undecodable[(tp.topic, tp.partition, record.offset)] = record
        return message

    def undecodable_batch(self, topic: str, partition: int,
                          offset: int) -> UndecodableBatch | None:
        """The undecodable batch the message at this place stands for (6. in
        ``streams.kafka.records``), once; None for a message that was a record."""
        return self._undecodable.pop((topic, partition, offset), None)

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's loop that hands fetched messages to the streams, with one change: a stream
        partition's messages are delivered in contiguous offset order (3. in the module doc).

        Faust delivers any offset at or above the partition's "read offset" and takes a jump for
        a compacted-topic gap. Here a message is delivered only if it is the next offset the
        stream expects (set by every seek, advanced by every delivery); one below it was
        delivered already and is dropped; one above it means messages were skipped (a batch
        fetched across a seek, a batch Faust abandoned at a rebalance, ...): the partition is
        sought back to the expected offset and the rest of its batch is dropped, to be fetched
        again in order. Changelog partitions (table recovery) are delivered as Faust does.
        """
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        commit_every = self._commit_every
        changelogs = self.app.tables.changelog_topics
        expect = self._expect
        dropped = self._dropped_while_seeking
        retried = self._retried
        seek_again = self._seek_again
        transport = cast("_Transport", self.transport)
        batch_topics, batch_sink = transport.batch_topics, transport.batch_sink
        batch: list[Any] = []  # messages of batch_topics fetched, not handed to the agent yet
        num_since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(_CONSUMER_FETCHING)
                if seek_again and not self.seeking:  # e.g. partitions with nothing to fetch
                    await self._seek_again_now(set())
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    rewinding: set[Any] = set()
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > 100:
                            if batch:  # 11.: handed over before any await
                                await self._hand_batch(batch_sink, batch)
                            await asyncio.sleep(0)
                            num_since_yield = 0
                        if seek_again and not self.seeking:
                            if batch:
                                await self._hand_batch(batch_sink, batch)
                            await self._seek_again_now(rewinding)
                        offset = message.offset
                        if tp.topic in changelogs:
                            r_offset = get_read_offset(tp)
                            if r_offset is not None and offset < r_offset:
                                continue
                        else:
                            if self.seeking:
                                dropped.add(tp)
                                continue
                            if tp in rewinding:
                                continue
                            wanted = expect.get(tp)
                            if wanted is not None and offset != wanted:
                                if offset < wanted:
                                    continue  # delivered already (a re-read overlaps it)
                                if NO_RECORDS.skip(tp, wanted) >= offset:
                                    pass  # markers or an undecodable batch's rest (7.)
                                elif retried.get(tp) != (wanted, offset):
                                    if batch:
                                        await self._hand_batch(batch_sink, batch)
                                    retried[tp] = (wanted, offset)
                                    self.holes += 1
                                    log.info("%s[%s]: got offset %s, expected %s; reading "
                                             "again from %s", tp.topic, tp.partition, offset,
                                             wanted, wanted)
                                    rewinding.add(tp)
                                    await self.seek(tp, wanted)
                                    continue
                                else:
                                    # read again, same hole: the log has no such offsets; the
                                    # commit steps over them (7. in streams.kafka.records)
                                    log.info("%s[%s]: offsets %s..%s do not exist; going on",
                                             tp.topic, tp.partition, wanted, offset - 1)
                                    NO_RECORDS.add(tp, wanted, offset)
                        if tp.topic in batch_topics:  # 11.: no await, no task, no event
                            batch.append(message)
                            set_read_offset(tp, offset)
                            expect[tp] = offset + 1
                            continue
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            if batch:
                                await self._hand_batch(batch_sink, batch)
                            await self.commit()
                        if batch:
                            await self._hand_batch(batch_sink, batch)
                        if tp.topic not in changelogs and self._agent_buffer_full(tp):
                            # 5. in the module doc: a full buffer waits here once, not per
                            # message; a rebalance interrupts it (then as Faust would)
                            await self.wait_first(self._agent_buffer_drained(tp),
                                                  self.suspend_flow.wait())
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                        if tp.topic not in changelogs:
                            expect[tp] = offset + 1
                    if batch:
                        await self._hand_batch(batch_sink, batch)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    unset_flag(_CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(_CONSUMER_FETCHING)

    async def _hand_batch(self, sink: Any, batch: list[Any]) -> None:
        """Hand the collected stream messages to the agent and empty ``batch`` (11. in the
        module doc); a rebalance interrupts a hand-over that waits for room (the seek reads
        them again)."""
        messages = batch[:]
        batch.clear()
        await self.wait_first(sink(messages, self.app.consumer_generation_id),
                              self.suspend_flow.wait())

    def _agent_buffer_full(self, tp: Any) -> bool:
        """Would delivering a message of ``tp`` now wait for room in a stream's buffer?"""
        for channel in self.app.topics._tp_index.get(tp, ()):  # type: ignore[attr-defined]
            if channel.queue.full():
                return True
        return False

    async def _agent_buffer_drained(self, tp: Any, every_s: float = 0.005) -> None:
        """Until every stream buffer ``tp`` feeds is at most half full (a full one holds
        ``stream_buffer_maxsize`` messages, seconds of the agent's work: a 5 ms poll costs
        nothing against that)."""
        while True:
            channels = self.app.topics._tp_index.get(tp, ())  # type: ignore[attr-defined]
            if all(ch.queue.qsize() <= ch.queue.maxsize // 2 for ch in channels):
                return
            await asyncio.sleep(every_s)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        """Faust's only call here is the delivery of one message (5. in the module doc)."""
        if (len(coros) != 2 or timeout is not None or not asyncio.iscoroutine(coros[0])
                or self.suspend_flow.is_set() or self._stopped.is_set()
                or self._crashed.is_set()):
            return await super().wait_first(*coros, timeout=timeout)
        deliver, suspended = coros
        try:
            pending = deliver.send(None)
        except StopIteration as done:
            if asyncio.iscoroutine(suspended):
                suspended.close()  # never started: nothing to cancel
            return WaitResults([deliver], [done.value], False)
        except BaseException:
            if asyncio.iscoroutine(suspended):
                suspended.close()
            raise
        task = asyncio.ensure_future(_Continue(deliver, pending), loop=self.loop)
        return await super().wait_first(task, suspended)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer
    #: topics whose messages go to ``batch_sink`` in batches instead of one by one (11.;
    #: set together by ``deliver_in_batches``, empty without it)
    batch_topics: frozenset[str] = frozenset()
    batch_sink: Callable[[list[Any], int], Coroutine[Any, Any, None]] | None = None


class Delivery:
    """A message handed over in a batch (11. in the module doc), with what the agent used of a
    Faust event: ``message``, ``key``, ``value`` (bytes, or None) and ``ack()``."""

    __slots__ = ("message", "key", "value", "_consumer")

    def __init__(self, message: Any, app_consumer: Any) -> None:
        self.message = message
        self.key = message.key
        self.value = message.value
        self._consumer = app_consumer

    def ack(self) -> None:
        """Acknowledged: its offset may be committed once those before it are."""
        self._consumer.ack(self.message)


def received(app: faust.App, batch: list[Any], guard: StallGuard) -> list[Delivery]:
    """What the agent does first with a batch from ``deliver_in_batches``: tell the stall
    guard and Faust's livelock check (``stream_inbound_time``, read by
    ``verify_event_path``) that the stream got these messages, and wrap each as a
    ``Delivery``."""
    seen = guard.seen
    app_consumer = app.consumer
    out = [Delivery(message, app_consumer) for message in batch]
    for message in batch:
        seen(message.tp, message.offset)
    inbound = app.monitor.stream_inbound_time
    now = time.monotonic()
    for tp in {message.tp for message in batch}:
        inbound[tp] = now
    return out


def deliver_in_batches(app: faust.App, topics: set[str], channel: Any) -> None:
    """Hand the messages of ``topics`` to the agent reading ``channel`` (an in-memory Faust
    channel) as lists of ``faust.types.Message``, one per fetched batch, in offset order per
    partition (11. in the module doc). Messages are acknowledged one by one as before
    (``app.consumer.ack(message)``); a batch from before a rebalance is skipped by the stream
    (its generation), and the seek reads it again. Call after ``install``."""
    from faust.events import Event
    from faust.types import TP, Message

    tp = TP("clsmon.batches", -1)

    async def sink(batch: list[Any], generation_id: int) -> None:
        last = batch[-1]
        message = Message(tp.topic, tp.partition, -1, last.timestamp, 0, None, None, None,
                          None, tp=tp, generation_id=generation_id)
        await channel.put(Event(app, None, batch, None, message))

    transport: Any = app.transport
    transport.batch_topics = frozenset(topics)
    transport.batch_sink = sink


def install(app: faust.App, fetch_wait_ms: int | None = None) -> None:
    """Use the corrected consumer in ``app`` (and aiokafka's record parsing corrected by
    ``streams.kafka.records``); call before the app starts."""
    records.install()
    install_fetch_basis()
    _ConsumerThread.fetch_max_wait_ms = (FAUST_FETCH_WAIT_MS if fetch_wait_ms is None
                                         else fetch_wait_ms)
    app.transport = _Transport(app.conf.broker_consumer, app)


# --- the safety net: a partition must never stop silently ---------------------------------------

class StallGuard:
    """Re-reads a partition whose fetched messages never reached the agent.

    Even with the seek above, a restarted or rebalanced consumer was seen (rarely, on Tansu) to
    have fetched a partition to its end while the agent received only part of it: the rest was
    dropped inside Faust between aiokafka and the stream, so it was never acknowledged, the
    committed offset stopped there and nothing retried it. This guard watches for exactly that
    state and seeks the partition back to the first message the agent did not get.

    The rule (``overdue``) is pure: a partition is re-read when its fetch position is past the
    next offset the agent expects, the agent's input buffer is empty (so nothing fetched is on
    its way), and that has not changed for ``after_s`` seconds. Re-reading is safe
    (at-least-once, idempotent downstream); a false alarm costs one redelivery.

    A re-read comes ``after_s`` late; meanwhile the ordering merge does not take such a
    partition for a quiet one (``_ConsumerThread.caught_up_at``: the agent has not received
    what was fetched). Offsets that hold no record (markers, 7.) are never waited for.
    """

    def __init__(self, topics: set[str], after_s: float = 5.0) -> None:
        self.topics = topics
        self.after_s = after_s
        self._next: dict[Any, int] = {}  # tp -> next offset the agent expects
        self._since: dict[Any, tuple[int, int, float]] = {}  # tp -> (next, position, first seen)
        self._stuck: dict[Any, tuple[int, float]] = {}  # tp -> (commit, first seen stuck)
        self._seeking_since = 0.0

    def seen(self, tp: Any, offset: int) -> None:
        """The agent received this message (hot path: one dict write)."""
        self._next[tp] = offset + 1

    def received_next(self, tp: Any) -> int | None:
        """The offset after the last one the agent received, None when it got nothing yet."""
        return self._next.get(tp)

    def reset(self) -> None:
        """Partitions moved: Faust seeks them itself."""
        self._next.clear()
        self._since.clear()
        self._stuck.clear()

    def overdue(self, positions: Mapping[Any, int | None], committed: Mapping[Any, int | None],
                buffer_empty: bool, now: float,
                idle: Callable[[Any], bool] | None = None) -> dict[Any, int]:
        """Partitions to re-read, with the offset to re-read them from.

        With ``idle`` (``tp -> True`` when the agent holds nothing unacknowledged of it) a
        second rule applies: a commit that stays behind what the agent received while the agent
        is idle for that partition means a message was received and lost on the way to its
        acknowledgement; the partition is re-read from the commit after ``2 * after_s``.
        """
        out: dict[Any, int] = {}
        for tp, position in positions.items():
            expected = self._next.get(tp)
            if expected is None:
                expected = max(committed.get(tp) or 0, 0)
            done = committed.get(tp)
            if done is not None:
                done = NO_RECORDS.skip(tp, done)
                expected = max(expected, done)  # committed past it: markers (7.), all done
            expected = NO_RECORDS.skip(tp, expected)  # markers are never received (7.)
            if (idle is not None and buffer_empty and done is not None and expected > done
                    and idle(tp)):
                stuck = self._stuck.get(tp)
                if stuck is None or stuck[0] != done:
                    self._stuck[tp] = (done, now)
                elif now - stuck[1] >= 2 * self.after_s:
                    out[tp] = done
                    self._stuck.pop(tp, None)
                    self._since.pop(tp, None)
                    continue
            else:
                self._stuck.pop(tp, None)
            if position is None or position <= expected or not buffer_empty:
                self._since.pop(tp, None)
                continue
            state = (expected, position)
            first = self._since.get(tp)
            if first is None or first[:2] != state:
                self._since[tp] = (*state, now)
            elif now - first[2] >= self.after_s:
                out[tp] = expected
                self._since.pop(tp, None)
        return out

    async def check(self, app: faust.App, agent_name: str,
                    idle: Callable[[Any], bool] | None = None) -> dict[Any, int]:
        """Look at the app's input partitions; seek the overdue ones. Returns what it seeked."""
        if app.rebalancing or getattr(app, "in_recovery", False):
            self._since.clear()
            self._stuck.clear()
            return {}
        app_consumer: Any = app.consumer
        now = time.monotonic()
        if getattr(app_consumer, "seeking", False):
            # a rebalance is over but its seek never came (it failed, or timed out): the stream
            # partitions would stay undelivered, so seek them ourselves
            self._seeking_since = self._seeking_since or now
            if now - self._seeking_since >= self.after_s:
                log.warning("no seek after the last rebalance; seeking to the commits")
                self._seeking_since = 0.0
                await app_consumer.perform_seek()
            return {}
        self._seeking_since = 0.0
        tps = [tp for tp in app_consumer.assignment() if tp.topic in self.topics]
        positions = {tp: await app_consumer.position(tp) for tp in tps}
        committed = {tp: app_consumer._committed_offset.get(tp) for tp in tps}
        agent = app.agents[agent_name]
        buffer_empty = all(actor.stream.channel.queue.empty() for actor in agent._actors)
        overdue = self.overdue(positions, committed, buffer_empty, now, idle)
        for tp, offset in overdue.items():
            log.warning("%s[%s]: fetched to %s, the agent got messages up to %s, committed %s; "
                        "re-reading from %s", tp.topic, tp.partition, positions[tp],
                        self._next.get(tp, 0) - 1, committed.get(tp), offset)
            await app_consumer.seek(tp, offset)
        return overdue


def watch(app: faust.App, topics: set[str], agent_name: str, after_s: float,
          rereads: Any, idle: Callable[[Any], bool] | None = None) -> StallGuard:
    """Put a stall guard on ``app``: checked every second, reset when partitions move. The
    agent must call ``guard.seen(message.tp, message.offset)`` for every message; ``idle``
    (``tp -> bool``) turns on the stuck-commit rule (``StallGuard.overdue``)."""
    guard = StallGuard(topics, after_s)

    @app.timer(1.0)
    async def watch_partitions() -> None:
        await guard_check(app, guard, agent_name, rereads, idle)

    async def reset_guard(sender: Any, *args: Any, **kwargs: Any) -> None:
        guard.reset()

    on_revoked(app, reset_guard)

    return guard


def on_revoked(app: faust.App, receiver: Callable[..., Awaitable[None]]) -> None:
    """Call ``receiver(app, revoked_partitions)`` when partitions are revoked (Faust's signal;
    its type hints do not admit an async receiver with our signature)."""
    app.on_partitions_revoked.connect(cast(Any, receiver))


def caught_up_probe(app: faust.App, guard: StallGuard) -> Any:
    """``probe(topic, partition) -> int | None``: ``_ConsumerThread.caught_up_at`` for this
    app's consumer and what its agent received (``guard``); never raises (unknown: None)."""
    from faust.types import TP

    def probe(topic: str, partition: int) -> int | None:
        try:
            tp = TP(topic, partition)
            app_consumer: Any = app.consumer
            thread: _ConsumerThread = app_consumer._thread
            return thread.caught_up_at(tp, guard.received_next(tp))
        except Exception:  # noqa: BLE001 - e.g. no consumer yet: not known to be caught up
            return None

    return probe


def held_probe(app: faust.App, topic: str) -> Callable[[], frozenset[int]]:
    """``held()``: the partitions of ``topic`` assigned to this consumer (none when not
    known: a misrouted record is then forwarded, always correct, maybe late)."""

    def held() -> frozenset[int]:
        try:
            app_consumer: Any = app.consumer
            return frozenset(tp.partition for tp in app_consumer.assignment()
                             if tp.topic == topic)
        except Exception:  # noqa: BLE001
            return frozenset()

    return held


def commit_head_probe(app: faust.App) -> Callable[[str, int], int | None]:
    """``commit_head(topic, partition)``: the first offset of that partition not committed yet
    (``_Consumer.commit_head``: Faust's record of its last commit, read from the broker at
    every assignment), None when this consumer does not hold it or does not know; never
    raises."""
    from faust.types import TP

    def commit_head(topic: str, partition: int) -> int | None:
        try:
            app_consumer: Any = app.consumer
            tp = TP(topic, partition)
            if tp not in app_consumer.assignment():
                return None
            head = app_consumer.commit_head(tp)
            return None if head is None else int(head)
        except Exception:  # noqa: BLE001 - not known: the caller keeps what it guards
            return None

    return commit_head


def undecodable_probe(app: faust.App) -> Callable[[str, int, int], UndecodableBatch | None]:
    """``probe(topic, partition, offset)``: the undecodable batch a delivered message stands
    for (6. in ``streams.kafka.records``), taken once; None for a real record."""

    def probe(topic: str, partition: int, offset: int) -> UndecodableBatch | None:
        app_consumer: Any = app.consumer
        return cast(UndecodableBatch | None,
                    app_consumer.undecodable_batch(topic, partition, offset))

    return probe


async def guard_check(app: faust.App, guard: StallGuard, agent_name: str, rereads: Any,
                      idle: Callable[[Any], bool] | None = None) -> None:
    """The timer body shared by the worker and the notifier; never raises."""
    try:
        for tp in await guard.check(app, agent_name, idle):
            rereads.labels(tp.topic).inc()
    except Exception:  # noqa: BLE001 - a watchdog must not take the worker down
        log.debug("stall guard check failed", exc_info=True)


def rereads_counter(registry: CollectorRegistry) -> Counter:
    """The stall guard's counter (``StallGuard``), in the worker's and the
    notifier's registry alike."""
    return Counter("clsmon_partition_rereads", "Input partitions re-read because fetched "
                   "messages never reached the agent (streams.kafka.consumer.StallGuard); should "
                   "stay 0", ["topic"], registry=registry)
