"""Image-folder datasets: find them, decode them once, cache the arrays on disk.

Layout: one sub-folder per class (any number of classes, at least two), image files inside
(nested folders are fine). Files that are not images are skipped and counted; so are images
that fail to decode, each with its reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import unicodedata
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctdemo import config
from ctdemo.io.decoded import SliceError
from ctdemo.io.slices import (
    IMAGE_EXTENSIONS,
    declared_pixels,
    decode_slice,
    read_slice_file,
    to_model_input,
)

CACHE_FORMAT = 4
"""Bump when preprocessing changes, so old caches are not reused (4: the body crop)."""


class DatasetError(ValueError):
    """A dataset that cannot be used; the message is written for a person."""


@dataclass
class ImageFolder:
    """The files of an image-folder dataset, before decoding."""

    root: Path
    class_names: list[str]
    files: list[Path]
    labels: np.ndarray  # int, index into class_names
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def class_counts(self) -> dict[str, int]:
        return {
            name: int(np.sum(self.labels == index)) for index, name in enumerate(self.class_names)
        }


@dataclass
class ArrayDataset:
    """Decoded, resized slices ready for a model."""

    x: np.ndarray  # float32 (n, size, size, 1) in [0, 1]
    y: np.ndarray  # int32 (n,)
    class_names: list[str]
    files: list[str]  # relative to the dataset root, in the order of x
    skipped: list[tuple[str, str]]
    fingerprint: str
    dicom_groups: dict[str, str] = field(default_factory=dict)  # relative file -> patient/study

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        indices = np.asarray(indices, dtype=int)
        kept = [self.files[i] for i in indices]
        return ArrayDataset(
            x=self.x[indices],
            y=self.y[indices],
            class_names=self.class_names,
            files=kept,
            skipped=self.skipped,
            fingerprint=self.fingerprint,
            dicom_groups={f: self.dicom_groups[f] for f in kept if f in self.dicom_groups},
        )


def _is_visible(path: Path) -> bool:
    return not any(part.startswith(".") or part == "__MACOSX" for part in path.parts)


def scan_image_folder(root: Path | str) -> ImageFolder:
    """List an image-folder dataset: classes are the sorted names of root's sub-folders."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"No dataset folder at {root}.")
    class_dirs = sorted(
        (entry for entry in root.iterdir() if entry.is_dir() and _is_visible(Path(entry.name))),
        key=lambda entry: entry.name,
    )
    files: list[Path] = []
    labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    for index, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.rglob("*")):
            relative = path.relative_to(root)
            if not path.is_file() or not _is_visible(relative):
                continue
            if path.is_symlink():
                skipped.append((relative.as_posix(), "symbolic link"))
            elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((relative.as_posix(), "not an image file"))
            else:
                files.append(path)
                labels.append(index)
    folder = ImageFolder(root, [d.name for d in class_dirs], files, np.array(labels), skipped)
    _check_classes(folder)
    return folder


def _check_classes(folder: ImageFolder) -> None:
    _check_distinct_names(folder.class_names)
    if len(folder.class_names) < 2:
        found = folder.class_names[0] if folder.class_names else "none"
        raise DatasetError(
            f"A dataset needs at least two class folders (one per class) in {folder.root}; "
            f"found {len(folder.class_names)} ({found})."
        )
    empty = [name for name, count in folder.class_counts().items() if count == 0]
    if empty:
        raise DatasetError(f"These class folders hold no images: {', '.join(empty)}.")


def _check_distinct_names(class_names: list[str]) -> None:
    """Refuse class folders whose names differ only in capitals (or Unicode form): on Linux
    `COVID/` and `covid/` would become two classes, on macOS and Windows one."""
    spellings: dict[str, list[str]] = defaultdict(list)
    for name in class_names:
        spellings[unicodedata.normalize("NFKC", name).casefold()].append(name)
    clashes = [names for names in spellings.values() if len(names) > 1]
    if clashes:
        shown = "; ".join(" and ".join(f"{name}/" for name in names) for names in clashes)
        raise DatasetError(
            "These class folders differ only in capitals (or in how an accent is encoded), so "
            f"they would be two classes of one name: {shown}. Merge them into one folder, or "
            "rename one."
        )


def fingerprint(folder: ImageFolder, cache_dir: Path | None = None) -> str:
    """Identity of a dataset's content: relative path, label and bytes of every file.

    A copy of the same files on another machine has the same fingerprint (time stamps differ,
    content does not), so a model card names its data wherever it is checked. Hashing the
    1,971 training scans (190 MB) takes about 0.4 s, so the answer is remembered in the cache
    folder under the files' stat signature: a second load only stats the files.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else config.cache_dir()
    memo = cache_dir / "fingerprints" / f"{_stat_signature(folder)}.txt"
    try:
        remembered = memo.read_text().strip()
        if _is_digest(remembered):
            return remembered
    except (OSError, UnicodeDecodeError):
        pass
    digest = hashlib.blake2b(digest_size=16)
    for path, label in zip(folder.files, folder.labels, strict=True):
        digest.update(f"{folder.relative(path)}|{label}|".encode())
        digest.update(hashlib.blake2b(path.read_bytes(), digest_size=16).digest())
    digest.update(json.dumps(folder.class_names).encode())
    content = digest.hexdigest()
    with contextlib.suppress(OSError):  # a read-only disk only costs the next load a hash
        _write_atomically(memo, lambda stream: stream.write(content.encode()))
    return content


def _stat_signature(folder: ImageFolder) -> str:
    """Where the files are, and their sizes and modification times: changes when any changes."""
    digest = hashlib.blake2b(str(folder.root.resolve()).encode(), digest_size=16)
    for path, label in zip(folder.files, folder.labels, strict=True):
        stat = path.stat()
        digest.update(
            f"{folder.relative(path)}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode()
        )
    digest.update(json.dumps(folder.class_names).encode())
    return digest.hexdigest()


def _is_digest(text: str) -> bool:
    return len(text) == 32 and all(character in "0123456789abcdef" for character in text)


MAX_DATASET_PIXELS = 600_000_000
"""Pixels one dataset may decode, counted from its files' headers before any is decoded: about
three times the 1,971 training slices (185 MP in all). A 0.33 MB zip of 1,000 blank 5000 x 5000
PNGs declares 25,000 MP, and once took 81 s of both cores to decode."""

_GROUP_KINDS = (("PatientID", "patient"), ("StudyInstanceUID", "study"))


def _decode_file(path: Path, size: int) -> tuple[np.ndarray | None, str | None, str | None]:
    """Returns (model input, error, DICOM group: "patient:" or "study:" and a keyed digest)."""
    try:
        decoded = decode_slice(read_slice_file(path), path.name)
    except SliceError as error:
        return None, str(error), None
    groups = decoded.dicom_groups
    group = next((f"{kind}:{groups[key]}" for key, kind in _GROUP_KINDS if key in groups), None)
    return to_model_input(decoded.pixels, size), None, group


def _declared_pixels(path: Path) -> int:
    try:
        return declared_pixels(read_slice_file(path), path.name)
    except SliceError:
        return 0  # decoding will give the reason


def _check_pixel_budget(folder: ImageFolder) -> None:
    """Refuse a dataset whose headers declare more than MAX_DATASET_PIXELS, before decoding
    (one thread: 0.5 s for the 1,971 training slices, slower on two, which wait on the GIL)."""
    total = sum(map(_declared_pixels, folder.files))
    if total > MAX_DATASET_PIXELS:
        raise DatasetError(
            f"The images of this dataset add up to {total / 1e6:,.0f} megapixels; datasets over "
            f"{MAX_DATASET_PIXELS / 1e6:,.0f} megapixels are refused so that loading one cannot "
            "tie up the server (the 1,971 training slices are 185). Use fewer or smaller images."
        )


def _number_groups(groups: dict[str, str]) -> dict[str, str]:
    """Keyed digests of PatientID / StudyInstanceUID as "patient 1", "study 2", ... in file
    order: equal IDs keep equal names, so a grouped split keeps a patient's slices together,
    and no ID nor anything computed from one reaches the cache or a model card."""
    names: dict[str, str] = {}
    counts = dict.fromkeys((kind for _, kind in _GROUP_KINDS), 0)
    for group in groups.values():
        if group not in names:
            kind = group.split(":", 1)[0]
            counts[kind] += 1
            names[group] = f"{kind} {counts[kind]}"
    return {file: names[group] for file, group in groups.items()}


def load_arrays(
    folder: ImageFolder | Path | str,
    size: int,
    cache_dir: Path | None = None,
    workers: int | None = None,
) -> ArrayDataset:
    """Decode every image of a dataset at `size` x `size`, cached on disk.

    The cache is keyed by the dataset's fingerprint and the size; its payload and its
    metadata (labels, file names) carry checksums, so a damaged cache file is rebuilt, never
    trusted.
    """
    if not isinstance(folder, ImageFolder):
        folder = scan_image_folder(folder)
    cache_dir = Path(cache_dir) if cache_dir is not None else config.cache_dir()
    identity = fingerprint(folder, cache_dir)
    key = f"{identity}-{size}-v{CACHE_FORMAT}"
    cached = _read_cache(cache_dir, key, folder)
    if cached is not None:
        return cached
    dataset = _decode_all(folder, size, identity, workers)
    _write_cache(cache_dir, key, dataset)
    return dataset


def _decode_all(folder: ImageFolder, size: int, identity: str, workers: int | None) -> ArrayDataset:
    _check_pixel_budget(folder)
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda path: _decode_file(path, size), folder.files))
    images, labels, files = [], [], []
    skipped = list(folder.skipped)
    groups: dict[str, str] = {}
    for path, label, (image, error, group) in zip(
        folder.files, folder.labels, results, strict=True
    ):
        relative = folder.relative(path)
        if image is None:
            skipped.append((relative, error or "unreadable"))
            continue
        images.append(image)
        labels.append(label)
        files.append(relative)
        if group:
            groups[relative] = group
    if not images:
        raise DatasetError(f"No readable images in {folder.root}.")
    dataset = ArrayDataset(
        x=np.stack(images).astype(np.float32),
        y=np.array(labels, dtype=np.int32),
        class_names=folder.class_names,
        files=files,
        skipped=skipped,
        fingerprint=identity,
        dicom_groups=_number_groups(groups),
    )
    present = set(dataset.y.tolist())
    missing = [n for i, n in enumerate(folder.class_names) if i not in present]
    if missing:
        raise DatasetError(f"No readable images in class folder(s): {', '.join(missing)}.")
    return dataset


def _checksum(array: np.ndarray) -> str:
    return hashlib.blake2b(
        memoryview(np.ascontiguousarray(array)).cast("B"), digest_size=16
    ).hexdigest()


def _meta_checksum(meta: dict) -> str:
    """Checksum of the labels, file names and the rest of the metadata (not of itself)."""
    body = {key: value for key, value in meta.items() if key != "meta_checksum"}
    return hashlib.blake2b(json.dumps(body, sort_keys=True).encode(), digest_size=16).hexdigest()


def _write_atomically(target: Path, write) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.suffix)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_cache(cache_dir: Path, key: str, dataset: ArrayDataset) -> None:
    meta = {
        "checksum": _checksum(dataset.x),
        "shape": list(dataset.x.shape),
        "y": dataset.y.tolist(),
        "class_names": dataset.class_names,
        "files": dataset.files,
        "skipped": dataset.skipped,
        "fingerprint": dataset.fingerprint,
        "dicom_groups": dataset.dicom_groups,
    }
    meta["meta_checksum"] = _meta_checksum(meta)
    try:
        _write_atomically(cache_dir / f"{key}.npy", lambda s: np.save(s, dataset.x))
        _write_atomically(
            cache_dir / f"{key}.json", lambda s: s.write(json.dumps(meta, allow_nan=False).encode())
        )
    except OSError:
        pass  # a read-only or full disk only costs the next load a decode
    _remove_older_formats(cache_dir)


def _remove_older_formats(cache_dir: Path) -> None:
    """Delete this app's caches of earlier formats: stale, and those before format 3 held
    DICOM patient IDs. Only names the cache writes (`<32 hex>-<size>-v<n>.npy|json`) go."""
    for path in cache_dir.glob("*-v*.*"):
        name, _, version = path.stem.rpartition("-v")
        if (
            path.suffix in (".npy", ".json")
            and version.isdigit()
            and int(version) < CACHE_FORMAT
            and re.fullmatch(r"[0-9a-f]{32}-\d+", name)
        ):
            with contextlib.suppress(OSError):
                path.unlink()


def _read_cache(cache_dir: Path, key: str, folder: ImageFolder) -> ArrayDataset | None:
    array_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if not (array_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        x = np.load(array_path, allow_pickle=False)
        valid = (
            list(x.shape) == meta["shape"]
            and x.dtype == np.float32
            and _checksum(x) == meta["checksum"]
            and len(meta["y"]) == x.shape[0] == len(meta["files"])
            and meta["class_names"] == folder.class_names
            and _meta_checksum(meta) == meta["meta_checksum"]
        )
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        valid = False
    if not valid:
        array_path.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        return None
    return ArrayDataset(
        x=x,
        y=np.array(meta["y"], dtype=np.int32),
        class_names=meta["class_names"],
        files=meta["files"],
        skipped=[tuple(item) for item in meta["skipped"]],
        fingerprint=meta["fingerprint"],
        dicom_groups=meta.get("dicom_groups", {}),
    )
