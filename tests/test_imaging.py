"""ctdemo.io.slices and its decoders (pictures, DICOM): every path, every refusal, and the path
to model input."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ctdemo.io import limits
from ctdemo.io.decoded import (
    DecodedSlice,
    DicomError,
    EmptyFileError,
    ImageTooLargeError,
    MultiFrameError,
    NotAnImageError,
    SliceError,
    TruncatedImageError,
)
from ctdemo.io.dicom import LUNG_WINDOW, MEDIASTINUM_WINDOW, SAFE_DICOM_TAGS, Window
from ctdemo.io.slices import decode_slice, pad_to_square, to_model_input

from dicom_factory import PATIENT_BIRTH_DATE, PATIENT_ID, PATIENT_NAME, ct_dicom_bytes

# ---------------------------------------------------------------------------- helpers


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def assert_valid_slice(decoded: DecodedSlice) -> None:
    assert isinstance(decoded, DecodedSlice)
    pixels = decoded.pixels
    assert isinstance(pixels, np.ndarray)
    assert pixels.dtype == np.float32
    assert pixels.ndim == 2
    assert pixels.size > 0
    assert np.all(np.isfinite(pixels))
    assert pixels.min() >= 0.0
    assert pixels.max() <= 1.0


def grey_ramp(height: int = 16, width: int = 24) -> np.ndarray:
    """uint8 grey values with known content: rows of 0, 64, 128, 255 bands."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    bands = np.array_split(np.arange(width), 4)
    for value, columns in zip((0, 64, 128, 255), bands, strict=True):
        pixels[:, columns] = value
    return pixels


def noise_png(size: int = 96, seed: int = 0) -> bytes:
    """A PNG that does not compress well, so cutting it leaves a broken IDAT."""
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)), "PNG")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (8-bit grey); its data is a stub."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------- pictures


def test_png_8bit_grey_is_divided_by_255():
    pixels = grey_ramp()
    decoded = decode_slice(encode(Image.fromarray(pixels), "PNG"), "slice.png")
    assert_valid_slice(decoded)
    assert decoded.source_format == "PNG"
    assert decoded.pixels.shape == pixels.shape
    np.testing.assert_allclose(decoded.pixels, pixels / 255.0, atol=1e-6)
    assert decoded.dicom_tags == {}
    assert decoded.dicom_groups == {}


def test_png_16bit_grey_is_min_max_stretched():
    values = np.array([[1000, 2000], [3000, 3000]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    data = encode(image, "PNG")
    with Image.open(io.BytesIO(data)) as reread:
        assert reread.mode in ("I;16", "I")  # 16-bit survives the round trip
    decoded = decode_slice(data)
    assert_valid_slice(decoded)
    np.testing.assert_allclose(decoded.pixels, [[0.0, 0.5], [1.0, 1.0]], atol=1e-6)


def test_constant_16bit_image_is_all_zero_not_nan():
    decoded = decode_slice(encode(Image.fromarray(np.full((5, 7), 777, np.uint16)), "PNG"))
    assert_valid_slice(decoded)
    assert decoded.pixels.shape == (5, 7)
    assert np.all(decoded.pixels == 0.0)


def test_png_rgb_becomes_itu_601_luma():
    rgb = np.zeros((2, 4, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[0, 3] = (255, 255, 255)
    rgb[1, :] = (100, 100, 100)
    decoded = decode_slice(encode(Image.fromarray(rgb), "PNG"))
    assert_valid_slice(decoded)
    assert decoded.pixels.shape == (2, 4)
    # Pillow computes the luma in integers: within half a grey level of the exact weights.
    np.testing.assert_allclose(decoded.pixels[0], [0.299, 0.587, 0.114, 1.0], atol=0.5 / 255)
    np.testing.assert_allclose(decoded.pixels[1], 100 / 255, atol=1e-6)


def test_png_rgba_is_composited_over_black():
    rgba = np.zeros((1, 4, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 255, 255, 255)  # opaque white
    rgba[0, 1] = (255, 255, 255, 0)  # transparent white -> black
    rgba[0, 2] = (255, 255, 255, 51)  # 20% white
    rgba[0, 3] = (200, 200, 200, 255)
    decoded = decode_slice(encode(Image.fromarray(rgba, mode="RGBA"), "PNG"))
    assert_valid_slice(decoded)
    np.testing.assert_allclose(decoded.pixels[0], [1.0, 0.0, 0.2, 200 / 255], atol=1e-5)


def test_png_grey_with_alpha_is_composited_over_black():
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (255, 0))
    image.putpixel((1, 0), (255, 255))
    decoded = decode_slice(encode(image, "PNG"))
    np.testing.assert_allclose(decoded.pixels, [[0.0, 1.0]], atol=1e-5)


def test_png_palette():
    image = Image.new("P", (3, 1))
    palette = [0, 0, 0, 255, 255, 255, 0, 255, 0] + [0] * (256 * 3 - 9)
    image.putpalette(palette)
    image.putdata([0, 1, 2])
    data = encode(image, "PNG")
    with Image.open(io.BytesIO(data)) as reread:
        assert reread.mode == "P"
    decoded = decode_slice(data)
    assert_valid_slice(decoded)
    np.testing.assert_allclose(decoded.pixels, [[0.0, 1.0, 0.587]], atol=0.5 / 255)  # integer luma


def test_png_one_bit():
    bits = np.zeros((4, 8), dtype=bool)
    bits[:, 4:] = True
    image = Image.fromarray(bits)
    assert image.mode == "1"
    data = encode(image, "PNG")
    with Image.open(io.BytesIO(data)) as reread:
        assert reread.mode == "1"
    decoded = decode_slice(data)
    assert_valid_slice(decoded)
    np.testing.assert_array_equal(decoded.pixels, bits.astype(np.float32))


def test_jpeg_grey():
    pixels = np.full((32, 32), 40, dtype=np.uint8)
    pixels[:, 16:] = 210
    decoded = decode_slice(encode(Image.fromarray(pixels), "JPEG", quality=95), "a.jpg")
    assert_valid_slice(decoded)
    assert decoded.source_format == "JPEG"
    assert decoded.pixels.shape == (32, 32)
    assert abs(decoded.pixels[:, :12].mean() - 40 / 255) < 0.02
    assert abs(decoded.pixels[:, 20:].mean() - 210 / 255) < 0.02


def test_jpeg_rgb():
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[:, :16] = (255, 0, 0)
    rgb[:, 16:] = (255, 255, 255)
    decoded = decode_slice(encode(Image.fromarray(rgb), "JPEG", quality=95))
    assert_valid_slice(decoded)
    assert abs(decoded.pixels[:, :12].mean() - 0.299) < 0.03
    assert abs(decoded.pixels[:, 20:].mean() - 1.0) < 0.02


def test_jpeg_cmyk():
    image = Image.new("CMYK", (32, 32), (0, 0, 0, 0))  # white
    image.paste((0, 0, 0, 255), (0, 0, 16, 32))  # black on the left
    data = encode(image, "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as reread:
        assert reread.mode == "CMYK"
    decoded = decode_slice(data)
    assert_valid_slice(decoded)
    assert decoded.pixels[:, :12].mean() < 0.05
    assert decoded.pixels[:, 20:].mean() > 0.95


def test_bmp():
    pixels = grey_ramp()
    decoded = decode_slice(encode(Image.fromarray(pixels), "BMP"), "a.bmp")
    assert_valid_slice(decoded)
    assert decoded.source_format == "BMP"
    np.testing.assert_allclose(decoded.pixels, pixels / 255.0, atol=1e-6)


def test_tiff_8bit():
    pixels = grey_ramp()
    decoded = decode_slice(encode(Image.fromarray(pixels), "TIFF"), "a.tif")
    assert_valid_slice(decoded)
    assert decoded.source_format == "TIFF"
    np.testing.assert_allclose(decoded.pixels, pixels / 255.0, atol=1e-6)


def test_tiff_16bit_is_min_max_stretched():
    values = np.array([[0, 500], [1000, 250]], dtype=np.uint16) + 20000
    decoded = decode_slice(encode(Image.fromarray(values), "TIFF"))
    assert_valid_slice(decoded)
    np.testing.assert_allclose(decoded.pixels, [[0.0, 0.5], [1.0, 0.25]], atol=1e-6)


def test_tiff_float_with_nan_stays_finite():
    values = np.array([[0.0, 2.0], [np.nan, 4.0]], dtype=np.float32)
    decoded = decode_slice(encode(Image.fromarray(values, mode="F"), "TIFF"))
    assert_valid_slice(decoded)
    np.testing.assert_allclose(decoded.pixels, [[0.0, 0.5], [0.0, 1.0]], atol=1e-6)


def test_tiff_float_with_extreme_range_stays_finite():
    values = np.array([[-3e38, 3e38], [0.0, 1.0]], dtype=np.float32)
    decoded = decode_slice(encode(Image.fromarray(values), "TIFF"))
    assert_valid_slice(decoded)
    np.testing.assert_allclose(decoded.pixels, [[0.0, 1.0], [0.5, 0.5]], atol=1e-6)


def png(pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(pixels), "PNG")


def test_colour_fraction_is_measured_by_the_one_decode():
    grey = np.random.default_rng(3).integers(0, 256, (60, 80), dtype=np.uint8)
    assert decode_slice(png(grey)).colour_fraction == 0.0
    assert decode_slice(png(np.stack([grey] * 3, axis=-1))).colour_fraction == 0.0  # RGB, grey
    yy, xx = np.mgrid[0:300, 0:400]
    gradient = np.stack([255 * xx / 400, 255 * yy / 300, 150 * (1 - xx / 400) + 60], axis=-1)
    assert decode_slice(png(gradient.astype(np.uint8))).colour_fraction > 0.9
    annotated = np.stack([grey] * 3, axis=-1)
    annotated[:4, :20] = (255, 0, 0)  # a small red label: under 2% of the pixels
    assert 0 < decode_slice(png(annotated)).colour_fraction < 0.05
    transparent = np.zeros((60, 80, 4), dtype=np.uint8)
    transparent[..., 0] = 255  # red, but fully transparent
    assert decode_slice(png(transparent)).colour_fraction == 0.0
    jpeg = encode(Image.fromarray(np.stack([grey] * 3, axis=-1)), "JPEG", quality=70)
    assert decode_slice(jpeg).colour_fraction < 0.05
    palette = Image.fromarray(gradient.astype(np.uint8)).convert("P")
    assert decode_slice(encode(palette, "PNG")).colour_fraction > 0.9
    dicom = decode_slice(ct_dicom_bytes(np.full((16, 16), 1000, np.int16)))
    assert dicom.colour_fraction == 0.0


def test_a_large_colour_jpeg_keeps_its_colour_through_the_reduced_decode():
    yy, xx = np.mgrid[0:2400, 0:3200]
    gradient = np.stack([255 * xx / 3200, 255 * yy / 2400, np.full(xx.shape, 90)], axis=-1)
    decoded = decode_slice(encode(Image.fromarray(gradient.astype(np.uint8)), "JPEG"))
    assert decoded.pixels.shape == (768, 1024)  # decoded at a fraction, then reduced
    assert decoded.colour_fraction > 0.9


# ---------------------------------------------------------------------------- DICOM


def stored_for(hu: np.ndarray, slope: float = 2.0, intercept: float = -1024.0) -> np.ndarray:
    stored = (np.asarray(hu, dtype=float) - intercept) / slope
    assert np.all(stored == np.round(stored)), "pick HU values the slope can represent"
    return stored.astype(np.int16)


HU = np.array([[-1350, 150, -600], [-2000, 1000, -1200]])


def test_dicom_lung_window_uses_rescale_slope_and_intercept():
    data = ct_dicom_bytes(stored_for(HU), slope="2", intercept="-1024")
    decoded = decode_slice(data, "slice.dcm")
    assert_valid_slice(decoded)
    assert decoded.source_format == "DICOM"
    # lung window: [-1350, 150] HU -> [0, 1]; outside is clipped
    np.testing.assert_allclose(decoded.pixels, [[0.0, 1.0, 0.5], [0.0, 1.0, 0.1]], atol=1e-6)


def test_dicom_is_recognised_by_preamble_without_a_name():
    data = ct_dicom_bytes(stored_for(HU))
    assert data[128:132] == b"DICM"
    assert decode_slice(data).source_format == "DICOM"
    assert decode_slice(data, "renamed.png").source_format == "DICOM"


def test_dicom_custom_window():
    hu = np.array([[-160, 240, 40, -1000]])
    decoded = decode_slice(
        ct_dicom_bytes(stored_for(hu, slope=1.0), slope="1"), window=Window(width=400, level=40)
    )
    np.testing.assert_allclose(decoded.pixels, [[0.0, 1.0, 0.5, 0.0]], atol=1e-6)


def test_window_apply_directly():
    out = LUNG_WINDOW.apply(np.array([-1350.0, -600.0, 150.0, -5000.0, 5000.0]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0, 0.0, 1.0], atol=1e-6)


def test_mediastinum_preset_centres_soft_tissue():
    out = MEDIASTINUM_WINDOW.apply(np.array([-125.0, 50.0, 225.0]))
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0], atol=1e-6)


def test_dicom_monochrome1_with_rescale_tags_is_not_inverted():
    hu = np.array([[-1350, 150, -600, -1200]])
    normal = decode_slice(ct_dicom_bytes(stored_for(hu), slope="2"))
    monochrome1 = decode_slice(ct_dicom_bytes(stored_for(hu), slope="2", photometric="MONOCHROME1"))
    np.testing.assert_allclose(normal.pixels, [[0.0, 1.0, 0.5, 0.1]], atol=1e-6)
    # Rescaled values are HU whatever the photometric interpretation (display only), so air
    # stays black; without rescale tags, see tests/test_hostile_slices.py.
    np.testing.assert_array_equal(monochrome1.pixels, normal.pixels)


def test_dicom_tags_are_safe_and_groups_hold_a_digest_of_patient_id():
    decoded = decode_slice(ct_dicom_bytes(stored_for(HU), slope="2"))
    tags = decoded.dicom_tags
    assert tags["Modality"] == "CT"
    assert tags["Manufacturer"] == "ACME Imaging"
    assert tags["Rows"] == "2"
    assert tags["Columns"] == "3"
    assert tags["ConvolutionKernel"] == "LUNG"
    assert set(tags) <= set(SAFE_DICOM_TAGS)
    for forbidden in ("PatientName", "PatientID", "PatientBirthDate"):
        assert forbidden not in tags
    flat = " ".join(tags.values())
    for value in (PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE, "Doe"):
        assert value not in flat
    digest = decoded.dicom_groups["PatientID"]  # keyed, never the ID itself
    assert PATIENT_ID not in digest
    again = decode_slice(ct_dicom_bytes(stored_for(HU[:, ::-1]), slope="2"))
    assert again.dicom_groups["PatientID"] == digest  # the same patient, the same digest
    assert "StudyInstanceUID" in decoded.dicom_groups
    assert "PatientName" not in decoded.dicom_groups


def test_dicom_without_patient_id_has_only_study_group():
    decoded = decode_slice(ct_dicom_bytes(stored_for(HU), patient_id=None))
    assert "PatientID" not in decoded.dicom_groups
    assert decoded.dicom_groups["StudyInstanceUID"]


def test_dicom_missing_rescale_tags_default_to_identity():
    data = ct_dicom_bytes(np.array([[-1350, 150]], dtype=np.int16), slope="", intercept="")
    np.testing.assert_allclose(decode_slice(data).pixels, [[0.0, 1.0]], atol=1e-6)


def test_dicom_without_pixel_data():
    with pytest.raises(DicomError, match="no image"):
        decode_slice(ct_dicom_bytes(None), "report.dcm")


def test_dicom_multi_frame():
    volume = np.zeros((3, 4, 4), dtype=np.int16)
    with pytest.raises(MultiFrameError, match="3 frames"):
        decode_slice(ct_dicom_bytes(volume, frames=3))


def test_dicom_compressed_pixel_data_that_cannot_be_decoded():
    data = ct_dicom_bytes(np.zeros((4, 4), np.int16), compressed_garbage=True)
    with pytest.raises(DicomError, match="JPEG 2000") as caught:
        decode_slice(data)
    assert "uncompressed" in str(caught.value)


def test_dicom_rescale_slope_zero_is_refused():
    with pytest.raises(DicomError, match="slope"):
        decode_slice(ct_dicom_bytes(stored_for(HU), slope="0"))


def test_dicom_rescale_slope_not_a_number_is_refused():
    marker = b"9.87654321"
    data = ct_dicom_bytes(stored_for(HU), slope=marker.decode())
    assert data.count(marker) == 1
    data = data.replace(marker, b"abcdefghij")  # same length: the file stays well formed
    with pytest.raises(DicomError, match="not a number"):
        decode_slice(data)


@pytest.mark.parametrize(
    ("slope", "intercept", "photometric"),
    [
        ("1", "9e99", "MONOCHROME1"),
        ("1e38", "0", "MONOCHROME1"),
        ("1e300", "-1e300", "MONOCHROME2"),
    ],
)
def test_dicom_rescale_overflow_is_refused_not_nan(slope, intercept, photometric):
    data = ct_dicom_bytes(
        np.array([[-5, 5]], np.int16), slope=slope, intercept=intercept, photometric=photometric
    )
    with pytest.raises(DicomError, match="outside any CT range"):
        decode_slice(data)


def test_dicom_name_on_garbage_is_a_dicom_error():
    with pytest.raises(DicomError):
        decode_slice(b"this is not dicom at all" * 10, "scan.dcm")


# ---------------------------------------------------------------------------- refusals


def test_empty_bytes():
    with pytest.raises(EmptyFileError, match="empty"):
        decode_slice(b"", "x.png")


def test_text_named_png():
    with pytest.raises(NotAnImageError, match="not an image"):
        decode_slice(b"hello, this is a note and not a picture\n" * 20, "note.png")


def test_truncated_png():
    data = noise_png()
    with pytest.raises(TruncatedImageError, match="truncated"):
        decode_slice(data[: len(data) // 2], "cut.png")


def test_truncated_jpeg():
    rng = np.random.default_rng(1)
    data = encode(Image.fromarray(rng.integers(0, 256, (96, 96), dtype=np.uint8)), "JPEG")
    with pytest.raises(TruncatedImageError, match="truncated"):
        decode_slice(data[: len(data) // 2], "cut.jpg")


def test_png_declaring_50000_squared_is_too_large():
    data = png_declaring(50_000, 50_000)
    assert len(data) < 200
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_slice(data, "bomb.png")


def test_png_just_over_the_pixel_cap_is_too_large():
    data = png_declaring(6_000, 5_000)  # 30 MP: between the cap and Pillow's own 2x limit
    with pytest.raises(ImageTooLargeError):
        decode_slice(data)


def test_file_over_byte_cap_is_refused(monkeypatch):
    monkeypatch.setattr(limits, "MAX_FILE_BYTES", 100)
    with pytest.raises(ImageTooLargeError, match="MB"):
        decode_slice(encode(Image.fromarray(grey_ramp(32, 32)), "BMP"))


def test_animated_gif_is_multi_frame():
    frames = [Image.fromarray(np.full((8, 8), value, np.uint8)) for value in (0, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    with pytest.raises(MultiFrameError, match="2 frames"):
        decode_slice(buffer.getvalue(), "anim.gif")


def test_single_frame_gif_is_fine():
    decoded = decode_slice(encode(Image.fromarray(grey_ramp()), "GIF"), "still.gif")
    assert_valid_slice(decoded)
    assert decoded.source_format == "GIF"


def test_every_error_is_a_slice_error_and_a_value_error():
    for error in (
        EmptyFileError,
        NotAnImageError,
        TruncatedImageError,
        ImageTooLargeError,
        MultiFrameError,
        DicomError,
    ):
        assert issubclass(error, SliceError)
    assert issubclass(SliceError, ValueError)


# ---------------------------------------------------------------------------- model input


def test_to_model_input_shape_dtype_range():
    rng = np.random.default_rng(0)
    pixels = rng.random((30, 50)).astype(np.float32)
    for size, channels in ((16, 1), (64, 1), (32, 3)):
        out = to_model_input(pixels, size, channels)
        assert out.shape == (size, size, channels)
        assert out.dtype == np.float32
        assert out.min() >= 0.0
        assert out.max() <= 1.0


def test_to_model_input_keeps_aspect_and_pads_with_edge_median():
    wide = np.full((40, 80), 0.2, dtype=np.float32)  # background 0.2 on every edge
    wide[10:30, 5:35] = 1.0  # a bright block in the left half
    out = to_model_input(wide, 40, body_crop=False)[..., 0]  # 80x80 canvas shrunk by 2
    # padding rows above and below are the edge median, not black
    np.testing.assert_allclose(out[:10], 0.2, atol=1e-6)
    np.testing.assert_allclose(out[30:], 0.2, atol=1e-6)
    # the block lands at rows (20+10)/2..(20+30)/2 and columns 5/2..35/2, undistorted
    assert np.all(out[16:24, 4:16] > 0.95)
    np.testing.assert_allclose(out[10:30, 20:], 0.2, atol=1e-6)  # right half stays background
    bright = out > 0.6
    rows, columns = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
    assert abs(len(rows) - 10) <= 1
    assert abs(len(columns) - 15) <= 1


def test_pad_to_square_tall_image_and_edge_median():
    tall = np.zeros((6, 2), dtype=np.float32)
    tall[:, 0] = 0.9  # edge: 2 from top, 2 from bottom, 6 left (0.9), 6 right (0)
    square = pad_to_square(tall)
    assert square.shape == (6, 6)
    edge = np.concatenate([tall[0], tall[-1], tall[:, 0], tall[:, -1]])
    assert square[0, 0] == pytest.approx(float(np.median(edge)))
    np.testing.assert_array_equal(square[:, 2:4], tall)
    square_input = np.ones((3, 3), dtype=np.float32)
    assert pad_to_square(square_input) is square_input


def test_to_model_input_upsizes_a_small_slice():
    small = np.zeros((4, 4), dtype=np.float32)
    small[:, 2:] = 1.0
    out = to_model_input(small, 32)[..., 0]
    assert out.shape == (32, 32)
    assert out[:, :8].max() < 0.05
    assert out[:, 24:].min() > 0.95


def test_to_model_input_three_channels_repeat_the_grey():
    rng = np.random.default_rng(3)
    out = to_model_input(rng.random((20, 30)).astype(np.float32), 24, channels=3)
    assert out.shape == (24, 24, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert out[..., 0].std() > 0.01  # real content, not a constant


# ---------------------------------------------------------------------------- properties

FILENAMES = st.sampled_from([None, "x.png", "x.jpg", "x.tif", "x.dcm"])


def _decode_never_crashes(data: bytes, filename: str | None) -> None:
    try:
        decoded = decode_slice(data, filename)
    except SliceError as error:
        assert str(error), "a SliceError must carry a message"
    else:
        assert_valid_slice(decoded)


def _flip_bits(data: bytes, positions: list[int]) -> bytes:
    mutable = bytearray(data)
    for position in positions:
        mutable[position % (len(mutable) * 8) // 8] ^= 1 << (position % 8)
    return bytes(mutable)


PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SMALL_PNG = encode(Image.fromarray(grey_ramp(12, 12)), "PNG")
SMALL_RGBA_PNG = encode(
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (6, 6, 4), dtype=np.uint8)), "PNG"
)
SMALL_DICOM = ct_dicom_bytes(stored_for(np.array([[-1350, 150], [-600, 0]])), slope="2")


@PROPERTY_SETTINGS
@given(data=st.binary(min_size=0, max_size=600), filename=FILENAMES)
def test_random_bytes_decode_or_raise_slice_error(data, filename):
    _decode_never_crashes(data, filename)


@PROPERTY_SETTINGS
@given(
    data=st.binary(min_size=0, max_size=300),
    magic=st.sampled_from(
        [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*"]
    ),
)
def test_random_bytes_after_a_magic_number(data, magic):
    _decode_never_crashes(magic + data, None)


@PROPERTY_SETTINGS
@given(
    source=st.sampled_from([SMALL_PNG, SMALL_RGBA_PNG]),
    flips=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=8),
)
def test_png_with_bit_flips_decodes_or_raises_slice_error(source, flips):
    _decode_never_crashes(_flip_bits(source, flips), "flipped.png")


@PROPERTY_SETTINGS
@given(flips=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=8))
def test_dicom_with_bit_flips_decodes_or_raises_slice_error(flips):
    _decode_never_crashes(_flip_bits(SMALL_DICOM, flips), "flipped.dcm")
