"""ctdemo.io.uploads: a visitor's zip of class folders, unpacked safely under the home."""

from __future__ import annotations

import io
import os
import stat
import time
import zipfile
from pathlib import Path

import pytest

from ctdemo.io.archives import ArchiveError, ArchiveLimits
from ctdemo.io.folders import DatasetError, load_arrays
from ctdemo.io.uploads import (
    MARKER,
    STALE_AFTER_S,
    import_zip_dataset,
    owner_dir,
    uploads_dir,
)

from conftest import make_image_folder, zip_bytes, zip_folder

OWNER = "session-1"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32  # a name with an image extension is all a scan needs


def symlink_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("COVID/a.png", PNG)
        bundle.writestr("non-COVID/b.png", PNG)
        link = zipfile.ZipInfo("non-COVID/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(link, "/etc/passwd")
    return buffer.getvalue()


def tree(folder: Path) -> set[str]:
    return (
        {p.relative_to(folder).as_posix() for p in folder.rglob("*")} if folder.exists() else set()
    )


def good_zip(tmp_path: Path, prefix: str = "", per_class: int = 5) -> bytes:
    source = make_image_folder(tmp_path / "source", per_class=per_class, size=24)
    (source / "COVID" / "notes.txt").write_text("not an image")
    return zip_folder(source, prefix)


def test_a_good_zip_becomes_an_image_folder_under_the_owner(tmp_path, isolated_home):
    data = good_zip(tmp_path)
    before_tmp = tree(tmp_path)
    folder = import_zip_dataset(data, OWNER)
    assert folder.class_names == ["COVID", "non-COVID"]
    assert folder.class_counts() == {"COVID": 5, "non-COVID": 5}
    assert folder.skipped == [("COVID/notes.txt", "not an image file")]
    assert folder.root.parent == owner_dir(OWNER) == uploads_dir() / OWNER
    assert folder.root.is_relative_to(isolated_home)
    # Everything written lies in that one folder; nothing outside the home changed.
    written = tree(isolated_home)
    prefix = folder.root.relative_to(isolated_home).as_posix()
    assert {"uploads", "uploads/" + OWNER} | {p for p in written if p.startswith(prefix)} == written
    assert tree(tmp_path) == before_tmp
    assert (folder.root / MARKER).is_file()
    assert len(load_arrays(folder, 24)) == 10


def test_a_wrapping_folder_and_train_test_layout_are_found(tmp_path):
    wrapped = import_zip_dataset(good_zip(tmp_path, prefix="my data/"), OWNER)
    assert wrapped.root.name == "my data" and wrapped.class_counts()["COVID"] == 5
    split = zip_bytes({"d/train/A/1.png": PNG, "d/train/B/2.png": PNG, "d/test/A/3.png": PNG})
    folder = import_zip_dataset(split, OWNER)
    assert folder.root.name == "train" and folder.class_names == ["A", "B"]


def test_the_same_bytes_reuse_their_folder(tmp_path, isolated_home):
    data = good_zip(tmp_path)
    first = import_zip_dataset(data, OWNER)
    (first.root / "COVID" / "extra.png").write_bytes(PNG)  # proves nothing was re-unpacked
    again = import_zip_dataset(data, OWNER)
    assert again.root == first.root
    assert again.class_counts()["COVID"] == 6
    assert [p.name for p in owner_dir(OWNER).iterdir()] == [first.root.name]


MALFORMED = {
    "empty upload": (b"", ArchiveError, "empty"),
    "not a zip": (b"just some text, not an archive\n" * 4, ArchiveError, "not a zip"),
    "parent path": (
        zip_bytes({"COVID/a.png": PNG, "non-COVID/b.png": PNG, "../x.png": PNG}),
        ArchiveError,
        "escapes its folder",
    ),
    "nested parent path": (
        zip_bytes({"COVID/a.png": PNG, "non-COVID/../../x.png": PNG}),
        ArchiveError,
        "escapes its folder",
    ),
    "absolute path": (
        zip_bytes({"COVID/a.png": PNG, "/tmp/ctdemo-evil.png": PNG}),
        ArchiveError,
        "absolute path",
    ),
    "symlink": (symlink_zip(), ArchiveError, "symbolic link"),
    "zip bomb": (
        zip_bytes({"COVID/a.png": b"\0" * 300_000, "non-COVID/b.png": b"\0" * 300_000}),
        ArchiveError,
        "unpacks to",
    ),
    "one class only": (
        zip_bytes({"COVID/a.png": PNG, "COVID/b.png": PNG}),
        DatasetError,
        "one folder per class .at least two.*one folder, COVID, and no class folders inside",
    ),
    "one class beside a stray file": (
        zip_bytes({"COVID/a.png": PNG, "readme.txt": b"hi"}),
        DatasetError,
        "one folder per class .at least two.*only one, COVID",
    ),
    "empty class": (
        zip_bytes({"COVID/a.png": PNG, "non-COVID/readme.txt": b"to do"}),
        DatasetError,
        "hold no images: non-COVID",
    ),
    "empty class folder": (
        zip_bytes({"COVID/a.png": PNG, "non-COVID/": b""}),
        DatasetError,
        "one folder per class .at least two.*one folder, COVID",
    ),
    "no images": (
        zip_bytes({"COVID/a.txt": b"x", "non-COVID/b.csv": b"y"}),
        DatasetError,
        "hold no images: COVID, non-COVID",
    ),
    "loose files, no folders": (
        zip_bytes({"a.png": PNG, "b.png": PNG}),
        DatasetError,
        "one folder per class .at least two.*no folders",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_zip_is_refused_and_leaves_nothing(case, tmp_path, isolated_home):
    data, error, match = MALFORMED[case]
    evil_before = set(Path("/tmp").glob("ctdemo-evil*"))
    with pytest.raises(error, match=match) as raised:
        import_zip_dataset(data, OWNER, limits=ArchiveLimits(max_total_bytes=200_000))
    assert str(isolated_home) not in str(raised.value), "a server path reached the message"
    assert tree(isolated_home) <= {"uploads"}, "a refused zip left files behind"
    assert set(Path("/tmp").glob("ctdemo-evil*")) == evil_before
    assert not (tmp_path.parent / "x.png").exists()


def test_an_import_cut_short_is_not_trusted_but_redone(tmp_path):
    """A server killed mid-import leaves its private .tmp- folder, or (renamed, no marker) a
    partial folder at the final name: the same upload again is unpacked whole."""
    data = good_zip(tmp_path)
    whole = import_zip_dataset(data, OWNER)
    final = whole.root
    (final / MARKER).unlink()
    for path in list((final / "non-COVID").iterdir())[1:]:
        path.unlink()
    stale = owner_dir(OWNER) / ".tmp-cut-short"
    (stale / "COVID").mkdir(parents=True)
    (stale / "COVID" / "half.png").write_bytes(PNG[:8])
    again = import_zip_dataset(data, OWNER)
    assert again.root == final and (final / MARKER).is_file()
    assert again.class_counts() == {"COVID": 5, "non-COVID": 5}
    assert [entry.name for entry in owner_dir(OWNER).iterdir() if entry != stale] == [final.name]


def test_a_zip_bomb_that_lies_about_its_size_is_caught_while_unpacking(isolated_home):
    payload = b"\0" * 400_000
    data = bytearray(zip_bytes({"COVID/a.png": payload, "non-COVID/b.png": PNG}))
    declared = len(payload).to_bytes(4, "little")
    lie = (1_000).to_bytes(4, "little")
    assert data.count(declared) == 2  # the local header and the central directory
    data = bytes(data).replace(declared, lie)
    with pytest.raises(ArchiveError, match=r"zip bomb|damaged"):
        import_zip_dataset(data, OWNER, limits=ArchiveLimits(max_total_bytes=200_000))
    assert tree(isolated_home) <= {"uploads"}


def test_an_upload_over_the_size_cap_is_refused_before_unpacking(isolated_home):
    with pytest.raises(ArchiveError, match="at most"):
        import_zip_dataset(b"PK" + b"\0" * 2000, OWNER, limits=ArchiveLimits(max_total_bytes=1000))
    assert tree(isolated_home) == set()


def test_an_odd_owner_id_cannot_leave_the_uploads_folder(tmp_path, isolated_home):
    folder = import_zip_dataset(good_zip(tmp_path), "../../escape")
    assert folder.root.parent.parent == uploads_dir()
    assert ".." not in folder.root.relative_to(isolated_home).parts
    with pytest.raises(ValueError, match="owner"):
        import_zip_dataset(b"x", "")


def test_the_per_owner_cap_keeps_the_latest_uploads(tmp_path):
    entries = [zip_bytes({"A/1.png": PNG, "B/2.png": PNG + bytes([n])}) for n in range(4)]
    folders = [import_zip_dataset(data, OWNER, keep=3) for data in entries]
    other = import_zip_dataset(entries[0], "someone-else")
    assert len(list(owner_dir(OWNER).iterdir())) == 3
    assert not folders[0].root.exists() and folders[-1].root.exists()
    assert other.root.is_dir()


def test_uploads_nobody_used_for_hours_go_at_the_next_import(tmp_path):
    entries = [zip_bytes({"A/1.png": PNG, "B/2.png": PNG + bytes([n])}) for n in range(3)]
    ended = import_zip_dataset(entries[0], "ended-session")
    in_use = import_zip_dataset(entries[1], OWNER)
    cut_short = owner_dir(OWNER) / ".tmp-import-cut-short"
    cut_short.mkdir()
    long_ago = time.time() - STALE_AFTER_S - 60
    for folder in (ended.root, cut_short):
        os.utime(folder, (long_ago, long_ago))
    import_zip_dataset(entries[1], OWNER)  # in use again: touched, kept
    assert not ended.root.exists() and not owner_dir("ended-session").exists()
    assert not cut_short.exists() and in_use.root.is_dir()
    fresh = import_zip_dataset(entries[2], "another")
    assert fresh.root.is_dir() and in_use.root.is_dir()
