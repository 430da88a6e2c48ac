"""The view page: a study package in the download folder shown before it is downloaded, with
the package's own stack viewer (templates/viewer), its pictures read out of the zip through the
session's SFTP (exchange.portal.package_view).

    /files/view/NAME             the package's series, a preview each
    /files/view/NAME?series=N    one series as a stack to page through
    /files/picture/N/M/NAME      the M-th picture of series N (a JPEG)

Every reading of a package is an audit record, as a download is: a page's record (portal-view)
names the package and the series shown, and covers the pictures on it, which the session then
reads from the package's directory it keeps (at most VIEWS_PER_SESSION); a picture asked for
when that directory is not kept reads it again, and that reading is a record too.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import asyncssh
from starlette.requests import Request
from starlette.responses import Response

from exchange import auditlog
from exchange.portal import files
from exchange.portal.browser import client_ip, session_of
from exchange.portal.package_view import NotViewable, PackageView, open_package, read_picture
from exchange.portal.pages import Pages
from exchange.portal.sessions import SessionStore, WebSession

VIEWS_PER_SESSION = 2  # package directories kept per session: the one open, and the one before
PICTURE_READS_PER_SESSION = 4  # a page asks for its pictures all at once: they wait their turn, not the others


class Viewing:
    def __init__(self, pages: Pages, sessions: SessionStore, download_folder: str) -> None:
        self.pages, self.sessions, self.folder = pages, sessions, download_folder

    async def view(self, request: Request) -> Response:
        session = session_of(request, self.sessions)
        if session is None:
            return self.pages.message(request, status=401, error="session_ended")
        ip, asked = client_ip(request), request.path_params["name"]
        try:
            name = files.check_name(asked)
            view = await self._package(session, name, fresh=True)
        except (files.BadName, asyncssh.SFTPError):
            auditlog.record("portal-view-refused", account=session.account, ip=ip, file=asked, reason="no such file")
            return self.pages.message(request, status=404, error="no_such_file")
        except NotViewable as why:
            auditlog.record("portal-view-refused", account=session.account, ip=ip, file=name, reason=str(why))
            return self.pages.page(
                request, "view.htm.j2", session=session, name=name, quote=quote, view=None, series=None, why=str(why)
            )
        except (OSError, asyncssh.Error):  # the SSH session broke
            self.sessions.close(session.id)
            return self.pages.message(request, status=401, error="session_ended")
        number = _number(request.query_params.get("series"))
        series = view.series[number - 1] if number and number <= len(view.series) else None
        if request.query_params.get("series") is not None and series is None:
            return self.pages.message(request, status=404, error="no_such_series")
        shown = len(series.pictures) if series else len(view.series)
        auditlog.record(
            "portal-view", account=session.account, ip=ip, file=name, series=number, pictures=shown, by="page"
        )
        return self.pages.page(
            request, "view.htm.j2", session=session, name=name, quote=quote, view=view, series=series, why=None
        )

    async def picture(self, request: Request) -> Response:
        session = session_of(request, self.sessions)
        if session is None:
            return Response(status_code=401)
        ip, asked = client_ip(request), request.path_params["name"]
        number, index = request.path_params["series"], request.path_params["index"]
        try:
            name = files.check_name(asked)
            async with _reads(session):
                for fresh in (False, True):  # once more if the package under this name was replaced
                    view = await self._package(session, name, fresh, ip=ip, series=number)
                    entry = view.picture(number, index)
                    if entry is None:
                        return Response(status_code=404)
                    data = await read_picture(session.ssh.sftp, self._path(name), view, entry)
                    if data is not None:
                        return Response(data, media_type="image/jpeg")
                    session.views.pop(name, None)
        except (files.BadName, asyncssh.SFTPError, NotViewable) as why:
            auditlog.record(
                "portal-view-refused", account=session.account, ip=ip, file=asked, reason=str(why) or "bad name"
            )
            return Response(status_code=404)
        except (OSError, asyncssh.Error):
            self.sessions.close(session.id)
            return Response(status_code=401)
        return Response(status_code=404)  # replaced twice while asked for: no answer to give

    def _path(self, name: str) -> str:
        return f"{self.folder}/{name}"

    async def _package(self, session: WebSession, name: str, fresh: bool, **record) -> PackageView:
        """The session's kept view of the package, if it is still the same file (fresh: checked
        by a stat), else read anew (and, when `record` says for whom, recorded)."""
        kept, attrs = session.views.get(name), None
        if kept is not None and fresh:
            attrs = await session.ssh.sftp.stat(self._path(name))
            kept = kept if kept.same_file(attrs) else None
        if kept is not None:
            session.views[name] = session.views.pop(name)  # the most recently used last
            return kept
        attrs = attrs or await session.ssh.sftp.stat(self._path(name))
        if attrs.type != asyncssh.FILEXFER_TYPE_REGULAR:
            raise NotViewable("it is no file")
        view = await open_package(session.ssh.sftp, self._path(name), name)
        if record:
            auditlog.record(
                "portal-view", account=session.account, ip=record["ip"], file=name, series=record["series"],
                pictures=None, by="picture",
            )  # fmt: skip
        session.views[name] = view
        while len(session.views) > VIEWS_PER_SESSION:
            session.views.pop(next(iter(session.views)))
        return view


def _reads(session: WebSession) -> asyncio.Semaphore:
    if session.picture_reads is None:
        session.picture_reads = asyncio.Semaphore(PICTURE_READS_PER_SESSION)
    return session.picture_reads


def _number(value: str | None) -> int | None:
    return int(value) if value is not None and value.isascii() and value.isdigit() and len(value) < 7 else None
