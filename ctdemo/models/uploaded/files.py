"""An uploaded model file, opened in memory with bounded sizes: its architecture JSON, read
before Keras sees the file.

A `.keras` file must be exactly what `model.save()` writes (a zip of `config.json`,
`metadata.json` and `model.weights.h5`); an `.h5` file must hold an architecture and weights.
Neither may unpack to far more than an upload can hold, nor point its weights outside itself.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import PurePath
from typing import IO

import h5py

from ctdemo.models import cards
from ctdemo.models.cards import ModelLoadError
from ctdemo.models.uploaded.cost import MODEL_CLASSES
from ctdemo.models.uploaded.limits import MAX_UNPACKED_BYTES

SUFFIXES = (".keras", ".h5")
MAX_CONFIG_BYTES = 8 * 1024 * 1024
"""Largest architecture description we parse (a ResNet-50's is about 0.2 MB)."""
KERAS_ZIP_ENTRIES = frozenset({"config.json", "metadata.json", "model.weights.h5"})
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class UploadedFile:
    """An upload that passed the file checks: its name (no folders), suffix and architecture."""

    name: str
    suffix: str  # ".keras" or ".h5"
    config: dict  # the architecture JSON, not yet checked for what it may run

    @property
    def file_format(self) -> str:
        return self.suffix.lstrip(".")


def read_upload(data: bytes, filename: str) -> UploadedFile:
    """The architecture of an uploaded `.keras` or `.h5` model, or `ModelLoadError` for a file
    that is not one, is too big, or holds more than a model."""
    suffix = _checked_suffix(data, filename)
    name = PurePath(filename).name
    if suffix == ".keras":
        return UploadedFile(name, suffix, _keras_zip_config(data, name))
    return UploadedFile(name, suffix, _h5_model_config(data, name))


def _checked_suffix(data: bytes, filename: str) -> str:
    name = PurePath(filename or "").name or "The upload"
    suffix = PurePath(filename or "").suffix.lower()
    if suffix not in SUFFIXES:
        raise ModelLoadError(
            f"{name} is not a .keras or .h5 file; save the model with "
            "model.save('model.keras') and upload that file."
        )
    if not data:
        raise ModelLoadError(f"{name} is empty (0 bytes); upload the saved model file again.")
    limit = cards.MAX_MODEL_BYTES
    if len(data) > limit:
        raise ModelLoadError(
            f"{name} is {_size(len(data))}; models over {_size(limit)} are refused, so upload "
            "a smaller model."
        )
    return suffix


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MB" if count >= 2**20 else f"{count / 2**10:.1f} KB"


def _keras_zip_config(data: bytes, filename: str) -> dict:
    """The architecture from a `.keras` zip, read in memory with bounded sizes."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError):
        raise ModelLoadError(
            f"{filename} is not a Keras file (a .keras file is a zip archive); save the model "
            "with model.save('model.keras') and upload that file."
        ) from None
    with archive:
        _check_zip_entries(archive.infolist(), filename)
        try:
            with archive.open("config.json") as stream:
                raw = stream.read(MAX_CONFIG_BYTES + 1)
            with archive.open("model.weights.h5") as stream:
                _check_hdf5(stream, filename)
        except (zipfile.BadZipFile, RuntimeError, OSError, EOFError, ValueError) as error:
            raise ModelLoadError(
                f"{filename} is damaged ({error}); save the model again and upload the new file."
            ) from None
    return _parse_config(raw, filename)


def _check_zip_entries(entries: list[zipfile.ZipInfo], filename: str) -> None:
    """A `.keras` zip holds what `model.save()` writes, once each, and unpacks to a bounded
    size."""
    names = [entry.filename for entry in entries]
    if "config.json" not in names or "model.weights.h5" not in names:
        raise ModelLoadError(
            f"{filename} is a zip archive but not a Keras model (it has no config.json and "
            "model.weights.h5); save the model with model.save('model.keras')."
        )
    unexpected = sorted(set(names) - KERAS_ZIP_ENTRIES)
    if unexpected or len(names) != len(set(names)):
        shown = ", ".join(unexpected[:5]) or "duplicate entries"
        raise ModelLoadError(
            f"{filename} holds more than a Keras model ({shown}); upload a file written by "
            "model.save('model.keras') with no assets."
        )
    unpacked = sum(entry.file_size for entry in entries)
    if unpacked > MAX_UNPACKED_BYTES:
        raise ModelLoadError(
            f"{filename} would unpack to {_size(unpacked)}; upload a smaller model."
        )


def _h5_model_config(data: bytes, filename: str) -> dict:
    """The architecture stored in a legacy `.h5` model, read in memory with h5py."""
    if not data.startswith(HDF5_SIGNATURE):
        raise ModelLoadError(
            f"{filename} is not an HDF5 file; save the model with model.save('model.h5') "
            "or, better, model.save('model.keras')."
        )
    try:
        with h5py.File(io.BytesIO(data), "r") as file:
            raw = file.attrs.get("model_config")
            has_weights = "model_weights" in file
        _check_hdf5(io.BytesIO(data), filename)
    except ModelLoadError:
        raise
    except Exception as error:  # h5py raises OSError, KeyError, ValueError on damaged files
        raise ModelLoadError(
            f"{filename} is a damaged HDF5 file ({error}); save the model again and upload it."
        ) from None
    if raw is None:
        raise ModelLoadError(
            f"{filename} holds weights but no model architecture; save the whole model with "
            "model.save('model.keras'), not model.save_weights()."
        )
    if not has_weights:
        raise ModelLoadError(
            f"{filename} describes a model but holds no weights; save it with model.save()."
        )
    if hasattr(raw, "tobytes") and not isinstance(raw, bytes | str):
        raw = raw.tobytes()
    return _parse_config(raw.encode("utf-8") if isinstance(raw, str) else bytes(raw), filename)


def _check_hdf5(stream: IO[bytes], filename: str) -> None:
    """Refuse HDF5 weights that reach outside the file (external or soft links, external
    storage, virtual datasets: Keras would read the server's files as weights) or that declare
    far more data than an upload can hold (a memory bomb). Reads no data, only the layout."""
    problems: list[str] = []
    declared = 0

    with h5py.File(stream, "r") as file:

        def visit(name: str, link: object) -> None:
            nonlocal declared
            if not isinstance(link, h5py.HardLink):
                problems.append(f"a link named {name!r}")
                return
            item = file.get(name)
            if isinstance(item, h5py.Dataset):
                if item.is_virtual or item.id.get_create_plist().get_external_count():
                    problems.append(f"the dataset {name!r}, stored outside the file")
                declared += int(item.size) * item.dtype.itemsize

        file.visititems_links(visit)
    if problems:
        raise ModelLoadError(
            f"{filename} has weights that point outside the file ({problems[0]}); upload a "
            "model saved by Keras's model.save()."
        )
    if declared > MAX_UNPACKED_BYTES:
        raise ModelLoadError(
            f"{filename} declares {_size(declared)} of weights; upload a smaller model."
        )


def _parse_config(raw: bytes, filename: str) -> dict:
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelLoadError(
            f"The architecture in {filename} is over {MAX_CONFIG_BYTES // 2**20} MB of JSON; "
            "upload a smaller model."
        )
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError):
        raise ModelLoadError(
            f"The architecture in {filename} is not valid JSON; save the model again with "
            "model.save() and upload the new file."
        ) from None
    if not isinstance(config, dict) or config.get("class_name") not in MODEL_CLASSES:
        raise ModelLoadError(
            f"{filename} does not hold a Keras Sequential or functional model; subclassed "
            "models cannot be checked, so rebuild it with the functional API."
        )
    return config
