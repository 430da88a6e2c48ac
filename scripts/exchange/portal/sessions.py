"""Web sessions (each holding its user's SFTP session) and the per-address login limit.

Both live in the memory of the one portal process: a restart logs everybody out, which is
the safe direction. The cookie carries a random session id; nothing else is in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Literal

from exchange.portal.folder_view import FolderView
from exchange.portal.package_view import PackageView
from exchange.portal.sftp import SshLogin


@dataclass
class WebSession:
    id: str
    account: str
    kind: Literal["partner", "link"]
    ip: str
    ssh: SshLogin
    expires: datetime.datetime | None = None  # a link account's end
    agent: str = ""  # the browser's user agent at login (bounded), for the access trail's records
    last_seen: float = field(default_factory=lambda: time.monotonic())  # looked up at each call: a test's clock
    transfers: int = 0  # downloads and uploads in progress
    # What the view page read of studies, by (folder, name): exchange.portal.viewing.
    views: dict[tuple[str, str], PackageView | FolderView] = field(default_factory=dict)
    picture_reads: asyncio.Semaphore | None = None  # made on the event loop (exchange.portal.viewing)
    study_read: asyncio.Lock = field(default_factory=asyncio.Lock)  # one study's reading at a time
    read_ahead: set[tuple[str, int, int]] = field(default_factory=set)  # the files page's last: name, size, mtime

    @contextlib.contextmanager
    def transfer(self) -> Iterator[None]:
        """A download or upload in progress keeps the session from idling out, however long."""
        with self.slot():
            yield

    def slot(self) -> TransferSlot:
        return TransferSlot(self)

    def past_its_end(self) -> bool:
        return self.expires is not None and self.expires <= datetime.datetime.now(datetime.UTC)


class TransferSlot:
    """One download or upload of a session, counted from its start until it is released, once:
    by its end, or when a response body is dropped before it ever ran (weakref.finalize)."""

    def __init__(self, session: WebSession) -> None:
        self.session, self.held = session, True
        session.transfers += 1

    def release(self) -> None:
        if self.held:
            self.held = False
            self.session.transfers -= 1
            self.session.last_seen = time.monotonic()

    def __enter__(self) -> TransferSlot:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class TooManySessions(Exception):
    pass


class TooManyTransfers(Exception):
    pass


class AccountTurns:
    """At most `at_once` of one kind of work per account at a time, over all its sessions; a
    further one waits its turn, in order. For work that holds what every account shares (the
    view page's render workers, its parsing threads): no account can hold all of it, however
    many sessions and requests it opens. An account that holds and awaits no turn is forgotten."""

    def __init__(self, at_once: int) -> None:
        self.at_once = at_once
        self._accounts: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}  # its turns, and how many hold or wait

    def __len__(self) -> int:
        return len(self._accounts)

    @contextlib.asynccontextmanager
    async def turn(self, account: str) -> AsyncIterator[None]:
        turns, users = self._accounts.setdefault(account, (asyncio.Semaphore(self.at_once), [0]))
        users[0] += 1
        try:
            async with turns:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._accounts[account]


class SessionStore:
    """At most `max_sessions` in all and `per_account` for one account, so no account can use up
    the pool (each session holds an SFTP session to sshd) and lock the others out; and at most
    `transfers` downloads and uploads at once per account."""

    def __init__(
        self, idle_seconds: float, max_sessions: int, per_account: int | None = None, transfers: int | None = None
    ) -> None:
        self.idle_seconds = idle_seconds
        self.max_sessions = max_sessions
        self.per_account = per_account or max_sessions
        self.transfers_per_account = transfers or 1 << 30
        self._sessions: dict[str, WebSession] = {}

    def transfer_slot(self, session: WebSession) -> TransferSlot:
        """A place for one more transfer of the session's account, or TooManyTransfers: each
        holds the portal's buffers (and nginx's), so no account may start them without end."""
        running = sum(other.transfers for other in self._sessions.values() if other.account == session.account)
        if running >= self.transfers_per_account:
            raise TooManyTransfers()
        return session.slot()

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, account: str, kind: str, ip: str, ssh: SshLogin, expires=None, agent: str = "") -> WebSession:
        self.close_idle()
        own = [session for session in self._sessions.values() if session.account == account]
        if len(own) >= self.per_account:
            # The account's own least recently used session makes room (a browser lost, a new
            # login); one that is transferring is never cut off.
            quiet = [session for session in own if session.transfers == 0]
            if not quiet:
                ssh.close()
                raise TooManySessions()
            self.close(min(quiet, key=lambda session: session.last_seen).id)
        if len(self._sessions) >= self.max_sessions:
            ssh.close()
            raise TooManySessions()
        session = WebSession(secrets.token_urlsafe(32), account, kind, ip, ssh, expires, agent)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> WebSession | None:
        """The live session for this id, touched; None if unknown, idle too long or its SSH
        connection is gone (account removed, sshd restarted)."""
        session = self._sessions.get(session_id or "")
        if session is None:
            return None
        now = time.monotonic()
        if self._ended(session, now):
            self.close(session.id)
            return None
        session.last_seen = now
        return session

    def holds(self, session: WebSession) -> bool:
        """Whether this session is still open (not touched: work in the background keeps no session alive)."""
        return self._sessions.get(session.id) is session and not session.ssh.connection.is_closed()

    def _ended(self, session: WebSession, now: float) -> bool:
        idle = session.transfers == 0 and now - session.last_seen > self.idle_seconds
        return idle or session.past_its_end() or session.ssh.connection.is_closed()

    def close(self, session_id: str) -> WebSession | None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.ssh.close()
        return session

    def close_idle(self) -> list[WebSession]:
        now = time.monotonic()
        idle = [session for session in self._sessions.values() if self._ended(session, now)]
        for session in idle:
            self.close(session.id)
        return idle

    def close_all(self) -> None:
        for session_id in list(self._sessions):
            self.close(session_id)


class LoginLimit:
    """At most `limit` failed logins per address within `window` seconds. PAM's lockout
    protects each account; this protects against one address trying many accounts."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, ip: str, now: float) -> deque[float]:
        failures = self._failures.get(ip, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            self._failures.pop(ip, None)
        return failures

    def blocked(self, ip: str) -> bool:
        return len(self._recent(ip, time.monotonic())) >= self.limit

    def failed(self, ip: str) -> None:
        now = time.monotonic()
        self._failures.setdefault(ip, self._recent(ip, now)).append(now)
        if len(self._failures) > 10_000:  # bounded memory under a spray of addresses
            for stale in [a for a, f in self._failures.items() if f[-1] <= now - self.window]:
                del self._failures[stale]
