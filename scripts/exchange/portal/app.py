"""The web page: link login, partner login and password change, the two folders, the view page
of a study package, help, and the site's logo and colour.

    uvicorn --factory exchange.portal.app:from_host   (roles/portal.py runs it under systemd)

Here the parts are made once and handed to the routes that use them: the pages
(exchange.portal.pages), the logins (login), the folders (transfer), the view page (viewing), and the security
headers around it all (headers).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import asyncssh
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from exchange import templates as package_templates
from exchange.layout import Layout
from exchange.links import LinkStore
from exchange.policy import Policy, load_policy
from exchange.portal import transfer
from exchange.portal.config import PortalConfig, load_portal_config
from exchange.portal.headers import SecurityHeaders
from exchange.portal.login import Logins, reap
from exchange.portal.pages import Pages
from exchange.portal.sessions import LoginLimit, SessionStore
from exchange.portal.sftp import SshTarget
from exchange.portal.transfer import Transfers
from exchange.portal.viewing import Viewing


class Portal:
    def __init__(self, config: PortalConfig, policy: Policy) -> None:
        self.config, self.policy = config, policy
        self.target = SshTarget(
            config.sshd_host,
            config.sshd_port,
            tuple(Path(p) for p in config.host_key_files),
            tuple(policy.sshd.ciphers),
        )
        portal = policy.portal
        # One store for both: a login opens the session that the folders' routes then use.
        self.sessions = SessionStore(
            portal.idle_minutes * 60,
            portal.max_sessions,
            portal.max_sessions_per_account,
            portal.max_transfers_per_account,
        )
        self.pages = Pages(config, policy)
        self.logins = Logins(
            self.pages,
            self.sessions,
            LoginLimit(portal.login_failures_per_ip, portal.login_failure_window_seconds),
            LinkStore(Path(config.state_dir)),  # the portal may read its token index only
            self.target,
            Layout(policy),
        )
        folders = {which: transfer.folder(policy, which) for which in ("download", "upload")}
        self.viewing = Viewing(self.pages, self.sessions, folders, policy.accounts.max_folder_depth)
        self.transfers = Transfers(self.pages, self.sessions, policy, listed=self.viewing.read_ahead)

    def check(self) -> None:
        """Every page template compiles and every host key is there (`exchange portal check`)."""
        self.pages.check_templates()
        for path in self.target.host_key_files:
            asyncssh.read_public_key(path)
        self.pages.check_static()

    def page(self, request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        return self.pages.page(request, template, status, **context)

    def routes(self) -> list:
        logins, transfers = self.logins, self.transfers
        return [
            Route("/", logins.home),
            Route("/l/{token}", logins.link_page, methods=["GET"]),
            Route("/l/{token}", logins.link_login, methods=["POST"]),
            Route("/login", logins.login_page, methods=["GET"]),
            Route("/login", logins.partner_login, methods=["POST"]),
            Route("/password", logins.password_change, methods=["POST"]),
            Route("/logout", logins.logout, methods=["POST"]),
            Route("/files", transfers.folders, methods=["GET"]),
            Route("/files/download/{name:path}", transfers.download, methods=["GET"]),
            Route("/files/upload", transfers.upload, methods=["POST"]),
            Route("/files/view/{folder}/{name:path}", self.viewing.view, methods=["GET"]),
            Route(
                "/files/picture/{folder}/{series:int}/{index:int}/{name:path}", self.viewing.picture, methods=["GET"]
            ),
            Route("/help", self.pages.help, methods=["GET"]),
            Route("/brand/logo", self.pages.brand.logo_file, methods=["GET"]),
            Route("/brand/accent.css", self.pages.brand.accent_css, methods=["GET"]),
            Mount("/static/viewer", StaticFiles(directory=package_templates.VIEWER), name="viewer"),
            Mount("/static", StaticFiles(directory=self.pages.static), name="static"),
        ]


def create_app(config: PortalConfig, policy: Policy) -> SecurityHeaders:
    portal = Portal(config, policy)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        reaper = asyncio.create_task(reap(portal.sessions))
        yield
        reaper.cancel()
        portal.sessions.close_all()
        await portal.viewing.close()

    app = Starlette(routes=portal.routes(), lifespan=lifespan)
    app.state.portal = portal
    return SecurityHeaders(app)


def from_host() -> SecurityHeaders:
    """The app as systemd runs it: the portal file, the policy and templates on this host."""
    return create_app(load_portal_config(), load_policy().policy)
