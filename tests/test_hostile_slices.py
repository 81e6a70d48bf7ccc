"""Hostile slices, round 2 (issue 20): what one file makes us allocate, read or reveal.

Each test names the class of hostile input it guards against. Memory is checked with
tracemalloc (NumPy arrays and Python bytes are traced; Pillow's own buffers are not), so a
test fails when a full-size float32 copy or an inflated dataset comes back.
"""

from __future__ import annotations

import io
import json
import logging
import os
import resource
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
import zlib

import cv2
import numpy as np
import pydicom
import pytest
from PIL import EpsImagePlugin, ExifTags, Image, ImageDraw, ImageOps
from pydicom.encaps import encapsulate
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit

from ctdemo.app import classify
from ctdemo.evaluation.splits import assign_groups
from ctdemo.io import folders, limits
from ctdemo.io.decoded import (
    AspectRatioError,
    DicomError,
    ImageTooLargeError,
    NotAnImageError,
    UnreadableFileError,
)
from ctdemo.io.dicom import LUNG_WINDOW
from ctdemo.io.folders import DatasetError, load_arrays, scan_image_folder
from ctdemo.io.limits import MAX_DECODED_SIDE
from ctdemo.io.slices import (
    declared_pixels,
    decode_slice,
    is_dicom,
    read_slice_file,
    to_model_input,
)

import hostile_corpus
from conftest import ROOT, make_image_folder, real_train_dir
from dicom_factory import PATIENT_BIRTH_DATE, PATIENT_ID, PATIENT_NAME, ct_dicom_bytes
from hostile_corpus import encode

# ---------------------------------------------------------------------------- helpers


def traced_peak(function, *args):
    """(what `function` returned or raised, the peak bytes NumPy and Python allocated in it)."""
    tracemalloc.start()
    try:
        outcome = function(*args)
    except Exception as error:
        outcome = error
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return outcome, peak


def halves(width: int, height: int, mode: str = "L", left=200, right=50) -> Image.Image:
    """An image whose left half is `left` and right half `right`."""
    image = Image.new(mode, (width, height), right)
    image.paste(left, (0, 0, width // 2, height))
    return image


def hu_stored(hu, intercept: float = -1024.0) -> np.ndarray:
    return (np.asarray(hu) - intercept).astype(np.int16)


def resave(dicom: bytes, syntax: str, **elements) -> bytes:
    """`dicom` with another transfer syntax and some elements replaced (PixelData as given)."""
    dataset = pydicom.dcmread(io.BytesIO(dicom))
    dataset.file_meta.TransferSyntaxUID = syntax
    for key, value in elements.items():
        setattr(dataset, key, value)
    if "PixelData" in elements and syntax == JPEGBaseline8Bit:
        dataset["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def deflate_bomb(mebibytes: int) -> bytes:
    """A Deflated Explicit VR Little Endian DICOM of a few hundred KB whose dataset inflates
    to `mebibytes` MiB: one OB element of zeros, deflated by `hostile_corpus`'s cheap trick."""
    valid = resave(ct_dicom_bytes(None), DeflatedExplicitVRLittleEndian)
    stream = io.BytesIO(valid)
    read_preamble(stream, force=True)
    _read_file_meta_info(stream)
    header = struct.pack("<HH2sHI", 0x0042, 0x0011, b"OB", 0, mebibytes * 2**20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    zeros, _ = hostile_corpus._zeros_deflated(mebibytes)
    return valid[: stream.tell()] + head + zeros


def _error_of(function, *args) -> Exception | None:
    try:
        function(*args)
    except Exception as error:
        return error
    return None


# ---------------------------------------------------------------------------- 1. strips


@pytest.mark.parametrize(("width", "height"), [(30_000, 833), (25_000_000, 1), (1, 9)])
def test_a_strip_png_is_refused_for_its_aspect_before_its_pixels_are_decoded(width, height):
    png = encode(Image.new("L", (width, height)), "PNG")
    error, peak = traced_peak(decode_slice, png, "strip.png")
    assert isinstance(error, AspectRatioError)
    assert f"{width} x {height} pixels" in str(error) and "longer than 8:1" in str(error)
    assert peak < 2**20
    assert declared_pixels(png, "strip.png") == 0  # costs a batch nothing: it is never decoded


def test_a_strip_dicom_is_refused_for_its_aspect():
    strip = ct_dicom_bytes(np.zeros((100, 2_000), np.int16))  # real pixel data, 20:1
    with pytest.raises(AspectRatioError, match="2000 x 100"):
        decode_slice(strip)
    header = {"Rows": 1, "Columns": 65_535}  # the longest a DICOM header can declare
    header_only = ct_dicom_bytes(np.zeros((4, 4), np.int16), extra=header)
    with pytest.raises(AspectRatioError, match="65535 x 1"):
        decode_slice(header_only)


def test_a_slice_at_the_aspect_limit_is_accepted():
    decoded = decode_slice(encode(Image.new("L", (80, 10), 128), "PNG"))
    assert decoded.pixels.shape == (10, 80)


def test_to_model_input_never_pads_a_strip_to_a_square_of_its_length():
    strip = np.zeros((1, 4_000_000), np.float32)  # padded first, this asked for 64 TB
    out, peak = traced_peak(to_model_input, strip, 64)
    assert out.shape == (64, 64, 1)
    assert peak < 8 * 2**20

    wide = np.zeros((1_000, 8_000), np.float32)  # within the aspect limit; 256 MB as a square
    wide[250:750] = 1.0  # a bright band through the middle rows
    out, peak = traced_peak(to_model_input, wide, 64)
    assert peak < 16 * 2**20
    rows = out[..., 0].mean(axis=1)
    assert rows[32] > 0.9 and rows[:28].max() < 0.05 and rows[36:].max() < 0.05


def test_to_model_input_of_a_slice_within_the_side_limit_is_unchanged():
    """The path the shipped weights were trained on: pad to a square, then resize."""
    pixels = np.random.default_rng(0).random((480, 600)).astype(np.float32)
    square = np.full((600, 600), np.median(np.concatenate(
        [pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])), np.float32)  # fmt: skip
    square[60:540] = pixels
    expected = cv2.resize(square, (64, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(to_model_input(pixels, 64)[..., 0], np.clip(expected, 0, 1))


# ---------------------------------------------------------------------------- 2. large slices


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16", "P"])
def test_a_large_picture_is_reduced_before_it_becomes_float32(mode):
    width, height = 6_000, 4_000
    if mode == "I;16":
        values = np.full((height, width), 1000, np.uint16)
        values[:, : width // 2] = 3000
        image, left, right = Image.fromarray(values), 1.0, 0.0
    else:
        image = halves(width, height, "L").convert(mode)
        left, right = 200 / 255, 50 / 255
    if mode == "RGBA":
        image.putalpha(Image.new("L", image.size, 255))
        image.putpixel((0, 0), (200, 200, 200, 0))  # one see-through pixel
    decoded, peak = traced_peak(decode_slice, encode(image, "PNG"), "big.png")
    assert image.mode == mode
    assert decoded.pixels.shape == (683, 1024)
    assert decoded.pixels.dtype == np.float32
    full_size_float32 = width * height * 4
    assert peak < full_size_float32 / 3, f"{peak / 2**20:.0f} MB traced"
    np.testing.assert_allclose(decoded.pixels[10:-10, 10:500], left, atol=1e-3)
    np.testing.assert_allclose(decoded.pixels[10:-10, 530:], right, atol=1e-3)


def test_a_large_jpeg_is_decoded_at_a_fraction_of_its_size():
    image = halves(6_000, 4_000).convert("RGB")
    decoded, peak = traced_peak(decode_slice, encode(image, "JPEG", quality=90), "big.jpg")
    assert decoded.pixels.shape == (683, 1024)
    assert peak < 6_000 * 4_000 * 4 / 8
    assert abs(decoded.pixels[:, 50:450].mean() - 200 / 255) < 0.01
    assert abs(decoded.pixels[:, 580:].mean() - 50 / 255) < 0.01


def test_a_picture_at_the_side_limit_is_decoded_unchanged():
    pixels = np.random.default_rng(1).integers(0, 256, (700, MAX_DECODED_SIDE), dtype=np.uint8)
    decoded = decode_slice(encode(Image.fromarray(pixels).convert("RGB"), "PNG"))
    expected = np.asarray(Image.fromarray(pixels).convert("RGB").convert("L"), np.float32)
    np.testing.assert_array_equal(decoded.pixels, expected * np.float32(1 / 255))


def test_a_large_dicom_is_reduced_on_its_stored_values():
    hu = np.full((3_000, 3_000), -600, np.int16)
    hu[:, 1_500:] = 150
    dicom = ct_dicom_bytes(hu_stored(hu))
    decoded, peak = traced_peak(decode_slice, dicom)
    assert decoded.pixels.shape == (1024, 1024)
    np.testing.assert_allclose(decoded.pixels[:, :500], 0.5, atol=1e-3)
    np.testing.assert_allclose(decoded.pixels[:, 530:], 1.0, atol=1e-3)
    float32_copy = hu.size * 4  # what converting the stored values first allocates, each time
    assert peak < len(dicom) + float32_copy, f"{peak / 2**20:.0f} MB traced"


# ---------------------------------------------------------------------------- 3. batch budget


def test_a_classify_batch_is_capped_by_the_pixels_its_headers_declare(monkeypatch):
    megapixel = encode(Image.new("L", (1_000, 1_000), 90), "PNG")
    small = encode(Image.new("L", (100, 100), 90), "PNG")
    bomb = hostile_corpus.png_declaring(50_000, 50_000)
    monkeypatch.setattr(classify, "MAX_BATCH_PIXELS", 3_100_000)
    decoded_names = []
    real_decode = classify.decode_slice

    def decode(data: bytes, name: str, window):
        decoded_names.append(name)
        return real_decode(data, name, window)

    monkeypatch.setattr(classify, "decode_slice", decode)
    files = [("bomb.png", bomb), *[(f"{n}.png", megapixel) for n in range(4)], ("small.png", small)]
    results = classify.decode_files(files)
    assert [r.error is None for r in results] == [False, True, True, True, False, True]
    assert "megapixels" not in results[0].error  # the bomb has its own reason, and no cost
    assert "over 3 megapixels" in results[4].error and "fewer or smaller" in results[4].error
    assert "3.png" not in decoded_names  # refused from its header, never decoded
    assert results[5].pixels.shape == (100, 100)


def test_the_batch_budget_admits_a_full_batch_of_ct_slices():
    assert classify.MAX_BATCH_PIXELS >= classify.MAX_FILES * 1_024 * 1_024


# ---------------------------------------------------------------------------- 4. dataset budget


def test_a_dataset_over_its_pixel_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    blank = encode(Image.new("L", (5_000, 5_000)), "PNG")  # 25 MP in 25 KB
    for name in ("COVID", "non-COVID"):
        (tmp_path / "bomb" / name).mkdir(parents=True)
        for number in range(20):
            (tmp_path / "bomb" / name / f"{number}.png").write_bytes(blank)
    monkeypatch.setattr(folders, "decode_slice", lambda *args: pytest.fail("decoded"))
    started = time.perf_counter()
    with pytest.raises(DatasetError, match=r"1,000 megapixels.* over 600 megapixels"):
        load_arrays(tmp_path / "bomb", 24)
    assert time.perf_counter() - started < 5


def test_a_dataset_within_its_pixel_budget_decodes_its_large_images_reduced(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2)
    big = halves(4_000, 2_000)
    # A bright rim round the edge: the whole image is "body", so the body crop leaves it alone.
    ImageDraw.Draw(big).rectangle((0, 0, 3_999, 1_999), outline=200, width=80)
    (root / "COVID" / "big.png").write_bytes(encode(big, "PNG"))
    dataset = load_arrays(root, 32)
    big = dataset.x[dataset.files.index("COVID/big.png"), ..., 0]
    assert abs(big[10:22, 3:13].mean() - 200 / 255) < 0.02  # left half, inside the rim
    assert abs(big[10:22, 19:29].mean() - 50 / 255) < 0.02


def test_the_real_training_set_is_well_within_the_dataset_budget():
    folder = scan_image_folder(real_train_dir())
    total = sum(folders._declared_pixels(path) for path in folder.files)
    assert len(folder.files) > 1_900
    assert 3 * total < folders.MAX_DATASET_PIXELS < 5 * total


# ---------------------------------------------------------------------------- 5. DICOM bombs


def test_a_deflate_bomb_dicom_is_refused_without_inflating_it():
    bomb = deflate_bomb(256)
    assert len(bomb) < 2**20
    error, peak = traced_peak(decode_slice, bomb, "bomb.dcm")
    assert isinstance(error, DicomError)
    assert "inflates to more than 64 MB" in str(error) and "uncompressed" in str(error)
    assert peak < 40 * 2**20, f"{peak / 2**20:.0f} MB traced"
    declared, peak = traced_peak(declared_pixels, bomb, "bomb.dcm")
    assert declared == 0 and peak < 40 * 2**20


def test_a_deflated_dicom_within_bounds_still_decodes():
    dicom = ct_dicom_bytes(hu_stored([[-1350, 150], [-600, -1200]]))
    deflated = resave(dicom, DeflatedExplicitVRLittleEndian)
    np.testing.assert_allclose(decode_slice(deflated).pixels, [[0, 1], [0.5, 0.1]], atol=1e-6)
    assert declared_pixels(deflated) == 4


def test_a_compressed_frame_larger_than_its_header_says_is_refused():
    jpeg = encode(Image.new("L", (3_000, 3_000), 128), "JPEG")
    small = ct_dicom_bytes(None, extra={"Rows": 16, "Columns": 16, "BitsAllocated": 8,
                                        "BitsStored": 8, "HighBit": 7,
                                        "PixelRepresentation": 0})  # fmt: skip
    lying = resave(small, JPEGBaseline8Bit, PixelData=encapsulate([jpeg]))
    with pytest.raises(DicomError, match=r"3000 x 3000 .*header says 16 x 16"):
        decode_slice(lying)
    honest = resave(
        small, JPEGBaseline8Bit,
        PixelData=encapsulate([encode(Image.new("L", (16, 16), 128), "JPEG")]),
    )  # fmt: skip
    assert decode_slice(honest).pixels.shape == (16, 16)


def test_a_dicom_header_asking_for_huge_pixel_data_is_refused_before_decoding():
    header = {"Rows": 4_000, "Columns": 4_000, "SamplesPerPixel": 3, "BitsAllocated": 32}
    with pytest.raises(ImageTooLargeError, match=r"4000 x 4000, 3 sample.* 32 bits"):
        decode_slice(ct_dicom_bytes(np.zeros((4, 4), np.int16), extra=header))


# ---------------------------------------------------------------------------- 6. MONOCHROME1


def test_monochrome1_with_rescale_tags_is_not_inverted_and_metal_moves_nothing():
    hu = np.array([[-1350, -600, 150, -1000], [-1200, -900, 0, 3000]])
    plain = decode_slice(ct_dicom_bytes(hu_stored(hu)))
    monochrome1 = decode_slice(ct_dicom_bytes(hu_stored(hu), photometric="MONOCHROME1"))
    np.testing.assert_array_equal(monochrome1.pixels, plain.pixels)
    np.testing.assert_allclose(plain.pixels[0], LUNG_WINDOW.apply(hu[0]), atol=1e-6)
    assert monochrome1.pixels[0, 3] < 0.25  # air is dark


def test_monochrome1_without_rescale_tags_is_inverted_around_its_bit_range():
    stored = np.array([[1349, -151, 599]], np.int16)  # signed 16 bits: inverted = -1 - stored
    without_metal = decode_slice(
        ct_dicom_bytes(stored, slope="", intercept="", photometric="MONOCHROME1")
    )
    np.testing.assert_allclose(without_metal.pixels, [[0.0, 1.0, 0.5]], atol=1e-6)
    with_metal = decode_slice(
        ct_dicom_bytes(np.array([[1349, -151, 599, -20_000]], np.int16), slope="", intercept="",
                       photometric="MONOCHROME1")
    )  # fmt: skip
    np.testing.assert_array_equal(with_metal.pixels[:, :3], without_metal.pixels)


# ---------------------------------------------------------------------------- 7. rescale


@pytest.mark.parametrize(("slope", "intercept"), [("1e30", "-1024"), ("500", "0"), ("1", "-1e6")])
def test_an_absurd_rescale_is_refused(slope, intercept):
    dicom = ct_dicom_bytes(np.zeros((4, 4), np.int16), slope=slope, intercept=intercept)
    with pytest.raises(DicomError, match=r"outside any CT range.*RescaleSlope or RescaleIntercept"):
        decode_slice(dicom)


def test_a_rescale_that_sends_pixels_past_the_hu_limit_is_refused():
    dicom = ct_dicom_bytes(np.array([[0, 30_000]], np.int16), slope="50", intercept="0")
    with pytest.raises(DicomError, match="outside any CT range"):
        decode_slice(dicom)


# ---------------------------------------------------------------------------- 8. EXIF


def exif_jpeg(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return encode(image, "JPEG", quality=95, exif=exif)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_jpeg_is_turned_as_its_exif_orientation_says(orientation):
    image = Image.new("L", (48, 32), 30)
    image.paste(230, (0, 0, 12, 8))  # a bright corner shows which way is up
    jpeg = exif_jpeg(image, orientation)
    with Image.open(io.BytesIO(jpeg)) as stored:
        upright = np.asarray(ImageOps.exif_transpose(stored), np.float32) / 255
    decoded = decode_slice(jpeg, "photo.jpg").pixels
    assert decoded.shape == upright.shape
    np.testing.assert_allclose(decoded, upright, atol=1e-6)


def test_a_large_turned_jpeg_is_reduced_and_turned():
    decoded = decode_slice(exif_jpeg(halves(4_000, 3_000), 6), "photo.jpg").pixels
    assert decoded.shape == (1024, 768)
    assert decoded[:400].mean() > decoded[-400:].mean() + 0.4  # the left half is now on top


# ---------------------------------------------------------------------------- 9-10. formats


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_a_picture_named_dcm_is_decoded_as_the_picture_it_is(format):
    picture = encode(Image.new("L", (20, 20), 128), format)
    decoded = decode_slice(picture, "scan.dcm")
    assert decoded.source_format == format
    assert abs(decoded.pixels.mean() - 128 / 255) < 0.01
    assert not is_dicom(picture, "scan.dcm")


def test_an_eps_file_never_reaches_ghostscript(monkeypatch):
    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kw: calls.append(args))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 0 moveto showpage\n%%EOF\n"
    with pytest.raises(NotAnImageError, match="not an image we can read"):
        decode_slice(eps, "slice.png")
    assert calls == []


@pytest.mark.parametrize("format", ["PPM", "WEBP", "ICO"])
def test_formats_the_app_does_not_accept_are_refused(format):
    with pytest.raises(NotAnImageError, match="not an image we can read"):
        decode_slice(encode(Image.new("RGB", (32, 32), (90, 90, 90)), format), "slice.png")


# ---------------------------------------------------------------------------- 11. warnings


def excess_frames_dicom() -> bytes:
    """Pixel data for two frames where one is declared: pydicom warns (and logs) on it."""
    return ct_dicom_bytes(np.zeros((4, 4), np.int16), extra={"Rows": 2})


def test_decoding_a_hostile_dicom_emits_no_warning_and_no_log_line():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("pydicom")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(DicomError):
                decode_slice(excess_frames_dicom())
            declared_pixels(excess_frames_dicom())
    finally:
        logger.removeHandler(handler)
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in records] == []


def test_decoding_on_threads_leaves_the_warning_filters_as_they_were():
    """`catch_warnings` is process-wide: threads that interleave it can leave warnings off."""
    before = list(warnings.filters)
    dicom, png = excess_frames_dicom(), encode(Image.new("L", (8, 8)), "PNG")
    outcomes = []

    def decode_many() -> None:
        for _ in range(20):
            outcomes.append(_error_of(decode_slice, dicom))
            outcomes.append(_error_of(decode_slice, png))

    threads = [threading.Thread(target=decode_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert warnings.filters == before
    assert len(outcomes) == 160
    assert sum(isinstance(outcome, DicomError) for outcome in outcomes) == 80


# ---------------------------------------------------------------------------- 12. files


def test_read_slice_file_reads_a_regular_file(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"12345")
    assert read_slice_file(path) == b"12345"


def within_seconds(seconds: float, function, *args):
    """What `function` returns, run on a daemon thread: a regression that blocks (opening a
    FIFO waits for a writer) fails the test instead of hanging the run."""
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(function(*args)), daemon=True)
    worker.start()
    worker.join(timeout=seconds)
    assert outcome, f"{function.__name__} still blocked after {seconds} s"
    return outcome[0]


def test_read_slice_file_refuses_a_fifo_without_waiting(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    error = within_seconds(10, _error_of, read_slice_file, fifo)
    assert isinstance(error, UnreadableFileError)
    assert "not a regular file" in str(error)


@pytest.mark.parametrize(
    ("path", "match"),
    [("/dev/zero", "not a regular file"), ("/", "folder"), ("/no/such/file.png", "No such file")],
)
def test_read_slice_file_refuses_what_is_not_a_regular_file(path, match):
    with pytest.raises(UnreadableFileError, match=match):
        read_slice_file(path)


def test_read_slice_file_refuses_a_file_over_the_byte_cap_by_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_FILE_BYTES", 2**20)
    path = tmp_path / "big.png"
    path.write_bytes(bytes(3 * 2**20))
    with pytest.raises(ImageTooLargeError, match="The file is 3 MB; slices over 1 MB"):
        read_slice_file(path)


def test_a_dataset_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.png"  # scanning skips one; it may be swapped in after the scan
    os.mkfifo(fifo)
    image, error, _ = within_seconds(10, folders._decode_file, fifo, 24)
    assert image is None and "not a regular file" in error


def _limit_memory() -> None:
    """A regression that reads /dev/zero to its end fails here instead of taking the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30))


@pytest.mark.slow
def test_cli_predict_answers_a_fifo_dev_zero_and_a_hostile_dicom_with_one_error_line(tmp_path):
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    dicom = tmp_path / "excess.dcm"
    dicom.write_bytes(excess_frames_dicom())
    command = [sys.executable, "-m", "ctdemo", "predict", "--model", "weights/mlp.keras"]
    result = subprocess.run(
        [*command, str(fifo), "/dev/zero", str(dicom), "--json"],
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_memory,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: 3 of 3 files could not be classified"]
    errors = [item["error"] for item in json.loads(result.stdout)]
    assert "not a regular file" in errors[0] and "not a regular file" in errors[1]
    assert "Expected one grey slice" in errors[2]


# ---------------------------------------------------------------------------- 13. privacy


def test_no_identifying_dicom_tag_reaches_the_cache_and_patients_stay_grouped(
    tmp_path, isolated_home
):
    root = tmp_path / "dicoms"
    patients = {"COVID": ["P-1", "P-1", "P-2"], "non-COVID": ["P-3", "P-3", None]}
    for label, ids in patients.items():
        (root / label).mkdir(parents=True)
        for number, patient in enumerate(ids):
            stored = hu_stored(np.full((8, 8), -600 + 100 * number))
            (root / label / f"{number}.dcm").write_bytes(ct_dicom_bytes(stored, patient_id=patient))
    dataset = load_arrays(root, 24)
    load_arrays(root, 24)  # and from the cache
    secrets = [PATIENT_NAME, "Doe", PATIENT_BIRTH_DATE, "P-1", "P-2", "P-3", PATIENT_ID]
    secrets.append("1.2.826.0.1.3680043.8.498.1")  # the StudyInstanceUID
    cached = [path for path in isolated_home.rglob("*") if path.is_file()]
    assert any(path.suffix == ".json" for path in cached)
    for path in cached:
        content = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content, f"{secret} in {path.name}"
    groups, source = assign_groups(dataset.files, dataset.y, dicom_groups=dataset.dicom_groups)
    assert source.startswith("DICOM")
    by_file = dict(zip(dataset.files, groups, strict=True))
    assert by_file["COVID/0.dcm"] == by_file["COVID/1.dcm"] != by_file["COVID/2.dcm"]
    assert by_file["non-COVID/0.dcm"] == by_file["non-COVID/1.dcm"] != by_file["non-COVID/2.dcm"]
    assert len(set(groups)) == 4
    assert set(groups) == {"patient 1", "patient 2", "patient 3", "study 1"}


def test_a_decoded_slice_holds_no_patient_id_only_an_equality_keeping_digest():
    first = decode_slice(ct_dicom_bytes(hu_stored([[0, 1]]), patient_id="P-1"))
    again = decode_slice(ct_dicom_bytes(hu_stored([[1, 0]]), patient_id="P-1"))
    other = decode_slice(ct_dicom_bytes(hu_stored([[0, 1]]), patient_id="P-2"))
    assert "P-1" not in json.dumps(first.dicom_groups)
    assert first.dicom_groups["PatientID"] == again.dicom_groups["PatientID"]
    assert first.dicom_groups["PatientID"] != other.dicom_groups["PatientID"]


def test_caches_of_earlier_formats_are_removed_and_nothing_else(tmp_path, isolated_home):
    """Before format 3 a cache's JSON held raw PatientIDs: the next load deletes those files,
    and only files named as the cache names them."""
    from ctdemo.io.folders import CACHE_FORMAT

    arrays = isolated_home / "arrays"
    arrays.mkdir(parents=True)
    old = [arrays / f"{'a' * 32}-48-v2.json", arrays / f"{'a' * 32}-48-v2.npy"]
    for path in old:
        path.write_text('{"dicom_groups": {"x.dcm": "PAT-0042"}}')
    kept = [arrays / "notes-v1.txt", arrays / "mine-v2.json", arrays / f"{'b' * 32}-48-v9.json"]
    for path in kept:
        path.write_text("not the app's")
    load_arrays(make_image_folder(tmp_path / "data", per_class=3), 24)
    assert not any(path.exists() for path in old)
    assert all(path.exists() for path in kept)
    assert any(path.name.endswith(f"-v{CACHE_FORMAT}.json") for path in arrays.iterdir())
