"""The stream worker: Kafka records in, CLS phase alerts out.

``config`` (every knob), ``ingest`` (decode, validate, key check), ``ordering`` (arrival-order
merge per partition), ``store`` (per-patient state over the Faust table), ``outputs`` (alerts
and dead letters), ``detector`` (the per-message logic and acknowledgement discipline),
``metrics`` (its Prometheus series), ``app`` (the Faust app, agent and timers; ``run``).

May import: ``detectors``, ``streams.kafka``, ``streams.ops``, Faust.
Must not import: ``streams.notify.notifier``, ``streams.offline``.
"""
