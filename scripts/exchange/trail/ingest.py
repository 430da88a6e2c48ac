"""Bring the trail up to date: the audit log, the SFTP log and sshd's logins read from where the
last run stopped, made into access records, appended in batches: at most BATCH_BYTES or
BATCH_LINES of each log per TrailWriter.append, batch after batch until every log is read to
its end, so a run's memory is bounded however much a log grew (a line longer than BATCH_BYTES
is skipped, named unreadable).

Positions are kept in the trail's index with the records they led to ("<inode>:<offset>" per
log, in the same transaction), so a crash repeats or loses nothing. logrotate moves a log to
`<log>.1` (delaycompress): a log whose inode moved there is finished first, then the new one
read from its start. A run reads only complete lines: one being written waits for the next run.

Only what the kernel vouches for is believed: rsyslog ends every audit line with its sender's
uid (writer_uid). Root's lines are the tools'; the web page's service user may write portal-*
events only. Every chroot's /dev/log is open to every local user, so rsyslog stamps each
sftp.log line with its sender's uid too (`uid=`): a line is believed only from the account's own
uid (internal-sftp runs as the account). A line without one was written before rsyslog logged
it: believed, its records say `"uid": "not logged"`. Any other line is named in
`Ingested.distrusted` and makes no record. A line that breaks its parser or mapping (nested
beyond Python's recursion, a time beyond the year 9999) is named unreadable; the run goes on.
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from exchange import paths, untrusted
from exchange.errors import ExchangeError
from exchange.policy import Policy
from exchange.trail import events
from exchange.trail.events import Context, Manifest
from exchange.trail.logins import NotALogLine, Sessions, parse_login, parse_sftp
from exchange.trail.record import AccessRecord
from exchange.trail.store import PackageManifest, Trail, TrailWriter

# Read in this order: what a later log says happened after what an earlier one said. The web
# page announces its port (audit.log) before it logs in (logins.log), so reading audit.log last
# finds every announcement of a login read before it.
LOGS = ("sftp", "logins", "audit")
SFTP_STATE, LINKS_STATE, UIDS_STATE = "ingest.sftp", "ingest.links", "ingest.account-uids"
UIDS_PER_ACCOUNT = 4  # a partner's name may be given again, to a new account of another uid
MOST_ACCOUNTS = 20_000  # accounts whose uids are remembered: a busy year's links
MOST_NAMED = 100  # distrusted and unreadable lines named in the result; the rest counted
BATCH_BYTES = 16 * 1024 * 1024  # of each log per append
BATCH_LINES = 50_000


@dataclass(frozen=True)
class LogPaths:
    audit: str = paths.AUDIT_LOG
    sftp: str = paths.SFTP_LOG
    logins: str = paths.LOGINS_LOG
    partners: str = paths.PARTNERS  # the partners' organisations: who acts in their accounts
    site: str = paths.SITE  # the site's time zone

    def of(self, log: str) -> str:
        return getattr(self, log)


@dataclass
class Ingested:
    records: int = 0  # appended to the trail
    lines: dict[str, int] = field(default_factory=dict)  # complete lines read, per log
    distrusted: list[str] = field(default_factory=list)  # audit and sftp lines of a writer not believed
    unreadable: list[str] = field(default_factory=list)  # lines that are no line of their log
    gaps: list[str] = field(default_factory=list)  # logs rotated away before they were read to the end
    web_sessions: int = 0  # SFTP sessions of the web page itself: its own records tell what they did
    problems: int = 0  # distrusted and unreadable lines in all (only the first MOST_NAMED are named)

    def note(self, where: list[str], what: str) -> None:
        self.problems += 1
        if len(where) < MOST_NAMED:
            where.append(what)


@dataclass(frozen=True)
class Line:
    log: str
    text: str
    source: str  # "<log>:<inode>:<offset after the line>", the record's `source`
    moment: datetime.datetime | None = None


def ingest(
    policy: Policy,
    trail: Trail | None = None,
    logs: LogPaths | None = None,
    account_uid: Callable[[str], int | None] | None = None,
) -> Ingested:
    """Read what is new, append its records, keep where each log stopped; batch after batch.
    `account_uid`: an account's uid (the host's passwd unless given)."""
    trail, logs = trail or Trail(), logs or LogPaths()
    result = Ingested()
    with trail.writing() as writer:
        context = Context(
            zone=_site_zone(logs.site),
            download_folder=policy.accounts.download_folder,
            organisations=_organisations(logs.partners),
            recipients=dict(writer.state(LINKS_STATE) or {}),
            stored=lambda account, name: _manifest(writer, account, name),
            stored_all=lambda account: _manifests(writer, account),
        )
        sessions = Sessions(context, writer.state(SFTP_STATE), upload_folder=policy.accounts.upload_folder)
        believed = _Believed(_believed_uids(policy), account_uid or _passwd_uid, writer.state(UIDS_STATE))
        more = True
        while more:
            more = False
            positions: dict[str, str] = {}
            lines: list[Line] = []
            for log in LOGS:
                read, positions[log], full = read_new(log, logs.of(log), writer.position(log), result)
                result.lines[log] = result.lines.get(log, 0) + len(read)
                lines += read
                more = more or full
            # Made in the order things happened, appended in the order they were read: each log's last
            # record in the chain is its furthest, where a recovery of the index resumes (exchange.trail.store).
            believed.learn(lines)
            made = sorted(_records(lines, context, sessions, believed, result), key=lambda pair: pair[0])
            del lines
            records = [record for _number, record in made]
            result.web_sessions = sessions.web_sessions
            state = {SFTP_STATE: sessions.state(), LINKS_STATE: context.recipients, UIDS_STATE: believed.remembered}
            kept = {log: position for log, position in positions.items() if position is not None}
            writer.append(records, positions=kept, state=state)
            context.manifests.clear()  # in the trail now: found there by the next batch
            result.records += len(records)
    return result


def read_new(
    log: str, path: str, position: str | None, result: Ingested, most_bytes: int | None = None,
    most_lines: int | None = None,
) -> tuple[list[Line], str | None, bool]:  # fmt: skip
    """The complete lines after `position` (at most `most_bytes` and `most_lines` of them), a log
    moved to `<path>.1` finished first, the position after them (None: the log is not there yet)
    and whether more may follow (the batch was full)."""
    most_bytes = BATCH_BYTES if most_bytes is None else most_bytes
    most_lines = BATCH_LINES if most_lines is None else most_lines
    inode, offset = _position(position)
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return [], position, False
    if inode is not None and current.st_ino != inode:
        try:
            rotated = os.stat(f"{path}.1")
        except FileNotFoundError:
            rotated = None
        if rotated is not None and rotated.st_ino == inode:
            lines, end, _inode, full = _read(log, f"{path}.1", offset, most_bytes, most_lines, result)
            if full:
                return lines, f"{inode}:{end}", True
            return lines, f"{current.st_ino}:0", True  # finished: the new log next, from its start
        result.gaps.append(f"{os.path.basename(path)}: rotated more than once since the last run; lines missed")
        offset = 0
    elif inode is not None and offset > current.st_size:  # cut back (copytruncate, or by hand): read anew
        result.gaps.append(f"{os.path.basename(path)}: shorter than where the last run stopped; read from its start")
        offset = 0
    lines, end, inode_read, full = _read(log, path, offset, most_bytes, most_lines, result)
    return lines, f"{inode_read}:{end}", full


def _read(
    log: str, path: str, offset: int, most_bytes: int, most_lines: int, result: Ingested
) -> tuple[list[Line], int, int, bool]:
    """Up to `most_lines` complete lines within `most_bytes` from `offset`: (lines, the offset after
    them, the file's inode, whether the batch was full). A line longer than `most_bytes` is skipped."""
    with open(path, "rb") as handle:
        inode = os.fstat(handle.fileno()).st_ino
        handle.seek(offset)
        data = handle.read(most_bytes)
        if len(data) == most_bytes and b"\n" not in data:  # no line this long is a log's: skipped to its end
            at = offset + len(data)
            while chunk := handle.read(1024 * 1024):
                if (newline := chunk.find(b"\n")) >= 0:
                    at += newline + 1
                    result.note(result.unreadable, f"{log}:{inode}:{at}: a line longer than {most_bytes} bytes")
                    return [], at, inode, True
                at += len(chunk)
            return [], offset, inode, False  # still being written: waits for its end
    full = len(data) == most_bytes
    lines, at = [], offset
    start = 0
    while len(lines) < most_lines:
        newline = data.find(b"\n", start)
        if newline < 0:
            break
        raw = data[start:newline]
        at += newline + 1 - start
        start = newline + 1
        lines.append(Line(log, raw.decode("utf-8", "replace"), f"{log}:{inode}:{at}"))
    full = full or (len(lines) == most_lines and data.find(b"\n", start) >= 0)
    return lines, at, inode, full


def _position(position: str | None) -> tuple[int | None, int]:
    try:
        inode, offset = (position or "").split(":")
        return int(inode), int(offset)
    except ValueError:
        return None, 0


def _records(
    lines: list[Line], context: Context, sessions: Sessions, believed: _Believed, result: Ingested
) -> Iterator[tuple[int, AccessRecord]]:
    """Every line's record with its line's number, in the order things happened (the logs merged by time)."""
    timed: list[tuple[datetime.datetime, int, int, Line, Any]] = []
    for number, line in enumerate(lines):
        parsed = _parsed(line, believed, result)
        if parsed is None:
            continue
        moment, what = parsed
        if line.log == "audit" and what.get("event") == events.PORTAL_SSH:
            # Known before any session is judged: its login may be earlier in this run's lines.
            try:
                sessions.announce(str(what["account"]), int(what["port"]), moment)
            except (KeyError, ValueError, TypeError):
                result.note(result.unreadable, f"{line.source}: an announcement without account and port")
            continue
        timed.append((moment, LOGS.index(line.log), number, line, what))
    timed.sort(key=lambda item: item[:3])
    del lines
    for _moment, _order, number, line, what in timed:
        made: list[AccessRecord] = []
        try:
            if line.log == "audit":
                made = [made_one] if (made_one := events.from_audit(what, context, source=line.source)) else []
            elif line.log == "logins":
                sessions.accepted(what)
            else:
                made = sessions.line(what, source=line.source)
        except (KeyError, ValueError, TypeError, RecursionError, OverflowError, ArithmeticError) as problem:
            result.note(result.unreadable, f"{line.source}: {untrusted.printable(untrusted.cut(problem))}")
            made = []
        if line.log == "audit" and what.get("event") in ("link-revoked", "link-expired", "account-removed"):
            context.recipients.pop(str(what.get("account")), None)  # its records are written: forgotten
        for cut in sessions.cut:
            result.note(result.unreadable, f"{line.source}: {cut}")
        sessions.cut.clear()
        for made_one in made:
            yield number, made_one


def _parsed(line: Line, believed: _Believed, result: Ingested) -> tuple[datetime.datetime, Any] | None:
    """(when, what) of a line worth a look; None for others (named in `result` if suspect)."""
    try:
        if line.log == "logins":
            login = parse_login(line.text)
            return (login.moment, login) if login else None
        if line.log == "sftp":
            sftp = parse_sftp(line.text)
            if sftp is None:
                raise NotALogLine("not an internal-sftp line")
            if sftp.uid is not None and not believed.account(sftp.account, sftp.uid):
                shown = untrusted.printable(untrusted.cut(sftp.uid or "none"))
                result.note(result.distrusted, f"{line.source}: a line of {sftp.account} written by uid {shown}")
                return None
            return sftp.moment, sftp
        entry = json.loads(line.text)
        if not isinstance(entry, dict):
            raise NotALogLine("not a record")
        moment = datetime.datetime.fromisoformat(str(entry.get("time")))
        if not moment.tzinfo:
            moment = moment.replace(tzinfo=datetime.UTC)
        moment.astimezone(datetime.UTC)  # OverflowError: beyond the years a record may have
    except (ValueError, NotALogLine, RecursionError, OverflowError) as problem:
        result.note(result.unreadable, f"{line.source}: {untrusted.printable(untrusted.cut(problem))}")
        return None
    uid, event = entry.get("writer_uid"), str(entry.get("event"))
    if not (uid == believed.root or (event.startswith("portal-") and uid is not None and uid == believed.portal)):
        shown = untrusted.printable(untrusted.cut(event))
        result.note(result.distrusted, f"{line.source}: {shown} written by uid {untrusted.printable(uid)}")
        return None
    return moment, entry


class _Believed:
    """Whose lines are believed: root's and the web page's in audit.log, each account's own in
    sftp.log. An account's uids are remembered (passwd's, and those the tools put on record when
    they issue or remove an account), so the lines of one removed before they were read, by the
    purge or a revoke, are still weighed by its own uid."""

    def __init__(
        self, uids: dict[str, int | None], account_uid: Callable[[str], int | None], remembered: dict | None
    ) -> None:
        self.root, self.portal = uids["root"], uids["portal"]
        self._account_uid, self._looked_up = account_uid, set()  # type: ignore[var-annotated]
        self.remembered: dict[str, list[int]] = {
            account: [uid for uid in kept if isinstance(uid, int)][-UIDS_PER_ACCOUNT:]
            for account, kept in (remembered or {}).items()
            if isinstance(kept, list)
        }

    def remember(self, account: str, uid: int) -> None:
        kept = self.remembered.pop(account, [])  # to the end: the least recently seen go first
        self.remembered[account] = [*[u for u in kept if u != uid], uid][-UIDS_PER_ACCOUNT:]
        while len(self.remembered) > MOST_ACCOUNTS:
            del self.remembered[next(iter(self.remembered))]

    def learn(self, lines: list[Line]) -> None:
        """The uids root's audit lines of this batch put on record, before any SFTP line is weighed."""
        for line in lines:
            if line.log != "audit" or '"uid"' not in line.text:
                continue
            try:
                entry = json.loads(line.text)
            except (ValueError, RecursionError):
                continue  # named when the line itself is read
            if not isinstance(entry, dict) or entry.get("writer_uid") != self.root:
                continue
            account, uid = entry.get("account"), entry.get("uid")
            if isinstance(account, str) and isinstance(uid, int) and not isinstance(uid, bool):
                self.remember(account, uid)

    def account(self, account: str, uid: str) -> bool:
        if account not in self._looked_up:
            if len(self._looked_up) > MOST_ACCOUNTS:
                self._looked_up.clear()
            self._looked_up.add(account)
            own = self._account_uid(account)
            if own is not None:
                self.remember(account, own)
        return uid in {str(known) for known in self.remembered.get(account, ())}


def _passwd_uid(account: str) -> int | None:
    try:
        return pwd.getpwnam(account).pw_uid
    except (KeyError, ValueError):  # no such account (any more): none of its lines is believed
        return None


def _believed_uids(policy: Policy) -> dict[str, int | None]:
    try:
        portal = pwd.getpwnam(policy.portal.service_user).pw_uid
    except KeyError:  # no web page on this server: nobody writes portal-* events
        portal = None
    return {"root": 0, "portal": portal}


def _manifest(writer: TrailWriter, account: str, name: str) -> Manifest | None:
    made = writer.package(account, name)
    return None if made is None else _as_manifest(made)


def _manifests(writer: TrailWriter, account: str) -> dict[str, Manifest]:
    """The latest package of each name (packages come oldest first)."""
    return {made.name: _as_manifest(made) for made in writer.packages(account)}


def _as_manifest(made: PackageManifest) -> Manifest:
    """The store's package as the events map downloads by it."""
    return Manifest(tuple(made.patient_ids), tuple(made.study_uids), made.sha256, made.size)


def _organisations(path: str) -> dict[str, str]:
    from exchange.partners import load_partners

    try:
        return {partner.name: partner.organisation for partner in load_partners(path)}
    except (ExchangeError, OSError):  # no partner data here: the account names the partner
        return {}


def _site_zone(path: str) -> datetime.tzinfo:
    from exchange.site import load_site

    try:
        return load_site(path).zone
    except (ExchangeError, OSError, ValueError):  # no site data yet: local time is UTC
        return datetime.UTC
