"""Threshold calibration on the synthetic set (never on the benchmark's labels)."""

from __future__ import annotations

from collections import Counter

import pytest

from business_modules.redundancy import Detector, Method, RedundancySettings
from business_modules.redundancy.calibration import (
    CALIBRATED_THRESHOLDS,
    best_threshold,
    calibrate,
    f1_at,
    synthetic_set,
)


def test_f1_at_hand_computed() -> None:
    scores = [0.9, 0.6, 0.4, 0.2]
    labels = [True, False, True, False]
    # threshold 0.5: tp 1, fp 1, fn 1
    assert f1_at(scores, labels, 0.5) == (0.5, 0.5, 0.5)
    assert f1_at(scores, labels, 0.95) == (0.0, 0.0, 0.0)


def test_best_threshold_takes_the_middle_of_the_best_plateau() -> None:
    # perfectly separated between 0.2 (last negative) and 0.6 (first positive):
    # every threshold in (0.2, 0.6] scores F1 = 1; the middle of 0.21..0.60 is 0.41.
    assert best_threshold([0.1, 0.2, 0.6, 0.9], [False, False, True, True]) == 0.41


def test_synthetic_set_is_deterministic_and_balanced() -> None:
    sources, items = synthetic_set(seed=7)
    again = synthetic_set(seed=7)[1]
    assert [i.text for i in items] == [i.text for i in again]
    counts = Counter(i.category for i in items)
    assert counts["cut"] == counts["light"] == counts["heavy"] == len(sources)
    assert counts["non"] == 2 * len(sources)
    assert all(i.source in sources for i in items)
    assert all(sources[i.source] != i.text for i in items if i.category == "non")


def test_lexical_defaults_are_what_the_calibration_gives() -> None:
    detector = Detector(RedundancySettings())
    found = calibrate(detector, [Method.EXACT, Method.NEAR, Method.CONTAINMENT])
    expected = {m: CALIBRATED_THRESHOLDS[m] for m in found}
    assert found == pytest.approx(expected, abs=0.011)
    assert RedundancySettings().containment_threshold == CALIBRATED_THRESHOLDS[Method.CONTAINMENT]
