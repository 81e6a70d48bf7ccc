"""The Classify page through AppTest: samples, uploads, models, methods, bad files, own models."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_imaging import png_declaring

from ctdemo.app.samples import sample_scans
from ctdemo.app.text import plain
from ctdemo.explain.methods import METHOD_LABELS
from ctdemo.io.dicom import LUNG_WINDOW
from ctdemo.io.slices import decode_slice

from conftest import ROOT
from dicom_factory import PATIENT_ID, PATIENT_NAME, ct_dicom_bytes

pytestmark = pytest.mark.slow
TIMEOUT = 120


def open_app() -> AppTest:
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    assert not app.exception
    return app


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(app: AppTest, *files: tuple[str, bytes]) -> AppTest:
    app.file_uploader(key="upload").set_value(
        [(n, d, "application/octet-stream") for n, d in files]
    )
    return app.run()


def verdicts(app: AppTest) -> list[str]:
    return [header.value for header in app.subheader]


def image_captions(app: AppTest) -> list[str]:
    return [caption for image in app.get("image") for caption in image.captions]


def assert_explained(app: AppTest) -> None:
    assert not app.exception
    captions = image_captions(app)
    assert "Scan" in captions and any(c.startswith("Overlay") for c in captions)
    assert app.get("download_button")


def sample_as_dicom() -> bytes:
    """A real sample slice written back as the CT DICOM it could have come from."""
    pixels = decode_slice(sample_scans()[0].path.read_bytes()).pixels
    low = LUNG_WINDOW.level - LUNG_WINDOW.width / 2
    hounsfield = low + pixels * LUNG_WINDOW.width
    return ct_dicom_bytes(np.round(hounsfield + 1024).astype(np.int16))


def test_fresh_page_offers_samples_and_models_without_a_result():
    app = open_app()
    assert app.title[0].value == "Classify a CT slice"
    assert "not for diagnosis" in app.caption[0].value
    labels = app.selectbox(key="model").options
    assert any("CNN" in label for label in labels) and any("MLP" in label for label in labels)
    assert len([b for b in app.button if b.key.startswith("sample_")]) == 12
    assert not verdicts(app) and app.info


def test_a_sample_scan_is_classified_and_explained_with_every_method():
    app = open_app()
    app.button(key="sample_0").click().run()
    assert not app.exception
    assert verdicts(app) and verdicts(app)[0].split(":")[0] in ("COVID", "non-COVID")
    result_caption = " ".join(c.value for c in app.caption)
    assert "Validation accuracy" in result_caption and "Not for diagnosis" in result_caption
    assert app.get("plotly_chart")
    methods = app.selectbox(key="method").options
    assert [m for m in methods] == [METHOD_LABELS[k] for k in METHOD_LABELS]
    for label in methods:
        app.selectbox(key="method").select(label).run()
        assert_explained(app)
    app.slider(key="alpha").set_value(90).run()
    assert_explained(app)
    assert "Overlay (90%)" in image_captions(app)


def test_the_mlp_offers_saliency_only():
    app = open_app()
    app.button(key="sample_3").click().run()
    assert not any("not where things are" in caption.value for caption in app.caption)
    mlp = next(key for key in app.selectbox(key="model").options if "MLP" in key)
    app.selectbox(key="model").select(mlp).run()
    assert not app.exception
    assert app.selectbox(key="method").options == [METHOD_LABELS["saliency"]]
    assert_explained(app)
    assert any("not where things are" in caption.value for caption in app.caption)


def test_a_real_scan_from_the_shared_data_is_classified(real_train):
    scan = sorted((real_train / "COVID").glob("*.png"))[5]
    app = upload(open_app(), (scan.name, scan.read_bytes()))
    assert verdicts(app), [w.value for w in app.warning]
    assert_explained(app)


def test_a_generated_dicom_gets_a_window_and_safe_tags_only():
    app = upload(open_app(), ("slice.dcm", sample_as_dicom()))
    assert not app.exception and verdicts(app)
    assert app.slider(key="window_width").value == LUNG_WINDOW.width
    table = str(app.table[0].value)
    assert "CT" in table and "ACME" in table
    assert PATIENT_NAME.split("^")[0] not in table and PATIENT_ID not in table
    app.radio(key="window_preset").set_value("Mediastinum").run()
    assert not app.exception
    assert app.slider(key="window_width").value == 350
    app.slider(key="window_level").set_value(-500).run()
    assert app.radio(key="window_preset").value == "Custom"
    assert_explained(app)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("corrupt.png", png(np.zeros((64, 64), np.uint8))[:60], "truncated"),
        ("notes.png", b"These are my notes, not a scan.\n" * 20, "not an image"),
        ("empty.png", b"", "empty"),
        ("nopixels.dcm", ct_dicom_bytes(None), "pixel"),
    ],
)
def test_a_bad_file_gets_a_clear_error(name, data, message):
    app = upload(open_app(), (name, data))
    assert not app.exception
    assert len(app.error) == 1 and message in app.error[0].value.lower()
    assert plain(name) in app.error[0].value and not verdicts(app)


def test_a_huge_dimension_png_is_refused_before_it_is_decoded():
    app = upload(open_app(), ("bomb.png", png_declaring(50_000, 50_000)))
    assert not app.exception and len(app.error) == 1
    assert "pixels" in app.error[0].value.lower()


def test_a_batch_gets_a_table_a_csv_and_an_error_row_for_the_bad_file():
    good = [(scan.path.name, scan.path.read_bytes()) for scan in sample_scans()[:3]]
    app = upload(open_app(), *good, ("empty.png", b""))
    assert not app.exception
    table = app.dataframe[0].value
    assert list(table["file"]) == [name for name, _ in good] + ["empty.png"]
    assert table["status"].iloc[-1].startswith("error")
    assert len(app.error) == 1
    assert "Grad-CAM of every slice" in verdicts(app)
    overlays = [c for c in image_captions(app) if c.split(":")[0] in [plain(n) for n, _ in good]]
    assert len(overlays) == 3
    app.selectbox(key="focus").select(good[2][0]).run()
    assert not app.exception and plain(good[2][0]) in " ".join(m.value for m in app.markdown)


def test_noise_is_flagged_as_not_a_chest_ct_slice():
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    app = upload(open_app(), ("noise.png", png(noise)))
    assert not app.exception
    assert any("Probably not" in w.value for w in app.warning)
    assert not verdicts(app)


def tiny_classifier(path, channels: int, head: str, rescale: bool = False, lambda_layer=False):
    """A small untrained Keras CNN saved at `path` (.keras or .h5)."""
    import keras

    inputs = keras.Input((24, 24, channels))
    x = keras.layers.Rescaling(1 / 255)(inputs) if rescale else inputs
    if lambda_layer:
        x = keras.layers.Lambda(lambda t: t * 2)(x)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1 if head == "sigmoid" else 2, activation=head)(x)
    keras.Model(inputs, outputs).save(path)
    return path


def use_own_model(app: AppTest, path, classes: str = "COVID, non-COVID") -> AppTest:
    app.file_uploader(key="byom_file").set_value(
        (path.name, path.read_bytes(), "application/octet-stream")
    )
    app.run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    app.text_input(key="byom_classes").set_value(classes).run()
    return app.button(key="byom_use").click().run()


@pytest.mark.parametrize(
    ("filename", "channels", "head", "rescale"),
    [("sigmoid-grey.keras", 1, "sigmoid", False), ("softmax-rgb.h5", 3, "softmax", True)],
)
def test_bring_your_own_model_classifies_and_explains(tmp_path, filename, channels, head, rescale):
    path = tiny_classifier(tmp_path / filename, channels, head, rescale)
    app = use_own_model(open_app(), path)
    assert not app.exception
    chosen = app.selectbox(key="model")
    assert chosen.value.startswith("own:") and f"Your model ({filename})" in chosen.options
    app.button(key="sample_0").click().run()
    assert not app.exception and verdicts(app)
    assert "accuracy is unknown" in " ".join(c.value for c in app.caption)
    assert METHOD_LABELS["gradcam"] in app.selectbox(key="method").options
    assert_explained(app)


def test_an_own_model_with_a_lambda_layer_is_refused(tmp_path):
    path = tiny_classifier(tmp_path / "lambda.keras", 1, "softmax", lambda_layer=True)
    app = open_app()
    app.file_uploader(key="byom_file").set_value((path.name, path.read_bytes(), "x"))
    app.run()
    assert not app.exception
    assert len(app.error) == 1 and "Lambda" in app.error[0].value
    assert not any("Your model" in label for label in app.selectbox(key="model").options)


def test_own_model_classes_that_do_not_fit_its_outputs_get_a_message(tmp_path):
    path = tiny_classifier(tmp_path / "two.keras", 1, "softmax")
    app = use_own_model(open_app(), path, classes="a, b, c")
    assert not app.exception
    assert len(app.error) == 1 and "cannot be used as described" in app.error[0].value
