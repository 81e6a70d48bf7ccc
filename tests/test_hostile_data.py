"""Hostile inputs, round 2 (issue 20): downloads, archives, dataset folders, splits and cards.

One visitor's worst file must never take the server down, lose data or end in a traceback:
a download deletes only what a download made and stops at a byte cap; a zip whose names no
file system holds is refused with a sentence; class folders that differ only in capitals are
refused; a class too small to be on both sides of the split is named; and nothing the library
writes is invalid JSON. Downloads are served from 127.0.0.1 or file:// only.
"""

from __future__ import annotations

import io
import json
import math
import struct
import time
import zlib
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from ctdemo.cli import main
from ctdemo.evaluation.metrics import Interval, classification_report, shown
from ctdemo.evaluation.splits import SplitSpec, file_number_groups, split_indices
from ctdemo.io import download
from ctdemo.io.archives import ArchiveError, safe_extract
from ctdemo.io.download import DownloadError, download_dataset, is_complete
from ctdemo.io.folders import DatasetError, scan_image_folder
from ctdemo.io.uploads import MARKER as UPLOAD_MARKER
from ctdemo.io.uploads import import_zip_dataset, owner_dir, remove_stale_uploads
from ctdemo.models.cards import ModelCard, json_safe
from ctdemo.models.specs import Architecture

from conftest import ROOT, make_image_folder, zip_folder
from loopback import LoopbackServer, serving
from test_cli import run_cli

OWNER = "hostile-visitor"
TINY_MLP = Architecture("mlp", 24, 0.2, hidden_units=(8,))


# ---------------------------------------------------------------------------- helpers


def png(value: int = 90, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


GOOD = {b"COVID/a (1).png": png(10), b"COVID/a (2).png": png(20), b"non-COVID/b (1).png": png(30)}


def raw_zip(entries: dict[bytes, bytes], utf8: bool = False) -> bytes:
    """A zip written header by header: names are the bytes given, stored (not compressed),
    with general purpose bit 11 ("names are UTF-8") set when `utf8`."""
    flags = 0x800 if utf8 else 0
    out, central = bytearray(), bytearray()
    for name, data in entries.items():
        offset, crc = len(out), zlib.crc32(data)
        out += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, flags, 0, 0, 33,
            crc, len(data), len(data), len(name), 0,
        )  # fmt: skip
        out += name + data
        central += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, flags, 0, 0, 33,
            crc, len(data), len(data), len(name), 0, 0, 0, 0, 0, offset,
        )  # fmt: skip
        central += name
    count = len(entries)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central), len(out), 0)
    return bytes(out + central + end)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what must survive a refused command."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def workspaces(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".ctdemo-download-"))


def assert_one_error_line(stderr: str, returncode: int) -> str:
    assert returncode == 1, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), stderr
    return lines[-1]


@pytest.fixture
def dataset_zip(tmp_path) -> Path:
    """A Kaggle-like archive on disk (one wrapping folder of COVID/ and non-COVID/)."""
    make_image_folder(tmp_path / "source", per_class=3, size=16)
    archive = tmp_path / "dataset.zip"
    archive.write_bytes(zip_folder(tmp_path / "source", prefix="sarscov2-ctscan-dataset/"))
    return archive


@pytest.fixture
def someone_elses_folder(tmp_path) -> Path:
    """A folder of a person's own files, named as a download destination might be."""
    folder = tmp_path / "Documents"
    (folder / "photos").mkdir(parents=True)
    (folder / "thesis.tex").write_text("four years of work")
    (folder / "photos" / "cat.png").write_bytes(png(200))
    return folder


# ---------------------------------------------------------------------------- 1. data loss


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_cli_download_into_a_folder_of_other_files_refuses_and_deletes_nothing(
    dataset_zip, someone_elses_folder, tmp_path, force
):
    before = tree(someone_elses_folder)
    args = ["download", "--url", dataset_zip.as_uri(), "--dest", someone_elses_folder]
    result = run_cli(*args, *(["--force"] if force else []), home=tmp_path / "home")
    line = assert_one_error_line(result.stderr, result.returncode)
    assert "already holds files" in line and "new or empty folder" in line
    assert tree(someone_elses_folder) == before, "the download deleted a person's files"
    assert not is_complete(someone_elses_folder)
    assert workspaces(tmp_path) == []


def test_download_fills_an_empty_folder_and_force_replaces_only_its_own(dataset_zip, tmp_path):
    dest = tmp_path / "empty"
    dest.mkdir()
    assert download_dataset(dataset_zip.as_uri(), dest) == dest
    assert is_complete(dest) and scan_image_folder(dest).class_counts() == {
        "COVID": 3,
        "non-COVID": 3,
    }
    (dest / "COVID" / "COVID (1).png").unlink()  # a previous download of ours, changed
    download_dataset(dataset_zip.as_uri(), dest, force=True)
    assert (dest / "COVID" / "COVID (1).png").is_file()
    assert workspaces(tmp_path) == []


def test_download_to_a_file_or_a_link_is_refused(dataset_zip, tmp_path, someone_elses_folder):
    file_dest = tmp_path / "notes.txt"
    file_dest.write_text("mine")
    link_dest = tmp_path / "link"
    link_dest.symlink_to(someone_elses_folder)
    before = tree(someone_elses_folder)
    for dest in (file_dest, link_dest):
        with pytest.raises(DownloadError, match="not a folder"):
            download_dataset(dataset_zip.as_uri(), dest, force=True)
    assert file_dest.read_text() == "mine" and tree(someone_elses_folder) == before
    assert link_dest.is_symlink() and workspaces(tmp_path) == []


def test_stale_upload_cleanup_removes_only_what_an_import_made(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the app's")
    folder = owner_dir(OWNER)
    ours = folder / ("0123456789abcdef" * 2)
    (ours / "COVID").mkdir(parents=True)
    (ours / UPLOAD_MARKER).write_text("{}")
    cut_short = folder / ".tmp-abc123"
    cut_short.mkdir()
    foreign = folder / "backup-of-my-scans"
    foreign.mkdir()
    (foreign / "scan.png").write_bytes(png())
    (folder / "README.txt").write_text("a file someone put here")
    (folder / "link").symlink_to(outside)
    remove_stale_uploads(now=time.time() + 10 * 24 * 3600)
    assert not ours.exists() and not cut_short.exists()
    assert (foreign / "scan.png").is_file(), "the cleanup deleted a folder it did not make"
    assert (folder / "README.txt").is_file() and (folder / "link").is_symlink()
    assert (outside / "keep.txt").is_file()


# ---------------------------------------------------------------------------- 2. bounded download


class EndlessServer(LoopbackServer):
    """`/endless`: a chunked body that never ends. `/huge`: a Content-Length of a terabyte.
    Counts the bytes sent; gives up by itself after `SAFETY` bytes so a test cannot hang."""

    SAFETY = 512 * 2**20

    def __init__(self):
        self.sent = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                if self.path == "/huge":
                    self.send_header("Content-Length", str(10**12))
                else:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"\0" * 65536
                framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
                try:
                    while server.sent < server.SAFETY:
                        self.wfile.write(chunk if self.path == "/huge" else framed)
                        server.sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.listen(Handler)


@pytest.fixture
def endless(monkeypatch):
    yield from serving(EndlessServer(), monkeypatch)


CAP = 2 * 2**20


def test_an_endless_http_stream_stops_at_the_cap_and_leaves_nothing(endless, tmp_path):
    dest = tmp_path / "datasets" / "ct"
    progress: list[int] = []
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"kept sending, past the 2\.0 MB"):
        download_dataset(
            endless.url("/endless"),
            dest,
            max_bytes=CAP,
            timeout=10,
            progress=lambda done, total: progress.append(done),
        )
    assert time.monotonic() - started < 15
    assert max(progress) <= CAP
    assert endless.sent < EndlessServer.SAFETY, "the client read until the server gave up"
    assert not dest.exists() and workspaces(dest.parent) == []


def test_a_declared_length_over_the_cap_is_refused_before_reading(endless, tmp_path):
    dest = tmp_path / "datasets" / "ct"
    progress: list[int] = []
    with pytest.raises(DownloadError, match=r"says it is 931\.3 GB, over the 2\.0 MB"):
        download_dataset(
            endless.url("/huge"), dest, max_bytes=CAP, timeout=10, progress=progress.append
        )
    assert progress == [], "bytes were read after the length said too many"
    assert not dest.exists() and workspaces(dest.parent) == []


def test_file_dev_zero_stops_at_the_cap(tmp_path):
    dest = tmp_path / "datasets" / "ct"
    started = time.monotonic()
    with pytest.raises(DownloadError, match="kept sending"):
        download_dataset(Path("/dev/zero").as_uri(), dest, max_bytes=CAP)
    assert time.monotonic() - started < 15
    assert not dest.exists() and workspaces(dest.parent) == []


def test_cli_download_of_dev_zero_ends_in_one_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", CAP)  # the default cap, made small
    dest = tmp_path / "datasets" / "ct"
    code = main(["download", "--url", Path("/dev/zero").as_uri(), "--dest", str(dest)])
    stderr = capsys.readouterr().err
    assert code == 1 and "Traceback" not in stderr
    assert stderr.count("error: ") == 1 and "kept sending, past the 2.0 MB" in stderr
    assert not dest.exists() and workspaces(dest.parent) == []


def test_the_default_cap_is_a_few_gigabytes_above_the_real_archive():
    assert 230 * 2**20 < download.MAX_DOWNLOAD_BYTES <= 4 * 2**30


# ---------------------------------------------------------------------------- 3. zip names


DEEP = b"COVID/" + b"d/" * 2000 + b"deep.png"  # 2,000 nested folders, over PATH_MAX in all
LONG_PATH = b"COVID/" + b"/".join([b"p" * 200] * 22) + b"/x.png"  # each part fits; 4,400 bytes
HOSTILE_NAMES = {
    "non-utf8-flagged-utf8": (b"COVID/caf\xe9 (3).png", True, "one of them is not"),
    "component-over-255-bytes": (b"COVID/" + b"a" * 300 + b".png", False, "name of 304 bytes"),
    "multibyte-component-over-255-bytes": (
        ("COVID/" + "é" * 130 + ".png").encode(),
        True,
        "264 bytes",
    ),
    "path-over-path-max": (LONG_PATH, False, "path of 4,"),
    "thousands-of-nested-folders": (DEEP, False, "2,001 deep"),
}


def hostile_zip(case: str) -> bytes:
    name, utf8, _ = HOSTILE_NAMES[case]
    return raw_zip({**GOOD, name: png(40)}, utf8=utf8)


def uploads_left(home: Path) -> list[Path]:
    return sorted((home / "uploads").rglob("*")) if (home / "uploads").exists() else []


@pytest.mark.parametrize("case", list(HOSTILE_NAMES))
def test_a_zip_with_names_no_file_system_holds_is_refused_in_a_sentence(case, isolated_home):
    with pytest.raises(ArchiveError, match=HOSTILE_NAMES[case][2]) as caught:
        import_zip_dataset(hostile_zip(case), OWNER)
    message = str(caught.value)
    assert len(message) < 400 and "\n" not in message, "a message, not a dump of the name"
    assert uploads_left(isolated_home) == [], "a refused zip left files behind"


def test_a_name_that_fits_the_zip_but_not_the_servers_folder_is_refused(tmp_path):
    """The checks bound the name inside the archive; the server's own folders come on top,
    and a path that still ends up too long is refused the same way."""
    target = tmp_path.joinpath(*["t" * 200] * 18)  # about 3,700 bytes of folders already
    target.mkdir(parents=True)
    name = b"COVID/" + b"/".join([b"q" * 200] * 4) + b"/x.png"  # 813 bytes: under the cap
    with pytest.raises(ArchiveError, match="too long for this server"):
        safe_extract(io.BytesIO(raw_zip({name: png()})), target)


def test_the_same_names_as_plain_utf8_still_unpack(isolated_home):
    name = ("non-COVID/" + "é" * 100 + ".png").encode()  # 205 bytes: fits
    folder = import_zip_dataset(raw_zip({**GOOD, name: png(50)}, utf8=True), OWNER)
    assert folder.class_counts() == {"COVID": 2, "non-COVID": 2}


def open_page(page: str, state: dict) -> AppTest:
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=180).run()
    for key, value in state.items():
        app.session_state[key] = value
    app.switch_page(page).run()
    assert not app.exception
    return app


@pytest.mark.slow
def test_train_page_answers_each_hostile_name_with_one_error(isolated_home):
    app = open_page("app_pages/train/page.py", {"data": "Upload a .zip of class folders"})
    for case in HOSTILE_NAMES:
        app.file_uploader(key="data_zip").set_value(
            (f"{case}.zip", hostile_zip(case), "application/zip")
        )
        app.run()
        assert not app.exception, (case, [e.value for e in app.exception])
        errors = [message.value for message in app.error]
        assert len(errors) == 1 and errors[0].startswith("This zip cannot be used: "), errors
        assert str(isolated_home) not in errors[0]
        assert app.button(key="train").disabled
    assert uploads_left(isolated_home) == []


@pytest.mark.slow
def test_compare_page_answers_each_hostile_name_with_one_error(isolated_home):
    state = {"compare_data": "Upload a labelled .zip of class folders"}
    app = open_page("app_pages/compare/page.py", state)
    for case in HOSTILE_NAMES:
        app.file_uploader(key="compare_zip").set_value(
            (f"{case}.zip", hostile_zip(case), "application/zip")
        )
        app.run()
        assert not app.exception, (case, [e.value for e in app.exception])
        errors = [message.value for message in app.error]
        assert len(errors) == 1 and errors[0].startswith("This zip cannot be used: "), errors
    assert uploads_left(isolated_home) == []


# ---------------------------------------------------------------------------- 4. class folders


@pytest.mark.parametrize(
    "names",
    [("COVID", "covid"), ("Café", "Cafe\u0301")],
    ids=["capitals", "unicode-forms"],
)
def test_class_folders_that_differ_only_in_capitals_are_refused(tmp_path, names):
    make_image_folder(tmp_path / "data", per_class=1, classes=(*names, "non-COVID"), size=8)
    with pytest.raises(DatasetError, match="differ only in capitals") as caught:
        scan_image_folder(tmp_path / "data")
    assert all(f"{name}/" in str(caught.value) for name in names)


def test_a_zip_with_case_colliding_classes_is_refused_and_leaves_nothing(isolated_home):
    data = raw_zip({b"COVID/a.png": png(1), b"covid/b.png": png(2), b"non-COVID/c.png": png(3)})
    with pytest.raises(DatasetError, match="COVID/ and covid/"):
        import_zip_dataset(data, OWNER)
    assert uploads_left(isolated_home) == []


# ---------------------------------------------------------------------------- 5. tiny class


def one_image_class(root: Path) -> Path:
    """Six COVID slices (three file-number groups of two) and one non-COVID slice."""
    make_image_folder(root, per_class=6, size=24)
    for path in sorted((root / "non-COVID").iterdir())[1:]:
        path.unlink()
    return root


@pytest.mark.parametrize("method", ["grouped", "random"])
def test_a_split_refuses_a_class_it_cannot_put_on_both_sides(method):
    labels = np.array([0, 0, 0, 0, 0, 0, 1])
    files = [f"COVID/COVID ({n}).png" for n in range(1, 7)] + ["non-COVID/non-COVID (1).png"]
    groups = file_number_groups(files, labels, block_size=2)
    spec = SplitSpec(method, 0.3, 0, block_size=2, group_source="file-number blocks of 2")
    with pytest.raises(DatasetError) as caught:
        split_indices(labels, groups, spec, ["COVID", "non-COVID"])
    message = str(caught.value)
    assert "no slices for validation in the class non-COVID" in message
    assert "it has 1 slice" in message
    assert ("at least 2 groups" if method == "grouped" else "at least 2 slices") in message


def test_a_grouped_split_puts_a_group_of_every_class_in_validation():
    labels = np.array([0] * 6 + [1] * 2)
    files = [f"c/{n}.png" for n in range(6)] + ["n/0.png", "n/1.png"]
    groups = file_number_groups(files, labels, block_size=1)
    for seed in range(10):
        train, val = split_indices(labels, groups, SplitSpec("grouped", 0.05, seed, 1))
        assert set(labels[val].tolist()) == {0, 1} == set(labels[train].tolist())


def test_train_on_folder_with_a_one_image_class_says_which_class_is_too_small(tmp_path):
    from ctdemo.models.experiment import train_on_folder
    from ctdemo.models.specs import TrainConfig

    data = one_image_class(tmp_path / "data")
    config = TrainConfig(TINY_MLP, epochs=1, batch_size=4, patience=0)
    spec = SplitSpec("grouped", 0.3, 0, block_size=2)
    with pytest.raises(DatasetError, match="in the class non-COVID: it has 1 slice in 1 group"):
        train_on_folder(data, config, spec, "tiny")


@pytest.mark.slow
def test_cli_train_with_a_one_image_class_ends_in_one_error_and_writes_nothing(tmp_path):
    data = one_image_class(tmp_path / "data")
    out = tmp_path / "models" / "tiny.keras"
    result = run_cli(
        *("train", "--arch", "mlp", "--data", data, "--out", out),
        *("--epochs", "1", "--image-size", "24", "--block-size", "2"),
        home=tmp_path / "home",
    )
    line = assert_one_error_line(result.stderr, result.returncode)
    assert "class non-COVID" in line and "at least 2 groups" in line
    assert not out.exists() and not out.with_name("tiny.card.json").exists()


def strict_json(text: str) -> object:
    """json.loads that refuses NaN and Infinity, as every other JSON reader does."""

    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_undefined_metrics_are_none_and_the_report_is_strict_json():
    y_true = np.array([0, 0, 1, 1])
    never_positive = np.array([[0.1, 0.9]] * 4)  # the positive class (0) is never called
    report = classification_report(y_true, never_positive, ["COVID", "non-COVID"], 0)
    assert report["precision"] == {"value": None, "low": 0.0, "high": 1.0}  # nothing known
    assert report["sensitivity"]["value"] == 0.0
    assert strict_json(json.dumps(report, allow_nan=False)) == report
    assert shown(report["precision"]["value"]) == "n/a" and shown(0.935) == "93.5%"
    interval = Interval.from_dict(report["precision"])
    assert math.isnan(interval.value) and interval.to_dict() == report["precision"]


def test_a_card_with_undefined_numbers_is_written_as_strict_json():
    card = ModelCard(
        name="tiny",
        class_names=["COVID", "non-COVID"],
        positive_class="COVID",
        input={"image_size": 24},
        architecture={"kind": "mlp"},
        history={"loss": [0.7, math.nan], "val_loss": [math.inf, 0.6]},
        validation={"roc_auc": {"value": math.nan, "low": math.nan, "high": math.nan}},
        data={"ood": {"validation_acceptance": math.nan}},
    )
    parsed = strict_json(card.to_json())
    assert parsed["history"] == {"loss": [0.7, None], "val_loss": [None, 0.6]}
    assert parsed["validation"]["roc_auc"]["value"] is None
    assert parsed["data"]["ood"]["validation_acceptance"] is None
    assert ModelCard.from_json(card.to_json()).history["loss"] == [0.7, None]
    assert json_safe({"a": (1.0, -math.inf)}) == {"a": [1.0, None]}
