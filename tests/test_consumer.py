"""The corrected Faust consumer (streams.consumer): the inline delivery keeps Faust's semantics.

Faust hands each message to the agents with ``wait_first(deliver(message),
suspend_flow.wait())``: a delivery that blocks (full agent buffer) must still be interrupted by
a rebalance, and one that completes must return its result. These run the real consumer class
of a real (unstarted) Faust app; no broker is needed because nothing is fetched.
(The seek after a rebalance is pinned against a real broker by test_notify_stream's kill -9
test and test_reliability's rebalance test, which lost messages without it.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest

from streams import consumer as clsmon_consumer


@pytest.fixture
def faust_consumer(tmp_path: Any) -> Any:
    app = faust.App("consumer-test", broker="kafka://127.0.0.1:1", datadir=str(tmp_path))
    clsmon_consumer.install(app, 50)
    return app.consumer


def _run(consumer: Any, coro: Any) -> Any:
    """On the consumer's own loop, as in a worker."""
    return consumer.loop.run_until_complete(coro)


def test_the_app_uses_the_corrected_consumer_with_the_given_fetch_wait(faust_consumer: Any
                                                                        ) -> None:
    assert isinstance(faust_consumer, clsmon_consumer._Consumer)
    assert clsmon_consumer._ConsumerThread.fetch_max_wait_ms == 50


def test_a_delivery_that_does_not_block_runs_inline_and_returns_its_result(
        faust_consumer: Any) -> None:
    ran: list[str] = []

    async def deliver() -> str:
        ran.append("delivered")
        return "ok"

    async def main() -> Any:
        tasks_before = len(asyncio.all_tasks())
        result = await faust_consumer.wait_first(deliver(), faust_consumer.suspend_flow.wait())
        return result, len(asyncio.all_tasks()) - tasks_before

    result, new_tasks = _run(faust_consumer, main())
    assert ran == ["delivered"]
    assert result.results == ["ok"] and not result.stopped
    assert new_tasks == 0  # no task was created for it


def test_a_blocked_delivery_completes_when_it_is_unblocked(faust_consumer: Any) -> None:
    async def main() -> Any:
        room = asyncio.get_running_loop().create_future()

        async def deliver() -> str:
            await asyncio.sleep(0)  # yields once, like a queue put that waits
            return await room

        asyncio.get_running_loop().call_later(0.05, room.set_result, "put")
        return await faust_consumer.wait_first(deliver(), faust_consumer.suspend_flow.wait())

    assert _run(faust_consumer, main()).results == ["put"]


def test_a_rebalance_interrupts_a_blocked_delivery_and_cancels_it(faust_consumer: Any) -> None:
    async def main() -> tuple[Any, list[str]]:
        seen: list[str] = []
        never = asyncio.get_running_loop().create_future()

        async def deliver() -> None:
            try:
                await never  # the agent's buffer stays full
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        asyncio.get_running_loop().call_later(0.05, faust_consumer.suspend_flow.set)
        result = await faust_consumer.wait_first(deliver(), faust_consumer.suspend_flow.wait())
        await asyncio.sleep(0.01)  # let the cancellation run
        return result, seen

    result, seen = _run(faust_consumer, main())
    assert seen == ["cancelled"]
    assert result.results == [True]  # only the suspension finished: Event.wait() -> True


def test_an_error_in_the_delivery_propagates(faust_consumer: Any) -> None:
    async def deliver() -> None:
        raise ValueError("bad message")

    async def main() -> None:
        await faust_consumer.wait_first(deliver(), faust_consumer.suspend_flow.wait())

    with pytest.raises(ValueError, match="bad message"):
        _run(faust_consumer, main())


def test_with_the_flow_already_suspended_faust_decides_as_before(faust_consumer: Any) -> None:
    async def main() -> Any:
        faust_consumer.suspend_flow.set()

        async def deliver() -> str:
            await asyncio.sleep(1)
            return "late"

        return await faust_consumer.wait_first(deliver(), faust_consumer.suspend_flow.wait())

    result = _run(faust_consumer, main())
    assert result.results == [True]  # the suspension won, the delivery never finished


# --- the stall guard's rule -------------------------------------------------------------------

def test_stall_guard_re_reads_from_the_first_message_the_agent_did_not_get() -> None:
    guard = clsmon_consumer.StallGuard({"t"}, after_s=5.0)
    guard.seen("t0", 0)  # the agent got offset 0; the consumer is at 6
    assert guard.overdue({"t0": 6}, {}, buffer_empty=True, now=100.0) == {}  # just noticed
    assert guard.overdue({"t0": 6}, {}, buffer_empty=True, now=104.0) == {}
    assert guard.overdue({"t0": 6}, {}, buffer_empty=True, now=105.0) == {"t0": 1}


def test_stall_guard_uses_the_committed_offset_when_the_agent_got_nothing() -> None:
    guard = clsmon_consumer.StallGuard({"t"}, after_s=1.0)
    guard.overdue({"a": 4, "b": 4}, {"a": 2, "b": None}, buffer_empty=True, now=0.0)
    assert guard.overdue({"a": 4, "b": 4}, {"a": 2, "b": None}, buffer_empty=True,
                         now=1.0) == {"a": 2, "b": 0}


def test_stall_guard_waits_while_messages_are_on_their_way_or_progressing() -> None:
    guard = clsmon_consumer.StallGuard({"t"}, after_s=1.0)
    guard.seen("t0", 0)
    # a full agent buffer: what was fetched is still coming
    assert guard.overdue({"t0": 9}, {}, buffer_empty=False, now=0.0) == {}
    assert guard.overdue({"t0": 9}, {}, buffer_empty=False, now=10.0) == {}
    # progress restarts the clock
    guard.overdue({"t0": 9}, {}, buffer_empty=True, now=10.0)
    guard.seen("t0", 4)
    assert guard.overdue({"t0": 9}, {}, buffer_empty=True, now=10.9) == {}
    assert guard.overdue({"t0": 9}, {}, buffer_empty=True, now=11.9) == {"t0": 5}


def test_stall_guard_leaves_a_partition_that_is_caught_up_alone() -> None:
    guard = clsmon_consumer.StallGuard({"t"}, after_s=0.0)
    guard.seen("t0", 5)
    assert guard.overdue({"t0": 6, "t1": None}, {}, buffer_empty=True, now=0.0) == {}
    assert guard.overdue({"t0": 6, "t1": None}, {}, buffer_empty=True, now=9.0) == {}
    guard.reset()  # after a rebalance Faust positions partitions itself
    assert guard.overdue({"t0": 6}, {"t0": 6}, buffer_empty=True, now=9.0) == {}
