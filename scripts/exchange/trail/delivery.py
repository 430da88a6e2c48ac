"""Did a link's packages arrive? Per link account, each package (its package-made record, the
manifest) with its downloads from the trail: downloaded completely or not, when, from where;
and which of the follow-ups are due now (exchange.messaging.delivery_notices sends them):

- "downloaded": staff asked (`link issue --notify-downloaded`) to hear once all its packages
  were downloaded completely;
- "reminder": one e-mail to the recipient `links.reminder_days_before_end` days before the link
  ends (half way through a shorter link) while a package is still not downloaded completely;
- "ended": the link expired or was revoked with a package never downloaded completely. Its link
  record is gone by then: what the notice names comes from the trail (the link-issued record).

The trail says what happened; whether a follow-up already went out is the sender's state.
"""

from __future__ import annotations

import datetime
import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from exchange.links import ACCOUNT_NAME, LinkRecord
from exchange.policy import Policy
from exchange.trail.record import AccessRecord
from exchange.trail.store import PackageManifest, Trail

ENDED = ("link-expired", "link-revoked")
# A link that ended longer ago than this is past telling about: the notice is for staff who can
# still do something (issue a new link) while the recipient waits, and the told state of ended
# links is kept this long only.
ENDED_WINDOW = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Download:
    time: datetime.datetime
    complete: bool
    bytes: int | None
    offset: int | None  # where a web download's range began (a resumed one's pieces); None from SFTP
    size: int | None  # the file's size when the web page gave the range
    address: str | None  # the access point's IP address
    via: str | None  # "sftp" or "web"

    @property
    def where(self) -> str:
        return " ".join(part for part in (self.address, f"({self.via})" if self.via else None) if part) or "unknown"


@dataclass(frozen=True)
class Delivery:
    """One package and its downloads, oldest first."""

    package: PackageManifest
    downloads: tuple[Download, ...]

    @property
    def completed(self) -> Download | None:
        """The download that completed the package, when it arrived: the first whole one, or the
        piece by which the pieces so far cover all of it (a web download resumed by ranges is a
        record a range, none of them whole)."""
        covered, waiting = 0, []  # the bytes from 0 on that the pieces so far hold; pieces beyond them
        for download in self.downloads:  # a heap, not all joined again a piece: thousands of ranges stay cheap
            if download.complete:
                return download
            if piece := self._piece(download):
                heapq.heappush(waiting, piece)
            while waiting and waiting[0][0] <= covered:
                covered = max(covered, heapq.heappop(waiting)[1])
            if self.package.size and covered >= self.package.size:
                return download
        return None

    def _piece(self, download: Download) -> tuple[int, int] | None:
        """The byte range [start, end) a web download gave of this package: of a file of its size
        (a piece of the file another package replaced under the name is none of this one's)."""
        size, offset, got = self.package.size, download.offset, download.bytes
        if offset is None or not got or download.size != size or offset + got > size:
            return None
        return offset, offset + got

    @property
    def delivered(self) -> bool:
        return self.completed is not None

    @property
    def latest(self) -> Download | None:
        return self.downloads[-1] if self.downloads else None

    @property
    def most_bytes(self) -> int:
        """How far the downloads came: the most any one got, or the resumed pieces together."""
        one = max((download.bytes or 0 for download in self.downloads), default=0)
        pieces = [piece for download in self.downloads if (piece := self._piece(download))]
        return max(one, sum(end - start for start, end in _joined(pieces)))


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _joined(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Byte ranges [start, end) joined where they meet or overlap, in order."""
    joined: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if joined and start <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(joined[-1][1], end))
        else:
            joined.append((start, end))
    return joined


def _file_name(record: AccessRecord) -> str | None:
    """The package a download record names: the zip's name in the download folder (the web page
    names the file, SFTP its path in the chroot). Only a download the ingest could judge complete
    or not is one of a package (SFTP: a file in the download folder with a manifest)."""
    named = record.details.get("package") or record.details.get("file")
    return PurePosixPath(str(named)).name if named and "complete" in record.details else None


def _download(record: AccessRecord) -> Download:
    details, web = record.details, record.access_point.get("via") == "web"
    return Download(
        time=record.moment,
        complete=details.get("complete") is True,
        bytes=_count(details.get("bytes")),
        offset=_count(details.get("offset")) if web else None,
        size=_count(details.get("size")) if web else None,
        address=record.access_point.get("address"),
        via=record.access_point.get("via"),
    )


def match_downloads(packages: list[PackageManifest], downloads: Iterable[AccessRecord]) -> list[Delivery]:
    """Each package with the downloads of its file made after it: a package made again under the
    same name (staff replaced it) gets the downloads from then on."""
    found: dict[int, list[Download]] = {index: [] for index in range(len(packages))}
    made = [datetime.datetime.fromisoformat(package.made) for package in packages]
    for record in sorted(downloads, key=lambda record: record.moment):
        name = _file_name(record)
        candidates = [
            index for index, package in enumerate(packages) if package.name == name and made[index] <= record.moment
        ]
        if candidates:
            found[max(candidates, key=lambda index: made[index])].append(_download(record))
    return [Delivery(package, tuple(found[index])) for index, package in enumerate(packages)]


def deliveries(trail: Trail, account: str) -> list[Delivery]:
    """The account's packages, oldest first, each with its downloads."""
    packages = trail.packages(account)
    if not packages:
        return []
    return match_downloads(packages, trail.query(account=account, events={"download"}))


def bring_up_to_date(policy: Policy, trail: Trail) -> None:
    """The trail first takes in the logs since its last run, so "not downloaded" is never an
    hour old (exchange.trail.ingest; imported here only: it reads the logs)."""
    from exchange.trail.ingest import ingest

    ingest(policy, trail)


def all_delivered(found: list[Delivery]) -> bool:
    """At least one package, and every one downloaded completely."""
    return bool(found) and all(delivery.delivered for delivery in found)


def reminder_time(created: datetime.datetime, expires: datetime.datetime, days_before: int) -> datetime.datetime | None:
    """When a link's reminder is due: `days_before` days before its end, or half way through a
    link not longer than that (a reminder at its very start would remind of nothing); None: no
    reminders (policy 0)."""
    if days_before <= 0:
        return None
    before = datetime.timedelta(days=days_before)
    length = expires - created
    return expires - before if length > before else created + length / 2


@dataclass(frozen=True)
class Ended:
    """A link that ended, as the trail tells it (its link record is gone)."""

    account: str
    event: str  # link-expired or link-revoked
    time: datetime.datetime
    by: str | None  # who revoked it
    recipient: str | None  # masked, from its link-issued record
    issued_by: str | None
    issued: datetime.datetime | None


@dataclass(frozen=True)
class Due:
    """A follow-up that is due now, unless it went out already (`key` says which one it is)."""

    kind: str  # "downloaded", "reminder" or "ended"
    account: str
    key: str  # the same follow-up has the same key: it is sent once
    deliveries: list[Delivery]
    link: LinkRecord | None = None  # a live link's record (downloaded, reminder)
    ended: Ended | None = None


def _ended_link(trail: Trail, record: AccessRecord) -> Ended:
    issued = [
        found for found in trail.query(account=record.account, events={"link-issued"}) if found.moment <= record.moment
    ]
    latest = issued[-1] if issued else None  # the issue this end belongs to
    return Ended(
        account=record.account or "",
        event=record.event,
        time=record.moment,
        by=record.actor if record.event == "link-revoked" else None,
        recipient=(latest.details.get("recipient") if latest else None) or None,
        issued_by=latest.actor if latest else None,
        issued=latest.moment if latest else None,
    )


def ended_links(trail: Trail, now: datetime.datetime) -> list[Ended]:
    """Links that ended within ENDED_WINDOW, each once (its last end record)."""
    last: dict[str, AccessRecord] = {}
    for record in trail.query(events=set(ENDED), since=now - ENDED_WINDOW, until=now + datetime.timedelta(seconds=1)):
        if record.account and ACCOUNT_NAME.match(record.account):
            last[record.account] = record
    return [_ended_link(trail, record) for record in last.values()]


def due(policy: Policy, trail: Trail, links: list[LinkRecord], now: datetime.datetime) -> list[Due]:
    """Every follow-up the trail and the live link records call for now."""
    found = []
    for link in links:
        delivered = deliveries(trail, link.account)
        if not delivered:
            continue  # nothing was packaged for it: nothing to arrive, nothing to remind of
        if all_delivered(delivered):
            if link.notify_downloaded:
                names = ",".join(sorted(delivery.package.name for delivery in delivered))
                found.append(Due("downloaded", link.account, f"downloaded:{names}", delivered, link=link))
            continue
        moment = reminder_time(link.created, link.expires, policy.links.reminder_days_before_end)
        if moment is not None and moment <= now < link.expires:
            found.append(Due("reminder", link.account, "reminder", delivered, link=link))
    for ended in ended_links(trail, now):
        delivered = deliveries(trail, ended.account)
        if delivered and not all_delivered(delivered):
            found.append(Due("ended", ended.account, "ended", delivered, ended=ended))
    return found
