"""Leukocytosis, the supportive sign of a leak (``detectors.criteria.supportive``; issue 13):
WBC > 12 x10^9/L (SIRS), at or after the start of the window it is asked for, the highest draw
shown. The cut-off comes from the thresholds object."""

from __future__ import annotations

from builders import HOUR, MIN, T0

from detectors.alerts import Evidence
from detectors.config import DEFAULT_THRESHOLDS as TH
from detectors.criteria.supportive import leukocytosis

HIGH = TH.wbc_high + 7.0


def test_a_wbc_at_the_sirs_cut_off_is_not_leukocytosis_just_above_it_is():
    assert leukocytosis([[T0, TH.wbc_high]], T0, TH) is None
    assert leukocytosis([[T0, TH.wbc_high + 0.1]], T0, TH).value == TH.wbc_high + 0.1


def test_a_wbc_drawn_at_the_start_of_the_window_counts_one_drawn_before_it_does_not():
    assert leukocytosis([[T0, HIGH]], T0, TH) is not None
    assert leukocytosis([[T0 - 1, HIGH]], T0, TH) is None


def test_the_highest_wbc_is_shown_and_of_equal_ones_the_first_drawn():
    """The first of two equal draws: the evidence existed from then on."""
    readings = [[T0, HIGH - 4.0], [T0 + HOUR, HIGH], [T0 + 2 * HOUR, HIGH], [T0 + 3 * HOUR, 9.0]]
    assert leukocytosis(readings, T0, TH).observed_at_ms == T0 + HOUR


def test_the_leukocytosis_evidence_reads_in_clinical_words_and_is_known_when_reported():
    reported_after_min = 40
    evidence = leukocytosis([[T0, HIGH, reported_after_min]], T0, TH)
    assert evidence == Evidence("leukocytosis", HIGH, "10^9/L", f"WBC > {TH.wbc_high:g}", T0, None,
                                f"WBC {HIGH:.1f} x10^9/L (> {TH.wbc_high:g})",
                                T0 + reported_after_min * MIN)
