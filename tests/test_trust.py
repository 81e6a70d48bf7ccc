"""Trust numbers for a heatmap: per slice through the shipped CNN, and their summaries."""

from __future__ import annotations

import numpy as np
import pytest

from ctdemo.config import DEMO_SAMPLES_DIR, WEIGHTS_DIR
from ctdemo.explain.trust import assess, estimate, paired_p_value
from ctdemo.io.slices import decode_slice
from ctdemo.models.saving import load_model


@pytest.mark.slow
def test_a_shipped_cnn_explanation_gets_its_lung_share_and_faithfulness():
    model, card = load_model(WEIGHTS_DIR / "cnn.keras")
    path = sorted((DEMO_SAMPLES_DIR / "COVID").iterdir())[0]
    pixels = decode_slice(path.read_bytes(), path.name).pixels
    report = assess(model, card, pixels, "gradcam", card.class_names.index("COVID"))
    assert report.on_slice.shape == pixels.shape
    assert report.heatmap.shape == (card.image_size, card.image_size)
    assert report.lungs.ok, report.lungs.reason
    assert 0.0 <= report.lung_share <= 1.0 and 0.1 < report.lung_area < 0.7
    assert "Heat inside the lungs" in report.lung_sentence()
    curve = report.faithfulness
    assert len(curve.heat_order) == len(curve.random_order) == len(curve.fractions)
    assert -1.0 <= curve.score <= 1.0


def test_estimate_is_the_mean_with_a_bootstrap_interval_around_it():
    values = list(np.random.default_rng(0).normal(0.4, 0.1, 200))
    result = estimate([*values, None])
    assert result.n == 200
    assert result.mean == pytest.approx(np.mean(values))
    assert result.low < result.mean < result.high
    assert result.high - result.low == pytest.approx(2 * 1.96 * 0.1 / np.sqrt(200), rel=0.25)
    assert estimate([None, None]) is None


def test_estimate_of_one_value_or_identical_values_has_no_width():
    single = estimate([0.3])
    assert (single.mean, single.low, single.high, single.n) == (0.3, 0.3, 0.3, 1)
    same = estimate([0.5] * 4)
    assert same.low == same.high == 0.5


def test_paired_test_finds_a_consistent_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    a = rng.normal(0.5, 0.1, 60)
    assert paired_p_value(list(a), list(a + 0.05 + rng.normal(0, 0.01, 60))) < 0.001
    assert paired_p_value(list(a), list(a + rng.normal(0, 0.1, 60))) > 0.01
    assert paired_p_value([0.1, 0.2], [0.3, 0.4]) is None  # too few pairs
    assert paired_p_value([0.1, None] * 10, [0.2, 0.3] * 10) < 0.01  # None pairs left out
    with pytest.raises(ValueError, match="equal lengths"):
        paired_p_value([0.1], [0.1, 0.2])
