"""The delivery follow-ups (exchange.trail.delivery says which are due): the staff notices that a
link's packages were all downloaded or that a link ended with packages never downloaded, and
the one reminder to a recipient whose packages wait.

Run hourly from the purge's cron job, after `exchange trail ingest`. Each follow-up is sent
once: what went out is remembered per account (delivery-notices/<account>.json in STATE_DIR,
root-only, written through exchange.safefs), and marked only once the mail went out, so a
failed one is tried again on the next run. Every one sent is an audit record: `reminder-sent`
(it becomes a record of the access trail) or `delivery-notice-sent`.

The reminder carries neither the link nor the password: the link's token exists only in the
first e-mail and the password only in the SMS (exchange.links), so a reminder that reaches the
wrong person opens nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exchange import auditlog, locks, paths, safefs, untrusted
from exchange.links import ACCOUNT_NAME, LinkStore
from exchange.messaging.messages import Messages, mask_email
from exchange.messaging.transports import DeliveryError, send_email
from exchange.policy import Policy
from exchange.site import Site
from exchange.trail import delivery
from exchange.trail.store import Trail

MAX_LISTED = 20  # packages named in one mail; more are counted
BY = "notify-delivery"
# In TOOL_RUN_DIR: one run at a time (cron's and one by hand), so none is sent twice.
LOCK = "delivery-notices.lock"


class Told:
    """Which follow-ups went out, per account: {"sent": {key: time}}."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = state_dir / paths.DELIVERY_NOTICES

    def sent(self, account: str) -> dict[str, str]:
        """What went out; a state that cannot be read counts as nothing (told once more rather than never)."""
        try:
            with safefs.opened_dir(str(self.folder)) as folder:
                descriptor = os.open(f"{account}.json", safefs.OPEN_READ, dir_fd=folder)
                with os.fdopen(descriptor, encoding="utf-8") as handle:
                    sent = json.load(handle).get("sent")
        except (OSError, ValueError, AttributeError):
            return {}
        return sent if isinstance(sent, dict) else {}

    def mark(self, account: str, key: str, when: datetime.datetime) -> None:
        if not ACCOUNT_NAME.match(account):
            raise ValueError(f"not a link account: {account!r}")  # never a path of its own
        sent = {**self.sent(account), key: when.isoformat(timespec="seconds")}
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with safefs.opened_dir(str(self.folder)) as folder:
            os.fchmod(folder, 0o700)  # root-only, whatever made it
            staged = f".{account}.json.tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged, dir_fd=folder)  # left by a crash
            descriptor = safefs.create_new(folder, staged, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(json.dumps({"sent": sent}, sort_keys=True))
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(staged, f"{account}.json", src_dir_fd=folder, dst_dir_fd=folder)

    def forget_all_but(self, keep: set[str]) -> None:
        """Drop the state of accounts that are gone and past telling."""
        try:
            with safefs.opened_dir(str(self.folder)) as folder:
                for name in os.listdir(folder):
                    if name.endswith(".json") and name.removesuffix(".json") not in keep:
                        os.unlink(name, dir_fd=folder)
        except FileNotFoundError:
            return


@dataclass(frozen=True)
class Shown:
    """A package as a mail names it (the name cut to what a mail shows of others' text)."""

    name: str
    size: int
    made: datetime.datetime
    arrived: datetime.datetime | None  # the first complete download
    arrived_from: str | None
    tried: datetime.datetime | None  # the latest download, complete or not
    percent: int  # how far the furthest download came


def shown(found: delivery.Delivery) -> Shown:
    package, completed, latest = found.package, found.completed, found.latest
    return Shown(
        name=untrusted.cut(package.name),
        size=package.size,
        made=datetime.datetime.fromisoformat(package.made),
        arrived=completed.time if completed else None,
        arrived_from=untrusted.cut(completed.where) if completed else None,
        tried=latest.time if latest else None,
        percent=min(99, found.most_bytes * 100 // package.size) if package.size and not completed else 100,
    )


def _listed(found: list[delivery.Delivery]) -> dict:
    return {"packages": [shown(item) for item in found[:MAX_LISTED]], "more": max(0, len(found) - MAX_LISTED)}


def _mail(due: delivery.Due, site: Site, messages: Messages):
    """The mail and the audit record (event, fields) of one follow-up."""
    pending = [item for item in due.deliveries if not item.delivered]
    names = [untrusted.cut(item.package.name) for item in (due.deliveries if due.kind == "downloaded" else pending)]
    if due.kind == "reminder":
        link = due.link
        mail = messages.email(
            "delivery-reminder-email",
            link.lang,
            to=link.email,
            created=link.created,
            expires=link.expires,
            **_listed(pending),
        )
        fields = {"recipient": mask_email(link.email), "expires": link.expires.isoformat(), "packages": names}
        return mail, "reminder-sent", fields
    if due.kind == "downloaded":
        link = due.link
        mail = messages.email(
            "delivery-downloaded-email",
            site.staff_language,
            to=site.staff_mailbox,
            account=due.account,
            recipient=link.recipient,
            note=link.note,
            expires=link.expires,
            **_listed(due.deliveries),
        )
    else:
        mail = messages.email(
            "delivery-ended-email",
            site.staff_language,
            to=site.staff_mailbox,
            account=due.account,
            ended=due.ended,
            recipient=untrusted.cut(due.ended.recipient or "unknown"),
            **_listed(pending),
        )
    return mail, "delivery-notice-sent", {"kind": due.kind, "packages": names}


def notify_delivery(
    policy: Policy,
    site: Site,
    messages: Messages,
    out: Callable[[str], None] = print,
    state_dir: Path = Path(paths.STATE_DIR),
    trail: Trail | None = None,
    now: datetime.datetime | None = None,
    run_dir: str = paths.TOOL_RUN_DIR,
) -> tuple[int, list[str]]:
    """(follow-ups sent, failures). A failed one is tried again on the next run."""
    with locks.held(LOCK, wait=True, folder=run_dir):
        return _notify(
            policy, site, messages, out, state_dir, trail or Trail(), now or datetime.datetime.now(datetime.UTC)
        )


def _notify(
    policy: Policy,
    site: Site,
    messages: Messages,
    out: Callable[[str], None],
    state_dir: Path,
    trail: Trail,
    now: datetime.datetime,
) -> tuple[int, list[str]]:
    store, told = LinkStore(state_dir), Told(state_dir)
    links = store.all()
    sent, failures = 0, []
    for item in delivery.due(policy, trail, links, now):
        if item.key in told.sent(item.account):
            continue
        mail, event, fields = _mail(item, site, messages)
        try:
            send_email(site, mail)
        except DeliveryError as error:
            what = "reminder" if item.kind == "reminder" else f"{item.kind} notice"
            failures.append(f"{what} not sent: {item.account}: {error}")
            continue
        told.mark(item.account, item.key, now)
        sent += 1
        out(auditlog.record(event, account=item.account, by=BY, **fields))
    # Kept: live links (an unreadable record too: it may come back), and those still in the window.
    keep = {link.account for link in links} | {ended.account for ended in delivery.ended_links(trail, now)}
    keep |= {path.stem for path in store.records.glob("*.json")} if store.records.is_dir() else set()
    told.forget_all_but(keep)
    return sent, failures
