"""Everything of clsmon that does I/O; the pure engine is ``detectors``.

One sub-package per concern (a test, ``tests/test_layout.py``, holds the import rules):

- ``streams.kafka``: Kafka plumbing: the embedded broker, cluster administration, topic names,
  the wire codec and dead-letter record, Faust settings and our corrections to its consumer;
- ``streams.worker``: the stream worker: ingest, arrival-order merge, state store, outputs,
  the detection agent and its metrics;
- ``streams.board``: the clinicians' ward board (web): beds, alerts, acknowledgements, timelines;
- ``streams.notify``: getting alerts to clinicians: the notifier, sinks, routing, and the
  on-call commands ``clsmon alerts`` / ``clsmon ack``;
- ``streams.offline``: files instead of topics: replay, evaluation, simulator, plots and
  publishing files to the topics (never Faust);
- ``streams.ops``: what operations scrape and read: the /metrics, /healthz, /readyz server and
  the final counts a process prints;
- ``streams.cli`` (parse the command line, then call one function per sub-command) and
  ``streams.demo`` (``make demo``).
"""
