"""What the portal keeps in the browser and reads from its requests.

Three cookies, each Secure, HttpOnly and SameSite=Strict: the session id, the CSRF token and
the chosen language. Every form carries a CSRF token that must equal the `exchange_csrf`
cookie (double submit; SameSite=Strict guards as well).
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import Response

from exchange import untrusted
from exchange.portal.sessions import SessionStore, WebSession

SESSION_COOKIE = "exchange_session"
CSRF_COOKIE = "exchange_csrf"
LANG_COOKIE = "exchange_lang"
FORM_MAX_BYTES = 16 << 10  # a login or logout form; nginx allows no more on the login routes either


def set_cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict")


def end_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="strict")


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(request: Request, posted: str | None) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE)
    return bool(cookie and posted) and secrets.compare_digest(cookie.encode(), posted.encode())


async def read_form(request: Request) -> dict[str, str] | None:
    """The posted form if its CSRF token matches the cookie, else None. Only small
    url-encoded forms: files come through the upload route, which streams them."""
    small = 0 < int(request.headers.get("content-length") or 0) <= FORM_MAX_BYTES
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not small or kind != "application/x-www-form-urlencoded":
        return None
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return fields if csrf_ok(request, fields.get("csrf")) else None


def session_of(request: Request, sessions: SessionStore) -> WebSession | None:
    return sessions.get(request.cookies.get(SESSION_COOKIE))


def user_agent(request: Request) -> str:
    """The browser's own name for itself, for the access trail: what it says, bounded, never interpreted."""
    return untrusted.cut(request.headers.get("user-agent", ""))


def client_ip(request: Request) -> str:
    # uvicorn runs with --proxy-headers behind nginx: this is the browser's address.
    return request.client.host if request.client else "unknown"
