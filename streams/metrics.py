"""Prometheus metrics and the worker's small HTTP server (/metrics, /healthz, /readyz).

Metrics live in a ``CollectorRegistry`` the caller creates (nothing registers globally at import
time), so tests and several workers in one process never collide. The HTTP server is a plain
threaded ``http.server``: it answers while the asyncio loop is busy, so a scrape or a liveness
probe never waits for a slow batch.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from detectors.alerts import PHASES

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The ``clsmon_`` series of one worker."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.observations = Counter(
            "clsmon_observations", "Input messages by kind (context for ADT records, unknown "
            "when unreadable) and outcome (accepted, duplicate, late, context, dead_letter)",
            ["kind", "outcome"], registry=r)
        self.dead_letters = Counter(
            "clsmon_dead_letters", "Messages sent to the dead-letter topic, by reason",
            ["reason"], registry=r)
        self.alerts = Counter(
            "clsmon_alerts", "Alerts emitted, by phase and severity", ["phase", "severity"],
            registry=r)
        self.patients = Gauge(
            "clsmon_patients", "Patients of this worker's partitions by current phase",
            ["phase"], registry=r)
        self.latency = Histogram(
            "clsmon_observation_to_alert_latency_seconds",
            "Wall clock from the deciding message's Kafka timestamp to the alert's emission",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.processing_latency = Histogram(
            "clsmon_observation_processing_latency_seconds",
            "Wall clock from a message's Kafka timestamp to its processing (includes the "
            "ordering grace)", buckets=_LATENCY_BUCKETS, registry=r)
        self.event_time_lag = Gauge(
            "clsmon_event_time_lag_seconds",
            "Wall clock minus the event time (observed_at) of the last processed observation",
            registry=r)
        self.buffered = Gauge(
            "clsmon_ordering_buffer_messages",
            "Messages waiting in the arrival-order merge", registry=r)
        self.ready = Gauge("clsmon_ready", "1 when the worker has started and owns partitions",
                           registry=r)
        self.rereads = rereads_counter(r)
        self.consumer_lag = Gauge(
            "clsmon_consumer_lag_messages",
            "Messages in an input partition not yet fetched by this worker (highwater minus "
            "position; on the embedded Tansu broker the highwater can be wrong, see README)",
            ["topic", "partition"], registry=r)
        self.bed_last_seen = Gauge(
            "clsmon_bed_last_seen_timestamp_seconds",
            "Wall clock when this worker last received an observation for the patient/bed "
            "(removed at discharge and when the partition moves to another worker)",
            ["patient_id"], registry=r)
        self.state_size = Histogram(
            "clsmon_state_size_bytes",
            "JSON size of a patient's state as written to the table changelog (target < 4 KB)",
            buckets=(256, 512, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 16384), registry=r)
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds, ...
        ProcessCollector(registry=r)
        for phase in PHASES:
            self.patients.labels(phase)


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, generate_latest(self.server.metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/readyz":
            if self.server.ready.is_set():
                self._reply(200, b"ready\n")
            else:
                self._reply(503, b"not ready: no partitions assigned yet\n")
        else:
            self._reply(404, b"not found: /metrics /healthz /readyz\n")

    def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return  # scrapes every few seconds would flood the worker's log


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: Metrics,
                 ready: threading.Event) -> None:
        super().__init__(address, _Handler)
        self.metrics = metrics
        self.ready = ready


def serve(metrics: Metrics, ready: threading.Event, port: int,
          host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104 - scraped from outside
    """Start the HTTP server on a daemon thread; returns it (``shutdown()`` to stop)."""
    server = _MetricsServer((host, port), metrics, ready)
    threading.Thread(target=server.serve_forever, name="clsmon-metrics", daemon=True).start()
    return server


def rereads_counter(registry: CollectorRegistry) -> Counter:
    """The stall guard's counter (streams.consumer), in the worker's and the notifier's
    registry alike."""
    return Counter("clsmon_partition_rereads", "Input partitions re-read because fetched "
                   "messages never reached the agent (streams.consumer.StallGuard); should "
                   "stay 0", ["topic"], registry=registry)


def final_counts(registry: CollectorRegistry) -> dict[str, float]:
    """Every counter sample of ``registry`` (``name{label="v",...}`` -> value), for the line a
    worker prints when it stops: what it did after the last scrape is counted there too."""
    out: dict[str, float] = {}
    for family in registry.collect():
        if family.type != "counter":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out
