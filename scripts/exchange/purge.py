"""Retention: delete exchange files older than the policy allows, and expired accounts.

Age is the file's mtime, which exchange accounts cannot set (sshd denies them setstat).

A purge plans first, then carries the plan out, both under the purge lock. `plan()` changes
nothing: it walks each account's download and upload folders, the held uploads of ended links,
the upload notices' contact sheets and the uploads imported into PACS through directory file descriptors (symlinks never followed,
other filesystems never entered, nothing outside the exchange root reached, the chroot skeleton
never removed), reads the accounts, and returns the steps in the order they are taken.
`carry_out()` takes them; a dry run shows them (`show()`) instead, each as the line the real run
writes once it has taken it.

Those folders are their accounts' and staff's to change while the purge runs, so no step is taken
by path alone: its folders are opened again one by one from a root-only folder, without following
a symlink, each checked to be the folder the plan saw, and its entry to be the one planned (same
device and inode) and still due. A step whose entry changed is skipped and named
(`purge-step-skipped`); the next run looks again.

The access trail (exchange.trail) is not walked: it lives outside the exchange root and is kept for
years. The purge removes its months older than `audit.retention_years` and compresses ended ones.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import pwd
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from exchange import auditlog, held, links, locks, observe, paths, safefs, untrusted
from exchange.accounts import StepFailed, account_lock, removal_steps, run_steps
from exchange.errors import ExchangeError
from exchange.layout import Layout
from exchange.partners import PartnerDataError, load_partners
from exchange.policy import Policy
from exchange.trail.store import Trail

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
    changed: list[str] = field(default_factory=list)  # planned steps not taken: their entry changed meanwhile
    trail_removed: list[str] = field(default_factory=list)  # months of the access trail past its retention
    trail_compressed: list[str] = field(default_factory=list)  # ended months of the access trail


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
ENDED = "ended link"  # the kind events give the held uploads of an ended link
SHEETS = "contact sheet"  # ... and the upload notices' contact sheets (exchange.messaging.upload_sheets)
IMPORTED = "imported"  # ... and the uploads imported into PACS (exchange.imported)
HELD = (ENDED, SHEETS, IMPORTED)  # the trees of one folder per account, which never hold an account


# What the plan saw, to find it again.


@dataclass(frozen=True)
class Folder:
    """A folder on the way to a planned entry, as the plan saw it."""

    name: str  # in the folder before it; the first (root's) by its absolute path
    device: int
    inode: int

    @classmethod
    def of(cls, name: str, descriptor: int) -> Folder:
        st = os.fstat(descriptor)
        return cls(name, st.st_dev, st.st_ino)


Place = tuple[Folder, ...]  # from a root-only folder down to the folder an entry is in


@dataclass(frozen=True)
class Tree:
    """A folder the purge walks, and how its events name what is below it."""

    where: str  # its path
    kind: str  # "partner", "link", ENDED, SHEETS or IMPORTED
    account: str | None  # None: ended-links, contact-sheets or imported, one folder per account
    prefix: str = ""  # the chroot folder ("/upload") events name paths from


@dataclass(frozen=True)
class Planned:
    """An entry a step is about."""

    tree: Tree
    relative: str  # below the tree's folder ("/"-separated)
    place: Place
    name: str
    stat: os.stat_result  # as the plan saw it (lstat)

    @property
    def account(self) -> str:
        return self.tree.account or self.relative.partition("/")[0]

    @property
    def path(self) -> str:
        """As events name it: in the account's chroot, or in its held folder."""
        if self.tree.account is None:
            return "/" + self.relative.partition("/")[2]
        return f"{self.tree.prefix}/{self.relative}"

    @property
    def shown(self) -> str:
        return untrusted.printable(f"{self.tree.where}/{self.relative}")

    def fields(self) -> dict:
        return {"account": self.account, "kind": self.tree.kind, "path": self.path}


# The steps. `record()`: the line the run writes once it has taken the step (a dry run prints
# it for every step); `tally()`: what the step adds to the report once taken (or planned).


class PurgeStep:
    """One step of a purge plan."""

    def record(self) -> tuple[str, dict] | None:
        return None

    def tally(self, report: PurgeReport) -> None:
        pass


@dataclass(frozen=True)
class DeleteFile(PurgeStep):
    """A file past retention (a symlink too, never its target)."""

    entry: Planned
    age_hours: float

    def record(self) -> tuple[str, dict]:
        return "file-purged", {**self.entry.fields(), "size": self.entry.stat.st_size, "age_hours": self.age_hours}

    def tally(self, report: PurgeReport) -> None:
        report.files += 1
        report.bytes += self.entry.stat.st_size


@dataclass(frozen=True)
class RemoveFolder(PurgeStep):
    """A folder last changed before the cutoff, emptied by the steps before it."""

    entry: Planned
    age_hours: float

    def record(self) -> tuple[str, dict]:
        return "directory-purged", {**self.entry.fields(), "age_hours": self.age_hours}

    def tally(self, report: PurgeReport) -> None:
        report.directories += 1


@dataclass(frozen=True)
class ResetFutureTime(PurgeStep):
    """A file dated in the future (copied with `cp -p` or unzipped from a machine whose clock is
    ahead) would be kept past retention: its days count from now on."""

    entry: Planned

    def record(self) -> tuple[str, dict]:
        return "file-time-reset", {**self.entry.fields(), "mtime": round(self.entry.stat.st_mtime)}


@dataclass(frozen=True)
class FolderNotReached(PurgeStep):
    """A folder the walk does not enter (`why`: a safefs.Step kind, "too-deep", "unreadable" or
    "other-filesystem"): named, so an admin can look; the rest goes on."""

    entry: Planned
    why: str
    max_depth: int
    problem: str = ""  # why it is unreadable

    def record(self) -> tuple[str, dict] | None:
        if self.why == "too-deep":
            return "folder-too-deep", {**self.entry.fields(), "max_depth": self.max_depth}
        if self.why == "unreadable":
            return "folder-unreadable", {**self.entry.fields(), "problem": self.problem}
        return None

    def tally(self, report: PurgeReport) -> None:
        shown = self.entry.shown
        if self.why == "other-filesystem":
            report.skipped.append(f"{shown}: another filesystem")
        elif self.why == "too-deep":
            report.failed.append(
                f"{shown}: more than {self.max_depth} folders deep (policy accounts.max_folder_depth); retention "
                "does not reach below it: remove it by hand"
            )
        else:
            report.failed.append(f"{shown}: not readable ({self.problem}); retention does not reach it")


@dataclass(frozen=True)
class NotWalked(PurgeStep):
    """An account's chroot, or a folder of it, that the purge does not walk at all."""

    where: str
    why: str

    def tally(self, report: PurgeReport) -> None:
        report.skipped.append(f"{self.where}: {self.why}")


@dataclass(frozen=True)
class DataUnreadable(PurgeStep):
    """Link records (`data` "link-record": such a link still ends, by its account's expiry) or the
    partner data ("partner-data": no partner is removed on data that cannot be read)."""

    data: str
    problem: str

    def record(self) -> tuple[str, dict]:
        return f"{self.data}-unreadable", {"problem": self.problem}

    def tally(self, report: PurgeReport) -> None:
        if self.data == "partner-data":
            report.failed.append(f"no partner account was removed: the partner data cannot be read: {self.problem}")


@dataclass(frozen=True)
class PartnerKept(PurgeStep):
    """Locked longer than retention, but not by the partner data: never removed."""

    account: str

    def tally(self, report: PurgeReport) -> None:
        report.kept.append(self.account)


@dataclass(frozen=True)
class HoldUploads(PurgeStep):
    """Before a link account goes: close it, end its sessions, move its uploads to its held folder
    (exchange.held). A dry run's line counts what its upload folder holds now; the real run's,
    written by the hold, the regular files it held (none: no line)."""

    account: str
    recipient: str
    folder: str
    files: int

    def record(self) -> tuple[str, dict]:
        return "link-uploads-held", {
            "account": self.account,
            "files": self.files,
            "folder": self.folder,
            "recipient": self.recipient,
        }


@dataclass(frozen=True)
class RemoveAccount(PurgeStep):
    """An account with its chroot, keys and log socket; a link's record and token with it. The
    removal writes `event` to the audit log itself."""

    account: str
    kind: str
    event: str  # "link-expired" or "account-removed"
    details: dict  # the audit record's other fields

    def record(self) -> tuple[str, dict]:
        return self.event, {"account": self.account, "kind": self.kind, "by": "purge", **self.details}

    def tally(self, report: PurgeReport) -> None:
        report.accounts += 1


@dataclass(frozen=True)
class RemoveTrailMonth(PurgeStep):
    """A month of the access trail whose last day is more than `audit.retention_years` ago."""

    month: str
    years: int

    def record(self) -> tuple[str, dict]:
        return "trail-month-removed", {"month": self.month, "retention_years": self.years}

    def tally(self, report: PurgeReport) -> None:
        report.trail_removed.append(self.month)


@dataclass(frozen=True)
class CompressTrailMonth(PurgeStep):
    """An ended month of the access trail, gzipped and then immutable."""

    month: str

    def record(self) -> tuple[str, dict]:
        return "trail-month-compressed", {"month": self.month}

    def tally(self, report: PurgeReport) -> None:
        report.trail_compressed.append(self.month)


def _next_month(month: str) -> str:
    year, number = int(month[:4]), int(month[5:7])
    return f"{year + number // 12:04d}-{number % 12 + 1:02d}"


def first_kept_month(today: datetime.date, years: int) -> str:
    """The oldest month kept: a month goes once its last day is more than `years` before today."""
    try:
        cutoff = today.replace(year=today.year - years)
    except ValueError:  # 29 February
        cutoff = today.replace(year=today.year - years, day=28)
    return cutoff.strftime("%Y-%m")


def plan_trail(policy: Policy, now: float, trail: Trail) -> list[PurgeStep]:
    """The trail's months past retention, then its ended months not yet compressed."""
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    years = policy.audit.retention_years
    first_kept = first_kept_month(moment.date(), years)
    current = moment.strftime("%Y-%m")
    steps: list[PurgeStep] = []
    for month, compressed in trail.month_states():
        if month < first_kept:
            steps.append(RemoveTrailMonth(month, years))
        elif month < current and not compressed:
            steps.append(CompressTrailMonth(month))
    return steps


@dataclass
class PurgePlan:
    now: float  # the clock the plan judged by
    cutoff: float  # what was last changed before it is past retention
    steps: list[PurgeStep] = field(default_factory=list)
    holding: set[str] = field(default_factory=set)  # accounts the steps leave files to

    @property
    def future(self) -> float:
        """A file time past it is reset to now."""
        return self.now + FUTURE_SLACK

    def age_hours(self, entry: Planned) -> float:
        return round((self.now - entry.stat.st_mtime) / 3600, 1)


# Planning: reads, changes nothing.


def plan(layout: Layout, now: float, store: links.LinkStore, trail: Trail | None = None) -> PurgePlan:
    """Every step of a purge at `now`: the files first, then the accounts (judged by what the file
    steps leave), then the access trail's months."""
    result = plan_files(layout, now)
    plan_accounts(layout, now, store, result)
    result.steps.extend(plan_trail(layout.policy, now, Trail() if trail is None else trail))
    return result


def plan_files(layout: Layout, now: float) -> PurgePlan:
    """The steps in every account's download and upload folders, then in the held uploads of
    ended links, in the upload notices' contact sheets and in the uploads imported into PACS
    (which age out like any file; then their folder goes)."""
    policy = layout.policy
    result = PurgePlan(now, cutoff=now - policy.retention.days * 86400)
    root = layout.root
    if not os.path.isdir(root) or os.path.islink(root):
        raise PurgeError(
            f"the exchange root {root} (policy accounts.root) is not a directory; is this server deployed?"
        )
    device = os.lstat(root).st_dev
    max_depth = policy.accounts.max_folder_depth
    for kind in ("partner", "link"):
        kind_dir = layout.kind_dir(kind)
        if not os.path.isdir(kind_dir) or os.path.islink(kind_dir):
            continue
        with _opened(kind_dir) as kind_fd:
            base = (Folder.of(kind_dir, kind_fd),)
            for account in sorted(os.listdir(kind_fd)):
                try:
                    chroot_fd = os.open(account, OPEN_DIR, dir_fd=kind_fd)
                except OSError:
                    result.steps.append(NotWalked(f"{kind_dir}/{account}", "not a directory"))
                    continue
                try:
                    chroot = (*base, Folder.of(account, chroot_fd))
                    for folder in (policy.accounts.download_folder, policy.accounts.upload_folder):
                        tree = Tree(f"{kind_dir}/{account}/{folder}", kind, account, f"/{folder}")
                        if not _plan_chroot_folder(chroot_fd, chroot, folder, tree, device, max_depth, result):
                            result.holding.add(account)
                finally:
                    os.close(chroot_fd)
    for kind, kept in (
        (ENDED, layout.ended_links_dir()),
        (SHEETS, layout.contact_sheets_dir()),
        (IMPORTED, layout.imported_dir()),
    ):
        if os.path.isdir(kept) and not os.path.islink(kept):
            with _opened(kept) as kept_fd:
                # One level more: each account's own folder.
                _plan_tree(kept_fd, (Folder.of(kept, kept_fd),), Tree(kept, kind, None), max_depth + 1, result)
    return result


@contextlib.contextmanager
def _opened(path: str) -> Iterator[int]:
    descriptor = os.open(path, OPEN_DIR)
    try:
        yield descriptor
    finally:
        os.close(descriptor)


def _plan_chroot_folder(
    chroot_fd: int, chroot: Place, folder: str, tree: Tree, device: int, max_depth: int, result: PurgePlan
) -> bool:
    """False if files stay in the folder; one that is not walked holds none the purge could remove."""
    try:
        folder_fd = os.open(folder, OPEN_DIR, dir_fd=chroot_fd)
    except OSError:
        result.steps.append(NotWalked(tree.where, "missing or not a directory"))
        return True
    try:
        if os.fstat(folder_fd).st_dev != device:
            result.steps.append(NotWalked(tree.where, "another filesystem"))
            return True
        return _plan_tree(folder_fd, (*chroot, Folder.of(folder, folder_fd)), tree, max_depth, result)
    finally:
        os.close(folder_fd)


def _plan_tree(top_fd: int, top: Place, tree: Tree, max_depth: int, result: PurgePlan) -> bool:
    """The steps below the folder `top_fd`, in walk order (a folder's after all below it); True if
    they leave it empty."""
    emptied = [True]  # per open folder: everything it holds goes
    places = [top]
    for step in safefs.walk(top_fd, max_depth):
        entry = step.entry
        if step.kind == "enter":
            emptied.append(True)
            places.append((*places[-1], Folder(entry.name, entry.stat.st_dev, entry.stat.st_ino)))
            continue
        if step.kind == "leave":
            places.pop()
        planned = Planned(tree, entry.path, places[-1], entry.name, entry.stat)
        if step.kind == "leave":
            gone = emptied.pop() and entry.stat.st_mtime < result.cutoff
            if gone:
                result.steps.append(RemoveFolder(planned, result.age_hours(planned)))
        elif step.kind == "file":
            gone = _plan_file(planned, result)
        else:
            gone = False
            problem = step.error.strerror if step.error else ""
            result.steps.append(FolderNotReached(planned, step.kind, max_depth, problem))
        if not gone:
            emptied[-1] = False
    return emptied[0]


def _plan_file(planned: Planned, result: PurgePlan) -> bool:
    """True if the file goes."""
    mtime = planned.stat.st_mtime
    if mtime > result.future:
        result.steps.append(ResetFutureTime(planned))
        return False
    if mtime >= result.cutoff:
        return False
    result.steps.append(DeleteFile(planned, result.age_hours(planned)))
    return True


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


def plan_accounts(layout: Layout, now: float, store: links.LinkStore, result: PurgePlan) -> None:
    """The account steps, after the file steps in `result`: link accounts whose time is over end
    (their uploads held first); partners locked longer than retention go once the file steps
    empty their folders."""
    observed = observe.observe(layout.observe_params([]))
    steps = result.steps
    steps.extend(DataUnreadable("link-record", problem) for problem in store.unreadable())
    ending = set()
    for record in links.expired_links(store, observed, datetime.datetime.fromtimestamp(now, datetime.UTC)):
        ending.add(record.account)
        details = {"recipient": record.recipient, "expired": record.expires.isoformat()}
        steps.extend(_link_end(layout, record.account, record.recipient, "link-expired", details))
    try:
        present = partners_present()
    except PartnerDataError as problem:
        steps.append(DataUnreadable("partner-data", str(problem)))
        present = None
    expired, kept = expired_accounts(layout, observed, present)
    steps.extend(PartnerKept(name) for name in kept)
    for name, kind, reason in expired:
        if name in ending:
            continue
        if kind == "link":  # its record unreadable or gone: record and token go with it
            recipient = "unknown (no readable link record)"
            steps.extend(_link_end(layout, name, recipient, "account-removed", {"reason": reason}))
        elif name not in result.holding:
            # Its lock day may be older than the lock (a lock by hand, then dropped from the
            # data): the account goes once retention has emptied its folders, never before.
            steps.append(RemoveAccount(name, kind, "account-removed", {"reason": reason}))


def _link_end(layout: Layout, name: str, recipient: str, event: str, details: dict) -> list[PurgeStep]:
    try:
        pwd.getpwnam(name)
    except KeyError:  # only its record is left (the account went by hand): nothing to close or hold
        hold = []
    else:
        folder = f"{layout.ended_links_dir()}/{name}"
        hold = [HoldUploads(name, recipient, folder, held.upload_count(layout, name))]
    return [*hold, RemoveAccount(name, "link", event, details)]


# Showing and carrying out.


def show(planned: PurgePlan, emit: Callable, report: PurgeReport) -> None:
    """A dry run: every step's line, and the report the real run would give; nothing is taken."""
    report.holding |= planned.holding
    for step in planned.steps:
        if (line := step.record()) is not None:
            emit(line[0], **line[1])
        step.tally(report)


class Changed(Exception):
    """What a step is about is no longer as planned; the message says how."""


def carry_out(
    planned: PurgePlan,
    layout: Layout,
    emit: Callable,
    report: PurgeReport,
    out: Callable[[str], None] = print,
    store: links.LinkStore | None = None,
    trail: Trail | None = None,
) -> None:
    """Take the steps in order, each writing its line once taken; one whose entry changed since
    the plan is skipped and named."""
    store = links.LinkStore() if store is None else store
    trail = Trail() if trail is None else trail
    report.holding |= planned.holding
    folders = _Folders()
    failed: set[str] = set()  # accounts whose removal failed: their later steps wait for the next run

    def skip(step: PurgeStep, fields: dict, shown: str, reason: str) -> None:
        emit("purge-step-skipped", **fields, step=step.record()[0], reason=reason)
        report.changed.append(f"{shown}: {reason}")
        if fields["kind"] not in HELD:
            report.holding.add(fields["account"])  # something of it may be left

    def removal_failed(name: str, kind: str, failure: Exception) -> None:
        """Named, and the others still go; the account stays (locked): the next run tries again."""
        failed.add(name)
        report.failed.append(f"could not remove account {name}: {failure}")
        emit("account-removal-failed", account=name, kind=kind, problem=str(failure))

    def take(step: PurgeStep) -> bool:
        if isinstance(step, DeleteFile | RemoveFolder | ResetFutureTime):
            try:
                _take_on_entry(step, folders.reach(step.entry.place), planned)
            except FileNotFoundError:
                return False  # removed by its account meanwhile (the account's SFTP session is live)
            except Changed as change:
                skip(step, step.entry.fields(), step.entry.shown, str(change))
                return False
        elif isinstance(step, RemoveTrailMonth | CompressTrailMonth):
            try:
                if not _take_on_trail(step, trail):
                    return False
            except (OSError, ExchangeError) as failure:  # named; the next run tries again
                report.failed.append(f"access trail {step.month}: {failure}")
                return False
        elif isinstance(step, HoldUploads):
            try:
                held.keep_uploads(layout, step.account, emit, recipient=step.recipient)  # names what it held
            except (StepFailed, OSError) as failure:
                removal_failed(step.account, "link", failure)
                return False
            return True
        elif isinstance(step, RemoveAccount):
            if step.account in failed:
                return False
            if step.kind == "partner" and step.account in report.holding:
                reason = "its folders still hold files (changed since the purge planned it); not removed"
                skip(step, {"account": step.account, "kind": step.kind}, f"account {step.account}", reason)
                return False
            try:
                _remove_account(layout, store, step)
            except (StepFailed, OSError) as failure:
                removal_failed(step.account, step.kind, failure)
                return False
            event, fields = step.record()
            out(auditlog.audit_line(event, **fields))  # the removal wrote it to the audit log
            return True
        if (line := step.record()) is not None:
            emit(line[0], **line[1])
        return True

    try:
        for step in planned.steps:
            if take(step):
                step.tally(report)
    finally:
        folders.close()


def _take_on_trail(step: RemoveTrailMonth | CompressTrailMonth, trail: Trail) -> bool:
    """The month removed or compressed; False if it was not there to (another run did it)."""
    # In month order: each step takes its month (the older ones went before it).
    if isinstance(step, RemoveTrailMonth):
        return step.month in trail.remove_months_before(_next_month(step.month))
    start = datetime.datetime.fromisoformat(f"{_next_month(step.month)}-01T00:00:00+00:00")
    return step.month in trail.compress_ended_months(start)


def _take_on_entry(step: DeleteFile | RemoveFolder | ResetFutureTime, dir_fd: int, planned: PurgePlan) -> None:
    """The step, if its entry in the folder `dir_fd` is still the one planned and still due;
    Changed if not, FileNotFoundError if it is gone."""
    entry = step.entry
    seen = os.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
    if (seen.st_dev, seen.st_ino) != (entry.stat.st_dev, entry.stat.st_ino):
        raise Changed("replaced since the purge planned it")
    # Its name can still be given to another entry between this look and the change below, but
    # only by someone who may delete in this folder anyway.
    if isinstance(step, DeleteFile):
        if seen.st_mtime >= planned.cutoff:
            raise Changed("changed since the purge planned it: no longer past retention")
        os.unlink(entry.name, dir_fd=dir_fd)
    elif isinstance(step, RemoveFolder):
        # Not judged by its time again: removing what was in it made that now.
        try:
            os.rmdir(entry.name, dir_fd=dir_fd)
        except OSError as error:
            if error.errno != errno.ENOTEMPTY:
                raise
            raise Changed("something arrived in it since the purge planned it") from None
    else:
        if seen.st_mtime <= planned.future:
            raise Changed("its time changed since the purge planned it")
        os.utime(entry.name, dir_fd=dir_fd, follow_symlinks=False)


class _Folders:
    """The folders of the last step taken, kept open while the next steps stay in them (the plan
    is in walk order, so each folder is opened again once)."""

    def __init__(self) -> None:
        self.open: list[tuple[Folder, int]] = []

    def reach(self, place: Place) -> int:
        """The descriptor of the place's folder, each folder on the way opened from the one before
        and checked to be the folder planned; Changed if one is not."""
        kept = 0
        while kept < min(len(self.open), len(place)) and self.open[kept][0] == place[kept]:
            kept += 1
        self._close_from(kept)
        for folder in place[kept:]:
            try:
                descriptor = os.open(folder.name, OPEN_DIR, dir_fd=self.open[-1][1] if self.open else None)
            except FileNotFoundError:
                raise Changed("its folder was moved or removed since the purge planned it") from None
            except OSError as error:
                if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                raise Changed("its folder was replaced by a symlink or a file (never followed)") from None
            st = os.fstat(descriptor)
            if (st.st_dev, st.st_ino) != (folder.device, folder.inode):
                os.close(descriptor)
                raise Changed("its folder was replaced since the purge planned it")
            self.open.append((folder, descriptor))
        return self.open[-1][1]

    def _close_from(self, index: int) -> None:
        while len(self.open) > index:
            os.close(self.open.pop()[1])

    def close(self) -> None:
        self._close_from(0)


def _remove_account(layout: Layout, store: links.LinkStore, step: RemoveAccount) -> None:
    if step.kind == "link":
        links.remove_link(layout, store, step.account, step.event, by="purge", **step.details)
    else:
        with account_lock():
            run_steps(removal_steps(layout, step.account, step.kind, event=step.event, by="purge", **step.details))


def purge_files(layout: Layout, now: float, emit: Callable, dry_run: bool, report: PurgeReport) -> None:
    """The file steps alone: planned, then shown (a dry run) or taken."""
    files = plan_files(layout, now)
    if dry_run:
        show(files, emit, report)
    else:
        carry_out(files, layout, emit, report)


def purge(
    policy: Policy,
    dry_run: bool = False,
    out: Callable[[str], None] = print,
    now: float | None = None,
    trail: Trail | None = None,
) -> PurgeReport:
    layout = Layout(policy)
    trail = Trail() if trail is None else trail
    report = PurgeReport()
    now = time.time() if now is None else now

    def emit(event: str, **fields) -> None:
        if dry_run:
            out(json.dumps({"event": event, "dry_run": True, **fields}, sort_keys=True))
        else:
            out(auditlog.record(event, **fields))

    with purge_lock():  # held from the plan to its last step: no other purge plans meanwhile
        store = links.LinkStore()
        steps = plan(layout, now, store, trail)
        if dry_run:
            show(steps, emit, report)
        else:
            carry_out(steps, layout, emit, report, out, store, trail)
    return report
