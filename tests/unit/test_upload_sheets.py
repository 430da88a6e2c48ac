"""The upload notice's contact sheets (policy notices.upload_contact_sheets,
exchange.messaging.upload_sheets): made as root in a folder only root writes, for staff, from
what partners upload, within inspect's caps and by the confined renderer; named in the notice,
never attached; aged out by the purge with what they show."""

from __future__ import annotations

import email
import grp
import os
import re
import shutil
import signal
import stat
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from exchange import templates
from exchange.dicom import contactsheet
from exchange.layout import Layout
from exchange.messaging import notices, upload_sheets
from exchange.messaging.messages import Messages
from exchange.policy import NoticesPolicy, load_policy
from exchange.purge import SHEETS, PurgeReport, purge_files
from exchange.site import parse_site
from roles import REPO
from tests.dicom_synth import clone, ct_study, deflated, peak_memory
from tests.sites import outbox_site

POLICY = load_policy(REPO / "policies.yaml").policy
STAFF = grp.getgrgid(0).gr_name  # a group that exists here; the deploy's is exchange-staff
SETTLED = 600  # seconds ago: past the notices' two minutes


def layout_for(tmp_path: Path, sheets: bool = True, staff: str = STAFF) -> Layout:
    accounts = POLICY.accounts.model_copy(update={"root": str(tmp_path / "srv"), "staff_group": staff})
    notices_policy = POLICY.notices.model_copy(update={"upload_contact_sheets": sheets})
    layout = Layout(POLICY.model_copy(update={"accounts": accounts, "notices": notices_policy}))
    for name in ("alice", "bob"):
        (Path(layout.chroot("partner", name)) / "upload").mkdir(parents=True)
    Path(layout.kind_dir("link")).mkdir()
    return layout


def upload(layout: Layout, account: str = "alice") -> Path:
    return Path(layout.chroot("partner", account)) / "upload"


def settle(*paths: Path, ago: float = SETTLED) -> None:
    for path in paths:
        for each in [path, *path.rglob("*")] if path.is_dir() else [path]:
            os.utime(each, (time.time() - ago, time.time() - ago))


def study_zip(path: Path, tmp: Path) -> Path:
    files = ct_study(tmp / "ct", 2) + clone(Path(get_testdata_file("JPEG2000.dcm", download=False)), tmp / "j2k", 1)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, file in enumerate(files):
            archive.write(file, f"DICOM/IM{index}")
    return path


def notify(layout: Layout, tmp_path: Path) -> tuple[int, list[str], list[str]]:
    """(sent, failures, the bodies of the mails this run sent)."""
    outbox = tmp_path / "outbox"
    before = set(outbox.glob("*.eml")) if outbox.exists() else set()
    site = parse_site(outbox_site() | {"outbox_dir": str(outbox)}, "test")
    sent, failures = notices.notify_uploads(
        layout.policy, site, Messages(site, templates.MESSAGES), out=lambda line: None, state_dir=tmp_path / "state"
    )
    bodies = []
    for path in sorted(set(outbox.glob("*.eml")) - before):
        message = email.message_from_bytes(path.read_bytes())
        assert not message.is_multipart() and message.get_content_type() == "text/plain"  # nothing attached
        bodies.append(" ".join(message.get_payload(decode=True).decode().split()))
    return sent, failures, bodies


def sheets_of(layout: Layout, account: str = "alice") -> list[Path]:
    folder = Path(layout.contact_sheets_dir()) / account
    return sorted(folder.iterdir()) if folder.exists() else []


def test_the_notice_names_a_sheet_of_each_uploaded_study_kept_for_staff_and_never_attached(tmp_path, audit_socket):
    layout = layout_for(tmp_path)
    ct_study(upload(layout) / "CT thorax", 2, series=2)
    study_zip(upload(layout) / "disc.zip", tmp_path)
    (upload(layout) / "letter.pdf").write_text("a letter")
    settle(upload(layout))
    sent, failures, (body,) = notify(layout, tmp_path)
    assert (sent, failures) == (1, [])
    made = sheets_of(layout)
    assert [re.sub(r"-[0-9a-f]{12}\.jpg$", "", p.name) for p in made] == ["CT-thorax", "disc.zip"]
    for sheet in made:
        assert f"{sheet}" in body  # where staff open it, not the image
        assert Image.open(sheet).format == "JPEG"
        st = sheet.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o640)
    assert "Contact sheets, one picture per series" in body and "letter.pdf" in body
    assert body.count("contact-sheets/alice/") == 2  # the loose letter gets none
    # Root's folders, for staff only; each sheet ages with the newest file it shows.
    for folder, mode in ((Path(layout.contact_sheets_dir()), 0o2750), (made[0].parent, 0o750)):
        st = folder.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, mode)
    newest = max(p.stat().st_mtime for p in (upload(layout) / "CT thorax").iterdir())
    assert abs(made[0].stat().st_mtime - newest) < 1
    assert [r["event"] for r in audit_socket.records()].count("contact-sheet-made") == 2
    assert notify(layout, tmp_path)[2] == [] and sheets_of(layout) == made  # once


def test_contact_sheets_are_off_unless_the_policy_asks(tmp_path):
    assert POLICY.notices.upload_contact_sheets is False and NoticesPolicy().upload_contact_sheets is False
    layout = layout_for(tmp_path, sheets=False)
    ct_study(upload(layout) / "ct", 1)
    settle(upload(layout))
    sent, failures, (body,) = notify(layout, tmp_path)
    assert (sent, failures) == (1, []) and "Contact sheet" not in body
    assert not Path(layout.contact_sheets_dir()).exists()


def test_a_hostile_upload_costs_its_own_sheet_and_every_notice_still_goes(tmp_path, monkeypatch):
    layout = layout_for(tmp_path)
    with zipfile.ZipFile(upload(layout) / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(get_testdata_file("CT_small.dcm", download=False), "DICOM/IM1")
        archive.writestr("DICOM/IM2", b"\0" * 20_000_000)
    ct_study(upload(layout) / "crash", 1)
    ct_study(upload(layout, "bob") / "ct", 1)
    settle(upload(layout), upload(layout, "bob"))
    real = contactsheet.render_tile

    def render_tile(tile):  # a decoder that a file makes crash, in the child
        if "/crash/" in tile.pictures[0].image.instance.source.label:
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(tile)

    monkeypatch.setattr(contactsheet, "render_tile", render_tile)
    sent, failures, bodies = notify(layout, tmp_path)
    assert (sent, failures) == (2, [])
    alice, bob = sorted(bodies, key=lambda body: "bob" in body)
    assert "bomb.zip: not made: refused by the caps of exchange inspect (a zip bomb?)" in alice
    assert "crash: not made (the renderer stopped (SIGSEGV))" in alice
    assert sheets_of(layout) == []
    (sheet,) = sheets_of(layout, "bob")
    assert f"ct: {sheet}" in bob


def test_a_deflated_bomb_in_an_upload_is_named_a_problem_in_bounded_memory_and_every_notice_goes(tmp_path):
    """The header reads are root's job itself (the sheet's drawing is confined, they are not): a
    90 KB file that pydicom would inflate to 64 MB is read only as far as a header may go."""
    layout = layout_for(tmp_path)
    scans = upload(layout) / "scans"
    ct_study(scans, 1)
    deflated(Path(get_testdata_file("CT_small.dcm", download=False)), scans / "IM0001", padding=64 << 20)
    ct_study(upload(layout, "bob") / "ct", 1)
    settle(upload(layout), upload(layout, "bob"))
    with peak_memory() as peak:
        sent, failures, bodies = notify(layout, tmp_path)
    assert (sent, failures) == (2, []) and peak[0] < 40 << 20
    alice, bob = sorted(bodies, key=lambda body: "bob" in body)
    (sheet,) = sheets_of(layout)
    assert f"scans: {sheet}; the check found 1 problem: do not import it" in alice
    (theirs,) = sheets_of(layout, "bob")
    assert f"ct: {theirs}" in bob and "problem" not in bob


def test_a_failure_of_the_server_is_named_to_the_job_and_the_notice_still_goes(tmp_path):
    layout = layout_for(tmp_path, staff="no-such-group-here")
    ct_study(upload(layout) / "ct", 1)
    settle(upload(layout))
    sent, failures, (body,) = notify(layout, tmp_path)
    assert sent == 1
    assert failures == [
        f"alice: contact sheet of {upload(layout)}/ct not made: no group no-such-group-here "
        "(policy accounts.staff_group) to give the sheet to"
    ]
    assert "ct: not made (an error on the server (the job's output says which))" in body


def test_a_study_still_being_uploaded_gets_its_sheet_with_its_last_file(tmp_path):
    layout = layout_for(tmp_path)
    first, last = ct_study(upload(layout) / "ct", 2)
    settle(first)
    sent, _, (body,) = notify(layout, tmp_path)
    assert "ct: not yet, it is still being uploaded (with the next notice)" in body and sheets_of(layout) == []
    settle(last)
    sent, _, (body,) = notify(layout, tmp_path)
    (sheet,) = sheets_of(layout)
    assert f"ct: {sheet}" in body


def test_a_sheet_is_made_once_when_its_notice_is_retried(tmp_path, monkeypatch, audit_socket):
    layout = layout_for(tmp_path)
    ct_study(upload(layout) / "ct", 1)
    settle(upload(layout))
    failing = notices.send_email

    def refuse(site, mail):
        raise notices.DeliveryError("relay down")

    monkeypatch.setattr(notices, "send_email", refuse)
    assert notify(layout, tmp_path)[:2] == (0, ["notice not sent: alice: relay down"])
    monkeypatch.setattr(notices, "send_email", failing)
    (sheet,) = sheets_of(layout)
    monkeypatch.setattr(contactsheet, "_sandboxed", lambda *args: pytest.fail("drawn again"))
    sent, _, (body,) = notify(layout, tmp_path)
    assert sent == 1 and f"ct: {sheet}" in body and sheets_of(layout) == [sheet]
    assert [r["event"] for r in audit_socket.records()].count("contact-sheet-made") == 1


def test_many_media_in_one_notice_are_named_not_all_drawn(tmp_path, monkeypatch):
    monkeypatch.setattr(upload_sheets, "MAX_SHEETS", 2)
    layout = layout_for(tmp_path)
    for name in ("a", "b", "c"):
        ct_study(upload(layout) / name, 1)
    settle(upload(layout))
    _, _, (body,) = notify(layout, tmp_path)
    assert len(sheets_of(layout)) == 2
    assert "c: not made, more than 2 zip files or folders in one notice" in body


def test_a_senders_names_never_become_paths_or_control_the_notice(tmp_path):
    for hostile in ("..", ".hidden", "evil\x1b[2J", "a" * 300, "\u202egpj.zip", "-"):
        name = upload_sheets._name(hostile, [])
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,59}-[0-9a-f]{12}\.jpg", name), (hostile, name)
    layout = layout_for(tmp_path)
    ct_study(upload(layout) / "ev\x1b[2Jil", 1)
    settle(upload(layout))
    _, _, (body,) = notify(layout, tmp_path)
    (sheet,) = sheets_of(layout)
    assert sheet.name.startswith("ev-2Jil-") and f"ev\\x1b[2Jil: {sheet}" in body and "\x1b" not in body


def test_the_notice_says_each_outcome_in_both_languages():
    site = parse_site(outbox_site(), "test")
    notes = [
        upload_sheets.SheetNote("ct", "made", "/srv/exchange/contact-sheets/alice/ct-0123456789ab.jpg", problems=2),
        upload_sheets.SheetNote("b.zip", "refused"),
        upload_sheets.SheetNote("c", "pending"),
        upload_sheets.SheetNote("d", "no-dicom", problems=1),
    ]
    files = [type("U", (), {"path": "ct/1.dcm", "size": 5, "modified": __import__("datetime").datetime.now()})()]
    found = {}
    for lang in ("en", "nl"):
        mail = Messages(site, templates.MESSAGES).email(
            "upload-notice-email", lang, to="desk@hospital.example", account="alice", who="partner", folder="/u",
            files=files, retention_days=7, sheets=notes,
        )  # fmt: skip
        found[lang] = " ".join(mail.body.split())
    assert "ct: /srv/exchange/contact-sheets/alice/ct-0123456789ab.jpg; the check found 2 problems" in found["en"]
    assert "ct: /srv/exchange/contact-sheets/alice/ct-0123456789ab.jpg; de controle vond 2 problemen" in found["nl"]
    assert "b.zip: niet gemaakt: geweigerd door de grenzen" in found["nl"] and "c: nog niet" in found["nl"]
    assert "niet voor diagnostiek" in found["nl"] and "not for diagnosis" in found["en"]


# The purge: a sheet goes with the upload it shows.


def test_contact_sheets_age_out_like_any_file_and_never_hold_an_account(tmp_path):
    layout = layout_for(tmp_path)
    folder = Path(layout.contact_sheets_dir()) / "alice"
    folder.mkdir(parents=True)
    old, young = folder / "old-0123456789ab.jpg", folder / "young-0123456789ab.jpg"
    for path, age in ((old, 8 * 86400), (young, 86400)):
        path.write_bytes(b"\xff\xd8\xff\xd9")
        os.utime(path, (time.time() - age, time.time() - age))
    events, report = [], PurgeReport()
    purge_files(layout, time.time(), lambda event, **fields: events.append((event, fields)), False, report)
    assert [(e, f["kind"], f["account"], f["path"]) for e, f in events] == [
        ("file-purged", SHEETS, "alice", "/old-0123456789ab.jpg")
    ]
    assert not old.exists() and young.exists() and "alice" not in report.holding
    os.utime(young, (time.time() - 8 * 86400,) * 2)
    os.utime(folder, (time.time() - 8 * 86400,) * 2)
    purge_files(layout, time.time(), lambda event, **fields: None, False, PurgeReport())
    assert not folder.exists() and Path(layout.contact_sheets_dir()).is_dir()  # the account's folder goes too
    shutil.rmtree(layout.root)
