"""aiokafka's retries against an unreachable broker: one line per kind and window, with the
count of those held back (``streams.kafka.repeats``). Real ``logging`` records through a real
logger and handler; only the clock is ours."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from streams.kafka.repeats import RepeatedErrors, quiet_repeated_errors


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, Lines, Clock]]:
    log = logging.getLogger("aiokafka.test_repeats")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    lines, clock = Lines(), Clock()
    log.addHandler(lines)
    repeats = RepeatedErrors(window_s=30.0, clock=clock)
    log.addFilter(repeats)
    yield log, lines, clock
    log.removeHandler(lines)
    log.removeFilter(repeats)


def test_the_same_error_goes_out_once_per_window_then_with_the_count_held_back(
        logger: tuple[logging.Logger, Lines, Clock]) -> None:
    log, lines, clock = logger
    for i in range(40):  # 4 s of retries every 100 ms
        clock.now += 0.1
        log.error("Unable connect to node with id %s: %s", 1, f"refused {i}")
    assert lines.lines == ["ERROR Unable connect to node with id 1: refused 0"]
    clock.now += 30.0
    log.error("Unable connect to node with id %s: %s", 1, "refused again")
    assert lines.lines[1] == ("ERROR Unable connect to node with id 1: refused again "
                              "(and 39 more like this in the last 34 s)")


def test_another_message_or_level_goes_out_at_once_and_info_is_never_held(
        logger: tuple[logging.Logger, Lines, Clock]) -> None:
    log, lines, clock = logger
    log.error("Unable to update metadata from %s", [1])
    log.error("Unable to update metadata from %s", [1])
    log.warning("Unable to update metadata from %s", [1])
    log.error("Failed fetch messages from %s: %s", 1, "NodeNotReadyError")
    for _ in range(3):
        log.info("Discovered coordinator %s", 1)
    assert lines.lines == ["ERROR Unable to update metadata from [1]",
                           "WARNING Unable to update metadata from [1]",
                           "ERROR Failed fetch messages from 1: NodeNotReadyError",
                           *["INFO Discovered coordinator 1"] * 3]


def test_installed_on_every_aiokafka_module_logger_once() -> None:
    import aiokafka.consumer.fetcher  # noqa: F401 - its module logger exists once imported

    first = quiet_repeated_errors()
    second = quiet_repeated_errors()
    # "aiokafka": the client's logger ("Unable connect to node ..."); the fetcher's its own
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.consumer.fetcher"):
        filters = [f for f in logging.getLogger(name).filters if isinstance(f, RepeatedErrors)]
        assert filters == [second], name
    assert first is not second
