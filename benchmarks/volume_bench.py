"""How fast a whole scan is read and classified (not explained) with the shipped CNN.

    python benchmarks/volume_bench.py [--slices 300] [--repeats 3]

A generated chest-like volume (a body ellipse with two lungs, noise) of 512 x 512 slices is
written as a .nii.gz and as a zip of DICOM files; each is read (`ctdemo.io.scans.read_scan`)
and classified (`ctdemo.models.volume_inference.classify_volume`). Times are the warm median
of `--repeats` runs (the model loaded and one classification done first). Prints a table and
writes benchmarks/results/volume.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout, and the tests' DICOM factory

import nibabel
import numpy as np
from timing import median_seconds

from ctdemo.config import WEIGHTS_DIR
from ctdemo.io.scans import read_scan
from ctdemo.models.saving import load_model
from ctdemo.models.volume_inference import classify_volume

from dicom_factory import ct_dicom_bytes

SIDE = 512


def chest_hu(slices: int, seed: int = 0) -> np.ndarray:
    """(x, y, z) int16 HU: air, a soft-tissue ellipse, two lungs, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1 : 1 : SIDE * 1j, -1 : 1 : SIDE * 1j]
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
    lungs = ((np.abs(x) - 0.4) / 0.28) ** 2 + (y / 0.45) ** 2 < 1
    plane = np.where(body, 40, -1000) + np.where(lungs, -860, 0) * body
    volume = np.empty((SIDE, SIDE, slices), dtype=np.int16)
    for k in range(slices):
        volume[:, :, k] = (plane + rng.normal(0, 25, plane.shape)).T.astype(np.int16)
    return volume


def write_scans(folder: Path, volume: np.ndarray) -> dict[str, Path]:
    """The volume as a .nii.gz and as a zip of one DICOM file per slice."""
    affine = np.diag([-0.7, -0.7, 1.0, 1.0])
    nifti = folder / "scan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(volume, affine), nifti)
    archive = folder / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as bundle:
        for k in range(volume.shape[2]):
            tags = {
                "SeriesInstanceUID": "1.2.3.4",
                "InstanceNumber": k + 1,
                "ImagePositionPatient": [0.0, 0.0, float(k)],
                "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
            }
            stored = volume[:, :, k].T + 1024
            bundle.writestr(f"{k:04d}.dcm", ct_dicom_bytes(stored, extra=tags))
    return {"NIfTI (.nii.gz)": nifti, "DICOM series (.zip)": archive}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, card = load_model(WEIGHTS_DIR / "cnn.keras")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for kind, path in write_scans(Path(folder), chest_hu(args.slices)).items():
            (volume,) = read_scan(path)
            classify_volume(model, card, volume)  # warm
            read = median_seconds(lambda path=path: read_scan(path), args.repeats)
            classify = median_seconds(
                lambda volume=volume: classify_volume(model, card, volume), args.repeats
            )
            rows.append(
                {
                    "scan": kind,
                    "slices": len(volume),
                    "stored_mb": round(volume.pixels.nbytes / 1e6, 1),
                    "read_s": round(read, 2),
                    "classify_s": round(classify, 2),
                }
            )
    print(f"{'scan':<22} {'slices':>6} {'stored MB':>9} {'read s':>7} {'classify s':>10}")
    for row in rows:
        print(
            f"{row['scan']:<22} {row['slices']:>6} {row['stored_mb']:>9} "
            f"{row['read_s']:>7} {row['classify_s']:>10}"
        )
    payload = {"model": "weights/cnn.keras", "repeats": args.repeats, "rows": rows}
    out = ROOT / "benchmarks" / "results" / "volume.json"
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(payload))


if __name__ == "__main__":
    main()
