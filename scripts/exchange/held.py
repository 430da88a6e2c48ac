"""The uploads of a link account that ends (its time is over, or staff revoked it), kept for staff.

Before the account goes, it is locked and its sessions end; then everything in its upload folder
(hidden files too) moves to ended-links/<account>/, where it is root's, group staff, read-only,
with its times kept: the upload notice still names it and the same retention removes it, so
nothing a recipient uploaded, even in the link's last hour, is lost unannounced.

The upload folder is its account's and staff may write in it too: entries are moved whole by
`renameat` relative to its descriptor (a symlink moves as a symlink, never followed), and owners
and modes are changed only afterwards, in the root-only destination.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from exchange import safefs, untrusted
from exchange.accounts import Step, account_lock, close_account, run_steps
from exchange.layout import Layout


@dataclass
class Held:
    files: int = 0  # regular files now held
    folder: str = ""
    problems: list[str] = field(default_factory=list)  # what could not be made staff's (named)


def free_name(dir_fd: int, name: str) -> str:
    """`name`, or "name (2).ext", ... : a hold run again never replaces what it held before."""
    stem, suffix = os.path.splitext(name)
    candidate, copy = name, 1
    while True:
        try:
            os.stat(candidate, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return candidate
        copy += 1
        candidate = f"{stem} ({copy}){suffix}"


def hold_uploads(layout: Layout, account: str) -> Held:
    """Move the link account's uploads to ended-links/<account>/ for staff. The account must be
    closed and its sessions ended first (keep_uploads). Run again after an interruption, it
    moves what is left and finishes making everything held staff's."""
    policy = layout.policy
    staff = grp.getgrnam(policy.accounts.staff_group).gr_gid
    held = Held(folder=f"{layout.ended_links_dir()}/{account}")
    try:
        source = safefs.open_dir(f"{layout.chroot('link', account)}/{policy.accounts.upload_folder}")
    except FileNotFoundError:
        source = None
    try:
        names = sorted(os.listdir(source)) if source is not None else []
        ended_parent = PurePosixPath(layout.ended_links_dir())
        if not names and not os.path.isdir(held.folder):
            return held  # nothing uploaded, nothing held before
        with safefs.opened_dir(str(ended_parent.parent)) as root:
            ended = safefs.make_dir(root, ended_parent.name, 0, staff, 0o2750)  # as the deploy makes it
        try:
            target = safefs.make_dir(ended, account, 0, staff, 0o750)
        finally:
            os.close(ended)
        try:
            for name in names:
                # Whole entries: a folder moves with everything in it, however deep.
                os.rename(name, free_name(target, name), src_dir_fd=source, dst_dir_fd=target)
            close_for_staff(target, staff, policy.accounts.max_folder_depth, held)
        finally:
            os.close(target)
    finally:
        if source is not None:
            os.close(source)
    return held


def close_for_staff(top_fd: int, staff: int, max_depth: int, held: Held) -> None:
    """What was moved, made root's: folders 0750, regular files 0640, group staff. A file with
    a second hard link is left as it is (its owner would change elsewhere too); symlinks and
    other special files stay as they are, never followed."""
    for step in safefs.walk(top_fd, max_depth):
        entry = step.entry
        if step.kind == "enter":
            os.fchown(step.fd, 0, staff)
            os.fchmod(step.fd, 0o750)
        elif step.kind == "file" and stat.S_ISREG(entry.stat.st_mode):
            try:
                descriptor = safefs.open_entry(entry.dir_fd, entry.name, entry.stat)
            except OSError as error:  # e.g. a lease someone holds on it (EWOULDBLOCK)
                held.files += 1
                held.problems.append(
                    f"{held.folder}/{untrusted.printable(entry.path)}: {error.strerror}, left as it is"
                )
                continue
            if descriptor is None:
                continue
            try:
                if os.fstat(descriptor).st_nlink == 1:
                    os.fchown(descriptor, 0, staff)
                    os.fchmod(descriptor, 0o640)
                held.files += 1
            finally:
                os.close(descriptor)
        elif step.kind in ("too-deep", "unreadable", "other-filesystem"):
            held.problems.append(f"{held.folder}/{untrusted.printable(entry.path)}: {step.kind}, left as it is")


def upload_count(layout: Layout, account: str) -> int:
    """Files in the link account's upload folder (within the depth the tools walk)."""
    try:
        top = safefs.open_dir(f"{layout.chroot('link', account)}/{layout.policy.accounts.upload_folder}")
    except OSError:
        return 0
    try:
        return sum(1 for step in safefs.walk(top, layout.policy.accounts.max_folder_depth) if step.kind == "file")
    finally:
        os.close(top)


def keep_uploads(layout: Layout, account: str, emit: Callable, **fields) -> Held:
    """Before a link account goes: lock it, end its sessions, hold its uploads (and say so)."""
    try:
        pwd.getpwnam(account)
    except KeyError:
        return Held()  # only its record is left (the account went by hand): nothing to lock or hold
    with account_lock():
        # Closed for password and key, and every process of it gone, before its files move: an
        # upload still being written could otherwise land after the move, and go with the account.
        run_steps([Step(account, "close the ended link account", command) for command in close_account(account)])
    held = hold_uploads(layout, account)
    if held.files:
        emit("link-uploads-held", account=account, files=held.files, folder=held.folder, **fields)
    for problem in held.problems:
        emit("link-uploads-held-problem", account=account, problem=problem)
    return held
