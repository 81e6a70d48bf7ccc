"""The shortcut lab's library: markers, planting them on copies of a split, and a CNN that learns
a planted square instead of the lungs (on the embedded demo set)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from ctdemo.config import DEMO_BUNDLE_DIR
from ctdemo.evaluation.shortcut import (
    Corner,
    MarkerKind,
    Shortcut,
    ShortcutError,
    ValidationMarking,
    chosen_slices,
    marker_mask,
    plant,
    what_happened,
)
from ctdemo.evaluation.splits import SplitData, SplitSpec, make_split
from ctdemo.io.folders import ArrayDataset, load_arrays

from conftest import make_image_folder
from test_cli import assert_one_line_error, run_cli

SIDE = 48


def dataset(n_per_class: int = 10, side: int = SIDE, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    n = 2 * n_per_class
    return ArrayDataset(
        x=rng.uniform(0, 0.5, (n, side, side, 1)).astype(np.float32),
        y=np.repeat(np.arange(2), n_per_class).astype(np.int32),
        class_names=["COVID", "non-COVID"],
        files=[f"f{i}.png" for i in range(n)],
        skipped=[],
        fingerprint="generated",
    )


def split_of(data: ArrayDataset) -> SplitData:
    half = np.arange(len(data)) % 2 == 0
    return SplitData(
        data.subset(np.flatnonzero(half)), data.subset(np.flatnonzero(~half)), SplitSpec()
    )


def digest(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


@pytest.mark.parametrize("corner", list(Corner))
def test_a_square_sits_in_its_corner(corner):
    mask = marker_mask(Shortcut(corner=corner, size=0.25), SIDE)
    rows, cols = np.nonzero(mask)
    side = round(SIDE * 0.25)
    assert mask.sum() == side * side
    assert (rows.max() < SIDE // 2) == corner.startswith("top")
    assert (cols.max() < SIDE // 2) == corner.endswith("left")


def test_a_letter_is_a_letter_and_a_frame_runs_round_the_edge():
    square = marker_mask(Shortcut(kind=MarkerKind.SQUARE, size=0.3), SIDE)
    letter = marker_mask(Shortcut(kind=MarkerKind.LETTER, size=0.3), SIDE)
    assert 0.15 * square.sum() < letter.sum() < 0.8 * square.sum()
    assert not (letter & ~square).any()  # inside the square's box
    box = letter[square].reshape(round(SIDE * 0.3), -1)
    assert not np.array_equal(box, box[:, ::-1])  # an "R" is not mirror-symmetric
    frame = marker_mask(Shortcut(kind=MarkerKind.FRAME, size=0.12), SIDE)
    assert frame[0].all() and frame[-1].all() and frame[:, 0].all() and frame[:, -1].all()
    assert not frame[SIDE // 4 : -SIDE // 4, SIDE // 4 : -SIDE // 4].any()


def test_planting_marks_copies_of_the_chosen_slices_only():
    data = dataset()
    split = split_of(data)
    before = {name: digest(part.x) for name, part in (("train", split.train), ("val", split.val))}
    planted = plant(split, Shortcut(fraction=0.6), seed=3)
    assert digest(split.train.x) == before["train"] and digest(split.val.x) == before["val"]
    changed = np.flatnonzero((planted.train.x != split.train.x).any(axis=(1, 2, 3)))
    carriers = np.flatnonzero(split.train.y == 0)
    assert set(changed) <= set(carriers) and len(changed) == round(0.6 * len(carriers))
    assert planted.marked_train_slices == len(changed)
    assert np.all(planted.train.x[changed][:, planted.mask] == 1.0)
    assert np.array_equal(planted.train.y, split.train.y)


def test_the_seed_alone_decides_which_slices_carry_the_marker():
    labels = np.repeat(np.arange(2), 50)
    first, again = chosen_slices(labels, 1, 0.5, seed=7), chosen_slices(labels, 1, 0.5, seed=7)
    assert np.array_equal(first, again) and len(first) == 25 and (labels[first] == 1).all()
    assert not np.array_equal(first, chosen_slices(labels, 1, 0.5, seed=8))
    assert len(chosen_slices(labels, 1, 0.0, seed=7)) == 0


@pytest.mark.parametrize(
    ("marking", "val_marked_class", "measured_marked_class"),
    [("clean", None, 0), ("marked", 0, 0), ("flipped", 1, 1)],
)
def test_validation_is_clean_marked_or_flipped(marking, val_marked_class, measured_marked_class):
    split = split_of(dataset())
    planted = plant(split, Shortcut(validation=marking), seed=0)

    def marked_classes(part: ArrayDataset) -> set[int]:
        rows = (part.x != split.val.x).any(axis=(1, 2, 3))
        return set(part.y[rows].tolist())

    assert marked_classes(planted.val) == ({val_marked_class} - {None})
    assert marked_classes(planted.marked) == {measured_marked_class}
    assert marked_classes(planted.clean) == set()
    assert set(planted.marked.y[planted.carrying].tolist()) == {measured_marked_class}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("square:COVID", "KIND:CLASS:FRACTION"),
        ("circle:COVID:1", "choose one of square, letter, frame"),
        ("square:COVID:lots", "must be a number"),
        ("square:COVID:1.5", "0 to 1"),
    ],
)
def test_a_bad_shortcut_is_refused_with_what_to_write(text, message):
    with pytest.raises(ShortcutError, match=message):
        Shortcut.parse(text)


def test_a_shortcut_on_a_class_the_data_lacks_is_refused():
    with pytest.raises(ShortcutError, match=r"no class 'Pneumonia'.*COVID, non-COVID"):
        plant(split_of(dataset()), Shortcut(carrier="Pneumonia"), seed=0)
    with pytest.raises(ShortcutError, match="size"):
        Shortcut(size=0.9)


def test_a_shortcut_reads_back_from_its_card_record():
    shortcut = Shortcut.parse("letter:non-COVID:0.5", validation="flipped")
    record = json.loads(json.dumps(shortcut.to_dict()))
    assert Shortcut(**record) == shortcut
    assert shortcut.describe() == (
        "letter top-left on 50% of non-COVID training slices; validation flipped"
    )
    assert shortcut.validation is ValidationMarking.FLIPPED


def test_the_sentence_names_what_happened():
    learned = what_happened([0.5, 0.6, 0.66], [0.5, 0.9, 1.0], best_epoch=3)
    assert "from 50% to 66%" in learned and "100% on marked" in learned
    assert "learned the marker" in learned
    flipped = what_happened([0.6, 0.9], [0.5, 0.2], best_epoch=2)
    assert "only 20% on marked" in flipped and "pulls" in flipped
    assert "did not come to rely on it" in what_happened([0.9], [0.92], best_epoch=1)


LESSON_SQUARE = Shortcut(size=0.3)


@pytest.fixture(scope="module")
def demo_runs():
    """The lesson's experiment on the demo set: the page's CNN trained with a square on every
    COVID training slice (clean validation), and the same CNN trained clean."""
    from ctdemo.app.train_settings import TrainSettings
    from ctdemo.models.experiment import train_on_arrays

    settings = TrainSettings()
    config = settings.config()
    data = load_arrays(DEMO_BUNDLE_DIR, config.architecture.image_size)
    before = digest(data.x)
    planted_run = train_on_arrays(data, config, settings.split_spec(), "s", shortcut=LESSON_SQUARE)
    clean_run = train_on_arrays(data, config, settings.split_spec(), "c")
    assert digest(data.x) == before  # the cached clean arrays are never written
    return data, settings, planted_run, clean_run


def test_a_cnn_learns_a_planted_square_instead_of_the_lungs(demo_runs):
    """Measured here (seed 0): 100% on marked validation, 67% on clean (a 33-point gap)."""
    _, _, (result, card), _ = demo_runs
    clean, marked = card.shortcut["clean_accuracy"], card.shortcut["marked_accuracy"]
    assert marked["value"] >= 0.95
    assert clean["value"] <= marked["value"] - 0.15
    assert card.shortcut["description"].startswith("square top-left on 100% of COVID")
    assert len(result.history["clean_accuracy"]) == result.epochs_run
    assert len(result.history["marked_accuracy"]) == result.epochs_run


def test_the_shortcut_model_puts_more_heat_on_the_marker_than_a_clean_one(demo_runs):
    """Measured here: 21% of the Grad-CAM on the marker (9% of the slice) against 11% for the
    clean model on the same marked slices, p < 1e-10 (Wilcoxon, 38 pairs)."""
    from ctdemo.explain.marker import marker_heat
    from ctdemo.explain.trust import paired_p_value

    data, settings, (planted_result, card), (clean_result, _) = demo_runs
    planted = plant(make_split(data, settings.split_spec()), LESSON_SQUARE, seed=0)
    x, y = planted.marked.x[planted.carrying], planted.marked.y[planted.carrying]
    on_marker = marker_heat(planted_result.model, x, y, planted.mask)
    clean_on_marker = marker_heat(clean_result.model, x, y, planted.mask)
    assert np.mean(on_marker) >= np.mean(clean_on_marker) + 0.05
    assert paired_p_value(on_marker, clean_on_marker) < 0.01
    assert card.shortcut["marker_heat"]["mean"] == pytest.approx(np.mean(on_marker), abs=1e-6)
    assert card.shortcut["marker_area"] == pytest.approx(planted.mask.mean())


def test_the_command_line_plants_a_shortcut_and_the_card_says_so(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=20, size=32)
    out = tmp_path / "marked.keras"
    result = run_cli(
        "train", "--arch", "mlp", "--data", data, "--out", out, "--epochs", "2",
        "--image-size", "24", "--block-size", "5", "--val-split", "0.25",
        "--shortcut", "frame:non-COVID:0.5", "--shortcut-validation", "flipped",
        home=tmp_path / "home",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    card = json.loads(out.with_name("marked.card.json").read_text())
    assert card["shortcut"]["kind"] == "frame" and card["shortcut"]["carrier"] == "non-COVID"
    assert card["shortcut"]["validation"] == "flipped" and card["shortcut"]["fraction"] == 0.5
    assert "planted shortcut (frame on 50% of non-COVID" in result.stdout
    assert "marked_accuracy" in card["history"] and "clean_accuracy" in card["history"]


@pytest.mark.parametrize(
    "extra",
    [
        ("--shortcut", "blob:COVID:1"),
        ("--shortcut", "square:Pneumonia:1"),
        ("--shortcut-validation", "flipped"),
    ],
)
def test_a_bad_shortcut_on_the_command_line_is_one_line(tmp_path, extra):
    data = make_image_folder(tmp_path / "data", per_class=6, size=24)
    result = run_cli(
        "train", "--arch", "mlp", "--data", data, "--out", tmp_path / "m.keras",
        "--epochs", "1", "--image-size", "16", "--block-size", "2", *extra,
        home=tmp_path / "home",
    )  # fmt: skip
    assert_one_line_error(result)
    assert not (tmp_path / "m.keras").exists()


def test_replace_keeps_a_shortcut_valid():
    with pytest.raises(ShortcutError):
        replace(Shortcut(), fraction=-0.1)
