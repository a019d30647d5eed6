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

3. **Four tasks per message.** Faust's ``_drain_messages`` hands each message to the agents with
   ``wait_first(deliver(message), suspend_flow.wait())`` so that a rebalance can interrupt a
   delivery blocked by a full agent buffer. ``Service.wait_first`` wraps both, plus "stopped"
   and "crashed", in tasks and ``asyncio.wait``s on them: about a third of a worker's time at
   full speed (py-spy). A delivery almost never blocks, so we run it inline first; only when it
   does block is it continued as a task under Faust's own ``wait_first``, unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Generator, Mapping
from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults

log = logging.getLogger(__name__)

#: Faust's own value, kept when --fetch-wait-ms is not given
FAUST_FETCH_WAIT_MS = 1500


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: int = FAUST_FETCH_WAIT_MS

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms  # read by consumer.start()
        return consumer

    async def seek_to_committed(self) -> Mapping[Any, int]:
        return await self.call_thread(self._seek_every_stream_partition)

    async def _seek_every_stream_partition(self) -> Mapping[Any, int]:
        """Runs in the consumer's thread (aiokafka's loop)."""
        consumer = self._ensure_consumer()
        changelogs = self.app.tables.changelog_topics
        committed: dict[Any, int] = {}
        uncommitted = []
        for tp in consumer.assignment():
            offset = await consumer.committed(tp)
            committed[tp] = offset
            if tp.topic in changelogs:
                continue
            if offset is not None and offset >= 0:
                consumer.seek(tp, offset)
            else:
                uncommitted.append(tp)
        if uncommitted:
            if self.app.conf.consumer_auto_offset_reset == "latest":
                await consumer.seek_to_end(*uncommitted)
            else:
                await consumer.seek_to_beginning(*uncommitted)
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
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        """Faust's only call here is the delivery of one message (3. in the module doc)."""
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


def install(app: faust.App, fetch_wait_ms: int | None = None) -> None:
    """Use the corrected consumer in ``app``; call before the app starts."""
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
    """

    def __init__(self, topics: set[str], after_s: float = 5.0) -> None:
        self.topics = topics
        self.after_s = after_s
        self._next: dict[Any, int] = {}  # tp -> next offset the agent expects
        self._since: dict[Any, tuple[int, int, float]] = {}  # tp -> (next, position, first seen)

    def seen(self, tp: Any, offset: int) -> None:
        """The agent received this message (hot path: one dict write)."""
        self._next[tp] = offset + 1

    def reset(self) -> None:
        """Partitions moved: Faust seeks them itself."""
        self._next.clear()
        self._since.clear()

    def overdue(self, positions: Mapping[Any, int | None], committed: Mapping[Any, int | None],
                buffer_empty: bool, now: float) -> dict[Any, int]:
        """Partitions to re-read, with the offset to re-read them from."""
        out: dict[Any, int] = {}
        for tp, position in positions.items():
            expected = self._next.get(tp)
            if expected is None:
                expected = max(committed.get(tp) or 0, 0)
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

    async def check(self, app: faust.App, agent_name: str) -> dict[Any, int]:
        """Look at the app's input partitions; seek the overdue ones. Returns what it seeked."""
        if app.rebalancing or getattr(app, "in_recovery", False):
            self._since.clear()
            return {}
        app_consumer = app.consumer
        tps = [tp for tp in app_consumer.assignment() if tp.topic in self.topics]
        positions = {tp: await app_consumer.position(tp) for tp in tps}
        committed = {tp: app_consumer._committed_offset.get(tp) for tp in tps}
        agent = app.agents[agent_name]
        buffer_empty = all(actor.stream.channel.queue.empty() for actor in agent._actors)
        overdue = self.overdue(positions, committed, buffer_empty, time.monotonic())
        for tp, offset in overdue.items():
            log.warning("%s[%s]: fetched to %s but the agent got messages only up to %s; "
                        "re-reading from %s", tp.topic, tp.partition, positions[tp],
                        offset - 1, offset)
            await app_consumer.seek(tp, offset)
        return overdue


def watch(app: faust.App, topics: set[str], agent_name: str, after_s: float,
          rereads: Any) -> StallGuard:
    """Put a stall guard on ``app``: checked every second, reset when partitions move. The
    agent must call ``guard.seen(message.tp, message.offset)`` for every message."""
    guard = StallGuard(topics, after_s)

    @app.timer(1.0)
    async def watch_partitions() -> None:
        await guard_check(app, guard, agent_name, rereads)

    @app.on_partitions_revoked.connect
    async def reset_guard(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
        guard.reset()

    return guard


async def guard_check(app: faust.App, guard: StallGuard, agent_name: str, rereads: Any) -> None:
    """The timer body shared by the worker and the notifier; never raises."""
    try:
        for tp in await guard.check(app, agent_name):
            rereads.labels(tp.topic).inc()
    except Exception:  # noqa: BLE001 - a watchdog must not take the worker down
        log.debug("stall guard check failed", exc_info=True)
