"""Hostile models, round 2: an uploaded model that is small on disk but huge to build or run is
refused from its architecture alone; explanations that cannot work say why; a model whose
output is not a number gives an error, never "nan%"; a visitor's text on Classify is shown as
written, never as Markdown."""

from __future__ import annotations

import io
import json
import time
import zipfile

import h5py
import keras
import numpy as np
import pytest

from ctdemo.app import classify
from ctdemo.app.samples import sample_scans
from ctdemo.app.text import plain
from ctdemo.explain.saliency import explain
from ctdemo.models.cards import ModelCard, ModelLoadError, preprocessing_spec
from ctdemo.models.inference import NOT_A_NUMBER, predict_files, probabilities
from ctdemo.models.saving import save_model
from ctdemo.models.uploaded.adapt import adapt_uploaded_model
from ctdemo.models.uploaded.cost import check_cost
from ctdemo.models.uploaded.limits import BATCH_ACTIVATION_BYTES, MAX_LAYERS, ModelCost
from ctdemo.models.uploaded.load import read_uploaded_model

from dicom_factory import ct_dicom_bytes
from test_cli import assert_one_line_error, run_cli
from test_page_classify import image_captions, open_app, png, upload, use_own_model, verdicts

pytestmark = pytest.mark.slow
FAST_SECONDS = 5  # Keras took 141 s to load the 60,000-layer graph; the check reads JSON only


# --- hand-written architectures: nothing here is ever built ----------------------------------


def tensor(name: str) -> dict:
    return {"class_name": "__keras_tensor__", "config": {"keras_history": [name, 0, 0]}}


def input_layer(shape: tuple[int, ...]) -> dict:
    config = {"batch_shape": [None, *shape], "dtype": "float32", "name": "image"}
    return {"module": "keras.layers", "class_name": "InputLayer", "config": config,
            "name": "image", "inbound_nodes": []}  # fmt: skip


def functional(shape: tuple[int, ...], *steps: tuple[str, dict], module: str = "keras.layers"):
    """Input → each (class name, config) in turn → output, as Keras 3 writes a functional
    model's config (a class name of keras.ops goes under `module` keras.src.ops.numpy)."""
    layers, previous = [input_layer(shape)], "image"
    for index, (class_name, config) in enumerate(steps):
        name = f"step_{index}"
        is_op = class_name in ("Tile", "BroadcastTo")
        layers.append(
            {
                "module": "keras.src.ops.numpy" if is_op else module,
                "class_name": class_name,
                "config": {"name": name, **config},
                "registered_name": class_name if is_op else None,
                "name": name,
                "inbound_nodes": [{"args": [tensor(previous)], "kwargs": {}}],
            }
        )
        previous = name
    config = {"name": "m", "layers": layers, "input_layers": ["image", 0, 0],
              "output_layers": [previous, 0, 0]}  # fmt: skip
    return {"module": "keras", "class_name": "Functional", "config": config}


def empty_hdf5() -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as file:
        file.create_group("layers")
    return buffer.getvalue()


def keras_file(config: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("metadata.json", json.dumps({"keras_version": keras.__version__}))
        archive.writestr("model.weights.h5", empty_hdf5())
    return buffer.getvalue()


def h5_file(config: dict) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as file:
        file.attrs["model_config"] = json.dumps(config)
        file.create_group("model_weights")
    return buffer.getvalue()


@pytest.fixture
def never_built(monkeypatch):
    """Fails the test if Keras is asked to load or build anything from the file."""

    def fail(*args, **kwargs):
        raise AssertionError("Keras was asked to build a model the check should refuse")

    monkeypatch.setattr(keras.saving, "load_model", fail)
    monkeypatch.setattr(keras.saving, "deserialize_keras_object", fail)


def refused_fast(data: bytes, filename: str, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match=message):
        read_uploaded_model(data, filename)
    assert time.perf_counter() - started < FAST_SECONDS


def deep_sequential(layers: int) -> dict:
    relus = [{"module": "keras.layers", "class_name": "ReLU", "config": {"name": f"r{i}"}}
             for i in range(layers - 1)]  # fmt: skip
    return {"module": "keras", "class_name": "Sequential",
            "config": {"name": "deep", "layers": [input_layer((8, 8, 1)), *relus]}}  # fmt: skip


WIDE = functional(  # 1024 x 1024 x 4096 float32 outputs: 16 GB for one slice
    (1024, 1024, 3),
    ("Conv2D", {"filters": 4096, "kernel_size": [1, 1], "padding": "same"}),
    ("GlobalAveragePooling2D", {}),
    ("Dense", {"units": 2}),
)
SLOW = functional(  # a 63 x 63 kernel of 512 filters at 256 pixels: 0.8 TFLOP per slice
    (256, 256, 3),
    ("Conv2D", {"filters": 512, "kernel_size": [63, 63], "padding": "same"}),
    ("GlobalAveragePooling2D", {}),
    ("Dense", {"units": 2}),
)
HEAVY = functional(  # 26 billion weights allocated while building, before any are read
    (512, 512, 1), ("Flatten", {}), ("Dense", {"units": 100_000})
)
TILED = functional(  # keras.ops.tile to 64,000 x 64,000 pixels
    (64, 64, 1), ("Tile", {"repeats": [1, 1000, 1000, 1]}), ("Flatten", {}), ("Dense", {"units": 2})
)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize(
    ("config", "message"),
    [
        (deep_sequential(60_000), f"60,000 layers; models of more than {MAX_LAYERS:,}"),
        (WIDE, "MB of memory for the outputs of its layers on one slice"),
        (SLOW, "billion operations per slice"),
        (HEAVY, "million weights"),
        (TILED, "MB of memory"),
    ],
    ids=["60000-layers", "16-GB-activations", "trillion-flops", "huge-weights", "tiled"],
)
def test_a_model_small_on_disk_but_huge_to_run_is_refused_unbuilt(
    config, message, suffix, never_built
):
    data = keras_file(config) if suffix == ".keras" else h5_file(config)
    assert len(data) < 5 * 2**20
    refused_fast(data, f"huge{suffix}", message)


def test_a_layer_built_for_a_bigger_input_than_it_gets_is_refused(never_built):
    """Keras builds each layer (allocating its weights) from the file's `build_config` before
    it calls it: a forged build shape would allocate 4 GB of Dense weights."""
    config = functional((8, 8, 1), ("Flatten", {}), ("Dense", {"units": 1000}))
    config["config"]["layers"][-1]["build_config"] = {"input_shape": [None, 10**6]}
    refused_fast(keras_file(config), "forged.keras", r"builds it for inputs \[None, 1000000\]")


def test_an_operation_whose_size_cannot_be_worked_out_is_refused(never_built):
    config = functional((8, 8, 1), ("BroadcastTo", {"shape": [1, 10**5, 10**5, 1]}))
    refused_fast(keras_file(config), "broadcast.keras", "BroadcastTo layer 'step_0'.*cannot be")


def test_a_nested_model_built_for_another_input_is_refused(never_built):
    inner = functional((10**5, 10**5, 1), ("Flatten", {}), ("Dense", {"units": 2}))
    inner["config"]["name"] = "inner"
    outer = functional((8, 8, 1))
    outer["config"]["layers"].append(
        {**inner, "name": "inner", "inbound_nodes": [{"args": [tensor("image")], "kwargs": {}}]}
    )
    outer["config"]["output_layers"] = ["inner", 0, 0]
    refused_fast(keras_file(outer), "nested.keras", "nested model 'inner'")


def test_honest_models_pass_with_their_exact_weight_count(tmp_path):
    """MobileNetV2 (depthwise and pointwise convolutions, padding, batch norm, residual adds):
    the propagated shapes match every build shape Keras wrote, and the weights add up."""
    model = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=2
    )
    path = tmp_path / "mobilenet.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        cost = check_cost(json.loads(archive.read("config.json")))
    assert cost.parameters == model.count_params()
    assert cost.layers == len(model.layers)
    assert 0.01e9 < cost.flops < 0.1e9  # about 25 MFLOP at this width and size
    assert 1 < cost.activation_bytes / 2**20 < 20


def test_an_uploaded_model_runs_in_batches_its_memory_allows(tmp_path):
    assert ModelCost(10, 1, 200 * 2**20, 10).slices_per_batch == 2
    assert ModelCost(10, 1, BATCH_ACTIVATION_BYTES * 4, 10).slices_per_batch == 1
    assert ModelCost(10, 1, 1000, 10).slices_per_batch == 64
    model, info = read_uploaded_model(*saved(small_cnn(), tmp_path, "small.keras"))
    assert info.cost is not None and info.cost.parameters == model.count_params()
    _, card = adapt_uploaded_model(model, info, ["COVID", "non-COVID"])
    assert card.architecture["slices_per_batch"] == info.cost.slices_per_batch == 64


# --- explanations that cannot work say why ---------------------------------------------------


def small_cnn(channels: int = 4, stop_gradient: bool = False, head: str = "softmax"):
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(channels, 3, activation="relu", name="last_conv_here")(inputs)
    if stop_gradient:
        x = keras.ops.stop_gradient(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation=head)(x))


def saved(model: keras.Model, folder, filename: str) -> tuple[bytes, str]:
    model.save(folder / filename)
    return (folder / filename).read_bytes(), filename


IMAGE = np.random.default_rng(3).random((16, 16, 1)).astype(np.float32)


def test_score_cam_on_fewer_than_16_channels_explains():
    heatmap = explain(small_cnn(channels=4, head="linear"), IMAGE, "scorecam", 0)
    assert heatmap.shape == (16, 16) and np.all(np.isfinite(heatmap))
    assert heatmap.max() == 1.0


@pytest.mark.parametrize(
    ("method", "where"),
    [
        ("gradcam", "layer 'last_conv_here'"),
        ("gradcam++", "layer 'last_conv_here'"),
        ("saliency", "the model's input"),
    ],
)
def test_gradient_methods_on_a_stop_gradient_model_say_why_they_cannot(method, where):
    from ctdemo.explain.methods import METHOD_LABELS, ExplanationError

    model = small_cnn(stop_gradient=True, head="linear")
    with pytest.raises(ExplanationError) as raised:
        explain(model, IMAGE, method, 0)
    message = str(raised.value)
    assert f"gradients do not reach {where}" in message
    assert f"{METHOD_LABELS[method]} cannot show where it looks" in message
    assert "Score-CAM" in message
    assert explain(model, IMAGE, "scorecam", 0).shape == (16, 16)  # no gradients needed


# --- an output that is not a number is an error ---------------------------------------------


def broken(value: float) -> keras.Model:
    """A small CNN whose weights are all `value` (NaN, or 1e38 so that its sums overflow)."""
    model = small_cnn(head="linear")
    model.set_weights([np.full_like(weight, value) for weight in model.get_weights()])
    return model


CARD = ModelCard("broken", ["COVID", "non-COVID"], "COVID", preprocessing_spec(16), {"kind": "cnn"})
SLICE = png((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8))


@pytest.mark.parametrize("value", [np.nan, 1e38], ids=["nan", "overflow"])
def test_a_slice_the_model_gives_no_number_for_is_an_error(value, tmp_path):
    rows = probabilities(broken(value), np.stack([IMAGE, IMAGE]))
    assert np.isnan(rows).all()
    results = classify.decode_files([("a.png", SLICE)])
    classify.predict(results, broken(value), CARD)
    assert results[0].error == NOT_A_NUMBER and results[0].probabilities is None
    assert classify.result_rows(results, CARD.class_names)[0]["status"].startswith("error")

    (tmp_path / "a.png").write_bytes(SLICE)
    (prediction,) = predict_files(broken(value), CARD, [str(tmp_path / "a.png")])
    assert prediction.error == NOT_A_NUMBER and prediction.to_dict()["error"] == NOT_A_NUMBER

    healthy = classify.decode_files([("a.png", SLICE)])
    classify.predict(healthy, small_cnn(head="linear"), CARD)
    assert healthy[0].ok and abs(sum(healthy[0].probabilities.values()) - 1) < 1e-6


def strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_predict_json_of_a_broken_model_is_valid_json_and_exits_one(tmp_path):
    save_model(broken(np.nan), CARD, tmp_path / "broken.keras")
    (tmp_path / "a.png").write_bytes(SLICE)
    result = run_cli("predict", "--model", tmp_path / "broken.keras", tmp_path / "a.png", "--json")
    assert result.returncode == 1
    (item,) = strict_json(result.stdout)
    assert item["error"] == NOT_A_NUMBER and "probabilities" not in item
    assert_one_line_error(result)

    text = run_cli("predict", "--model", tmp_path / "broken.keras", tmp_path / "a.png")
    assert text.returncode == 1 and "not a number" in text.stdout and "nan" not in text.stdout


# --- the Classify page ---------------------------------------------------------------------


def texts(app) -> str:
    """Everything the page rendered as Markdown (headers, text, captions, alerts, tables)."""
    parts = [element.value for kind in ("markdown", "caption", "subheader", "error", "warning")
             for element in app.get(kind)]  # fmt: skip
    parts += [str(table.value) for table in app.table] + image_captions(app)
    return "\n".join(map(str, parts))


def upload_own(app, model: keras.Model, folder, filename: str = "own.keras", classes: str = ""):
    model.save(folder / filename)
    return use_own_model(app, folder / filename, **({"classes": classes} if classes else {}))


def test_the_page_shows_an_error_not_nan_percent_for_a_broken_model(tmp_path):
    app = upload_own(open_app(), broken(np.nan), tmp_path)
    app.button(key="sample_0").click().run()
    assert not app.exception and not verdicts(app)
    assert any("not a number" in error.value for error in app.error)
    assert "nan%" not in texts(app).lower()


def test_the_page_says_why_grad_cam_cannot_explain_and_score_cam_still_does(tmp_path):
    app = upload_own(open_app(), small_cnn(stop_gradient=True), tmp_path)
    app.button(key="sample_0").click().run()
    assert not app.exception and verdicts(app)
    assert app.selectbox(key="method").value == "gradcam"
    assert any("gradients do not reach layer" in error.value for error in app.error)
    app.selectbox(key="method").set_value("scorecam").run()
    assert not app.exception and not app.error
    assert any(caption.startswith("Overlay") for caption in image_captions(app))


HOSTILE = "**bold** [x](javascript:alert(1))"


def test_visitor_text_on_the_page_is_shown_as_written_never_as_markdown(tmp_path):
    scan = sample_scans()[0].path.read_bytes()
    files = [(f"{HOSTILE}.png", scan), (f"{HOSTILE} 2.png", scan), (f"{HOSTILE}.bmp", b"")]
    app = upload(open_app(), *files)
    assert not app.exception
    shown = texts(app)
    assert plain(f"{HOSTILE}.png") in shown and plain(f"{HOSTILE}.bmp") in shown
    assert any(caption.startswith(plain(f"{HOSTILE} 2.png")) for caption in image_captions(app))
    assert "**bold**" not in shown and "](javascript" not in shown


def test_dicom_values_and_an_own_models_names_are_not_markdown(tmp_path):
    stored = np.random.default_rng(1).integers(0, 1600, (64, 64)).astype(np.int16)
    dicom = ct_dicom_bytes(stored, extra={"Manufacturer": HOSTILE})
    app = upload(open_app(), ("slice.dcm", dicom))
    assert not app.exception and plain(HOSTILE) in str(app.table[0].value)
    assert HOSTILE not in str(app.table[0].value)

    app = upload_own(open_app(), small_cnn(), tmp_path, classes=f"{HOSTILE}, other")
    app.button(key="sample_0").click().run()
    assert not app.exception
    assert verdicts(app) and all(HOSTILE not in verdict for verdict in verdicts(app))
    assert "**bold**" not in texts(app)

    lambda_file = tmp_path / f"{HOSTILE}.keras"
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(keras.layers.Lambda(lambda t: t * 2)(inputs))
    keras.Model(inputs, keras.layers.Dense(2)(x)).save(tmp_path / "lambda.keras")
    lambda_file.write_bytes((tmp_path / "lambda.keras").read_bytes())
    app = open_app()
    app.file_uploader(key="byom_file").set_value((lambda_file.name, lambda_file.read_bytes(), "x"))
    app.run()
    assert not app.exception and len(app.error) == 1
    assert plain(HOSTILE) in app.error[0].value and "**bold**" not in app.error[0].value


def test_grad_cam_through_gradients_that_are_not_finite_says_so():
    from ctdemo.explain.methods import ExplanationError

    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, name="last_conv_here")(inputs)
    x = keras.ops.sqrt(keras.ops.relu(x))  # d sqrt at 0 is infinite, times relu's 0: NaN
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(
        ExplanationError, match=r"do not reach layer 'last_conv_here' \(they are not"
    ):
        explain(model, IMAGE - 2.0, "gradcam", 0)
