"""ctdemo.io.folders: scanning image folders, decoding with a trustworthy cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctdemo import config
from ctdemo.config import resolve_data_source
from ctdemo.io import folders
from ctdemo.io.download import MARKER
from ctdemo.io.folders import (
    DatasetError,
    fingerprint,
    load_arrays,
    scan_image_folder,
)

from conftest import make_image_folder
from dicom_factory import ct_dicom_bytes

SIZE = 24

# ---------------------------------------------------------------------------- scanning


def test_scan_classes_are_sorted_and_labels_follow(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=3, classes=("zeta", "alpha", "mid"))
    folder = scan_image_folder(root)
    assert folder.class_names == ["alpha", "mid", "zeta"]
    assert len(folder.files) == 9
    for path, label in zip(folder.files, folder.labels, strict=True):
        assert folder.class_names[label] == path.parent.name
    assert folder.class_counts() == {"alpha": 3, "mid": 3, "zeta": 3}
    assert folder.skipped == []


def test_scan_file_names_with_spaces_and_parentheses(tiny_dataset):
    folder = scan_image_folder(tiny_dataset)
    assert folder.class_names == ["COVID", "non-COVID"]
    relative = {folder.relative(path) for path in folder.files}
    assert "COVID/COVID (1).png" in relative
    assert "non-COVID/non-COVID (24).png" in relative
    assert len(relative) == 48


def test_scan_nested_subfolders_non_images_and_hidden_files(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2)
    pixels = np.zeros((8, 8), dtype=np.uint8)
    nested = root / "COVID" / "patient 7" / "series 2"
    nested.mkdir(parents=True)
    Image.fromarray(pixels).save(nested / "slice 1.png")
    Image.fromarray(pixels).save(root / "non-COVID" / "UPPER.PNG")
    (root / "COVID" / "notes.txt").write_text("not an image")
    (root / "non-COVID" / "labels.csv").write_text("a,b\n")
    (root / "COVID" / ".DS_Store").write_bytes(b"\0\1")
    Image.fromarray(pixels).save(root / "COVID" / ".hidden.png")
    (root / "COVID" / ".cache").mkdir()
    Image.fromarray(pixels).save(root / "COVID" / ".cache" / "thumb.png")
    (root / ".git").mkdir()  # a hidden folder is not a class
    Image.fromarray(pixels).save(root / ".git" / "x.png")
    (root / "__MACOSX").mkdir()  # nor is macOS's resource-fork folder
    Image.fromarray(pixels).save(root / "__MACOSX" / "y.png")
    (root / "README.md").write_text("top-level files are not classes")

    folder = scan_image_folder(root)
    assert folder.class_names == ["COVID", "non-COVID"]
    relative = {
        folder.relative(path): int(label)
        for path, label in zip(folder.files, folder.labels, strict=True)
    }
    assert relative["COVID/patient 7/series 2/slice 1.png"] == 0
    assert relative["non-COVID/UPPER.PNG"] == 1
    assert len(relative) == 6
    assert not any("/." in name or name.startswith(".") for name in relative)
    assert sorted(folder.skipped) == [
        ("COVID/notes.txt", "not an image file"),
        ("non-COVID/labels.csv", "not an image file"),
    ]
    assert folder.class_counts() == {"COVID": 3, "non-COVID": 3}


def test_scan_symbolic_link_is_skipped(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2)
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(outside)
    (root / "COVID" / "link.png").symlink_to(outside)
    folder = scan_image_folder(root)
    assert ("COVID/link.png", "symbolic link") in folder.skipped
    assert all(path.name != "link.png" for path in folder.files)


def test_scan_three_classes(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2, classes=("a", "b", "c"))
    folder = scan_image_folder(root)
    assert folder.class_names == ["a", "b", "c"]
    assert sorted(set(folder.labels.tolist())) == [0, 1, 2]


def test_scan_one_class_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2, classes=("only",))
    with pytest.raises(DatasetError, match="at least two class folders") as caught:
        scan_image_folder(root)
    assert "only" in str(caught.value)


def test_scan_no_class_folders_is_an_error(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DatasetError, match="found 0"):
        scan_image_folder(tmp_path / "flat")


def test_scan_empty_class_folder_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2)
    (root / "empty-class").mkdir()
    (root / "empty-class" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="empty-class"):
        scan_image_folder(root)


def test_scan_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="No dataset folder"):
        scan_image_folder(tmp_path / "does-not-exist")


# ---------------------------------------------------------------------------- loading


def count_decodes(monkeypatch) -> list[int]:
    """Wrap _decode_all so the test can see how often the files were really decoded."""
    calls: list[int] = []
    original = folders._decode_all

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(folders, "_decode_all", counting)
    return calls


def cache_files(cache_dir: Path) -> tuple[Path, Path]:
    arrays = sorted(cache_dir.glob("*.npy"))
    metas = sorted(cache_dir.glob("*.json"))
    assert len(arrays) == 1, arrays
    assert len(metas) == 1, metas
    return arrays[0], metas[0]


def test_load_arrays_shapes_and_dtypes(tiny_dataset):
    dataset = load_arrays(tiny_dataset, SIZE)
    assert dataset.x.shape == (48, SIZE, SIZE, 1)
    assert dataset.x.dtype == np.float32
    assert dataset.y.dtype == np.int32
    assert dataset.y.shape == (48,)
    assert dataset.x.min() >= 0.0 and dataset.x.max() <= 1.0
    assert dataset.class_names == ["COVID", "non-COVID"]
    assert np.bincount(dataset.y).tolist() == [24, 24]
    assert len(dataset) == 48
    assert len(dataset.files) == 48
    assert dataset.files[0] == "COVID/COVID (1).png"
    for name, label in zip(dataset.files, dataset.y, strict=True):
        assert name.split("/")[0] == dataset.class_names[label]
    assert dataset.skipped == []
    # the generated classes differ: class 0 has bright blobs inside the lungs
    assert dataset.x[dataset.y == 0].mean() > dataset.x[dataset.y == 1].mean()


def test_load_arrays_matches_the_one_preprocessing_path(tiny_dataset):
    from ctdemo.io.slices import decode_slice, to_model_input

    dataset = load_arrays(tiny_dataset, SIZE)
    index = dataset.files.index("non-COVID/non-COVID (5).png")
    raw = (tiny_dataset / "non-COVID" / "non-COVID (5).png").read_bytes()
    expected = to_model_input(decode_slice(raw).pixels, SIZE)
    np.testing.assert_array_equal(dataset.x[index], expected)


def test_corrupt_image_is_skipped_with_its_reason(tiny_dataset):
    (tiny_dataset / "COVID" / "broken.png").write_bytes(b"definitely not a png")
    good = (tiny_dataset / "non-COVID" / "non-COVID (1).png").read_bytes()
    (tiny_dataset / "non-COVID" / "cut.png").write_bytes(good[: len(good) // 2])
    (tiny_dataset / "non-COVID" / "notes.txt").write_text("hello")
    dataset = load_arrays(tiny_dataset, SIZE)
    assert len(dataset) == 48
    reasons = dict(dataset.skipped)
    assert set(reasons) == {"COVID/broken.png", "non-COVID/cut.png", "non-COVID/notes.txt"}
    assert "not an image" in reasons["COVID/broken.png"]
    assert "truncated" in reasons["non-COVID/cut.png"]
    assert reasons["non-COVID/notes.txt"] == "not an image file"
    assert "COVID/broken.png" not in dataset.files


def test_class_with_no_readable_image_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=3)
    for path in (root / "non-COVID").iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="non-COVID"):
        load_arrays(root, SIZE)


def test_second_load_comes_from_cache(tiny_dataset, monkeypatch, isolated_home):
    first = load_arrays(tiny_dataset, SIZE)
    assert list((isolated_home / "arrays").glob("*.npy")), "the cache is under CTDEMO_HOME"

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(folders, "_decode_all", must_not_decode)
    second = load_arrays(tiny_dataset, SIZE)
    np.testing.assert_array_equal(second.x, first.x)
    np.testing.assert_array_equal(second.y, first.y)
    assert second.y.dtype == np.int32
    assert second.files == first.files
    assert second.class_names == first.class_names
    assert second.fingerprint == first.fingerprint


def test_cache_is_keyed_by_size(tiny_dataset, tmp_path, monkeypatch):
    calls = count_decodes(monkeypatch)
    small = load_arrays(tiny_dataset, 16, cache_dir=tmp_path / "c")
    large = load_arrays(tiny_dataset, 20, cache_dir=tmp_path / "c")
    assert len(calls) == 2
    assert small.x.shape[1:] == (16, 16, 1)
    assert large.x.shape[1:] == (20, 20, 1)


def test_skipped_list_survives_the_cache(tiny_dataset, tmp_path, monkeypatch):
    (tiny_dataset / "COVID" / "broken.png").write_bytes(b"nope")
    first = load_arrays(tiny_dataset, SIZE, cache_dir=tmp_path / "c")
    monkeypatch.setattr(folders, "_decode_all", None)  # any decode would now crash
    second = load_arrays(tiny_dataset, SIZE, cache_dir=tmp_path / "c")
    assert second.skipped == first.skipped
    assert [name for name, _ in second.skipped] == ["COVID/broken.png"]


def flip_payload_bytes(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    for offset in (-4, -400, -1000):  # inside the float32 payload, far from the .npy header
        raw[offset] ^= 0x5A
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(flip_payload_bytes, id="npy-bytes-flipped"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[:-100]), id="npy-truncated"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[:60]), id="npy-header-only"),
        pytest.param(lambda p: p.write_bytes(b""), id="npy-empty"),
    ],
)
def test_damaged_array_cache_is_rebuilt(tiny_dataset, tmp_path, monkeypatch, damage):
    cache = tmp_path / "cache"
    first = load_arrays(tiny_dataset, SIZE, cache_dir=cache)
    array_path, _ = cache_files(cache)
    damage(array_path)
    calls = count_decodes(monkeypatch)
    rebuilt = load_arrays(tiny_dataset, SIZE, cache_dir=cache)
    assert len(calls) == 1, "a damaged cache must be decoded again, not trusted"
    np.testing.assert_array_equal(rebuilt.x, first.x)
    # and the rebuilt cache is good again
    again = load_arrays(tiny_dataset, SIZE, cache_dir=cache)
    assert len(calls) == 1
    np.testing.assert_array_equal(again.x, first.x)


def _flip_first_label(path: Path) -> None:
    meta = json.loads(path.read_text())
    meta["y"][0] = 1 - meta["y"][0]
    path.write_text(json.dumps(meta))


def _rename_a_file(path: Path) -> None:
    meta = json.loads(path.read_text())
    meta["files"][0] = "COVID/some other file.png"
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_text(p.read_text()[:-30]), id="json-truncated"),
        pytest.param(lambda p: p.write_text("not json"), id="json-garbage"),
        pytest.param(lambda p: p.write_text("[1, 2, 3]"), id="json-wrong-type"),
        pytest.param(lambda p: p.write_text('{"shape": [1]}'), id="json-missing-keys"),
        pytest.param(_flip_first_label, id="json-label-changed"),
        pytest.param(_rename_a_file, id="json-file-name-changed"),
    ],
)
def test_damaged_meta_cache_is_rebuilt(tiny_dataset, tmp_path, monkeypatch, damage):
    cache = tmp_path / "cache"
    first = load_arrays(tiny_dataset, SIZE, cache_dir=cache)
    _, meta_path = cache_files(cache)
    damage(meta_path)
    calls = count_decodes(monkeypatch)
    rebuilt = load_arrays(tiny_dataset, SIZE, cache_dir=cache)
    assert len(calls) == 1, "a damaged cache must be decoded again, not trusted"
    np.testing.assert_array_equal(rebuilt.y, first.y)
    assert rebuilt.files == first.files


def test_changed_file_invalidates_the_cache(tiny_dataset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_arrays(tiny_dataset, SIZE, cache_dir=cache)
    target = tiny_dataset / "COVID" / "COVID (3).png"
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(target)  # new content
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    calls = count_decodes(monkeypatch)
    second = load_arrays(tiny_dataset, SIZE, cache_dir=cache)
    assert len(calls) == 1
    assert second.fingerprint != first.fingerprint
    index = second.files.index("COVID/COVID (3).png")
    assert np.all(second.x[index] == 1.0)
    assert not np.all(first.x[index] == 1.0)


def test_added_file_invalidates_the_cache(tiny_dataset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    load_arrays(tiny_dataset, SIZE, cache_dir=cache)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tiny_dataset / "COVID" / "new.png")
    calls = count_decodes(monkeypatch)
    second = load_arrays(tiny_dataset, SIZE, cache_dir=cache)
    assert len(calls) == 1
    assert len(second) == 49


def test_fingerprint_follows_content_not_time_stamps_or_location(tiny_dataset, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_dataset, copy)  # new time stamps, same bytes
    for path in copy.rglob("*.png"):
        os.utime(path, ns=(0, 1_000_000_000))
    original = fingerprint(scan_image_folder(tiny_dataset), tmp_path / "c1")
    assert fingerprint(scan_image_folder(copy), tmp_path / "c2") == original
    target = copy / "COVID" / "COVID (3).png"
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(target)
    os.utime(target, ns=(0, 1_000_000_000))  # same time stamp as before the edit
    assert fingerprint(scan_image_folder(copy), tmp_path / "c3") != original


def test_a_damaged_fingerprint_memo_is_not_trusted(tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    honest = fingerprint(scan_image_folder(tiny_dataset), cache)
    (memo,) = (cache / "fingerprints").iterdir()
    memo.write_text("not a digest")
    assert fingerprint(scan_image_folder(tiny_dataset), cache) == honest
    memo.write_bytes(b"\xff\xfe")
    assert fingerprint(scan_image_folder(tiny_dataset), cache) == honest


def test_dicom_files_carry_their_patient_group(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2)
    stored = np.full((8, 8), 500, dtype=np.int16)
    (root / "COVID" / "scan.dcm").write_bytes(ct_dicom_bytes(stored, patient_id="P-1"))
    (root / "non-COVID" / "other.dcm").write_bytes(ct_dicom_bytes(stored, patient_id="P-2"))
    dataset = load_arrays(root, SIZE)
    # pseudonyms in file order, never the IDs (tests/test_hostile_slices.py greps the cache)
    pseudonyms = {"COVID/scan.dcm": "patient 1", "non-COVID/other.dcm": "patient 2"}
    assert dataset.dicom_groups == pseudonyms
    subset = dataset.subset(np.array([dataset.files.index("COVID/scan.dcm"), 0]))
    assert subset.files == ["COVID/scan.dcm", dataset.files[0]]
    assert subset.dicom_groups == {"COVID/scan.dcm": "patient 1"}
    assert subset.x.shape == (2, SIZE, SIZE, 1)
    cached = load_arrays(root, SIZE)
    assert cached.dicom_groups == dataset.dicom_groups


# ---------------------------------------------------------------------------- data source


def test_data_dir_with_train_and_test(tmp_path, monkeypatch):
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "test").mkdir()
    monkeypatch.setenv("CTDEMO_DATA_DIR", str(tmp_path / "data"))
    source = resolve_data_source()
    assert source.origin == "CTDEMO_DATA_DIR"
    assert source.train_dir == tmp_path / "data" / "train"
    assert source.test_dir == tmp_path / "data" / "test"


def test_data_dir_with_train_only(tmp_path, monkeypatch):
    (tmp_path / "data" / "train").mkdir(parents=True)
    monkeypatch.setenv("CTDEMO_DATA_DIR", str(tmp_path / "data"))
    source = resolve_data_source()
    assert source.train_dir == tmp_path / "data" / "train"
    assert source.test_dir is None


def test_data_dir_as_plain_image_folder(tiny_dataset, monkeypatch):
    monkeypatch.setenv("CTDEMO_DATA_DIR", str(tiny_dataset))
    source = resolve_data_source()
    assert source.origin == "CTDEMO_DATA_DIR"
    assert source.train_dir == tiny_dataset
    assert source.test_dir is None
    assert scan_image_folder(source.train_dir).class_names == ["COVID", "non-COVID"]


def test_downloaded_dataset_is_used_when_complete(tmp_path, monkeypatch):
    monkeypatch.delenv("CTDEMO_DATA_DIR", raising=False)
    dest = config.default_download_dest()
    make_image_folder(dest, per_class=2)
    assert resolve_data_source().origin == "embedded demo set", "no marker: not complete"
    (dest / MARKER).write_text("{}")
    source = resolve_data_source()
    assert source.origin == "downloaded"
    assert source.train_dir == dest
    assert source.test_dir is None


def test_fallback_is_the_embedded_demo_set(monkeypatch, isolated_home):
    monkeypatch.delenv("CTDEMO_DATA_DIR", raising=False)
    source = resolve_data_source()
    assert source.origin == "embedded demo set"
    assert source.train_dir == config.DEMO_BUNDLE_DIR
    assert source.test_dir is None
    assert config.home_dir() == isolated_home


def test_empty_data_dir_variable_means_unset(monkeypatch):
    monkeypatch.setenv("CTDEMO_DATA_DIR", "")
    assert resolve_data_source().origin == "embedded demo set"
