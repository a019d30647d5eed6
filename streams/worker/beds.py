"""Which beds have gone silent, counted by ward: the data behind ``clsmon_beds_silent{ward}``.

No patient identifier reaches a metric label: the gauge counts beds per ward (the ward the ADT
feed gave, else ``unknown``), at most ``MAX_WARDS`` distinct wards (the rest count as ``other``),
so the number of series is bounded whatever the feed sends. Which beds are silent is shown on
the ward board, where clinicians sign in. A bed stops counting when its patient is discharged,
when its partition moves to another worker, and after ``expire_after_s`` of silence (a bed
nobody discharged must not stay "silent" for ever).
"""

from __future__ import annotations

from collections import Counter

MAX_WARDS = 50


class SilentBeds:
    """Last wall-clock time a bed's data arrived, with its ward; counts by ward."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, float]] = {}
        self._wards: set[str] = set()

    def seen(self, patient_id: str, ward: str | None, now: float) -> None:
        label = ward or "unknown"
        if label not in self._wards:
            if len(self._wards) >= MAX_WARDS:
                label = "other"
            else:
                self._wards.add(label)
        self._last[patient_id] = (label, now)

    def forget(self, patient_id: str) -> None:
        self._last.pop(patient_id, None)

    def clear(self) -> None:
        self._last.clear()

    def counts(self, now: float, silent_after_s: float, expire_after_s: float
               ) -> tuple[Counter[str], Counter[str]]:
        """(monitored beds by ward, silent beds by ward); beds silent longer than
        ``expire_after_s`` are forgotten first."""
        for pid in [p for p, (_, t) in self._last.items() if now - t > expire_after_s]:
            del self._last[pid]
        monitored: Counter[str] = Counter()
        silent: Counter[str] = Counter()
        for ward, t in self._last.values():
            monitored[ward] += 1
            if now - t > silent_after_s:
                silent[ward] += 1
        return monitored, silent
