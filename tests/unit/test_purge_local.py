"""exchange.purge on a real directory tree (no host needed): age, links, skeleton."""

import os
import time
from pathlib import Path

import pytest

from exchange import purge as purge_module
from exchange.accounts import Layout
from exchange.policy import load_policy
from exchange.purge import PurgeBusy, PurgeReport, purge_files, purge_lock
from roles import REPO

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
    lock = tmp_path / "purge.lock"
    with purge_lock(lock):
        with pytest.raises(PurgeBusy, match="another purge is running"):
            with purge_lock(lock):
                pass
    with purge_lock(lock):
        pass
    assert purge_module.LOCK_FILE.name == "imaging-exchange-purge.lock"


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
