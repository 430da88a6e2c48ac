"""Study packages, checked by independent tools: dcmtk (dcmdump, dcmmkdir), dicom3tools
(dciodvfy), Info-ZIP's unzip, sha256sum, and pydicom reading the DICOMDIR back."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.fileset import FileSet

from exchange.media import inspect_media
from exchange.messages import Messages
from exchange.package import PackageError, make_package
from exchange.policy import load_policy
from exchange.site import parse_site
from roles import REPO
from tests.dicom_synth import clone, ct_study
from tests.sites import outbox_site

POLICY = load_policy(REPO / "policies.yaml").policy
MESSAGES = Messages(parse_site(outbox_site(), "test"), REPO / "templates" / "messages")
J2K = Path(get_testdata_file("JPEG2000.dcm", download=False))
FILE_ID = re.compile(r"^DICOM(/[A-Z0-9_]{1,8}){1,7}$")


def package(tmp_path: Path, *paths: Path, **options):
    folder = tmp_path / "download"
    folder.mkdir(exist_ok=True)
    return make_package(POLICY, MESSAGES, "link-testacct", folder, list(paths), **options)


def unpack(zip_path: Path, into: Path) -> Path:
    subprocess.run(["unzip", "-q", str(zip_path), "-d", str(into)], check=True)
    return into


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, list[Path]]:
    """One patient: two uncompressed CT series and a JPEG 2000 series (cloned from pydicom's file)."""
    root = tmp_path_factory.mktemp("study")
    files = ct_study(root / "ct", 3, series=2) + clone(J2K, root / "j2k", 2)
    (root / "notes.txt").write_text("not an image")
    return root, files


def test_package_is_conformant_complete_and_byte_identical(study, tmp_path):
    root, files = study
    made = package(tmp_path, root, label="CT thorax")
    assert made.files == len(files) and made.scan.not_dicom == [str(root / "notes.txt")]
    assert made.path.stat().st_mode & 0o777 == 0o644 and not made.path.name.startswith(".")
    subprocess.run(["sha256sum", "--check", "--quiet", f"{made.path.name}.sha256"], cwd=made.path.parent, check=True)
    assert subprocess.run(["unzip", "-tq", str(made.path)], capture_output=True).returncode == 0

    with zipfile.ZipFile(made.path) as archive:
        names = [info.filename for info in archive.infolist()]
        methods = {info.filename: info.compress_type for info in archive.infolist()}
    assert names.count("DICOMDIR") == 1 and {"README.TXT", "INDEX.HTM"} <= set(names)
    images = [n for n in names if n.startswith("DICOM/")]
    assert len(images) == len(files) and all(FILE_ID.match(n) for n in images)

    out = unpack(made.path, tmp_path / "unpacked")
    # Every input instance exactly once, byte for byte; stored if its pixels are compressed.
    by_hash = {sha(out / n): n for n in images}
    assert sorted(by_hash) == sorted(sha(f) for f in files)
    for path in files:
        stored = methods[by_hash[sha(path)]] == zipfile.ZIP_STORED
        assert stored == dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed

    # pydicom reads the directory back; every record matches its file.
    fileset = FileSet(dcmread(out / "DICOMDIR"))
    assert len(fileset) == len(files)
    for instance in fileset:
        header = dcmread(instance.path, stop_before_pixels=True)
        assert instance.SOPInstanceUID == header.SOPInstanceUID
        assert instance.ReferencedSOPClassUIDInFile == header.SOPClassUID
        assert instance.ReferencedTransferSyntaxUIDInFile == header.file_meta.TransferSyntaxUID

    # dcmtk parses it; dicom3tools finds no error in the Basic Directory IOD.
    subprocess.run(["dcmdump", "-q", str(out / "DICOMDIR")], check=True, capture_output=True)
    verify = subprocess.run(["dciodvfy", str(out / "DICOMDIR")], capture_output=True, text=True)
    assert "BasicDirectory" in verify.stdout + verify.stderr
    assert "Error" not in verify.stdout + verify.stderr, verify.stdout + verify.stderr
    # dcmtk's own DICOMDIR over the same files (strict about type 1 keys) references the same instances.
    theirs = tmp_path / "dcmtk-DICOMDIR"
    subprocess.run(
        ["dcmmkdir", "+r", "-Pgp", "-Nxc", "-I", "+W", "+id", str(out), "+D", str(theirs), "DICOM"], check=True
    )
    ours_uids = {
        str(r.ReferencedSOPInstanceUIDInFile)
        for r in dcmread(out / "DICOMDIR").DirectoryRecordSequence
        if "ReferencedSOPInstanceUIDInFile" in r
    }
    theirs_uids = {
        str(r.ReferencedSOPInstanceUIDInFile)
        for r in dcmread(theirs).DirectoryRecordSequence
        if "ReferencedSOPInstanceUIDInFile" in r
    }
    assert ours_uids == theirs_uids

    readme = (out / "README.TXT").read_text(encoding="utf-8")
    index = (out / "INDEX.HTM").read_text(encoding="utf-8")
    for text in (readme, index):
        assert "SYN0001" in text and "OsiriX Lite" in text and "Test Hospital" in text
        assert "Via de beelduitwisselingswebsite kunt u files sturen" in " ".join(text.split())
    assert b"\r\n" in (out / "README.TXT").read_bytes()  # Notepad on Windows
    assert inspect_media(made.path).ok


def test_images_of_two_patients_are_refused_unless_allowed(study, tmp_path):
    root, _ = study
    other = ct_study(tmp_path / "other", 1, patient_id="OTHER01")
    with pytest.raises(PackageError, match=r"2 patients \(PatientID OTHER01, SYN0001\)"):
        package(tmp_path, root, other[0])
    assert not any((tmp_path / "download").iterdir())
    assert package(tmp_path, root, other[0], allow_multiple_patients=True).tree.patients.keys() == {
        "SYN0001",
        "OTHER01",
    }


def test_truncated_and_corrupt_files_are_named_with_the_reason(tmp_path):
    files = ct_study(tmp_path / "in", 3)
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])
    j2k = clone(J2K, tmp_path / "in", 1)[0]
    j2k.write_bytes(j2k.read_bytes()[:-40])
    (tmp_path / "in" / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(300))
    with pytest.raises(PackageError) as refused:
        package(tmp_path, tmp_path / "in")
    message = str(refused.value)
    assert f"{files[0]}: truncated: pixel data needs" in message
    assert f"{j2k}: truncated" in message
    assert "garbage.dcm" in message
    assert not any((tmp_path / "download").iterdir())


def test_strict_refuses_what_is_not_dicom(study, tmp_path):
    root, _ = study
    with pytest.raises(PackageError, match=r"notes\.txt: not DICOM \(--strict\)"):
        package(tmp_path, root, strict=True)


def test_missing_required_keys_are_filled_by_rule_and_reported(tmp_path):
    ct_study(tmp_path / "in", 2, omit=("StudyID", "SeriesNumber", "InstanceNumber", "StudyTime"))
    made = package(tmp_path, tmp_path / "in")
    filled = "\n".join(made.tree.filled)
    assert "StudyID missing, filled with 'ACC0001'" in filled
    assert "SeriesNumber missing, filled with '1'" in filled
    assert "InstanceNumber missing, filled with '1'" in filled and "InstanceNumber missing, filled with '2'" in filled
    assert "StudyTime missing, filled with '000000'" in filled
    out = unpack(made.path, tmp_path / "out")
    verify = subprocess.run(["dciodvfy", str(out / "DICOMDIR")], capture_output=True, text=True)
    assert "Error" not in verify.stdout + verify.stderr


def test_received_media_zip_with_its_own_dicomdir_is_repackaged(study, tmp_path):
    _, files = study
    media = tmp_path / "received.zip"
    with zipfile.ZipFile(media, "w") as archive:
        archive.writestr("DICOMDIR", b"their directory, replaced by ours")
        for n, path in enumerate(files):
            archive.write(path, f"IMAGES/IM{n}")
    made = package(tmp_path, media)
    assert made.files == len(files)
    out = unpack(made.path, tmp_path / "out")
    assert len(FileSet(dcmread(out / "DICOMDIR"))) == len(files)


def test_an_interrupted_packaging_leaves_no_visible_zip(tmp_path):
    ct_study(tmp_path / "in", 150)
    folder = tmp_path / "download"
    folder.mkdir()
    script = (
        "import sys; from pathlib import Path; from tests.unit.test_package import POLICY, MESSAGES;"
        "from exchange.package import make_package;"
        f"make_package(POLICY, MESSAGES, 'link-x', Path({str(folder)!r}), [Path({str(tmp_path / 'in')!r})])"
    )
    for sig in (signal.SIGKILL, signal.SIGTERM):
        child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
        deadline = time.monotonic() + 60
        while not any(p.name.endswith(".partial") for p in folder.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.01)
        child.send_signal(sig)
        child.wait()
        visible = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
        assert visible == [], f"after {sig.name}: {visible}"


def test_inspect_refuses_zip_slip_symlinks_encryption_and_bombs(study, tmp_path):
    _, files = study
    slip = tmp_path / "slip.zip"
    with zipfile.ZipFile(slip, "w") as archive:
        archive.write(files[0], "../../etc/cron.d/evil")
        archive.writestr("C:/Windows/evil.dcm", b"x")
        archive.writestr("DICOM\\IM1", b"x")
    problems = "\n".join(inspect_media(slip).problems)
    assert "'..' in the path" in problems and "absolute path" in problems and "backslash" in problems

    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as archive:
        info = zipfile.ZipInfo("DICOM/IM1")
        info.external_attr = 0o120777 << 16
        archive.writestr(info, "/etc/shadow")
    assert "DICOM/IM1: a symlink" in inspect_media(link).problems

    secret = tmp_path / "secret.zip"
    subprocess.run(["zip", "-q", "-j", "-P", "pw", str(secret), str(files[0])], check=True)
    assert any("encrypted" in p for p in inspect_media(secret).problems)

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("IM1", b"\0" * 20_000_000)
    assert any("zip bomb" in p for p in inspect_media(bomb).problems)
    capped = inspect_media(bomb, max_total=1_000_000, max_ratio=10_000)
    assert any("unpacks to 20000000 bytes" in p for p in capped.problems)


def test_inspect_checks_the_dicomdir_against_the_files(study, tmp_path):
    root, files = study
    made = package(tmp_path, root)
    out = unpack(made.path, tmp_path / "out")
    assert inspect_media(out).ok
    missing = sorted((out / "DICOM").rglob("IM*"))[0]
    missing.unlink()
    stray = out / "DICOM" / "EXTRA1"
    stray.write_bytes(files[0].read_bytes())
    problems = "\n".join(inspect_media(out).problems)
    assert f"references {missing.relative_to(out).as_posix()}, which is not there" in problems
    assert "DICOM/EXTRA1: a DICOM file the DICOMDIR does not reference" in problems


def test_one_patient_id_with_two_names_is_refused(tmp_path):
    ct_study(tmp_path / "in", 1)
    clone(J2K, tmp_path / "in", 1, patient_name="SOMEONE^ELSE")
    with pytest.raises(PackageError, match=r"one PatientID with different patient names \(PatientID SYN0001: "):
        package(tmp_path, tmp_path / "in")


def test_the_sites_viewer_sits_beside_the_dicomdir(study, tmp_path):
    root, _ = study
    viewer = tmp_path / "cdviewer"
    (viewer / "bin").mkdir(parents=True)
    (viewer / "run_cdviewer.exe").write_bytes(b"MZ viewer")
    (viewer / "bin" / "viewer.dll").write_bytes(b"MZ library")
    made = package(tmp_path, root, viewer=viewer)
    with zipfile.ZipFile(made.path) as archive:
        assert archive.read("run_cdviewer.exe") == b"MZ viewer"
        assert archive.read("bin/viewer.dll") == b"MZ library"
        assert "DICOMDIR" in archive.namelist()
    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "DICOMDIR").write_bytes(b"x")
    with pytest.raises(PackageError, match="DICOMDIR would collide with the package's own files"):
        package(tmp_path, root, viewer=clash)


def test_zip64_records_are_written_when_sizes_need_them(study, tmp_path, monkeypatch):
    # Lower the limits so that small test files take the ZIP64 paths a 4 GB study takes.
    import exchange.zipstream

    root, files = study
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    monkeypatch.setattr(exchange.zipstream, "ZIP64_AT", 1000)
    made = package(tmp_path, root)
    monkeypatch.undo()
    assert subprocess.run(["unzip", "-tq", str(made.path)], capture_output=True).returncode == 0
    with zipfile.ZipFile(made.path) as archive:
        assert archive.testzip() is None
        extras = [info.extra for info in archive.infolist() if info.filename.startswith("DICOM/")]
    assert all(b"\x01\x00" in extra[:2] for extra in extras)  # the ZIP64 extra field (id 0x0001)
    out = unpack(made.path, tmp_path / "out")
    assert sorted(sha(p) for p in (out / "DICOM").rglob("IM*")) == sorted(sha(f) for f in files)


def test_missing_input_an_unknown_account_and_missing_media_are_named(tmp_path):
    from exchange.package import download_folder

    with pytest.raises(PackageError, match=f"no such file or folder: {tmp_path}/nowhere"):
        package(tmp_path, tmp_path / "nowhere")
    assert not any((tmp_path / "download").iterdir())
    with pytest.raises(PackageError, match="link-nosuch12: no partner or link account of that name"):
        download_folder(POLICY, "link-nosuch12")
    assert inspect_media(tmp_path / "missing.zip").problems == [
        f"{tmp_path}/missing.zip: no such file or folder (symlinks are not followed)"
    ]
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    assert "not a readable zip" in inspect_media(tmp_path / "broken.zip").problems[0]
