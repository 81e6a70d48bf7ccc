"""Issue 8: every hostile input of `hostile_corpus` through every entry point.

Slices go through `ctdemo.io.slices.decode_slice`, one `python -m ctdemo predict --json` and one
upload of all of them on the Classify page; zips go through `import_zip_dataset` then
`load_arrays` (what the Train page does) and through the Train page itself. Each ends in its
expected typed error with a message for a person, or in a correct result; nothing is written
outside CTDEMO_HOME (the repository, the temporary folder and every folder a zip aims at are
checked); a fresh process decoding and importing the whole corpus stays within a memory bound.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

from ctdemo.io.archives import ArchiveError, ArchiveLimits
from ctdemo.io.decoded import SliceError
from ctdemo.io.folders import DatasetError, load_arrays
from ctdemo.io.slices import decode_slice
from ctdemo.io.uploads import MARKER, import_zip_dataset, uploads_dir

from conftest import ROOT
from hostile_corpus import (
    EITHER,
    ERROR,
    ESCAPE_TOKEN,
    OK,
    SliceCase,
    ZipCase,
    slice_corpus,
    zip_corpus,
)

SLICES = slice_corpus()
ZIPS = zip_corpus()
SLICE_IDS = [case.name for case in SLICES]
ZIP_IDS = [case.name for case in ZIPS]
MEMORY_BOUND_MB = 200
"""Peak resident growth allowed while decoding and importing the whole corpus (a 50000 x 50000
PNG would be 2.5 GB decoded; the zip bomb unpacks to 1 GiB)."""


# ---------------------------------------------------------------------------- helpers


def assert_valid_slice(pixels: np.ndarray) -> None:
    assert pixels.dtype == np.float32 and pixels.ndim == 2 and pixels.size
    assert np.all(np.isfinite(pixels)) and pixels.min() >= 0.0 and pixels.max() <= 1.0


def assert_message(case: SliceCase | ZipCase, message: str) -> None:
    assert message.strip(), f"{case.name}: an error with no message"
    assert re.search(case.match, message, re.IGNORECASE | re.DOTALL), (
        f"{case.name}: {message!r} does not match {case.match!r}"
    )
    assert "Traceback" not in message


def tree(folder: Path) -> set[str]:
    return (
        {p.relative_to(folder).as_posix() for p in folder.rglob("*")} if folder.exists() else set()
    )


SOURCE_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".sh", ".yml", ".yaml"}
"""Never written by the app: left out of the repository check, so that people editing the
code while the tests run do not fail them."""


def repository_changes() -> set[str]:
    """The working tree's changed and untracked files (ignored ones aside: caches), but
    source files."""
    lines = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return {line for line in lines if Path(line[3:].strip('"')).suffix not in SOURCE_SUFFIXES}


def escaped_files(home: Path) -> list[Path]:
    """Files named like the ones the corpus zips aim outside their folder, wherever a `..`,
    an absolute path or a drive path would have put them."""
    places = {Path("/"), Path("/tmp"), Path(tempfile.gettempdir()), ROOT, Path.cwd()}
    places |= {home, *home.parents}
    return sorted(path for place in places for path in place.glob(f"*{ESCAPE_TOKEN}*"))


@pytest.fixture
def outside(isolated_home, tmp_path, monkeypatch):
    """Watches what lies outside CTDEMO_HOME: the repository, a private temporary folder (as
    `tempfile`'s default) and the places a hostile zip aims at. Yields the home."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    before = repository_changes(), escaped_files(isolated_home)
    yield isolated_home
    assert list(scratch.iterdir()) == [], "a temporary file outside CTDEMO_HOME was left"
    assert escaped_files(isolated_home) == before[1], "a zip wrote outside its folder"
    assert repository_changes() == before[0], "the app wrote into the repository"


def upload_folders(home: Path) -> set[Path]:
    """uploads/<owner>/<dataset>: what a refused import must not add (its private workspace
    is one more folder there, until it is removed)."""
    return set((home / "uploads").glob("*/*"))


def slice_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for case in SLICES:
        (folder / case.filename).write_bytes(case.data)
    return [folder / case.filename for case in SLICES]


# ---------------------------------------------------------------------------- library: slices


def test_the_corpus_is_deterministic_and_small():
    assert slice_corpus() is SLICES  # built once per process
    rebuilt = [c.data for c in slice_corpus.__wrapped__()]
    assert rebuilt == [c.data for c in SLICES]
    assert {c.outcome for c in SLICES} == {OK, ERROR, EITHER}
    assert len(SLICES) <= 40, "the Classify page takes 40 files at once"
    assert max(len(c.data) for c in SLICES) < 64 * 1024
    assert max(len(c.data) for c in ZIPS) < 2 * 2**20, "a zip bomb must stay small"


@pytest.mark.parametrize("case", SLICES, ids=SLICE_IDS)
def test_library_decode_gives_the_expected_error_or_a_correct_slice(case: SliceCase):
    try:
        decoded = decode_slice(case.data, case.filename)
    except SliceError as error:
        assert case.outcome in (ERROR, EITHER), f"{case.name} should decode: {error}"
        if case.error is not None:
            assert isinstance(error, case.error), f"{type(error).__name__}: {error}"
        if case.match:
            assert_message(case, str(error))
        assert str(error)[0].isupper(), "a message written as a sentence"
        return
    assert case.outcome in (OK, EITHER), f"{case.name} should be refused"
    assert_valid_slice(decoded.pixels)
    if case.pixels is not None:
        assert decoded.pixels.shape == case.pixels.shape
        np.testing.assert_allclose(decoded.pixels, case.pixels, atol=case.atol)


# ---------------------------------------------------------------------------- library: zips


@pytest.mark.parametrize("case", ZIPS, ids=ZIP_IDS)
def test_library_zip_import_gives_the_expected_error_and_leaves_nothing(case: ZipCase, outside):
    home = outside
    raised = None
    folder = None
    try:
        folder = import_zip_dataset(case.data, "hostile")
        dataset = load_arrays(folder, 24)
    except (ArchiveError, DatasetError) as error:
        raised = error
    if case.outcome == ERROR:
        assert raised is not None, f"{case.name} was accepted"
        assert isinstance(raised, case.error), f"{type(raised).__name__}: {raised}"
        assert_message(case, str(raised))
        assert (folder is None) == (case.stage == "import"), "refused at the wrong stage"
        if case.stage == "import":
            assert str(home) not in str(raised), "a server path reached the message"
            assert tree(home) <= {"uploads"}, "a refused zip left files behind"
    else:
        assert raised is None, f"{case.name}: {raised}"
        if case.counts is not None:
            assert {n: int((dataset.y == i).sum()) for i, n in enumerate(dataset.class_names)} == (
                case.counts
            )
        skipped = {file for file, _ in dataset.skipped}
        assert case.skipped <= skipped <= case.skipped | case.skipped_any
        # exactly the zip's files were written: no link, no nested archive unpacked
        with zipfile.ZipFile(io.BytesIO(case.data)) as bundle:
            members = {name for name in bundle.namelist() if not name.endswith("/")}
        written = {p for p in tree(folder.root) if not (folder.root / p).is_dir()} - {MARKER}
        assert written == members
        assert not any(path.is_symlink() for path in folder.root.rglob("*"))
    # Whatever happened, the home holds only uploads and the decoded-array cache.
    assert {path.split("/")[0] for path in tree(home)} <= {"uploads", "arrays"}
    assert not any(p.name.startswith(".tmp-") for p in uploads_dir().rglob("*")), "workspace left"


# ---------------------------------------------------------------------------- property


def _mutated(seed_zip: bytes, flips: list[int], cut: int | None) -> bytes:
    data = bytearray(seed_zip)
    for position in flips:
        data[position % (len(data) * 8) // 8] ^= 1 << (position % 8)
    return bytes(data[:cut] if cut else data)


SEED_ZIPS = [case.data for case in ZIPS if case.name in ("control", "nested-zip-beside-images")]
HOSTILE_BYTES = st.one_of(
    st.binary(max_size=600),
    st.binary(max_size=300).map(lambda tail: b"PK\x03\x04" + tail),
    st.builds(
        _mutated,
        st.sampled_from(SEED_ZIPS),
        st.lists(st.integers(min_value=0, max_value=10**5), min_size=1, max_size=6),
        st.one_of(st.none(), st.integers(min_value=1, max_value=2000)),
    ),
)


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=HOSTILE_BYTES)
def test_zip_import_of_random_and_mutated_bytes_imports_or_refuses_cleanly(data):
    limits = ArchiveLimits(max_files=50, max_total_bytes=200_000, max_file_bytes=100_000)
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch) / "home"
        with mock.patch.dict(os.environ, {"CTDEMO_HOME": str(home)}):
            try:
                folder = import_zip_dataset(data, "fuzz", limits=limits)
            except (ArchiveError, DatasetError) as error:
                assert str(error) and scratch not in str(error)
                assert tree(home) <= {"uploads"}
            else:
                assert folder.root.is_relative_to(home / "uploads" / "fuzz")
                assert not any(path.is_symlink() for path in home.rglob("*"))
        assert [p.name for p in Path(scratch).iterdir()] in ([], ["home"])


# ---------------------------------------------------------------------------- memory


@pytest.mark.slow
def test_the_whole_library_corpus_runs_in_bounded_memory(tmp_path):
    """A fresh process (its peak resident size is its own) decodes every slice and imports and
    decodes every zip; its peak grows by less than MEMORY_BOUND_MB."""
    code = (
        "import json, sys, hostile_corpus; "
        "print(json.dumps(hostile_corpus.run_library_corpus(sys.argv[1])))"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"))
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "home")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        f"\n{report['inputs']} inputs: peak RSS growth {report['rss_growth_mb']:.1f} MB, "
        f"traced peak {report['traced_peak_mb']:.1f} MB"
    )
    assert report["inputs"] == len(SLICES) + len(ZIPS)
    assert report["rss_growth_mb"] < MEMORY_BOUND_MB
    assert report["traced_peak_mb"] < MEMORY_BOUND_MB
    for case in SLICES:
        outcome = report["outcomes"][f"slice:{case.name}"]
        assert (outcome == "ok") == (case.outcome == OK) or case.outcome == EITHER, outcome
    for case in ZIPS:
        outcome = report["outcomes"][f"zip:{case.name}"]
        assert (outcome == "ok") == (case.outcome == OK), outcome


# ---------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_predict_answers_every_file_with_a_result_or_an_error(tmp_path, outside):
    files = slice_files(tmp_path / "slices")
    result = subprocess.run(
        [sys.executable, "-m", "ctdemo", "predict", "--model", "weights/cnn.keras", "--json"]
        + [str(path) for path in files],
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CTDEMO_HOME=str(outside)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 1, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    assert [item["file"] for item in payload] == [str(path) for path in files]
    errors = 0
    for case, item in zip(SLICES, payload, strict=True):
        if "error" in item:
            errors += 1
            assert case.outcome in (ERROR, EITHER), f"{case.name}: {item['error']}"
            if case.match:
                assert_message(case, item["error"])
            assert "predicted_class" not in item
        else:
            assert case.outcome in (OK, EITHER), f"{case.name} was classified"
            assert item["predicted_class"] in item["probabilities"]
            assert sum(item["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == f"error: {errors} of {len(files)} files could not be classified"


# ---------------------------------------------------------------------------- pages


COMPARE_UPLOAD = "Upload a labelled .zip of class folders"


def open_app(page: str | None = None, state: dict | None = None) -> AppTest:
    """The app, on `page`, with widget values in `state` set before that page first runs."""
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=180).run()
    for key, value in (state or {}).items():
        app.session_state[key] = value
    if page:
        app.switch_page(page).run()
    assert not app.exception
    return app


def unplain(text: str) -> str:
    """A message as the person reads it: what `ctdemo.app.text.plain` escaped, unescaped."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text)


@pytest.mark.slow
def test_classify_page_shows_an_error_per_bad_file_and_results_for_good_ones(outside):
    home = outside
    app = open_app()
    app.file_uploader(key="upload").set_value(
        [(case.filename, case.data, "application/octet-stream") for case in SLICES]
    )
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    shown = {}
    for message in app.error:
        name, _, text = message.value.partition(": ")
        shown[unplain(name.strip("*"))] = unplain(text)
    table = app.dataframe[0].value
    assert list(table["file"]) == [case.filename for case in SLICES]
    for case, status in zip(SLICES, table["status"], strict=True):
        failed = status.startswith("error")
        assert failed == (case.filename in shown), case.name
        if case.outcome == ERROR:
            assert failed, f"{case.name}: {status}"
            assert_message(case, shown[case.filename])
        elif case.outcome == OK:
            assert not failed, f"{case.name}: {status}"
    assert len(shown) == len(app.error), "one error per bad file, and nothing else"
    assert not any(str(home) in text for text in shown.values()), "a server path"


@pytest.mark.slow
def test_train_page_answers_every_zip_and_keeps_uploads_in_their_folder(outside):
    home = outside
    # the upload chosen before the page first runs: it would decode the demo set first
    app = open_app("app_pages/train/page.py", {"data": "Upload a .zip of class folders"})
    assert app.radio(key="data").value == "Upload a .zip of class folders"
    for case in ZIPS:
        before = upload_folders(home)
        app.file_uploader(key="data_zip").set_value((case.filename, case.data, "application/zip"))
        app.run()
        assert not app.exception, (case.name, [e.value for e in app.exception])
        errors = [unplain(message.value) for message in app.error]
        if case.outcome == ERROR:
            assert len(errors) == 1, (case.name, errors)
            prefix = "This zip cannot be used: " if case.stage == "import" else "This dataset"
            assert errors[0].startswith(prefix), errors[0]
            assert_message(case, errors[0])
            assert str(home) not in errors[0], f"{case.name}: a server path reached the page"
            assert app.button(key="train").disabled
            if case.stage == "import":
                assert upload_folders(home) == before, f"{case.name} left files behind"
        else:
            assert not errors, (case.name, errors)
            assert not app.button(key="train").disabled
            if case.counts is not None:
                total = sum(case.counts.values())
                assert any(f"{total} slices" in c.value for c in app.caption), case.name
    assert {path.split("/")[0] for path in tree(home)} <= {"uploads", "arrays"}


@pytest.mark.slow
def test_compare_page_refuses_the_same_zips_and_never_raises(outside):
    """The Compare page's own zip upload: refused zips get the message, the others the page.
    (Not the 5,000 files again: the same import, seconds, already run on the Train page.)"""
    home = outside
    # chosen before the page first runs: it would otherwise evaluate on the demo set first
    app = open_app("app_pages/compare/page.py", {"compare_data": COMPARE_UPLOAD})
    for case in ZIPS:
        if case.name == "thousands-of-tiny-files":
            continue
        before = upload_folders(home)
        app.file_uploader(key="compare_zip").set_value(
            (case.filename, case.data, "application/zip")
        )
        app.run()
        assert not app.exception, (case.name, [e.value for e in app.exception])
        errors = [unplain(message.value) for message in app.error]
        if case.outcome == ERROR and case.stage == "import":
            assert len(errors) == 1 and errors[0].startswith("This zip cannot be used: "), errors
            assert_message(case, errors[0])
            assert upload_folders(home) == before, f"{case.name} left files behind"
        assert not any(str(home) in text for text in errors), f"{case.name}: a server path"
    assert {path.split("/")[0] for path in tree(home)} <= {"uploads", "arrays"}


def test_a_zip_in_the_corpus_is_a_zip_where_it_claims_to_be():
    """The corpus itself: the bombs are real (they expand as declared) and small."""
    bomb = next(case for case in ZIPS if case.name == "zip-bomb-1GiB")
    with zipfile.ZipFile(io.BytesIO(bomb.data)) as bundle:
        info = bundle.getinfo("non-COVID/zeros.png")
        assert info.file_size == 1 << 30 and info.compress_size < 1.1 * 2**20
        with bundle.open(info) as member:
            assert member.read(1 << 20) == bytes(1 << 20)
