"""Running sinks concurrently and independently.

Each sink gets its own bounded set of slots (``max_in_flight``, default 4): a dead or slow sink
fills only its own slots, so it never delays another sink, the next alert or the escalation
timer. A sink with ``deliver_async`` (the webhook) runs in the event loop; a blocking sink
(console, audit file, and any sink written against the plain ``Sink`` protocol) runs in a
thread pool of its own of the same size. A sink that raises is a failed delivery, never a
crashed notifier.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from streams.notify.sinks import Delivery, Sink

DEFAULT_MAX_IN_FLIGHT = 4


class Deliverer:
    """Runs ``sink.deliver`` / ``sink.deliver_async`` within the sink's own slots."""

    def __init__(self) -> None:
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._pools: dict[str, ThreadPoolExecutor] = {}

    def _size(self, sink: Sink) -> int:
        return max(1, int(getattr(sink, "max_in_flight", DEFAULT_MAX_IN_FLIGHT)))

    async def run(self, sink: Sink, doc: dict[str, Any], key: str) -> Delivery:
        """Deliver ``doc`` to ``sink``; never raises."""
        slots = self._slots.get(sink.name)
        if slots is None:
            slots = self._slots[sink.name] = asyncio.Semaphore(self._size(sink))
        async with slots:
            try:
                deliver_async = getattr(sink, "deliver_async", None)
                if deliver_async is not None:
                    result = await deliver_async(doc, key)
                else:
                    pool = self._pools.get(sink.name)
                    if pool is None:
                        pool = self._pools[sink.name] = ThreadPoolExecutor(
                            self._size(sink), thread_name_prefix=f"clsmon-sink-{sink.name}")
                    result = await asyncio.get_running_loop().run_in_executor(
                        pool, sink.deliver, doc, key)
            except Exception as exc:  # noqa: BLE001 - a sink bug is a failed delivery
                return Delivery(False, 1, f"{type(exc).__name__}: {exc}")
        if not isinstance(result, Delivery):
            return Delivery(False, 1, f"sink returned {type(result).__name__}, not a Delivery")
        return result

    def close(self) -> None:
        """Stop the sinks' threads (a blocked one is abandoned, not waited for)."""
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self._pools.clear()
