"""`exchange import PATH --to-pacs NAME`: a received upload into a real PACS (Debian's Orthanc on
loopback), inspected first, reconciled on request, duplicates skipped, every status kept, and the
upload moved to imported/ only when all of it is in the PACS."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from typer.testing import CliRunner

from exchange import imported
from exchange.invoker import Invoker
from exchange.layout import Layout
from exchange.pacs import importing, reconcile, store
from exchange.pacs.importing import ImportFailed, import_upload
from exchange.pacs.reconcile import ReconcileError
from exchange.policy import load_policy
from exchange.site import parse_site
from roles import REPO
from tests.dicom_synth import clone, ct_study
from tests.pacs import OrthancPacs, no_listener
from tests.sites import outbox_site

EXCHANGE_AE = "EXCHANGE"


@pytest.fixture(scope="module")
def orthanc():
    """The test PACS (tests/pacs.py), knowing the exchange's AE title from loopback."""
    with OrthancPacs(modalities={"exchange": (EXCHANGE_AE, "127.0.0.1", 11112)}) as pacs:
        yield pacs


def lookup(pacs: OrthancPacs, sop_uid: str) -> str:
    """Orthanc's id of the instance of this SOP Instance UID."""
    (found,) = pacs.http.post("/tools/lookup", content=sop_uid).json()
    return found["ID"]


def tags_of(pacs: OrthancPacs, sop_uid: str) -> dict:
    """What the PACS stored for the instance, as keyword -> value."""
    return pacs.http.get(f"/instances/{lookup(pacs, sop_uid)}/tags", params={"simplify": ""}).json()


# -- the exchange side ------------------------------------------------------------------------


@pytest.fixture
def exchange(tmp_path, orthanc, monkeypatch):
    """(layout, site's dicom) with partner alice's upload folder, the PACS as node "main"."""
    monkeypatch.setattr(importing.paths, "TOOL_RUN_DIR", str(tmp_path / "run"))
    policy = load_policy(REPO / "policies.yaml").policy
    accounts = policy.accounts.model_copy(
        update={"root": str(tmp_path / "srv"), "staff_group": grp.getgrgid(0).gr_name}
    )
    layout = Layout(policy.model_copy(update={"accounts": accounts}))
    (Path(layout.chroot("partner", "alice")) / "upload").mkdir(parents=True)
    node = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port, "timeout": 10}
    dicom = {"ae_title": EXCHANGE_AE, "pacs": {"main": node}, "issuer_of_patient_id": "HOSPITAL"}
    return layout, parse_site(outbox_site() | {"dicom": dicom}, "test").dicom


def upload_of(layout: Layout, name: str) -> Path:
    return Path(layout.chroot("partner", "alice")) / "upload" / name


def zipped(folder: Path, zip_path: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*.dcm")):
            archive.write(file, f"DICOM/{file.name}")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    shutil.rmtree(folder)
    return zip_path


def run(layout, dicom, path, **options):
    said: list[str] = []
    try:
        return import_upload(layout, dicom, path, "main", None, say=said.append, **options), said
    except BaseException as error:
        error.said = said
        raise


@contextlib.contextmanager
def faulty(set_rule, path: Path):
    """The PACS misbehaves (its refuse_store or drop_store) for the instance at `path` in the block."""
    set_rule(SOPInstanceUID=[str(dcmread(path).SOPInstanceUID)])
    try:
        yield
    finally:
        set_rule()


def failed_import(layout, dicom, path) -> ImportFailed:
    with pytest.raises(ImportFailed) as failed:
        run(layout, dicom, path)
    return failed.value


def last_import(audit_socket) -> dict:
    """The last pacs-import record."""
    return [r for r in audit_socket.records() if r["event"] == "pacs-import"][-1]


def test_a_folder_is_stored_every_instance_then_moved_to_imported(exchange, orthanc, audit_socket):
    layout, dicom = exchange
    files = ct_study(upload_of(layout, "ct-thorax"), 3, patient_id="SENDER-1")
    uid, mtime = str(dcmread(files[0]).SOPInstanceUID), files[0].stat().st_mtime
    before = orthanc.count()
    done, said = run(layout, dicom, upload_of(layout, "ct-thorax"))
    assert orthanc.count() == before + 3 and (done.stored, done.duplicates, done.failed) == (3, 0, [])
    moved = Path(layout.imported_dir()) / "alice" / "ct-thorax"
    assert done.moved_to == str(moved) and sorted(p.name for p in moved.iterdir()) == sorted(f.name for f in files)
    assert not upload_of(layout, "ct-thorax").exists()
    assert (moved.stat().st_mode & 0o777, (moved / files[0].name).stat().st_mode & 0o777) == (0o750, 0o640)
    assert (moved / files[0].name).stat().st_mtime == mtime  # retention counts from the upload, as for ended links
    record = last_import(audit_socket)
    assert {k: record[k] for k in ("pacs", "account", "stored", "duplicates", "failed", "outcome", "reconciled")} == {
        "pacs": "main", "account": "alice", "stored": 3, "duplicates": 0, "failed": 0, "outcome": "imported",
        "reconciled": False,
    }  # fmt: skip
    assert record["patients"] == {"received": ["SENDER-1"], "local": None} and record["moved_to"] == str(moved)
    assert tags_of(orthanc, uid)["PatientID"] == "SENDER-1"


def known_patient(orthanc: OrthancPacs, tmp_path: Path, local_id: str, name: str, birth_date: str) -> None:
    """A study of the local patient already in the PACS (as the hospital's own images would be)."""
    orthanc.add_study(
        tmp_path / f"pacs-{local_id}", 1, patient_id=local_id, PatientName=name, PatientBirthDate=birth_date
    )


def test_a_zip_reconciled_to_the_local_patient_keeps_the_received_id(exchange, orthanc, tmp_path, audit_socket):
    layout, dicom = exchange
    known_patient(orthanc, tmp_path, "LOCAL-1", "Synthetic^Patient", "19700101")
    folder = tmp_path / "sent"
    files = ct_study(folder, 2, patient_id="SENDER-2")
    uids = sorted(str(dcmread(f).SOPInstanceUID) for f in files)
    medium = zipped(folder, upload_of(layout, "disc.zip"))
    before = orthanc.count()
    done, said = run(layout, dicom, medium, patient_id="LOCAL-1")
    assert orthanc.count() == before + 2 and done.stored == 2
    tags = tags_of(orthanc, uids[0])
    assert (tags["PatientID"], tags["IssuerOfPatientID"]) == ("LOCAL-1", "HOSPITAL")
    assert tags["OtherPatientIDsSequence"] == [{"PatientID": "SENDER-2", "TypeOfPatientID": "TEXT"}]
    (original,) = tags["OriginalAttributesSequence"]
    assert original["ReasonForTheAttributeModification"] == "COERCE" and original["ModifyingSystem"] == EXCHANGE_AE
    assert original["ModifiedAttributesSequence"][0]["PatientID"] == "SENDER-2"
    assert tags["PatientName"] == "Synthetic^Patient"  # the PACS's spelling: one patient record
    assert Path(done.moved_to) == Path(layout.imported_dir()) / "alice" / "disc.zip" and not medium.exists()
    assert any("filed as local patient LOCAL-1 (issuer HOSPITAL)" in line for line in said)
    record = last_import(audit_socket)
    assert record["patients"] == {"received": ["SENDER-2"], "local": "LOCAL-1"}
    assert record["reconciled"] == {
        "local_id": "LOCAL-1",
        "received_id": "SENDER-2",
        "known_to_pacs": True,
        "forced": False,
    }


def test_a_name_or_birth_date_mismatch_is_refused_unless_forced(exchange, orthanc, tmp_path, audit_socket):
    layout, dicom = exchange
    known_patient(orthanc, tmp_path, "LOCAL-2", "OTHER^PERSON", "19800202")
    files = ct_study(upload_of(layout, "mismatch"), 2, patient_id="SENDER-3")
    before = orthanc.count()
    with pytest.raises(ReconcileError) as refused:
        run(layout, dicom, upload_of(layout, "mismatch"), patient_id="LOCAL-2")
    assert refused.value.status == 2 and orthanc.count() == before  # nothing sent
    message = str(refused.value)
    assert "name: received SYNTHETIC^PATIENT, the PACS has OTHER^PERSON" in message
    assert "birth date: received 19700101, the PACS has 19800202" in message and "--force-reconcile" in message
    assert upload_of(layout, "mismatch").is_dir() and last_import(audit_socket)["outcome"] == "refused"
    done, said = run(layout, dicom, upload_of(layout, "mismatch"), patient_id="LOCAL-2", force_reconcile=True)
    assert orthanc.count() == before + 2 and done.reconciliation.forced
    assert any(line.startswith("  FORCED (--force-reconcile) despite: name: received") for line in said)
    tags = tags_of(orthanc, str(dcmread(Path(done.moved_to) / files[0].name).SOPInstanceUID))
    assert (tags["PatientID"], tags["PatientName"], tags["PatientBirthDate"]) == ("LOCAL-2", "OTHER^PERSON", "19800202")
    assert last_import(audit_socket)["reconciled"]["forced"] is True


def test_a_local_id_the_pacs_does_not_know_is_refused_unless_forced(exchange, orthanc):
    layout, dicom = exchange
    ct_study(upload_of(layout, "unknown"), 1, patient_id="SENDER-4")
    before = orthanc.count()
    with pytest.raises(ReconcileError, match="the PACS knows no patient with ID NOBODY-9; nothing was sent"):
        run(layout, dicom, upload_of(layout, "unknown"), patient_id="NOBODY-9")
    assert orthanc.count() == before
    done, _ = run(layout, dicom, upload_of(layout, "unknown"), patient_id="NOBODY-9", force_reconcile=True)
    assert done.stored == 1 and not done.reconciliation.known


def test_one_patient_only_with_a_patient_id(exchange, orthanc, tmp_path):
    layout, dicom = exchange
    ct_study(upload_of(layout, "two") / "a", 1, patient_id="SENDER-5")
    ct_study(upload_of(layout, "two") / "b", 1, patient_id="SENDER-6")
    known_patient(orthanc, tmp_path, "LOCAL-5", "SYNTHETIC^PATIENT", "19700101")
    with pytest.raises(ReconcileError, match="reconciles one patient.*patient IDs SENDER-5, SENDER-6"):
        run(layout, dicom, upload_of(layout, "two"), patient_id="LOCAL-5")


def test_what_the_pacs_holds_is_not_sent_twice(exchange, orthanc, tmp_path, audit_socket):
    layout, dicom = exchange
    files = ct_study(tmp_path / "elsewhere", 3, patient_id="SENDER-7")
    orthanc.upload(files[:1])  # one of them came in by another way
    before = orthanc.count()
    done, said = run(layout, dicom, tmp_path / "elsewhere")
    assert (done.stored, done.duplicates, orthanc.count()) == (2, 1, before + 2)
    assert "  1 instances already in PACS main (TESTPACS at 127.0.0.1:" in said[1]
    assert done.moved_to is None and (tmp_path / "elsewhere").is_dir()  # not an upload: imported, not moved
    assert any("is not in an account's upload folder; it stays where it is" in line for line in said)
    again, _ = run(layout, dicom, tmp_path / "elsewhere")
    assert (again.stored, again.duplicates, orthanc.count()) == (0, 3, before + 2)
    assert last_import(audit_socket)["outcome"] == "imported" and last_import(audit_socket)["account"] is None


def test_a_zip_that_fails_inspection_is_never_sent(exchange, orthanc, tmp_path, audit_socket):
    layout, dicom = exchange
    folder = tmp_path / "bad"
    ct_study(folder, 2, patient_id="SENDER-8")
    medium = zipped(folder, upload_of(layout, "bad.zip"), extra={"../escape.txt": b"x"})
    before = orthanc.count()
    with pytest.raises(ImportFailed) as refused:
        run(layout, dicom, medium)
    assert refused.value.status == 1 and orthanc.count() == before and medium.exists()
    assert "refused by inspection, nothing was sent" in str(refused.value) and "'..' in the path" in str(refused.value)
    assert last_import(audit_socket)["outcome"] == "refused"


def test_instances_the_pacs_rejects_leave_the_upload_and_say_how_to_finish(exchange, orthanc, audit_socket):
    layout, dicom = exchange
    files = ct_study(upload_of(layout, "rejected"), 3, patient_id="SENDER-9")
    before = orthanc.count()
    with faulty(orthanc.refuse_store, files[1]):
        failed = failed_import(layout, dicom, upload_of(layout, "rejected"))
    message = str(failed)
    assert failed.status == 1 and orthanc.count() == before + 2
    assert "1 of 3 instances are not in the PACS (2 stored now, 0 there before)" in message
    assert f"{files[1].name}: 0xA700 (Failure: Refused: Out of Resources)" in message
    assert "The upload stays where it is" in message and "run the same command again" in message
    assert any(line.startswith("  NOT STORED: ") and "0xA700" in line for line in failed.said)
    assert upload_of(layout, "rejected").is_dir() and not Path(layout.imported_dir()).exists()
    record = last_import(audit_socket)
    assert (record["outcome"], record["stored"], record["failed"]) == ("incomplete", 2, 1)
    done, _ = run(layout, dicom, upload_of(layout, "rejected"))  # the cause fixed: the rest goes, then it moves
    assert (done.stored, done.duplicates, orthanc.count()) == (1, 2, before + 3) and done.moved_to


def rewritten_after_inspection(monkeypatch, change) -> None:
    """Inspection as usual, then the partner changes a file before it is sent."""
    inspect = importing.inspect_media

    def then_changed(*args, **kwargs):
        report = inspect(*args, **kwargs)
        change()
        return report

    monkeypatch.setattr(importing, "inspect_media", then_changed)


@pytest.mark.parametrize("how", ["appended", "same size, another patient"])
def test_a_file_changed_after_inspection_is_refused(exchange, orthanc, monkeypatch, how):
    layout, dicom = exchange
    files = ct_study(upload_of(layout, "changing"), 2, patient_id="SENDER-10")

    def change():
        if how == "appended":
            with open(files[1], "ab") as file:
                file.write(b"\0" * 16)
        else:
            data = files[1].read_bytes()
            with open(files[1], "r+b") as file:  # rewritten in place: the inspected descriptor sees it
                file.write(data.replace(b"SENDER-10", b"INTRUDER1"))

    rewritten_after_inspection(monkeypatch, change)
    before = orthanc.count()
    with pytest.raises(ImportFailed) as failed:
        run(layout, dicom, upload_of(layout, "changing"))
    assert orthanc.count() == before + 1  # the first, as inspected; never the changed one
    expected = (
        "its size is now" if how == "appended" else "its PatientID is now 'INTRUDER1', 'SENDER-10' when inspected"
    )
    assert f"{files[1].name}: changed since it was inspected: " in str(failed.value) and expected in str(failed.value)
    assert upload_of(layout, "changing").is_dir()


def test_a_changed_zip_member_is_refused(exchange, orthanc, tmp_path, monkeypatch):
    layout, dicom = exchange
    folder = tmp_path / "z"
    ct_study(folder, 1, patient_id="SENDER-11")
    medium = zipped(folder, upload_of(layout, "changing.zip"))

    def change():  # a byte of the deflated member's data: it fails its CRC when read again
        data = bytearray(medium.read_bytes())
        data[len(data) // 2] ^= 0xFF
        with open(medium, "r+b") as file:
            file.write(data)

    rewritten_after_inspection(monkeypatch, change)
    before = orthanc.count()
    with pytest.raises(ImportFailed, match="changed since it was inspected: cannot be read as inspected"):
        run(layout, dicom, medium)
    assert orthanc.count() == before and medium.exists()


@pytest.mark.parametrize(
    ("received", "in_pacs", "same"),
    [
        ("DOE^JANE", "Doe^Jane", True),
        ("Doe^ Jane ", "DOE^JANE^^^", True),
        ("van  der Berg^Anna", "Van der Berg^Anna", True),
        ("Doe^Jane^Marie", "Doe^Jane", True),  # a middle name counts where both have one
        ("Doe^Jane^Marie", "Doe^Jane^Anne", False),
        ("Doe^Jane^^Dr", "Doe^Jane^^^PhD", True),  # prefix and suffix are no part of who it is
        ("Doe^Jane=ドウ^ジェーン", "Doe^Jane", True),  # the alphabetic group is compared
        ("Doe^John", "Doe^Jane", False),
        ("Jane^Doe", "Doe^Jane", False),
        ("Ｄｏｅ^Jane", "Doe^Jane", True),  # compatibility forms (full-width) fold
    ],
)
def test_names_compare_by_dicom_components_without_case_or_spacing(received, in_pacs, same):
    assert reconcile.same_name(received, in_pacs) is same


def test_coercion_keeps_what_it_replaces_and_the_ids_received_before():
    dataset = Dataset()
    dataset.PatientID, dataset.IssuerOfPatientID, dataset.PatientName = "S-1", "SENDER-HOSP", "Doe^Jane"
    qualifiers = Dataset()
    qualifiers.UniversalEntityID = "1.2.3"
    dataset.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    earlier = Dataset()
    earlier.PatientID, earlier.TypeOfPatientID = "OLD-7", "TEXT"
    dataset.OtherPatientIDsSequence = [earlier]
    plan = reconcile.Reconciliation("L-1", "S-1", None, "DOE^JANE", "19700101", True, modifying_system="EXCHANGE")
    assert reconcile.coerce(dataset, plan) == []
    assert (dataset.PatientID, dataset.PatientName, dataset.PatientBirthDate) == ("L-1", "DOE^JANE", "19700101")
    assert "IssuerOfPatientID" not in dataset and "IssuerOfPatientIDQualifiersSequence" not in dataset
    first, received = dataset.OtherPatientIDsSequence
    assert first.PatientID == "OLD-7" and (received.PatientID, received.IssuerOfPatientID) == ("S-1", "SENDER-HOSP")
    assert received.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "1.2.3"
    (modified,) = dataset.OriginalAttributesSequence[0].ModifiedAttributesSequence
    assert (modified.PatientID, modified.IssuerOfPatientID, modified.PatientName) == ("S-1", "SENDER-HOSP", "Doe^Jane")
    assert dataset.OriginalAttributesSequence[0].SourceOfPreviousValues == "SENDER-HOSP"
    # A name the instance's character set cannot hold is not written with "?": the received one stays.
    plan = reconcile.Reconciliation("L-1", "S-1", "HOSP", "山田^太郎", None, True)
    assert reconcile.coerce(dataset, plan) == [
        "the PACS's patient name cannot be written in the instance's character set; the received one kept"
    ]
    assert dataset.PatientName == "DOE^JANE" and dataset.IssuerOfPatientID == "HOSP"


def test_the_command_says_what_went_in_and_exits_1_on_a_rejection(exchange, orthanc, monkeypatch):
    from exchange import cli
    from exchange.cli import base

    layout, dicom = exchange
    site = parse_site(outbox_site() | {"dicom": dicom.model_dump()}, "test")
    monkeypatch.setattr(base, "tools", lambda command: base.Tools(layout.policy, site, None))
    files = ct_study(upload_of(layout, "by-hand"), 2, patient_id="SENDER-12")
    with faulty(orthanc.refuse_store, files[0]):
        failed = CliRunner().invoke(cli.app, ["import", "--to-pacs", "main", str(upload_of(layout, "by-hand"))])
    assert failed.exit_code == 1 and "0xA700 (Failure: Refused: Out of Resources)" in failed.stderr
    assert "1 of 2 instances are not in the PACS" in failed.stderr and failed.stdout == ""
    done = CliRunner().invoke(cli.app, ["import", "--to-pacs", "main", "--", str(upload_of(layout, "by-hand"))])
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith(f"imported {upload_of(layout, 'by-hand')} into PACS main (TESTPACS at 127.0.0.1:")
    assert done.stdout.rstrip().endswith("2 instances of 1 studies, 1 stored now, 1 there before")
    assert "  moved to " in done.stderr
    alone = CliRunner().invoke(cli.app, ["import", "--to-pacs", "main", "--force-reconcile", "/nowhere"])
    assert alone.exit_code == 2 and "--force-reconcile goes with --patient-id" in alone.stderr
    unknown = CliRunner().invoke(cli.app, ["import", "--to-pacs", "other", "/nowhere"])
    assert unknown.exit_code == 2 and "--to-pacs other: no PACS node of that name" in unknown.stderr


def test_an_upload_replaced_meanwhile_is_not_moved(exchange, orthanc, monkeypatch):
    """The partner renames the imported folder away and puts another of that name in its place
    before the move: the other one is not moved (nor anything else), and staff are told."""
    layout, dicom = exchange
    ct_study(upload_of(layout, "swapped") / "a", 1, patient_id="SENDER-13")
    move = importing.move_imported

    def swap_then_move(layout_, place, inspected):
        upload_of(layout, "swapped").rename(upload_of(layout, "kept"))
        (upload_of(layout, "swapped") / "other").mkdir(parents=True)
        return move(layout_, place, inspected)

    monkeypatch.setattr(importing, "move_imported", swap_then_move)
    done, said = run(layout, dicom, upload_of(layout, "swapped"))
    assert done.stored == 1 and done.moved_to is None
    assert said[-1].startswith("  not moved: ") and said[-1].endswith(
        "/upload/swapped is no longer what was inspected and imported (replaced or removed meanwhile)"
    )
    assert (upload_of(layout, "swapped") / "other").is_dir() and (upload_of(layout, "kept") / "a").is_dir()
    assert not (Path(layout.imported_dir()) / "alice").exists()


def test_a_symlink_on_the_way_to_the_upload_is_never_followed(exchange, tmp_path):
    layout, _ = exchange
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "study").mkdir(parents=True)
    (Path(layout.chroot("partner", "alice")) / "upload" / "dir").symlink_to(elsewhere)
    place = imported.upload_place(layout, str(upload_of(layout, "dir") / "study"))
    assert place == imported.UploadPlace("alice", "partner", Path("dir/study"))
    with pytest.raises(imported.NotMoved, match="a symlink, not followed"):
        imported.move_imported(layout, place, (elsewhere / "study").stat())
    assert (elsewhere / "study").is_dir()
    assert imported.upload_place(layout, str(upload_of(layout, ""))) is None  # the upload folder itself: never
    assert imported.upload_place(layout, str(tmp_path / "srv" / "ended-links" / "link-x" / "a")) is None


def test_an_instance_a_pacs_cannot_file_refuses_the_import(exchange, orthanc):
    layout, dicom = exchange
    ct_study(upload_of(layout, "no-series"), 1, patient_id="SENDER-14", omit=("SeriesInstanceUID",))
    before = orthanc.count()
    with pytest.raises(ImportFailed, match="without a valid Study and Series Instance UID: .*/s00-00000.dcm"):
        run(layout, dicom, upload_of(layout, "no-series"))
    assert orthanc.count() == before


def test_a_pacs_that_does_not_answer_gets_nothing_and_the_trail_says_so(exchange, audit_socket):
    layout, dicom = exchange
    ct_study(upload_of(layout, "nowhere"), 1, patient_id="SENDER-15")
    with no_listener() as port:
        node = dicom.pacs["main"].model_copy(update={"port": port, "timeout": 2})
        with pytest.raises(importing.PacsError, match="no DICOM association"):
            run(layout, dicom.model_copy(update={"pacs": {"main": node}}), upload_of(layout, "nowhere"))
    record = last_import(audit_socket)
    assert (record["outcome"], record["stored"]) == ("failed", 0) and "no DICOM association" in record["detail"]
    assert upload_of(layout, "nowhere").is_dir()


def test_contexts_go_in_groups_of_128_one_association_each(exchange, orthanc, monkeypatch):
    """Each (SOP class, transfer syntax) present gets its context; a compressed one is sent as it
    came. With one context an association (instead of pynetdicom's 128), three associations."""
    assert [len(group) for group in store.context_groups((f"1.2.{n}", "1.2.840.10008.1.2.1") for n in range(300))] == [
        128, 128, 44,
    ]  # fmt: skip
    layout, dicom = exchange
    upload = upload_of(layout, "mixed")
    ct = ct_study(upload / "ct", 2, patient_id="SENDER-16")
    implicit = dcmread(ct[1])
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit.save_as(ct[1], implicit_vr=True, little_endian=True)
    (mr,) = clone(Path(get_testdata_file("MR_small_jp2klossless.dcm")), upload / "mr", 1, patient_id="SENDER-16")
    monkeypatch.setattr(store, "MAX_CONTEXTS", 1)
    associations = []
    group = store.store_group
    monkeypatch.setattr(store, "store_group", lambda *args: associations.append(args[3]) or group(*args))
    before = orthanc.count()
    done, _ = run(layout, dicom, upload)
    assert done.stored == 3 and orthanc.count() == before + 3 and len(associations) == 3
    assert sorted(syntax for ((_sop, syntax),) in associations) == [
        ImplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless,
    ]  # fmt: skip
    uid = str(dcmread(Path(done.moved_to) / "mr" / mr.name).SOPInstanceUID)
    stored = orthanc.http.get(f"/instances/{lookup(orthanc, uid)}/metadata/TransferSyntax")
    assert stored.text == JPEG2000Lossless  # as received, never transcoded


def test_a_staff_member_cannot_import_what_they_could_not_read(exchange, orthanc, tmp_path):
    layout, dicom = exchange
    secret = tmp_path / "root-only"
    ct_study(secret / "study", 1, patient_id="SENDER-17")
    secret.chmod(0o700)
    nobody = pwd.getpwnam("nobody")
    who = Invoker("nobody", nobody.pw_uid, nobody.pw_gid, (nobody.pw_gid,))
    before = orthanc.count()
    with pytest.raises(ImportFailed, match=r"refused by inspection, nothing was sent:\n  PROBLEM: .*Permission denied"):
        import_upload(layout, dicom, secret / "study", "main", who, say=lambda line: None)
    assert orthanc.count() == before


def test_an_instance_answered_success_but_not_kept_is_not_counted_as_stored(exchange, orthanc, audit_socket):
    layout, dicom = exchange
    files = ct_study(upload_of(layout, "dropped"), 2, patient_id="SENDER-18")
    before = orthanc.count()
    with faulty(orthanc.drop_store, files[0]):
        failed = str(failed_import(layout, dicom, upload_of(layout, "dropped")))
    assert orthanc.count() == before + 1 and "1 of 2 instances are not in the PACS (1 stored now" in failed
    assert f"{files[0].name}: the PACS answered success but does not list it (C-FIND) afterwards" in failed
    assert upload_of(layout, "dropped").is_dir() and last_import(audit_socket)["outcome"] == "incomplete"


def test_a_study_of_more_files_than_select_can_watch_is_imported(exchange, orthanc, audit_socket):
    """Every inspected file stays open until it is sent, so a CT of 2,000 slices holds 2,000
    descriptors: the association's socket then has a number beyond select()'s 1,024."""
    layout, dicom = exchange
    ct_study(upload_of(layout, "ct-long"), 8, patient_id="SENDER-LONG")
    spare = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]  # as 1,100 more slices would
    try:
        done, _ = run(layout, dicom, upload_of(layout, "ct-long"))
    finally:
        for descriptor in spare:
            os.close(descriptor)
    assert (done.stored, done.failed) == (8, [])


def test_a_long_study_goes_on_two_associations_at_once(exchange, orthanc, monkeypatch):
    """A PACS files each instance in turn; two associations hide its wait for one (as import
    stations send), each taking the next instance when its last is answered."""
    layout, dicom = exchange
    ct_study(upload_of(layout, "ct-two"), 24, patient_id="SENDER-TWO")
    opened = store.association
    at_once, most = [0], [0]

    @contextlib.contextmanager
    def counted(*args, **kwargs):
        with opened(*args, **kwargs) as assoc:
            at_once[0] += 1
            most[0] = max(most[0], at_once[0])
            try:
                yield assoc
            finally:
                at_once[0] -= 1

    monkeypatch.setattr(store, "association", counted)
    before = orthanc.count()
    done, _ = run(layout, dicom, upload_of(layout, "ct-two"))
    assert (done.stored, done.failed, orthanc.count(), most[0]) == (24, [], before + 24, 2)


def test_a_rejected_instance_of_a_long_study_is_named_and_the_rest_stored(exchange, orthanc):
    layout, dicom = exchange
    files = ct_study(upload_of(layout, "ct-rejected"), 24, patient_id="SENDER-REJ")
    before = orthanc.count()
    with faulty(orthanc.refuse_store, files[10]):
        failed = failed_import(layout, dicom, upload_of(layout, "ct-rejected"))
    assert orthanc.count() == before + 23 and "1 of 24 instances are not in the PACS" in str(failed)
    assert f"{files[10].name}: 0xA700" in str(failed)


def test_a_file_of_a_long_study_changed_after_inspection_stops_both_associations(exchange, orthanc, monkeypatch):
    layout, dicom = exchange
    files = ct_study(upload_of(layout, "ct-changing"), 40, patient_id="SENDER-CHG")
    changed = sorted(files)[4]

    def change():
        with open(changed, "ab") as file:
            file.write(b"\0" * 16)

    rewritten_after_inspection(monkeypatch, change)
    before = orthanc.count()
    with pytest.raises(ImportFailed) as failed:
        run(layout, dicom, upload_of(layout, "ct-changing"))
    assert f"{changed.name}: changed since it was inspected" in str(failed.value)
    assert orthanc.count() < before + 12  # the rest stopped: at most the other stream's one in flight
    uid = str(dcmread(changed, force=True).SOPInstanceUID)
    assert not orthanc.http.post("/tools/lookup", content=uid).json()  # never the changed one
    assert upload_of(layout, "ct-changing").is_dir()
