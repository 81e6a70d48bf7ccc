"""Minimal CT DICOM files written with pydicom, for tests (not collected: no `test_` prefix)."""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PAT-0042"
PATIENT_BIRTH_DATE = "19700101"


def ct_dicom_bytes(
    stored: np.ndarray | None,
    slope: str = "1",
    intercept: str = "-1024",
    photometric: str = "MONOCHROME2",
    frames: int | None = None,
    patient_id: str | None = PATIENT_ID,
    compressed_garbage: bool = False,
    extra: dict | None = None,
) -> bytes:
    """A CT slice as DICOM bytes (Explicit VR Little Endian, signed 16-bit).

    `stored` holds the stored values (HU = stored * slope + intercept); None leaves out
    PixelData. `compressed_garbage` declares JPEG 2000 and stores bytes no decoder accepts.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEG2000Lossless if compressed_garbage else ExplicitVRLittleEndian
    dataset = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = "CT"
    dataset.Manufacturer = "ACME Imaging"
    dataset.KVP = "120"
    dataset.SliceThickness = "1.25"
    dataset.PixelSpacing = ["0.7", "0.7"]
    dataset.ConvolutionKernel = "LUNG"
    dataset.PatientName = PATIENT_NAME
    if patient_id is not None:
        dataset.PatientID = patient_id
    dataset.PatientBirthDate = PATIENT_BIRTH_DATE
    rows, columns = (4, 4) if stored is None else stored.shape[-2:]
    dataset.Rows, dataset.Columns = int(rows), int(columns)
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1
    dataset.RescaleSlope = slope
    dataset.RescaleIntercept = intercept
    if frames is not None:
        dataset.NumberOfFrames = frames
    for key, value in (extra or {}).items():
        setattr(dataset, key, value)
    if compressed_garbage:
        dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"garbage, not a codestream" * 4])
        dataset["PixelData"].VR = "OB"
    elif stored is not None:
        dataset.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()
        dataset["PixelData"].VR = "OW"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
