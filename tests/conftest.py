import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings
from kafka_broker import KafkaEndpoint, kafka_endpoint

# This process runs the source tree's detectors/, never the compiled engine of
# .venv/clsmon-engine: tests monkeypatch its functions (tests/test_memo.py), which compiled
# modules refuse. Imported here, before any test calls clsmon's main in this process, it stays
# so (streams.ops.engine.select never switches an imported engine); the clsmon processes the
# tests start choose their engine themselves (tests/test_engine.py compares the two).
import detectors.phases  # noqa: E402,F401,I001

# Property tests (tests/test_properties.py): `make test` runs the same examples every time
# ("ci": derandomized, no example database), so a failure is the code's and reproducible, never
# a draw's; a counterexample found once is pinned with @example. "explore" draws at random (new
# examples each run, failures kept in .hypothesis/):
#   HYPOTHESIS_PROFILE=explore .venv/bin/pytest tests/test_properties.py
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaEndpoint]:
    """The session's broker: Apache Kafka by default, see ``kafka_broker.py``
    (``CLSMON_TEST_BROKER``)."""
    with kafka_endpoint() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaEndpoint) -> str:
    """``host:port`` of the session's broker."""
    return kafka_broker.bootstrap


@pytest.fixture(autouse=True, scope="session")
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Audit files and other state of the processes the tests start go to a temporary state
    directory, never to the developer's ~/.local/state/clsmon."""
    previous = os.environ.get("CLSMON_STATE_DIR")
    os.environ["CLSMON_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    yield
    if previous is None:
        os.environ.pop("CLSMON_STATE_DIR", None)
    else:
        os.environ["CLSMON_STATE_DIR"] = previous


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The board's measured timings (alert to board, ack to other boards, ...), when run."""
    from board_support import TIMINGS

    if TIMINGS:
        terminalreporter.write_line("board timings: " + json.dumps(TIMINGS, sort_keys=True))
