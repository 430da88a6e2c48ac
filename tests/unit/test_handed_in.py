"""What staff name is opened with their rights and read only through those descriptors
(exchange.invoker, exchange.handed_in). As root here, with `nobody` as the staff member."""

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from exchange import handed_in, untrusted
from exchange.invoker import Invoker, invoker, read_named, rights

NOBODY = pwd.getpwnam("nobody")
STAFF = Invoker("nobody", NOBODY.pw_uid, NOBODY.pw_gid, (NOBODY.pw_gid,))


@pytest.fixture
def shared(tmp_path_factory):
    """A folder others may pass (pytest's own are root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="handed-in-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_the_invoker_is_who_ran_sudo_and_nobody_else(monkeypatch):
    monkeypatch.setenv("SUDO_UID", str(NOBODY.pw_uid))
    assert invoker() == Invoker("nobody", NOBODY.pw_uid, NOBODY.pw_gid, tuple(os.getgrouplist("nobody", NOBODY.pw_gid)))
    monkeypatch.setenv("SUDO_UID", "0")  # root itself, through sudo
    assert invoker() is None
    monkeypatch.delenv("SUDO_UID")
    assert invoker() is None


def test_rights_are_the_invokers_inside_and_roots_again_after():
    with rights(STAFF):
        assert (os.geteuid(), os.getegid()) == (NOBODY.pw_uid, NOBODY.pw_gid)
        with pytest.raises(PermissionError):
            open("/etc/shadow", "rb")
    assert (os.geteuid(), os.getegid()) == (0, 0)
    assert read_named("/etc/shadow")  # root's own read, outside


def test_a_file_the_invoker_cannot_read_is_not_read_for_them(shared):
    secret = shared / "secret.yaml"
    secret.write_text("password: hunter2\n")
    secret.chmod(0o600)
    with pytest.raises(PermissionError):
        read_named(secret, STAFF)
    os.mkfifo(shared / "fifo")
    (shared / "folder").mkdir()
    for special in ("fifo", "folder"):  # a FIFO would hang the check for ever
        with pytest.raises(OSError, match="not a regular file"):
            read_named(shared / special, STAFF)


def test_what_the_invoker_cannot_read_is_named_and_the_rest_is_opened_once(shared):
    study = shared / "study"
    (study / "series").mkdir(parents=True)
    (study / "series" / "IM1").write_text("image")
    (study / "root-only").write_text("root's")
    (study / "root-only").chmod(0o600)
    (study / "closed").mkdir(mode=0o700)
    (study / "escape").symlink_to("/etc/shadow")
    for path in (shared, study, study / "series"):
        path.chmod(0o755)
    (study / "series" / "IM1").chmod(0o644)
    with handed_in.open_named([study], STAFF, 32) as handed:
        assert [(f.relative, f.size) for f in handed.files] == [("series/IM1", 5)]
        assert [(u.label, u.problem) for u in handed.problems] == [
            (f"{study}/closed", "folder not readable (Permission denied)"),
            (f"{study}/escape", handed_in.SYMLINK),
            (f"{study}/root-only", "not readable (Permission denied)"),
        ]
        # Swapped for a root-only file after it was opened: what is read is what was opened.
        (study / "series" / "IM1").rename(study / "gone")
        (study / "root-only").rename(study / "series" / "IM1")
        (file,) = handed.files
        assert handed_in.reader(file.fd).read() == b"image"
    with pytest.raises(handed_in.MissingPaths, match=f"no such file or folder: {shared}/none, {shared}/neither"):
        handed_in.open_named([study, shared / "none", shared / "neither"], STAFF, 32)


def test_a_root_only_folder_says_permission_denied_and_nothing_of_its_content(tmp_path):
    (tmp_path / "IM1").write_text("x")
    with handed_in.open_named([tmp_path], STAFF, 32) as handed:
        assert handed.files == []
        assert [u.problem for u in handed.problems] == ["not readable (Permission denied)"]


def test_readers_of_one_descriptor_keep_places_of_their_own(shared):
    (shared / "f").write_bytes(b"0123456789")
    with handed_in.open_named([shared / "f"], None, 32) as handed:
        (file,) = handed.files
        first, second = handed_in.reader(file.fd), handed_in.reader(file.fd)
        assert first.read(4) == b"0123" and second.read(2) == b"01" and first.read() == b"456789"
        second.seek(-1, os.SEEK_END)
        assert second.read() == b"9"


@pytest.mark.parametrize(
    "name, shown",
    [
        ("scan.dcm", "scan.dcm"),
        ("Ärztin Müller.pdf", "Ärztin Müller.pdf"),
        ("evil\x1b[2K\x1b[1Aok", "evil\\x1b[2K\\x1b[1Aok"),
        ("two\nlines", "two\\nlines"),
        ("report\u202efdp.exe", "report\\u202efdp.exe"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("not utf-8 \udcff", "not utf-8 \\xff"),
        ("c1 \x9b", "c1 \\x9b"),
        ("back\\slash", "back\\\\slash"),
    ],
)
def test_untrusted_text_is_shown_escaped_never_dropped(name, shown):
    assert untrusted.printable(name) == shown
    assert untrusted.printable(name).isprintable()
