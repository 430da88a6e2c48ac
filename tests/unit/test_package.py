"""Study packages, checked by independent tools: dcmtk (dcmdump, dcmmkdir), dicom3tools
(dciodvfy), Info-ZIP's unzip, sha256sum, and pydicom reading the DICOMDIR back."""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

import exchange.dicom.package
import exchange.safefs
from exchange import templates
from exchange.dicom import media as media_module
from exchange.dicom import pdi
from exchange.dicom.package import PackageError, make_package
from exchange.messaging.messages import Messages
from exchange.policy import load_policy
from exchange.site import parse_site
from roles import REPO
from tests.dicom_synth import clone, ct_study, deflated, peak_memory
from tests.sites import outbox_site, viewer_site

POLICY = load_policy(REPO / "policies.yaml").policy


def inspect_media(path: Path, **options) -> media_module.Report:
    return media_module.inspect_media(path, POLICY.accounts.max_folder_depth, **options)


# The site names run_cdviewer.exe: a viewer folder must hold it (the packages below without
# --viewer are what `exchange package` makes for a site without viewer_dir).
MESSAGES = Messages(parse_site(viewer_site(), "test"), templates.MESSAGES)
NO_VIEWER = Messages(parse_site(outbox_site(), "test"), templates.MESSAGES)
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


CT_SMALL = Path(get_testdata_file("CT_small.dcm", download=False))


def test_a_deflated_file_is_read_to_its_header_and_one_that_expands_beyond_it_is_named_broken(tmp_path):
    """pydicom inflates a deflated dataset whole: 90 KB that hold 64 MB of zeros, in a folder or as
    a stored zip member (whose ratio the zip caps see as 1:1), are read as far as a header may go."""
    (tmp_path / "in").mkdir()
    (tmp_path / "bombs").mkdir()
    deflated(CT_SMALL, tmp_path / "in" / "good.dcm")
    bomb = deflated(CT_SMALL, tmp_path / "bombs" / "bomb.dcm", padding=64 << 20)
    with zipfile.ZipFile(tmp_path / "cd.zip", "w", zipfile.ZIP_STORED) as archive:
        archive.write(bomb, "DICOM/IM1")
    with peak_memory() as peak:
        reports = [inspect_media(tmp_path / "bombs"), inspect_media(tmp_path / "cd.zip")]
    assert peak[0] < 40 << 20
    reason = "the deflated dataset expands beyond 8 MB before its pixel data"
    assert [r.problems for r in reports] == [[f"bomb.dcm: {reason}"], [f"DICOM/IM1: {reason}"]]
    with pytest.raises(PackageError, match=f"bomb.dcm: {reason}"):
        package(tmp_path, tmp_path / "bombs")
    made = package(tmp_path, tmp_path / "in")  # a deflated file within the bounds: packaged, with its previews
    assert made.files == 1
    with zipfile.ZipFile(made.path) as archive:
        (series,) = json.loads(archive.read(pdi.STACKS))["series"]
    assert len(series["pictures"]) == 1 and series["problems"] == {}


def test_a_deflated_file_larger_than_a_header_read_is_counted_to_its_end_and_a_cut_one_named(tmp_path):
    """A deflated image of 12 MB inflated: its header's read stops at 8 MB, so its pixel data's
    length is checked against the whole stream counted (nothing kept); cut short, it is named."""
    source = dcmread(CT_SMALL)
    source.Rows, source.Columns, source.BitsAllocated, source.BitsStored, source.HighBit = 2048, 3072, 16, 12, 11
    source.PixelData = os.urandom(1 << 14) * (12 << 6)  # 12 MB that deflate small: its 16 KB piece repeats
    source.save_as(tmp_path / "plain.dcm")
    (tmp_path / "in").mkdir()
    (tmp_path / "cut").mkdir()
    whole = deflated(tmp_path / "plain.dcm", tmp_path / "in" / "big.dcm")
    cut = tmp_path / "cut" / "big.dcm"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 3 // 4])
    with peak_memory() as peak:
        reports = [inspect_media(tmp_path / "in"), inspect_media(tmp_path / "cut")]
    assert peak[0] < 40 << 20
    assert reports[0].problems == [] and len(reports[0].instances) == 1
    (problem,) = reports[1].problems
    assert problem.startswith("big.dcm: truncated: pixel data needs ") and not reports[1].instances
    with pytest.raises(PackageError, match="big.dcm: truncated: pixel data needs"):
        package(tmp_path, tmp_path / "cut")


def test_a_received_dicomdir_that_expands_beyond_its_bound_is_refused_unread(tmp_path):
    directory = Dataset()
    directory.file_meta = FileMetaDataset()
    directory.file_meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    directory.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    directory.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    directory.FileSetID = "BOMB"
    directory.save_as(tmp_path / "plain", enforce_file_format=True)
    bomb = deflated(tmp_path / "plain", tmp_path / "DICOMDIR", padding=64 << 20)
    (image,) = ct_study(tmp_path / "ct", 1)
    with zipfile.ZipFile(tmp_path / "cd.zip", "w", zipfile.ZIP_STORED) as archive:
        archive.write(bomb, "DICOMDIR")
        archive.write(image, "DICOM/IM1")
    with peak_memory() as peak:
        report = inspect_media(tmp_path / "cd.zip")
    assert peak[0] < 40 << 20
    assert any("not a readable DICOMDIR (the deflated dataset expands beyond" in p for p in report.problems)


def test_header_values_are_kept_no_longer_than_any_dicom_value_may_be(tmp_path):
    (path,) = ct_study(tmp_path / "in", 1)
    ds = dcmread(path)
    ds.add_new("PatientName", "UN", b"A" * 100_000)  # as UN: pydicom writes it unchecked
    ds.add_new("StudyDescription", "UN", b"B" * 100_000)
    ds.save_as(path)
    (instance,) = inspect_media(tmp_path / "in").instances
    assert [len(instance.header[k]) for k in ("PatientName", "StudyDescription")] == [200, 200]  # untrusted.TEXT_LIMIT


def test_an_image_holding_the_zip_end_signature_is_packaged_as_an_image(tmp_path):
    """Pixel data may hold the end-of-zip signature; the image must not vanish as an empty zip."""
    files = ct_study(tmp_path / "in", 2)
    image = dcmread(files[0])
    pixels = bytearray(image.PixelData)
    pixels[-40:-18] = b"PK\x05\x06" + bytes(18)
    image.PixelData = bytes(pixels)
    image.save_as(files[0])
    assert zipfile.is_zipfile(files[0])
    made = package(tmp_path, tmp_path / "in")
    assert made.files == 2
    with zipfile.ZipFile(made.path) as archive:
        assert sha(files[0]) in {hashlib.sha256(archive.read(n)).hexdigest() for n in archive.namelist()}


def test_an_unreadable_received_zip_refuses_the_package_by_name(study, tmp_path):
    _, files = study
    (tmp_path / "in").mkdir()
    for path in files[:2]:
        (tmp_path / "in" / path.name).write_bytes(path.read_bytes())
    # An end-of-zip record pointing at a central directory that is not there.
    broken = tmp_path / "in" / "received.zip"
    broken.write_bytes(b"not a zip" + b"PK\x05\x06" + b"\0\0\0\0\1\0\1\0" + b"\x2e\0\0\0\0\0\0\0\0\0")
    assert zipfile.is_zipfile(broken)
    with pytest.raises(PackageError, match=rf"{re.escape(str(broken))}: not a readable zip \(.+\)"):
        package(tmp_path, tmp_path / "in")
    assert not any((tmp_path / "download").iterdir())


def test_a_second_package_of_the_same_name_never_replaces_the_first(study, tmp_path, monkeypatch):
    root, _ = study
    monkeypatch.setattr("exchange.dicom.package.package_name", lambda label, now: "same.zip")
    first, second = package(tmp_path, root), package(tmp_path, root)
    assert (first.path.name, second.path.name) == ("same.zip", "same-2.zip")
    folder = tmp_path / "download"
    assert sorted(p.name for p in folder.iterdir()) == [
        "same-2.zip",
        "same-2.zip.sha256",
        "same.zip",
        "same.zip.sha256",
    ]
    for made in (first, second):
        assert (folder / f"{made.path.name}.sha256").read_text() == f"{made.sha256}  {made.path.name}\n"
        assert sha(made.path) == made.sha256


def test_what_cannot_be_read_refuses_the_package_by_name(tmp_path):
    """Nothing is left out unsaid: symlinks (never followed), a folder or file the packer may not
    read (root without DAC override, as on NFS with root_squash)."""
    files = ct_study(tmp_path / "store", 4, series=2)
    (tmp_path / "in").mkdir()
    os.symlink(files[0], tmp_path / "in" / "linked.dcm")
    os.symlink(tmp_path / "store", tmp_path / "in" / "linked-folder")
    with pytest.raises(PackageError) as refused:
        package(tmp_path, tmp_path / "in", files[1])
    assert f"{tmp_path}/in/linked.dcm: a symlink, not followed" in str(refused.value)
    assert f"{tmp_path}/in/linked-folder: a symlink, not followed" in str(refused.value)

    shutil.rmtree(tmp_path / "in")
    ct_study(tmp_path / "in" / "a", 2)
    hidden = ct_study(tmp_path / "in" / "b", 2)
    tmp_path.chmod(0o755)
    script = (
        "import sys; from pathlib import Path; from tests.unit.test_package import package;"
        "from exchange.dicom.package import PackageError\n"
        f"try: package(Path({str(tmp_path)!r}), Path({str(tmp_path / 'in')!r}))\n"
        "except PackageError as e: print(e)"
    )
    no_dac = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
    for unreadable, reason in ((hidden[0].parent, "folder not readable"), (hidden[0], "not readable")):
        unreadable.chmod(0)
        try:
            out = subprocess.run([*no_dac, sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
        finally:
            unreadable.chmod(0o755)
        assert f"{unreadable}: {reason} (Permission denied)" in out.stdout, out.stdout + out.stderr
        assert not any((tmp_path / "download").iterdir())


def test_an_unpacked_package_folder_with_its_dicomdir_is_packaged_again(study, tmp_path):
    made = package(tmp_path, study[0])
    out = unpack(made.path, tmp_path / "unpacked")
    (tmp_path / "again").mkdir()
    again = package(tmp_path / "again", out / "DICOM", out / "DICOMDIR")
    assert again.files == made.files and not again.scan.not_dicom


def test_odd_but_readable_files_are_packaged(tmp_path):
    """Explicit VR Big Endian (retired, still read) and integer keys that hold no integer."""
    big_endian = Path(get_testdata_file("MR_small_bigendian.dcm", download=False))
    files = ct_study(tmp_path / "in", 2)
    data = files[0].read_bytes()  # pydicom would not write these values: edit the bytes
    data = data.replace(b"\x20\x00\x11\x00IS\x02\x001 ", b"\x20\x00\x11\x00IS\x02\x00A1")  # SeriesNumber
    data = data.replace(b"\x20\x00\x13\x00IS\x02\x001 ", b"\x20\x00\x13\x00IS\x04\x001\\2 ")  # InstanceNumber
    files[0].write_bytes(data)
    odd_values = package(tmp_path, tmp_path / "in")
    assert odd_values.files == 2
    assert any("SeriesNumber missing, filled with '1'" in line for line in odd_values.tree.filled)
    (tmp_path / "big-endian").mkdir()
    for made, source in ((odd_values, files[0]), (package(tmp_path / "big-endian", big_endian), big_endian)):
        with zipfile.ZipFile(made.path) as archive:
            assert sha(source) in {hashlib.sha256(archive.read(n)).hexdigest() for n in archive.namelist()}
        out = unpack(made.path, tmp_path / made.path.stem)
        theirs = tmp_path / f"{made.path.stem}.DICOMDIR"  # dcmtk's own, beside, to compare nothing: it must accept
        check = subprocess.run(
            ["dcmmkdir", "+r", "-Pgp", "-Nxc", "-I", "+W", "+id", str(out), "+D", str(theirs), "DICOM"],
            capture_output=True,
        )
        assert check.returncode == 0, check.stderr


def _damaged_zips(files: list[Path], folder: Path) -> dict[str, Path]:
    folder.mkdir()
    crc = folder / "crc.zip"
    with zipfile.ZipFile(crc, "w") as archive:
        archive.write(files[0], "IM0")
        archive.write(files[1], "IM1")
    data = bytearray(crc.read_bytes())
    data[zipfile.ZipFile(crc).getinfo("IM1").header_offset + 30 + 3 + 5000] ^= 0xFF
    crc.write_bytes(data)
    encrypted = folder / "encrypted.zip"
    subprocess.run(["zip", "-q", "-j", "-P", "pw", str(encrypted), str(files[0])], check=True)
    bad_name = folder / "name.zip"
    with zipfile.ZipFile(bad_name, "w") as archive:
        archive.write(files[0], "IMAGES/IM_\u00e9")  # flagged UTF-8 ...
    bad_name.write_bytes(bad_name.read_bytes().replace("IM_\u00e9".encode(), b"IM_\xff\xfe"))  # ... and not
    return {"crc": crc, "encrypted": encrypted, "name": bad_name}


def test_damaged_received_zips_are_refused_by_name(tmp_path):
    files = ct_study(tmp_path / "in", 2)
    damaged = _damaged_zips(files, tmp_path / "media")
    expected = {
        "crc": [f"{damaged['crc']}!IM1: Bad CRC-32 for file 'IM1'"],
        "encrypted": [f"{damaged['encrypted']}!{files[0].name}: File <ZipInfo", "is encrypted, password required"],
        "name": [f"{damaged['name']}: not a readable zip ('utf-8' codec can't decode"],
    }
    for kind, media in damaged.items():
        with pytest.raises(PackageError) as refused:
            package(tmp_path, media)
        assert all(part in str(refused.value) for part in expected[kind]), refused.value
        assert not any((tmp_path / "download").iterdir())
    assert inspect_media(damaged["crc"]).problems == ["IM1: damaged (Bad CRC-32 for file 'IM1')"]
    assert "not a readable zip" in inspect_media(damaged["name"]).problems[0]


def test_inspect_refuses_a_second_name_and_twice_the_same_name(study, tmp_path):
    _, files = study
    second_name = tmp_path / "second.zip"
    body = b"\x01" + struct.pack("<I", zlib.crc32(b"NOTES.TXT")) + b"../ESCAPED.TXT"
    with zipfile.ZipFile(second_name, "w") as archive:
        archive.write(files[0], "DICOM/IM1")
        info = zipfile.ZipInfo("NOTES.TXT")
        info.extra = struct.pack("<HH", 0x7075, len(body)) + body  # unzip would write ../ESCAPED.TXT
        archive.writestr(info, b"escaped")
    assert inspect_media(second_name).problems == ["NOTES.TXT: carries a second (Unicode Path) name"]
    twice = tmp_path / "twice.zip"
    with zipfile.ZipFile(twice, "w") as archive:
        archive.write(files[0], "DICOM/IM1")
        archive.writestr("dicom/im1", b"MZ not an image")  # unpacked, one replaces the other
    assert inspect_media(twice).problems == ["dicom/im1: more than one entry of that name"]


def test_media_whose_path_holds_a_bang_are_inspected(study, tmp_path):
    made = package(tmp_path, study[0])
    renamed = made.path.rename(tmp_path / "Study!1.zip")
    assert inspect_media(renamed).ok
    folder = unpack(renamed, tmp_path / "CD!1")
    assert inspect_media(folder).ok


def test_the_package_is_nameless_while_written(study, tmp_path, monkeypatch):
    seen = []
    real = exchange.dicom.package.write_entries

    def watching(archive, *args, **kwargs):
        seen.extend((p.name, p.stat().st_mode & 0o777) for p in (tmp_path / "download").iterdir())
        return real(archive, *args, **kwargs)

    monkeypatch.setattr(exchange.dicom.package, "write_entries", watching)
    made = package(tmp_path, study[0])
    assert seen == [] and made.path.stat().st_mode & 0o777 == 0o644  # O_TMPFILE: no name, nothing to reach


def test_where_files_cannot_be_nameless_the_package_is_hidden_and_private_while_written(study, tmp_path, monkeypatch):
    real_open, seen = os.open, []

    def no_tmpfile(path, flags, *args, **kwargs):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)

    real = exchange.dicom.package.write_entries

    def watching(archive, *args, **kwargs):
        seen.extend((p.name, p.stat().st_mode & 0o777) for p in (tmp_path / "download").iterdir())
        return real(archive, *args, **kwargs)

    monkeypatch.setattr(exchange.safefs.os, "open", no_tmpfile)
    monkeypatch.setattr(exchange.dicom.package, "write_entries", watching)
    made = package(tmp_path, study[0])
    ((name, mode),) = seen
    assert name.startswith(".") and name.endswith(".partial") and mode == 0o600
    assert sorted(p.name for p in (tmp_path / "download").iterdir()) == [made.path.name, made.path.name + ".sha256"]


def test_a_package_whose_checksum_cannot_follow_is_not_left(study, tmp_path, monkeypatch):
    real = exchange.safefs.NewFile.publish

    def full_disk(self, name):
        if name.endswith(".sha256"):
            raise OSError(28, "No space left on device")
        return real(self, name)

    monkeypatch.setattr(exchange.safefs.NewFile, "publish", full_disk)
    with pytest.raises(PackageError, match="No space left on device"):
        package(tmp_path, study[0])
    assert list((tmp_path / "download").iterdir()) == []


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
        "from exchange.dicom.package import make_package;"
        f"make_package(POLICY, MESSAGES, 'link-x', Path({str(folder)!r}), [Path({str(tmp_path / 'in')!r})])"
    )

    def writing(pid: int) -> bool:
        """The child has its (nameless) package open in the folder."""
        try:
            return any(
                os.readlink(f"/proc/{pid}/fd/{fd}").startswith(f"{folder}/") for fd in os.listdir(f"/proc/{pid}/fd")
            )
        except OSError:
            return False

    for sig in (signal.SIGKILL, signal.SIGTERM):
        child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
        deadline = time.monotonic() + 60
        while not writing(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child.poll() is None, "the package was complete before the signal"
        child.send_signal(sig)
        child.wait()
        left = [p.name for p in folder.iterdir()]
        assert left == [], f"after {sig.name}: {left}"


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
    (clash / "run_cdviewer.exe").write_bytes(b"MZ viewer")
    (clash / "DICOMDIR").write_bytes(b"x")
    with pytest.raises(PackageError, match="DICOMDIR would collide with the package's own files"):
        package(tmp_path, root, viewer=clash)


def test_zip64_records_are_written_when_sizes_need_them(study, tmp_path, monkeypatch):
    # Lower the limits so that small test files take the ZIP64 paths a 4 GB study takes.
    import exchange.dicom.zipstream

    root, files = study
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    monkeypatch.setattr(exchange.dicom.zipstream, "ZIP64_AT", 1000)
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
    from exchange.dicom.package import download_folder

    with pytest.raises(PackageError, match=f"no such file or folder: {tmp_path}/nowhere"):
        package(tmp_path, tmp_path / "nowhere")
    assert not any((tmp_path / "download").iterdir())
    with pytest.raises(PackageError, match="link-nosuch12: no partner or link account of that name"):
        download_folder(POLICY, "link-nosuch12")
    assert inspect_media(tmp_path / "missing.zip").problems == [f"{tmp_path}/missing.zip: no such file or folder"]
    (tmp_path / "link.zip").symlink_to(tmp_path / "broken.zip")
    assert inspect_media(tmp_path / "link.zip").problems == [
        f"{tmp_path}/link.zip: a symlink, not followed (hand in what it points to)"
    ]
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    assert "not a readable zip" in inspect_media(tmp_path / "broken.zip").problems[0]


def test_a_viewer_folder_without_the_viewer_the_messages_name_is_refused(study, tmp_path):
    root, _ = study
    viewer = tmp_path / "cdviewer"
    (viewer / "bin").mkdir(parents=True)
    (viewer / "bin" / "run_cdviewer.exe").write_bytes(b"MZ not at the root")
    with pytest.raises(PackageError, match=r"cdviewer: no run_cdviewer.exe at its root.*nothing was written"):
        package(tmp_path, root, viewer=viewer)
    assert not any((tmp_path / "download").iterdir())
    (viewer / "run_cdviewer.exe").symlink_to(viewer / "bin" / "run_cdviewer.exe")  # never followed, never packed
    with pytest.raises(PackageError, match="cdviewer/run_cdviewer.exe: a symlink, not followed"):
        package(tmp_path, root, viewer=viewer)
    assert not any((tmp_path / "download").iterdir())


def test_a_viewer_folder_on_a_site_that_names_no_viewer_is_refused(study, tmp_path):
    # The messages of such a site say the package holds no viewer (`--viewer DIR` by hand).
    root, _ = study
    viewer = tmp_path / "weasis"
    viewer.mkdir()
    (viewer / "run_cdviewer.exe").write_bytes(b"MZ")
    folder = tmp_path / "download"
    folder.mkdir()
    with pytest.raises(PackageError, match="the site names no windows_viewer.*nothing was written"):
        make_package(POLICY, NO_VIEWER, "cardiology", folder, [root], viewer=viewer)
    assert not any(folder.iterdir())


def _documents(made) -> tuple[str, str]:
    with zipfile.ZipFile(made.path) as archive:
        readme = archive.read("README.TXT").decode("utf-8").replace("\r\n", "\n")
        return readme, archive.read("INDEX.HTM").decode("utf-8")


def test_without_a_viewer_the_package_says_so_and_whom_to_contact(study, tmp_path):
    root, _ = study
    folder = tmp_path / "download"
    folder.mkdir()
    made = make_package(POLICY, NO_VIEWER, "cardiology", folder, [root])
    readme, index = _documents(made)
    assert "Windows: in deze map zit geen viewer." in readme and "Windows: this folder holds no viewer." in readme
    assert "Neem dan contact op met de afdeling Radiologie." in readme
    assert "please contact the Department of Radiology." in readme
    assert "in dit pakket zit geen DICOM-viewer" in index and "this package holds no DICOM viewer" in index
    assert "start" not in readme.split("Windows:")[1].split("\n")[0]


def test_the_package_says_in_both_languages_when_the_server_deletes_it(study, tmp_path):
    root, _ = study
    made = package(tmp_path, root)
    readme, index = _documents(made)
    assert "Patiënt / Patient: " in readme
    days = POLICY.retention.days
    assert f"Het zip-bestand wordt {days} dagen nadat het is geplaatst van de uitwisselingsserver verwijderd." in readme
    assert f"The zip file is deleted from the exchange server {days} days after it was placed." in readme
    # A link's files all go when the link ends, however recently they were placed.
    ends = datetime.datetime(2026, 12, 5, 13, 0, tzinfo=datetime.UTC)
    made = package(tmp_path, root, label="link", link_ends=ends)
    readme, index = _documents(made)
    for text in (readme, index):
        assert "als de link verloopt, op zaterdag 5 december 2026 om 14:00 (CET)." in text
        assert "when the link expires, on Saturday 5 December 2026 at 14:00 (CET)." in text
        assert "dagen nadat" not in text and "days after it was placed" not in text
    assert "Ingepakt op " in readme and "Packed on " in readme


def test_the_link_end_comes_from_the_links_record(tmp_path):
    from exchange.dicom.package import link_end
    from exchange.links import LinkRecord, LinkStore

    store = LinkStore(tmp_path)
    ends = datetime.datetime(2026, 12, 5, 13, 0, tzinfo=datetime.UTC)
    (tmp_path / "links").mkdir()
    record = LinkRecord(
        account="link-abcdefgh", email="p@example.org", phone="+31612345678", lang="nl", note="",
        created=ends - datetime.timedelta(days=7), expires=ends, issued_by="staff", token_sha256="0" * 64,
    )  # fmt: skip
    (tmp_path / "links" / "link-abcdefgh.json").write_text(record.model_dump_json())
    assert link_end("link-abcdefgh", store) == ends
    assert link_end("link-zzzzzzzz", store) is None  # no record
    assert link_end("cardiology", store) is None  # a partner: the retention applies
    (tmp_path / "links" / "link-brkenzzz.json").write_text("{")
    assert link_end("link-brkenzzz", store) is None


def _nested_sequences(depth: int) -> bytes:
    """(0040,A043) nested `depth` times, each sequence and item of defined length (Explicit VR LE)."""
    inner = b""
    for _ in range(depth):
        item = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(inner)) + inner
        inner = b"\x40\x00\x43\xa0SQ\x00\x00" + struct.pack("<I", len(item)) + item
    return inner


def test_received_files_that_make_pydicom_raise_are_named_not_a_traceback(study, tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    _, files = study
    good = files[0].read_bytes()
    broken = tmp_path / "broken"
    broken.mkdir()
    syntax = b"1.2.840.10008.1.2.1\x00"
    at = good.index(syntax)
    (broken / "two-syntaxes").write_bytes(good[:at] + b"1.2.840.10\\08.1.2.1" + good[at + len(syntax) - 1 :])
    vr = good.index(b"OB", 132)
    (broken / "damaged-meta").write_bytes(good[:vr] + b"O\xe7" + good[vr + 2 :])
    report = inspect_media(broken)
    assert not report.ok and len(report.problems) == 2 and report.instances == []
    with pytest.raises(PackageError, match="refused, nothing was written"):
        package(tmp_path, broken)

    # A structured report nesting 3,000 sequences: skipped by its length when headers are read,
    # but its DICOMDIR record needs the whole header, which pydicom reads by recursion.
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID = generate_uid()
    sr.Modality, sr.PatientID, sr.StudyInstanceUID, sr.SeriesInstanceUID = (
        "SR",
        "SYN0001",
        generate_uid(),
        generate_uid(),
    )
    sr.InstanceNumber, sr.ContentDate, sr.ContentTime = 1, "20260101", "120000"
    nested = tmp_path / "nested"
    nested.mkdir()
    sr.save_as(nested / "SR1", enforce_file_format=True)
    with open(nested / "SR1", "ab") as handle:  # in tag order: (0040,A043), then the two flags
        handle.write(_nested_sequences(3000))
        handle.write(b"\x40\x00\x91\xa4CS\x08\x00COMPLETE" + b"\x40\x00\x93\xa4CS\x0a\x00UNVERIFIED")
    with pytest.raises(PackageError, match="nests too deep for its directory record"):
        package(tmp_path, nested)
    assert not any((tmp_path / "download").iterdir())


def test_a_received_dicomdir_that_is_no_directory_is_named(study, tmp_path):
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset, FileMetaDataset

    _, files = study
    medium = tmp_path / "medium"
    medium.mkdir()
    shutil.copy(files[0], medium / "IM1")
    directory = Dataset()
    directory.file_meta = FileMetaDataset()
    directory.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    directory.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    directory.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    directory.add(DataElement(0x00041220, "LO", "not a sequence"))
    directory.save_as(medium / "DICOMDIR", enforce_file_format=True)
    (problem,) = inspect_media(medium).problems
    assert problem.startswith(f"{medium}/DICOMDIR: not a usable DICOMDIR (")
