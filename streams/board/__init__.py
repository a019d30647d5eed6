"""The clinicians' ward board (``clsmon board``): a web application showing every bed of a ward
live. ``state`` (the picture, rebuilt from events), ``kafka_io`` (reading the topics, writing
acknowledgements and escalation requests, running uvicorn and the consumer in one loop),
``app`` (the Starlette routes: sign-in, board, live updates over server-sent events, alert
detail, acknowledge, escalate now), ``users`` (the users file, argon2id hashes, roles),
``chart`` (the patient's timeline as server-rendered SVG), ``templates/`` and ``static/``.

It talks to the worker and the notifier only through topics (alerts, alert-acks,
notifications, patient-phase, vitals, labs), so a restarted board shows the same picture.

May import: ``detectors`` (alert and observation vocabulary, clinical wording),
``streams.kafka`` (topic names, codec), ``streams.ops``, Starlette, uvicorn, aiokafka.
Must not import: ``streams.worker``, ``streams.notify``, ``streams.offline``, Faust.
"""
