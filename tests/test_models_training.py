"""Model builders, training with callbacks, and save/load round trips with the card."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from ctdemo.evaluation.splits import SplitSpec
from ctdemo.io.folders import load_arrays
from ctdemo.models.architectures import build_model
from ctdemo.models.cards import ModelLoadError, card_path
from ctdemo.models.experiment import evaluate, train_on_folder
from ctdemo.models.saving import load_model, save_model
from ctdemo.models.specs import DEFAULT_QUANTILES, LAST_CONV, PRESETS, Architecture, TrainConfig
from ctdemo.models.training import fitted_part, member_cross_entropy, train

pytestmark = pytest.mark.slow

TINY_CNN = Architecture("cnn", 32, 0.1, hidden_units=(8,), filters=(4, 8))
TINY_MLP = Architecture("mlp", 24, 0.2, hidden_units=(16, 8))


def test_builders_output_one_logit_per_class():
    mlp = build_model(Architecture("mlp", 24, 0.5, hidden_units=(16, 8)), 3)
    cnn = build_model(
        Architecture("cnn", 32, 0.2, filters=(4, 8), hidden_units=(8,), convs_per_block=2), 3
    )
    x = np.random.default_rng(0).random((2, 24, 24, 1), dtype=np.float32)
    assert mlp(x).shape == (2, 3)
    assert cnn(np.zeros((2, 32, 32, 1), np.float32)).shape == (2, 3)
    assert mlp.layers[-1].activation.__name__ == "linear"
    assert cnn.get_layer(LAST_CONV).__class__.__name__ == "Conv2D"
    assert sum(layer.name.startswith("hidden_") for layer in mlp.layers) == 2


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    model = build_model(PRESETS[name].architecture, 2)
    size = PRESETS[name].architecture.image_size
    assert model.input_shape == (None, size, size, 1)
    assert model.output_shape == (None, 2)


def test_seed_presets_mirror_the_seed_projects():
    seed1 = PRESETS["seed-1-mlp"]
    assert len(seed1.architecture.hidden_units) == 4 and seed1.architecture.dropout == 0.5
    assert seed1.patience > 0
    seed2 = PRESETS["seed-2-cnn"].architecture
    assert len(seed2.filters) == 4 and seed2.convs_per_block == 2


def test_training_reports_every_epoch_and_learns(tiny_dataset):
    data = load_arrays(tiny_dataset, 32)
    epochs, batches = [], []
    config = TrainConfig(TINY_CNN, epochs=4, learning_rate=3e-3, batch_size=8, patience=0)
    result = train(
        config,
        data,
        data,
        on_epoch=lambda e, logs: epochs.append((e, logs)),
        on_batch=lambda done, total: batches.append((done, total)),
    )
    assert [e for e, _ in epochs] == [1, 2, 3, 4]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(epochs[0][1])
    assert batches[-1][0] == batches[-1][1] == 6
    assert result.stop_reason == "completed" and result.epochs_run == 4
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert 1 <= result.best_epoch <= 4
    assert min(result.history["val_loss"]) == pytest.approx(
        result.history["val_loss"][result.best_epoch - 1]
    )


def test_stop_event_ends_the_run_at_the_next_batch(tiny_dataset):
    data = load_arrays(tiny_dataset, 24)
    stop = threading.Event()
    seen = []

    def on_batch(done, total):
        seen.append(done)
        if done == 2:
            stop.set()

    config = TrainConfig(TINY_MLP, epochs=50, batch_size=8, patience=0)
    result = train(config, data, data, on_batch=on_batch, stop_event=stop)
    assert result.stop_reason == "stopped"
    assert len(seen) <= 3 and result.epochs_run <= 1


def test_diverging_loss_is_reported(tiny_dataset):
    data = load_arrays(tiny_dataset, 24)
    reckless = TrainConfig(TINY_MLP, epochs=5, learning_rate=1e12, batch_size=8, patience=0)
    result = train(reckless, data, data)
    assert result.stop_reason == "nan"
    assert "learning rate" in result.message


def test_early_stopping_restores_the_best_epoch(tiny_dataset):
    data = load_arrays(tiny_dataset, 24)
    # Validation labels flipped: validation loss rises as training succeeds, so it stops early.
    flipped = data.subset(np.arange(len(data)))
    flipped.y = 1 - flipped.y
    config = TrainConfig(TINY_MLP, epochs=40, learning_rate=3e-3, batch_size=8, patience=2)
    result = train(config, data, flipped)
    assert result.stop_reason == "early stopping"
    assert result.epochs_run < 40
    best = int(np.argmin(result.history["val_loss"])) + 1
    assert result.best_epoch == best


def test_training_is_reproducible_with_a_seed(tiny_dataset):
    data = load_arrays(tiny_dataset, 24)
    config = TrainConfig(TINY_MLP, epochs=2, batch_size=8, patience=0, seed=3)
    first = train(config, data, data).history["loss"]
    second = train(config, data, data).history["loss"]
    np.testing.assert_allclose(first, second, rtol=1e-4)


def test_train_save_load_round_trip_keeps_card_and_predictions(tiny_dataset, tmp_path):
    config = TrainConfig(TINY_CNN, epochs=2, batch_size=8, patience=0)
    spec = SplitSpec("grouped", 0.25, 0, block_size=4)
    result, card = train_on_folder(tiny_dataset, config, spec, "tiny", command="test")
    path = tmp_path / "tiny.keras"
    save_model(result.model, card, path)
    assert card_path(path).is_file()
    model, loaded = load_model(path)
    assert loaded.class_names == ["COVID", "non-COVID"]
    assert loaded.positive_class == "COVID"
    assert loaded.image_size == 32 and loaded.channels == 1
    assert loaded.split["method"] == "grouped"
    assert loaded.split["group_source"].startswith("file-number blocks")
    assert loaded.history == card.history and len(loaded.history["loss"]) == 2
    assert loaded.parameters == result.model.count_params() > 0
    assert {"tensorflow", "keras", "numpy", "python"} <= set(loaded.versions)
    assert loaded.validation["n"] == loaded.data["validation_slices"] > 0
    for key in ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc"):
        assert {"value", "low", "high"} <= set(loaded.validation[key])
    assert loaded.validation["roc"]["fpr"][0] == 0.0
    data = load_arrays(tiny_dataset, 32)
    np.testing.assert_allclose(
        model.predict_on_batch(data.x[:5]), result.model.predict_on_batch(data.x[:5]), atol=1e-5
    )
    assert evaluate(model, loaded, data)["n"] == len(data)


def test_load_refuses_missing_card_and_non_models(tmp_path):
    bogus = tmp_path / "bogus.keras"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="no card"):
        load_model(bogus)
    card_path(bogus).write_text("{}")
    with pytest.raises(ModelLoadError):
        load_model(bogus)
    with pytest.raises(ModelLoadError, match="No model file"):
        load_model(tmp_path / "absent.keras")


def test_the_compiled_weight_swap_trains_like_keras_s(tiny_dataset, monkeypatch):
    """`_SwapAveragedWeights` swaps in one compiled call; a run must match one with Keras's
    own SwapEMAWeights (up to Keras's add-and-subtract rounding)."""
    import keras

    from ctdemo.models import training

    data = load_arrays(tiny_dataset, 24)
    config = TrainConfig(TINY_MLP, epochs=3, batch_size=8, patience=0, weight_averaging=True)
    ours = train(config, data, data)
    monkeypatch.setattr(
        training, "_SwapAveragedWeights", lambda: keras.callbacks.SwapEMAWeights(True)
    )
    theirs = train(config, data, data)
    np.testing.assert_allclose(ours.history["val_loss"], theirs.history["val_loss"], rtol=1e-4)
    assert ours.best_epoch == theirs.best_epoch
    for mine, keras_s in zip(ours.model.get_weights(), theirs.model.get_weights(), strict=True):
        np.testing.assert_allclose(mine, keras_s, atol=1e-5)


def _sorted_quantiles(image: np.ndarray, quantiles: int) -> np.ndarray:
    """The layer's features the slow exact way: sort, then take the evenly spaced ranks."""
    grey = image[..., 0]
    dx, dy = grey[:, :-1, 1:] - grey[:, :-1, :-1], grey[:, 1:, :-1] - grey[:, :-1, :-1]
    edges = np.sqrt(dx**2 + dy**2 + 1e-6).reshape(len(image), -1)
    intensities = grey.reshape(len(image), -1)
    return np.concatenate(
        [
            np.sort(intensities)[
                :, np.linspace(0, intensities.shape[1] - 1, quantiles).round().astype(int)
            ],
            np.sort(edges)[:, np.linspace(0, edges.shape[1] - 1, quantiles).round().astype(int)],
        ],
        axis=1,
    )


def test_distribution_features_are_quantiles_within_one_histogram_bin_of_the_sorted_values():
    from ctdemo.models.features import HISTOGRAM_BINS, IntensityEdgeQuantiles

    rng = np.random.default_rng(3)
    image = rng.random((2, 40, 40, 1)).astype("float32")
    image[1, :20] = 0.0  # half black padding: many ties at the lowest value
    features = np.asarray(IntensityEdgeQuantiles(quantiles=100)(image))
    exact = _sorted_quantiles(image, 100)
    for row in range(2):
        intensity_bin = (image[row].max() - image[row].min()) / HISTOGRAM_BINS
        assert np.abs(features[row, :100] - exact[row, :100]).max() <= intensity_bin * 1.001
        edges = exact[row, 100:]
        log_bin = (np.log(edges.max()) - np.log(edges.min())) / HISTOGRAM_BINS
        assert np.abs(np.log(features[row, 100:]) - np.log(edges)).max() <= log_bin * 1.001
    # The smallest and largest values are the row's own (rank 0 and the last rank).
    np.testing.assert_allclose(features[:, [0, 99]], exact[:, [0, 99]], atol=1 / HISTOGRAM_BINS)
    # The intensity quantiles ignore where the pixels are: shuffling them changes nothing.
    shuffled = rng.permutation(image[0].ravel()).reshape(image[:1].shape)
    layer = IntensityEdgeQuantiles(quantiles=16)
    np.testing.assert_allclose(layer(shuffled)[0, :16], layer(image[:1])[0, :16], atol=1e-6)


def test_distribution_features_have_the_gradient_of_a_sort():
    """Saliency through the density head lands on the pixel of each rank, as a sort's would."""
    import tensorflow as tf

    from ctdemo.models.features import IntensityEdgeQuantiles

    image = tf.constant(np.random.default_rng(4).random((2, 24, 24, 1)).astype("float32"))
    weights = tf.range(64, dtype=tf.float32)

    def sorted_quantiles(slices: tf.Tensor) -> tf.Tensor:
        grey = slices[..., 0]
        dx, dy = grey[:, :-1, 1:] - grey[:, :-1, :-1], grey[:, 1:, :-1] - grey[:, :-1, :-1]
        edges = tf.reshape(tf.sqrt(dx * dx + dy * dy + 1e-6), (2, -1))
        ranks = [np.linspace(0, n - 1, 32).round().astype(int) for n in (24 * 24, 23 * 23)]
        return tf.concat(
            [
                tf.gather(tf.sort(tf.reshape(grey, (2, -1))), ranks[0], axis=1),
                tf.gather(tf.sort(edges), ranks[1], axis=1),
            ],
            axis=1,
        )

    gradients = []
    for features in (IntensityEdgeQuantiles(quantiles=32), sorted_quantiles):
        with tf.GradientTape() as tape:
            tape.watch(image)
            total = tf.reduce_sum(features(image) * weights)
        gradients.append(tape.gradient(total, image).numpy())
    assert np.abs(gradients[0]).sum() > 0
    np.testing.assert_allclose(gradients[0], gradients[1], atol=1e-5)


def test_cards_written_before_input_scaling_was_a_choice_read_as_per_image():
    old = {"kind": "cnn", "image_size": 48, "dropout": 0.1, "filters": [8], "hidden_units": []}
    assert Architecture.from_dict(old).input_scaling == "per-image"
    assert Architecture("cnn", 48, 0.1).input_scaling == "fixed"
    assert "same for every slice" in Architecture("cnn", 48, 0.1).in_model()
    assert "quantiles" in Architecture("mlp", 32, 0.5, features="distribution").in_model()


@pytest.mark.parametrize("scaling", ["fixed", "per-image"])
def test_a_cnn_reads_density_only_with_fixed_scaling(scaling):
    model = build_model(Architecture("cnn", 16, 0.0, filters=(4,), input_scaling=scaling), 2)
    slices = np.random.default_rng(0).random((2, 16, 16, 1)).astype("float32")
    change = np.abs(np.asarray(model(slices * 0.5)) - np.asarray(model(slices))).max()
    # Per-image standardisation maps a dimmer copy onto the same input (up to its epsilon).
    assert (change < 0.05) == (scaling == "per-image"), change


def test_the_distribution_gives_a_per_image_cnn_its_density_back():
    """Per-image standardisation maps a dimmer copy onto the same input; the quantiles beside
    the pooled features still tell the head how dense the slice is."""
    model = build_model(
        Architecture(
            "cnn", 16, 0.0, filters=(4,), input_scaling="per-image", features="pixels+distribution"
        ),
        2,
    )
    slices = np.random.default_rng(0).random((2, 16, 16, 1)).astype("float32")
    change = np.abs(np.asarray(model(slices * 0.5)) - np.asarray(model(slices))).max()
    assert change > 0.05, change
    assert [tuple(t.shape) for t in model.get_layer("features_and_distribution").input] == [
        (None, 4),
        (None, 2 * DEFAULT_QUANTILES),
    ]
    assert "quantiles" in Architecture("cnn", 96, 0.2, features="pixels+distribution").in_model()
    with pytest.raises(ValueError, match="Unknown CNN features"):
        build_model(Architecture("cnn", 16, 0.0, filters=(4,), features="distribution"), 2)


def test_an_ensemble_with_the_distribution_trains_and_round_trips(tiny_dataset, tmp_path):
    architecture = replace(TINY_CNN, members=2, features="pixels+distribution")
    config = TrainConfig(architecture, epochs=2, batch_size=8, patience=0)
    spec = SplitSpec("grouped", 0.25, 0, block_size=4)
    result, card = train_on_folder(tiny_dataset, config, spec, "tiny", command="test")
    assert result.model.get_layer("features_and_distribution").output.shape == (
        None,
        2,
        8 + 2 * DEFAULT_QUANTILES,
    )
    save_model(result.model, card, tmp_path / "hybrid.keras")
    model, loaded = load_model(tmp_path / "hybrid.keras")
    assert Architecture.from_dict(loaded.architecture) == architecture
    x = load_arrays(tiny_dataset, 32).x[:5]
    np.testing.assert_allclose(
        model.predict_on_batch(x), result.model.predict_on_batch(x), atol=1e-5
    )


TINY_ENSEMBLE = Architecture("cnn", 32, 0.1, hidden_units=(8,), filters=(4, 8), members=3)


def test_an_ensemble_averages_its_members_and_shows_grad_cam_all_their_maps():
    model = build_model(TINY_ENSEMBLE, 2)
    x = np.random.default_rng(1).random((4, 32, 32, 1), dtype=np.float32)
    members = np.asarray(fitted_part(model)(x))
    assert members.shape == (4, 3, 2)
    np.testing.assert_allclose(np.asarray(model(x)), members.mean(axis=1), rtol=1e-5, atol=1e-6)
    assert model.get_layer(LAST_CONV).output.shape == (None, 16, 16, 3 * 8)
    first_convolutions = [layer.name for layer in model.layers if layer.name.endswith("conv_1_1")]
    assert first_convolutions == ["m1_conv_1_1", "m2_conv_1_1", "m3_conv_1_1"]


def test_ensemble_members_learn_from_their_own_losses_only():
    """Member 1's gradient does not change when the other members' weights do (it would with
    a loss on the averaged logits, which makes members co-adapt)."""
    import tensorflow as tf

    model = build_model(TINY_ENSEMBLE, 2)
    fitted = fitted_part(model)
    x = np.random.default_rng(2).random((6, 32, 32, 1), dtype=np.float32)
    labels = np.array([0, 1, 0, 1, 1, 0])
    member_1 = [v for v in fitted.trainable_variables if v.path.startswith("m1_")]
    others = [v for v in fitted.trainable_variables if v.path.startswith(("m2_", "m3_"))]
    assert member_1 and others

    def member_1_gradients():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(member_cross_entropy(labels, fitted(x, training=False)))
        return [np.asarray(g) for g in tape.gradient(loss, member_1)]

    before = member_1_gradients()
    for variable in others:
        variable.assign(np.asarray(variable) * -0.5)
    for old, new in zip(before, member_1_gradients(), strict=True):
        np.testing.assert_allclose(old, new, rtol=1e-5, atol=1e-7)


def test_an_ensemble_trains_and_round_trips_with_its_own_accuracy_in_the_history(
    tiny_dataset, tmp_path
):
    config = TrainConfig(TINY_ENSEMBLE, epochs=3, learning_rate=3e-3, batch_size=8, patience=0)
    shown = []
    spec = SplitSpec("grouped", 0.25, 0, block_size=4)
    result, card = train_on_folder(
        tiny_dataset, config, spec, "tiny", on_epoch_model=lambda model, _: shown.append(model)
    )
    assert [model.output_shape for model in shown] == [(None, 2)] * 3  # the averaged logits
    data = load_arrays(tiny_dataset, 32)
    val = data.subset(np.isin(data.files, card.validation["files"]).nonzero()[0])
    predicted = np.asarray(result.model.predict_on_batch(val.x)).argmax(axis=1)
    best = result.history["val_accuracy"][result.best_epoch - 1]
    assert (
        best == pytest.approx(np.mean(predicted == val.y)) == card.validation["accuracy"]["value"]
    )
    save_model(result.model, card, tmp_path / "ensemble.keras")
    model, loaded = load_model(tmp_path / "ensemble.keras")
    assert Architecture.from_dict(loaded.architecture).members == 3
    np.testing.assert_allclose(
        model.predict_on_batch(val.x), result.model.predict_on_batch(val.x), atol=1e-5
    )
