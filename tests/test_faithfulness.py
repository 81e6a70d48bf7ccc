"""The deletion curve on synthetic models whose evidence is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from ctdemo.explain.faithfulness import STEPS, deletion_curve

SIZE = 48
REGION = (slice(8, 20), slice(28, 40))
"""The only pixels the synthetic model reads: a bright patch there means "COVID"."""


def region_model(batch: np.ndarray) -> np.ndarray:
    """P(COVID) from the mean brightness of REGION alone, nothing else on the image."""
    evidence = batch[:, REGION[0], REGION[1], 0].mean(axis=(1, 2))
    return 1 / (1 + np.exp(-12 * (evidence - 0.5)))


def slice_with_bright_region(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.1, 0.4, (SIZE, SIZE, 1)).astype(np.float32)
    image[REGION[0], REGION[1]] = 0.95
    return image


def region_heatmap() -> np.ndarray:
    heatmap = np.zeros((SIZE, SIZE), dtype=np.float32)
    heatmap[REGION] = 1.0
    return heatmap


@pytest.mark.parametrize("seed", range(5))
def test_a_heatmap_on_the_region_the_model_reads_beats_a_random_heatmap(seed):
    image = slice_with_bright_region(seed)
    on_region = deletion_curve(region_model, image, region_heatmap(), seed=seed)
    random_map = np.random.default_rng(100 + seed).random((SIZE, SIZE)).astype(np.float32)
    elsewhere = deletion_curve(region_model, image, random_map, seed=seed)
    assert on_region.score > 0.25  # the probability falls within the first two steps
    assert abs(elsewhere.score) < 0.1
    assert on_region.score > elsewhere.score + 0.2
    assert "relies on" in on_region.sentence()


def test_a_heatmap_pointing_away_from_the_evidence_scores_below_zero():
    image = slice_with_bright_region()
    away = 1.0 - region_heatmap()
    curve = deletion_curve(region_model, image, away)
    assert curve.score < -0.08
    assert "points away" in curve.sentence()


def test_the_curve_starts_at_the_model_s_own_answer_and_is_one_batch():
    image = slice_with_bright_region()
    calls = []

    def counting(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return region_model(batch)

    curve = deletion_curve(counting, image, region_heatmap())
    assert calls == [2 * (STEPS + 1)]
    assert curve.fractions[0] == 0 and curve.fractions[-1] == 1
    expected = region_model(image[np.newaxis])[0]
    assert curve.heat_order[0] == pytest.approx(expected)
    assert curve.random_order[0] == pytest.approx(expected)
    assert curve.heat_order[-1] == pytest.approx(curve.random_order[-1])  # all pixels blurred


def test_a_flat_heatmap_is_no_better_than_random():
    image = slice_with_bright_region()
    flat = np.ones((SIZE, SIZE), dtype=np.float32)
    assert abs(deletion_curve(region_model, image, flat).score) < 0.1


def test_mismatched_shapes_and_non_finite_outputs_are_refused():
    image = slice_with_bright_region()
    with pytest.raises(ValueError, match="does not cover"):
        deletion_curve(region_model, image, np.zeros((SIZE, SIZE + 1)))
    with pytest.raises(ValueError, match="finite"):
        deletion_curve(lambda batch: np.full(len(batch), np.nan), image, region_heatmap())
