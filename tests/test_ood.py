"""The "is this a chest CT slice?" check: its maths, its file, its place in training, and the
shipped CNN on real slices from unseen patients against generated non-CT images."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ctdemo.app import classify
from ctdemo.explain.ood import (
    BLANK_STD,
    COLOUR_FRACTION,
    OODDetector,
    OODLoadError,
    OODResult,
    ledoit_wolf,
    mahalanobis,
    ood_path,
)

from conftest import ROOT, make_image_folder, real_train_dir

# --- Generated non-CT images (PNG bytes) ------------------------------------------------------

HEIGHT, WIDTH = 300, 400


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def uniform_noise() -> bytes:
    return _png(np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8))


def colour_gradient_photo() -> bytes:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack([255 * xx / WIDTH, 255 * yy / HEIGHT, 150 * (1 - xx / WIDTH) + 60], axis=-1)
    return _png(rgb.astype(np.uint8))


def document_page() -> bytes:
    """A white page with a black title bar and lines of black 'words' (a screenshot)."""
    page = Image.new("L", (WIDTH, HEIGHT), 255)
    draw = ImageDraw.Draw(page)
    rng = np.random.default_rng(1)
    draw.rectangle([30, 20, 250, 34], fill=0)
    for top in range(56, HEIGHT - 24, 16):
        x, end = 30, WIDTH - 30 - int(rng.integers(0, 120))
        while x < end:
            word = int(rng.integers(8, 40))
            draw.rectangle([x, top, min(x + word, end), top + 6], fill=0)
            x += word + 6
    return _png(np.asarray(page))


def checkerboard(cell: int = 25) -> bytes:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    return _png(((yy // cell + xx // cell) % 2 * 255).astype(np.uint8))


def blank(value: int) -> bytes:
    return _png(np.full((HEIGHT, WIDTH), value, dtype=np.uint8))


def chest_xray() -> bytes:
    """A projection, not a cross-section: two dark lungs on grey, crossed by bright curved
    ribs, with a bright spine and mediastinum down the middle."""
    side = 320
    yy, xx = np.mgrid[0:side, 0:side] / side
    image = np.full((side, side), 0.55)
    for centre_x in (0.32, 0.68):
        image[((xx - centre_x) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1] = 0.18
    lateral = np.abs(xx - 0.5)
    for rib in range(8):
        centre_y = 0.25 + 0.07 * rib + 0.08 * (2 * lateral) ** 2
        image[(np.abs(yy - centre_y) < 0.012) & (lateral > 0.06) & (lateral < 0.45)] = 0.85
    image[lateral < 0.05] = 0.9
    image += np.random.default_rng(2).normal(0, 0.02, image.shape)
    return _png((np.clip(image, 0, 1) * 255).astype(np.uint8))


GENERATED = {
    "uniform noise": uniform_noise,
    "colour gradient photo": colour_gradient_photo,
    "document page": document_page,
    "checkerboard": checkerboard,
    "blank black": lambda: blank(0),
    "blank white": lambda: blank(255),
    "synthetic chest X-ray": chest_xray,
}


# --- The maths on synthetic features ----------------------------------------------------------


def check(detector: OODDetector, features, pixel_std: float = np.inf, colour: float = 0.0):
    """The result for one image's features (d,)."""
    return detector.assess(np.asarray(features)[np.newaxis], [pixel_std], [colour])[0]


def diagonal_detector(threshold: float = 3.0) -> OODDetector:
    """Mean (1, 2), variances (4, 9), no correlation."""
    return OODDetector(
        mean=np.array([1.0, 2.0]), precision=np.diag([1 / 4, 1 / 9]), threshold=threshold
    )


def test_mahalanobis_distance_equals_hand_computed_values_in_a_diagonal_case():
    detector = diagonal_detector()
    features = np.array([[1.0, 2.0], [3.0, 2.0], [1.0, -1.0], [3.0, 5.0], [-3.0, 8.0]])
    # sqrt(((x - 1) / 2) ** 2 + ((y - 2) / 3) ** 2)
    expected = [0.0, 1.0, 1.0, np.sqrt(2.0), np.sqrt(4.0 + 4.0)]
    assert detector.score(features) == pytest.approx(expected, abs=1e-12)
    assert detector.score(np.array([3.0, 5.0])) == pytest.approx(np.sqrt(2.0))
    assert isinstance(detector.score(np.array([3.0, 5.0])), float)
    with pytest.raises(ValueError, match="Expected 2 features"):
        detector.score(np.zeros((1, 3)))


def test_mahalanobis_uses_the_correlations():
    covariance = np.array([[1.0, 0.9], [0.9, 1.0]])
    precision = np.linalg.inv(covariance)
    along, across = np.array([[1.0, 1.0]]), np.array([[1.0, -1.0]])
    # Along the correlation the spread is 1.9, across it 0.1: same Euclidean length, far apart.
    assert mahalanobis(along, np.zeros(2), precision)[0] == pytest.approx(np.sqrt(2 / 1.9))
    assert mahalanobis(across, np.zeros(2), precision)[0] == pytest.approx(np.sqrt(2 / 0.1))


def test_ledoit_wolf_shrinks_the_sample_covariance_toward_a_scaled_identity():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 10)) * np.linspace(1, 5, 10)
    covariance, shrinkage = ledoit_wolf(features)
    centred = features - features.mean(axis=0)
    sample = centred.T @ centred / len(features)
    target = np.trace(sample) / 10 * np.eye(10)
    assert 0 < shrinkage < 1
    np.testing.assert_allclose(covariance, (1 - shrinkage) * sample + shrinkage * target)
    # One feature: the target is the sample variance itself, so nothing is shrunk.
    single, single_shrinkage = ledoit_wolf(features[:, :1])
    assert single_shrinkage == 0 and single[0, 0] == pytest.approx(np.var(features[:, 0]))


def test_ledoit_wolf_matches_scikit_learn():
    # Oracle: sklearn.covariance.LedoitWolf().fit(features) in scikit-learn 1.9.1 (shrinkage_,
    # covariance_ and precision_), which this project does not install.
    rng = np.random.default_rng(7)
    features = rng.normal(size=(30, 6)) @ rng.normal(size=(6, 6)) + 3.0
    covariance, shrinkage = ledoit_wolf(features)
    assert shrinkage == pytest.approx(0.23674578787907558, rel=1e-12)
    np.testing.assert_allclose(
        np.diag(covariance),
        [
            5.194588124715351,
            3.8241138396445162,
            3.106950779239138,
            4.472858374600549,
            4.046686632286973,
            2.4999067196495,
        ],
        rtol=1e-12,
    )
    assert covariance[0, 1] == pytest.approx(1.8769847646402023, rel=1e-12)
    precision = OODDetector.fit(features, features[:3]).precision
    assert precision[0, 0] == pytest.approx(0.30868009593277784, rel=1e-10)
    assert precision[2, 5] == pytest.approx(-0.017250196291095053, rel=1e-10)


def test_ledoit_wolf_is_invertible_with_fewer_slices_than_features_and_sane_with_many():
    rng = np.random.default_rng(1)
    few = rng.normal(size=(5, 20))  # the sample covariance has rank 4
    covariance, _ = ledoit_wolf(few)
    assert np.linalg.eigvalsh(covariance).min() > 0
    # Many slices of independent features with variances 1..4: little shrinkage, close fit.
    many = rng.normal(size=(20_000, 4)) * np.sqrt([1.0, 2.0, 3.0, 4.0])
    covariance, shrinkage = ledoit_wolf(many)
    assert shrinkage < 0.01
    np.testing.assert_allclose(np.diag(covariance), [1, 2, 3, 4], rtol=0.05)
    with pytest.raises(ValueError, match="constant"):
        ledoit_wolf(np.ones((10, 3)))


def test_threshold_is_the_margin_times_the_validation_quantile():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(500, 6))
    val = rng.normal(size=(200, 6)) * 1.2
    detector = OODDetector.fit(train, val, quantile=0.995, margin=1.25, layer="features")
    covariance, shrinkage = ledoit_wolf(train)
    distances = mahalanobis(val, train.mean(axis=0), np.linalg.inv(covariance))
    assert detector.threshold == pytest.approx(1.25 * np.quantile(distances, 0.995))
    assert detector.shrinkage == pytest.approx(shrinkage)
    assert detector.validation_acceptance == 1.0
    assert (detector.train_slices, detector.validation_slices, detector.dim) == (500, 200, 6)
    median = OODDetector.fit(train, val, quantile=0.5, margin=1.0)
    assert median.threshold == pytest.approx(np.median(distances))
    assert median.validation_acceptance == pytest.approx(0.5)
    summary = detector.summary()
    assert summary["feature_dim"] == 6 and summary["validation_acceptance"] == 1.0
    assert "Mahalanobis" in summary["method"] and "Ledoit-Wolf" in summary["method"]
    json.dumps(summary)  # goes into the model card
    with pytest.raises(ValueError, match="not finite"):
        OODDetector.fit(train, np.full((3, 6), np.nan))
    with pytest.raises(ValueError, match="margin"):
        OODDetector.fit(train, val, margin=0.5)


def test_results_flag_far_features_blank_images_and_colour_with_a_reason():
    detector = diagonal_detector(threshold=3.0)
    near = check(detector, np.array([2.0, 3.0]), pixel_std=0.2)
    assert not near.flagged and near.cue is None and "looks like" in near.reason
    far = check(detector, np.array([9.0, 2.0]), pixel_std=0.2)
    assert far.flagged and far.cue == "features" and far.distance == pytest.approx(4.0)
    assert "4.0" in far.reason and "limit 3.0" in far.reason
    blank_result = check(detector, np.array([1.0, 2.0]), pixel_std=BLANK_STD / 2)
    assert blank_result.flagged and blank_result.cue == "blank" and "blank" in blank_result.reason
    coloured = check(detector, np.array([1.0, 2.0]), colour=0.4)
    assert coloured.flagged and coloured.cue == "colour" and "40%" in coloured.reason
    for result in (near, far, blank_result, coloured):
        assert result.reason.endswith(".") and result.reason.count(". ") == 0  # one sentence
        assert isinstance(result, OODResult) and result.threshold == 3.0
    assessed = detector.assess(
        np.array([[1.0, 2.0], [9.0, 2.0], [1.0, 2.0], [1.0, 2.0]]),
        pixel_std=np.array([0.2, 0.2, 0.0, 0.2]),
        colour=np.array([0.0, 0.0, 0.0, COLOUR_FRACTION * 2]),
    )
    assert [result.flagged for result in assessed] == [False, True, True, True]
    assert [result.cue for result in assessed] == [None, "features", "blank", "colour"]
    unscreened = detector.assess(np.array([[1.0, 2.0]]))  # no pixel_std or colour given
    assert not unscreened[0].flagged and unscreened[0].colour_fraction == 0.0


# --- The file ---------------------------------------------------------------------------------


def test_ood_path_sits_beside_the_model():
    assert ood_path("weights/cnn.keras").as_posix() == "weights/cnn.ood.npz"
    assert ood_path(ROOT / "models" / "a.b.keras") == ROOT / "models" / "a.b.ood.npz"


def test_save_load_round_trip_without_pickle(tmp_path):
    rng = np.random.default_rng(4)
    detector = OODDetector.fit(
        rng.normal(size=(300, 8)), rng.normal(size=(50, 8)), layer="features", model_digest="ab12"
    )
    path = detector.save(tmp_path / "m.ood.npz")
    assert path.stat().st_size < 10_000
    with np.load(path, allow_pickle=False) as archive:  # no object arrays inside
        assert all(archive[key].dtype != object for key in archive.files)
    loaded = OODDetector.load(path)
    np.testing.assert_array_equal(loaded.mean, detector.mean)
    np.testing.assert_array_equal(loaded.precision, detector.precision)
    for name in (
        "threshold",
        "layer",
        "shrinkage",
        "quantile",
        "margin",
        "train_slices",
        "validation_slices",
        "validation_acceptance",
        "model_digest",
        "validation_distances",
    ):
        assert getattr(loaded, name) == getattr(detector, name), name
    features = rng.normal(size=(5, 8))
    np.testing.assert_array_equal(loaded.score(features), detector.score(features))
    penultimate = OODDetector.fit(rng.normal(size=(30, 3)), rng.normal(size=(9, 3)))
    assert OODDetector.load(penultimate.save(tmp_path / "p.ood.npz")).layer is None


def test_load_refuses_files_that_are_not_detectors(tmp_path):
    with pytest.raises(OODLoadError, match="No detector"):
        OODDetector.load(tmp_path / "missing.ood.npz")
    (tmp_path / "text.ood.npz").write_text("hello")
    with pytest.raises(OODLoadError, match="not a valid detector"):
        OODDetector.load(tmp_path / "text.ood.npz")
    good = diagonal_detector().save(tmp_path / "good.ood.npz")
    with np.load(good, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    cases = {
        "missing": {k: v for k, v in arrays.items() if k != "precision"},
        "shapes": {**arrays, "precision": np.eye(3)},
        "not finite": {**arrays, "threshold": np.array(np.nan)},
        "objects": {**arrays, "layer": np.array([{"a": 1}], dtype=object)},
        "version": {**arrays, "format_version": np.array(99)},
    }
    for name, values in cases.items():
        path = tmp_path / f"{name}.ood.npz"
        np.savez(path, **values)
        with pytest.raises(OODLoadError):
            OODDetector.load(path)
    bomb = tmp_path / "bomb.ood.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("mean.npy", b"\0" * (17 * 2**20))
    with pytest.raises(OODLoadError, match="refused"):
        OODDetector.load(bomb)


# --- With models (TensorFlow) -----------------------------------------------------------------


def screened(data: bytes, extractor, detector: OODDetector, image_size: int) -> OODResult:
    """One uploaded file through the Classify page's path: decoded once, then screened."""
    [result] = classify.decode_files([("upload.png", data)])
    assert result.error is None, result.error
    classify.screen([result], extractor, detector, image_size)
    return result.screening


@pytest.mark.slow
def test_feature_extractor_returns_the_input_of_the_logits_layer():
    import keras

    from ctdemo.explain.ood_model import detector_layer, extract_features, feature_extractor
    from ctdemo.models.architectures import build_model
    from ctdemo.models.specs import Architecture

    x = np.random.default_rng(5).random((3, 24, 24, 1)).astype(np.float32)
    cnn = build_model(Architecture("cnn", 24, 0.1, filters=(4, 8), hidden_units=(6,)), 2)
    penultimate = extract_features(feature_extractor(cnn), x)
    assert penultimate.shape == (3, 6)
    kernel, bias = cnn.get_layer("logits").get_weights()
    np.testing.assert_allclose(penultimate @ kernel + bias, cnn.predict(x, verbose=0), atol=1e-5)
    assert detector_layer(cnn) == "features"
    assert extract_features(feature_extractor(cnn, "features"), x).shape == (3, 8)
    mlp = build_model(Architecture("mlp", 24, 0.5, hidden_units=(16, 5)), 2)
    assert detector_layer(mlp) is None
    assert extract_features(feature_extractor(mlp), x).shape == (3, 5)
    # Generic: a model whose last Dense layer has another name.
    inputs = keras.Input((24, 24, 1))
    hidden = keras.layers.Dense(7, activation="relu")(keras.layers.Flatten()(inputs))
    generic = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
    assert extract_features(feature_extractor(generic), x).shape == (3, 7)


@pytest.mark.slow
def test_training_fits_records_and_saves_the_detector_beside_the_model(tiny_dataset, tmp_path):
    from ctdemo.evaluation.splits import SplitSpec
    from ctdemo.explain.ood_model import feature_extractor, load_detector, model_digest
    from ctdemo.models.experiment import save_run, train_on_folder
    from ctdemo.models.saving import load_model
    from ctdemo.models.specs import Architecture, TrainConfig

    config = TrainConfig(Architecture("cnn", 24, 0.1, (8,), (4, 8)), epochs=2, batch_size=16)
    spec = SplitSpec("grouped", 0.25, 0, 5)
    result, card = train_on_folder(tiny_dataset, config, spec, "tiny")
    assert result.detector is not None and result.detector.layer == "features"
    summary = card.data["ood"]
    assert (
        summary["validation_slices"]
        == card.data["validation_slices"]
        == len(card.validation["files"])
    )
    assert summary["train_slices"] == card.data["train_slices"]
    assert summary["feature_dim"] == 8 and summary["threshold"] > 0
    path = tmp_path / "models" / "tiny.keras"
    save_run(result, card, path)
    assert ood_path(path).is_file()
    model, saved_card = load_model(path)
    assert saved_card.data["ood"]["file"] == "tiny.ood.npz"
    detector = load_detector(path, model)  # the saved weights are the ones it was fitted for
    assert detector is not None and detector.model_digest == model_digest(model)
    assert detector.threshold == pytest.approx(summary["threshold"], rel=1e-4)
    sample = next((tiny_dataset / "COVID").glob("*.png")).read_bytes()
    check = screened(sample, feature_extractor(model, detector.layer), detector, 24)
    assert check.threshold == detector.threshold and check.distance >= 0
    # Another model saved at the same path without a detector: the stale one goes.
    other, other_card = train_on_folder(tiny_dataset, config, SplitSpec("random", 0.25, 1), "o")
    with pytest.raises(OODLoadError, match="other weights"):
        load_detector(path, other.model)
    other.detector = None
    save_run(other, other_card, path)
    assert not ood_path(path).exists() and load_detector(path) is None


@pytest.mark.slow
def test_cli_train_writes_the_detector(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=16)
    out = tmp_path / "models" / "tiny.keras"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CTDEMO_HOME=str(tmp_path / "home"))
    command = ["train", "--arch", "cnn", "--data", data, "--out", out, "--epochs", "1"]
    command += ["--image-size", "24", "--val-split", "0.25", "--block-size", "4"]
    result = subprocess.run(
        [sys.executable, "-m", "ctdemo", *map(str, command)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "saved tiny.ood.npz" in result.stdout
    card = json.loads(out.with_name("tiny.card.json").read_text())
    assert card["data"]["ood"]["file"] == "tiny.ood.npz"
    assert OODDetector.load(ood_path(out)).threshold == pytest.approx(
        card["data"]["ood"]["threshold"], rel=1e-4
    )


# --- The shipped CNN on real slices -----------------------------------------------------------


def fit_on_the_cards_split(model, card, dataset) -> OODDetector:
    """A detector for an already trained model: validation = the files its card lists,
    training = every other file of `dataset` (the data it trained on, at its input size)."""
    from ctdemo.explain.ood_model import fit_detector

    validation = set(card.validation["files"])
    is_val = np.array([file in validation for file in dataset.files])
    assert int(is_val.sum()) == len(validation), "not the data this model was trained on"
    assert dataset.x.shape[1] == card.image_size
    x = dataset.x if card.channels == 1 else np.repeat(dataset.x, card.channels, axis=-1)
    return fit_detector(model, x[~is_val], x[is_val])


@pytest.fixture(scope="module")
def shipped_cnn(tmp_path_factory):
    """The shipped CNN and a detector fitted on its real training split (files not in its
    card's validation list), with the feature extractor."""
    from ctdemo.config import WEIGHTS_DIR
    from ctdemo.explain.ood_model import feature_extractor
    from ctdemo.io.folders import load_arrays
    from ctdemo.models.saving import load_model

    train_dir = real_train_dir()
    model, card = load_model(WEIGHTS_DIR / "cnn.keras")
    cache = tmp_path_factory.mktemp("ood-arrays")
    dataset = load_arrays(train_dir, card.image_size, cache_dir=cache)
    detector = fit_on_the_cards_split(model, card, dataset)
    return model, card, detector, feature_extractor(model, detector.layer), cache


@pytest.mark.slow
def test_shipped_cnn_detector_is_fitted_on_the_cards_split(shipped_cnn):
    _, card, detector, _, _ = shipped_cnn
    assert detector.layer == "features" and detector.dim == card.architecture["filters"][-1]
    assert detector.validation_slices == len(card.validation["files"])
    assert detector.train_slices == card.data["train_slices"]
    assert detector.validation_acceptance >= 0.995  # margin 1.25 over the 99.5th percentile


@pytest.mark.slow
def test_shipped_cnn_accepts_the_demo_bundle_and_every_sample(shipped_cnn):
    from ctdemo.config import DEMO_BUNDLE_DIR, DEMO_SAMPLES_DIR
    from ctdemo.explain.ood_model import extract_features
    from ctdemo.io.folders import load_arrays

    _, card, detector, extractor, cache = shipped_cnn
    bundle = load_arrays(DEMO_BUNDLE_DIR, card.image_size, cache_dir=cache)
    assessed = detector.assess(
        extract_features(extractor, bundle.x), pixel_std=bundle.x.std(axis=(1, 2, 3))
    )
    flags = np.array([result.flagged for result in assessed])
    assert len(flags) >= 200 and 1 - flags.mean() >= 0.98
    samples = sorted(DEMO_SAMPLES_DIR.rglob("*.png"))
    assert len(samples) == 12
    for path in samples:
        result = screened(path.read_bytes(), extractor, detector, card.image_size)
        assert not result.flagged, (path.name, result.reason)


@pytest.mark.slow
@pytest.mark.parametrize("name", GENERATED)
def test_shipped_cnn_flags_generated_non_ct_images(shipped_cnn, name):
    _, card, detector, extractor, _ = shipped_cnn
    result = screened(GENERATED[name](), extractor, detector, card.image_size)
    assert result.flagged, (name, result.distance, result.threshold)
    # The feature distance alone flags them too: the colour and blank cues are a second line.
    assert result.distance > detector.threshold, (name, result.distance)


@pytest.mark.slow
def test_shipped_detector_file_if_present_belongs_to_the_shipped_cnn(shipped_cnn):
    from ctdemo.config import WEIGHTS_DIR
    from ctdemo.explain.ood_model import load_detector

    model, _, detector, _, _ = shipped_cnn
    shipped = load_detector(WEIGHTS_DIR / "cnn.keras", model)  # refuses other weights
    if shipped is None:
        pytest.skip("no weights/cnn.ood.npz: `python -m ctdemo train` writes it")
    assert shipped.layer == detector.layer and shipped.dim == detector.dim
    assert shipped.threshold == pytest.approx(detector.threshold, rel=1e-3)
