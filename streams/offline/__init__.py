"""Files instead of topics: replay recorded observations through the engine (``replay``), score
alerts against ground truth (``evaluate``), draw timelines (``plots``), simulate patients
(``simulator``) and publish a cohort to the input topics (``publish``).

May import: ``detectors``, ``streams.kafka`` (topic names, codec, plain Kafka clients), pandas,
matplotlib. Must not import: Faust (an offline run needs no stream app), ``streams.worker``,
``streams.notify.notifier``.
"""
