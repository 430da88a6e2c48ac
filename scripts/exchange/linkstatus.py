"""What `exchange link list` shows: each link account with its files, last login, and whether
each of its packages was downloaded (from the access trail: exchange.trail.delivery)."""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

from exchange import paths, safefs
from exchange.layout import Layout
from exchange.links import LinkStore
from exchange.messaging.messages import mask_email
from exchange.policy import Policy
from exchange.trail.delivery import Delivery, deliveries
from exchange.trail.store import Trail

# rsyslog's line (roles/logging.py): "<rfc3339 time> account=<name> uid=<sender> internal-sftp[pid]: session
# opened for ..." (no uid= in lines written before rsyslog logged it).
_SESSION = re.compile(r"^(\S+) account=(\S+) (?:uid=\S* )?internal-sftp\[\d+\]: session opened for local user ")


def last_logins(logs: list[Path]) -> dict[str, str]:
    """Account -> time (UTC, ISO 8601) of its latest SFTP session (web logins are SFTP sessions
    too). The log's times carry the local offset, which changes with daylight saving time: they
    are compared as times, not as text."""
    latest: dict[str, datetime.datetime] = {}
    for log in logs:
        try:
            with open(log, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    match = _SESSION.match(line)
                    if not match:
                        continue
                    try:
                        when = datetime.datetime.fromisoformat(match[1]).astimezone(datetime.UTC)
                    except ValueError:
                        continue
                    if match[2] not in latest or when > latest[match[2]]:
                        latest[match[2]] = when
        except FileNotFoundError:
            continue
    return {account: when.isoformat(timespec="seconds") for account, when in latest.items()}


def count_files(folder: str, max_depth: int) -> int:
    """Files below `folder` (within the depth the tools walk; what is deeper the purge names)."""
    try:
        top = safefs.open_dir(folder)
    except OSError:
        return 0
    try:
        return sum(1 for step in safefs.walk(top, max_depth) if step.kind == "file")
    finally:
        os.close(top)


def package_rows(found: list[Delivery]) -> list[dict]:
    """Each package: downloaded completely or not, when (the first complete download, else the
    latest try) and from where."""
    rows = []
    for item in found:
        download = item.completed or item.latest
        size = item.package.size
        rows.append(
            {
                "package": item.package.name,
                "made": item.package.made,
                "bytes": size,
                "downloaded": item.delivered,
                # How far the furthest try came, for one not (yet) complete.
                "percent": 100 if item.delivered else min(99, item.most_bytes * 100 // size) if size else 0,
                "when": download.time.isoformat(timespec="seconds") if download else None,
                "from": download.where if download else None,
                "tries": len(item.downloads),
            }
        )
    return rows


def link_rows(policy: Policy, store: LinkStore | None = None, trail: Trail | None = None) -> list[dict]:
    layout = Layout(policy)
    store = store or LinkStore()
    trail = trail or Trail()
    # The link validity is shorter than a log rotation period: the current and previous file suffice.
    logins = last_logins([Path(paths.SFTP_LOG + ".1"), Path(paths.SFTP_LOG)])
    rows, depth = [], policy.accounts.max_folder_depth
    for record in store.all():
        chroot = layout.chroot("link", record.account)
        rows.append(
            {
                "account": record.account,
                "email": mask_email(record.email),
                "created": record.created.isoformat(),
                "expires": record.expires.isoformat(),
                "download_files": count_files(f"{chroot}/{policy.accounts.download_folder}", depth),
                "upload_files": count_files(f"{chroot}/{policy.accounts.upload_folder}", depth),
                "last_login": logins.get(record.account),
                "issued_by": record.issued_by,
                "note": record.note,
                "packages": package_rows(deliveries(trail, record.account)),
                "notify_downloaded": record.notify_downloaded,
            }
        )
    return rows
