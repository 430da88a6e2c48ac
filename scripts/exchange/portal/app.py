"""The web page: link login, partner login and password change, the two folders, help.

    uvicorn --factory exchange.portal.app:from_host   (roles/portal.py runs it under systemd)

Every form carries a CSRF token that must equal the `exchange_csrf` cookie (double submit;
the cookies are SameSite=Strict as well). Failed logins of any kind get one neutral answer
after the same minimum time, so the page tells nobody whether a link, an account or a
password was wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import mimetypes
import re
import secrets
import time
import weakref
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote

import asyncssh
import jinja2
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from exchange import auditlog, untrusted
from exchange.accounts import Layout
from exchange.links import LinkStore
from exchange.messages import messages_dir, when
from exchange.policy import Policy, load_policy
from exchange.portal import files, multipart
from exchange.portal.config import PortalConfig, load_portal_config
from exchange.portal.sessions import LoginLimit, SessionStore, TooManySessions, TooManyTransfers, WebSession
from exchange.portal.sftp import (
    LoginRefused,
    NewPasswordRejected,
    PasswordExpired,
    ServerUnavailable,
    SshTarget,
    open_session,
)
from exchange.site import LANGUAGES
from exchange.validation import load_yaml

SESSION_COOKIE = "exchange_session"
CSRF_COOKIE = "exchange_csrf"
LANG_COOKIE = "exchange_lang"
FAILURE_FLOOR = 3.0  # seconds every failed login takes, whatever failed: above PAM's own ~2 s failure delay
DRAIN_MAX_BYTES = 64 << 20  # a refused upload's body read on for a clean answer; a bigger one is cut off
FORM_MAX_BYTES = 16 << 10  # a login or logout form; nginx allows no more on the login routes either
USERNAME = r"^[a-z_][a-z0-9_-]{0,31}$"
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",  # a link page's URL holds its token
    "permissions-policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
    "cross-origin-opener-policy": "same-origin",
}


class Portal:
    def __init__(self, config: PortalConfig, policy: Policy) -> None:
        self.config, self.policy = config, policy
        self.layout = Layout(policy)
        self.target = SshTarget(
            config.sshd_host,
            config.sshd_port,
            tuple(Path(p) for p in config.host_key_files),
            tuple(policy.sshd.ciphers),
        )
        portal = policy.portal
        self.sessions = SessionStore(
            portal.idle_minutes * 60,
            portal.max_sessions,
            portal.max_sessions_per_account,
            portal.max_transfers_per_account,
        )
        self.limit = LoginLimit(policy.portal.login_failures_per_ip, policy.portal.login_failure_window_seconds)
        self.links = LinkStore(Path(config.state_dir))  # the portal may read its token index only
        templates = Path(config.templates_dir)
        self.text = load_text(templates / "text.yaml")
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(templates), jinja2.FileSystemLoader(messages_dir())]),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            finalize=untrusted.shown_in_template,  # file names are others': shown escaped, never as controls
        )
        self.env.filters["size"] = human_size
        # The messages' own wording, in the site's time zone (not the server's clock zone).
        self.env.filters["when"] = lambda value, lang: when(value, lang, config.site.zone)
        self.static = templates / "static"

    def check(self) -> None:
        """Every page template compiles and every host key is there (`exchange portal check`)."""
        own = jinja2.FileSystemLoader(self.config.templates_dir).list_templates()
        for name in [n for n in own if n.endswith(".j2")]:
            self.env.get_template(name)
        for path in self.target.host_key_files:
            asyncssh.read_public_key(path)
        if not self.static.is_dir():
            raise OSError(f"{self.static}: no static files")

    # -- rendering -----------------------------------------------------------------------

    def language(self, request: Request) -> str:
        chosen = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE)
        if chosen in LANGUAGES:
            return chosen
        for part in request.headers.get("accept-language", "").split(","):
            tag = part.split(";")[0].strip().lower()[:2]
            if tag in LANGUAGES:
                return tag
        return LANGUAGES[0]

    def page(self, request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        lang = self.language(request)
        csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        html = self.env.get_template(template).render(
            site=self.config.site,
            policy=self.policy,
            portal_host=self.config.site.portal_host,
            lang=lang,
            t=lambda key: self.text[key][lang],
            csrf=csrf,
            path=request.url.path,
            **{"error": None, "notice": None, **context},
        )
        response = HTMLResponse(html, status_code=status)
        if request.cookies.get(CSRF_COOKIE) != csrf:
            set_cookie(response, CSRF_COOKIE, csrf)
        if request.query_params.get("lang") in LANGUAGES:
            set_cookie(response, LANG_COOKIE, lang, max_age=365 * 86400)
        return response

    async def form(self, request: Request) -> dict[str, str] | None:
        """The posted form if its CSRF token matches the cookie, else None. Only small
        url-encoded forms: files come through the upload route, which streams them."""
        small = 0 < int(request.headers.get("content-length") or 0) <= FORM_MAX_BYTES
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not small or kind != "application/x-www-form-urlencoded":
            return None
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return fields if csrf_ok(request, fields.get("csrf")) else None

    # -- login -------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        if self.session(request):
            return RedirectResponse("/files", 303)
        return RedirectResponse("/login", 303)

    async def link_page(self, request: Request) -> Response:
        found = self.links.by_token(request.path_params["token"], now())
        return self.page(request, "link.htm.j2", expires=found[1] if found else None)

    async def link_login(self, request: Request) -> Response:
        started, ip = time.monotonic(), client_ip(request)
        fields = await self.form(request)
        if fields is None:
            return self.page(request, "link.htm.j2", status=403, error="form_expired", expires=None)
        if self.limit.blocked(ip):
            return self.page(request, "link.htm.j2", status=429, error="too_many", expires=None)
        found = self.links.by_token(request.path_params["token"], now())
        if found is None:
            auditlog.record("portal-login-failed", kind="link", account=None, ip=ip, reason="unknown-token")
            return await self.failed(request, "link.htm.j2", started, ip, expires=None)
        account, expires = found
        return await self.login(
            request, started, ip, account, "link", fields.get("password", ""), "link.htm.j2", expires=expires
        )  # on failure the page leaves the expiry out, as for an unknown token

    async def login_page(self, request: Request) -> Response:
        return self.page(request, "login.htm.j2")

    async def partner_login(self, request: Request) -> Response:
        started, ip = time.monotonic(), client_ip(request)
        fields = await self.form(request)
        if fields is None:
            return self.page(request, "login.htm.j2", status=403, error="form_expired")
        if self.limit.blocked(ip):
            return self.page(request, "login.htm.j2", status=429, error="too_many")
        username = fields.get("username", "").strip().lower()
        return await self.login(request, started, ip, username, "partner", fields.get("password", ""), "login.htm.j2")

    async def password_change(self, request: Request) -> Response:
        started, ip = time.monotonic(), client_ip(request)
        fields = await self.form(request)
        if fields is None:
            return self.page(request, "password.htm.j2", status=403, error="form_expired", username="")
        username = fields.get("username", "").strip().lower()
        if self.limit.blocked(ip):
            return self.page(request, "password.htm.j2", status=429, error="too_many", username=username)
        new, again = fields.get("new_password", ""), fields.get("new_password_again", "")
        if new != again or not new:
            return self.page(request, "password.htm.j2", status=400, error="passwords_differ", username=username)
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
            auditlog.record("portal-login-failed", kind=kind, account=None, ip=ip, reason="not-a-partner")
            return await self.failed(request, template, started, ip, **context)
        try:
            ssh = await open_session(self.target, account, password, new_password)
        except PasswordExpired:
            auditlog.record("portal-password-expired", kind=kind, account=account, ip=ip)
            return self.page(request, "password.htm.j2", username=account, notice="password_expired")
        except NewPasswordRejected as rejected:
            auditlog.record("portal-password-rejected", kind=kind, account=account, ip=ip, reasons=rejected.reasons)
            return self.page(
                request, "password.htm.j2", status=400, username=account, error="password_rejected",
                reasons=rejected.reasons,
            )  # fmt: skip
        except LoginRefused:
            auditlog.record("portal-login-failed", kind=kind, account=account, ip=ip, reason="refused")
            return await self.failed(request, template, started, ip, **context)
        except ServerUnavailable as down:
            auditlog.record("portal-unavailable", account=account, ip=ip, reason=str(down))
            return self.page(request, template, status=503, error="unavailable", **context)
        try:
            session = self.sessions.open(account, kind, ip, ssh, expires)
        except TooManySessions:
            return self.page(request, template, status=503, error="busy", **context)
        if ssh.password_changed:
            auditlog.record("portal-password-changed", kind=kind, account=account, ip=ip)
        auditlog.record("portal-login", kind=kind, account=account, ip=ip)
        response = RedirectResponse("/files", 303)
        set_cookie(response, SESSION_COOKIE, session.id)
        set_cookie(response, CSRF_COOKIE, secrets.token_urlsafe(32))  # a fresh token for the session
        return response

    async def failed(self, request: Request, template: str, started: float, ip: str, **context) -> Response:
        """The one neutral answer, never sooner than FAILURE_FLOOR after the attempt began."""
        self.limit.failed(ip)
        await asyncio.sleep(max(0.0, FAILURE_FLOOR - (time.monotonic() - started)))
        return self.page(request, template, status=401, error="login_failed", **context)

    async def logout(self, request: Request) -> Response:
        fields = await self.form(request)
        session = self.session(request)
        if fields is not None and session is not None:
            self.sessions.close(session.id)
            auditlog.record("portal-logout", kind=session.kind, account=session.account, ip=client_ip(request))
        response = self.page(request, "message.htm.j2", notice="logged_out")
        response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return response

    # -- the folders ---------------------------------------------------------------------

    def session(self, request: Request) -> WebSession | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE))

    def folder(self, which: str) -> str:
        accounts = self.policy.accounts
        return "/" + (accounts.download_folder if which == "download" else accounts.upload_folder)

    async def folders(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self.page(request, "message.htm.j2", status=401, error="session_ended")
        try:
            downloads = await files.listing(session.ssh.sftp, self.folder("download"))
            uploads = await files.listing(session.ssh.sftp, self.folder("upload"))
        except (OSError, asyncssh.Error):  # the SSH session broke (account removed, sshd restarted)
            self.sessions.close(session.id)
            return self.page(request, "message.htm.j2", status=401, error="session_ended")
        notices = request.query_params.getlist("uploaded")
        error = request.query_params.get("error")  # set by our own redirects; anything else is ignored
        return self.page(
            request, "files.htm.j2", session=session, downloads=downloads, uploads=uploads, uploaded=notices,
            error=error if f"error_{error}" in self.text else None, quote=quote,
        )  # fmt: skip

    async def download(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self.page(request, "message.htm.j2", status=401, error="session_ended")
        ip = client_ip(request)
        try:
            name = files.check_name(request.path_params["name"])
            path = f"{self.folder('download')}/{name}"
            attrs = await session.ssh.sftp.stat(path)
            if not attrs.type == asyncssh.FILEXFER_TYPE_REGULAR:
                raise files.BadName(name)
        except (files.BadName, asyncssh.SFTPError):
            auditlog.record("portal-download-refused", account=session.account, ip=ip, file=request.path_params["name"])
            return self.page(request, "message.htm.j2", status=404, error="no_such_file")
        size, modified = attrs.size, format_http_date(attrs.mtime)
        # A resumed download continues the same file only (If-Range: the date it started from).
        if_range = request.headers.get("if-range")
        wanted = request.headers.get("range") if if_range in (None, modified) else None
        try:
            span = files.byte_range(wanted, size)
        except files.RangeNotSatisfiable:
            return Response(status_code=416, headers={"content-range": f"bytes */{size}"})
        start, end = span if span else (0, size - 1)
        length = end - start + 1 if size else 0
        headers = {
            "content-length": str(length),
            "accept-ranges": "bytes",
            "content-disposition": f"attachment; filename*=UTF-8''{quote(name)}",
            "last-modified": modified,
        }
        if span:
            headers["content-range"] = f"bytes {start}-{end}/{size}"
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if request.method == "HEAD":  # the headers only: nothing read, nothing downloaded
            return Response(status_code=206 if span else 200, headers=headers, media_type=media_type)
        try:
            slot = self.sessions.transfer_slot(session)  # taken now: a hundred at once cannot all pass
        except TooManyTransfers:
            return self.page(request, "message.htm.j2", status=429, error="too_many_transfers")

        async def body():
            sent = 0
            try:
                if length:
                    async for data in files.read_file(session.ssh.sftp, path, start, length):
                        sent += len(data)
                        yield data
            finally:
                slot.release()
                auditlog.record(
                    "portal-download", account=session.account, ip=ip, file=name, bytes=sent,
                    offset=start, complete=sent == length,
                )  # fmt: skip

        stream = body()
        weakref.finalize(stream, slot.release)  # a body dropped before it ever ran gives its place back
        return StreamingResponse(stream, status_code=206 if span else 200, headers=headers, media_type=media_type)

    async def upload(self, request: Request) -> Response:
        response = await self.receive_upload(request)
        await drain(request)
        return response

    async def receive_upload(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self.page(request, "message.htm.j2", status=401, error="session_ended")
        ip = client_ip(request)
        limit = self.policy.portal.upload_max_mb << 20
        done: list[str] = []

        def back(error: str | None = None) -> Response:
            query = "&".join([f"uploaded={quote(name)}" for name in done] + ([f"error={error}"] if error else []))
            return RedirectResponse("/files" + (f"?{query}" if query else ""), 303)

        if int(request.headers.get("content-length") or 0) > limit + (1 << 20):
            return back("too_large")
        csrf, current, upload = None, None, None
        try:
            slot = self.sessions.transfer_slot(session)
        except TooManyTransfers:
            return back("too_many_transfers")
        try:
            with slot:
                async for event in multipart.parts(request.headers.get("content-type", ""), request.stream()):
                    if isinstance(event, multipart.PartStart):
                        current = event
                        if event.name == "csrf":
                            csrf = ""
                        elif event.name == "file" and event.filename:
                            if not csrf_ok(request, csrf):  # the token field comes first in the form
                                return back("form_expired")
                            name = files.upload_name(event.filename)
                            upload = await files.Upload(session.ssh.sftp, self.folder("upload"), name, limit).start()
                    elif isinstance(event, multipart.PartData):
                        if upload is not None:
                            await upload.write(event.data)
                        elif current is not None and current.name == "csrf" and len(csrf) < 256:
                            csrf += event.data.decode("ascii", "replace")
                    elif upload is not None:  # the end of a file part
                        name = await upload.finish()
                        auditlog.record("portal-upload", account=session.account, ip=ip, file=name, bytes=upload.size)
                        done.append(name)
                        upload = None
        except files.BadName:
            return back("bad_name")
        except files.TooLarge:
            auditlog.record("portal-upload-refused", account=session.account, ip=ip, reason="too-large")
            return back("too_large")
        except multipart.MalformedBody:
            return back("bad_upload")
        except ClientDisconnect:
            auditlog.record("portal-upload-aborted", account=session.account, ip=ip)
            return Response(status_code=400)
        except (OSError, asyncssh.Error) as failure:  # the server refused the write (e.g. disk full)
            auditlog.record("portal-upload-failed", account=session.account, ip=ip, reason=str(failure))
            return back("upload_failed")
        finally:
            if upload is not None:
                await upload.discard()
        return back(None if done else "no_file")

    async def help(self, request: Request) -> Response:
        return self.page(request, f"help.{self.language(request)}.htm.j2")

    async def reap(self) -> None:
        while True:
            await asyncio.sleep(30)
            for session in self.sessions.close_idle():
                auditlog.record("portal-session-ended", kind=session.kind, account=session.account, ip=session.ip)

    def routes(self) -> list:
        return [
            Route("/", self.home),
            Route("/l/{token}", self.link_page, methods=["GET"]),
            Route("/l/{token}", self.link_login, methods=["POST"]),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.partner_login, methods=["POST"]),
            Route("/password", self.password_change, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/files", self.folders, methods=["GET"]),
            Route("/files/download/{name:path}", self.download, methods=["GET"]),
            Route("/files/upload", self.upload, methods=["POST"]),
            Route("/help", self.help, methods=["GET"]),
            Mount("/static", StaticFiles(directory=self.static), name="static"),
        ]


def create_app(config: PortalConfig, policy: Policy) -> Starlette:
    portal = Portal(config, policy)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        reaper = asyncio.create_task(portal.reap())
        yield
        reaper.cancel()
        portal.sessions.close_all()

    app = Starlette(routes=portal.routes(), lifespan=lifespan)
    app.state.portal = portal
    return SecurityHeaders(app)


def from_host() -> SecurityHeaders:
    """The app as systemd runs it: the portal file, the policy and templates on this host."""
    return create_app(load_portal_config(), load_policy().policy)


class SecurityHeaders:
    """Adds the headers above to every response, and no-store to everything but static files
    (pages list patients' files; downloads are patients' files)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                headers.append((b"cache-control", b"public, max-age=3600" if static else b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


# -- small helpers ---------------------------------------------------------------------------


def set_cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict")


async def drain(request: Request, most: int = DRAIN_MAX_BYTES) -> None:
    """Read what is left of a refused request's body (up to `most`), so the answer reaches the
    browser: closing with unread data makes the kernel reset the connection, and nginx then
    shows a 502 instead of the page that says what was wrong."""
    read = 0
    try:
        async for chunk in request.stream():
            read += len(chunk)
            if read > most:
                return
    except (RuntimeError, ClientDisconnect):
        return  # read to its end already, or the browser went away


def csrf_ok(request: Request, posted: str | None) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE)
    return bool(cookie and posted) and secrets.compare_digest(cookie.encode(), posted.encode())


def client_ip(request: Request) -> str:
    # uvicorn runs with --proxy-headers behind nginx: this is the browser's address.
    return request.client.host if request.client else "unknown"


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def load_text(path: Path) -> dict[str, dict[str, str]]:
    """The page texts, one entry per key with every language."""
    text = load_yaml(path.read_text(encoding="utf-8"))
    incomplete = [key for key, value in text.items() if set(value) != set(LANGUAGES)]
    if incomplete:
        raise ValueError(f"{path}: keys without every language ({', '.join(LANGUAGES)}): {', '.join(incomplete)}")
    return text


def human_size(size: int, lang: str = "en") -> str:
    """123.5 MB, in Dutch 123,5 MB."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            text = f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
            return text.replace(".", ",") if lang == "nl" else text
        size /= 1000
    return str(size)


def format_http_date(timestamp: int | None) -> str:
    return formatdate(timestamp or 0, usegmt=True)
