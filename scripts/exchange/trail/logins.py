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
"""

from __future__ import annotations

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

_ACCEPTED = re.compile(
    r"^(?P<time>\S+) sshd(?:-session)?\[\d+\]: ?Accepted (?P<method>[\w/-]+) for (?P<account>\S+) from (?P<address>\S+) "
    r"port (?P<port>\d+) ssh2(?:: (?P<key>\S+) (?P<fingerprint>SHA256:[A-Za-z0-9+/=]+))?"
)
_SFTP = re.compile(r"^(?P<time>\S+) account=(?P<account>\S+) internal-sftp\[(?P<pid>\d+)\]: ?(?P<message>.*)$")
_OPENED = re.compile(r"^session opened for local user \S+ from \[(?P<address>[^\]]*)\]")
_CLOSED = re.compile(r"^session closed for local user ")
_OPEN = re.compile(r'^open "(?P<path>.*)" flags (?P<flags>\S+) mode \d+$')
_CLOSE = re.compile(r'^close "(?P<path>.*)" bytes read (?P<read>\d+) written (?P<written>\d+)$')


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


def parse_sftp(line: str) -> SftpLine | None:
    found = _SFTP.match(line)
    if not found:
        return None
    return SftpLine(_moment(found["time"]), found["account"], int(found["pid"]), found["message"])


class Sessions:
    """The SFTP sessions as they open, read, write and close, across runs (`state`)."""

    def __init__(self, context: Context, state: dict[str, Any] | None, upload_folder: str = "upload") -> None:
        state = state or {}
        self.context, self.upload_folder = context, upload_folder
        self.logins = [Login(**login) for login in state.get("logins", [])]
        self.announced: list[tuple[str, int, str]] = [tuple(a) for a in state.get("announced", [])]
        self.open: dict[str, dict[str, Any]] = dict(state.get("open", {}))  # "<account>:<pid>" -> the session
        self.web_sessions = 0  # the web page's own, skipped
        self.latest: datetime.datetime | None = None

    def announce(self, account: str, port: int, moment: datetime.datetime) -> None:
        """The web page's word that its next login of `account` comes from local `port`."""
        self.announced.append((account, int(port), moment.astimezone(datetime.UTC).isoformat()))

    def accepted(self, login: Login) -> None:
        self.logins.append(login)
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

    def line(self, line: SftpLine, source: str | None = None) -> AccessRecord | None:
        """The record one sftp.log line makes, if any."""
        self._seen(line.moment)
        key = f"{line.account}:{line.pid}"
        if opened := _OPENED.match(line.message):
            return self._opened(key, line, opened["address"], source)
        if _CLOSED.match(line.message):
            self.open.pop(key, None)
            return None
        session = self.open.get(key)
        if session is None:  # opened before the log was first read (or let go): not the web page's, as far as known
            session = self.open[key] = {"time": line.moment.isoformat(), "address": None, "auth": None, "web": False,
                                        "files": {}}  # fmt: skip
        if session["web"]:
            return None
        if found := _OPEN.match(line.message):
            session["files"].setdefault(found["path"], []).append(found["flags"])
            return None
        if found := _CLOSE.match(line.message):
            flags = session["files"].get(found["path"]) or [""]
            opened_with = flags.pop(0)
            if not flags:
                session["files"].pop(found["path"], None)
            return self._closed(session, line, found["path"], opened_with, int(found["read"]),
                                int(found["written"]), source)  # fmt: skip
        return None

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
        self, session: dict, line: SftpLine, path: str, flags: str, read: int, written: int, source: str | None
    ) -> AccessRecord | None:
        # Paths as the client sent them, relative to the chroot's / (internal-sftp -d /).
        where = posixpath.normpath(path if path.startswith("/") else f"/{path}")
        folder, _, name = where.lstrip("/").partition("/")
        point = {"via": "sftp", "address": text(session["address"] or "unknown")}
        if session["auth"]:
            point["auth"] = session["auth"]
        actor = self.context.actor_of(line.account)
        writing = written > 0 or "WRITE" in flags.split(",")
        if writing and not read:
            return record(self.context, line.moment, "upload", line.account, actor, access_point=point,
                          details={"file": text(where), "bytes": written}, source=source)  # fmt: skip
        if not read and "READ" not in flags.split(","):
            return None  # opened and closed, nothing read or written (a stat of sorts)
        packaged = folder == self.context.download_folder and name and "/" not in name
        manifest = self.context.manifest(line.account, name) if packaged else None
        details: dict[str, Any] = {"file": text(where), "bytes": read}
        if manifest:
            details |= {"complete": read >= manifest.size, "size": manifest.size, "sha256": manifest.sha256}
        return record(
            self.context, line.moment, "download", line.account, actor,
            outcome="incomplete" if manifest and read < manifest.size else "ok", access_point=point,
            patient_ids=manifest.patient_ids if manifest else (), study_uids=manifest.study_uids if manifest else (),
            details=details, source=source,
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
