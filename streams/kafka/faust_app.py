"""The Faust plumbing the worker and the notifier share: settings tuned for a fast start and low
latency, an app with our consumer corrections installed, raw (bytes) topics and tables, and the
foreground runner.

Faust's own defaults suit long-lived services with big batches: a 60 s session timeout makes a
group join take ~30 s, and its serializers would decode JSON before our validation could
dead-letter bad input. Here every topic and table is raw bytes, and each process decodes with
``streams.kafka.codec``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any

import faust
from faust.sensors.monitor import Monitor

from streams.kafka import consumer
from streams.kafka.connection import Connectable, connect
from streams.kafka.coordinator import quiet_coordinator_election
from streams.kafka.repeats import quiet_repeated_errors
from streams.ops.counts import FINAL_COUNTS, final_counts
from streams.ops.http import serve

#: topics and tables in bytes: decoding (and dead-lettering what does not decode) is ours
RAW: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
                       "value_serializer": "raw"}


class LeanMonitor(Monitor):
    """Faust's statistics sensor, reduced to what Faust itself reads: when each partition last
    reached a stream (``stream_inbound_time``, its livelock check). The rest (counts by stream
    and task, event run times, message times) feeds Faust's web pages, which our processes do
    not serve (``web_enabled`` False; our metrics are Prometheus'), and cost ~2 % of a worker
    under a backlog (py-spy, issue 14): four calls per message, ``str(stream)`` look-ups,
    a deque append per event."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        self.stream_inbound_time[tp] = monotonic()

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any,
                            state: Any = None) -> None:
        pass

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        pass


def faust_settings(*, partitions: int, store: str, data_dir: str, session_timeout_s: float,
                   producer_max_batch_size: int, replication_factor: int = 1,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Faust settings for a clsmon app.

    Args:
        partitions: partitions of the topics and tables (must match the existing topics).
        store: ``memory://`` (state rebuilt from the changelog at start) or ``rocksdb://``.
        data_dir: Faust's data directory (one per process).
        session_timeout_s: consumer group session timeout; a join completes after about half
            of it on the embedded broker (60 s default -> 30 s start, measured).
        producer_max_batch_size: bytes per produce batch; 1 sends records one by one (what the
            embedded Tansu broker needs for exact table recovery), 0 keeps aiokafka's default.
        replication_factor: replicas of the changelog topics Faust creates (3 on a production
            cluster, with ``min.insync.replicas`` 2).
        extra: settings that override the above (e.g. ``broker_commit_interval``).
    """
    settings: dict[str, Any] = {
        "broker_session_timeout": session_timeout_s,
        "broker_heartbeat_interval": min(0.5, session_timeout_s / 6),
        "broker_rebalance_timeout": session_timeout_s,
        "broker_request_timeout": max(10.0, session_timeout_s + 4),
        "broker_commit_interval": 0.5,
        "topic_partitions": partitions,
        "topic_replication_factor": replication_factor,
        "table_standby_replicas": 0,
        "consumer_auto_offset_reset": "earliest",
        "store": store,
        "datadir": data_dir,
        "web_enabled": False,  # our own server serves /metrics, /healthz, /readyz
        "producer_linger_ms": 0,
        "Monitor": LeanMonitor,
        # messages held by the worker's ordering buffer are unacknowledged by design; at
        # shutdown they are left for the next start (at-least-once) instead of blocking the stop
        "stream_wait_empty": False,
    }
    if producer_max_batch_size > 0:
        settings["producer_max_batch_size"] = producer_max_batch_size
    settings.update(extra or {})
    return settings


def new_app(app_id: str, connection: Connectable, settings: dict[str, Any],
            fetch_wait_ms: int | None) -> faust.App:
    """A Faust app (consumer group ``app_id``) on ``connection`` (its addresses, TLS and SASL)
    with the corrections of ``streams.kafka.consumer`` installed, the election of a new
    broker's group coordinator logged as what it is (``streams.kafka.coordinator``), and
    aiokafka's retries against an unreachable broker logged once per kind and window
    (``streams.kafka.repeats``)."""
    app = faust.App(app_id, **connect(connection).faust_options(), **settings)
    consumer.install(app, fetch_wait_ms)
    quiet_coordinator_election()
    quiet_repeated_errors()  # after the election filter: it sees that one at INFO
    return app


def raw_table(app: faust.App, name: str, partitions: int) -> Any:
    """A table of bytes keys and bytes values (with a changelog)."""
    # key_type/value_type=bytes selects the raw serializer for the changelog writes, the schema
    # the same for recovery reads
    return app.Table(name, partitions=partitions, key_type=bytes, value_type=bytes,
                     schema=faust.Schema(**RAW))


class _Worker(faust.Worker):
    """Faust's worker with a deadline on its stop.

    After SIGTERM or SIGINT Faust commits what was acknowledged and flushes its producer; with
    the broker gone both wait for it, and the process ignored SIGTERM for good (a newcomer's
    check: over 30 s, then SIGKILL). Once ``stop_timeout_s`` has passed since the signal,
    ``on_overdue`` (the final counts) runs and the process exits with status 1, saying so. Safe
    for at-least-once: an offset is committed only after the producer flush that carried its
    state, so whatever the stop did not finish comes again at the next start."""

    def __init__(self, app: faust.App, *, stop_timeout_s: float,
                 on_overdue: Callable[[], None] | None, **options: Any) -> None:
        super().__init__(app, **options)
        self.stop_timeout_s, self.on_overdue = stop_timeout_s, on_overdue

    def _schedule_shutdown(self, signal: Any) -> None:
        if not self._signal_stop_time:
            timer = threading.Timer(self.stop_timeout_s, self._stop_overdue)
            timer.daemon = True
            timer.start()
        super()._schedule_shutdown(signal)

    def _stop_overdue(self) -> None:
        print(f"clsmon: the stop did not finish within {self.stop_timeout_s:g} s (is the "
              "broker reachable?); exiting without it: what was not committed comes again at "
              "the next start", file=sys.stderr, flush=True)
        if self.on_overdue is not None:
            self.on_overdue()
        os._exit(1)


def faust_worker(app: faust.App, loglevel: str, stop_timeout_s: float,
                 on_overdue: Callable[[], None] | None = None) -> faust.Worker:
    """Faust's worker for ``app``, quiet, and without its progress spinner unless stdout is a
    terminal: the spinner writes cursor hide/show codes (``ESC[?25l``) even into a log file.
    Its stop after a signal ends within ``stop_timeout_s`` seconds (``_Worker``)."""
    worker = _Worker(app, stop_timeout_s=stop_timeout_s, on_overdue=on_overdue,
                     loglevel=loglevel, quiet=True, redirect_stdouts=False)
    if not sys.stdout.isatty():
        worker.spinner = None
    return worker


def serve_and_run(app: faust.App, metrics: Any, ready: threading.Event, banner: str,
                  web_port: int, web_host: str, loglevel: str, stop_timeout_s: float,
                  temporary_dir: str | None = None) -> int:
    """Serve /metrics, /healthz, /readyz (when ``web_port``), print ``banner`` and run the Faust
    app in the foreground until SIGTERM/SIGINT; the exit code of the Faust worker (1 when its
    stop took over ``stop_timeout_s`` seconds and was cut short).

    ``banner`` starts with the command's name and a colon ("clsmon worker: broker ..."); once
    ``ready`` is set, one line says so ("clsmon worker: ready"), for whoever watches the console
    without /readyz. ``temporary_dir`` (Faust's data directory when none was given) is removed
    at the end, also after a stop cut short. Shared by the detection worker and the notifier.
    ``metrics`` is any object with a ``registry``. Must run in the main thread (Faust installs
    signal handlers).
    """
    server = serve(metrics.registry, ready, web_port, web_host) if web_port else None
    print(banner + (f", metrics http://{web_host}:{web_port}/metrics" if server else ""),
          flush=True)
    name = banner.split(":", 1)[0]

    def announce_ready() -> None:
        ready.wait()
        print(f"{name}: ready", flush=True)

    threading.Thread(target=announce_ready, name="announce-ready", daemon=True).start()

    def last_word() -> None:
        # the last word on what this process did: a scrape racing the shutdown can miss the
        # messages processed (and committed) while it stopped
        print(FINAL_COUNTS + json.dumps(final_counts(metrics.registry), sort_keys=True),
              flush=True)

    def tidy() -> None:
        if temporary_dir:
            shutil.rmtree(temporary_dir, ignore_errors=True)

    def overdue() -> None:  # the process ends at once after this (os._exit): no finally
        last_word()
        tidy()

    try:
        faust_worker(app, loglevel, stop_timeout_s, overdue).execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        if server is not None:
            server.shutdown()
        last_word()
        tidy()
    return 0
