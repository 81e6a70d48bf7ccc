"""Whole scans: DICOM series (ordered, separated, hostile ones refused with a sentence), NIfTI
volumes (the same slices whatever the stored orientation, bounded inflation), the per-volume
summary rules, and `predict --json` on a series folder, a zip and a NIfTI file."""

from __future__ import annotations

import gzip
import io
import json
import math
import random
import struct
import subprocess
import sys

import nibabel
import numpy as np
import pytest
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)
from pydicom.uid import generate_uid

from ctdemo.evaluation.volume_summary import summarise, top_k
from ctdemo.io.dicom import LUNG_WINDOW, decode_dicom, dicom_header
from ctdemo.io.nifti import read_nifti
from ctdemo.io.scans import is_scan, read_scan, read_upload
from ctdemo.io.volumes import RefusedSeries, Volume, VolumeError, VolumeLimits, stored_slice

from conftest import ROOT, zip_bytes
from dicom_factory import PATIENT_BIRTH_DATE, PATIENT_ID, PATIENT_NAME, ct_dicom_bytes
from test_cli import assert_one_line_error, run_cli

IDENTIFYING = (PATIENT_NAME, "Doe", "Jane", PATIENT_ID, PATIENT_BIRTH_DATE)
GAP_MM = 2.5


def stored_values(index: int, shape: tuple[int, int] = (24, 32)) -> np.ndarray:
    """Stored values whose slice `index` is recognisable: a ramp plus 40 per index."""
    rows, columns = shape
    ramp = np.add.outer(np.arange(rows) * 30, np.arange(columns) * 7)
    return (ramp + 40 * index).astype(np.int16)


def series(
    count: int,
    number: int = 3,
    description: str = "CHEST 1.25",
    positions: bool = True,
    shape: tuple[int, int] = (24, 32),
    **extra,
) -> dict[str, bytes]:
    """One axial series as file name -> DICOM bytes, slice k at z = 2.5 k mm."""
    uid = generate_uid()
    files = {}
    for k in range(count):
        tags = {
            "SeriesInstanceUID": uid,
            "SeriesNumber": number,
            "SeriesDescription": description,
            "InstanceNumber": k + 1,
        }
        if positions:
            tags |= {
                "ImagePositionPatient": [-100.0, -120.0, GAP_MM * k],
                "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
            }
        tags |= extra
        files[f"{description[:5]}-{k:03d}.dcm"] = ct_dicom_bytes(
            stored_values(k, shape), extra=tags
        )
    return files


def shuffled(files: dict[str, bytes], seed: int = 0) -> dict[str, bytes]:
    items = list(files.items())
    random.Random(seed).shuffle(items)
    return dict(items)


def zipped(files: dict[str, bytes]) -> bytes:
    """The files in one folder of a zip, as a scanner's export puts them."""
    return zip_bytes({f"export/{name}": data for name, data in files.items()})


def only_volume(items: list) -> Volume:
    assert len(items) == 1 and isinstance(items[0], Volume), items
    return items[0]


def assert_anonymous(items: list) -> None:
    text = repr([item.describe() if isinstance(item, Volume) else item for item in items])
    for value in IDENTIFYING:
        assert value not in text


# DICOM series


def test_shuffled_files_of_one_series_come_out_ordered_feet_to_head():
    files = series(12)
    volume = only_volume(read_upload(shuffled(files)))
    assert volume.positions == tuple(GAP_MM * k for k in range(12))
    assert volume.spacing == pytest.approx((GAP_MM, 0.7, 0.7))
    assert volume.name == "series 3: CHEST 1.25" and volume.notes == ()
    for k, data in enumerate(files.values()):  # decoded exactly as a single DICOM slice is
        expected = stored_slice(decode_dicom(data, LUNG_WINDOW).pixels)
        np.testing.assert_array_equal(volume.pixels[k], expected)
    assert volume.slice(0).dtype == np.float32 and volume.slice(0).max() <= 1.0
    assert_anonymous([volume])


def test_a_mirrored_series_is_turned_to_the_same_view():
    plain = only_volume(read_upload(series(6)))
    # rows that run to the patient's right: each slice is flipped back left to right
    volume = only_volume(read_upload(series(6, ImageOrientationPatient=[-1, 0, 0, 0, 1, 0])))
    np.testing.assert_array_equal(volume.pixels, plain.pixels[:, :, ::-1])
    assert volume.positions == plain.positions


def test_two_series_in_one_zip_are_separated_and_named():
    files = series(5, number=3, description="CHEST 1.25") | series(
        4, number=4, description="MEDIASTINUM"
    )
    files["README.txt"] = b"exported by a workstation"
    items = read_upload({"study.zip": zipped(shuffled(files))})
    assert [item.name for item in items] == ["series 3: CHEST 1.25", "series 4: MEDIASTINUM"]
    assert [len(item) for item in items] == [5, 4]
    assert any("README.txt: not a DICOM file" in note for note in items[0].notes)
    assert_anonymous(items)


def test_a_series_without_positions_is_ordered_by_instance_number_and_says_so():
    volume = only_volume(read_upload(shuffled(series(6, positions=False))))
    assert volume.positions is None and volume.spacing is None
    assert "ordered by InstanceNumber" in volume.orientation
    assert any("InstanceNumber" in note and "ImagePositionPatient" in note for note in volume.notes)
    ordered = only_volume(read_upload(series(6)))
    np.testing.assert_array_equal(volume.pixels, ordered.pixels)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # pydicom, writing the NaN
def test_nan_orientation_falls_back_to_instance_number():
    files = series(4, ImageOrientationPatient=["nan", 0, 0, 0, 1, 0])
    volume = only_volume(read_upload(shuffled(files)))
    assert any("ImageOrientationPatient" in note for note in volume.notes)
    assert "ordered by InstanceNumber" in volume.orientation


def test_two_slices_at_one_position_refuse_the_series_with_a_sentence():
    files = series(4)
    names = list(files)
    clash = ct_dicom_bytes(  # another instance at the position of the first
        stored_values(9),
        extra={
            "SeriesInstanceUID": _series_uid(files[names[0]]),
            "SeriesNumber": 3,
            "InstanceNumber": 9,
            "ImagePositionPatient": [-100.0, -120.0, 0.0],
            "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
        },
    )
    (refused,) = read_upload(files | {"copy.dcm": clash})
    assert isinstance(refused, RefusedSeries)
    assert "same position" in refused.reason and "duplicates" in refused.reason


def test_the_same_file_under_two_names_is_read_once_with_a_note():
    files = series(4)
    first = next(iter(files.values()))
    volume = only_volume(read_upload(files | {"again.dcm": first}))
    assert len(volume) == 4
    assert any("copies" in note for note in volume.notes)


def test_mixed_sizes_within_a_series_are_refused():
    files = series(4)
    odd = ct_dicom_bytes(
        stored_values(7, (16, 16)),
        extra={
            "SeriesInstanceUID": _series_uid(next(iter(files.values()))),
            "SeriesNumber": 3,
            "InstanceNumber": 7,
        },
    )
    (refused,) = read_upload(files | {"scout.dcm": odd})
    assert isinstance(refused, RefusedSeries)
    assert "different sizes" in refused.reason and "16 x 16 (1 slices)" in refused.reason


def test_absurd_rows_and_columns_refuse_the_series_from_its_headers():
    files = series(3, Rows=60000, Columns=60000)
    (refused,) = read_upload(files)
    assert isinstance(refused, RefusedSeries) and "megapixels" in refused.reason


def test_too_many_slices_or_files_are_refused():
    (refused,) = read_upload(series(6), VolumeLimits(max_slices=5))
    assert "6 slices" in refused.reason and "at most 5" in refused.reason
    with pytest.raises(VolumeError, match="at most 3"):
        read_upload(series(4), VolumeLimits(max_files=3))


def test_a_second_series_past_the_upload_budget_is_refused_alone():
    files = series(4, number=1, description="A") | series(4, number=2, description="B")
    items = read_upload(files, VolumeLimits(max_voxels=4 * 24 * 32 + 10))
    assert isinstance(items[0], Volume) and isinstance(items[1], RefusedSeries)
    assert "on its own" in items[1].reason


def test_an_upload_without_dicom_is_refused():
    with pytest.raises(VolumeError, match="None of the 2 files is a DICOM image"):
        read_upload({"a.txt": b"hello", "b.txt": b"world"})


def _series_uid(data: bytes) -> str:
    return str(dicom_header(data).SeriesInstanceUID)


# NIfTI


def lps_volume(slices: int = 7) -> np.ndarray:
    """(x, y, z) HU in LPS voxel order whose axial plane k equals stored_values(k).T - 1024."""
    return np.stack([stored_values(k).T.astype(np.int16) - 1024 for k in range(slices)], axis=-1)


LPS_AFFINE = np.array(
    [[-0.7, 0, 0, 100.0], [0, -0.7, 0, 120.0], [0, 0, GAP_MM, 0.0], [0, 0, 0, 1]]
)  # RAS world: x and y run the other way from LPS


def nifti_bytes(data: np.ndarray, affine: np.ndarray, gz: bool = True, **header) -> bytes:
    image = nibabel.Nifti1Image(data, affine)
    for key, value in header.items():
        image.header[key] = value
    if "scl_slope" in header:
        image.header.set_slope_inter(header["scl_slope"], header.get("scl_inter", 0))
    raw = image.to_bytes()
    return gzip.compress(raw, compresslevel=1) if gz else raw


def reoriented(data: np.ndarray, affine: np.ndarray, axes: tuple[str, str, str]):
    """The same volume stored with other voxel axes (what `as_reoriented` does)."""
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(axes))
    return apply_orientation(data, transform), affine @ inv_ornt_aff(transform, data.shape)


def test_nifti_in_two_orientations_reads_the_same_slices():
    data = lps_volume()
    first = read_nifti(io.BytesIO(nifti_bytes(data, LPS_AFFINE)), "a.nii.gz")
    turned, affine = reoriented(data, LPS_AFFINE, ("S", "R", "A"))
    second = read_nifti(io.BytesIO(nifti_bytes(np.ascontiguousarray(turned), affine)), "b.nii")
    np.testing.assert_array_equal(first.pixels, second.pixels)
    assert first.positions == pytest.approx(second.positions)
    assert first.spacing == pytest.approx((GAP_MM, 0.7, 0.7))
    assert "from SRA to LPS" in second.orientation


def test_nifti_and_dicom_of_the_same_scan_read_the_same_slices():
    dicom = only_volume(read_upload(series(7)))
    nifti = read_nifti(io.BytesIO(nifti_bytes(lps_volume(), LPS_AFFINE)), "scan.nii.gz")
    np.testing.assert_array_equal(dicom.pixels, nifti.pixels)
    assert dicom.positions == pytest.approx(nifti.positions)


def test_nifti_scaling_gives_hounsfield_units():
    hu = lps_volume()
    stored = (hu + 1024).astype(np.uint16)
    scaled = nifti_bytes(stored, LPS_AFFINE, scl_slope=1.0, scl_inter=-1024.0)
    direct = nifti_bytes(hu, LPS_AFFINE)
    np.testing.assert_array_equal(
        read_nifti(io.BytesIO(scaled), "s.nii.gz").pixels,
        read_nifti(io.BytesIO(direct), "d.nii.gz").pixels,
    )
    unscaled = read_nifti(io.BytesIO(nifti_bytes(stored, LPS_AFFINE)), "raw.nii.gz")
    assert any("Hounsfield" in note for note in unscaled.notes)


@pytest.mark.parametrize("spacing", [0.0, math.nan])
def test_nifti_with_an_unusable_affine_is_read_as_stored_with_a_note(spacing):
    raw = bytearray(nifti_bytes(lps_volume(3), LPS_AFFINE, gz=False))
    struct.pack_into("<hh", raw, 252, 0, 0)  # no qform, no sform: the affine comes from pixdim
    struct.pack_into("<f", raw, 88, spacing)  # pixdim[3], the spacing between slices
    volume = read_nifti(io.BytesIO(bytes(raw)), "flat.nii")
    assert volume.positions is None and "as stored" in volume.orientation
    assert any("unusable" in note for note in volume.notes)
    assert len(volume) == 3


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((16, 16, 1001), np.int16, "at most 1,000"),
        ((2000, 2000, 30), np.int16, "million voxels"),
        ((512, 512, 200), np.float64, "MB are read"),
        ((16, 16, 4, 3), np.int16, "3 volumes"),
    ],
)
def test_nifti_headers_declaring_too_much_are_refused_before_any_inflation(shape, dtype, message):
    header = nibabel.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 1000  # far less data than declared
    with pytest.raises(VolumeError, match=message):
        read_nifti(io.BytesIO(gzip.compress(raw)), "big.nii.gz")


def test_truncated_and_damaged_nifti_get_a_sentence():
    good = nifti_bytes(lps_volume(), LPS_AFFINE, gz=False)
    with pytest.raises(VolumeError, match="ends after"):
        read_nifti(io.BytesIO(gzip.compress(good[:-500])), "cut.nii.gz")
    with pytest.raises(VolumeError, match="damaged"):
        read_nifti(io.BytesIO(gzip.compress(good)[:200] + b"\0" * 300), "bad.nii.gz")
    with pytest.raises(VolumeError, match="not a NIfTI"):
        read_nifti(io.BytesIO(b"\0" * 400), "zero.nii")


BOMB = """
import gzip, io, sys, zlib
import numpy as np, nibabel
from ctdemo.io.nifti import read_nifti
def rss(key):
    return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1]) // 1024
header = nibabel.Nifti1Header(); header.set_data_shape((64, 64, 8)); header.set_data_dtype(np.int16)
header['vox_offset'] = 352
squeeze = zlib.compressobj(1, zlib.DEFLATED, 31)
parts = [squeeze.compress(header.binaryblock + bytes(4))]
block = bytes(2**24)
parts += [squeeze.compress(block) for _ in range(64)]  # 1 GiB of zeros after the header
data = b''.join(parts) + squeeze.flush()
before = rss('VmRSS')
volume = read_nifti(io.BytesIO(data), 'bomb.nii.gz')
print(len(data), len(volume), rss('VmHWM') - before)
"""


def test_a_gzip_bomb_is_inflated_only_as_far_as_its_header_declares():
    result = subprocess.run(
        [sys.executable, "-c", BOMB], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    compressed, slices, growth_mb = map(int, result.stdout.split())
    assert compressed < 8 * 2**20 and slices == 8
    assert growth_mb < 20, f"reading the bomb grew the process by {growth_mb} MB"


def test_scan_paths_are_told_from_slices(tmp_path):
    (tmp_path / "series").mkdir()
    (tmp_path / "scan.nii.gz").write_bytes(nifti_bytes(lps_volume(2), LPS_AFFINE))
    (tmp_path / "study.zip").write_bytes(zipped(series(2)))
    (tmp_path / "slice.dcm").write_bytes(next(iter(series(1).values())))
    (tmp_path / "fake.nii").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert [is_scan(tmp_path / n) for n in ("series", "scan.nii.gz", "study.zip")] == [True] * 3
    assert not is_scan(tmp_path / "slice.dcm") and not is_scan(tmp_path / "fake.nii")
    with pytest.raises(VolumeError, match="holds no files"):
        read_scan(tmp_path / "series")


# Summary rules


def test_summary_rules_by_hand():
    probs = [0.9, 0.2, 0.1, 0.8, 0.3, 0.6, 0.05, 0.4, 0.7, 0.5, 0.95, 0.0]
    summary = summarise(probs, threshold=0.5)
    # 12 slices: k = max(3, ceil(1.2)) = 3 -> (0.95 + 0.9 + 0.8) / 3
    assert summary.scores["top_k_mean"] == pytest.approx(2.65 / 3)
    assert summary.scores["fraction_above"] == pytest.approx(6 / 12)  # 0.5 counts
    assert summary.scores["maximum"] == 0.95
    assert [top_k(n) for n in (1, 3, 29, 30, 31, 300)] == [1, 3, 3, 3, 4, 30]


def test_summary_leaves_out_flagged_and_unknown_slices():
    probs = [0.99, 0.2, math.nan, 0.4]
    summary = summarise(probs, flagged=[True, False, False, False])
    assert summary.slices_used == 2 and summary.slices_flagged == 1
    assert summary.slices_without_verdict == 1
    assert summary.scores == pytest.approx(
        {"top_k_mean": 0.3, "fraction_above": 0.0, "maximum": 0.4}
    )
    nothing = summarise([0.7], flagged=[True]).scores
    assert nothing == {"top_k_mean": None, "fraction_above": None, "maximum": None}
    with pytest.raises(ValueError, match="one per slice"):
        summarise([0.1, 0.2], flagged=[True])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        summarise([1.5])


# The command line


@pytest.mark.slow
def test_predict_json_on_a_series_folder_a_zip_and_a_nifti(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    for name, data in series(5).items():
        (folder / name).write_bytes(data)
    (tmp_path / "study.zip").write_bytes(zipped(series(4, number=7, description="LUNG")))
    (tmp_path / "scan.nii.gz").write_bytes(nifti_bytes(lps_volume(6), LPS_AFFINE))
    paths = [folder, tmp_path / "study.zip", tmp_path / "scan.nii.gz"]
    result = run_cli("predict", "--model", ROOT / "weights" / "cnn.keras", *paths, "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["file"] for r in records] == list(map(str, paths))
    assert [r["volume"]["name"] for r in records] == [
        "series 3: CHEST 1.25",
        "series 7: LUNG",
        "scan.nii.gz",
    ]
    assert [r["volume"]["slices"] for r in records] == [5, 4, 6]
    for record in records:
        assert record["class"] == "COVID"
        assert [s["index"] for s in record["slices"]] == list(range(len(record["slices"])))
        covid = [s["probabilities"]["COVID"] for s in record["slices"]]
        assert record["summary"]["maximum"] == pytest.approx(max(covid), abs=1e-6)
        assert set(record["summary"]) >= {"top_k_mean", "fraction_above", "maximum"}
    assert records[0]["slices"][1]["position"] == GAP_MM
    for value in IDENTIFYING:
        assert value not in result.stdout and value not in result.stderr


@pytest.mark.slow
def test_predict_on_a_damaged_scan_is_one_line(tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(gzip.compress(b"\0" * 400))
    result = run_cli("predict", "--model", ROOT / "weights" / "cnn.keras", broken)
    assert result.returncode == 1
    assert "broken.nii.gz: error: This file is not a NIfTI volume" in result.stdout
    assert_one_line_error(result)
