"""Upload notices: staff hear of what recipients upload, one e-mail per account per run.

Run from the purge's cron job. A file counts as uploaded once it has not changed for
SETTLE_SECONDS (an upload in progress keeps growing) and is not a hidden temporary name.
What was announced is remembered per account (upload-notices/<account>.json), so a file
is announced once, and an account's notice is only marked sent when the mail went out.
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

from exchange import auditlog
from exchange.accounts import Layout
from exchange.links import STATE_DIR, LinkStore
from exchange.messages import Messages
from exchange.partners import HOST_PARTNERS_PATH, PartnerDataError, load_partners
from exchange.policy import Policy
from exchange.site import Site
from exchange.transports import DeliveryError, send_email

SETTLE_SECONDS = 120


@dataclass(frozen=True)
class Upload:
    path: str  # relative to the upload folder
    size: int
    modified: datetime.datetime
    mtime_ns: int


def settled_uploads(folder: Path, now: float) -> list[Upload]:
    found = []
    for top, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            try:
                st = os.lstat(os.path.join(top, name))
            except FileNotFoundError:
                continue  # moved or removed meanwhile (by staff, or the account itself)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < SETTLE_SECONDS:
                continue
            found.append(
                Upload(
                    path=os.path.relpath(os.path.join(top, name), folder),
                    size=st.st_size,
                    modified=datetime.datetime.fromtimestamp(st.st_mtime, datetime.UTC),
                    mtime_ns=st.st_mtime_ns,
                )
            )
    return found


def _describe_accounts(policy: Policy, store: LinkStore) -> dict[str, str]:
    who = {
        record.account: f"link for {record.recipient}" + (f", {record.note}" if record.note else "")
        for record in store.all()
    }
    try:
        for partner in load_partners(HOST_PARTNERS_PATH) if Path(HOST_PARTNERS_PATH).exists() else ():
            who[partner.name] = f"partner {partner.organisation}"
    except PartnerDataError:
        pass  # the notice still names the account
    return who


def notify_uploads(
    policy: Policy, site: Site, messages: Messages, out: Callable[[str], None] = print, state_dir: Path = STATE_DIR
) -> tuple[int, list[str]]:
    """(notices sent, failures). A failed account is retried on the next run."""
    layout = Layout(policy)
    seen_dir = state_dir / "upload-notices"
    seen_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    who = _describe_accounts(policy, LinkStore(state_dir))
    now = time.time()
    sent, failures = 0, []
    folders = _upload_folders(layout)
    for kind, account, folder, key in folders:
        if not folder.is_dir() or folder.is_symlink():
            continue
        seen_file = seen_dir / f"{key}.json"
        seen = json.loads(seen_file.read_text()) if seen_file.exists() else {}
        uploads = settled_uploads(folder, now)
        new = [u for u in uploads if seen.get(u.path) != [u.size, u.mtime_ns]]
        current = {u.path: [u.size, u.mtime_ns] for u in uploads}
        if new:
            mail = messages.email(
                "upload-notice-email",
                site.staff_language,
                to=site.staff_mailbox,
                account=account,
                who=who.get(account, kind),
                folder=str(folder),
                files=new,
                retention_days=policy.retention.days,
            )
            try:
                send_email(site, mail)
            except DeliveryError as error:
                failures.append(f"{account}: {error}")
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
    ended link account's held uploads (exchange.purge.hold_uploads). Held files have a state of
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
