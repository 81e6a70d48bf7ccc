"""The worst single upload of each kind, run in a fresh process that reports its own peak memory.

    python tests/memory_budget.py KIND HOME      # prints one JSON line

Each kind builds the largest or most hostile input a visitor can send within the app's caps and
passes it through the same library calls the page makes. The process first imports what that
path needs (and loads the model, where one is used), reads its resident size, then runs the
case and reads its peak resident size (VmHWM, /proc/self/status: the process's own high-water
mark, unlike rusage, which a child inherits from a large parent across exec; it is reset with
/proc/self/clear_refs once the inputs are built, so building them is not counted). Growth is
the peak minus the resident size before the case: what this one upload cost the server.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
UPLOAD_BYTES = 50 * 2**20
"""`server.maxUploadSize` in .streamlit/config.toml: no upload is larger."""


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def png(width: int, height: int, mode: str = "L") -> bytes:
    """A real, fully decodable PNG of `width` x `height` (a flat image compresses to little)."""
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 90).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def long_strip_png(width: int) -> bytes:
    """A grey PNG one pixel high and `width` wide, written row by row (Pillow cannot hold a
    25-million-pixel-wide image as one row cheaply, so its rows are built here)."""
    header = struct.pack(">IIBBBBB", width, 1, 8, 0, 0, 0, 0)
    row = b"\0" + bytes([90]) * width  # filter byte, then the pixels

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row, 9))
        + chunk(b"IEND", b"")
    )


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def dicom(rows: int, columns: int) -> bytes:
    sys.path.insert(0, str(ROOT / "tests"))
    from dicom_factory import ct_dicom_bytes

    stored = np.zeros((rows, columns), dtype=np.int16)
    stored[::7, ::5] = 2000
    return ct_dicom_bytes(stored)


def deflated_dicom(inflated_bytes: int) -> bytes:
    """A DICOM in the Deflated Explicit VR Little Endian syntax whose dataset inflates to about
    `inflated_bytes`: its pixel data is zeros, which deflate to a thousandth of their size."""
    sys.path.insert(0, str(ROOT / "tests"))
    from dicom_factory import ct_dicom_bytes

    plain = ct_dicom_bytes(np.zeros((4, 4), dtype=np.int16))
    meta_end = _meta_end(plain)
    dataset = plain[meta_end:]
    pixel_tag = b"\xe0\x7f\x10\x00"
    head = dataset[: dataset.index(pixel_tag)]
    length = inflated_bytes - inflated_bytes % 2
    element = pixel_tag + b"OW\0\0" + struct.pack("<I", length)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [packer.compress(head + element)]
    zeros = bytes(1 << 20)
    for _ in range(length // len(zeros)):
        body.append(packer.compress(zeros))
    body.append(packer.compress(bytes(length % len(zeros))))
    body.append(packer.flush())
    meta = plain[:meta_end].replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.1.99")
    return _fix_meta_length(meta) + b"".join(body)


def _meta_end(data: bytes) -> int:
    """Where the file meta group (0002) of an explicit-VR file ends."""
    (group_length,) = struct.unpack_from("<I", data, 128 + 4 + 8)
    return 128 + 4 + 12 + group_length


def _fix_meta_length(meta: bytes) -> bytes:
    """The syntax UID grew by two bytes (one padding byte became ".99" less the pad): the UID
    element and the group length must say so."""
    uid = b"1.2.840.10008.1.2.1.99"
    at = meta.index(uid) - 8  # tag (4), VR (2), length (2)
    meta = meta[: at + 6] + struct.pack("<H", len(uid)) + meta[at + 8 :]
    group_length = len(meta) - (128 + 4 + 12)
    return meta[: 128 + 4 + 8] + struct.pack("<I", group_length) + meta[128 + 4 + 12 :]


def _empty_hdf5() -> bytes:
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w"):
        pass
    return buffer.getvalue()


# ------------------------------------------------------------------------------- the cases


def case_slice() -> Callable[[], str]:
    """The largest PNG a visitor may upload (25 megapixels) and two strips within that cap."""
    from ctdemo.io.decoded import SliceError
    from ctdemo.io.slices import decode_slice, to_model_input

    files = [png(5000, 5000), png(30000, 833), long_strip_png(25_000_000)]

    def run() -> str:
        outcomes = []
        for data in files:
            try:
                to_model_input(decode_slice(data, "slice.png").pixels, 128)
                outcomes.append("ok")
            except SliceError:
                outcomes.append("refused")
        return ",".join(outcomes)

    return run


def case_batch() -> Callable[[], str]:
    """Classify's largest batch: 40 uploads of 25 megapixels each, decoded and predicted."""
    from ctdemo.app import classify
    from ctdemo.models.saving import load_model

    data = png(5000, 5000)
    files = [(f"slice-{index}.png", data) for index in range(classify.MAX_FILES)]
    model, card = load_model(ROOT / "weights" / "cnn.keras")

    def run() -> str:
        results = classify.decode_files(files)
        classify.predict(results, model, card)
        return f"{sum(result.ok for result in results)} of {len(results)} classified"

    return run


def case_dicom() -> Callable[[], str]:
    """A 25-megapixel DICOM slice, and one whose deflated dataset inflates to 1 GiB."""
    from ctdemo.io.decoded import SliceError
    from ctdemo.io.slices import decode_slice, to_model_input

    files = [dicom(5000, 5000), deflated_dicom(2**30)]

    def run() -> str:
        outcomes = []
        for data in files:
            try:
                to_model_input(decode_slice(data, "slice.dcm").pixels, 128)
                outcomes.append("ok")
            except SliceError:
                outcomes.append("refused")
        return ",".join(outcomes)

    return run


def case_zip() -> Callable[[], str]:
    """A training zip of 1,000 identical 5000 x 5000 PNGs, imported and decoded as Train does."""
    from ctdemo.io.folders import DatasetError, load_arrays
    from ctdemo.io.uploads import import_zip_dataset

    image = png(5000, 5000)
    names = {f"{c}/{c} ({i}).png": image for c in ("COVID", "non-COVID") for i in range(500)}
    data = zip_of(names)
    assert len(data) < UPLOAD_BYTES

    def run() -> str:
        try:
            folder = import_zip_dataset(data, "memory-budget")
            dataset = load_arrays(folder, 96)
        except (DatasetError, ValueError) as error:
            return f"refused: {error}"
        return f"{len(dataset)} slices"

    return run


def case_model() -> Callable[[], str]:
    """A bring-your-own model, small on disk, whose graph is 60,000 layers (Keras took 141 s
    to load one): a Sequential of ReLUs, 3 MB of JSON, 0.1 MB zipped."""
    from ctdemo.models.uploaded.load import read_uploaded_model

    layers = [
        {
            "module": "keras.layers",
            "class_name": "InputLayer",
            "config": {"batch_shape": [None, 64, 64, 1], "dtype": "float32", "name": "input"},
            "registered_name": None,
        }
    ]
    layers += [
        {"module": "keras.layers", "class_name": "ReLU", "config": {"name": f"r{index}"},
         "registered_name": None}
        for index in range(60_000)
    ]  # fmt: skip
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {"name": "deep", "layers": layers, "build_input_shape": [None, 64, 64, 1]},
        "registered_name": None,
        "build_config": {"input_shape": [None, 64, 64, 1]},
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("metadata.json", json.dumps({"keras_version": "3.8.0"}))
        bundle.writestr("config.json", json.dumps(config))
        bundle.writestr("model.weights.h5", _empty_hdf5())
    data = buffer.getvalue()

    def run() -> str:
        try:
            read_uploaded_model(data, "deep.keras")
        except ValueError as error:
            return f"refused: {error}"
        return "loaded"

    return run


def case_settings() -> Callable[[], str]:
    """A shared Train link at the largest settings: what the page does before Start."""
    from ctdemo.app import train_settings
    from ctdemo.models import training_cost

    query = {
        "arch": "cnn",
        "size": "96",
        "layers": "1024,1024,1024,1024,1024",
        "dense": "1024,1024,1024,1024,1024",
        "members": "5",
        "batch": "128",
        "epochs": "60",
    }

    def run() -> str:
        settings = train_settings.from_query(query)
        cost = training_cost.estimate(settings.config(), 1971, 2, settings.val)  # full data
        try:
            training_cost.check_cost(cost, training_cost.SHARED_SERVER)
        except training_cost.TooCostly as error:
            return f"refused: {error}"
        return "accepted"

    return run


CASES = {
    "slice": case_slice,
    "batch": case_batch,
    "dicom": case_dicom,
    "zip": case_zip,
    "model": case_model,
    "settings": case_settings,
}


def main(kind: str, home: str) -> None:
    os.environ["CTDEMO_HOME"] = home
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    run = CASES[kind]()  # imports and builds inputs outside the measured part
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the resident size now
    before = _status_mb("VmRSS")
    started = time.perf_counter()
    outcome = run()
    seconds = time.perf_counter() - started
    peak = _status_mb("VmHWM")
    print(
        json.dumps(
            {
                "kind": kind,
                "outcome": outcome,
                "rss_before_mb": round(before, 1),
                "peak_mb": round(peak, 1),
                "growth_mb": round(peak - before, 1),
                "seconds": round(seconds, 2),
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
