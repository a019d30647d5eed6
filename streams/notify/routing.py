"""Notification routing: which sinks get an alert, loaded from a TOML file.

```toml
escalate_after_s = 600                  # critical only; or per severity:
# escalate_after_s = { critical = 600, high = 1800 }   (--escalate-after: critical)
supersede_window_s = 15                 # hold warning/high this long for a critical to come


[sinks.console]
type = "console"

[sinks.audit]
type = "audit"
path = "notifications.jsonl"            # relative: in the state directory

[sinks.icu3-team]
type = "webhook"
url = "https://pager.example.org/hooks/icu3"
timeout_s = 5                           # total per attempt
retries = 4
backoff_s = 1.0
redirects = "never"                     # or "same-origin" (307/308 only)
secret_env = "CLSMON_WEBHOOK_SECRET_ICU3"   # Standard Webhooks signing, whsec_... secret

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
types are refused (``RoutingError``), so a typo never silently drops notifications. A relative
audit path is a file in the state directory (``streams.ops.paths.state_dir``), never beside the
config: a config kept in a source tree must not make it write patients' data there.

Escalation is per severity: ``escalate_after_s`` is a number (critical alerts only, as before) or
a table ``{critical = S, high = S, warning = S}``. ``supersede_window_s`` [D] is how long a
``warning`` or ``high`` alert waits before it is delivered, so that a ``critical`` decided
shortly after for the same patient, episode and phase (an albumin result completing the panel)
supersedes it: one page per clinical event. 15 s covers a panel's results arriving as separate
messages and a backlog being caught up; 0 turns it off.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.notify.sinks import (
    REDIRECT_POLICIES,
    AuditSink,
    ConsoleSink,
    FhirSink,
    Hl7AcmSink,
    Sink,
    WebhookSecretError,
    WebhookSink,
)
from streams.ops.paths import state_dir

#: severities that may be escalated, and the default delay (critical only, 600 s)
ESCALATABLE = ("warning", "high", "critical")
DEFAULT_ESCALATE_AFTER = {"critical": 600.0}
DEFAULT_SUPERSEDE_WINDOW_S = 15.0


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
    #: severity -> seconds; None: not configured (the notifier's defaults apply)
    escalate_after_s: dict[str, float] | None = None
    supersede_window_s: float = DEFAULT_SUPERSEDE_WINDOW_S

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
    "webhook": {"url", "timeout_s", "retries", "backoff_s", "max_backoff_s", "headers",
                "redirects", "secret_env"},
    "hl7-acm": {"host", "port", "ack_timeout_s", "retries", "backoff_s", "max_backoff_s",
                "sending_application", "sending_facility", "receiving_application",
                "receiving_facility", "id_authority"},
    "fhir": {"base_url", "patient_system", "alert_system", "timeout_s", "retries", "backoff_s",
             "max_backoff_s", "headers"},
}


def _sink(name: str, spec: Any, base_dir: Path | None) -> Sink:
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
        if Path(path).is_absolute():
            return AuditSink(path, name)
        return AuditSink(str((base_dir or state_dir()) / path), name)
    if kind in ("hl7-acm", "fhir"):
        return _interface_sink(name, kind, spec)
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
    redirects = spec.get("redirects", "never")
    if redirects not in REDIRECT_POLICIES:
        raise RoutingError(f"sinks.{name}.redirects must be one of {list(REDIRECT_POLICIES)}")
    secret = None
    if "secret_env" in spec:
        var = spec["secret_env"]
        if not isinstance(var, str) or not var:
            raise RoutingError(f"sinks.{name}.secret_env must name an environment variable")
        secret = os.environ.get(var)
        if not secret:
            raise RoutingError(f"sinks.{name}: environment variable {var} (the signing "
                               "secret, whsec_...) is not set")
    try:
        return WebhookSink(url, name=name, headers=dict(headers), redirects=redirects,
                           secret=secret, **options)
    except WebhookSecretError as exc:
        raise RoutingError(f"sinks.{name}: {spec['secret_env']}: {exc}") from exc


def _numbers(name: str, spec: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key in keys:
        if key in spec:
            value = spec[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise RoutingError(f"sinks.{name}.{key} must be a number >= 0")
            options[key] = int(value) if key in ("retries", "port") else float(value)
    return options


def _interface_sink(name: str, kind: str, spec: dict[str, Any]) -> Sink:
    """The clinical-interface sinks (streams/interfaces): an IHE ACM alert manager over MLLP,
    a FHIR R4 server."""
    texts = {k: v for k, v in spec.items() if isinstance(v, str)}
    timing = _numbers(name, spec, ("retries", "backoff_s", "max_backoff_s"))
    if kind == "hl7-acm":
        from streams.interfaces.hl7.acm import AcmSender, AcmSettings

        host, port = spec.get("host"), spec.get("port")
        if not isinstance(host, str) or not host or not isinstance(port, int) \
                or not 0 < port < 65536:
            raise RoutingError(f"sinks.{name}: hl7-acm needs a host and a port (1-65535)")
        names: dict[str, Any] = {k: texts[k] for k in (
            "sending_application", "sending_facility", "receiving_application",
            "receiving_facility", "id_authority") if k in texts}
        settings = AcmSettings(**names)
        ack = _numbers(name, spec, ("ack_timeout_s",))
        return Hl7AcmSink(AcmSender(host, port, **ack, **timing), settings, name=name)
    from streams.interfaces.fhir.outbound import FhirSystems

    base = spec.get("base_url")
    if not isinstance(base, str) or not base.startswith(("http://", "https://")):
        raise RoutingError(f"sinks.{name}: fhir needs an http:// or https:// base_url")
    headers = spec.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise RoutingError(f"sinks.{name}.headers must be a table of strings")
    systems: dict[str, Any] = {k: texts[k] for k in ("patient_system", "alert_system")
                               if k in texts}
    timeout = _numbers(name, spec, ("timeout_s",))
    fhir_json = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    post = WebhookSink(base.rstrip("/"), name=name, headers={**fhir_json, **headers},
                       **timeout, **timing)
    return FhirSink(post, FhirSystems(**systems), name=name)


def _names(where: str, value: Any, sinks: dict[str, Sink]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RoutingError(f"{where} must be a list of sink names")
    missing = [v for v in value if v not in sinks]
    if missing:
        raise RoutingError(f"{where}: unknown sinks {missing} (defined: {sorted(sinks)})")
    return tuple(value)


def _escalate_after(value: Any) -> dict[str, float] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(ESCALATABLE))
        if unknown:
            raise RoutingError(f"escalate_after_s: unknown severities {unknown} "
                               f"(one of {list(ESCALATABLE)})")
        items = value
    else:
        items = {"critical": value}
    out = {}
    for severity, after in items.items():
        if isinstance(after, bool) or not isinstance(after, int | float) or after <= 0:
            raise RoutingError("escalate_after_s must be a number of seconds > 0 (or a table "
                               "of them per severity)")
        out[severity] = float(after)
    return out


def routing_from_mapping(data: dict[str, Any], base_dir: Path | None = None) -> Routing:
    """The routing of a parsed config; relative audit paths go to ``base_dir`` (default: the
    state directory)."""
    unknown = sorted(set(data) - {"sinks", "default", "route", "escalate_after_s",
                                  "supersede_window_s"})
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
    window = data.get("supersede_window_s", DEFAULT_SUPERSEDE_WINDOW_S)
    if isinstance(window, bool) or not isinstance(window, int | float) or window < 0:
        raise RoutingError("supersede_window_s must be a number of seconds >= 0")
    return Routing(sinks, default, routes, _escalate_after(data.get("escalate_after_s")),
                   float(window))


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
        return routing_from_mapping(data)
    except RoutingError as exc:
        raise RoutingError(f"{p}: {exc}") from exc
