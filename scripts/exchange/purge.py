"""Retention: delete exchange files older than the policy allows, and expired accounts.

Age is the file's mtime, which exchange accounts cannot set (sshd denies them setstat).
Files are found by walking each account's download and upload folders through directory
file descriptors: symlinks are never followed, other filesystems never entered, nothing
outside the exchange root is reached, and the chroot skeleton itself is never removed.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import grp
import json
import os
import pwd
import shlex
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from exchange import auditlog, links, observe
from exchange.accounts import Layout, Step, StepFailed, account_lock, removal_steps, run_steps
from exchange.partners import HOST_PARTNERS_PATH, PartnerDataError, load_partners
from exchange.policy import Policy

LOCK_FILE = Path("/run/lock/imaging-exchange-purge.lock")
OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PurgeBusy(Exception):
    pass


class PurgeError(Exception):
    """The purge cannot run at all; the message says why."""


@dataclass
class PurgeReport:
    files: int = 0
    bytes: int = 0
    directories: int = 0
    accounts: int = 0
    skipped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # partners locked, but not by the partner data
    failed: list[str] = field(default_factory=list)  # what went wrong, a sentence each (tried again next run)
    holding: set[str] = field(default_factory=set)  # accounts with files younger than retention


@contextlib.contextmanager
def purge_lock(path: Path = LOCK_FILE) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PurgeBusy(f"another purge is running (lock {path})") from None
        yield


FUTURE_SLACK = 300  # seconds a file's time may be ahead of the server's clock before it is reset


def _purge_tree(
    dir_fd: int, relative: str, device: int, cutoff: float, emit: Callable, dry_run: bool, report: PurgeReport
) -> bool:
    """Delete what is too old below `dir_fd`; return True if the directory ended up empty."""
    empty = True
    for entry in sorted(os.listdir(dir_fd)):
        path = f"{relative}/{entry}"
        try:
            if not _purge_entry(dir_fd, entry, path, device, cutoff, emit, dry_run, report):
                empty = False
        except (FileNotFoundError, NotADirectoryError):
            pass  # removed or replaced by its account meanwhile (the account's SFTP session is live)
        except OSError as error:
            if error.errno != errno.ENOTEMPTY:
                raise
            empty = False  # something new arrived in an old folder meanwhile: it stays
    return empty


def _purge_entry(
    dir_fd: int, entry: str, path: str, device: int, cutoff: float, emit: Callable, dry_run: bool, report: PurgeReport
) -> bool:
    """Purge one entry if too old; return True if it is gone (or would be, in a dry run)."""
    st = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
    if st.st_dev != device:
        report.skipped.append(f"{path}: another filesystem")
        return False
    if stat.S_ISDIR(st.st_mode):
        child = os.open(entry, OPEN_DIR, dir_fd=dir_fd)
        try:
            child_empty = _purge_tree(child, path, device, cutoff, emit, dry_run, report)
        finally:
            os.close(child)
        # A directory goes once it is empty and was itself last changed before the cutoff.
        if not (child_empty and st.st_mtime < cutoff):
            return False
        if not dry_run:
            os.rmdir(entry, dir_fd=dir_fd)
        report.directories += 1
        emit("directory-purged", path=path, age_hours=round((time.time() - st.st_mtime) / 3600, 1))
        return True
    if st.st_mtime > time.time() + FUTURE_SLACK:
        # A time in the future (copied with `cp -p` or unzipped from a machine whose clock is
        # ahead) would keep the file past retention: its days count from now on.
        if not dry_run:
            os.utime(entry, dir_fd=dir_fd, follow_symlinks=False)
        emit("file-time-reset", path=path, mtime=round(st.st_mtime))
        return False
    if st.st_mtime >= cutoff:
        return False
    # Files, and symlinks themselves (never their targets).
    if not dry_run:
        os.unlink(entry, dir_fd=dir_fd)
    report.files += 1
    report.bytes += st.st_size
    emit("file-purged", path=path, size=st.st_size, age_hours=round((time.time() - st.st_mtime) / 3600, 1))
    return True


def purge_files(layout: Layout, now: float, emit: Callable, dry_run: bool, report: PurgeReport) -> None:
    policy = layout.policy
    cutoff = now - policy.retention.days * 86400
    root = layout.root
    if not os.path.isdir(root) or os.path.islink(root):
        raise PurgeError(
            f"the exchange root {root} (policy accounts.root) is not a directory; is this server deployed?"
        )
    device = os.lstat(root).st_dev
    folders = (policy.accounts.download_folder, policy.accounts.upload_folder)
    for kind in ("partner", "link"):
        kind_dir = layout.kind_dir(kind)
        if not os.path.isdir(kind_dir) or os.path.islink(kind_dir):
            continue
        kind_fd = os.open(kind_dir, OPEN_DIR)
        try:
            for account in sorted(os.listdir(kind_fd)):
                for folder in folders:
                    try:
                        chroot_fd = os.open(account, OPEN_DIR, dir_fd=kind_fd)
                    except OSError:
                        report.skipped.append(f"{kind_dir}/{account}: not a directory")
                        break
                    try:
                        folder_fd = os.open(folder, OPEN_DIR, dir_fd=chroot_fd)
                    except OSError:
                        report.skipped.append(f"{kind_dir}/{account}/{folder}: missing or not a directory")
                        continue
                    finally:
                        os.close(chroot_fd)
                    try:
                        if os.fstat(folder_fd).st_dev != device:
                            report.skipped.append(f"{kind_dir}/{account}/{folder}: another filesystem")
                            continue

                        def emit_for(event, _account=account, _kind=kind, _folder=folder, path="", **fields):
                            emit(event, account=_account, kind=_kind, path=f"/{_folder}{path}", **fields)

                        if not _purge_tree(folder_fd, "", device, cutoff, emit_for, dry_run, report):
                            report.holding.add(account)  # (in a dry run: would still hold files)
                    finally:
                        os.close(folder_fd)
        finally:
            os.close(kind_fd)
    _purge_ended_links(layout, device, cutoff, emit, dry_run, report)


def _purge_ended_links(layout: Layout, device: int, cutoff: float, emit: Callable, dry_run: bool, report) -> None:
    """The held uploads of ended link accounts age out like any file; then their folder goes."""
    ended = layout.ended_links_dir()
    if not os.path.isdir(ended) or os.path.islink(ended):
        return

    def emit_held(event, path, **fields):  # path: /<account>/<file> below ended-links
        _, account, *rest = path.split("/")
        emit(event, account=account, kind="ended link", path="/" + "/".join(rest), **fields)

    ended_fd = os.open(ended, OPEN_DIR)
    try:
        _purge_tree(ended_fd, "", device, cutoff, emit_held, dry_run, report)
    finally:
        os.close(ended_fd)


def hold_uploads(layout: Layout, account: str) -> int:
    """Move the uploads (visible regular files) of a link account whose time ended to
    ended-links/<account>/ for staff: root-owned, group staff, read-only, times kept, so the
    upload notice still goes and retention still applies. The account must be locked and its
    sessions ended first. Returns the number of files."""
    source = Path(layout.chroot("link", account)) / layout.policy.accounts.upload_folder
    found = []
    for top, dirs, names in os.walk(source, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [
            Path(top) / n for n in names if not n.startswith(".") and stat.S_ISREG(os.lstat(Path(top) / n).st_mode)
        ]
    if not found:
        return 0
    staff = grp.getgrnam(layout.policy.accounts.staff_group).gr_gid

    def folder_for_staff(folder: Path, mode: int = 0o750) -> None:
        if not folder.exists():
            folder.mkdir()
            os.chown(folder, 0, staff)
            os.chmod(folder, mode)

    target = Path(layout.ended_links_dir()) / account
    folder_for_staff(target.parent, 0o2750)  # as the deploy makes it (Layout.tree_dirs)
    folder_for_staff(target)
    for path in found:
        folder = target
        for part in path.parent.relative_to(source).parts:
            folder = folder / part
            folder_for_staff(folder)
        destination, copy = folder / path.name, 1
        while destination.exists():  # never replace (a hold run again after an interruption)
            copy += 1
            destination = folder / f"{path.stem} ({copy}){path.suffix}"
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fchown(descriptor, 0, staff)
            os.fchmod(descriptor, 0o640)
        finally:
            os.close(descriptor)
        os.rename(path, destination)
    return len(found)


def expired_accounts(
    layout: Layout, observed: dict, partners_present: set[str] | None
) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(name, kind, reason) of link accounts past their validity and of partners locked for
    longer than retention; and the locked partners kept because the partner data did not
    lock them (`partners_present`: the names it lists as present, None when the host has no
    partner data). A lock by hand (`usermod --expiredate 1`, as for a compromised account)
    must never delete the partner's uploads."""
    today = observed["today"]
    policy = layout.policy
    expired, kept = [], []
    for name, seen in observed["accounts"].items():
        expire = (seen.get("shadow") or {}).get("expire")
        if expire is None:
            continue
        groups = seen["exchange_groups"]
        if policy.accounts.link_group in groups and expire <= today:
            expired.append((name, "link", "validity ended"))
        # The lock day counts whole: the last upload before a lock late that day gets its days.
        elif policy.accounts.partner_group in groups and expire + policy.retention.days + 1 <= today:
            if partners_present is None or name in partners_present:
                kept.append(name)
            else:
                expired.append((name, "partner", f"locked for {policy.retention.days} days"))
    return expired, kept


def partners_present(path: str = HOST_PARTNERS_PATH) -> set[str] | None:
    """Partners the installed partner data lists as present; None without partner data."""
    if not Path(path).exists():
        return None
    return {partner.name for partner in load_partners(path) if partner.present}


def _keep_uploads(layout: Layout, account: str, emit: Callable, **fields) -> None:
    """Before an ended link account goes: lock it, end its sessions, hold its uploads."""
    try:
        pwd.getpwnam(account)
    except KeyError:
        return  # only its record is left (the account went by hand): nothing to lock or hold
    with account_lock():
        run_steps(
            [
                Step(account, "lock the ended link account", f"usermod --lock {shlex.quote(account)}"),
                Step(account, "end its sessions", f"pkill -KILL -u {shlex.quote(account)} || true"),
            ]
        )
    held = hold_uploads(layout, account)
    if held:
        folder = f"{layout.ended_links_dir()}/{account}"
        emit("link-uploads-held", account=account, files=held, folder=folder, **fields)


def purge(
    policy: Policy, dry_run: bool = False, out: Callable[[str], None] = print, now: float | None = None
) -> PurgeReport:
    layout = Layout(policy)
    report = PurgeReport()
    now = time.time() if now is None else now

    def emit(event: str, **fields) -> None:
        if dry_run:
            out(json.dumps({"event": event, "dry_run": True, **fields}, sort_keys=True))
        else:
            out(auditlog.record(event, **fields))

    with purge_lock():
        purge_files(layout, now, emit, dry_run, report)
        observed = observe.observe(layout.observe_params([]))
        store = links.LinkStore()
        for problem in store.unreadable():  # such a link still ends: by its account's expiry below
            emit("link-record-unreadable", problem=problem)
        moment = datetime.datetime.fromtimestamp(now, datetime.UTC)

        def remove(name: str, kind: str, steps: Callable[[], None], event: str, **fields) -> None:
            """One account's removal. A failure is named and the others still go; the account
            stays (locked), so the next run tries again."""
            try:
                steps()
            except (StepFailed, OSError) as failure:
                report.failed.append(f"could not remove account {name}: {failure}")
                emit("account-removal-failed", account=name, kind=kind, problem=str(failure))
                return
            report.accounts += 1
            out(auditlog.audit_line(event, account=name, kind=kind, by="purge", **fields))

        removed = set()
        for record in links.expired_links(store, observed, moment):
            removed.add(record.account)
            fields = {"recipient": record.recipient, "expired": record.expires.isoformat()}
            if dry_run:
                report.accounts += 1
                emit("link-expiry-planned", account=record.account, **fields)
                continue

            def end_link(record=record, fields=fields) -> None:
                _keep_uploads(layout, record.account, emit, recipient=record.recipient)
                links.remove_link(layout, store, record.account, "link-expired", by="purge", **fields)

            remove(record.account, "link", end_link, "link-expired", **fields)
        try:
            present = partners_present()
        except PartnerDataError as problem:  # no partner is removed on data that cannot be read
            emit("partner-data-unreadable", problem=str(problem))
            report.failed.append(f"no partner account was removed: the partner data cannot be read: {problem}")
            present = None
        expired, report.kept = expired_accounts(layout, observed, present)
        for name, kind, reason in expired:
            if name in removed:
                continue
            if kind == "partner" and name in report.holding:
                # Its lock day may be older than the lock (a lock by hand, then dropped from the
                # data): the account goes once retention has emptied its folders, never before.
                continue
            if dry_run:
                report.accounts += 1
                emit("account-removal-planned", account=name, kind=kind, reason=reason)
                continue

            def remove_account(name=name, kind=kind, reason=reason) -> None:
                if kind == "link":  # its record unreadable or gone: record and token go with it
                    _keep_uploads(layout, name, emit, recipient="unknown (no readable link record)")
                    links.remove_link(layout, store, name, "account-removed", reason=reason, by="purge")
                else:
                    with account_lock():
                        run_steps(removal_steps(layout, name, kind, reason=reason, by="purge"))

            remove(name, kind, remove_account, "account-removed", reason=reason)
    return report
