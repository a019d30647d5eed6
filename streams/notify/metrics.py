"""The notifier's Prometheus series (served by ``streams.ops.http``), in their own registry.

No patient identifier in any label: sinks are named in the routing config (a bounded set),
outcomes and kinds are fixed words.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streams.kafka import consumer

_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class NotifyMetrics:
    """The notifier's ``clsmon_`` series, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.notifications = Counter(
            "clsmon_notifications", "Notifications by sink and outcome (delivered, failed, "
            "duplicate: already handled, superseded: a more severe alert of the same event came "
            "within the window, escalated, escalation_failed)", ["sink", "outcome"], registry=r)
        self.delivery_seconds = Histogram(
            "clsmon_notification_delivery_seconds", "Wall clock of one delivery to one sink, "
            "retries included, by sink and kind (alert, escalation)", ["sink", "kind"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "clsmon_notifications_in_flight", "Deliveries running now, by sink (a dead sink "
            "holds its slots until each attempt's deadline)", ["sink"], registry=r)
        self.acks = Counter(
            "clsmon_acks", "Acknowledgements and escalation requests by outcome (recorded, "
            "stopped_escalation, after_escalation, duplicate, escalate_requested, "
            "escalate_refused)", ["outcome"], registry=r)
        self.dead_letters = Counter(
            "clsmon_notify_dead_letters", "Messages of alerts/alert-acks (and failed "
            "notifications) sent to the dead-letter topic, by reason", ["reason"], registry=r)
        self.pending_escalations = Gauge(
            "clsmon_pending_escalations", "Alerts delivered, unacknowledged, waiting for their "
            "escalation deadline", registry=r)
        self.ready = Gauge("clsmon_ready", "1 when the notifier has started", registry=r)
        self.rereads = consumer.rereads_counter(r)
