"""HL7 v2 acknowledgements: the ACK the listener sends, with ERR segments naming the field.

Original-mode ACK (HL7 v2.5 chapter 2): ``MSH`` (sender and receiver swapped, MSH-7 now with
an explicit offset: python-hl7's ``create_ack`` writes UTC without one, which a receiver reads as
its local time), ``MSA`` (code, the message's MSH-10, and a text for v2.3 senders), then one
``ERR`` per problem: ERR-2 location (segment ^ sequence ^ field [^ 1 ^ component]), ERR-3 the
HL7 table 0357 code, ERR-4 severity (E error, W warning), ERR-8 the text for people.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import hl7

from detectors.times import format_dtm
from streams.interfaces.hl7.inbound import Err, Reading

#: HL7 table 0357 (message error condition codes) used here
ERROR_TEXT = {"100": "Segment sequence error", "101": "Required field missing",
              "102": "Data type error", "103": "Table value not found",
              "200": "Unsupported message type", "201": "Unsupported event code",
              "204": "Unknown key identifier", "207": "Application internal error"}


def escape(text: str) -> str:
    """HL7 v2 escapes for the default delimiters; line breaks as ``\\.br\\``."""
    return (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\").replace("\r", "\\.br\\")
            .replace("\n", "\\.br\\"))


def err_segment(e: Err, esc: Callable[[str], str] = escape) -> str:
    where = f"{e.segment}^{e.seq}^{e.field_no}" + (f"^1^{e.component}" if e.component else "")
    return (f"ERR||{where}|{e.code}^{ERROR_TEXT.get(e.code, '')}^HL70357|{e.severity}"
            f"||||{esc(e.text)}")


def build_ack(reading: Reading, now_ms: int, code: str | None = None,
              errs: Iterable[Err] | None = None, application: str = "CLSMON",
              facility: str = "CLSMON") -> bytes:
    """The ACK for a reading (``code``/``errs`` override its own, e.g. when Kafka failed)."""
    ack_code = code or reading.ack
    rows = list(reading.errs if errs is None else errs)
    stamp = format_dtm(now_ms)
    msg = reading.message
    if msg is not None:
        ack = msg.create_ack(ack_code, application=application, facility=facility)
        ack["MSH.F7"] = stamp
        head = str(ack).rstrip("\r")
    else:  # not parseable: a minimal ACK
        head = (f"MSH|^~\\&|{application}|{facility}|||{stamp}||ACK|"
                f"{hl7.generate_message_control_id()}|P|2.5\rMSA|{ack_code}|"
                f"{escape(reading.control_id)}")
    if rows and ack_code != "AA":
        head += "|" + escape(rows[0].text)[:80]  # MSA-3 (read by v2.3 senders)
    lines = [head, *(err_segment(e) for e in rows)]
    return ("\r".join(lines) + "\r").encode("utf-8")
