"""What a long-running process did, in one line at its end.

A worker or notifier that stops prints ``clsmon: final counts {...}``: every counter of its
registry. A scrape racing the shutdown can miss what the process did (and committed) while it
stopped; this line cannot, and the "count in = count out" tests read it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

#: prefix of the line a worker or notifier prints on exit, followed by its counters as JSON
FINAL_COUNTS = "clsmon: final counts "


def final_counts(registry: CollectorRegistry) -> dict[str, float]:
    """Every counter sample of ``registry`` (``name{label="v",...}`` -> value), for the line a
    worker prints when it stops: what it did after the last scrape is counted there too."""
    out: dict[str, float] = {}
    for family in registry.collect():
        if family.type != "counter":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out
