"""Uploads imported into PACS (`exchange import`), moved out of the account's upload folder to
imported/<account>/ (the same path below it as in the upload folder), so staff see what went
in and the sender sees it is done; there they are root's, group staff, read-only, with their
times kept, and the same retention removes them (exchange.purge).

The upload folder is its account's: the entry is moved by `renameat` from its folder's
descriptor (each folder on the way opened without following a symlink) into the imported
folder's, only if it is still the inode that was inspected and imported, and checked again
after the move (what someone put in its place meanwhile goes back, unchanged). Owners and modes
are changed only afterwards, in the destination (exchange.held does the same for ended links).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath

from exchange import safefs, untrusted
from exchange.held import Held, close_for_staff, free_name
from exchange.layout import Layout


class NotMoved(Exception):
    """The upload stays where it is; the message says why."""


@dataclass(frozen=True)
class UploadPlace:
    """Where a path staff named lies in an account's upload folder."""

    account: str
    kind: str  # "partner" or "link"
    relative: PurePosixPath  # below the upload folder: at least one part

    def upload_folder(self, layout: Layout) -> str:
        return f"{layout.chroot(self.kind, self.account)}/{layout.policy.accounts.upload_folder}"


def upload_place(layout: Layout, path: str) -> UploadPlace | None:
    """The account's upload folder `path` lies in (by its name, as staff named it: the move
    checks that it is the inspected entry); None if it lies in none, or is one itself."""
    named = PurePosixPath(os.path.normpath(os.path.abspath(path)))
    upload = layout.policy.accounts.upload_folder
    for kind in ("partner", "link"):
        base = PurePosixPath(layout.kind_dir(kind))
        if named.is_relative_to(base):
            parts = named.relative_to(base).parts
            if len(parts) >= 3 and parts[1] == upload:
                return UploadPlace(parts[0], kind, PurePosixPath(*parts[2:]))
    return None


def move_imported(layout: Layout, place: UploadPlace, inspected: os.stat_result) -> str:
    """Move the upload at `place` (if it is still the `inspected` inode) to imported/; its new
    path. NotMoved says why not; nothing was changed then."""
    staff = grp.getgrnam(layout.policy.accounts.staff_group).gr_gid
    shown = untrusted.printable(f"{place.upload_folder(layout)}/{place.relative}")
    try:
        upload = safefs.open_dir(place.upload_folder(layout))
    except OSError as error:
        raise NotMoved(f"{untrusted.printable(error.filename)}: {error.strerror}") from None
    with contextlib.ExitStack() as stack:
        stack.callback(os.close, upload)
        try:
            source = (
                safefs.open_dir(str(place.relative.parent), upload) if place.relative.parent.parts else os.dup(upload)
            )
        except OSError as error:
            raise NotMoved(f"{shown}: its folder {untrusted.printable(error.filename)}: {error.strerror}") from None
        stack.callback(os.close, source)
        name = place.relative.name
        if not _same(source, name, inspected):
            raise NotMoved(f"{shown} is no longer what was inspected and imported (replaced or removed meanwhile)")
        target = _imported_folder(layout, place, staff)
        stack.callback(os.close, target)
        new_name = free_name(target, name)
        try:
            os.rename(name, new_name, src_dir_fd=source, dst_dir_fd=target)
        except OSError as error:
            why = "another filesystem" if error.errno == errno.EXDEV else error.strerror
            raise NotMoved(f"{shown}: not moved: {why}") from None
        if not _same(target, new_name, inspected):  # swapped between the look and the move: put back
            with contextlib.suppress(OSError):
                os.rename(new_name, name, src_dir_fd=target, dst_dir_fd=source)
            raise NotMoved(f"{shown} was replaced just as it was moved; it stays in the upload folder")
        _make_staffs(target, new_name, staff, layout.policy.accounts.max_folder_depth)
        return f"{layout.imported_dir()}/{place.account}/{PurePosixPath(*place.relative.parts[:-1], new_name)}"


def _same(dir_fd: int, name: str, inspected: os.stat_result) -> bool:
    try:
        seen = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (seen.st_dev, seen.st_ino) == (inspected.st_dev, inspected.st_ino)


def _imported_folder(layout: Layout, place: UploadPlace, staff: int) -> int:
    """imported/<account>/<the folders above the upload> (made as needed: root's, group staff)."""
    top = PurePosixPath(layout.imported_dir())
    with safefs.opened_dir(str(top.parent)) as root:
        here = safefs.make_dir(root, top.name, 0, staff, 0o2750)  # as the deploy makes it
    try:
        for part in (place.account, *place.relative.parts[:-1]):
            below = safefs.make_dir(here, part, 0, staff, 0o750)
            os.close(here)
            here = below
    except BaseException:
        os.close(here)
        raise
    return here


def _make_staffs(dir_fd: int, name: str, staff: int, max_depth: int) -> None:
    """What was moved, made root's and read-only for staff (a folder with all below it)."""
    entry = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(entry.st_mode):
        with safefs.opened_dir(name, dir_fd) as folder:
            os.fchown(folder, 0, staff)
            os.fchmod(folder, 0o750)
            close_for_staff(folder, staff, max_depth, Held())
    elif stat.S_ISREG(entry.st_mode):
        descriptor = safefs.open_entry(dir_fd, name, entry)
        if descriptor is not None:
            try:
                if os.fstat(descriptor).st_nlink == 1:  # a second hard link would change elsewhere too
                    os.fchown(descriptor, 0, staff)
                    os.fchmod(descriptor, 0o640)
            finally:
                os.close(descriptor)
