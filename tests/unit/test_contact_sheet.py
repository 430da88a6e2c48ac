"""Contact sheets of received media (exchange.dicom.contactsheet, `exchange inspect
--contact-sheet`): one tile per series from real pixel data (pydicom-data's files and
tests/dicom_synth.py), drawn in a confined child, written with the rights of the staff member
behind sudo. As root here, with `nobody` as the staff member."""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import shutil
import signal
import socket
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from exchange import cli, untrusted
from exchange.dicom import contactsheet, media, previews
from exchange.dicom.contactsheet import SheetError
from exchange.dicom.dicomdir import build_tree
from exchange.dicom.dicomfiles import Instance, Source
from exchange.policy import load_policy
from roles import REPO
from tests.dicom_synth import clone, ct_study

POLICY = REPO / "policies.yaml"
DEPTH = load_policy(POLICY).policy.accounts.max_folder_depth
NOBODY = pwd.getpwnam("nobody")


def data_file(name: str) -> Path:
    return Path(get_testdata_file(name, download=False))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Three CT series (one with a middle image too large to preview), a JPEG 2000 series, an
    RLE MR series, an RT plan (no image) and a JPEG that libjpeg refuses: seven series."""
    root = tmp_path_factory.mktemp("media")
    files = ct_study(root / "ct", 3, series=3)
    middle = dcmread(files[1])  # series 1, image 2 of 3: asks for 4 GB; the sheet shows another
    middle.Rows = middle.Columns = 65535
    middle.save_as(files[1])
    clone(data_file("JPEG2000.dcm"), root / "j2k", 2)
    clone(data_file("MR_small_RLE.dcm"), root / "mr", 3)
    clone(data_file("rtplan.dcm"), root / "plan", 1)
    clone(data_file("JPEG-lossy.dcm"), root / "lossy", 1)
    return root


@pytest.fixture
def shared():
    """A folder anyone may write in (pytest's own are root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="sheet-"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder)


def sheet_of(path: Path, **options) -> contactsheet.Sheet:
    with contextlib.ExitStack() as keep:
        report = media.inspect_media(path, DEPTH, keep=keep)
        return contactsheet.make(build_tree(report.instances), str(path), report.descriptors, **options)


def pixels(sheet: contactsheet.Sheet) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(sheet.jpeg)).convert("RGB"), dtype=np.int16)


def region(picture: np.ndarray, box: list[int]) -> np.ndarray:
    x, y, width, height = box
    return picture[y : y + height, x : x + width]


def test_one_tile_per_series_showing_its_picture_or_why_not(study):
    sheet = sheet_of(study)
    assert sheet.series == 7 and sheet.more == 0 and len(sheet.tiles) == 7
    picture = pixels(sheet)
    assert picture.shape[:2] == (sheet.layout["height"], sheet.layout["width"])
    reasons = sorted(tile["reason"] for tile in sheet.tiles if not tile["shown"])
    assert reasons == ["its pixel data cannot be decoded", "not an image"]
    for tile in sheet.tiles:
        inside = region(picture, tile["box"])
        if tile["shown"]:  # an image: far from the flat box it sits in
            assert inside.std() > 10, tile
        else:  # the reason box, with its text
            assert np.abs(np.median(inside.reshape(-1, 3), axis=0) - contactsheet.REASON_BOX).max() < 8
            assert (inside.max(axis=2) > 200).sum() > 100, "the reason is written in it"
    # The gaps between the tiles are the background: exactly as many picture boxes as series.
    x, y, width, height = sheet.tiles[0]["box"]
    gap = picture[y : y + height, x + width + 1 : x + width + contactsheet.PAD - 1]
    assert np.abs(gap - contactsheet.BACKGROUND).max() < 8


def test_a_tile_shows_the_middle_picture_and_another_when_that_one_fails(study):
    report = media.inspect_media(study / "ct", DEPTH)
    tiles = contactsheet.plan(build_tree(report.instances), "ct").tiles
    assert [[(p.image.number, p.frame) for p in tile.pictures] for tile in tiles] == [
        [(2, 0), (1, 0), (3, 0)]
    ] * 3  # the middle of three, then the first and the last
    many = contactsheet._pictures(_fake_series_tree([[1] * 9, [40]]).patients["P"].studies["S"].series["1.1"])
    assert (many[0].image.number, many[0].frame) == (5, 0)
    frames = contactsheet._pictures(_fake_series_tree([[1] * 9, [40]]).patients["P"].studies["S"].series["1.2"])
    assert (frames[0].image.number, frames[0].frame) == (1, 20)  # a multi-frame image: its middle frame
    sheet = sheet_of(study / "ct")
    assert [tile["shown"] for tile in sheet.tiles] == [True, True, True]  # series 1: its first image instead


def _fake_series_tree(
    series_frames: list[list[int]], descriptions: list[str] | None = None, patient_name="A^B", date="20260101"
):
    """A tree of one study, one series per list (of frames per image); no pixel data at all."""
    instances = []
    for s, frames in enumerate(series_frames, 1):
        for i, count in enumerate(frames, 1):
            header = {
                "PatientID": "P",
                "PatientName": patient_name,
                "StudyInstanceUID": "S",
                "SeriesInstanceUID": f"1.{s}",
                "SOPInstanceUID": f"1.{s}.{i}",
                "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                "Modality": "CT",
                "StudyDate": date,
                "SeriesNumber": str(s),
                "InstanceNumber": str(i),
                "NumberOfFrames": str(count),
                "SeriesDescription": (descriptions or [""] * len(series_frames))[s - 1],
            }
            source = Source(f"f{s}-{i}", 0, io.BytesIO)
            instances.append(Instance(source, header, "1.2.840.10008.1.2.1", False))
    return build_tree(instances)


def test_many_series_stay_readable_a_capped_grid_saying_how_many_more():
    tree = _fake_series_tree([[1]] * 60)
    sheet = contactsheet.plan(tree, "sixty series")
    assert len(sheet.tiles) == contactsheet.MAX_TILES == 48 and sheet.more == 12 and sheet.series == 60
    assert [tile.lines[2] for tile in sheet.tiles[:3]] == ["series 1", "series 2", "series 3"]
    jpeg, layout = contactsheet.draw(sheet, ["not an image"] * 48)
    assert len(layout["tiles"]) == 48 and layout["more"] == 12
    columns = len({tile["box"][0] for tile in layout["tiles"]})
    assert columns == 7 and layout["width"] == contactsheet.PAD + 7 * (contactsheet.TILE + contactsheet.PAD)
    picture = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.int16)
    footer = picture[-contactsheet.PAD - contactsheet.LINE :, : layout["width"] // 2]
    assert (np.abs(footer - contactsheet.WARNING).max(axis=2) < 40).sum() > 50, "the 'and 12 more series' line"


def test_a_capped_sheet_renders_only_its_tiles(study):
    sheet = sheet_of(study, cap=2)
    assert len(sheet.tiles) == 2 and sheet.more == 5 and sheet.series == 7


HOSTILE = "\x1b[2J\x1b[1;1Hall clear\n\u202eevil\u200b\tx\x00" + "A" * 1_000_000


def test_hostile_dicom_text_is_shown_escaped_and_cut_to_its_tile():
    tree = _fake_series_tree([[1], [1]], descriptions=[HOSTILE, "Thorax\u4e2d"], patient_name=HOSTILE, date=HOSTILE)
    started = time.monotonic()
    sheet = contactsheet.plan(tree, "hostile\x1b[31m")
    jpeg, layout = contactsheet.draw(sheet, ["not an image", "not an image"])
    assert time.monotonic() - started < 5, "a megabyte of description is not measured character by character"
    lines = [line for tile in sheet.tiles for line in tile.lines] + sheet.heading
    for line in lines:
        assert line.isprintable() and all(ord(c) < 0x100 for c in line), repr(line)
        assert len(line) < 2 * untrusted.TEXT_LIMIT
    first = sheet.tiles[0].lines
    assert first[0].startswith("P  \\x1b[2J\\x1b[1;1Hall clear\\n\\u202eevil\\u200b\\tx\\x00AAA")
    assert sheet.tiles[1].lines[2] == "series 2  Thorax\\u4e2d"  # what the font cannot draw, escaped
    assert sheet.heading[0] == "Contact sheet: hostile\\x1b[31m"
    assert layout["width"] == contactsheet.MIN_WIDTH  # the text is cut, the sheet does not grow
    assert Image.open(io.BytesIO(jpeg)).size == (layout["width"], layout["height"])


# The child that decodes: confined before it reads anything.


def _ok(layout: dict) -> tuple[bytes, dict]:
    return b"\xff\xd8\xff\xd9", layout


def test_the_renderer_gives_up_root_for_good_and_holds_only_the_files_it_reads(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root's")
    given = os.open(secret, os.O_RDONLY)
    other = os.open(secret, os.O_RDONLY)
    try:

        def work() -> tuple[bytes, dict]:
            found = {"ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()], "groups": os.getgroups()}
            found["given"] = os.pread(given, 6, 0).decode()
            for name, attempt in {
                "other": lambda: os.pread(other, 6, 0),
                "regain": lambda: os.setuid(0),
                "write": lambda: os.write(os.open(tmp_path / "new", os.O_WRONLY | os.O_CREAT), b"x"),
            }.items():
                try:
                    attempt()
                    found[name] = "done"
                except OSError as error:
                    found[name] = error.strerror
            return _ok(found)

        _, found = contactsheet._sandboxed(work, [given], (NOBODY.pw_uid, NOBODY.pw_gid), 30)
    finally:
        os.close(given)
        os.close(other)
    assert found["ids"] == [NOBODY.pw_uid] * 2 + [NOBODY.pw_gid] * 2 and found["groups"] == []
    assert found["given"] == "root's"  # read through the descriptor it was handed
    assert found["other"] == "Bad file descriptor" and found["regain"] == "Operation not permitted"
    assert found["write"] == "Permission denied"  # pytest's folder is root's
    assert not (tmp_path / "new").exists()


def test_the_renderer_may_write_no_file_even_where_it_could(shared):
    def work() -> tuple[bytes, dict]:
        try:
            descriptor = os.open(shared / "out", os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(descriptor, b"x" * 100)
            return _ok({"wrote": True})
        except OSError as error:
            return _ok({"wrote": error.strerror})

    _, found = contactsheet._sandboxed(work, [], (NOBODY.pw_uid, NOBODY.pw_gid), 30)
    assert found["wrote"] == "File too large"
    assert (shared / "out").stat().st_size == 0


@pytest.mark.parametrize(
    "work, reason",
    [
        (lambda: os.kill(os.getpid(), signal.SIGSEGV), r"the renderer stopped \(SIGSEGV\)"),
        (lambda: time.sleep(60), "drawing took longer than 2 s; stopped"),
        (lambda: (b"not a jpeg", {}), "not a sheet"),
    ],
)
def test_a_renderer_that_crashes_hangs_or_lies_costs_the_sheet_and_nothing_else(work, reason):
    started = time.monotonic()
    with pytest.raises(SheetError, match=reason):
        contactsheet._sandboxed(work, [], (NOBODY.pw_uid, NOBODY.pw_gid), 2)
    assert time.monotonic() - started < 20


def test_the_renderers_memory_is_bounded():
    def work() -> tuple[bytes, dict]:
        bytearray(previews.EXTRA_MEMORY + (1 << 30))
        return _ok({})

    with pytest.raises(SheetError, match="the renderer failed: MemoryError"):
        contactsheet._sandboxed(work, [], (NOBODY.pw_uid, NOBODY.pw_gid), 30)


# `exchange inspect --contact-sheet`, as the staff member behind sudo.


def inspect(*args: str) -> object:
    env = {"SUDO_UID": str(NOBODY.pw_uid), "EXCHANGE_POLICY": str(POLICY)}
    return CliRunner().invoke(cli.app, ["inspect", *map(str, args)], env=env)


@pytest.fixture(scope="module")
def readable(study, tmp_path_factory) -> Path:
    """The study where nobody may read it."""
    folder = Path(tempfile.mkdtemp(prefix="sheet-media-"))
    folder.chmod(0o755)
    shutil.copytree(study / "ct", folder / "ct")
    shutil.copytree(study / "mr", folder / "ct" / "mr")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield folder / "ct"
    shutil.rmtree(folder)


def test_inspect_writes_the_sheet_as_the_staff_member(readable, shared):
    out = shared / "arrived.jpg"
    answer = inspect(readable, "--contact-sheet", out)
    assert answer.exit_code == 0, answer.output
    assert f"contact sheet: {out} (4 series)" in answer.output
    st = out.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o600)
    assert Image.open(out).format == "JPEG"
    assert sorted(p.name for p in shared.iterdir()) == ["arrived.jpg"]


def test_inspect_never_replaces_a_file_or_follows_a_symlink(readable, shared):
    existing = shared / "mine.jpg"
    existing.write_bytes(b"keep me")
    target = Path(tempfile.mkdtemp(prefix="sheet-target-")) / "created-by-root.jpg"
    try:
        (shared / "link.jpg").symlink_to(target)
        (shared / "folder.jpg").mkdir()
        for named in (existing, shared / "link.jpg", shared / "folder.jpg"):
            answer = inspect(readable, "--contact-sheet", named)
            assert answer.exit_code == 2, answer.output
            assert "never replaced (name a new file); nothing was read" in answer.output
            assert " DICOM files" not in answer.output  # refused before the media were read
        assert existing.read_bytes() == b"keep me" and not target.exists()
    finally:
        shutil.rmtree(target.parent)


def test_inspect_writes_only_where_the_staff_member_may(readable, shared, tmp_path):
    closed = shared / "closed"
    closed.mkdir(mode=0o755)  # root's: nobody may not write in it
    for named, reason in [
        (closed / "sheet.jpg", "Permission denied"),
        (tmp_path / "sheet.jpg", "Permission denied"),  # root's only: not even reached
        (shared / "none" / "sheet.jpg", "no such folder"),
    ]:
        answer = inspect(readable, "--contact-sheet", named)
        assert answer.exit_code == 2 and f"{reason}; nothing was read" in answer.output, answer.output
    assert list(closed.iterdir()) == [] and list(tmp_path.iterdir()) == []
    answer = inspect(readable, "--contact-sheet", shared / "sheet.png")
    assert answer.exit_code == 2 and "the sheet is a JPEG: name a .jpg file" in answer.output


def test_media_refused_as_a_zip_bomb_are_never_decoded(shared, monkeypatch):
    bomb = shared / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(data_file("CT_small.dcm"), "DICOM/IM1")
        archive.writestr("DICOM/IM2", b"\0" * 20_000_000)
    bomb.chmod(0o644)
    monkeypatch.setattr(contactsheet, "_sandboxed", lambda *args: pytest.fail("a bomb's pictures were decoded"))
    answer = inspect(bomb, "--contact-sheet", shared / "bomb.jpg")
    assert answer.exit_code == 1
    assert "contact sheet not made" in answer.output and "zip bomb" in answer.output
    assert sorted(p.name for p in shared.iterdir()) == ["bomb.zip"]  # nothing half-written


def test_media_with_a_dicomdir_mismatch_still_get_a_sheet_that_says_do_not_import(readable, shared):
    unpacked = shared / "disc"
    shutil.copytree(readable, unpacked)
    dicomdir = dcmread(data_file("DICOMDIR"))
    dicomdir.save_as(unpacked / "DICOMDIR")  # another disc's: references files that are not here
    for path in [unpacked, *unpacked.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    out = shared / "disc.jpg"
    answer = inspect(unpacked, "--contact-sheet", out)
    assert answer.exit_code == 1 and "refused: do not import" in answer.output
    assert f"contact sheet: {out} (4 series)" in answer.output
    picture = np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)
    warning = picture[contactsheet.PAD + 2 * contactsheet.LINE : contactsheet.PAD + 3 * contactsheet.LINE]
    assert (np.abs(warning - contactsheet.WARNING).max(axis=2) < 40).sum() > 50, "'do not import' on the sheet"


def test_a_sheet_of_thousands_of_open_files_is_still_read_back():
    # Every inspected file stays open: the renderer's pipe may come above select()'s 1024.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    try:
        _, found = contactsheet._sandboxed(lambda: _ok({"fine": True}), held[:3], (NOBODY.pw_uid, NOBODY.pw_gid), 30)
    finally:
        for descriptor in held:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert found == {"fine": True}


def test_the_renderer_reaches_no_network_and_starts_no_process():
    """A decoder taken over by a sender's file can neither send what root's memory held (the
    child is a fork of the tool) nor leave a process behind."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def work() -> tuple[bytes, dict]:
            found = {}
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                found["connect"] = "done"
            except OSError as error:
                found["connect"] = error.strerror or str(error)
            try:
                child = os.fork()
                if child == 0:
                    time.sleep(30)
                    os._exit(0)
                found["fork"] = child
            except OSError as error:
                found["fork"] = error.strerror
            return _ok(found)

        _, found = contactsheet._sandboxed(work, [], (NOBODY.pw_uid, NOBODY.pw_gid), 30)
    assert found["connect"] == "Network is unreachable"
    assert found["fork"] == "Resource temporarily unavailable"
