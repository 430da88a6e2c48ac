"""Root's file operations in folders others can change (exchange.safefs), with the races an
account can run between two steps simulated: a name swapped for a symlink, a folder replaced
after it was listed, a name taken before it is given."""

import os
import stat
from pathlib import Path

import pytest

from exchange import safefs


@pytest.fixture
def target(tmp_path) -> Path:
    """A file only root may change: no operation below may touch it."""
    path = tmp_path / "target"
    path.write_text("root only\n")
    path.chmod(0o600)
    return path


def state(path: Path) -> tuple:
    st = path.stat()
    return st.st_mode, st.st_uid, st.st_size, path.read_text()


def test_a_folder_is_opened_without_following_any_symlink_on_the_way(tmp_path):
    (tmp_path / "real" / "download").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with safefs.opened_dir(str(tmp_path / "real" / "download")) as descriptor:
        assert stat.S_ISDIR(os.fstat(descriptor).st_mode)
    with pytest.raises(OSError, match="a symlink, not followed") as refused:
        safefs.open_dir(str(tmp_path / "link" / "download"))
    assert refused.value.filename == str(tmp_path / "link")


def test_a_new_file_is_nameless_until_published_and_never_replaces_a_name(tmp_path, target):
    with safefs.opened_dir(str(tmp_path)) as folder:
        new = safefs.NewFile.create(folder, 0o600)
        os.write(new.fd, b"package")
        assert sorted(os.listdir(folder)) == ["target"]  # nothing to see, nothing to swap
        (tmp_path / "study.zip").symlink_to(target)  # planted at the name it will get
        with pytest.raises(FileExistsError):
            new.publish("study.zip")
        new.publish("study-2.zip")
        new.close()
    assert (tmp_path / "study-2.zip").read_bytes() == b"package"
    assert state(target) == (0o100600, 0, 10, "root only\n")


def test_where_files_cannot_be_nameless_a_swapped_hidden_name_redirects_nothing(tmp_path, target, monkeypatch):
    real_open = os.open

    def no_tmpfile(path, flags, *args, **kwargs):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(95, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(safefs.os, "open", no_tmpfile)
    with safefs.opened_dir(str(tmp_path)) as folder:
        new = safefs.NewFile.create(folder, 0o600)
        hidden = tmp_path / new.hidden
        assert stat.S_IMODE(hidden.stat().st_mode) == 0o600
        # Staff rename the half-written file away and put a symlink in its place.
        hidden.rename(tmp_path / "moved-away")
        hidden.symlink_to(target)
        os.write(new.fd, b"package")
        os.fchmod(new.fd, 0o644)  # on the descriptor: never through the name
        new.publish("study.zip")
        new.close()
    assert (tmp_path / "study.zip").read_bytes() == b"package"
    assert hidden.is_symlink()  # not ours any more: left where staff put it
    assert state(target) == (0o100600, 0, 10, "root only\n")


def test_a_walk_never_enters_a_folder_swapped_for_a_symlink_after_it_was_listed(tmp_path, target, monkeypatch):
    top = tmp_path / "upload"
    (top / "scans").mkdir(parents=True)
    (top / "scans" / "a.dcm").write_text("a")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not the account's")
    real_stat = os.stat

    def swap_after_looking(path, *args, **kwargs):
        seen = real_stat(path, *args, **kwargs)
        if path == "scans" and not (top / "scans").is_symlink():
            (top / "scans").rename(tmp_path / "scans-moved")
            (top / "scans").symlink_to(outside)
        return seen

    monkeypatch.setattr(safefs.os, "stat", swap_after_looking)
    with safefs.opened_dir(str(top)) as descriptor:
        steps = [(step.kind, step.entry.path) for step in safefs.walk(descriptor, 8)]
    assert steps == []  # the folder it listed is gone; the symlink in its place is never followed


def test_a_walk_goes_iteratively_to_its_depth_limit_and_names_what_is_deeper(tmp_path):
    path = tmp_path / "upload"
    deep = path
    for _ in range(600):  # a recursive walk dies of RecursionError long before this
        deep = deep / "d"
    deep.mkdir(parents=True)
    (path / "d" / "kept.dcm").write_text("x")
    with safefs.opened_dir(str(path)) as descriptor:
        steps = list(safefs.walk(descriptor, 32))
    kinds = [step.kind for step in steps]
    assert kinds.count("enter") == kinds.count("leave") == 32
    (too_deep,) = [step for step in steps if step.kind == "too-deep"]
    assert too_deep.entry.path == "/".join(["d"] * 33) and too_deep.entry.depth == 33
    assert [step.entry.path for step in steps if step.kind == "file"] == ["d/kept.dcm"]


def test_a_walk_closes_its_descriptors_when_left_early(tmp_path):
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    before = len(os.listdir("/proc/self/fd"))
    with safefs.opened_dir(str(tmp_path)) as descriptor:
        for step in safefs.walk(descriptor, 8):
            if step.kind == "enter" and step.entry.depth == 3:
                break
    assert len(os.listdir("/proc/self/fd")) == before


def test_an_entry_replaced_between_look_and_open_is_not_opened(tmp_path):
    (tmp_path / "scan.dcm").write_text("first")
    with safefs.opened_dir(str(tmp_path)) as folder:
        seen = os.stat("scan.dcm", dir_fd=folder, follow_symlinks=False)
        (tmp_path / "scan.dcm").rename(tmp_path / "moved.dcm")
        (tmp_path / "other").write_text("another file")
        (tmp_path / "other").rename(tmp_path / "scan.dcm")
        assert safefs.open_entry(folder, "scan.dcm", seen) is None
        (tmp_path / "link.dcm").symlink_to(tmp_path / "scan.dcm")
        assert safefs.open_entry(folder, "link.dcm", os.stat("link.dcm", dir_fd=folder, follow_symlinks=False)) is None


def test_a_folder_is_made_with_its_owner_and_mode_on_its_descriptor_and_never_through_a_symlink(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    with safefs.opened_dir(str(tmp_path)) as folder:
        made = safefs.make_dir(folder, "held", 0, 0, 0o750)
        os.close(made)
        (tmp_path / "planted").symlink_to(elsewhere)
        with pytest.raises(OSError):
            safefs.make_dir(folder, "planted", 0, 0, 0o777)
    assert stat.S_IMODE((tmp_path / "held").stat().st_mode) == 0o750
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o700
