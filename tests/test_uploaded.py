"""Bring your own model: uploaded Keras classifiers are checked before loading, refused when
they could run code, and adapted to give our logits, our inputs and our explanations."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from ctdemo.evaluation.metrics import softmax
from ctdemo.explain.saliency import available_methods, explain
from ctdemo.io.slices import decode_slice, to_model_input
from ctdemo.models import cards
from ctdemo.models.cards import ModelLoadError
from ctdemo.models.inference import model_input, predict_files
from ctdemo.models.uploaded.adapt import adapt_uploaded_model
from ctdemo.models.uploaded.load import read_uploaded_model
from ctdemo.models.uploaded.safety import CUSTOM_REFUSAL, check_architecture

from conftest import zip_bytes

pytestmark = pytest.mark.slow

RNG = np.random.default_rng(7)


def saved(model: keras.Model, folder: Path, filename: str) -> bytes:
    path = folder / filename
    model.save(path)
    return path.read_bytes()


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict_on_batch(x), dtype=np.float64)


def random_images(size: int, channels: int, count: int = 6, scale: float = 1.0) -> np.ndarray:
    return (RNG.random((count, size, size, channels)) * scale).astype(np.float32)


def small_cnn(size: int, channels: int, head: keras.layers.Layer, rescale: bool = False):
    inputs = keras.Input((size, size, channels), name="image")
    x = keras.layers.Rescaling(1 / 255, name="to_unit")(inputs) if rescale else inputs
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv_a")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, head(x), name="small_cnn")


def assert_unit_heatmap(model: keras.Model, image: np.ndarray, method: str, size: int) -> None:
    heatmap = explain(model, image, method, 0)
    assert heatmap.shape == (size, size)
    assert np.all(np.isfinite(heatmap))
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0


def assert_flat(model: keras.Model) -> None:
    """Functional, nothing nested, one name per layer: what tf-keras-vis needs."""
    assert not isinstance(model, keras.Sequential)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))


# --- adapted models give the uploaded model's probabilities --------------------------------------


def test_sigmoid_head_on_one_channel(tmp_path):
    original = small_cnn(20, 1, keras.layers.Dense(1, activation="sigmoid", name="covid"))
    model, info = read_uploaded_model(saved(original, tmp_path, "sigmoid.keras"), "sigmoid.keras")
    assert (info.image_size, info.channels, info.output_units) == (20, 1, 1)
    assert info.output_activation == "sigmoid" and info.suggested_outputs == "probabilities"
    assert info.last_conv == "conv_b" and not info.expects_0_255 and not info.is_sequential
    assert info.parameters == original.count_params()

    classes = ["COVID", "non-COVID"]
    x = random_images(20, 1)
    p = predict(original, x)[:, 0]
    for positive, column in (("COVID", 0), ("non-COVID", 1)):
        adapted, card = adapt_uploaded_model(
            model, info, classes, "probabilities", positive, False, "theirs"
        )
        probs = softmax(predict(adapted, x))
        np.testing.assert_allclose(probs[:, column], p, atol=1e-5)
        np.testing.assert_allclose(probs[:, 1 - column], 1 - p, atol=1e-5)
        assert card.positive_class == positive and card.input_scale == 1.0
    assert card.name == "theirs" and card.class_names == classes
    assert card.architecture["kind"] == "uploaded"
    assert card.architecture["source_file"] == "sigmoid.keras"
    assert card.architecture["last_conv"] == "conv_b"
    assert card.validation == {} and card.parameters == original.count_params()
    assert card.input["image_size"] == 20 and card.channels == 1
    assert_flat(adapted)
    assert_unit_heatmap(adapted, x[0], "gradcam", 20)


def test_softmax_head_on_three_channels_that_rescale_0_255(tmp_path):
    original = small_cnn(
        16, 3, keras.layers.Dense(3, activation="softmax", name="classes"), rescale=True
    )
    model, info = read_uploaded_model(saved(original, tmp_path, "rgb.keras"), "rgb.keras")
    assert info.channels == 3 and info.expects_0_255 and info.output_activation == "softmax"

    adapted, card = adapt_uploaded_model(model, info, ["a", "b", "c"])
    assert card.input_scale == 255.0 and card.input["scale"] == 255.0
    assert card.positive_class is None and card.architecture["outputs"] == "probabilities"
    # the exact pre-activation: the last Dense rebuilt with a linear activation, same weights
    assert adapted.layers[-1].get_config()["activation"] == "linear"
    x = random_images(16, 3, scale=255.0)
    np.testing.assert_allclose(softmax(predict(adapted, x)), predict(original, x), atol=1e-5)
    assert_flat(adapted)
    assert_unit_heatmap(adapted, x[0], "gradcam", 16)


def test_sequential_cnn_saved_as_h5_becomes_a_flat_functional_model(tmp_path):
    original = keras.Sequential(
        [
            keras.Input((24, 24, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="first_conv"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(4, 3, activation="relu", name="second_conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
            keras.layers.Activation("softmax"),
        ]
    )
    model, info = read_uploaded_model(saved(original, tmp_path, "seq.h5"), "seq.h5")
    assert info.is_sequential and info.file_format == "h5"
    assert info.output_activation == "softmax" and info.last_conv == "second_conv"

    adapted, card = adapt_uploaded_model(model, info, ["COVID", "non-COVID"])
    assert_flat(adapted)
    assert "second_conv" in [layer.name for layer in adapted.layers]
    assert not isinstance(adapted.layers[-1], keras.layers.Activation)  # softmax dropped
    assert card.positive_class == "COVID" and card.architecture["last_conv"] == "second_conv"
    x = random_images(24, 1)
    np.testing.assert_allclose(softmax(predict(adapted, x)), predict(original, x), atol=1e-5)
    assert_unit_heatmap(adapted, x[0], "gradcam", 24)


def test_sequential_nested_in_a_functional_model_is_flattened(tmp_path):
    features = keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.GlobalAveragePooling2D(name="block"),
        ],
        name="features",
    )
    inputs = keras.Input((12, 12, 1))
    x = features(inputs)
    x = keras.layers.Dense(5, activation="relu", name="block")(x)  # same name, other level
    original = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    model, info = read_uploaded_model(saved(original, tmp_path, "nested.keras"), "nested.keras")
    assert info.last_conv == "conv"

    adapted, _ = adapt_uploaded_model(model, info, ["x", "y"])
    assert_flat(adapted)
    x = random_images(12, 1)
    np.testing.assert_allclose(softmax(predict(adapted, x)), predict(original, x), atol=1e-5)
    assert_unit_heatmap(adapted, x[0], "gradcam", 12)


def test_linear_logits_dense_only_model_keeps_its_logits(tmp_path):
    inputs = keras.Input((10, 10, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(8, activation="relu")(x)
    original = keras.Model(inputs, keras.layers.Dense(2)(x))
    model, info = read_uploaded_model(saved(original, tmp_path, "mlp.keras"), "mlp.keras")
    assert info.output_activation == "linear" and info.suggested_outputs == "logits"
    assert info.last_conv is None

    adapted, card = adapt_uploaded_model(model, info, ["COVID", "non-COVID"], "logits")
    x = random_images(10, 1)
    np.testing.assert_allclose(predict(adapted, x), predict(original, x), atol=1e-6)
    assert card.architecture["last_conv"] is None
    assert available_methods(adapted) == ("saliency",)
    assert_unit_heatmap(adapted, x[0], "saliency", 10)


def test_probabilities_without_a_separate_activation_go_through_their_log(tmp_path):
    inputs = keras.Input((8, 8, 1))
    scores = keras.layers.Dense(3)(keras.layers.Flatten()(inputs))
    exponentials = keras.ops.exp(scores)  # a hand-written softmax: no activation to drop
    original = keras.Model(inputs, exponentials / keras.ops.sum(exponentials, -1, keepdims=True))
    model, info = read_uploaded_model(saved(original, tmp_path, "ops.keras"), "ops.keras")
    assert info.output_activation == "linear"

    adapted, card = adapt_uploaded_model(model, info, ["a", "b", "c"], "probabilities")
    x = random_images(8, 1)
    np.testing.assert_allclose(softmax(predict(adapted, x)), predict(original, x), atol=1e-5)
    assert "log" in card.output


# --- refusals --------------------------------------------------------------------------------


MARKER_VARIABLE = "CTDEMO_TEST_LAMBDA_MARKER"


def lambda_model() -> keras.Model:
    """A model whose Lambda creates the file named by $CTDEMO_TEST_LAMBDA_MARKER whenever its
    function runs (self-contained code: Keras cannot reload a lambda's defaults)."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Lambda(
        lambda t: (open(__import__("os").environ["CTDEMO_TEST_LAMBDA_MARKER"], "a").close(), t)[1],
        name="sneaky",
    )(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "the-lambda-ran"
    monkeypatch.setenv(MARKER_VARIABLE, str(path))
    return path


@pytest.fixture
def no_loading(monkeypatch):
    """The static check must refuse before Keras deserialises anything."""

    def fail(*args, **kwargs):
        raise AssertionError("keras.saving.load_model was called on a refused file")

    monkeypatch.setattr(keras.saving, "load_model", fail)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_layers_are_refused_before_loading(tmp_path, suffix, marker, no_loading):
    data = saved(lambda_model(), tmp_path, f"lambda{suffix}")
    with pytest.raises(ModelLoadError, match=r"Lambda layer \('sneaky'\).*run Python code"):
        read_uploaded_model(data, f"lambda{suffix}")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_the_lambdas_code_never_runs(tmp_path, suffix, marker):
    path = tmp_path / f"lambda{suffix}"
    lambda_model().save(path)
    marker.unlink()  # building the model ran it once

    with pytest.raises(ModelLoadError):
        read_uploaded_model(path.read_bytes(), path.name)
    assert not marker.exists()
    # The marker works: loading with Keras's safe mode off does run the file's code.
    keras.saving.load_model(path, compile=False, safe_mode=False)
    assert marker.exists()


@keras.saving.register_keras_serializable(package="ctdemo_test_upload")
class Doubler(keras.layers.Layer):
    def call(self, x):
        return x * 2


def test_a_registered_custom_layer_is_refused(tmp_path, no_loading):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(Doubler(name="doubler")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    for filename in ("custom.keras", "custom.h5"):
        with pytest.raises(ModelLoadError, match=CUSTOM_REFUSAL):
            read_uploaded_model(saved(model, tmp_path, filename), filename)


def tiny_model(units: int = 2) -> keras.Model:
    layers = [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(units)]
    return keras.Sequential(layers)


@pytest.mark.parametrize(
    ("data", "filename", "message"),
    [
        (b"", "empty.keras", "is empty"),
        (b"not a zip at all" * 20, "garbage.keras", "not a Keras file"),
        (b"not hdf5 at all" * 20, "garbage.h5", "not an HDF5 file"),
        (zip_bytes({"notes.txt": b"hello"}), "notes.keras", "not a Keras model"),
        (b"\x00" * 100, "model.pt", "not a .keras or .h5 file"),
        (b"\x00" * 100, "model", "not a .keras or .h5 file"),
    ],
)
def test_files_that_are_not_keras_models_are_refused(data, filename, message, no_loading):
    with pytest.raises(ModelLoadError, match=message):
        read_uploaded_model(data, filename)


def test_a_keras_zip_with_extra_entries_is_refused(tmp_path, no_loading):
    model = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    with zipfile.ZipFile(io.BytesIO(saved(model, tmp_path, "m.keras"))) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    entries["assets/../../evil.py"] = b"print('hi')"
    with pytest.raises(ModelLoadError, match="holds more than a Keras model"):
        read_uploaded_model(zip_bytes(entries), "extra.keras")


def test_an_oversize_file_is_refused(tmp_path, monkeypatch, no_loading):
    model = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    data = saved(model, tmp_path, "m.keras")
    monkeypatch.setattr(cards, "MAX_MODEL_BYTES", len(data) - 1)
    with pytest.raises(ModelLoadError, match="refused, so upload a smaller model"):
        read_uploaded_model(data, "m.keras")


def keras_entries(model: keras.Model, folder: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(saved(model, folder, "entries.keras"))) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_damaged_weights_are_refused(tmp_path):
    entries = keras_entries(tiny_model(), tmp_path)
    entries["model.weights.h5"] = b"\x89HDF\r\n\x1a\n" + b"\x00" * 64
    with pytest.raises(ModelLoadError, match="is damaged"):
        read_uploaded_model(zip_bytes(entries), "damaged.keras")


def test_a_keras_failure_while_loading_is_a_load_error(tmp_path):
    entries = keras_entries(tiny_model(), tmp_path)
    entries["model.weights.h5"] = keras_entries(tiny_model(3), tmp_path)["model.weights.h5"]
    with pytest.raises(ModelLoadError, match=r"could not be loaded as a Keras model: .+"):
        read_uploaded_model(zip_bytes(entries), "mismatch.keras")


def test_weights_that_link_outside_the_file_are_refused(tmp_path, no_loading):
    import h5py

    path = tmp_path / "linked.h5"
    tiny_model().save(path)
    with h5py.File(path, "a") as file:
        file["model_weights/passwd"] = h5py.ExternalLink("/etc/passwd", "/")
    with pytest.raises(ModelLoadError, match="point outside the file"):
        read_uploaded_model(path.read_bytes(), "linked.h5")


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((None, None, 1), "any size"),
        ((16,), "not images"),
        ((8, 8, 4), "4 channels"),
        ((8, 12, 1), "only square inputs"),
    ],
)
def test_inputs_that_are_not_fixed_square_grey_or_rgb_images_are_refused(tmp_path, shape, message):
    inputs = keras.Input(shape)
    x = keras.layers.GlobalAveragePooling2D()(inputs) if len(shape) == 3 else inputs
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(ModelLoadError, match=message):
        read_uploaded_model(saved(model, tmp_path, "shape.keras"), "shape.keras")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"module": "os", "class_name": "system", "config": {}}, "not a Keras built-in"),
        (
            {"module": "keras.utils", "class_name": "function", "config": "get_file"},
            "not a Keras activation",
        ),
        ({"module": "builtins", "class_name": "function", "config": "eval"}, "not a Keras"),
        ({"class_name": "TorchModuleWrapper", "config": {"name": "t"}}, "unpickles"),
        ({"class_name": "TFSMLayer", "config": {"name": "t"}}, "SavedModel"),
        ({"class_name": "__lambda__", "config": {"code": "..."}}, "Lambda"),
        ({"class_name": "mypackage>MyLayer", "config": {}}, CUSTOM_REFUSAL),
        ({"class_name": "MyLayer", "config": {}, "registered_name": "x>MyLayer"}, CUSTOM_REFUSAL),
        ({"module": "keras_hub.layers", "class_name": "Dense", "config": {}}, CUSTOM_REFUSAL),
        ("ctdemo_test_upload>Doubler", CUSTOM_REFUSAL),  # a registered name as a string
    ],
)
def test_the_static_check_walks_nested_configs(item, message):
    inner = {"class_name": "Sequential", "config": {"layers": [{"config": {"x": [item]}}]}}
    config = {"class_name": "Functional", "config": {"layers": [inner]}}
    with pytest.raises(ModelLoadError, match=message):
        check_architecture(config, "m.keras")


def test_the_static_check_passes_built_in_functions_and_ops():
    config = {
        "class_name": "Functional",
        "config": {
            "layers": [
                {"module": "keras.layers", "class_name": "Dense", "config": {"activation": "relu"}},
                {"module": "builtins", "class_name": "function", "config": "gelu"},
                {"module": "keras.src.ops.nn", "class_name": "Softmax", "config": {}},
            ]
        },
        "compile_config": {"loss": {"module": "somewhere", "class_name": "Evil"}},  # never read
    }
    check_architecture(config)


# --- adapting mistakes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sigmoid_upload(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sigmoid")
    original = small_cnn(12, 1, keras.layers.Dense(1, activation="sigmoid"))
    return read_uploaded_model(saved(original, folder, "one.keras"), "one.keras")


@pytest.mark.parametrize(
    ("classes", "outputs", "positive", "message"),
    [
        (["a", "b", "c"], "probabilities", "a", "separates two classes"),
        (["a", "b"], "probabilities", None, "name the class its high values mean"),
        (["a", "b"], "probabilities", "z", "not one of the classes"),
        (["a", "b"], "logits", "a", "outputs probabilities, not logits"),
        (["a", "a"], "probabilities", "a", "must differ"),
        (["a", "b"], "scores", "a", "must be 'probabilities' or 'logits'"),
    ],
)
def test_classes_that_do_not_fit_the_outputs_are_a_value_error(
    sigmoid_upload, classes, outputs, positive, message
):
    model, info = sigmoid_upload
    with pytest.raises(ValueError, match=message):
        adapt_uploaded_model(model, info, classes, outputs, positive, False, "m")


def test_unit_count_must_match_the_classes(tmp_path):
    original = small_cnn(12, 1, keras.layers.Dense(3, activation="softmax"))
    model, info = read_uploaded_model(saved(original, tmp_path, "three.keras"), "three.keras")
    with pytest.raises(ValueError, match="3 output units but 2 class names"):
        adapt_uploaded_model(model, info, ["a", "b"])
    multi = small_cnn(12, 1, keras.layers.Dense(2, activation="sigmoid"))
    model, info = read_uploaded_model(saved(multi, tmp_path, "multi.keras"), "multi.keras")
    with pytest.raises(ValueError, match="multi-label"):
        adapt_uploaded_model(model, info, ["a", "b"])


# --- inference honours the card's input scale ----------------------------------------------------


def test_inference_multiplies_inputs_by_the_cards_scale(tmp_path):
    original = small_cnn(16, 1, keras.layers.Dense(2, activation="softmax"), rescale=True)
    model, info = read_uploaded_model(saved(original, tmp_path, "raw.keras"), "raw.keras")
    adapted, card = adapt_uploaded_model(model, info, ["COVID", "non-COVID"])
    assert card.input_scale == 255.0

    files = []
    for index in range(3):
        path = tmp_path / f"slice{index}.png"
        Image.fromarray((RNG.random((30, 40)) * 255).astype(np.uint8)).save(path)
        files.append(str(path))
    pixels = [decode_slice(Path(file).read_bytes()).pixels for file in files]
    inputs = np.stack([model_input(p, card) for p in pixels])
    np.testing.assert_allclose(inputs, np.stack([to_model_input(p, 16) for p in pixels]) * 255)

    expected = predict(original, inputs)
    predictions = predict_files(adapted, card, files)
    for prediction, row in zip(predictions, expected, strict=True):
        assert prediction.error is None
        got = [prediction.probabilities[name] for name in card.class_names]
        np.testing.assert_allclose(got, row, atol=1e-5)

    # our shipped models' cards have no scale: nothing changes for them
    unscaled = cards.ModelCard("ours", ["a", "b"], "a", cards.preprocessing_spec(16), {})
    assert unscaled.input_scale == 1.0
    np.testing.assert_array_equal(model_input(pixels[0], unscaled), to_model_input(pixels[0], 16))
    assert json.loads(card.to_json())["input"]["scale"] == 255.0


def test_our_own_distribution_mlp_is_accepted_and_explained(tmp_path):
    from ctdemo.models.architectures import build_model
    from ctdemo.models.specs import Architecture

    model = build_model(Architecture("mlp", 16, 0.5, hidden_units=(8,), features="distribution"), 2)
    loaded, info = read_uploaded_model(saved(model, tmp_path, "ours.keras"), "ours.keras")
    adapted, _ = adapt_uploaded_model(loaded, info, ["COVID", "non-COVID"], "logits")
    x = random_images(16, 1)
    np.testing.assert_allclose(predict(adapted, x), predict(model, x), atol=1e-5)
    assert_flat(adapted)
    assert_unit_heatmap(adapted, x[0], "saliency", 16)


def test_a_forged_module_behind_our_layers_name_is_refused():
    config = {
        "class_name": "IntensityEdgeQuantiles",
        "module": "os",
        "registered_name": "ctdemo>IntensityEdgeQuantiles",
        "config": {"quantiles": 8},
    }
    with pytest.raises(ModelLoadError, match=CUSTOM_REFUSAL):
        check_architecture(config)


def test_our_cnn_ensemble_is_accepted_and_grad_cam_reads_every_member(tmp_path):
    from ctdemo.models.architectures import build_model
    from ctdemo.models.specs import LAST_CONV, Architecture

    model = build_model(
        Architecture("cnn", 16, 0.1, filters=(4, 8), hidden_units=(8,), members=3), 2
    )
    loaded, info = read_uploaded_model(saved(model, tmp_path, "ensemble.keras"), "ensemble.keras")
    assert info.last_conv == LAST_CONV
    adapted, _ = adapt_uploaded_model(loaded, info, ["COVID", "non-COVID"], "logits")
    x = random_images(16, 1)
    np.testing.assert_allclose(predict(adapted, x), predict(model, x), atol=1e-5)
    assert_flat(adapted)
    assert adapted.get_layer(LAST_CONV).output.shape[-1] == 3 * 8
    assert_unit_heatmap(adapted, x[0], "gradcam", 16)
