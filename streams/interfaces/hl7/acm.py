"""Alerts out to an alert manager: IHE PCD ACM Report Alert (PCD-04, ORU^R40) over MLLP.

``report_alert`` builds the messages for one clsmon alert (or for its acknowledgement);
``AcmSender`` sends one and waits for its ACK, with retries. The notifier's ``hl7-acm`` sink
(``streams.notify.sinks``) is these two and nothing else.

Which messages (one per alert, one per acknowledgement state change):

- a phase entered: the previous phase's alarm ``end`` (state ``inactive``) when there was one,
  and the new phase's alarm ``start`` (state ``active``);
- an escalation (same phase, higher severity): ``escalate`` on the SAME alarm, with the new
  priority. The ACM alert identifier (OBR-2/3) is sha256(patient|episode|phase)[:16]: unlike
  clsmon's ``alert_id`` it leaves out the severity, so the alert manager updates one alarm;
- an episode closed (phase ``none``): ``end`` of the last phase's alarm;
- an acknowledgement: ``update`` with inactivation state ``alert-acknowledged``.

Layout (PCD-04 as vendors' ORU^R40 examples and the ACM supplement show it; the priority is
sent both as OBX-8's second repetition and as facet 6, since alert managers read either):
MSH-21 ``IHE_PCD_ACM_001``; PID-3 patient id with the configured assigning authority; PV1-3 the
ward and bed (the alert manager routes by it); OBR-4 ``196616^MDC_EVT_ALARM^MDC``, OBR-7 the
event time; OBX facets ``1.0.0.0.n``: 1 the event (a local ``99CLS`` code: MDC has no term for
capillary leak; OBX-5.9 the alert text; OBX-8 abnormality~priority~type ``SA`` advisory), 2 the
evidence that matters most (a measurement with its MDC code and unit when clsmon has one), 3
``MDC_ATTR_EVENT_PHASE``, 4 ``MDC_ATTR_ALARM_STATE``, 5 ``MDC_ATTR_ALARM_INACTIVATION_STATE``,
6 ``MDC_ATTR_ALARM_PRIORITY``, 7 ``MDC_ATTR_ALERT_TYPE``. Priority (site-configurable): critical
PH, high PM, warning PL, info PN.

The ACK: AA or CA is delivered; AR or CR (the receiver cannot take it now) is retried; AE or CE
(the content is wrong) is final: retrying would not help. No ACK in ``ack_timeout_s``, a closed
or refused connection: retried with exponential back-off, on a new connection, with the SAME
MSH-10 (receivers drop repeats by it).
"""

from __future__ import annotations

import hashlib
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hl7

from detectors.times import JSON_FORMS, ParsedTime, format_dtm, parse_time
from streams.interfaces.hl7.ack import escape

PRIORITY = {"critical": "PH", "high": "PM", "warning": "PL", "info": "PN"}
DELIVERED = frozenset({"AA", "CA"})
RETRY_LATER = frozenset({"AR", "CR"})
PROFILE = "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4.1^ISO"
#: evidence criterion -> (MDC code^mnemonic, MDC unit code^mnemonic, abnormality flag)
MEASURES = {
    "hypotension": ("150021^MDC_PRESS_BLD_NONINV_SYS", "266016^MDC_DIM_MMHG", "L"),
    "hemoconcentration": ("160132^MDC_CONC_HCT_GEN", "262688^MDC_DIM_PERCENT", "H"),
    "blood_pressure_recovered": ("150021^MDC_PRESS_BLD_NONINV_SYS", "266016^MDC_DIM_MMHG", "N"),
    "weight_over_baseline": ("188736^MDC_MASS_BODY_ACTUAL", "263875^MDC_DIM_KILO_G", "H"),
    "weight_gain": ("188736^MDC_MASS_BODY_ACTUAL", "263875^MDC_DIM_KILO_G", "H"),
}
_LOCAL_UNITS = {"mmHg": "mm[Hg]", "%": "%", "kg": "kg", "g/dL": "g/dL", "mL/kg/h": "mL/kg/h",
                "mL/h": "mL/h"}


def acm_alert_id(patient_id: str, episode: int, phase: str) -> str:
    """The alarm's identity at the alert manager: patient, episode and phase, not severity."""
    return hashlib.sha256(f"{patient_id}|{episode}|{phase}".encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class AcmSettings:
    """Site settings of the ``hl7-acm`` sink."""

    sending_application: str = "CLSMON"
    sending_facility: str = "HOSP"
    receiving_application: str = "ACM_AM"
    receiving_facility: str = "HOSP"
    id_authority: str = "HOSP"  # PID-3.4 of the patient id
    priority: dict[str, str] = field(default_factory=lambda: dict(PRIORITY))


@dataclass(frozen=True, slots=True)
class AcmMessage:
    control_id: str
    text: str  # CR-separated HL7 v2


def _dtm(iso: Any) -> str:
    parsed = parse_time(iso, forms=JSON_FORMS)
    return format_dtm(parsed.epoch_ms) if isinstance(parsed, ParsedTime) else ""


def report_alert(alert: dict[str, Any], now_ms: int, settings: AcmSettings) -> list[AcmMessage]:
    """The PCD-04 messages for one alert, or for its acknowledgement when ``alert["ack"]`` is
    set (the notifier passes the alert with the ack it received)."""
    pid, episode = str(alert["patient_id"]), int(alert.get("episode", 0))
    phase, previous = str(alert["phase"]), str(alert.get("previous_phase", "none"))
    if isinstance(alert.get("ack"), dict):
        return [_message(alert, phase, "update", "active", "alert-acknowledged", now_ms,
                         settings, "ack")]
    out = []
    if previous not in ("none", phase):
        out.append(_message(alert, previous, "end", "inactive", "enabled", now_ms, settings,
                            "end"))
    if phase != "none":
        event = "escalate" if previous == phase else "start"
        out.append(_message(alert, phase, event, "active", "enabled", now_ms, settings, event))
    assert out or previous == "none", (pid, episode)
    return out


def _message(alert: dict[str, Any], phase: str, event_phase: str, state: str,
             inactivation: str, now_ms: int, s: AcmSettings, what: str) -> AcmMessage:
    pid, episode = str(alert["patient_id"]), int(alert.get("episode", 0))
    acm_id = acm_alert_id(pid, episode, phase)
    # the same message is sent again on a retry or a redelivery: its control id is derived
    control_id = f"{str(alert['alert_id'])[:12]}{what[:3].upper()}{acm_id[:5]}"[:20]
    priority = s.priority.get(str(alert.get("severity")), "PN")
    raised = _dtm(alert.get("raised_at"))
    place = "^^".join([escape(str(alert.get("ward") or "")), escape(str(alert.get("bed") or ""))])
    evidence = next((e for e in alert.get("evidence") or [] if e.get("criterion") in MEASURES),
                    None)
    abnormal = MEASURES[evidence["criterion"]][2] if evidence else ""
    summary = escape(str(alert.get("summary", "")))
    segments = [
        f"MSH|^~\\&|{s.sending_application}|{s.sending_facility}|{s.receiving_application}|"
        f"{s.receiving_facility}|{format_dtm(now_ms)}||ORU^R40^ORU_R40|{control_id}|P|2.6|||AL|"
        f"NE||UNICODE UTF-8|||{PROFILE}",
        f"PID|||{escape(pid)}^^^{escape(s.id_authority)}^MR",
        f"PV1||I|{place.rstrip('^')}",
        f"OBR|1|{acm_id}^{s.sending_application}|{acm_id}^{s.sending_application}|"
        f"196616^MDC_EVT_ALARM^MDC|||{raised}",
        f"OBX|1|CWE|196616^MDC_EVT_ALARM^MDC|1.0.0.0.1|CLS_{phase.upper()}^Capillary leak "
        f"syndrome, {phase} phase^99CLS^^^^^^{summary}|||{abnormal}~{priority}~SA|||F|||{raised}",
    ]
    if evidence:
        code, unit, _ = MEASURES[evidence["criterion"]]
        segments.append(f"OBX|2|NM|{code}^MDC|1.0.0.0.2|{evidence['value']}|{unit}^MDC|"
                        f"{escape(str(evidence.get('threshold', '')))[:60]}||||F|||"
                        f"{_dtm(evidence.get('observed_at'))}")
    else:
        segments.append("OBX|2|CWE|68480^MDC_ATTR_ALERT_SOURCE^MDC|1.0.0.0.2|CLSMON^clsmon "
                        "decision support^99CLS||||||F")
    segments += [
        f"OBX|3|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|1.0.0.0.3|{event_phase}||||||F",
        f"OBX|4|ST|68482^MDC_ATTR_ALARM_STATE^MDC|1.0.0.0.4|{state}||||||F",
        f"OBX|5|ST|68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC|1.0.0.0.5|{inactivation}||||||F",
        f"OBX|6|ST|68484^MDC_ATTR_ALARM_PRIORITY^MDC|1.0.0.0.6|{priority}||||||F",
        "OBX|7|ST|68485^MDC_ATTR_ALERT_TYPE^MDC|1.0.0.0.7|SA||||||F",
    ]
    return AcmMessage(control_id, "\r".join(segments) + "\r")


class AcmError(RuntimeError):
    """The alert manager did not take a message (after the retries, or refused its content)."""


@dataclass
class AcmSender:
    """One MLLP connection to the alert manager, kept open between messages (blocking: the
    notifier runs sinks in a thread)."""

    host: str
    port: int
    ack_timeout_s: float = 10.0
    retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    tls: ssl.SSLContext | None = None
    sleep: Callable[[float], None] = time.sleep
    _sock: socket.socket | None = field(default=None, repr=False)
    _buffer: bytes = field(default=b"", repr=False)

    def send(self, message: AcmMessage) -> tuple[str, int]:
        """Send and wait for the ACK; returns (ACK code, attempts).

        Raises:
            AcmError: no positive ACK after the retries, or AE/CE (a content error).
        """
        last = "no attempt"
        attempt = 0
        for attempt in range(1, self.retries + 2):
            try:
                code = self._exchange(message)
            except (OSError, TimeoutError, hl7.ParseException, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                self.close()
            else:
                if code in DELIVERED:
                    return code, attempt
                if code not in RETRY_LATER:
                    raise AcmError(f"the alert manager refused {message.control_id} ({code}): "
                                   "the message content is wrong")
                last = f"{code} (busy, later)"
            if attempt <= self.retries:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                self.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter only
        raise AcmError(f"no positive ACK for {message.control_id} after {attempt} attempts: "
                       f"{last}")

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.ack_timeout_s)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            self._sock, self._buffer = sock, b""
        return self._sock

    def _exchange(self, message: AcmMessage) -> str:
        sock = self._connect()
        sock.settimeout(self.ack_timeout_s)
        sock.sendall(b"\x0b" + message.text.encode("utf-8") + b"\x1c\r")
        deadline = time.monotonic() + self.ack_timeout_s
        while b"\x1c\r" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no ACK within {self.ack_timeout_s:g} s")
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the alert manager closed the connection")
            self._buffer += chunk
        block, self._buffer = self._buffer.split(b"\x1c\r", 1)
        reply = hl7.parse(block.lstrip(b"\x0b").decode("utf-8", "replace"))
        msa = reply.segment("MSA")
        if str(msa(2)) != message.control_id:
            raise ValueError(f"ACK for {msa(2)!s}, expected {message.control_id}")
        return str(msa(1))

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buffer = b""
