"""Logging in and out: a link's token with its password, a partner's name and password, a
partner's password change; the web session a login starts and logout or idleness ends.

Failed logins of any kind get one neutral answer after the same minimum time, so the page
tells nobody whether a link, an account or a password was wrong.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import time

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from exchange import auditlog, paths
from exchange.layout import Layout
from exchange.links import LinkStore
from exchange.portal.browser import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    client_ip,
    end_cookie,
    new_csrf_token,
    read_form,
    session_of,
    set_cookie,
    user_agent,
)
from exchange.portal.pages import Pages
from exchange.portal.sessions import LoginLimit, SessionStore, TooManySessions
from exchange.portal.sftp import (
    LoginRefused,
    NewPasswordRejected,
    PasswordExpired,
    ServerUnavailable,
    SshTarget,
    open_session,
)

FAILURE_FLOOR = 3.0  # seconds every failed login takes, whatever failed: above PAM's own ~2 s failure delay
USERNAME = paths.UNIX_NAME


class Logins:
    def __init__(
        self,
        pages: Pages,
        sessions: SessionStore,
        limit: LoginLimit,
        links: LinkStore,
        target: SshTarget,
        layout: Layout,
    ) -> None:
        self.pages, self.sessions, self.limit = pages, sessions, limit
        self.links, self.target, self.layout = links, target, layout

    async def home(self, request: Request) -> Response:
        if session_of(request, self.sessions):
            return RedirectResponse("/files", 303)
        return RedirectResponse("/login", 303)

    async def link_page(self, request: Request) -> Response:
        found = self.links.by_token(request.path_params["token"], now())
        return self.pages.page(request, "link.htm.j2", expires=found[1] if found else None)

    async def link_login(self, request: Request) -> Response:
        started, ip = time.monotonic(), client_ip(request)
        fields = await read_form(request)
        if fields is None:
            return self.pages.page(request, "link.htm.j2", status=403, error="form_expired", expires=None)
        if self.limit.blocked(ip):
            return self.pages.page(request, "link.htm.j2", status=429, error="too_many", expires=None)
        found = self.links.by_token(request.path_params["token"], now())
        if found is None:
            auditlog.record(
                "portal-login-failed",
                kind="link",
                account=None,
                ip=ip,
                agent=user_agent(request),
                reason="unknown-token",
            )
            return await self.failed(request, "link.htm.j2", started, ip, expires=None)
        account, expires = found
        return await self.login(
            request, started, ip, account, "link", fields.get("password", ""), "link.htm.j2", expires=expires
        )  # on failure the page leaves the expiry out, as for an unknown token

    async def login_page(self, request: Request) -> Response:
        return self.pages.page(request, "login.htm.j2")

    async def partner_login(self, request: Request) -> Response:
        started, ip = time.monotonic(), client_ip(request)
        fields = await read_form(request)
        if fields is None:
            return self.pages.page(request, "login.htm.j2", status=403, error="form_expired")
        if self.limit.blocked(ip):
            return self.pages.page(request, "login.htm.j2", status=429, error="too_many")
        username = fields.get("username", "").strip().lower()
        return await self.login(request, started, ip, username, "partner", fields.get("password", ""), "login.htm.j2")

    async def password_change(self, request: Request) -> Response:
        started, ip = time.monotonic(), client_ip(request)
        fields = await read_form(request)
        if fields is None:
            return self.pages.page(request, "password.htm.j2", status=403, error="form_expired", username="")
        username = fields.get("username", "").strip().lower()
        if self.limit.blocked(ip):
            return self.pages.page(request, "password.htm.j2", status=429, error="too_many", username=username)
        new, again = fields.get("new_password", ""), fields.get("new_password_again", "")
        if new != again or not new:
            return self.pages.page(request, "password.htm.j2", status=400, error="passwords_differ", username=username)
        return await self.login(
            request, started, ip, username, "partner", fields.get("password", ""), "password.htm.j2",
            new_password=new, username=username,
        )  # fmt: skip

    def is_partner(self, username: str) -> bool:
        return bool(re.match(USERNAME, username)) and self.layout.kind_of(username) == "partner"

    async def login(
        self,
        request: Request,
        started: float,
        ip: str,
        account: str,
        kind: str,
        password: str,
        template: str,
        new_password: str | None = None,
        expires: datetime.datetime | None = None,
        **context,
    ) -> Response:
        if template == "link.htm.j2":
            context["expires"] = None  # every answer below reads the same for any token
        if kind == "partner" and not self.is_partner(account):
            # Only partners log in by name; nobody else's name reaches sshd from here.
            auditlog.record(
                "portal-login-failed", kind=kind, account=None, ip=ip, agent=user_agent(request), reason="not-a-partner"
            )
            return await self.failed(request, template, started, ip, **context)
        try:
            ssh = await open_session(self.target, account, password, new_password)
        except PasswordExpired:
            auditlog.record("portal-password-expired", kind=kind, account=account, ip=ip)
            return self.pages.page(request, "password.htm.j2", username=account, notice="password_expired")
        except NewPasswordRejected as rejected:
            auditlog.record("portal-password-rejected", kind=kind, account=account, ip=ip, reasons=rejected.reasons)
            return self.pages.page(
                request, "password.htm.j2", status=400, username=account, error="password_rejected",
                reasons=rejected.reasons,
            )  # fmt: skip
        except LoginRefused:
            auditlog.record(
                "portal-login-failed", kind=kind, account=account, ip=ip, agent=user_agent(request), reason="refused"
            )
            return await self.failed(request, template, started, ip, **context)
        except ServerUnavailable as down:
            auditlog.record("portal-unavailable", account=account, ip=ip, reason=str(down))
            return self.pages.page(request, template, status=503, error="unavailable", **context)
        try:
            session = self.sessions.open(account, kind, ip, ssh, expires, agent=user_agent(request))
        except TooManySessions:
            return self.pages.page(request, template, status=503, error="busy", **context)
        if ssh.password_changed:
            auditlog.record("portal-password-changed", kind=kind, account=account, ip=ip)
        auditlog.record("portal-login", kind=kind, account=account, ip=ip, agent=session.agent)
        response = RedirectResponse("/files", 303)
        set_cookie(response, SESSION_COOKIE, session.id)
        set_cookie(response, CSRF_COOKIE, new_csrf_token())  # a fresh token for the session
        return response

    async def failed(self, request: Request, template: str, started: float, ip: str, **context) -> Response:
        """The one neutral answer, never sooner than FAILURE_FLOOR after the attempt began."""
        self.limit.failed(ip)
        await asyncio.sleep(max(0.0, FAILURE_FLOOR - (time.monotonic() - started)))
        return self.pages.page(request, template, status=401, error="login_failed", **context)

    async def logout(self, request: Request) -> Response:
        fields = await read_form(request)
        session = session_of(request, self.sessions)
        if fields is not None and session is not None:
            self.sessions.close(session.id)
            auditlog.record("portal-logout", kind=session.kind, account=session.account, ip=client_ip(request))
        response = self.pages.message(request, notice="logged_out")
        end_cookie(response, SESSION_COOKIE)
        return response


async def reap(sessions: SessionStore) -> None:
    """End idle sessions and those of links past their end, every 30 seconds, for as long as the app runs."""
    while True:
        await asyncio.sleep(30)
        for session in sessions.close_idle():
            auditlog.record("portal-session-ended", kind=session.kind, account=session.account, ip=session.ip)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
