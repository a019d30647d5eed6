"""What the operations team scrapes and reads from a running process: the /metrics, /healthz and
/readyz server (``http``) and the final counts a process prints when it stops (``counts``); and
which detection engine a process runs (``engine``: ``detectors/`` compiled by mypyc, built by
``make install``, or the source itself; ``CLSMON_ENGINE``).

May import: prometheus-client and the standard library only.
"""
