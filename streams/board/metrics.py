"""The board's Prometheus series (served by ``streams.ops.http`` on its own port, 127.0.0.1 by
default): open live streams, whether the history has been read, sign-ins and actions. No
patient identifier and no user name in any label."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class BoardMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.streams = Gauge("clsmon_board_live_streams", "Open live-update streams (browsers "
                             "showing the board)", registry=r)
        self.ready = Gauge("clsmon_ready", "1 when the board has read the topics' history",
                           registry=r)
        self.sign_ins = Counter("clsmon_board_sign_ins", "Sign-ins by outcome (ok, refused, "
                                "locked)", ["outcome"], registry=r)
        self.actions = Counter("clsmon_board_actions", "Acknowledgements and escalation "
                               "requests written to alert-acks, and refusals (forbidden, csrf)",
                               ["action"], registry=r)
