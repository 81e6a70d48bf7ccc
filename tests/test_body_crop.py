"""The body crop on generated phantoms whose body is known exactly, and on real slices."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ctdemo.explain.lungs import segment_lungs
from ctdemo.io.body import (
    MAX_REGION_PASSES,
    Box,
    _label_areas,
    body_box,
    crop_to_body,
)
from ctdemo.io.slices import decode_slice, to_model_input

from conftest import real_train_dir


def phantom(side: int = 640, table: bool = False, text: bool = False) -> tuple[np.ndarray, Box]:
    """A lung-window slice: an elliptic body (soft tissue, two dark lungs, a spine) off-centre
    in a black field; `table` a bright line under it, `text` a label in a corner. Returns
    (pixels, the body's true box)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    cy, cx, ry, rx = 0.42 * side, 0.58 * side, 0.18 * side, 0.26 * side
    image = np.zeros((side, side))
    body = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
    image[body] = 0.85
    for offset in (-0.45, 0.45):
        lung = ((xx - cx - offset * rx) / (0.3 * rx)) ** 2 + ((yy - cy) / (0.7 * ry)) ** 2 < 1
        image[lung] = 0.3
    image[((xx - cx) / 12) ** 2 + ((yy - cy - 0.7 * ry) / 12) ** 2 < 1] = 1.0
    if table:
        line = int(cy + ry) + 12
        image[line : line + 4, side // 8 : 7 * side // 8] = 0.9
    if text:
        label = np.zeros((side, side), dtype=np.uint8)
        cv2.putText(label, "R  120 kV  5 mm", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 2)
        image[label > 0] = 1.0
    image = np.clip(image + rng.normal(0, 0.01, image.shape), 0, 1).astype(np.float32)
    rows, cols = np.nonzero(body.any(axis=1))[0], np.nonzero(body.any(axis=0))[0]
    return image, Box(int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def assert_near(found: Box, truth: Box, pixels: int = 3) -> None:
    for name in ("top", "bottom", "left", "right"):
        assert abs(getattr(found, name) - getattr(truth, name)) <= pixels, (found, truth)


@pytest.mark.parametrize("text", [False, True], ids=["plain", "text"])
@pytest.mark.parametrize("table", [False, True], ids=["no-table", "table"])
def test_a_body_in_a_black_field_is_cut_to_its_box(table, text):
    pixels, truth = phantom(table=table, text=text)
    assert_near(body_box(pixels), truth)
    cropped = crop_to_body(pixels)
    assert abs(cropped.shape[0] - (truth.bottom - truth.top)) <= 6
    assert abs(cropped.shape[1] - (truth.right - truth.left)) <= 6


def test_a_slice_already_cut_to_the_body_is_left_as_it_is():
    pixels, truth = phantom()
    inside = pixels[truth.top + 10 : truth.bottom - 10, truth.left + 10 : truth.right - 10]
    assert crop_to_body(inside) is inside
    np.testing.assert_array_equal(
        to_model_input(inside, 64), to_model_input(inside, 64, body_crop=False)
    )


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_a_black_or_uniform_slice_is_left_as_it_is(value):
    pixels = np.full((200, 300), value, dtype=np.float32)
    assert crop_to_body(pixels) is pixels
    assert to_model_input(pixels, 32).shape == (32, 32, 1)


def test_specks_tiny_strips_and_not_a_number_do_not_crash():
    specks = np.zeros((300, 300), dtype=np.float32)
    specks[::50, ::50] = 1.0
    assert crop_to_body(specks) is specks
    strip = np.linspace(0, 1, 5 * 40, dtype=np.float32).reshape(5, 40)
    assert crop_to_body(strip) is strip
    broken, _ = phantom(side=200)
    broken[:10] = np.nan
    assert crop_to_body(broken).ndim == 2


def test_a_body_in_two_parts_is_boxed_whole_and_a_speck_is_left_out():
    """Every region at least KEEP_SHARE of the largest counts (a body the opening split, an
    arm), each in its own box; the box is their union. A speck far away is not in it."""
    pixels = np.zeros((400, 600), dtype=np.float32)
    pixels[120:300, 60:260] = 0.8  # the larger half
    pixels[150:330, 320:480] = 0.8  # the smaller, a gap away
    pixels[160:260, 100:220] = 0.3  # a lung in each
    pixels[190:290, 360:440] = 0.3
    pixels[10:18, 570:578] = 0.8  # a speck the opening keeps, under KEEP_SHARE of the largest
    assert body_box(pixels) == Box(120, 330, 60, 480)


def test_hundreds_of_kept_regions_are_boxed_in_one_lookup(monkeypatch):
    """A body and a grid of blobs each over KEEP_SHARE of it (a hostile file): all are kept
    and boxed together by one lookup through the labels, not by one pass per region."""
    pixels = np.full((600, 600), 0.3, dtype=np.float32)  # not padding: Otsu sees both levels
    pixels[30:130, 30:130] = 0.9  # the largest region, over MIN_BODY_SHARE of the slice
    for top in range(160, 580, 19):
        for left in range(30, 580, 19):
            pixels[top : top + 15, left : left + 15] = 0.9  # 225 pixels: over 2% of 10,000
    passes = []
    compare = cv2.compare
    monkeypatch.setattr(cv2, "compare", lambda *args: passes.append(1) or compare(*args))
    rows, cols = np.nonzero(pixels > 0.5)
    expected = Box(int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)
    assert body_box(pixels) == expected
    assert len(passes) <= MAX_REGION_PASSES


@pytest.mark.parametrize("side", [200, 700], ids=["16-bit labels", "32-bit labels"])
def test_region_areas_are_counted_exactly_with_either_label_width(side):
    rng = np.random.default_rng(side)
    bright = (rng.random((side, side)) > 0.6).astype(np.uint8)
    label_type = cv2.CV_16U if bright.size < 5 * 65535 else cv2.CV_32S
    count, labels = cv2.connectedComponents(bright, connectivity=8, ltype=label_type)
    np.testing.assert_array_equal(
        _label_areas(labels, count), np.bincount(labels.ravel(), minlength=count)
    )


def in_black_field(pixels: np.ndarray, table: bool = True) -> tuple[np.ndarray, Box]:
    """A real slice off-centre in a black field twice its longer side, a table line under it."""
    height, width = pixels.shape
    side = 2 * max(height, width)
    field = np.zeros((side, side), dtype=np.float32)
    top, left = side // 10, side // 3
    field[top : top + height, left : left + width] = pixels
    if table:
        field[top + height + 8 : top + height + 12, side // 8 : 7 * side // 8] = 0.9
    return field, Box(top, top + height, left, left + width)


def real_slices(count: int) -> list[np.ndarray]:
    paths = sorted(real_train_dir().rglob("*.png"))[:: 1971 // count][:count]
    return [decode_slice(path.read_bytes(), path.name).pixels for path in paths]


def test_real_slices_are_left_as_they_are_and_keep_their_lungs_in_a_black_field():
    for pixels in real_slices(8):
        assert crop_to_body(pixels) is pixels  # the training slices are cut to the body
        lungs = segment_lungs(pixels)
        field, placed = in_black_field(pixels)
        box = body_box(field)
        assert_near(box, placed)
        rows, cols = np.nonzero(lungs.mask)
        assert box.top <= placed.top + rows.min() and placed.top + rows.max() < box.bottom
        assert box.left <= placed.left + cols.min() and placed.left + cols.max() < box.right
        assert segment_lungs(crop_to_body(field)).ok == lungs.ok


@pytest.mark.slow
def test_the_screen_accepts_real_slices_in_a_black_field_once_cut():
    from ctdemo.config import WEIGHTS_DIR
    from ctdemo.explain.ood_model import extract_features, feature_extractor, load_detector
    from ctdemo.models.saving import load_model

    slices = real_slices(6)
    model, card = load_model(WEIGHTS_DIR / "cnn.keras")
    detector = load_detector(WEIGHTS_DIR / "cnn.keras", model)
    extractor = feature_extractor(model, detector.layer)
    fields = [in_black_field(pixels)[0] for pixels in slices]
    for crop, accepted in ((False, 0), (True, len(fields))):
        x = np.stack([to_model_input(field, card.image_size, body_crop=crop) for field in fields])
        results = detector.assess(extract_features(extractor, x), x.reshape(len(x), -1).std(1))
        assert sum(not result.flagged for result in results) == accepted, crop
