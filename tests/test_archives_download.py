"""ctdemo.io.archives and ctdemo.io.download: hostile zips are refused; downloads are atomic.

Downloads are served by a local HTTP server on 127.0.0.1 started here: nothing touches the
internet.
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
import struct
import tempfile
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctdemo import config
from ctdemo.io.archives import ArchiveError, ArchiveLimits, find_dataset_root, safe_extract
from ctdemo.io.download import MARKER, DownloadError, download_dataset, is_complete
from ctdemo.io.folders import scan_image_folder

from conftest import make_image_folder, zip_bytes, zip_folder
from loopback import LoopbackServer, serving

# ---------------------------------------------------------------------------- helpers


def all_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.fixture
def sandbox(tmp_path):
    """A folder with a target inside; refused archives must leave the sandbox as it was."""
    box = tmp_path / "sandbox"
    (box / "target").mkdir(parents=True)
    (box / "keep.txt").write_text("already here")
    return box


def refuse(sandbox: Path, archive_bytes: bytes, match: str, limits: ArchiveLimits | None = None):
    archive = sandbox.parent / "upload.zip"
    archive.write_bytes(archive_bytes)
    before = all_files(sandbox)
    root_before = set((Path("/") / "tmp").glob("evil*"))
    with pytest.raises(ArchiveError, match=match):
        safe_extract(archive, sandbox / "target", limits or ArchiveLimits())
    assert all_files(sandbox) == before, "a refused archive wrote files"
    assert set((Path("/") / "tmp").glob("evil*")) == root_before
    assert not (sandbox.parent / "evil.txt").exists()


# ---------------------------------------------------------------------------- safe_extract


def test_safe_extract_unpacks_a_normal_archive(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"COVID/a (1).png": b"one", "non-COVID/b.png": b"two"}))
    count = safe_extract(archive, tmp_path / "out")
    assert count == 2
    assert (tmp_path / "out" / "COVID" / "a (1).png").read_bytes() == b"one"
    assert (tmp_path / "out" / "non-COVID" / "b.png").read_bytes() == b"two"


@pytest.mark.parametrize(
    "name",
    ["../evil.txt", "COVID/../../evil.txt", "a/b/../../../evil.txt", "..\\evil.txt"],
)
def test_safe_extract_refuses_parent_paths(sandbox, name):
    refuse(sandbox, zip_bytes({"COVID/ok.png": b"fine", name: b"pwned"}), "escapes")


@pytest.mark.parametrize(
    "name", ["/tmp/evil-absolute.txt", "\\tmp\\evil-backslash.txt", "C:/evil.txt", "C:evil.txt"]
)
def test_safe_extract_refuses_absolute_paths(sandbox, name):
    refuse(sandbox, zip_bytes({"COVID/ok.png": b"fine", name: b"pwned"}), "absolute")


def test_safe_extract_refuses_symlink_entries(sandbox):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("COVID/ok.png", b"fine")
        link = zipfile.ZipInfo("COVID/link.png")
        link.create_system = 3  # unix
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(link, "/etc/passwd")
    refuse(sandbox, buffer.getvalue(), "symbolic link")


def test_safe_extract_refuses_too_many_files(sandbox):
    entries = {f"COVID/{i}.png": b"x" for i in range(6)}
    refuse(sandbox, zip_bytes(entries), "6 files", ArchiveLimits(max_files=5))
    count = safe_extract(
        _write(sandbox.parent, zip_bytes(entries)),
        sandbox.parent / "ok",
        ArchiveLimits(max_files=6),
    )
    assert count == 6


def _write(folder: Path, payload: bytes, name: str = "archive.zip") -> Path:
    path = folder / name
    path.write_bytes(payload)
    return path


def test_safe_extract_refuses_a_zip_bomb_by_declared_size(sandbox):
    bomb = zip_bytes({"COVID/zeros.png": b"\0" * 2_000_000})
    assert len(bomb) < 10_000  # small on disk, 2 MB unpacked
    limits = ArchiveLimits(max_total_bytes=100_000, max_file_bytes=10_000_000)
    refuse(sandbox, bomb, "unpacks to", limits)


def test_safe_extract_refuses_a_member_over_the_file_cap(sandbox):
    refuse(
        sandbox,
        zip_bytes({"COVID/zeros.png": b"\0" * 300_000}),
        "are refused",
        ArchiveLimits(max_file_bytes=100_000),
    )


def test_safe_extract_total_cap_counts_all_members(sandbox):
    entries = {f"COVID/{i}.png": b"\0" * 40_000 for i in range(4)}  # 160 kB in all
    refuse(sandbox, zip_bytes(entries), "unpacks to", ArchiveLimits(max_total_bytes=100_000))


def _under_declare(archive: bytes, declared: int) -> bytes:
    """Rewrite every uncompressed-size field (local and central headers) to `declared`."""
    raw = bytearray(archive)
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = raw.find(signature)
        assert start >= 0
        raw[start + offset : start + offset + 4] = struct.pack("<I", declared)
    return bytes(raw)


def test_safe_extract_a_header_that_under_declares_its_size(tmp_path):
    payload = b"\0" * 500_000
    lying = _under_declare(zip_bytes({"COVID/zeros.png": payload}), declared=1_000)
    with zipfile.ZipFile(io.BytesIO(lying)) as bundle:
        assert bundle.infolist()[0].file_size == 1_000  # the lie is in place
    archive = _write(tmp_path, lying)
    target = tmp_path / "out"
    limits = ArchiveLimits(max_total_bytes=10_000, max_file_bytes=10_000)
    with pytest.raises(ArchiveError):
        safe_extract(archive, target, limits)
    written = [p for p in target.rglob("*") if p.is_file()] if target.exists() else []
    assert sum(p.stat().st_size for p in written) <= 10_000
    assert all_files(tmp_path) <= {"archive.zip", "out", "out/COVID", "out/COVID/zeros.png"}


def test_safe_extract_copy_cap_counts_real_bytes(tmp_path, monkeypatch):
    """Even if the reader believed the header, the copy loop stops at the cap."""
    from ctdemo.io import archives

    archive = _write(tmp_path, zip_bytes({"COVID/zeros.png": b"\0" * 50_000}))
    monkeypatch.setattr(archives, "_check_members", lambda members, limits: None)
    with pytest.raises(ArchiveError, match="zip bomb"):
        safe_extract(archive, tmp_path / "out", ArchiveLimits(max_total_bytes=10_000))
    assert (tmp_path / "out" / "COVID" / "zeros.png").stat().st_size == 0


@pytest.mark.parametrize(
    "payload",
    [b"", b"this is a text file, not a zip\n" * 10, b"PK\x03\x04" + b"\0" * 40],
    ids=["empty", "text", "zip-magic-only"],
)
def test_safe_extract_refuses_non_zip(sandbox, payload):
    refuse(sandbox, payload, "not a zip archive")


def test_safe_extract_refuses_an_empty_zip(sandbox):
    refuse(sandbox, zip_bytes({}), "empty")


def test_safe_extract_refuses_damaged_member_data(tmp_path):
    good = zip_bytes({"COVID/a.png": b"hello world " * 5000})
    with zipfile.ZipFile(io.BytesIO(good)) as bundle:
        info = bundle.infolist()[0]
    data_start = info.header_offset + 30 + len(info.filename.encode())
    damaged = bytearray(good)
    damaged[data_start] = 0xFF  # a deflate block of the reserved type 3
    with pytest.raises(ArchiveError, match="damaged"):
        safe_extract(_write(tmp_path, bytes(damaged)), tmp_path / "out")


def test_safe_extract_truncated_archive(tmp_path):
    good = zip_bytes({f"COVID/{i}.png": bytes(range(256)) * 40 for i in range(3)})
    with pytest.raises(ArchiveError):
        safe_extract(_write(tmp_path, good[: len(good) // 2]), tmp_path / "out")


# ---------------------------------------------------------------------------- find_dataset_root


def test_find_dataset_root_unwraps_a_single_folder(tmp_path):
    make_image_folder(tmp_path / "unpacked" / "sarscov2" / "data", per_class=1)
    (tmp_path / "unpacked" / "__MACOSX").mkdir()
    (tmp_path / "unpacked" / ".DS_Store").write_bytes(b"")
    assert find_dataset_root(tmp_path / "unpacked") == tmp_path / "unpacked" / "sarscov2" / "data"


def test_find_dataset_root_keeps_a_top_level_with_classes(tmp_path):
    make_image_folder(tmp_path / "unpacked", per_class=1)
    assert find_dataset_root(tmp_path / "unpacked") == tmp_path / "unpacked"


def test_find_dataset_root_stops_at_train_and_test(tmp_path):
    make_image_folder(tmp_path / "unpacked" / "wrap" / "train", per_class=1)
    make_image_folder(tmp_path / "unpacked" / "wrap" / "test", per_class=1)
    assert find_dataset_root(tmp_path / "unpacked") == tmp_path / "unpacked" / "wrap"


def test_find_dataset_root_stops_at_a_folder_with_a_file(tmp_path):
    make_image_folder(tmp_path / "unpacked" / "wrap" / "only-class", per_class=1)
    (tmp_path / "unpacked" / "wrap" / "README.txt").write_text("hi")
    assert find_dataset_root(tmp_path / "unpacked") == tmp_path / "unpacked" / "wrap"


# ---------------------------------------------------------------------------- download


class Server(LoopbackServer):
    """Routes: path -> (status, body, declared length or None). Counts requests per path."""

    def __init__(self):
        self.routes: dict[str, tuple[int, bytes, int | None]] = {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                status, body, declared = server.routes.get(self.path, (404, b"not found", None))
                self.send_response(status)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(declared or len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.listen(Handler)


@pytest.fixture
def server(monkeypatch):
    yield from serving(Server(), monkeypatch)


@pytest.fixture
def dataset_zip(tmp_path) -> bytes:
    """A Kaggle-like archive: one wrapping folder holding COVID/ and non-COVID/."""
    make_image_folder(tmp_path / "source", per_class=3, size=16)
    return zip_folder(tmp_path / "source", prefix="sarscov2-ctscan-dataset/")


def leftovers(parent: Path) -> list[str]:
    if not parent.exists():
        return []
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".ctdemo-download-"))


def test_download_success_is_complete_and_not_repeated(server, dataset_zip, tmp_path):
    server.routes["/data.zip"] = (200, dataset_zip, None)
    dest = tmp_path / "datasets" / "ct"
    progress: list[tuple[int, int | None]] = []
    sha = hashlib.sha256(dataset_zip).hexdigest()

    result = download_dataset(
        server.url("/data.zip"),
        dest,
        sha256=sha.upper(),
        progress=lambda d, t: progress.append((d, t)),
        timeout=10,
    )

    assert result == dest
    assert is_complete(dest)
    folder = scan_image_folder(dest)
    assert folder.class_counts() == {"COVID": 3, "non-COVID": 3}
    assert (dest / "COVID" / "COVID (1).png").is_file()
    assert progress and progress[-1] == (len(dataset_zip), len(dataset_zip))
    assert server.hits["/data.zip"] == 1
    assert leftovers(dest.parent) == []
    marker = json.loads((dest / MARKER).read_text())
    assert marker["sha256"] == sha
    assert marker["classes"] == {"COVID": 3, "non-COVID": 3}

    again = download_dataset(server.url("/data.zip"), dest, timeout=10)
    assert again == dest
    assert server.hits["/data.zip"] == 1, "a complete dataset must not be downloaded again"

    download_dataset(server.url("/data.zip"), dest, force=True, timeout=10)
    assert server.hits["/data.zip"] == 2
    assert is_complete(dest)


def test_download_defaults_to_the_home_folder(server, dataset_zip, isolated_home):
    server.routes["/data.zip"] = (200, dataset_zip, None)
    dest = download_dataset(server.url("/data.zip"), timeout=10)
    assert dest == config.default_download_dest()
    assert dest.is_relative_to(isolated_home)
    assert is_complete(dest)


def test_download_404_raises_and_leaves_no_dest(server, tmp_path):
    dest = tmp_path / "datasets" / "ct"
    with pytest.raises(DownloadError, match="404"):
        download_dataset(server.url("/missing.zip"), dest, timeout=10)
    assert not dest.exists()
    assert leftovers(dest.parent) == []


def test_download_truncated_body_raises_and_leaves_nothing_complete(server, dataset_zip, tmp_path):
    half = dataset_zip[: len(dataset_zip) // 2]
    server.routes["/cut.zip"] = (200, half, len(dataset_zip))
    dest = tmp_path / "datasets" / "ct"
    with pytest.raises(DownloadError, match="cut short"):
        download_dataset(server.url("/cut.zip"), dest, timeout=10)
    assert not dest.exists()
    assert not is_complete(dest)
    assert leftovers(dest.parent) == []


def test_download_wrong_checksum_raises(server, dataset_zip, tmp_path):
    server.routes["/data.zip"] = (200, dataset_zip, None)
    dest = tmp_path / "datasets" / "ct"
    with pytest.raises(DownloadError, match="Checksum mismatch"):
        download_dataset(server.url("/data.zip"), dest, sha256="0" * 64, timeout=10)
    assert not dest.exists()
    assert leftovers(dest.parent) == []


def test_download_archive_with_one_class_raises(server, tmp_path):
    make_image_folder(tmp_path / "one", per_class=2, classes=("COVID",), size=16)
    server.routes["/one.zip"] = (200, zip_folder(tmp_path / "one"), None)
    dest = tmp_path / "datasets" / "ct"
    with pytest.raises(DownloadError, match="not a usable dataset"):
        download_dataset(server.url("/one.zip"), dest, timeout=10)
    assert not dest.exists()
    assert leftovers(dest.parent) == []


def test_download_hostile_archive_is_refused(server, tmp_path):
    server.routes["/evil.zip"] = (200, zip_bytes({"../evil.txt": b"pwned"}), None)
    dest = tmp_path / "datasets" / "ct"
    with pytest.raises(DownloadError, match="refused"):
        download_dataset(server.url("/evil.zip"), dest, timeout=10)
    assert not dest.exists()
    assert not (tmp_path / "datasets" / "evil.txt").exists()
    assert leftovers(dest.parent) == []


def test_download_not_a_zip_is_refused(server, tmp_path):
    server.routes["/page.html"] = (200, b"<html>please log in</html>", None)
    dest = tmp_path / "datasets" / "ct"
    with pytest.raises(DownloadError, match="not a zip"):
        download_dataset(server.url("/page.html"), dest, timeout=10)
    assert not dest.exists()


def test_failed_forced_download_keeps_the_complete_dataset(server, dataset_zip, tmp_path):
    server.routes["/data.zip"] = (200, dataset_zip, None)
    dest = tmp_path / "datasets" / "ct"
    download_dataset(server.url("/data.zip"), dest, timeout=10)
    with pytest.raises(DownloadError):
        download_dataset(server.url("/gone.zip"), dest, force=True, timeout=10)
    assert is_complete(dest)
    assert scan_image_folder(dest).class_counts() == {"COVID": 3, "non-COVID": 3}


def test_download_connection_refused(tmp_path):
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()  # nothing listens there now
    dest = tmp_path / "datasets" / "ct"
    with pytest.raises(DownloadError, match="Could not download"):
        download_dataset(f"http://127.0.0.1:{port}/data.zip", dest, timeout=5)
    assert not dest.exists()


@pytest.mark.parametrize(
    "entries",
    [
        {"COVID": b"a file", "COVID/a.png": b"inside a folder of the same name"},
        {"COVID/a.png": b"x", "COVID/a.png/b.png": b"y"},
    ],
    ids=["file-then-folder", "file-is-a-parent"],
)
def test_safe_extract_refuses_a_path_that_is_file_and_folder(sandbox, entries):
    refuse(sandbox, zip_bytes(entries), "both as a file and as a folder")


@pytest.mark.parametrize("name", ["", "."])
def test_safe_extract_refuses_an_entry_with_no_name(sandbox, name):
    entries = {"COVID/a.png": b"fine", name: b"no name"}
    refuse(sandbox, zip_bytes(entries), "no name|empty")


FLIP_SOURCE = zip_bytes(
    {
        "COVID/a (1).png": bytes(range(256)) * 8,
        "COVID/sub/b.png": b"hello " * 300,
        "non-COVID/c.png": b"stored",
    }
)


@settings(max_examples=120, deadline=None, database=None)
@given(flips=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=6))
def test_bit_flipped_zip_unpacks_inside_target_or_raises_archive_error(flips):
    raw = bytearray(FLIP_SOURCE)
    for position in flips:
        raw[position % (len(raw) * 8) // 8] ^= 1 << (position % 8)
    with tempfile.TemporaryDirectory() as scratch:
        box = Path(scratch)
        (box / "archive.zip").write_bytes(bytes(raw))
        limits = ArchiveLimits(max_files=10, max_total_bytes=50_000, max_file_bytes=20_000)
        try:
            safe_extract(box / "archive.zip", box / "target", limits)
        except ArchiveError as error:
            assert str(error)
        outside = {p.name for p in box.iterdir()} - {"archive.zip", "target"}
        assert outside == set()
        written = [p for p in (box / "target").rglob("*") if p.is_file() or p.is_symlink()]
        assert not any(p.is_symlink() for p in written)
        assert sum(p.stat().st_size for p in written) <= limits.max_total_bytes
