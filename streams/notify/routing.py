"""Notification routing: which sinks get an alert, loaded from a TOML file.

```toml
escalate_after_s = 600                  # optional; --escalate-after overrides

[sinks.console]
type = "console"

[sinks.audit]
type = "audit"
path = "notifications.jsonl"

[sinks.icu3-team]
type = "webhook"
url = "https://pager.example.org/hooks/icu3"
timeout_s = 5
retries = 4
backoff_s = 1.0

[default]                               # patients no route matches
sinks = ["console", "audit"]
escalation = ["console"]

[[route]]
ward = "icu3"
prefixes = ["icu3-"]                    # default: ["<ward>-"]
sinks = ["icu3-team", "audit"]
escalation = ["icu3-pager"]
```

An alert goes to the route of its ``ward`` field when it has one, else to the route with the
longest prefix of its ``patient_id``, else to ``[default]``. Unknown keys, unknown sink names and
types are refused (``RoutingError``), so a typo never silently drops notifications.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.notify.sinks import AuditSink, ConsoleSink, Sink, WebhookSink


class RoutingError(ValueError):
    """A notification config that cannot be used."""


@dataclass(frozen=True, slots=True)
class Route:
    ward: str
    prefixes: tuple[str, ...]
    sinks: tuple[str, ...]
    escalation: tuple[str, ...]


@dataclass
class Routing:
    sinks: dict[str, Sink]
    default: Route
    routes: list[Route] = field(default_factory=list)
    escalate_after_s: float | None = None

    def route(self, doc: dict[str, Any]) -> Route:
        """The route of an alert (or an ack's patient): ward field, then longest prefix."""
        ward = doc.get("ward")
        if isinstance(ward, str) and ward:
            for r in self.routes:
                if r.ward == ward:
                    return r
        pid = str(doc.get("patient_id") or "")
        best, best_len = self.default, -1
        for r in self.routes:
            for prefix in r.prefixes:
                if pid.startswith(prefix) and len(prefix) > best_len:
                    best, best_len = r, len(prefix)
        return best

    def sinks_of(self, names: tuple[str, ...]) -> list[Sink]:
        return [self.sinks[n] for n in names]

    def audit_sinks(self, route: Route) -> list[AuditSink]:
        """Audit files of a route (where failed deliveries and acks are recorded)."""
        names = dict.fromkeys(route.sinks + route.escalation)
        return [s for n in names if isinstance(s := self.sinks[n], AuditSink)]


_SINK_KEYS = {
    "console": set(),
    "audit": {"path"},
    "webhook": {"url", "timeout_s", "retries", "backoff_s", "max_backoff_s", "headers"},
}


def _sink(name: str, spec: Any, base_dir: Path) -> Sink:
    if not isinstance(spec, dict):
        raise RoutingError(f"sinks.{name} must be a table")
    kind = spec.get("type")
    if kind not in _SINK_KEYS:
        raise RoutingError(f"sinks.{name}: type must be one of {sorted(_SINK_KEYS)}, "
                           f"not {kind!r}")
    unknown = sorted(set(spec) - _SINK_KEYS[kind] - {"type"})
    if unknown:
        raise RoutingError(f"sinks.{name}: unknown keys {unknown}")
    if kind == "console":
        return ConsoleSink(name=name)
    if kind == "audit":
        path = spec.get("path")
        if not isinstance(path, str) or not path:
            raise RoutingError(f"sinks.{name}: audit needs a path")
        return AuditSink(str(base_dir / path) if not Path(path).is_absolute() else path, name)
    url = spec.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise RoutingError(f"sinks.{name}: webhook needs an http:// or https:// url")
    options: dict[str, Any] = {}
    for key, typ in (("timeout_s", float), ("backoff_s", float), ("max_backoff_s", float),
                     ("retries", int)):
        if key in spec:
            value = spec[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise RoutingError(f"sinks.{name}.{key} must be a number >= 0")
            if typ is int and not isinstance(value, int):
                raise RoutingError(f"sinks.{name}.{key} must be an integer")
            options[key] = typ(value)
    headers = spec.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise RoutingError(f"sinks.{name}.headers must be a table of strings")
    return WebhookSink(url, name=name, headers=dict(headers), **options)


def _names(where: str, value: Any, sinks: dict[str, Sink]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RoutingError(f"{where} must be a list of sink names")
    missing = [v for v in value if v not in sinks]
    if missing:
        raise RoutingError(f"{where}: unknown sinks {missing} (defined: {sorted(sinks)})")
    return tuple(value)


def routing_from_mapping(data: dict[str, Any], base_dir: Path = Path(".")) -> Routing:
    unknown = sorted(set(data) - {"sinks", "default", "route", "escalate_after_s"})
    if unknown:
        raise RoutingError(f"unknown keys {unknown}")
    raw_sinks = data.get("sinks", {})
    if not isinstance(raw_sinks, dict) or not raw_sinks:
        raise RoutingError("[sinks] must define at least one sink")
    sinks = {name: _sink(name, spec, base_dir) for name, spec in raw_sinks.items()}
    default_spec = data.get("default", {"sinks": list(sinks)})
    if not isinstance(default_spec, dict) or set(default_spec) - {"sinks", "escalation"}:
        raise RoutingError("[default] takes only sinks and escalation")
    default = Route("", (), _names("default.sinks", default_spec.get("sinks"), sinks),
                    _names("default.escalation", default_spec.get("escalation"), sinks))
    routes = []
    raw_routes = data.get("route", [])
    if not isinstance(raw_routes, list):
        raise RoutingError("route must be an array of tables ([[route]])")
    for i, spec in enumerate(raw_routes):
        where = f"route[{i}]"
        if not isinstance(spec, dict):
            raise RoutingError(f"{where} must be a table")
        extra = sorted(set(spec) - {"ward", "prefixes", "sinks", "escalation"})
        if extra:
            raise RoutingError(f"{where}: unknown keys {extra}")
        ward = spec.get("ward")
        if not isinstance(ward, str) or not ward:
            raise RoutingError(f"{where}: ward (a name) is required")
        prefixes = spec.get("prefixes", [f"{ward}-"])
        if not isinstance(prefixes, list) or not all(isinstance(p, str) and p for p in prefixes):
            raise RoutingError(f"{where}.prefixes must be a list of non-empty strings")
        routes.append(Route(ward, tuple(prefixes),
                            _names(f"{where}.sinks", spec.get("sinks"), sinks),
                            _names(f"{where}.escalation", spec.get("escalation"), sinks)))
    after = data.get("escalate_after_s")
    if after is not None and (isinstance(after, bool) or not isinstance(after, int | float)
                              or after <= 0):
        raise RoutingError("escalate_after_s must be a number of seconds > 0")
    return Routing(sinks, default, routes, float(after) if after is not None else None)


def load_routing(path: str | Path | None) -> Routing:
    """The routing of a TOML file; without a file: every alert to the console."""
    if path is None or str(path) == "":
        return Routing({"console": ConsoleSink()}, Route("", (), ("console",), ("console",)))
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RoutingError(f"notification config not found: {p}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RoutingError(f"notification config {p} is not valid TOML: {exc}") from exc
    try:
        return routing_from_mapping(data, p.parent)
    except RoutingError as exc:
        raise RoutingError(f"{p}: {exc}") from exc
