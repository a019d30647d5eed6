"""Kafka plumbing, and nothing clinical: brokers run on this machine (``tansu``, ``local``),
cluster administration (``admin``), the contract's topic names (``topics``), bytes on the wire and
the dead-letter record (``codec``), the Faust settings and runner the long-running processes
share (``faust_app``) and our corrections to Faust's consumer (``consumer``).

May import: ``detectors`` (for the rejection type), ``streams.ops``, Kafka clients and Faust.
Must not import: ``streams.worker``, ``streams.notify``, ``streams.offline``.
"""
