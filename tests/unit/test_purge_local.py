"""exchange.purge on a real directory tree (no host needed): age, links, skeleton."""

import contextlib
import email
import grp
import inspect
import os
import shutil
import time
from pathlib import Path

import pytest

from exchange import purge as purge_module
from exchange import templates
from exchange.held import hold_uploads, keep_uploads
from exchange.layout import Layout
from exchange.messaging import notices
from exchange.messaging.messages import Messages
from exchange.policy import load_policy
from exchange.purge import PurgeBusy, PurgeReport, purge_files, purge_lock
from exchange.site import parse_site
from roles import REPO
from tests.sites import outbox_site

DAY = 86400


@pytest.fixture
def tree(tmp_path):
    policy = load_policy(REPO / "policies.yaml").policy.model_copy(
        update={
            "accounts": load_policy(REPO / "policies.yaml").policy.accounts.model_copy(
                update={"root": str(tmp_path / "srv")}
            )
        }
    )
    layout = Layout(policy)
    chroot = Path(layout.chroot("partner", "alice"))
    for folder in ("download", "upload", "dev"):
        (chroot / folder).mkdir(parents=True)
    Path(layout.kind_dir("link")).mkdir()
    return layout, chroot


def aged(path: Path, seconds: float, content: str = "x") -> Path:
    path.write_text(content)
    os.utime(path, (time.time() - seconds, time.time() - seconds))
    return path


def run(layout, dry_run=False):
    events, report = [], PurgeReport()
    purge_files(layout, time.time(), lambda event, **fields: events.append((event, fields)), dry_run, report)
    return events, report


def test_age_boundary_is_exactly_seven_times_24_hours(tree):
    layout, chroot = tree
    old = aged(chroot / "upload/old.dcm", 7 * DAY + 30)
    young = aged(chroot / "upload/young.dcm", 7 * DAY - 30)
    events, report = run(layout)
    assert not old.exists() and young.exists()
    assert [(e, f["account"], f["path"], f["size"]) for e, f in events] == [
        ("file-purged", "alice", "/upload/old.dcm", 1)
    ]
    assert report.files == 1


def test_symlinks_are_removed_as_links_never_followed(tree, tmp_path):
    layout, chroot = tree
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = aged(outside / "precious.txt", 30 * DAY)
    link = chroot / "upload/escape"
    link.symlink_to(outside)
    os.utime(link, (time.time() - 30 * DAY,) * 2, follow_symlinks=False)
    run(layout)
    assert precious.exists() and not link.is_symlink()


def test_the_skeleton_is_never_removed(tree):
    layout, chroot = tree
    for folder in ("download", "upload", "dev"):
        os.utime(chroot / folder, (time.time() - 30 * DAY,) * 2)
    run(layout)
    assert all((chroot / folder).is_dir() for folder in ("download", "upload", "dev"))


def test_a_symlinked_folder_is_skipped(tree, tmp_path):
    layout, chroot = tree
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = aged(elsewhere / "victim.dcm", 30 * DAY)
    (chroot / "download").rmdir()
    (chroot / "download").symlink_to(elsewhere)
    _, report = run(layout)
    assert victim.exists()
    assert any("download: missing or not a directory" in note for note in report.skipped)


def test_dry_run_deletes_nothing(tree):
    layout, chroot = tree
    old = aged(chroot / "download/old.zip", 8 * DAY)
    events, report = run(layout, dry_run=True)
    assert old.exists() and report.files == 1 and events[0][1]["path"] == "/download/old.zip"


def test_the_lock_refuses_a_second_purge(tmp_path, monkeypatch):
    folder = str(tmp_path / "run")
    with purge_lock(folder):
        with pytest.raises(PurgeBusy, match="another purge is running"):
            with purge_lock(folder):
                pass
    with purge_lock(folder):
        pass
    assert inspect.signature(purge_lock).parameters["folder"].default == "/run/imaging-exchange"


def test_a_missing_exchange_root_is_a_clear_error(tmp_path):
    policy = load_policy(REPO / "policies.yaml").policy
    layout = Layout(
        policy.model_copy(update={"accounts": policy.accounts.model_copy(update={"root": str(tmp_path / "none")})})
    )
    with pytest.raises(
        purge_module.PurgeError, match=r"exchange root .*/none \(policy accounts.root\) is not a directory"
    ):
        run(layout)


def test_the_cli_reports_it_and_exits_1(tmp_path):
    import subprocess

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        (REPO / "policies.yaml").read_text().replace("root: /srv/exchange", f"root: {tmp_path}/none")
    )
    result = subprocess.run(
        [str(REPO / ".venv/bin/exchange"), "purge", "--dry-run"],
        env={"EXCHANGE_POLICY": str(policy_file), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert f"purge failed: the exchange root {tmp_path}/none" in result.stderr
    assert "Traceback" not in result.stderr


def test_what_its_account_removes_or_adds_meanwhile_never_stops_the_purge(tree, monkeypatch):
    """The account's SFTP session is live during a purge: a file may vanish under it, or a new
    one arrive in an old folder; the purge goes on with everything else."""
    layout, chroot = tree
    (chroot / "upload/old-folder").mkdir()
    vanishing = aged(chroot / "upload/a-vanishing.dcm", 8 * DAY)
    other = aged(chroot / "upload/b-other.dcm", 8 * DAY)
    os.utime(chroot / "upload/old-folder", (time.time() - 8 * DAY, time.time() - 8 * DAY))
    real_unlink, real_rmdir = os.unlink, os.rmdir

    def unlink(entry, dir_fd=None):
        if entry == vanishing.name:  # the account deleted it just before
            real_unlink(entry, dir_fd=dir_fd)
            raise FileNotFoundError(2, "No such file or directory", entry)
        real_unlink(entry, dir_fd=dir_fd)

    def rmdir(entry, dir_fd=None):
        if entry == "old-folder":  # an upload arrived in it just before
            raise OSError(39, "Directory not empty", entry)
        real_rmdir(entry, dir_fd=dir_fd)

    monkeypatch.setattr(purge_module.os, "unlink", unlink)
    monkeypatch.setattr(purge_module.os, "rmdir", rmdir)
    events, report = run(layout)
    assert not vanishing.exists() and not other.exists()
    assert [f["path"] for e, f in events if e == "file-purged"] == ["/upload/b-other.dcm"]


def with_staff_group_here(layout: Layout) -> Layout:
    staff = grp.getgrgid(0).gr_name  # a group that exists here; the deploy's is exchange-staff
    accounts = layout.policy.accounts.model_copy(update={"staff_group": staff})
    return Layout(layout.policy.model_copy(update={"accounts": accounts}))


def test_an_ended_links_uploads_are_held_for_staff_then_age_out(tree):
    layout = with_staff_group_here(tree[0])
    upload = Path(layout.chroot("link", "link-aaaaaaaa")) / "upload"
    (upload / "scans").mkdir(parents=True)
    letter = aged(upload / "letter.pdf", 2 * DAY)
    scan = aged(upload / "scans" / "ct.dcm", 1 * DAY)
    aged(upload / ".upload-1.partial", 60)  # hidden, or an upload cut off: kept and announced like any file
    held = Path(layout.ended_links_dir()) / "link-aaaaaaaa"
    assert hold_uploads(layout, "link-aaaaaaaa").files == 3
    assert sorted(p.relative_to(held).as_posix() for p in held.rglob("*")) == [
        ".upload-1.partial",
        "letter.pdf",
        "scans",
        "scans/ct.dcm",
    ]
    os.unlink(held / ".upload-1.partial")
    kept = (held / "letter.pdf").stat()
    assert abs(kept.st_mtime - (time.time() - 2 * DAY)) < 5 and oct(kept.st_mode & 0o777) == "0o640"
    assert not letter.exists() and not scan.exists()
    # Under the same retention: nothing yet, then the old file, then the rest with the folder.
    events, _ = run(layout)
    assert events == []
    os.utime(held / "letter.pdf", (time.time() - 8 * DAY, time.time() - 8 * DAY))
    events, _ = run(layout)
    assert [(e, f["account"], f["path"]) for e, f in events] == [("file-purged", "link-aaaaaaaa", "/letter.pdf")]
    for path in (held / "scans" / "ct.dcm", held / "scans", held):
        os.utime(path, (time.time() - 8 * DAY, time.time() - 8 * DAY))
    run(layout)
    assert not held.exists()


def test_held_uploads_are_announced_where_they_went_even_if_announced_before(tree, tmp_path):
    layout = with_staff_group_here(tree[0])
    chroot = Path(layout.chroot("link", "link-aaaaaaaa"))
    (chroot / "upload").mkdir(parents=True)
    aged(chroot / "upload" / "letter.pdf", 600)
    site = parse_site(outbox_site() | {"outbox_dir": str(tmp_path / "outbox")}, "test")
    messages = Messages(site, templates.MESSAGES)

    def notify() -> list[str]:
        before = set((tmp_path / "outbox").glob("*.eml")) if (tmp_path / "outbox").exists() else set()
        notices.notify_uploads(layout.policy, site, messages, out=lambda line: None, state_dir=tmp_path / "state")
        sent = set((tmp_path / "outbox").glob("*.eml")) - before
        return [
            " ".join(email.message_from_bytes(p.read_bytes()).get_payload(decode=True).decode().split()) for p in sent
        ]

    assert len(notify()) == 1  # announced in the account's upload folder
    assert hold_uploads(layout, "link-aaaaaaaa").files == 1
    shutil.rmtree(chroot)  # the account's removal
    (moved,) = notify()
    assert "letter.pdf" in moved and f"{layout.ended_links_dir()}/link-aaaaaaaa" in moved
    assert notify() == []  # once


def test_an_account_that_went_by_hand_has_nothing_to_hold(tree):
    events = []
    keep_uploads(tree[0], "link-gonebyhd", lambda event, **fields: events.append(event))
    assert events == []


def test_partners_go_only_when_the_partner_data_locked_them_and_after_whole_days():
    layout = Layout(load_policy(REPO / "policies.yaml").policy)

    def account(group: str, expire: int) -> dict:
        return {"shadow": {"expire": expire}, "exchange_groups": [group]}

    observed = {
        "today": 100,
        "accounts": {
            "dropped": account("exchange-partners", 92),  # locked on day 92: 7 whole days later
            "lock-day-93": account("exchange-partners", 93),  # an upload at 23:59 on day 93 needs day 101
            "by-hand": account("exchange-partners", 1),  # `usermod --expiredate 1`, still in the data
            "lnk": account("exchange-links", 100),
        },
    }
    expired, kept = purge_module.expired_accounts(layout, observed, partners_present={"by-hand"})
    assert expired == [("dropped", "partner", "locked for 7 days"), ("lnk", "link", "validity ended")]
    assert kept == ["by-hand"]
    # Without partner data on the host nothing says a partner is gone: none is removed.
    expired, kept = purge_module.expired_accounts(layout, observed, partners_present=None)
    assert expired == [("lnk", "link", "validity ended")] and kept == ["dropped", "by-hand"]


def test_a_file_dated_in_the_future_ages_from_now_instead(tree):
    layout, chroot = tree
    future = aged(chroot / "download/copied-with-times.zip", -30 * DAY)  # 30 days ahead
    events, _ = run(layout)
    assert [e for e, _ in events] == ["file-time-reset"] and future.exists()
    assert abs(future.stat().st_mtime - time.time()) < 60
    os.utime(future, (time.time() - 8 * DAY, time.time() - 8 * DAY))  # a week and a day later
    events, _ = run(layout)
    assert [e for e, _ in events] == ["file-purged"] and not future.exists()


def test_one_account_that_cannot_be_removed_never_keeps_the_others(tree, monkeypatch, tmp_path):
    """Both ways an account goes: a link whose record says it ended, and an account past its
    expiry. A failure is named (exit 1 in the CLI) and the next account still goes."""
    import datetime

    from exchange.accounts import StepFailed

    layout, _ = tree
    ended = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    records = [
        purge_module.links.LinkRecord(
            account=name, email="p@example.org", phone="+31612345678", lang="nl", note="", created=ended,
            expires=ended, issued_by="staff", token_sha256="0" * 64,
        )
        for name in ("link-aaaaaaaa", "link-bbbbbbbb")
    ]  # fmt: skip

    class Store:
        def unreadable(self):
            return []

        def all(self):
            return records

    def account(group: str) -> dict:
        return {"shadow": {"expire": 1}, "exchange_groups": [group]}

    observed = {
        "today": 20_000,
        "accounts": {"link-cccccccc": account("exchange-links"), "link-dddddddd": account("exchange-links")},
    }
    removed = []

    def remove_link(layout, store, name, event, **fields):
        if name in ("link-aaaaaaaa", "link-cccccccc"):
            raise StepFailed(f"{name}: rm: cannot remove: Device or resource busy")
        removed.append(name)

    monkeypatch.setattr(purge_module.observe, "observe", lambda params: observed)
    monkeypatch.setattr(purge_module.links, "LinkStore", Store)
    monkeypatch.setattr(purge_module.links, "remove_link", remove_link)
    monkeypatch.setattr(purge_module.held, "keep_uploads", lambda *args, **kwargs: None)
    monkeypatch.setattr(purge_module, "partners_present", lambda: None)
    monkeypatch.setattr(purge_module.auditlog, "record", lambda event, **fields: event)
    monkeypatch.setattr(purge_module, "purge_lock", lambda: contextlib.nullcontext())
    report = purge_module.purge(layout.policy, out=lambda line: None)
    assert removed == ["link-bbbbbbbb", "link-dddddddd"]
    assert [note.split(":")[0] for note in report.failed] == [
        "could not remove account link-aaaaaaaa",
        "could not remove account link-cccccccc",
    ]
    assert report.accounts == 2


def test_an_account_holding_young_files_is_known_in_a_dry_run_too(tree):
    """A locked partner goes once retention has emptied its folders: the dry run must say what
    the real run will do, so both judge by what the purge leaves (or would leave)."""
    layout, chroot = tree
    aged(chroot / "upload/old.dcm", 8 * DAY)
    for dry_run in (True, False):
        _, report = run(layout, dry_run=dry_run)
        assert report.holding == set()  # the old file goes (or would): nothing is held
    aged(chroot / "download/new.zip", 1 * DAY)
    for dry_run in (True, False):
        _, report = run(layout, dry_run=dry_run)
        assert report.holding == {"alice"}


def test_a_folder_deeper_than_the_policy_is_named_and_the_rest_still_purged(tree):
    layout, chroot = tree
    deep = chroot / "upload"
    for _ in range(600):  # made over SFTP by a recipient; a recursive walk dies of RecursionError
        deep = deep / "d"
    deep.mkdir(parents=True)
    old = aged(chroot / "download/old.zip", 8 * DAY)
    events, report = run(layout)
    assert not old.exists()
    (problem,) = report.failed
    limit = layout.policy.accounts.max_folder_depth
    assert problem.startswith(f"{chroot}/upload/{'/'.join(['d'] * (limit + 1))}: more than {limit} folders deep")
    assert ("folder-too-deep", "/upload/" + "/".join(["d"] * (limit + 1))) in [
        (event, fields["path"]) for event, fields in events
    ]
    assert "alice" in report.holding  # never reported empty: the deep folder stays


def test_holding_moves_a_swapped_symlink_as_a_symlink_and_changes_nothing_it_points_to(tree, tmp_path):
    layout = with_staff_group_here(tree[0])
    upload = Path(layout.chroot("link", "link-aaaaaaaa")) / "upload"
    upload.mkdir(parents=True)
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "shadow").write_text("root's")
    (outside / "shadow").chmod(0o600)
    (upload / "scans").symlink_to(outside)  # staff swapped a folder of the account's for this
    aged(upload / "report.pdf", 600)
    held = hold_uploads(layout, "link-aaaaaaaa")
    assert held.files == 1
    moved = Path(held.folder)
    assert (moved / "scans").is_symlink() and oct((outside / "shadow").stat().st_mode & 0o777) == "0o600"
    assert (outside / "shadow").read_text() == "root's" and os.listdir(outside) == ["shadow"]
    assert oct((moved / "report.pdf").stat().st_mode & 0o777) == "0o640"


def test_hidden_and_hostile_uploads_are_announced_escaped(tree, tmp_path):
    layout = with_staff_group_here(tree[0])
    upload = tree[1] / "upload"
    for name in (".hidden-scan.dcm", "evil\x1b[2K.dcm", "two\nlines: forged.txt", "bidi\u202egpj.exe"):
        aged(upload / name, 600)
    aged(upload / os.fsdecode(b"\xff-latin1.dcm"), 600)  # a name that is no UTF-8
    site = parse_site(outbox_site() | {"outbox_dir": str(tmp_path / "outbox")}, "test")
    messages = Messages(site, templates.MESSAGES)
    sent, failures = notices.notify_uploads(
        layout.policy, site, messages, out=lambda line: None, state_dir=tmp_path / "s"
    )
    assert (sent, failures) == (1, [])
    (mail,) = (tmp_path / "outbox").glob("*.eml")
    body = email.message_from_bytes(mail.read_bytes()).get_payload(decode=True).decode()
    assert ".hidden-scan.dcm" in body and "evil\\x1b[2K.dcm" in body and "bidi\\u202egpj.exe" in body
    assert "two\\nlines: forged.txt" in body and "\\xff-latin1.dcm" in body
    assert not any(c in body for c in "\x1b\u202e") and not any(line.startswith("lines:") for line in body.splitlines())
