"""Classify's whole scans through AppTest: a zipped DICOM series, loose series files and a NIfTI
volume get a slice slider, a per-slice probability strip and the summary under named rules.

The test volumes stack real CT slices (the embedded sample scans: different patients, so the
"scan" is a test fixture, not anatomy) with one blank slice the "is this CT?" screen flags.
"""

from __future__ import annotations

import io
import json

import nibabel
import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid
from streamlit.testing.v1 import AppTest

from ctdemo.app.samples import sample_scans
from ctdemo.app.text import plain
from ctdemo.evaluation.volume_summary import RULES
from ctdemo.io.dicom import LUNG_WINDOW
from ctdemo.io.slices import decode_slice

from conftest import ROOT, zip_bytes
from dicom_factory import PATIENT_ID, PATIENT_NAME, ct_dicom_bytes

pytestmark = pytest.mark.slow
TIMEOUT = 180
SIDE = 128
BLANK = 2  # the index of the slice no screen should take for chest CT
GAP_MM = 2.5


def hounsfield_slices(count: int = 6) -> list[np.ndarray]:
    """`count` slices in HU (int16, SIDE x SIDE): real sample slices, slice BLANK all air."""
    low = LUNG_WINDOW.level - LUNG_WINDOW.width / 2
    slices = []
    for scan in sample_scans()[:count]:
        pixels = decode_slice(scan.path.read_bytes(), scan.path.name).pixels
        resized = Image.fromarray(np.round(pixels * 255).astype(np.uint8)).resize((SIDE, SIDE))
        slices.append(np.round(low + np.asarray(resized) / 255 * LUNG_WINDOW.width))
    slices[BLANK] = np.full((SIDE, SIDE), -1000.0)
    return [s.astype(np.int16) for s in slices]


def series_files(
    slices: list[np.ndarray], number: int = 2, description: str = "CHEST", same_z: bool = False
) -> dict[str, bytes]:
    """One axial DICOM series, slice k at z = 2.5 k mm (all at z = 0 when `same_z`)."""
    uid = generate_uid()
    files = {}
    for k, hounsfield in enumerate(slices):
        tags = {
            "SeriesInstanceUID": uid,
            "SeriesNumber": number,
            "SeriesDescription": description,
            "InstanceNumber": k + 1,
            "ImagePositionPatient": [-100.0, -120.0, 0.0 if same_z else GAP_MM * k],
            "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
        }
        files[f"{description}-{k:03d}.dcm"] = ct_dicom_bytes(hounsfield + 1024, extra=tags)
    return files


def zipped(files: dict[str, bytes]) -> bytes:
    """The files in one folder of a zip, as a scanner's export puts them."""
    return zip_bytes({f"study/{name}": data for name, data in files.items()})


def nifti(slices: list[np.ndarray]) -> bytes:
    """The same slices as a NIfTI volume stored in LPS voxel order (see tests/test_volumes.py)."""
    data = np.stack([s.T for s in slices], axis=-1)
    affine = np.array([[-0.7, 0, 0, 100.0], [0, -0.7, 0, 120.0], [0, 0, GAP_MM, 0], [0, 0, 0, 1]])
    return nibabel.Nifti1Image(data, affine).to_bytes()


def upload(*files: tuple[str, bytes]) -> AppTest:
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    app.file_uploader(key="upload").set_value(
        [(n, d, "application/octet-stream") for n, d in files]
    )
    app.run()
    assert not app.exception, app.exception
    return app


def strip(app: AppTest) -> dict:
    [chart] = [c for c in app.get("plotly_chart") if "slice_strip" in c.proto.id]
    return json.loads(chart.proto.spec)


def image_captions(app: AppTest) -> list[str]:
    return [caption for image in app.get("image") for caption in image.captions]


def page_text(app: AppTest) -> str:
    parts = [m.value for m in app.markdown] + [c.value for c in app.caption]
    parts += [w.value for w in app.warning]
    return " ".join(parts)


def test_a_zipped_series_gets_a_slider_a_strip_and_the_summary():
    app = upload(("study.zip", zipped(series_files(hounsfield_slices()))))
    assert plain("series 2: CHEST") in page_text(app) and "6 slices" in page_text(app)
    slider = app.slider(key="volume_slice")
    assert slider.value == 4 and "Slice 4 of 6 · z = 7.5 mm" in image_captions(app)
    figure = strip(app)
    line, flagged = figure["data"]
    assert line["x"] == [1, 2, 3, 4, 5, 6] and len(line["y"]) == 6
    assert flagged["x"] == [BLANK + 1] and "flagged" in flagged["name"]
    assert figure["layout"]["shapes"][0]["x0"] == 4
    text = page_text(app)
    for rule in RULES:
        assert rule.label in text and rule.assumes in text
    assert "1 flagged as not like a chest CT slice" in text and "Not for diagnosis" in text
    assert PATIENT_NAME.split("^")[0] not in text and PATIENT_ID not in text

    slider.set_value(1).run()
    assert not app.exception
    assert "Slice 1 of 6 · z = 0.0 mm" in image_captions(app)
    assert strip(app)["layout"]["shapes"][0]["x0"] == 1
    bars = [c.proto.id for c in app.get("plotly_chart") if "bars_" in c.proto.id]
    assert len(bars) == 1 and bars[0].endswith("-0-0")

    app.slider(key="volume_slice").set_value(BLANK + 1).run()
    assert any("Probably not" in warning.value for warning in app.warning)


def test_a_slice_of_the_scan_is_explained_on_demand():
    app = upload(("study.zip", zipped(series_files(hounsfield_slices()))))
    assert "Scan" not in image_captions(app)
    app.toggle(key="explain_slice").set_value(True).run()
    assert not app.exception
    assert "Scan" in image_captions(app) and "Overlay (45%)" in image_captions(app)


def test_loose_dicom_files_of_one_series_are_a_volume_and_one_file_stays_a_slice():
    files = series_files(hounsfield_slices(4))
    app = upload(*files.items())
    assert app.slider(key="volume_slice").value == 3
    assert len(strip(app)["data"][0]["x"]) == 4
    single = upload(next(iter(files.items())))
    assert not single.get("plotly_chart") or not any(
        "slice_strip" in c.proto.id for c in single.get("plotly_chart")
    )
    assert plain("CHEST-000.dcm") in page_text(single)


def test_a_nifti_volume_is_read_and_summarised():
    app = upload(("scan.nii", nifti(hounsfield_slices())))
    assert "NIfTI" in page_text(app) and "6 slices" in page_text(app)
    line, flagged = strip(app)["data"]
    assert len(line["x"]) == 6 and flagged["x"] == [BLANK + 1]
    assert all(rule.label in page_text(app) for rule in RULES)


def test_several_series_get_a_select_and_a_refused_one_its_error():
    slices = hounsfield_slices(4)
    files = (
        series_files(slices, number=2, description="LUNG")
        | series_files(slices[:3], number=3, description="SOFT")
        | series_files(slices[:2], number=4, description="BROKEN", same_z=True)
    )
    app = upload(("three-series.zip", zipped(files)))
    assert len(app.error) == 1
    assert plain("series 4: BROKEN") in app.error[0].value and "was not read" in app.error[0].value
    choice = app.selectbox(key="scan_choice")
    assert choice.options == ["series 2: LUNG", "series 3: SOFT"]
    assert len(strip(app)["data"][0]["x"]) == 4
    choice.select_index(1).run()
    assert not app.exception
    assert plain("series 3: SOFT") in page_text(app) and len(strip(app)["data"][0]["x"]) == 3
    assert app.slider(key="volume_slice").value == 2


def test_a_zip_without_dicom_gets_an_error_and_no_traceback():
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png, format="PNG")
    app = upload(("pictures.zip", zipped({"a.png": png.getvalue()})))
    assert len(app.error) == 1 and plain("pictures.zip") in app.error[0].value
    assert "DICOM" in app.error[0].value
