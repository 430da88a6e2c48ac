"""Bring the trail up to date: the audit log, the SFTP log and sshd's logins read from where the
last run stopped, made into access records, appended in one TrailWriter.append per run.

Positions are kept in the trail's index with the records they led to ("<inode>:<offset>" per
log, in the same transaction), so a crash repeats or loses nothing. logrotate moves a log to
`<log>.1` (delaycompress): a log whose inode moved there is finished first, then the new one
read from its start. A run reads only complete lines: one being written waits for the next run.

Only what the kernel vouches for is believed: rsyslog ends every audit line with its sender's
uid (writer_uid). Root's lines are the tools'; the web page's service user may write portal-*
events only. Any other line is named in `Ingested.distrusted` and makes no record.
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from exchange import paths, untrusted
from exchange.errors import ExchangeError
from exchange.policy import Policy
from exchange.trail import events
from exchange.trail.events import Context, Manifest
from exchange.trail.logins import NotALogLine, Sessions, parse_login, parse_sftp
from exchange.trail.record import AccessRecord
from exchange.trail.store import Trail, TrailWriter

# Read in this order: what a later log says happened after what an earlier one said. The web
# page announces its port (audit.log) before it logs in (logins.log), so reading audit.log last
# finds every announcement of a login read before it.
LOGS = ("sftp", "logins", "audit")
SFTP_STATE, LINKS_STATE = "ingest.sftp", "ingest.links"
MOST_NAMED = 100  # distrusted and unreadable lines named in the result; the rest counted


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
    distrusted: list[str] = field(default_factory=list)  # audit lines of a writer not believed
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


def ingest(policy: Policy, trail: Trail | None = None, logs: LogPaths | None = None) -> Ingested:
    """Read what is new, append its records, keep where each log stopped."""
    trail, logs = trail or Trail(), logs or LogPaths()
    result = Ingested()
    with trail.writing() as writer:
        positions: dict[str, str] = {}
        lines: list[Line] = []
        for log in LOGS:
            read, positions[log] = read_new(log, logs.of(log), writer.position(log), result)
            result.lines[log] = len(read)
            lines += read
        context = Context(
            zone=_site_zone(logs.site),
            download_folder=policy.accounts.download_folder,
            organisations=_organisations(logs.partners),
            recipients=dict(writer.state(LINKS_STATE) or {}),
            stored=lambda account, name: _manifest(writer, account, name),
        )
        sessions = Sessions(context, writer.state(SFTP_STATE), upload_folder=policy.accounts.upload_folder)
        # Made in the order things happened, appended in the order they were read: each log's last
        # record in the chain is its furthest, where a recovery of the index resumes (exchange.trail.store).
        made = sorted(_records(lines, context, sessions, _believed_uids(policy), result), key=lambda pair: pair[0])
        records = [record for _number, record in made]
        result.web_sessions = sessions.web_sessions
        state = {SFTP_STATE: sessions.state(), LINKS_STATE: context.recipients}
        kept = {log: position for log, position in positions.items() if position is not None}
        writer.append(records, positions=kept, state=state)
        result.records = len(records)
    return result


def read_new(log: str, path: str, position: str | None, result: Ingested) -> tuple[list[Line], str | None]:
    """The complete lines after `position`, a log moved to `<path>.1` finished first, and the
    position after them (None: the log is not there yet)."""
    inode, offset = _position(position)
    lines: list[Line] = []
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return lines, position
    if inode is not None and current.st_ino != inode:
        try:
            rotated = os.stat(f"{path}.1")
        except FileNotFoundError:
            rotated = None
        if rotated is not None and rotated.st_ino == inode:
            lines += _read(log, f"{path}.1", offset)[0]
        else:
            result.gaps.append(f"{os.path.basename(path)}: rotated more than once since the last run; lines missed")
        offset = 0
    elif inode is not None and offset > current.st_size:  # cut back (copytruncate, or by hand): read anew
        result.gaps.append(f"{os.path.basename(path)}: shorter than where the last run stopped; read from its start")
        offset = 0
    read, end, inode_read = _read(log, path, offset)
    lines += read
    return lines, f"{inode_read}:{end}"


def _read(log: str, path: str, offset: int) -> tuple[list[Line], int, int]:
    with open(path, "rb") as handle:
        inode = os.fstat(handle.fileno()).st_ino
        handle.seek(offset)
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    lines, at = [], offset
    for raw in complete.splitlines(keepends=True):
        at += len(raw)
        lines.append(Line(log, raw.rstrip(b"\n").decode("utf-8", "replace"), f"{log}:{inode}:{at}"))
    return lines, offset + len(complete), inode


def _position(position: str | None) -> tuple[int | None, int]:
    try:
        inode, offset = (position or "").split(":")
        return int(inode), int(offset)
    except ValueError:
        return None, 0


def _records(
    lines: list[Line], context: Context, sessions: Sessions, believed: dict[str, int | None], result: Ingested
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
    for _moment, _order, number, line, what in timed:
        made = None
        if line.log == "audit":
            try:
                made = events.from_audit(what, context, source=line.source)
            except (KeyError, ValueError, TypeError) as problem:
                result.note(result.unreadable, f"{line.source}: {untrusted.printable(untrusted.cut(problem))}")
            if what.get("event") in ("link-revoked", "link-expired", "account-removed"):
                context.recipients.pop(str(what.get("account")), None)  # its records are written: forgotten
        elif line.log == "logins":
            sessions.accepted(what)
        else:
            made = sessions.line(what, source=line.source)
        if made is not None:
            yield number, made


def _parsed(line: Line, believed: dict[str, int | None], result: Ingested) -> tuple[datetime.datetime, Any] | None:
    """(when, what) of a line worth a look; None for others (named in `result` if suspect)."""
    try:
        if line.log == "logins":
            login = parse_login(line.text)
            return (login.moment, login) if login else None
        if line.log == "sftp":
            sftp = parse_sftp(line.text)
            if sftp is None:
                raise NotALogLine("not an internal-sftp line")
            return sftp.moment, sftp
        entry = json.loads(line.text)
        if not isinstance(entry, dict):
            raise NotALogLine("not a record")
        moment = datetime.datetime.fromisoformat(str(entry.get("time")))
    except (ValueError, NotALogLine) as problem:
        result.note(result.unreadable, f"{line.source}: {untrusted.printable(untrusted.cut(problem))}")
        return None
    uid, event = entry.get("writer_uid"), str(entry.get("event"))
    if not (uid == believed["root"] or (event.startswith("portal-") and uid is not None and uid == believed["portal"])):
        shown = untrusted.printable(untrusted.cut(event))
        result.note(result.distrusted, f"{line.source}: {shown} written by uid {untrusted.printable(uid)}")
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)), entry


def _believed_uids(policy: Policy) -> dict[str, int | None]:
    try:
        portal = pwd.getpwnam(policy.portal.service_user).pw_uid
    except KeyError:  # no web page on this server: nobody writes portal-* events
        portal = None
    return {"root": 0, "portal": portal}


def _manifest(writer: TrailWriter, account: str, name: str) -> Manifest | None:
    made = writer.package(account, name)
    if made is None:
        return None
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
