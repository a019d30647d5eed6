from collections.abc import Iterator

import pytest
from kafka_broker import kafka_endpoint


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a real broker for the session: Kafka in Docker, else embedded Tansu."""
    with kafka_endpoint() as endpoint:
        yield endpoint.bootstrap
