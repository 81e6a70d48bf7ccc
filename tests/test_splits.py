"""ctdemo.evaluation.splits: deterministic, stratified splits; grouped splits keep groups whole."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ctdemo.evaluation.splits import (
    SplitSpec,
    assign_groups,
    file_number_groups,
    read_groups_csv,
    split_indices,
)
from ctdemo.io.folders import DatasetError, scan_image_folder


def numbered_files(counts: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """Relative file names like the real data's ("COVID/Covid (7).png") and their labels."""
    files, labels = [], []
    for label, (name, count) in enumerate(counts.items()):
        for number in range(1, count + 1):
            files.append(f"{name}/{name.title()} ({number}).png")
            labels.append(label)
    return files, np.array(labels)


FILES, LABELS = numbered_files({"COVID": 200, "non-COVID": 140})


def check_partition(train: np.ndarray, val: np.ndarray, n: int) -> None:
    assert train.dtype.kind == "i" and val.dtype.kind == "i"
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)


def sides_of_groups(groups: list[str], val: np.ndarray) -> dict[str, set[bool]]:
    is_val = np.zeros(len(groups), dtype=bool)
    is_val[val] = True
    sides: dict[str, set[bool]] = {}
    for group, side in zip(groups, is_val, strict=True):
        sides.setdefault(group, set()).add(bool(side))
    return sides


def assert_no_group_on_both_sides(groups: list[str], val: np.ndarray) -> None:
    split_groups = [g for g, sides in sides_of_groups(groups, val).items() if len(sides) == 2]
    assert split_groups == [], f"groups on both sides: {split_groups[:5]}"


# ---------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("method", ["random", "grouped"])
def test_same_seed_same_split_different_seed_different_split(method):
    groups = file_number_groups(FILES, LABELS, block_size=5)
    first = split_indices(LABELS, groups, SplitSpec(method=method, seed=7))
    again = split_indices(LABELS, groups, SplitSpec(method=method, seed=7))
    other = split_indices(LABELS, groups, SplitSpec(method=method, seed=8))
    for part in range(2):
        np.testing.assert_array_equal(first[part], again[part])
    assert not np.array_equal(first[1], other[1])
    check_partition(*first, len(LABELS))
    check_partition(*other, len(LABELS))


# ---------------------------------------------------------------------------- stratification


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.35])
@pytest.mark.parametrize("method", ["random", "grouped"])
def test_each_class_gets_about_the_validation_fraction(method, fraction):
    groups = file_number_groups(FILES, LABELS, block_size=5)
    train, val = split_indices(
        LABELS, groups, SplitSpec(method=method, val_fraction=fraction, seed=3)
    )
    check_partition(train, val, len(LABELS))
    for label in (0, 1):
        members = np.sum(label == LABELS)
        share = np.sum(LABELS[val] == label) / members
        tolerance = 1 / members if method == "random" else 5 / members  # one block of 5
        assert abs(share - fraction) <= tolerance + 1e-9, (label, share)


def test_random_split_keeps_at_least_one_of_each_class_in_training():
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    train, val = split_indices(labels, None, SplitSpec(method="random", val_fraction=0.9))
    assert set(labels[train].tolist()) == {0, 1}
    assert set(labels[val].tolist()) == {0, 1}


def test_grouped_split_leaves_the_last_group_of_a_class_in_training():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    groups = ["a", "a", "a", "d", "b", "b", "c"]
    for seed in range(5):
        train, val = split_indices(labels, groups, SplitSpec("grouped", 0.9, seed))
        assert set(labels[train].tolist()) == {0, 1} == set(labels[val].tolist())
        check_partition(train, val, 7)


def test_grouped_split_refuses_a_class_of_one_group():
    labels = np.array([0, 0, 0, 1, 1, 1])
    groups = ["a", "a", "a", "b", "b", "c"]  # class 0 is one group
    with pytest.raises(DatasetError, match="no slices for validation in the class 0"):
        split_indices(labels, groups, SplitSpec(method="grouped", val_fraction=0.5))


# ---------------------------------------------------------------------------- groups whole


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_with_file_number_groups_never_splits_a_group(seed):
    groups = file_number_groups(FILES, LABELS, block_size=25)
    train, val = split_indices(LABELS, groups, SplitSpec(seed=seed, val_fraction=0.25))
    check_partition(train, val, len(LABELS))
    assert len(val) > 0
    assert_no_group_on_both_sides(groups, val)


def test_grouped_with_a_groups_csv_never_splits_a_group(tmp_path):
    rng = np.random.default_rng(0)
    patients = [f"patient-{rng.integers(0, 30)}" for _ in FILES]
    labels = np.array([int(p.split("-")[1]) % 2 for p in patients])  # one class per patient
    csv = tmp_path / "groups.csv"
    lines = ["file,group"] + [
        f"{f.split('/')[-1]},{p}" for f, p in zip(FILES, patients, strict=True)
    ]
    csv.write_text("\n".join(lines) + "\n")
    groups, source = assign_groups(FILES, labels, groups_csv=read_groups_csv(csv))
    assert source == "groups CSV"
    assert groups == patients
    train, val = split_indices(labels, groups, SplitSpec(seed=4, val_fraction=0.3))
    check_partition(train, val, len(labels))
    assert len(val) > 0
    assert_no_group_on_both_sides(groups, val)


def test_grouped_with_dicom_groups_never_splits_a_patient():
    # patients interleaved across file numbers: file-number blocks would mix them
    dicom = {f: f"PAT-{i % 17}" for i, f in enumerate(FILES)}
    labels = np.array([(i % 17) % 2 for i in range(len(FILES))])
    groups, source = assign_groups(FILES, labels, dicom_groups=dicom)
    assert source == "DICOM PatientID/StudyInstanceUID"
    for seed in range(3):
        train, val = split_indices(labels, groups, SplitSpec(seed=seed))
        check_partition(train, val, len(labels))
        assert len(val) > 0
        assert_no_group_on_both_sides(groups, val)


def test_grouped_with_mixed_class_groups_uses_the_majority():
    labels = np.array([0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1])
    groups = ["a", "a", "a", "b", "b", "b", "c", "c", "d", "d", "e", "e"]
    for seed in range(5):
        train, val = split_indices(labels, groups, SplitSpec(seed=seed, val_fraction=0.3))
        check_partition(train, val, len(labels))
        assert_no_group_on_both_sides(groups, val)


# ---------------------------------------------------------------------------- real data


def _number(name: str) -> int:
    return int(re.findall(r"\d+", name.rsplit("/", 1)[-1])[-1])


def _neighbour_pairs_across(files: list[str], labels: np.ndarray, val: np.ndarray):
    """Pairs (class, n) where slice n and n + 1 of a class fall on different sides."""
    is_val = np.zeros(len(files), dtype=bool)
    is_val[val] = True
    side = {
        (int(lab), _number(f)): bool(v) for f, lab, v in zip(files, labels, is_val, strict=True)
    }
    return [
        (label, n)
        for (label, n), here in side.items()
        if (label, n + 1) in side and side[(label, n + 1)] != here
    ]


def test_random_split_of_real_data_mixes_neighbours_grouped_does_not(real_train):
    folder = scan_image_folder(real_train)  # names only: nothing is decoded
    files = [folder.relative(path) for path in folder.files]
    labels = folder.labels
    assert len(files) > 1000

    _, random_val = split_indices(labels, None, SplitSpec(method="random", seed=0))
    random_across = _neighbour_pairs_across(files, labels, random_val)
    # about 2 * 0.2 * 0.8 = 32% of ~1,970 neighbour pairs straddle a random split
    assert len(random_across) > 400

    groups, source = assign_groups(files, labels)
    assert source == "file-number blocks of 25"
    _, grouped_val = split_indices(labels, groups, SplitSpec(method="grouped", seed=0))
    assert_no_group_on_both_sides(groups, grouped_val)
    grouped_across = _neighbour_pairs_across(files, labels, grouped_val)
    # only pairs that straddle a block boundary (24|25, 49|50, ...) may be split
    assert all((n + 1) % 25 == 0 for _, n in grouped_across), grouped_across[:5]
    assert len(grouped_across) < len(random_across) / 10
    for label in (0, 1):
        share = np.sum(labels[grouped_val] == label) / np.sum(labels == label)
        assert abs(share - 0.2) < 0.03


# ---------------------------------------------------------------------------- groups


def test_file_number_groups_parse_the_last_number():
    files = [
        "COVID/Covid (123).png",
        "COVID/Covid (124).png",
        "COVID/Covid (125).png",
        "COVID/Covid (24).png",
        "non-COVID/Non-Covid (123).png",
        "COVID/scan 3 slice 77.png",
        "COVID/patient 9/slice.png",
        "COVID/notes.png",
    ]
    labels = np.array([0, 0, 0, 0, 1, 0, 0, 0])
    groups = file_number_groups(files, labels, block_size=25)
    assert groups[:5] == ["0:4", "0:4", "0:5", "0:0", "1:4"]
    assert groups[5] == "0:3"  # 77 // 25: the last integer counts
    assert groups[6] == "0:COVID/patient 9/slice.png"  # folder numbers are not the file's
    assert groups[7] == "0:COVID/notes.png"
    assert file_number_groups(["a (7).png"], np.array([1]), block_size=1) == ["1:7"]


def test_assign_groups_precedence_csv_then_dicom_then_file_numbers():
    files = ["COVID/Covid (1).png", "COVID/Covid (2).png", "non-COVID/Non-Covid (1).png"]
    labels = np.array([0, 0, 1])
    dicom = {files[0]: "P1", files[1]: "P1", files[2]: "P2"}
    csv = {"Covid (1).png": "g1", "Covid (2).png": "g2", files[2]: "g3"}

    groups, source = assign_groups(files, labels, dicom_groups=dicom, groups_csv=csv)
    assert (groups, source) == (["g1", "g2", "g3"], "groups CSV")

    groups, source = assign_groups(files, labels, dicom_groups=dicom)
    assert (groups, source) == (["P1", "P1", "P2"], "DICOM PatientID/StudyInstanceUID")

    groups, source = assign_groups(files, labels, block_size=25)
    assert (groups, source) == (["0:0", "0:0", "1:0"], "file-number blocks of 25")

    partial = {files[0]: "P1"}  # DICOM groups for only some files: not used
    groups, source = assign_groups(files, labels, dicom_groups=partial, block_size=10)
    assert source == "file-number blocks of 10"
    assert groups == ["0:0", "0:0", "1:0"]


def test_assign_groups_csv_missing_a_file_is_an_error():
    files = ["COVID/Covid (1).png", "COVID/Covid (2).png"]
    with pytest.raises(ValueError, match="no group for 1 files"):
        assign_groups(files, np.array([0, 0]), groups_csv={"Covid (1).png": "g1"})


def test_read_groups_csv(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("group,file,extra\nA,COVID/Covid (1).png,x\nB,Covid (2).png,y\n")
    assert read_groups_csv(path) == {"COVID/Covid (1).png": "A", "Covid (2).png": "B"}


@pytest.mark.parametrize(
    "text", ["file,patient\na.png,1\n", "name,group\na.png,1\n", "", "just one line\n"]
)
def test_read_groups_csv_missing_columns_is_an_error(tmp_path, text):
    path = tmp_path / "g.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match="'file' and 'group'"):
        read_groups_csv(path)


# ---------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
@pytest.mark.parametrize("method", ["random", "grouped"])
def test_invalid_val_fraction_is_an_error(method, fraction):
    groups = file_number_groups(FILES, LABELS, 25)
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_indices(LABELS, groups, SplitSpec(method=method, val_fraction=fraction))


def test_unknown_method_and_grouped_without_groups_are_errors():
    with pytest.raises(ValueError, match="Unknown split"):
        split_indices(LABELS, None, SplitSpec(method="stratified-ish"))
    with pytest.raises(ValueError, match="needs groups"):
        split_indices(LABELS, None, SplitSpec(method="grouped"))


def test_split_spec_round_trips_as_a_dict():
    spec = SplitSpec(method="random", val_fraction=0.3, seed=5, block_size=10)
    assert SplitSpec(**spec.to_dict()) == spec
    assert spec.to_dict()["method"] == "random"
