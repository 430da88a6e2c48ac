"""The purge plans, then carries the plan out: a dry run shows exactly that plan and changes
nothing, and a step is taken only on the entry it was planned for."""

import contextlib
import datetime
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from exchange import purge as purge_module
from exchange.links import LinkRecord
from exchange.purge import PurgeReport, carry_out, plan_files
from tests.unit import test_purge_local
from tests.unit.test_purge_local import DAY, aged

tree = test_purge_local.tree  # the same fixture: an exchange root with partner alice
NOW = time.time()


def dated(path: Path, seconds_ago: float) -> Path:
    os.utime(path, (NOW - seconds_ago, NOW - seconds_ago), follow_symlinks=False)
    return path


def every_kind_of_step(layout, chroot: Path) -> None:
    """Files past retention (a symlink among them: it goes, its target stays), young ones, old
    folders, a file dated ahead, a folder deeper than the walk goes, an ended link's held uploads."""
    upload, download = chroot / "upload", chroot / "download"
    aged(upload / "old.dcm", 8 * DAY)
    aged(upload / "young.dcm", 1 * DAY)
    (upload / "study" / "series").mkdir(parents=True)
    aged(upload / "study" / "series" / "old.dcm", 8 * DAY)
    dated(upload / "study" / "series", 8 * DAY)
    dated(upload / "study", 8 * DAY)
    (upload / "old-link").symlink_to("/etc/passwd")
    dated(upload / "old-link", 8 * DAY)
    aged(download / "ahead.zip", -30 * DAY)
    deep = download.joinpath(*["d"] * (layout.policy.accounts.max_folder_depth + 2))
    deep.mkdir(parents=True)
    held = Path(layout.ended_links_dir()) / "link-eeeeeeee"
    held.mkdir(parents=True)
    aged(held / "letter.pdf", 8 * DAY)
    dated(held, 8 * DAY)


def link_record(account: str) -> LinkRecord:
    ended = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    fields = {"email": "p@example.org", "phone": "+31612345678", "lang": "nl", "note": "", "issued_by": "staff"}
    return LinkRecord(account=account, created=ended, expires=ended, token_sha256="0" * 64, **fields)


def accounts_on_the_host(monkeypatch) -> list[str]:
    """A link whose record says it ended, one past its account's expiry, a partner the partner
    data dropped long ago (no folders left) and one that still holds a young file (alice). The
    removals are recorded, not run; the list they go to is returned."""
    removed = []

    class Store:
        def unreadable(self):
            return ["links/link-ffffffff.json: unreadable link record (Invalid JSON)"]

        def all(self):
            return [link_record("link-aaaaaaaa")]

    def account(group: str) -> dict:
        return {"shadow": {"expire": 1}, "exchange_groups": [group]}

    observed = {
        "today": 20_000,
        "accounts": {
            "link-cccccccc": account("exchange-links"),
            "alice": account("exchange-partners"),
            "bob": account("exchange-partners"),
        },
    }
    monkeypatch.setattr(purge_module.observe, "observe", lambda params: observed)
    monkeypatch.setattr(purge_module.links, "LinkStore", Store)
    monkeypatch.setattr(purge_module.links, "remove_link", lambda layout, store, name, event, **f: removed.append(name))
    monkeypatch.setattr(purge_module, "run_steps", lambda steps: removed.append(steps[0].account))
    monkeypatch.setattr(purge_module, "account_lock", contextlib.nullcontext)
    monkeypatch.setattr(purge_module, "partners_present", lambda: set())
    monkeypatch.setattr(purge_module, "purge_lock", contextlib.nullcontext)
    return removed


def lines(out: list[str], leave_out: str) -> list[dict]:
    return [{key: value for key, value in json.loads(line).items() if key != leave_out} for line in out]


def test_the_dry_run_shows_exactly_what_the_real_run_then_does(tree, monkeypatch, audit_socket):
    layout, chroot = tree
    every_kind_of_step(layout, chroot)
    removed = accounts_on_the_host(monkeypatch)
    shown, done = [], []
    would = purge_module.purge(layout.policy, dry_run=True, out=shown.append, now=NOW)
    assert removed == []
    did = purge_module.purge(layout.policy, out=done.append, now=NOW)
    assert lines(shown, "dry_run") == lines(done, "time")
    assert would == did
    # Not an empty comparison: every kind of step is in it, in the order taken.
    deep = "/".join(["d"] * (layout.policy.accounts.max_folder_depth + 1))
    taken = [
        " ".join(filter(None, (line["event"], line.get("account"), line.get("path")))) for line in lines(done, "time")
    ]
    assert (
        "\n".join(taken)
        == f"""\
file-time-reset alice /download/ahead.zip
folder-too-deep alice /download/{deep}
file-purged alice /upload/old-link
file-purged alice /upload/old.dcm
file-purged alice /upload/study/series/old.dcm
directory-purged alice /upload/study/series
directory-purged alice /upload/study
file-purged link-eeeeeeee /letter.pdf
directory-purged link-eeeeeeee /
link-record-unreadable
link-expired link-aaaaaaaa
account-removed link-cccccccc
account-removed bob"""
    )
    assert removed == ["link-aaaaaaaa", "link-cccccccc", "bob"]  # alice holds young.dcm: she stays
    assert did.holding == {"alice"} and (did.files, did.directories, did.accounts) == (4, 3, 3)
    # What the real run did is on record; the account removals record themselves.
    records = [(r["event"], r.get("path")) for r in audit_socket.records()]
    assert ("file-purged", "/upload/old.dcm") in records and ("directory-purged", "/upload/study") in records
    assert not (chroot / "upload" / "old.dcm").exists() and (chroot / "upload" / "young.dcm").exists()
    assert abs((chroot / "download" / "ahead.zip").stat().st_mtime - time.time()) < 60


def snapshot(top: Path) -> dict:
    """Every entry below `top` with what any change would show: inode, mode, size, times, content."""
    seen = {}
    for folder, folders, files in os.walk(top):
        for name in ["", *folders, *files]:
            path = Path(folder, name)
            st = path.lstat()
            content = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
            seen[str(path.relative_to(top))] = (
                st.st_ino,
                st.st_mode,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                content,
            )
    return seen


def test_the_dry_run_changes_nothing(tree, monkeypatch, audit_socket):
    layout, chroot = tree
    every_kind_of_step(layout, chroot)
    removed = accounts_on_the_host(monkeypatch)
    before = snapshot(Path(layout.root))
    shown = []
    report = purge_module.purge(layout.policy, dry_run=True, out=shown.append, now=NOW)
    assert snapshot(Path(layout.root)) == before
    assert removed == [] and audit_socket.records() == []
    assert report.files == 4 and len(shown) == 13 and all(json.loads(line)["dry_run"] for line in shown)


def collect(events: list) -> Callable:
    return lambda event, **fields: events.append((event, fields))


def test_an_entry_changed_between_plan_and_execution_is_left_and_named(tree, tmp_path):
    layout, chroot = tree
    upload = chroot / "upload"
    swapped = aged(upload / "a-swapped.dcm", 8 * DAY)
    written = aged(upload / "b-written.dcm", 8 * DAY)
    (upload / "c-folder").mkdir()
    aged(upload / "c-folder" / "scan.dcm", 8 * DAY)
    (upload / "d-folder").mkdir()
    aged(upload / "d-folder" / "scan.dcm", 8 * DAY)
    (upload / "e-empty").mkdir()
    dated(upload / "e-empty", 8 * DAY)
    vanished = aged(upload / "f-vanished.dcm", 8 * DAY)
    untouched = aged(upload / "g-untouched.dcm", 8 * DAY)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = aged(outside / "scan.dcm", 8 * DAY)
    planned = plan_files(layout, NOW)

    # Meanwhile, over the account's live session (or by staff):
    swapped.rename(upload / "a-kept.dcm")
    aged(swapped, 8 * DAY, "another study")  # as old, but another file
    with written.open("a") as appended:
        appended.write("more")
    (upload / "c-folder").rename(upload / "c-moved")
    (upload / "c-folder").symlink_to(outside)
    (upload / "d-folder").rename(upload / "d-moved")
    (upload / "d-folder").mkdir()
    aged(upload / "d-folder" / "scan.dcm", 8 * DAY, "another")
    aged(upload / "e-empty" / "new.dcm", 60)
    vanished.unlink()

    events, report = [], PurgeReport()
    carry_out(planned, layout, collect(events), report)
    assert swapped.read_text() == "another study" and (upload / "a-kept.dcm").exists()
    assert written.exists() and victim.exists() and (upload / "c-moved" / "scan.dcm").exists()
    assert (upload / "d-folder" / "scan.dcm").read_text() == "another" and (upload / "d-moved" / "scan.dcm").exists()
    assert (upload / "e-empty" / "new.dcm").exists() and not untouched.exists()
    assert [fields["path"] for event, fields in events if event == "file-purged"] == ["/upload/g-untouched.dcm"]
    skipped = [
        (fields["path"], fields["step"], fields["reason"]) for event, fields in events if event == "purge-step-skipped"
    ]
    assert skipped == [
        ("/upload/a-swapped.dcm", "file-purged", "replaced since the purge planned it"),
        ("/upload/b-written.dcm", "file-purged", "changed since the purge planned it: no longer past retention"),
        ("/upload/c-folder/scan.dcm", "file-purged", "its folder was replaced by a symlink or a file (never followed)"),
        ("/upload/d-folder/scan.dcm", "file-purged", "its folder was replaced since the purge planned it"),
        ("/upload/e-empty", "directory-purged", "something arrived in it since the purge planned it"),
    ]
    assert report.changed[0] == f"{upload}/a-swapped.dcm: replaced since the purge planned it"
    assert report.files == 1 and report.holding == {"alice"}


def test_a_partner_whose_files_change_meanwhile_is_not_removed(tree, monkeypatch):
    """Planned to go once the plan empties its folders; a young file in place of an old one keeps it."""
    layout, _ = tree
    removed = accounts_on_the_host(monkeypatch)
    bob = Path(layout.chroot("partner", "bob"))
    for folder in ("download", "upload"):
        (bob / folder).mkdir(parents=True)
    old = aged(bob / "upload" / "old.dcm", 8 * DAY)
    store = purge_module.links.LinkStore()
    planned = purge_module.plan(layout, NOW, store)
    assert "bob" not in planned.holding
    old.unlink()
    aged(old, 60, "a new upload")
    events, report, out = [], PurgeReport(), []
    carry_out(planned, layout, collect(events), report, out.append, store)
    assert old.exists() and "bob" not in removed and removed == ["link-aaaaaaaa", "link-cccccccc", "alice"]
    assert [(fields["account"], fields["step"]) for event, fields in events if event == "purge-step-skipped"] == [
        ("bob", "file-purged"),
        ("bob", "account-removed"),
    ]
    assert report.changed[-1] == (
        "account bob: its folders still hold files (changed since the purge planned it); not removed"
    )


def test_imported_uploads_age_out_like_any_file_and_never_hold_an_account(tree):
    """imported/<account>/ (exchange import): the same retention, from the upload's own times;
    its folders go once empty and old, the account's own folder with them, never imported/."""
    layout, chroot = tree
    study = Path(layout.imported_dir()) / "alice" / "2026-04" / "ct-thorax"
    study.mkdir(parents=True)
    aged(study / "old.dcm", 8 * DAY)
    young = aged(study / "young.dcm", 1 * DAY)
    events, report = [], PurgeReport()
    carry_out(plan_files(layout, NOW), layout, collect(events), report)
    assert [(e, f["kind"], f["account"], f["path"]) for e, f in events] == [
        ("file-purged", purge_module.IMPORTED, "alice", "/2026-04/ct-thorax/old.dcm")
    ]
    assert young.exists() and "alice" not in report.holding
    for path in (young, study, study.parent, study.parent.parent):
        dated(path, 8 * DAY)
    events = []
    carry_out(plan_files(layout, NOW), layout, collect(events), PurgeReport())
    assert [(e, f["path"]) for e, f in events] == [
        ("file-purged", "/2026-04/ct-thorax/young.dcm"),
        ("directory-purged", "/2026-04/ct-thorax"),
        ("directory-purged", "/2026-04"),
        ("directory-purged", "/"),
    ]
    assert not study.parent.parent.exists() and Path(layout.imported_dir()).is_dir()
