"""A corpus of hostile inputs, generated in memory: bad CT slice files and bad dataset zips.

Every entry says what must happen to it: a typed error whose message matches, or a correct
result. `tests/test_hostile_corpus.py` pushes the whole corpus through every entry point (the
library, the CLI, the Classify and Train pages). Nothing here touches the disk and everything is
deterministic (fixed seeds); the corpus is built once per process.

    PYTHONPATH=.:tests python -m hostile_corpus   # run the library over it: outcomes, memory
"""

from __future__ import annotations

import functools
import io
import itertools
import stat
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from unittest import mock

import numpy as np
from PIL import Image

from ctdemo.io.archives import ArchiveError
from ctdemo.io.decoded import (
    DicomError,
    EmptyFileError,
    ImageTooLargeError,
    MultiFrameError,
    NotAnImageError,
    SliceError,
    TruncatedImageError,
)
from ctdemo.io.folders import DatasetError

import dicom_factory

ESCAPE_TOKEN = "ctdemo-hostile-escape"
"""In the name of every file a zip tries to write outside its folder: search for it after."""

OK, ERROR, EITHER = "ok", "error", "either"


@dataclass(frozen=True)
class SliceCase:
    """One file offered as a CT slice.

    outcome: "ok" (decodes to `pixels`, within `atol`), "error" (raises `error` with a message
    matching the regex `match`, case-insensitive) or "either" (damaged data with no checksum,
    e.g. a bit-flipped JPEG: a valid slice of what is there, or a `SliceError`; nothing else).
    """

    name: str
    filename: str
    data: bytes = field(repr=False)
    outcome: str
    error: type[SliceError] | None = None
    match: str = ""
    pixels: np.ndarray | None = field(default=None, repr=False)
    atol: float = 1e-6


@dataclass(frozen=True)
class ZipCase:
    """One zip offered as a dataset; what the Train page does with it is the pipeline
    `import_zip_dataset` then `load_arrays`.

    outcome "error": `error` (ArchiveError or DatasetError) matching `match`, raised at `stage`
    ("import" or "decode"). outcome "ok": the decoded dataset has `counts` slices per class,
    and `skipped` lists the files that must be skipped (the rest of `skipped_any` may be)."""

    name: str
    filename: str
    data: bytes = field(repr=False)
    outcome: str
    error: type[Exception] | None = None
    match: str = ""
    stage: str = "import"
    counts: dict[str, int] | None = None
    skipped: frozenset[str] = frozenset()
    skipped_any: frozenset[str] = frozenset()


# ---------------------------------------------------------------------------- building blocks


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def grey_ramp(height: int = 16, width: int = 24) -> np.ndarray:
    """uint8 bands of 0, 64, 128, 255 from left to right."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    for value, columns in zip((0, 64, 128, 255), np.array_split(np.arange(width), 4), strict=True):
        pixels[:, columns] = value
    return pixels


def noise(size: int = 96, seed: int = 0) -> np.ndarray:
    """Pixels that do not compress: cutting their file leaves the pixel data broken."""
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def flip_bits(data: bytes, seed: int, count: int = 8, skip: int = 16) -> bytes:
    """`count` bits flipped at positions drawn with `seed`, past the first `skip` bytes (the
    magic number stays, so the file still claims its format)."""
    positions = np.random.default_rng(seed).integers(skip * 8, len(data) * 8, count)
    mutable = bytearray(data)
    for position in positions:
        mutable[position // 8] ^= 1 << (position % 8)
    return bytes(mutable)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header (IHDR with its CRC) declaring width x height 8-bit grey pixels, with
    a tiny IDAT: a decompression bomb that costs nothing to build."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF whose screen and one image declare width x height, with a one-code stub."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x4c\x01\x00"
    return screen + image + b";"


def tiff_declaring(width: int, height: int) -> bytes:
    """A small grey TIFF with its ImageWidth and ImageLength tags rewritten."""
    data = bytearray(encode(Image.new("L", (8, 8)), "TIFF"))
    assert data[:4] == b"II*\x00"
    (ifd,) = struct.unpack_from("<I", data, 4)
    (entries,) = struct.unpack_from("<H", data, ifd)
    for index in range(entries):
        at = ifd + 2 + 12 * index
        tag, _kind = struct.unpack_from("<HH", data, at)
        if tag in (256, 257):
            value = width if tag == 256 else height
            struct.pack_into("<HHII", data, at, tag, 4, 1, value)  # as a LONG
    return bytes(data)


def multi_frame(format: str, frames: int = 2) -> bytes:
    images = [Image.fromarray(np.full((8, 8), 40 * i, np.uint8)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format=format, save_all=True, append_images=images[1:])
    return buffer.getvalue()


ELF_HEADER = (
    b"\x7fELF\x02\x01\x01\x00" + b"\0" * 8 + struct.pack("<HHI", 2, 0x3E, 1) + b"\0" * 40
) * 4
"""The start of an x86-64 Linux executable."""

PE_HEADER = b"MZ\x90\x00" + b"\0" * 56 + struct.pack("<I", 64) + b"PE\0\0\x64\x86" + b"\0" * 200
"""The start of a Windows executable (MZ stub, then the PE signature)."""


def hounsfield_dicom() -> tuple[bytes, np.ndarray]:
    """A DICOM CT slice whose lung-window result is known exactly."""
    hu = np.array([[-1350, 150, -600], [-2000, 1000, -1200]])
    expected = np.array([[0.0, 1.0, 0.5], [0.0, 1.0, 0.1]], dtype=np.float32)
    return _dicom(stored=(hu + 1024).astype(np.int16), slope="1", intercept="-1024"), expected


def _dicom(**options) -> bytes:
    """`dicom_factory.ct_dicom_bytes` with UIDs numbered from a fixed root, not random."""
    numbers = itertools.count(1)
    uids = lambda: f"1.2.826.0.1.3680043.8.498.99.{next(numbers)}"  # noqa: E731
    with warnings.catch_warnings(), mock.patch.object(dicom_factory, "generate_uid", uids):
        warnings.simplefilter("ignore")  # pydicom warns when it writes a value like "NaN"
        return dicom_factory.ct_dicom_bytes(**options)


# ---------------------------------------------------------------------------- slices


@functools.cache
def slice_corpus() -> tuple[SliceCase, ...]:
    """About 30 files: two good controls, then every kind of bad slice the issue lists."""
    ramp = grey_ramp()
    dicom, dicom_expected = hounsfield_dicom()
    noise_png = encode(Image.fromarray(noise()), "PNG")
    noise_jpeg = encode(Image.fromarray(noise(seed=1)), "JPEG", quality=90)
    noise_tiff = encode(Image.fromarray(noise(seed=2)), "TIFF")
    smooth = (np.add.outer(np.arange(64), np.arange(64)) * 2).astype(np.uint8)
    deflate_tiff = encode(Image.fromarray(smooth), "TIFF", compression="tiff_deflate")

    sixteen = np.array([[1000, 2000, 3000, 5000]] * 3, dtype=np.uint16)
    palette = Image.new("P", (4, 2))
    palette.putpalette([0, 0, 0, 255, 255, 255, 0, 255, 0, 255, 0, 0] + [0] * (252 * 3))
    palette.putdata([0, 1, 2, 3] * 2)
    cmyk = Image.new("CMYK", (32, 32), (0, 0, 0, 0))  # white; black on the left half
    cmyk.paste((0, 0, 0, 255), (0, 0, 16, 32))
    cmyk_expected = np.ones((32, 32), np.float32)
    cmyk_expected[:, :16] = 0.0
    zero_slope = np.zeros((4, 4), np.int16)

    def error(name, filename, data, kind, match):
        return SliceCase(name, filename, data, ERROR, kind, match)

    def ok(name, filename, data, pixels, atol=1e-6):
        return SliceCase(name, filename, data, OK, pixels=pixels, atol=atol)

    cases = [
        ok("control-png", "control.png", encode(Image.fromarray(ramp), "PNG"), ramp / 255.0),
        ok("control-dicom", "control.dcm", dicom, dicom_expected),
        error("truncated-png", "truncated.png", noise_png[: len(noise_png) // 2],
              TruncatedImageError, "truncated"),
        error("truncated-png-header", "cut-header.png", noise_png[:20],
              NotAnImageError, "could not be read"),
        error("truncated-jpeg", "truncated.jpg", noise_jpeg[: len(noise_jpeg) // 2],
              TruncatedImageError, "truncated"),
        error("truncated-tiff", "truncated.tif", noise_tiff[: len(noise_tiff) // 2],
              TruncatedImageError, "truncated"),
        # PNG chunks carry CRCs: any flip is caught.
        error("bitflip-png", "bitflip.png", flip_bits(noise_png, seed=1),
              SliceError, "could not be (decoded|read)|truncated|damaged"),
        error("bitflip-tiff-deflate", "bitflip-deflate.tif", flip_bits(deflate_tiff, seed=5),
              SliceError, "could not be (decoded|read)|not an image|truncated"),
        # JPEG and uncompressed TIFF carry no checksum: a flip may give a valid, damaged slice.
        SliceCase("bitflip-jpeg", "bitflip.jpg", flip_bits(noise_jpeg, seed=3), EITHER),
        SliceCase("bitflip-tiff", "bitflip.tif", flip_bits(noise_tiff, seed=4), EITHER),
        error("zero-byte", "empty.png", b"", EmptyFileError, "empty"),
        error("text-named-png", "notes.png", b"Notes from the ward round, not a scan.\n" * 20,
              NotAnImageError, "not an image"),
        error("elf-named-jpg", "program.jpg", ELF_HEADER, NotAnImageError, "not an image"),
        error("pe-named-jpg", "setup.jpg", PE_HEADER, NotAnImageError, "not an image"),
        error("text-named-dcm", "report.dcm", b"Impression: no acute findings.\n" * 10,
              DicomError, "DICOM"),
        error("bomb-png-50000x50000", "bomb.png", png_declaring(50_000, 50_000),
              ImageTooLargeError, "pixels"),
        error("bomb-gif-65535x65535", "bomb.gif", gif_declaring(65_535, 65_535),
              ImageTooLargeError, "pixels"),
        error("bomb-tiff-100000x100000", "bomb.tif", tiff_declaring(100_000, 100_000),
              ImageTooLargeError, "pixels"),
        error("bomb-dicom-60000x60000", "bomb.dcm",
              _dicom(stored=zero_slope, extra={"Rows": 60_000, "Columns": 60_000}),
              ImageTooLargeError, "60000 x 60000"),
        ok("png-16bit", "sixteen.png", encode(Image.fromarray(sixteen), "PNG"),
           np.array([[0.0, 0.25, 0.5, 1.0]] * 3)),
        # integer ITU-R 601 luma: green 0.587, red 0.299, within half a grey level
        ok("png-palette", "palette.png", encode(palette, "PNG"),
           np.array([[0.0, 1.0, 0.587, 0.299]] * 2), atol=0.5 / 255),
        ok("jpeg-cmyk", "cmyk.jpg", encode(cmyk, "JPEG", quality=95), cmyk_expected, atol=0.02),
        error("gif-animated", "animated.gif", multi_frame("GIF"), MultiFrameError, "2 frames"),
        error("tiff-multipage", "stack.tif", multi_frame("TIFF", 3), MultiFrameError, "3 frames"),
        error("dicom-no-pixel-data", "nopixels.dcm", _dicom(stored=None),
              DicomError, "no image .*no PixelData"),
        error("dicom-jpeg2000-undecodable", "jpeg2000.dcm",
              _dicom(stored=zero_slope, compressed_garbage=True),
              DicomError, "JPEG 2000.*uncompressed"),
        error("dicom-rescale-slope-0", "slope0.dcm", _dicom(stored=zero_slope, slope="0"),
              DicomError, "rescale tags are unusable .slope 0"),
        error("dicom-rescale-slope-nan", "slopenan.dcm", _dicom(stored=zero_slope, slope="NaN"),
              DicomError, "rescale tags are unusable .slope nan"),
        error("dicom-rescale-overflow", "slope1e38.dcm",
              _dicom(stored=np.array([[-5, 5]], np.int16), slope="1e38",
                     photometric="MONOCHROME1"),
              DicomError, "outside any CT range"),
        error("dicom-multiframe-volume", "volume.dcm",
              _dicom(stored=np.zeros((3, 4, 4), np.int16), frames=3),
              MultiFrameError, "volume of 3 frames"),
    ]  # fmt: skip
    names = [case.name for case in cases]
    files = [case.filename for case in cases]
    assert len(set(names)) == len(names) and len(set(files)) == len(files)
    return tuple(cases)


# ---------------------------------------------------------------------------- zips

DEFLATE_CHUNK = 1 << 20


def zip_of(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, payload in entries.items():
            bundle.writestr(zipfile.ZipInfo(name), payload, compress_type=zipfile.ZIP_DEFLATED)
        for name, target in (symlinks or {}).items():
            link = zipfile.ZipInfo(name)
            link.external_attr = (stat.S_IFLNK | 0o777) << 16
            bundle.writestr(link, target)
    return buffer.getvalue()


@functools.cache
def _zeros_deflated(mebibytes: int) -> tuple[bytes, int]:
    """A raw deflate stream of `mebibytes` MiB of zeros, and its CRC-32, built in milliseconds
    (one MiB compressed once and repeated after a full flush) and about 1 KB per MiB."""
    chunk = bytes(DEFLATE_CHUNK)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert block == again, "a full flush should make every block alike"
    stream = block * mebibytes + compressor.flush()
    crc = 0
    for _ in range(mebibytes):
        crc = zlib.crc32(chunk, crc)
    return stream, crc


@dataclass(frozen=True)
class RawMember:
    name: str
    data: bytes  # as stored (deflated when method is 8)
    crc: int
    size: int  # the unpacked size the headers declare
    method: int = zipfile.ZIP_DEFLATED
    offset_of: str | None = None  # point the central directory at another member's data


def raw_member(name: str, payload: bytes) -> RawMember:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = compressor.compress(payload) + compressor.flush()
    return RawMember(name, data, zlib.crc32(payload), len(payload))


def raw_zip(members: list[RawMember]) -> bytes:
    """A zip written by hand, so that it can hold precompressed data, headers that lie and
    central-directory entries that share one member's data."""
    out, central, offsets = bytearray(), bytearray(), {}
    for member in members:
        if member.offset_of is None:
            offsets[member.name] = len(out)
            name = member.name.encode()
            out += struct.pack(
                "<4s5H3L2H", b"PK\x03\x04", 20, 0, member.method, 0, 33,
                member.crc, len(member.data), member.size, len(name), 0,
            )  # fmt: skip
            out += name + member.data
    for member in members:
        name = member.name.encode()
        data = member.data
        offset = offsets[member.offset_of or member.name]
        central += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, member.method, 0, 33,
            member.crc, len(data), member.size, len(name), 0, 0, 0, 0, 0, offset,
        )  # fmt: skip
        central += name
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0
    )
    return bytes(out + central + end)


def tiny_pngs(count: int = 10) -> list[bytes]:
    """Distinct, decodable 8 x 8 grey PNGs (about 70 bytes each)."""
    rng = np.random.default_rng(7)
    return [
        encode(Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)), "PNG")
        for _ in range(count)
    ]


@functools.cache
def zip_corpus() -> tuple[ZipCase, ...]:
    """Dataset zips: escapes, links, nesting, bombs, thousands of files, wrong shapes."""
    png = tiny_pngs()
    good = {
        "COVID/a.png": png[0],
        "COVID/b.png": png[1],
        "non-COVID/c.png": png[2],
        "non-COVID/d.png": png[6],
    }
    good_zip = zip_of(good)
    bomb, bomb_crc = _zeros_deflated(1024)  # 1 GiB of zeros in about 1 MB
    slab, slab_crc = _zeros_deflated(30)  # 30 MiB: under the per-file cap of 32 MiB
    kernel = raw_member("COVID/kernel.png", bytes(100_000))
    inner = zip_of({"COVID/x.png": png[3], "non-COVID/y.png": png[4]})
    bad_slices = [case for case in slice_corpus() if case.outcome != OK]
    must_skip = frozenset(f"non-COVID/{c.filename}" for c in bad_slices if c.outcome == ERROR)
    may_skip = frozenset(f"non-COVID/{c.filename}" for c in bad_slices if c.outcome == EITHER)
    tiny = {
        f"{'COVID' if n % 2 else 'non-COVID'}/slice ({n}).png": png[n % len(png)]
        for n in range(5000)
    }

    def refused(name, filename, data, kind, match, stage="import"):
        return ZipCase(name, filename, data, ERROR, kind, match, stage)

    cases = [
        ZipCase("control", "good.zip", good_zip, OK, counts={"COVID": 2, "non-COVID": 2}),
        refused("parent-path", "parent.zip",
                zip_of({**good, f"../{ESCAPE_TOKEN}-1.png": png[5]}),
                ArchiveError, "escapes its folder"),
        refused("deep-parent-path", "deep-parent.zip",
                zip_of({**good, f"non-COVID/../../../../../../{ESCAPE_TOKEN}-2.png": png[5]}),
                ArchiveError, "escapes its folder"),
        refused("backslash-parent-path", "backslash.zip",
                zip_of({**good, f"..\\..\\{ESCAPE_TOKEN}-3.png": png[5]}),
                ArchiveError, "escapes its folder"),
        refused("absolute-path", "absolute.zip",
                zip_of({**good, f"/tmp/{ESCAPE_TOKEN}-4.png": png[5]}),
                ArchiveError, "absolute path"),
        refused("windows-drive-path", "drive.zip",
                zip_of({**good, f"C:\\Users\\Public\\{ESCAPE_TOKEN}-5.png": png[5]}),
                ArchiveError, "absolute path"),
        refused("symlink-to-system-file", "symlink.zip",
                zip_of(good, symlinks={"non-COVID/passwd.png": "/etc/passwd"}),
                ArchiveError, "symbolic link"),
        refused("symlink-to-parent", "symlink-dir.zip",
                zip_of(good, symlinks={"COVID/up": "../../.."}),
                ArchiveError, "symbolic link"),
        refused("nested-zips-only", "nested.zip",
                zip_of({"data/COVID/scans.zip": inner, "data/non-COVID/scans.zip": inner}),
                DatasetError, "hold no images: COVID, non-COVID"),
        ZipCase("nested-zip-beside-images", "nested-beside.zip",
                zip_of({**good, "COVID/more.zip": inner}), OK,
                counts={"COVID": 2, "non-COVID": 2}, skipped=frozenset({"COVID/more.zip"})),
        refused("zip-bomb-1GiB", "bomb.zip",
                raw_zip([*(raw_member(n, d) for n, d in good.items()),
                         RawMember("non-COVID/zeros.png", bomb, bomb_crc, 1024 << 20)]),
                ArchiveError, "unpacks to 1024 MB"),
        refused("zip-bomb-many-members", "bomb-many.zip",
                raw_zip([*(raw_member(n, d) for n, d in good.items()),
                         *(RawMember(f"non-COVID/zeros-{i}.png", slab, slab_crc, 30 << 20)
                           for i in range(20))]),
                ArchiveError, r"unpacks to 0\.\d GB"),
        refused("zip-bomb-lying-header", "bomb-lying.zip",
                raw_zip([*(raw_member(n, d) for n, d in good.items()),
                         RawMember("non-COVID/zeros.png", bomb, bomb_crc, 1000)]),
                ArchiveError, "zip bomb|damaged"),
        refused("overlapping-entries", "overlap.zip",
                raw_zip([kernel, *(RawMember(f"non-COVID/{i}.png", kernel.data, kernel.crc,
                                             kernel.size, offset_of=kernel.name)
                                   for i in range(500))]),
                ArchiveError, "damaged"),
        ZipCase("thousands-of-tiny-files", "tiny.zip", zip_of(tiny), OK,
                counts={"COVID": 2500, "non-COVID": 2500}),
        refused("too-many-files", "too-many.zip",
                zip_of({f"{'AB'[n % 2]}/{n}.png": b"" for n in range(10_001)}),
                ArchiveError, "10,001 files; at most 10,000"),
        refused("single-class", "single.zip",
                zip_of({"COVID/a.png": png[0], "COVID/b.png": png[1]}),
                DatasetError, r"at least two\).*COVID"),
        refused("no-images", "no-images.zip",
                zip_of({"COVID/a.txt": b"x", "non-COVID/b.csv": b"y,z"}),
                DatasetError, "hold no images"),
        refused("text-named-png-in-every-class", "fake-images.zip",
                zip_of({"COVID/a.png": b"not a picture", "non-COVID/b.png": b"nor this"}),
                DatasetError, "no readable images", stage="decode"),
        ZipCase("bad-slices-inside", "bad-slices.zip",
                zip_of({**good, **{f"non-COVID/{c.filename}": c.data for c in bad_slices}}),
                OK, counts=None, skipped=must_skip, skipped_any=may_skip),
        refused("not-a-zip", "notes.zip", b"These are my notes, not an archive.\n" * 8,
                ArchiveError, "not a zip"),
        refused("png-named-zip", "image.zip", png[0], ArchiveError, "not a zip"),
        refused("zero-byte-zip", "empty.zip", b"", ArchiveError, "empty"),
        refused("empty-archive", "no-entries.zip", zip_of({}), ArchiveError, "archive is empty"),
        refused("truncated-zip", "truncated.zip", good_zip[: len(good_zip) // 2],
                ArchiveError, "not a zip archive, or it is damaged"),
    ]  # fmt: skip
    names = [case.name for case in cases]
    assert len(set(names)) == len(names)
    return tuple(cases)


# ---------------------------------------------------------------------------- a run by hand


def run_library_corpus(home) -> dict:
    """Decode every slice and import (then decode at 24 px) every zip under `home`; returns
    the outcome of each and the process's memory growth: its peak resident size at the end
    less its resident size before the first input (an over-estimate when building the corpus
    peaked higher). Call it in a fresh process: the peak only ever grows."""
    import os
    import tracemalloc

    from ctdemo.io.folders import load_arrays
    from ctdemo.io.slices import decode_slice
    from ctdemo.io.uploads import import_zip_dataset

    os.environ["CTDEMO_HOME"] = str(home)
    slices, zips = slice_corpus(), zip_corpus()
    decode_slice(slices[0].data)  # imports settle before the baseline
    baseline = _resident_kib()  # now, not the peak: building the corpus may have peaked higher
    tracemalloc.start()
    outcomes = {}
    for case in slices:
        try:
            decode_slice(case.data, case.filename)
            outcomes[f"slice:{case.name}"] = "ok"
        except SliceError as error:
            outcomes[f"slice:{case.name}"] = f"{type(error).__name__}: {error}"
    for case in zips:
        try:
            load_arrays(import_zip_dataset(case.data, "memory-" + case.name), 24)
            outcomes[f"zip:{case.name}"] = "ok"
        except (ArchiveError, DatasetError) as error:
            outcomes[f"zip:{case.name}"] = f"{type(error).__name__}: {error}"
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = _peak_resident_kib()
    return {
        "inputs": len(slices) + len(zips),
        "rss_growth_mb": (peak - baseline) / 1024,
        "traced_peak_mb": traced_peak / 2**20,
        "outcomes": outcomes,
    }


def _resident_kib() -> int:
    """The process's resident size now (Linux), else its peak so far."""
    return _proc_status_kib("VmRSS:")


def _peak_resident_kib() -> int:
    """The process's peak resident size (Linux: VmHWM, which starts afresh at exec; the
    rusage peak does not: a child of a 1 GB pytest process reports 1 GB from the start)."""
    return _proc_status_kib("VmHWM:")


def _proc_status_kib(field: str) -> int:
    import resource

    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        report = run_library_corpus(scratch)
    if "--json" in sys.argv:
        print(json.dumps(report))
    else:
        for key, outcome in report["outcomes"].items():
            print(f"{key:42} {outcome[:110]}")
        print(
            f"{report['inputs']} inputs; peak RSS growth {report['rss_growth_mb']:.1f} MB, "
            f"traced peak {report['traced_peak_mb']:.1f} MB"
        )
