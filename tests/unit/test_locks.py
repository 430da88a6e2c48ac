"""The tools' locks live where only root reaches them, and are never redirected."""

import os
import stat

import pytest

from exchange import locks


def test_the_lock_folder_is_made_root_only_and_a_widened_one_closed_again(tmp_path):
    folder = tmp_path / "run"
    with locks.held("purge.lock", wait=False, folder=str(folder)):
        pass
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    folder.chmod(0o1777)  # opened to everyone by hand
    with locks.held("purge.lock", wait=False, folder=str(folder)):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_second_holder_is_told_busy_and_a_waiting_one_is_not(tmp_path):
    folder = str(tmp_path / "run")
    with locks.held("accounts.lock", wait=True, folder=folder):
        with pytest.raises(locks.Busy, match="accounts.lock"):
            with locks.held("accounts.lock", wait=False, folder=folder):
                pass


def test_a_symlink_in_place_of_a_lock_is_never_followed(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    target = tmp_path / "target"
    target.write_text("keep me\\n")
    (folder / "purge.lock").symlink_to(target)
    with pytest.raises(locks.LockFolderError, match="purge.lock: cannot open the lock"):
        with locks.held("purge.lock", wait=False, folder=str(folder)):
            pass
    assert target.read_text() == "keep me\\n"


def test_a_lock_folder_that_is_a_symlink_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "run").symlink_to(elsewhere)
    with pytest.raises(locks.LockFolderError, match="cannot open the tools' lock folder"):
        with locks.held("purge.lock", wait=False, folder=str(tmp_path / "run")):
            pass
    assert os.listdir(elsewhere) == []
