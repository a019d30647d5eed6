"""Kafka plumbing, and nothing clinical: brokers run on this machine (Apache Kafka in ``apache``
from the jars ``jars`` fetches, Tansu in ``tansu``, the choice in ``engines``, shared helpers in
``local``), how to reach and log in to a cluster (``connection``, used for every client), the
ACLs each process needs (``acls``), cluster administration (``admin``), the contract's topic
names (``topics``), bytes on the wire and the dead-letter record (``codec``), the Faust settings
and runner the long-running processes share (``faust_app``), our corrections to Faust's
consumer (``consumer``) and a new broker's coordinator election logged as no error
(``coordinator``).

May import: ``detectors`` (for the rejection type), ``streams.ops``, Kafka clients and Faust.
Must not import: ``streams.worker``, ``streams.notify``, ``streams.offline``.
"""
