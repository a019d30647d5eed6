"""What the operations team scrapes and reads from a running process: the /metrics, /healthz and
/readyz server (``http``) and the final counts a process prints when it stops (``counts``).

May import: prometheus-client and the standard library only.
"""
