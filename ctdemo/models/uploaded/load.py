"""Loading a visitor's model: every check on its file and architecture first, Keras last."""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras

from ctdemo.models.cards import ModelLoadError
from ctdemo.models.uploaded.cost import check_cost
from ctdemo.models.uploaded.describe import UploadedModelInfo, describe_model, short_reason
from ctdemo.models.uploaded.files import read_upload
from ctdemo.models.uploaded.safety import check_architecture


def read_uploaded_model(data: bytes, filename: str) -> tuple[keras.Model, UploadedModelInfo]:
    """Check, load and describe an uploaded `.keras` or `.h5` classifier.

    Raises `ModelLoadError` (a message for a person) for anything we will not or cannot use."""
    upload = read_upload(data, filename)
    check_architecture(upload.config, upload.name)
    cost = check_cost(upload.config, upload.name)
    model = _load(data, upload.suffix, upload.name)
    return model, describe_model(model, upload.name, upload.file_format, cost)


def _load(data: bytes, suffix: str, filename: str) -> keras.Model:
    """Load from a private temporary copy (Keras reads paths), deleted whatever happens."""
    try:
        with tempfile.TemporaryDirectory(prefix="ctdemo-upload-") as folder:
            path = Path(folder) / f"uploaded{suffix}"
            path.write_bytes(data)
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        raise ModelLoadError(
            f"{filename} could not be loaded as a Keras model: {short_reason(error)}"
        ) from None
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{filename} does not hold a Keras model.")
    return model
