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
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from exchange import auditlog, held, links, locks, observe, paths, safefs, untrusted
from exchange.accounts import Layout, StepFailed, account_lock, removal_steps, run_steps
from exchange.errors import ExchangeError
from exchange.partners import PartnerDataError, load_partners
from exchange.policy import Policy

OPEN_DIR = safefs.OPEN_DIR


class PurgeBusy(Exception):
    pass


class PurgeError(ExchangeError):
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
def purge_lock(folder: str = paths.TOOL_RUN_DIR) -> Iterator[None]:
    try:
        with locks.held(paths.PURGE_LOCK, wait=False, folder=folder):
            yield
    except locks.Busy as lock:
        raise PurgeBusy(f"another purge is running (lock {lock})") from None
    except locks.LockFolderError as error:
        raise PurgeError(str(error)) from None


FUTURE_SLACK = 300  # seconds a file's time may be ahead of the server's clock before it is reset


def _purge_tree(
    top_fd: int, where: str, cutoff: float, emit: Callable, dry_run: bool, report: PurgeReport, max_depth: int
) -> bool:
    """Delete what is too old below the folder `top_fd` (at `where`); True if it ended up empty
    (or would, in a dry run). `emit(event, path=...)` gets paths relative to it, from "/"."""
    emptied = [True]  # per open folder: everything it held is gone
    for step in safefs.walk(top_fd, max_depth):
        entry, path = step.entry, "/" + step.entry.path
        if step.kind == "enter":
            emptied.append(True)
            continue
        try:
            if step.kind == "leave":
                gone = emptied.pop() and _purge_folder(entry, path, cutoff, emit, dry_run, report)
            elif step.kind == "file":
                gone = _purge_file(entry, path, cutoff, emit, dry_run, report)
            else:
                gone = False
                _not_reached(step, where, path, max_depth, emit, report)
        except (FileNotFoundError, NotADirectoryError):
            gone = True  # removed or replaced by its account meanwhile (the account's SFTP session is live)
        if not gone:
            emptied[-1] = False
    return emptied[0]


def _not_reached(step: safefs.Step, where: str, path: str, max_depth: int, emit: Callable, report) -> None:
    """A folder the walk does not enter: named, so an admin can look; the rest goes on."""
    shown = untrusted.printable(where + path)
    if step.kind == "other-filesystem":
        report.skipped.append(f"{shown}: another filesystem")
    elif step.kind == "too-deep":
        emit("folder-too-deep", path=path, max_depth=max_depth)
        report.failed.append(
            f"{shown}: more than {max_depth} folders deep (policy accounts.max_folder_depth); retention does not "
            "reach below it: remove it by hand"
        )
    else:
        emit("folder-unreadable", path=path, problem=step.error.strerror)
        report.failed.append(f"{shown}: not readable ({step.error.strerror}); retention does not reach it")


def _purge_folder(entry: safefs.Entry, path: str, cutoff: float, emit: Callable, dry_run: bool, report) -> bool:
    """An emptied folder goes once it was itself last changed before the cutoff."""
    if entry.stat.st_mtime >= cutoff:
        return False
    if not dry_run:
        try:
            os.rmdir(entry.name, dir_fd=entry.dir_fd)
        except OSError as error:
            if error.errno != errno.ENOTEMPTY:
                raise
            return False  # something new arrived in an old folder meanwhile: it stays
    report.directories += 1
    emit("directory-purged", path=path, age_hours=round((time.time() - entry.stat.st_mtime) / 3600, 1))
    return True


def _purge_file(entry: safefs.Entry, path: str, cutoff: float, emit: Callable, dry_run: bool, report) -> bool:
    """Purge one file (or symlink, never its target) if too old; True if it is gone (or would be)."""
    st = entry.stat
    if st.st_mtime > time.time() + FUTURE_SLACK:
        # A time in the future (copied with `cp -p` or unzipped from a machine whose clock is
        # ahead) would keep the file past retention: its days count from now on.
        if not dry_run:
            os.utime(entry.name, dir_fd=entry.dir_fd, follow_symlinks=False)
        emit("file-time-reset", path=path, mtime=round(st.st_mtime))
        return False
    if st.st_mtime >= cutoff:
        return False
    if not dry_run:
        os.unlink(entry.name, dir_fd=entry.dir_fd)
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
    max_depth = policy.accounts.max_folder_depth
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

                        where = f"{kind_dir}/{account}/{folder}"
                        if not _purge_tree(folder_fd, where, cutoff, emit_for, dry_run, report, max_depth):
                            report.holding.add(account)  # (in a dry run: would still hold files)
                    finally:
                        os.close(folder_fd)
        finally:
            os.close(kind_fd)
    _purge_ended_links(layout, cutoff, emit, dry_run, report)


def _purge_ended_links(layout: Layout, cutoff: float, emit: Callable, dry_run: bool, report) -> None:
    """The held uploads of ended link accounts age out like any file; then their folder goes."""
    ended = layout.ended_links_dir()
    if not os.path.isdir(ended) or os.path.islink(ended):
        return

    def emit_held(event, path, **fields):  # path: /<account>/<file> below ended-links
        _, account, *rest = path.split("/")
        emit(event, account=account, kind="ended link", path="/" + "/".join(rest), **fields)

    ended_fd = os.open(ended, OPEN_DIR)
    try:
        # One level more: each account's own folder.
        _purge_tree(ended_fd, ended, cutoff, emit_held, dry_run, report, layout.policy.accounts.max_folder_depth + 1)
    finally:
        os.close(ended_fd)


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


def partners_present(path: str = paths.PARTNERS) -> set[str] | None:
    """Partners the installed partner data lists as present; None without partner data."""
    if not Path(path).exists():
        return None
    return {partner.name for partner in load_partners(path) if partner.present}


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
                held.keep_uploads(layout, record.account, emit, recipient=record.recipient)
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
                    held.keep_uploads(layout, name, emit, recipient="unknown (no readable link record)")
                    links.remove_link(layout, store, name, "account-removed", reason=reason, by="purge")
                else:
                    with account_lock():
                        run_steps(removal_steps(layout, name, kind, reason=reason, by="purge"))

            remove(name, kind, remove_account, "account-removed", reason=reason)
    return report
