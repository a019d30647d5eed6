"""A consumer group coordinator still being elected while a process starts is not an error.

On a new broker the first FindCoordinator request makes Kafka create ``__consumer_offsets``, and
until its partitions have leaders the broker answers COORDINATOR_NOT_AVAILABLE (error 15).
aiokafka retries the lookup (``GroupCoordinator.ensure_coordinator_known``), but logs every
failed one at ERROR: "Group Coordinator Request failed: [Error 15]
GroupCoordinatorNotAvailableError", one ERROR line in the ops log of a normal first start of the
worker or the notifier (``clsmon demo``, a fresh cluster).

``CoordinatorElection`` logs that one error at INFO, marked as the election, during the first
``START_GRACE_S`` seconds of the process. Later, or any other error, it stays at ERROR: a
coordinator that does not come (offsets topic that cannot be created, its leader down) is still
an ERROR line every retry, as aiokafka logs it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import monotonic

from aiokafka.errors import CoordinatorNotAvailableError

#: aiokafka's logger of the group coordinator look-ups
COORDINATOR_LOGGER = "aiokafka.consumer.group_coordinator"

#: how long after a process starts a missing coordinator counts as the election of a new one.
#: Measured on a new one-node Apache Kafka (KRaft): the coordinator was known 0.6 s after the
#: first look-up with 3 offsets partitions (our test cluster), 1.3 s with Kafka's default 50,
#: one failed look-up each; ten times that leaves room for a loaded machine
START_GRACE_S = 15.0


class CoordinatorElection(logging.Filter):
    """A filter for ``COORDINATOR_LOGGER``: COORDINATOR_NOT_AVAILABLE look-ups within
    ``grace_s`` seconds of its creation go out at INFO (dropped where INFO is off); everything
    else passes unchanged."""

    def __init__(self, grace_s: float = START_GRACE_S,
                 clock: Callable[[], float] = monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._until = clock() + grace_s

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if (record.levelno != logging.ERROR or self._clock() >= self._until
                or not any(isinstance(arg, CoordinatorNotAvailableError) for arg in args)):
            return True
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        record.msg = f"{record.msg} (the group coordinator is being elected; retrying)"
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def quiet_coordinator_election(grace_s: float = START_GRACE_S) -> CoordinatorElection:
    """Install ``CoordinatorElection`` on aiokafka's coordinator logger, its grace starting now
    (replacing one installed before, so an app made twice in a process has one)."""
    logger = logging.getLogger(COORDINATOR_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, CoordinatorElection)]:
        logger.removeFilter(old)
    election = CoordinatorElection(grace_s)
    logger.addFilter(election)
    return election
