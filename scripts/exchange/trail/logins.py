"""SFTP access as records: sshd's accepted logins (logins.log) and internal-sftp's sessions
(sftp.log) told apart from the web page's own SSH sessions.

sshd says how a login authenticated and from which port ("Accepted publickey for alice from
10.0.0.5 port 40000 ssh2: ED25519 SHA256:..."); internal-sftp says which files the session read
and wrote, but only from which address ("session opened for local user alice from [10.0.0.5]").
A session is given the latest login of its account and address before it. The web page logs its
users in through sshd on loopback, and says beforehand from which local port
(portal-ssh-connection): a session whose login came from such a port is the web page's, whose
own records (portal-download, ...) already say what it did, so it is skipped here.

What a session has opened and the logins not yet given a session are kept in the ingest's
state between runs: a session may span two runs.

A download leaves a record even when its close is not a whole line: sftp-server logs a file
still open when the session ends as `forced close`; OpenSSH's log.c writes at most
LOGGED_CHARS of a message, so a long path ("/download/./././...") cuts the line: a cut
close of a file whose open was whole is a download of that file, otherwise of each of the
account's packages (which one is not known: over-attributed rather than silent), of unknown
extent, outcome "incomplete"; a file opened for reading without a close when its session
closes likewise. Every cut line is named in `cut` for the ingest's unreadable lines.

Bounded whatever a client does: at most MOST_FILES open files are kept per session (the
oldest dropped and counted: the session's close makes a record of unknown extent of every
package for them), at most MOST_KEPT logins, announcements and sessions, during a run too.
"""

from __future__ import annotations

import dataclasses
import datetime
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from exchange.trail.events import Context, record, text
from exchange.trail.record import AccessRecord

LOOPBACK = ("127.0.0.1", "::1")
# A login's session opens within moments; one waiting longer never will (a staff member's shell
# login, a connection broken before its subsystem started).
LOGIN_WAIT = datetime.timedelta(minutes=10)
# The web page announces its port just before it connects.
ANNOUNCED_BEFORE = datetime.timedelta(minutes=10)
CLOCK_SLACK = datetime.timedelta(seconds=5)  # rsyslog stamps each line when it receives it
SESSION_KEPT = datetime.timedelta(days=30)  # an open session whose close was never logged is let go
MOST_KEPT = 10_000  # of each kind of state, so a flood of logins cannot grow it without end
MOST_FILES = 256  # open files kept per session (a client may open a great many, never closed)
LOGGED_CHARS = 500  # OpenSSH's log.c: syslog(pri, "%.500s", fmtbuf): a longer message is cut

_ACCEPTED = re.compile(
    r"^(?P<time>\S+) sshd(?:-session)?\[\d+\]: ?Accepted (?P<method>[\w/-]+) for (?P<account>\S+) from (?P<address>\S+) "
    r"port (?P<port>\d+) ssh2(?:: (?P<key>\S+) (?P<fingerprint>SHA256:[A-Za-z0-9+/=]+))?"
)
# rsyslog's sftp template (templates/logging/rsyslog.conf.j2): the chroot socket's account, the
# sender's uid from the kernel (absent from lines written before rsyslog logged it), the tag.
_SFTP = re.compile(
    r"^(?P<time>\S+) account=(?P<account>\S+) (?:uid=(?P<uid>\S*) )?internal-sftp\[(?P<pid>\d+)\]: ?(?P<message>.*)$"
)
_OPENED = re.compile(r"^session opened for local user \S+ from \[(?P<address>[^\]]*)\]")
_CLOSED = re.compile(r"^session closed for local user ")
_OPEN = re.compile(r'^open "(?P<path>.*)" flags (?P<flags>\S+) mode \d+$')
_CLOSE = re.compile(r'^(?P<forced>forced )?close "(?P<path>.*)" bytes read (?P<read>\d+) written (?P<written>\d+)$')
_FILE_LINE = re.compile(r'^(?P<what>open|close|forced close) "(?P<path>.*)$')  # whole or cut
CUT = "\0cut:"  # what a cut open keeps as its path: the part of it logged


class NotALogLine(ValueError):
    pass


@dataclass(frozen=True)
class Login:
    time: str  # UTC ISO, to the microsecond
    account: str
    address: str
    port: int
    auth: str  # "password" or the key's SHA256 fingerprint

    @property
    def moment(self) -> datetime.datetime:
        return datetime.datetime.fromisoformat(self.time)


def _moment(stamp: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(stamp)
    except ValueError:
        raise NotALogLine(f"no time: {text(stamp)!r}") from None
    if moment.tzinfo is None:
        raise NotALogLine(f"a time without its zone: {text(stamp)!r}")
    return moment.astimezone(datetime.UTC)


def parse_login(line: str) -> Login | None:
    """An accepted login from logins.log; None for sshd's other lines."""
    found = _ACCEPTED.match(line)
    if not found:
        return None
    auth = found["fingerprint"] or ("password" if found["method"] != "publickey" else "publickey")
    return Login(_moment(found["time"]).isoformat(), found["account"], found["address"], int(found["port"]), auth)


@dataclass(frozen=True)
class SftpLine:
    moment: datetime.datetime
    account: str  # rsyslog's stamp: the chroot's own socket, not what the line says
    pid: int
    message: str
    uid: str | None = None  # the sender's, as rsyslog had it from the kernel; None: not logged


def parse_sftp(line: str) -> SftpLine | None:
    found = _SFTP.match(line)
    if not found:
        return None
    return SftpLine(_moment(found["time"]), found["account"], int(found["pid"]), found["message"], found["uid"])


def _logged_path(logged: str, after: str) -> tuple[str, bool]:
    """The path in what a cut line logged of `<path><after>...`, and whether it is all there."""
    end = logged.rfind(after)
    return (logged[:end], True) if end >= 0 else (logged, False)


def _same_file(kept: str, logged: str, whole: bool) -> bool:
    """Whether an open file kept (CUT + a cut path's start, or a whole path) may be the one a cut close logged."""
    if kept.startswith(CUT):
        start = kept.removeprefix(CUT)
        return logged.startswith(start) if whole else start.startswith(logged) or logged.startswith(start)
    return kept == logged if whole else kept.startswith(logged)


class Sessions:
    """The SFTP sessions as they open, read, write and close, across runs (`state`)."""

    def __init__(self, context: Context, state: dict[str, Any] | None, upload_folder: str = "upload") -> None:
        state = state or {}
        self.context, self.upload_folder = context, upload_folder
        self.logins = [Login(**login) for login in state.get("logins", [])]
        self.announced: list[tuple[str, int, str]] = [tuple(a) for a in state.get("announced", [])]
        self.open: dict[str, dict[str, Any]] = dict(state.get("open", {}))  # "<account>:<pid>" -> the session
        self.web_sessions = 0  # the web page's own, skipped
        self.cut: list[str] = []  # what was cut of the lines just read (the ingest names them and empties this)
        self.latest: datetime.datetime | None = None

    def announce(self, account: str, port: int, moment: datetime.datetime) -> None:
        """The web page's word that its next login of `account` comes from local `port`."""
        self.announced.append((account, int(port), moment.astimezone(datetime.UTC).isoformat()))
        if len(self.announced) > 2 * MOST_KEPT:
            del self.announced[:-MOST_KEPT]

    def accepted(self, login: Login) -> None:
        self.logins.append(login)
        if len(self.logins) > 2 * MOST_KEPT:  # bounded during a run too, not only in the state kept
            del self.logins[:-MOST_KEPT]
        self._seen(login.moment)

    def _seen(self, moment: datetime.datetime) -> None:
        self.latest = max(self.latest, moment) if self.latest else moment

    def _login_of(self, account: str, address: str, moment: datetime.datetime) -> Login | None:
        """The latest login of the account from that address before the session, taken."""
        candidates = [
            login for login in self.logins
            if login.account == account and login.address == address and login.moment <= moment + CLOCK_SLACK
        ]  # fmt: skip
        if not candidates:
            return None
        login = max(candidates, key=lambda login: login.moment)
        self.logins.remove(login)
        return login

    def _web_page(self, login: Login) -> bool:
        if login.address not in LOOPBACK:
            return False
        for account, port, when in self.announced:
            announced = datetime.datetime.fromisoformat(when)
            before = login.moment - ANNOUNCED_BEFORE <= announced <= login.moment + CLOCK_SLACK
            if account == login.account and port == login.port and before:
                return True
        return False

    def line(self, line: SftpLine, source: str | None = None) -> list[AccessRecord]:
        """The records one sftp.log line makes (a line of a sender not believed never comes here);
        one written before rsyslog logged its sender's uid says so in each record's details."""
        made = self._line(line, source)
        if line.uid is None:
            made = [
                dataclasses.replace(made_one, details={**made_one.details, "uid": "not logged"}) for made_one in made
            ]
        return made

    def _line(self, line: SftpLine, source: str | None) -> list[AccessRecord]:
        self._seen(line.moment)
        key = f"{line.account}:{line.pid}"
        if opened := _OPENED.match(line.message):
            login = self._opened(key, line, opened["address"], source)
            return [login] if login else []
        if _CLOSED.match(line.message):
            ended = self.open.pop(key, None)
            return self._unclosed(ended, line, source) if ended and not ended["web"] else []
        session = self.open.get(key)
        if session is None:  # opened before the log was first read (or let go): not the web page's, as far as known
            if len(self.open) >= 2 * MOST_KEPT:
                self.open = dict(sorted(self.open.items(), key=lambda item: item[1]["time"])[-MOST_KEPT:])
            session = self.open[key] = {"time": line.moment.isoformat(), "address": None, "auth": None, "web": False,
                                        "files": {}}  # fmt: skip
        if session["web"]:
            return []
        file_line = _FILE_LINE.match(line.message)
        if file_line is None:
            return []
        whole = None
        if len(line.message) < LOGGED_CHARS:  # one of LOGGED_CHARS may be cut even where it seems whole
            whole = (_OPEN if file_line["what"] == "open" else _CLOSE).match(line.message)
        if whole is None:
            self.cut.append(f"{file_line['what']} line cut at {len(line.message)} characters: which file is not known")
            if file_line["what"] == "open":
                path, whole_path = _logged_path(file_line["path"], '" flags ')
                # The flags may be cut too: read, as far as known.
                self._keep(session, path if whole_path else CUT + path, "READ")
                return []
            return self._cut_close(session, line, file_line["path"], source)
        if file_line["what"] == "open":
            self._keep(session, whole["path"], whole["flags"])
            return []
        opened_with = self._take(session, whole["path"]) or ""
        details = {"closed": "forced, at the session's end"} if whole["forced"] else {}
        closed = self._closed(session, line, whole["path"], opened_with, int(whole["read"]), int(whole["written"]),
                              source, details)  # fmt: skip
        return [closed] if closed else []

    def _keep(self, session: dict, path: str, flags: str) -> None:
        """A file opened, kept until its close: at most MOST_FILES per session, the oldest dropped and counted."""
        files = session["files"]
        if path not in files and len(files) >= MOST_FILES:
            session["dropped"] = session.get("dropped", 0) + len(files.pop(next(iter(files))))
        kept = files.setdefault(path, [])
        if len(kept) >= MOST_FILES:
            kept.pop(0)
            session["dropped"] = session.get("dropped", 0) + 1
        kept.append(flags)

    @staticmethod
    def _take(session: dict, path: str) -> str | None:
        """The flags of the file's earliest open not yet closed, taken."""
        flags = session["files"].get(path)
        if not flags:
            return None
        opened_with = flags.pop(0)
        if not flags:
            session["files"].pop(path, None)
        return opened_with

    def _cut_close(self, session: dict, line: SftpLine, logged: str, source: str | None) -> list[AccessRecord]:
        """A close whose line was cut: the one open file its logged part names, else each of the account's packages."""
        why = {"log_line": f"cut at {LOGGED_CHARS} characters by OpenSSH's log"}
        logged, whole = _logged_path(logged, '" bytes read ')
        matching = [path for path in session["files"] if _same_file(path, logged, whole)]
        if (len(matching) == 1 and not matching[0].startswith(CUT)) or (not matching and whole):
            path = matching[0] if matching else logged
            flags = (self._take(session, path) or "") if matching else ""
            closed = self._closed(session, line, path, flags, None, None, source, why)
            return [closed] if closed else []
        if matching:  # which of them is not known: one taken, so the session's close does not count it again
            self._take(session, matching[0])
        return self._every_package(
            session, line, source, why | {"log_line": why["log_line"] + ": which file is not known"}
        )

    def _unclosed(self, session: dict, line: SftpLine, source: str | None) -> list[AccessRecord]:
        """The session has closed: what it read without a close logged (its process killed, its line lost) is a
        download of unknown extent; a cut open or a file not kept, of each of the account's packages."""
        made: list[AccessRecord] = []
        unknown = False
        for path, flags in session["files"].items():
            if path.startswith(CUT):
                unknown = True
                continue
            for opened_with in flags:
                if "READ" in opened_with.split(","):
                    closed = self._closed(session, line, path, opened_with, None, 0, source, {"close": "not logged"})
                    made += [closed] if closed else []
        dropped = session.get("dropped", 0)
        if unknown or dropped:
            why: dict[str, Any] = {"close": "not logged"}
            if unknown:
                why["log_line"] = f"an open cut at {LOGGED_CHARS} characters by OpenSSH's log: which file is not known"
            if dropped:
                why["files_not_kept"] = dropped  # more files opened than MOST_FILES: which they were is not known
            made += self._every_package(session, line, source, why)
        return made

    def _point(self, session: dict) -> dict[str, str]:
        point = {"via": "sftp", "address": text(session["address"] or "unknown")}
        if session["auth"]:
            point["auth"] = session["auth"]
        return point

    def _every_package(self, session: dict, line: SftpLine, source: str | None, why: dict) -> list[AccessRecord]:
        """A download of unknown extent of each package of the account (over-attributed rather than silent)."""
        point, actor = self._point(session), self.context.actor_of(line.account)
        packages = self.context.packages(line.account)
        if not packages:
            return [record(self.context, line.moment, "download", line.account, actor, outcome="incomplete",
                           access_point=point, details={"file": "unknown", "bytes": None, **why}, source=source)]  # fmt: skip
        return [
            record(
                self.context,
                line.moment,
                "download",
                line.account,
                actor,
                outcome="incomplete",
                access_point=point,
                patient_ids=manifest.patient_ids,
                study_uids=manifest.study_uids,
                source=source,
                details={
                    "file": f"/{self.context.download_folder}/{text(name)}",
                    "bytes": None,
                    "complete": False,
                    "size": manifest.size,
                    "sha256": manifest.sha256,
                    **why,
                },
            )  # fmt: skip
            for name, manifest in packages.items()
        ]

    def _opened(self, key: str, line: SftpLine, address: str, source: str | None) -> AccessRecord | None:
        login = self._login_of(line.account, address, line.moment)
        web = login is not None and self._web_page(login)
        auth = login.auth if login else None
        self.open[key] = {"time": line.moment.isoformat(), "address": address, "auth": auth, "web": web, "files": {}}
        if web:
            self.web_sessions += 1
            return None
        point = {"via": "sftp", "address": text(address)}
        if auth:
            point["auth"] = auth
        details = {"port": login.port} if login else {"login": "not in logins.log"}
        return record(self.context, line.moment, "sftp-login", line.account, self.context.actor_of(line.account),
                      access_point=point, details=details, source=source)  # fmt: skip

    def _closed(
        self, session: dict, line: SftpLine, path: str, flags: str, read: int | None, written: int | None,
        source: str | None, extra: dict | None = None,
    ) -> AccessRecord | None:  # fmt: skip
        """A file's close; `read`/`written` None: not known (the line was cut, or no close was logged)."""
        # Paths as the client sent them, relative to the chroot's / (internal-sftp -d /).
        where = posixpath.normpath(path if path.startswith("/") else f"/{path}")
        folder, _, name = where.lstrip("/").partition("/")
        point = self._point(session)
        actor = self.context.actor_of(line.account)
        extra = extra or {}
        writing = (written or 0) > 0 or "WRITE" in flags.split(",")
        if writing and not read and (read == 0 or "READ" not in flags.split(",")):
            return record(self.context, line.moment, "upload", line.account, actor, access_point=point,
                          details={"file": text(where), "bytes": written, **extra}, source=source)  # fmt: skip
        if read == 0 and "READ" not in flags.split(","):
            return None  # opened and closed, nothing read or written (a stat of sorts)
        packaged = folder == self.context.download_folder and name and "/" not in name
        manifest = self.context.manifest(line.account, name) if packaged else None
        details: dict[str, Any] = {"file": text(where), "bytes": read}
        if manifest:
            complete = read is not None and read >= manifest.size
            details |= {"complete": complete, "size": manifest.size, "sha256": manifest.sha256}
        complete = read is not None and (manifest is None or read >= manifest.size)
        return record(
            self.context, line.moment, "download", line.account, actor,
            outcome="ok" if complete else "incomplete", access_point=point,
            patient_ids=manifest.patient_ids if manifest else (), study_uids=manifest.study_uids if manifest else (),
            details=details | extra, source=source,
        )  # fmt: skip

    def state(self) -> dict[str, Any]:
        """What the next run needs, without what will never be matched any more."""
        latest = self.latest or datetime.datetime.now(datetime.UTC)
        logins = [vars(login) for login in self.logins if login.moment >= latest - LOGIN_WAIT][-MOST_KEPT:]
        announced = [
            list(a) for a in self.announced if datetime.datetime.fromisoformat(a[2]) >= latest - ANNOUNCED_BEFORE
        ][-MOST_KEPT:]
        kept = {
            key: session for key, session in self.open.items()
            if datetime.datetime.fromisoformat(session["time"]) >= latest - SESSION_KEPT
        }  # fmt: skip
        open_sessions = dict(sorted(kept.items(), key=lambda item: item[1]["time"])[-MOST_KEPT:])
        return {"logins": logins, "announced": announced, "open": open_sessions}
