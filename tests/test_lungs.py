"""Lung segmentation on generated phantoms whose lungs are known exactly, and on real slices."""

from __future__ import annotations

import numpy as np
import pytest

from ctdemo.explain.lungs import heat_share, segment_lungs
from ctdemo.io.slices import decode_slice

from conftest import real_train_dir


def phantom(
    size: int = 320,
    opacity: bool = False,
    crop: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A lung-window slice: an elliptic body (soft tissue) in air, two elliptic lungs with
    vessels, a spine; `opacity` puts a dense blob inside the left lung; `crop` cuts the slice
    to the body's box, so the lungs nearly touch its edges. Returns (pixels, true lung mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.full((size, size), 0.0)
    body = ((xx - 0.5) / 0.46) ** 2 + ((yy - 0.5) / 0.36) ** 2 < 1
    image[body] = 0.78
    lungs = np.zeros((size, size), dtype=bool)
    for cx in (0.3, 0.7):
        lungs |= ((xx - cx) / 0.15) ** 2 + ((yy - 0.48) / 0.26) ** 2 < 1
    image[lungs] = 0.22
    spine = ((xx - 0.5) / 0.05) ** 2 + ((yy - 0.78) / 0.05) ** 2 < 1
    image[spine] = 1.0
    for _ in range(40):  # vessels: small bright dots inside the lungs
        y, x = rng.integers(0, size, 2)
        if lungs[y, x]:
            image[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] = 0.7
    if opacity:
        blob = ((xx - 0.3) / 0.06) ** 2 + ((yy - 0.45) / 0.08) ** 2 < 1
        image[blob] = 0.75
    image = np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1).astype(np.float32)
    if crop:
        rows, cols = np.nonzero(body)
        box = (slice(rows.min() + 8, rows.max() - 8), slice(cols.min() + 8, cols.max() - 8))
        return image[box], lungs[box]
    return image, lungs


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("opacity", [False, True], ids=["clear", "opacity"])
@pytest.mark.parametrize("crop", [False, True], ids=["in-air", "cropped"])
@pytest.mark.parametrize("seed", [0, 1])
def test_phantom_lungs_are_found_with_their_opacities(opacity, crop, seed):
    pixels, truth = phantom(opacity=opacity, crop=crop, seed=seed)
    found = segment_lungs(pixels)
    assert found.ok, found.reason
    assert found.mask.shape == pixels.shape
    assert iou(found.mask, truth) >= 0.9


def test_an_opacity_inside_a_lung_is_part_of_it():
    pixels, _ = phantom(opacity=True)
    yy, xx = np.mgrid[0 : pixels.shape[0], 0 : pixels.shape[1]] / pixels.shape[0]
    blob = ((xx - 0.3) / 0.06) ** 2 + ((yy - 0.45) / 0.08) ** 2 < 1
    assert segment_lungs(pixels).mask[blob].mean() > 0.98


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((200, 200), np.float32),
        np.full((200, 200), 0.8, np.float32),
        np.random.default_rng(0).random((200, 200)).astype(np.float32),
        np.tile(np.linspace(0, 1, 200, dtype=np.float32), (200, 1)),
        np.zeros((4, 4), np.float32),
    ],
    ids=["black", "flat", "noise", "gradient", "tiny"],
)
def test_no_lungs_is_flagged_with_a_reason(pixels):
    found = segment_lungs(pixels)
    assert not found.ok and found.reason
    assert found.mask.shape == pixels.shape


def test_one_dark_field_on_one_side_is_not_a_pair_of_lungs():
    pixels, truth = phantom()
    half = pixels.shape[1] // 2
    pixels[:, half:][truth[:, half:]] = 0.78  # the right lung filled with tissue
    found = segment_lungs(pixels)
    assert not found.ok and "one" in found.reason


def test_heat_share_counts_the_heat_inside_the_mask():
    mask = np.zeros((10, 10), dtype=bool)
    mask[:, :3] = True
    assert heat_share(np.ones((10, 10)), mask) == pytest.approx(0.3)
    inside = np.where(mask, 2.0, 0.0)
    assert heat_share(inside, mask) == pytest.approx(1.0)
    assert heat_share(np.zeros((10, 10)), mask) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="shape"):
        heat_share(np.ones((5, 5)), mask)


def test_real_training_slices_mostly_get_a_plausible_pair_of_lungs():
    train = real_train_dir()
    files = (
        sorted((train / "COVID").glob("*.png"))[::50]
        + sorted((train / "non-COVID").glob("*.png"))[::50]
    )
    found = [segment_lungs(decode_slice(path.read_bytes(), path.name).pixels) for path in files]
    ok = [mask for mask in found if mask.ok]
    assert len(ok) >= 0.9 * len(found)
    shares = [mask.area_share for mask in ok]
    assert 0.15 < float(np.median(shares)) < 0.6
