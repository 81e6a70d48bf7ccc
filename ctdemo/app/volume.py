"""Classify's whole scans: which uploads are scans, reading them once per upload, and each
volume's screen and slice probabilities, cached by the upload's digest.

A zip, a NIfTI file, or an upload of two or more DICOM files of one SeriesInstanceUID (and
nothing else) is read as a scan (`ctdemo.io.scans.read_upload`); any other file stays a single
slice, as before. Caches are keyed by digests and indices only, never by a tag; the volumes'
cache holds one upload (a volume is at most ~84 MB), shared by every session.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from ctdemo.app import resources
from ctdemo.app.classify import SliceResult
from ctdemo.evaluation.volume_summary import VolumeSummary
from ctdemo.io.decoded import SliceError
from ctdemo.io.dicom import dicom_header
from ctdemo.io.nifti import is_nifti
from ctdemo.io.scans import ZIP_MAGIC, ScanItems, read_upload
from ctdemo.io.slices import is_dicom, to_model_input
from ctdemo.io.volumes import VOLUME_LIMITS, RefusedSeries, Volume, VolumeError

if TYPE_CHECKING:
    from ctdemo.explain.ood import OODResult

Files = list[tuple[str, bytes]]
SCREEN_BATCH = 64  # slices screened at once: 64 model inputs of 128 px are 4 MB


@dataclass(frozen=True)
class ScanVerdict:
    """A model's reading of one volume: per-slice probabilities (a NaN row: no verdict), the
    screen's result per slice (None without a screen) and the summary over the slices kept."""

    probabilities: np.ndarray  # (slices, classes)
    class_names: tuple[str, ...]
    positive_class: str | None
    screening: tuple[OODResult, ...] | None
    summary: VolumeSummary | None

    @property
    def flagged(self) -> np.ndarray:
        """Whether each slice was flagged as not like a chest CT slice."""
        if self.screening is None:
            return np.zeros(len(self.probabilities), bool)
        return np.array([result.flagged for result in self.screening], bool)


def split_upload(files: Files) -> tuple[Files, Files]:
    """(single slices, scan files): zips and NIfTI files are scans; loose DICOM files are one
    when the upload is nothing else, two or more files of one series. Any other mix (a batch
    of PNGs and DICOM slices, say) is classified slice by slice, each file with its result."""
    wholes = [(name, data) for name, data in files if _is_whole(name, data)]
    loose = [(name, data) for name, data in files if not _is_whole(name, data)]
    series = {_series_uid(name, data) for name, data in loose}
    if len(loose) > 1 and len(series) == 1 and None not in series:
        return [], wholes + loose
    return loose, wholes


def _series_uid(name: str, data: bytes) -> str | None:
    """A DICOM file's SeriesInstanceUID, only to group files (never shown or kept)."""
    if not is_dicom(data, name):
        return None
    try:
        return str(dicom_header(data).get("SeriesInstanceUID", "")) or None
    except SliceError:
        return None


def upload_digest(files: Files) -> str:
    """One digest for the scan files of an upload, from their names and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    for name, data in files:
        digest.update(hashlib.blake2b(name.encode(), digest_size=16).digest())
        digest.update(hashlib.blake2b(data, digest_size=16).digest())
    return digest.hexdigest()


# One scan in memory per server (up to about 84 MB): the hosted app shares about 1 GB among all
# its visitors, so a second visitor's scan replaces the first, which is read again if needed.
@st.cache_resource(max_entries=1, ttl=1800, show_spinner="Reading the scan…")
def read_scans(digest: str, _files: Files) -> ScanItems:
    """Every volume of the upload's scan files (identified by `digest`): each zip and NIfTI
    file on its own, the DICOM files together; the upload's voxels are bounded as one scan's.
    A file that cannot be read at all becomes a refused item named by the file."""
    dicom = {name: data for name, data in _files if not _is_whole(name, data)}
    sources = [{name: data} for name, data in _files if _is_whole(name, data)]
    items: ScanItems = []
    budget = VOLUME_LIMITS.max_voxels
    for source in sources + ([dicom] if dicom else []):
        try:
            read = read_upload(source, replace(VOLUME_LIMITS, max_voxels=max(budget, 1)))
        except VolumeError as error:
            read = [RefusedSeries(_source_name(source), str(error))]
        for item in read:
            if isinstance(item, Volume):
                item.pixels.flags.writeable = False  # shared by every session
                budget -= item.pixels.size
        items += read
    return items


def _is_whole(name: str, data: bytes) -> bool:
    return data.startswith(ZIP_MAGIC) or is_nifti(data[:4], name)


def _source_name(source: dict[str, bytes]) -> str:
    return next(iter(source)) if len(source) == 1 else f"the {len(source)} DICOM files"


@st.cache_data(max_entries=8, ttl=1800, show_spinner="Screening every slice: is it chest CT?")
def screened(digest: str, index: int, _volume: Volume) -> tuple[OODResult, ...] | None:
    """The "is this a chest CT slice?" screen (`classify.screen`'s) on every slice of volume
    `index` of upload `digest`; None when no screen ships."""
    from ctdemo.explain.ood_model import extract_features

    screen = resources.ct_screen()
    if screen is None:
        return None
    extractor, detector, size = screen
    features, spread = [], []
    for start in range(0, len(_volume), SCREEN_BATCH):
        stop = min(start + SCREEN_BATCH, len(_volume))
        x = np.stack([to_model_input(_volume.slice(i), size) for i in range(start, stop)])
        features.append(extract_features(extractor, x))
        spread.append(x.reshape(len(x), -1).std(axis=1))
    return tuple(detector.assess(np.concatenate(features), pixel_std=np.concatenate(spread)))


@st.cache_data(max_entries=16, ttl=1800, show_spinner="Classifying every slice…")
def classified(digest: str, index: int, model_key: str, _volume: Volume) -> ScanVerdict:
    """Model `model_key` on every slice of volume `index` of upload `digest`, summarised
    without the slices the screen flagged."""
    from ctdemo.models.volume_inference import classify_volume

    screening = screened(digest, index, _volume)
    flagged = None if screening is None else np.array([r.flagged for r in screening], bool)
    model, card = resources.get_model(model_key)
    prediction = classify_volume(model, card, _volume, flagged)
    return ScanVerdict(
        probabilities=prediction.probabilities,
        class_names=prediction.class_names,
        positive_class=prediction.positive_class,
        screening=screening,
        summary=prediction.summary,
    )


def slice_result(
    digest: str, index: int, volume: Volume, verdict: ScanVerdict, number: int
) -> SliceResult:
    """Slice `number` of the volume as the page's `SliceResult`, so that it is shown and
    explained as an uploaded slice is; its digest names the upload, volume and slice."""
    from ctdemo.models.inference import NOT_A_NUMBER

    result = SliceResult(
        name=f"{volume.name}, slice {number + 1}",
        digest=f"{digest}-{index}-{number}",
        source_format=volume.source,
        pixels=volume.slice(number),
        screening=None if verdict.screening is None else verdict.screening[number],
    )
    row = verdict.probabilities[number]
    if np.isfinite(row).all():
        result.probabilities = dict(zip(verdict.class_names, map(float, row), strict=True))
    else:
        result.error = NOT_A_NUMBER
    return result


def volumes_of(items: Sequence[Volume | RefusedSeries]) -> list[Volume]:
    return [item for item in items if isinstance(item, Volume)]


def refused_of(items: Sequence[Volume | RefusedSeries]) -> list[RefusedSeries]:
    return [item for item in items if isinstance(item, RefusedSeries)]
