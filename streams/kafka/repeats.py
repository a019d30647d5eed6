"""aiokafka's connection errors while a broker is unreachable: one line per kind and window.

With its broker gone, aiokafka logs every failed attempt: "Unable connect to node with id 1",
"Unable to update metadata from [1]", "Failed fetch messages from 1", each retry after its
``retry_backoff_ms`` (100 ms by default), about 40 ERROR and WARNING lines a second from a worker
(a newcomer's check of ``clsmon worker`` with its broker stopped). Ops need to know that the
broker is unreachable and for how long, not every retry.

``RepeatedErrors`` lets the first record of each kind (logger, level and message template) out,
then holds the same kind back for ``window_s`` seconds, counting it; the first record of that kind
after the window goes out with the count: "... (and 87 more like this in the last 30 s)". A
different message (another node, a new error) is a new kind and goes out at once. Records below
WARNING pass untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import monotonic

#: how long the same aiokafka error is held back after it was logged. [D] Long enough to turn
#: 40 lines a second into a few lines a minute, short enough that an ops log still shows, minute
#: by minute, that the broker is still unreachable
WINDOW_S = 30.0

#: the loggers this covers: aiokafka's, one per module (``aiokafka.client``, ``aiokafka.conn``,
#: ``aiokafka.consumer.fetcher``, ...)
AIOKAFKA = "aiokafka"


class RepeatedErrors(logging.Filter):
    """A filter for aiokafka's loggers: the same WARNING or ERROR (logger, level, template) at
    most once per ``window_s`` seconds, with the count of those held back."""

    def __init__(self, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        #: kind -> (when it last went out, how many were held back since)
        self._kinds: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        last = self._kinds.get(kind)
        if last is not None and now - last[0] < self.window_s:
            self._kinds[kind] = (last[0], last[1] + 1)
            return False
        held = 0 if last is None else last[1]
        self._kinds[kind] = (now, 0)
        if held and last is not None:
            record.msg = (f"{record.msg} (and {held} more like this in the last "
                          f"{now - last[0]:.0f} s)")
        return True


def quiet_repeated_errors(window_s: float = WINDOW_S) -> RepeatedErrors:
    """Install one ``RepeatedErrors`` on every aiokafka logger (a filter on a logger sees only
    the records made by that logger, so each module's logger gets it; the package is imported
    by then, with all its loggers). Replaces one installed before."""
    manager = logging.Logger.manager
    names = [AIOKAFKA] + [name for name in list(manager.loggerDict)
                          if name.startswith(AIOKAFKA + ".")]
    repeats = RepeatedErrors(window_s)
    for name in names:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, RepeatedErrors)]:
            logger.removeFilter(old)
        logger.addFilter(repeats)
    return repeats
