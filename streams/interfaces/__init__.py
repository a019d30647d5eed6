"""Clinical interfaces: what hospital systems speak, mapped to and from the event contract.

- ``codes``: the observation-code and unit tables (data files ``data/codes.csv`` and
  ``data/units.csv``: IEEE 11073 MDC and LOINC codes to kinds, MDC units to UCUM);
- ``hl7``: HL7 v2 in (ORU^R01 results, ADT events) as pure mapping, ACKs, the MLLP listener
  (``clsmon hl7 listen``), and IHE PCD ACM ORU^R40 messages out with their MLLP sender;
- ``fhir``: FHIR R4 in (Observation, blood-pressure panel, Bundle, Patient, Encounter), with
  errors that name the FHIRPath, and DetectedIssue/Communication out;
- ``publish``: ``clsmon publish`` (files of any of these formats to the input topics).

The mapping modules are pure (bytes or dicts in, records or problems out) so the worker, the
listener and the publish tool share them; the I/O (MLLP sockets, HTTP, Kafka producers) sits in
the listener, the senders and the publish tool. The notifier's sinks ``hl7-acm`` and ``fhir``
(``streams.notify.sinks``) are thin wrappers around the builders and senders here.

May import: ``detectors``, ``streams.kafka`` (codec, topics, producer helpers),
``streams.offline.sources`` (reading CSV/Parquet for ``publish``), ``streams.ops``, and the
libraries ``hl7`` (python-hl7) and ``fhir.resources``. Never ``streams.worker``,
``streams.notify`` or Faust: the worker and the notifier import from here, not the reverse.
"""
