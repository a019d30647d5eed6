"""Getting alerts to clinicians: the notifier (``notifier``: once per alert, acknowledgements,
escalation), its sinks (``sinks``: console, webhook, audit file), per-ward routing (``routing``)
and the on-call commands ``clsmon alerts`` and ``clsmon ack`` (``oncall``).

May import: ``detectors`` (alert vocabulary), ``streams.kafka``, ``streams.ops``, Faust.
Must not import: ``streams.worker``, ``streams.offline``.
"""
