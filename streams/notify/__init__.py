"""Getting alerts to clinicians: the notifier's decisions (``notifier``: once per alert,
acknowledgements, escalation requests, escalation per severity, superseding), its memory
(``ledger``), running sinks concurrently and independently (``delivery``), the sinks
(``sinks``: console, webhook, audit file), per-ward routing (``routing``), its metrics
(``metrics``), the Faust app (``app``), and the on-call commands ``clsmon alerts`` and
``clsmon ack`` (``oncall``).

May import: ``detectors`` (alert vocabulary), ``streams.kafka``, ``streams.ops``, Faust.
Must not import: ``streams.worker``, ``streams.offline``, ``streams.board``.
"""
