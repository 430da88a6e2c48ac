"""Upload notices: staff hear of what recipients upload, one e-mail per account per run.

Run from the purge's cron job. A file counts as uploaded once it has not changed for
SETTLE_SECONDS (an upload in progress keeps growing); hidden files count like any other, so
nothing the retention deletes goes unannounced.
What was announced is remembered per account (upload-notices/<account>.json), so a file
is announced once, and an account's notice is only marked sent when the mail went out.

Before it looks, it makes each upload folder's contents readable for the staff group
(open_to_staff): internal-sftp's umask only removes bits, so a client that asks for a
private mode (OpenSSH `put` of a 0600 file, `mkdir` with mode 0) would otherwise hide its
upload from staff, and Debian 12's OpenSSH (9.2) has no `-m` to force a file mode.

With the policy's notices.upload_contact_sheets, a notice also names a contact sheet of each
DICOM zip or folder it announces, kept on the server for staff (exchange.messaging.upload_sheets).
"""

from __future__ import annotations

import datetime
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exchange import auditlog, paths, safefs, untrusted
from exchange.layout import Layout
from exchange.links import LinkStore
from exchange.messaging.messages import Messages
from exchange.messaging.transports import DeliveryError, send_email
from exchange.partners import PartnerDataError, load_partners
from exchange.policy import Policy
from exchange.site import Site

SETTLE_SECONDS = 120


@dataclass(frozen=True)
class Upload:
    path: str  # relative to the upload folder
    size: int
    modified: datetime.datetime
    mtime_ns: int


def settled_uploads(
    folder: Path, now: float, max_depth: int, pending: set[str] | None = None
) -> tuple[list[Upload], list[str]]:
    """The regular files below `folder` that have settled (hidden ones too: nothing uploaded
    goes unannounced), and the folders the walk could not look into, named. `pending` gets the
    top-level name of every file still changing (an upload in progress)."""
    found, problems = [], []
    try:
        top = safefs.open_dir(str(folder))
    except FileNotFoundError:
        return found, problems
    try:
        for step in safefs.walk(top, max_depth):
            st = step.entry.stat
            if step.kind == "file" and stat.S_ISREG(st.st_mode) and now - st.st_mtime >= SETTLE_SECONDS:
                found.append(
                    Upload(
                        path=step.entry.path,
                        size=st.st_size,
                        modified=datetime.datetime.fromtimestamp(st.st_mtime, datetime.UTC),
                        mtime_ns=st.st_mtime_ns,
                    )
                )
            elif step.kind == "file" and stat.S_ISREG(st.st_mode) and pending is not None:
                pending.add(step.entry.path.partition("/")[0])
            elif step.kind in ("too-deep", "unreadable"):
                reason = f"more than {max_depth} folders deep" if step.kind == "too-deep" else "not readable"
                problems.append(f"{folder}/{untrusted.printable(step.entry.path)}: {reason}, not looked into")
    finally:
        os.close(top)
    return found, problems


def _add_mode_bits(descriptor: int, st: os.stat_result, bits: int) -> int:
    if stat.S_IMODE(st.st_mode) & bits == bits:
        return 0
    os.fchmod(descriptor, stat.S_IMODE(st.st_mode) | bits)
    return 1


def open_to_staff(folder: Path, max_depth: int) -> int:
    """Give the group (staff, from the setgid upload folder) read access to everything below
    `folder`: g+rx on folders, g+r on regular files; nothing else changes. Runs as root in a
    tree its account controls, so every entry is reached through its parent's descriptor and
    opened without following a symlink (a symlink is never followed or changed), a file with a
    second hard link or on another filesystem is left alone, and nothing outside `folder` is
    touched. The folder itself is the deploy's. Returns how many entries it changed."""
    try:
        top = safefs.open_dir(str(folder))
    except FileNotFoundError:
        return 0
    changed = 0
    try:
        device = os.fstat(top).st_dev
        for step in safefs.walk(top, max_depth):
            st = step.entry.stat
            if step.kind == "enter":
                changed += _add_mode_bits(step.fd, st, stat.S_IRGRP | stat.S_IXGRP)
            elif step.kind == "file" and stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IRGRP:
                descriptor = safefs.open_entry(step.entry.dir_fd, step.entry.name, st)
                if descriptor is None:
                    continue  # gone or replaced meanwhile
                try:
                    opened = os.fstat(descriptor)
                    if opened.st_nlink == 1 and opened.st_dev == device:
                        changed += _add_mode_bits(descriptor, opened, stat.S_IRGRP)
                finally:
                    os.close(descriptor)
    finally:
        os.close(top)
    return changed


def _describe_accounts(policy: Policy, store: LinkStore) -> dict[str, str]:
    who = {
        record.account: f"link for {record.recipient}" + (f", {record.note}" if record.note else "")
        for record in store.all()
    }
    try:
        for partner in load_partners(paths.PARTNERS) if Path(paths.PARTNERS).exists() else ():
            who[partner.name] = f"partner {partner.organisation}"
    except PartnerDataError:
        pass  # the notice still names the account
    return who


def notify_uploads(
    policy: Policy,
    site: Site,
    messages: Messages,
    out: Callable[[str], None] = print,
    state_dir: Path = Path(paths.STATE_DIR),
) -> tuple[int, list[str]]:
    """(notices sent, failures). A failed account is retried on the next run."""
    layout = Layout(policy)
    seen_dir = state_dir / paths.UPLOAD_NOTICES
    seen_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    who = _describe_accounts(policy, LinkStore(state_dir))
    now = time.time()
    sent, failures = 0, []
    folders = _upload_folders(layout)
    for kind, account, folder, key in folders:
        if not folder.is_dir() or folder.is_symlink():
            continue
        depth = policy.accounts.max_folder_depth
        if kind != "ended link":  # held uploads are root's, 0640 already (exchange.held)
            try:
                open_to_staff(folder, depth)
            except OSError as error:
                failures.append(f"{account}: uploads not made readable for staff: {untrusted.printable(error)}")
        seen_file = seen_dir / f"{key}.json"
        seen = json.loads(seen_file.read_text()) if seen_file.exists() else {}
        pending: set[str] = set()
        try:
            uploads, problems = settled_uploads(folder, now, depth, pending)
        except OSError as error:
            failures.append(f"{account}: uploads not read: {untrusted.printable(error)}")
            continue
        failures += problems
        new = [u for u in uploads if seen.get(u.path) != [u.size, u.mtime_ns]]
        current = {u.path: [u.size, u.mtime_ns] for u in uploads}
        if new:
            sheets = []
            if policy.notices.upload_contact_sheets:
                from exchange.messaging.upload_sheets import contact_sheets  # numpy, Pillow, pydicom: only then

                sheets = contact_sheets(layout, account, folder, uploads, new, pending, out, failures)
            mail = messages.email(
                "upload-notice-email",
                site.staff_language,
                to=site.staff_mailbox,
                account=account,
                who=who.get(account, kind),
                folder=str(folder),
                files=new,
                retention_days=policy.retention.days,
                sheets=sheets,
            )
            try:
                send_email(site, mail)
            except DeliveryError as error:
                failures.append(f"notice not sent: {account}: {error}")
                continue
            sent += 1
            out(auditlog.record("upload-notice-sent", account=account, kind=kind, files=len(new), by="purge"))
        if current != seen:
            staged = seen_file.with_name(f".{seen_file.name}.tmp")
            staged.write_text(json.dumps(current, sort_keys=True))
            staged.rename(seen_file)
    known = {key for *_, key in folders}
    for stale in seen_dir.glob("*.json"):
        if stale.stem not in known:
            stale.unlink()  # the account and its held uploads are gone
    return sent, failures


def _upload_folders(layout: Layout) -> list[tuple[str, str, Path, str]]:
    """(kind, account, folder, key of its notice state) of every upload folder, and of every
    ended link account's held uploads (exchange.held). Held files have a state of
    their own, so staff are told where they went, even of files announced before."""
    found = []
    for kind in ("partner", "link"):
        kind_dir = Path(layout.kind_dir(kind))
        for chroot in sorted(kind_dir.iterdir()) if kind_dir.is_dir() else []:
            if chroot.is_dir() and not chroot.is_symlink():
                found.append((kind, chroot.name, chroot / layout.policy.accounts.upload_folder, chroot.name))
    ended = Path(layout.ended_links_dir())
    for held in sorted(ended.iterdir()) if ended.is_dir() else []:
        if held.is_dir() and not held.is_symlink():
            found.append(("ended link", held.name, held, f"ended-{held.name}"))
    return found
