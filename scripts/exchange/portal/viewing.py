"""The view page: a study shown before it is downloaded, with the package's own stack viewer
(templates/viewer). A study package (a zip in either folder) shows the preview pictures it
carries, read out of the zip through the session's SFTP (exchange.portal.package_view); a
folder of DICOM files shows pictures rendered from its files when asked for
(exchange.portal.folder_view).

    /files/view/FOLDER/NAME             the study's series, a preview each (FOLDER: download or upload)
    /files/view/FOLDER/NAME?series=N    one series as a stack to page through
    /files/picture/FOLDER/N/M/NAME      the M-th picture of series N (a JPEG)

Every reading of a study is an audit record, as a download is: a page's record (portal-view)
names the file or folder and the series shown, and covers the pictures on it, which the session
then reads with the study's directory it keeps (at most VIEWS_PER_SESSION); a picture asked for
when that directory is not kept reads it again, and that reading is a record too; a picture no
record covers names its series in one more, once per series.

A package's page carries the picture it shows first (a data: URL), so it shows with the page;
the files page reads the newest package's directory ahead (READ_AHEAD), which the view page
that follows uses once the file is checked to be the same. Neither shows anything by itself:
the page's record is the one.

What every account shares is held to a share per account: a session reads one study at a time
(its other requests for it wait and use what it read), an account STUDY_READS_PER_ACCOUNT over
all its sessions (the parsing threads, exchange.portal.study_view), and RENDERS_PER_ACCOUNT
pictures of a folder at a time (the render workers, exchange.portal.rendering).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from urllib.parse import quote

import asyncssh
import markupsafe
from starlette.requests import Request
from starlette.responses import Response

from exchange import auditlog, untrusted
from exchange.portal import files, folder_view, package_view
from exchange.portal.browser import client_ip, session_of
from exchange.portal.folder_view import FolderView
from exchange.portal.package_view import PackageView
from exchange.portal.pages import Pages
from exchange.portal.rendering import Renderer
from exchange.portal.sessions import AccountTurns, SessionStore, WebSession
from exchange.portal.study_view import NotViewable, SeriesStack

VIEWS_PER_SESSION = 2  # studies' directories kept per session: the one open, and the one before
# The files page reads the directory of the download folder's newest package in the background
# (what a patient opens next is its View): the view page then shows at once (bench/portal_view.py).
# One, so the view the session is on stays kept beside it.
READ_AHEAD = 1
PICTURE_READS_PER_SESSION = 4  # a page asks for its pictures all at once: they wait their turn, not the others
# Fewer than there are parsing threads (study_view.PARSING_THREADS) and render workers
# (rendering.RENDER_WORKERS): one account never holds them all.
STUDY_READS_PER_ACCOUNT = 1
RENDERS_PER_ACCOUNT = 1
# A package's page carries the picture a patient sees first in itself (a data: URL): it shows with
# the page, not after a second request (bench/portal_view.py). A 512 px preview is about 30 KB.
INLINE_MOST = 256 << 10

View = PackageView | FolderView


def seen_patients(view: View, series: int | None) -> list[str]:
    """The patient IDs a view showed (one series, or the overview's all), for the access trail:
    as the sender's files name them, bounded."""
    shown = view.series if series is None else view.series[series - 1 : series]
    return sorted({untrusted.cut(one.texts.get("patient_id") or "") for one in shown} - {""})[:100]


class Viewing:
    def __init__(self, pages: Pages, sessions: SessionStore, folders: dict[str, str], max_depth: int) -> None:
        self.pages, self.sessions, self.folders, self.max_depth = pages, sessions, folders, max_depth
        self.renderer = Renderer()
        self.study_reads, self.renders = AccountTurns(STUDY_READS_PER_ACCOUNT), AccountTurns(RENDERS_PER_ACCOUNT)
        self.reading_ahead: dict[str, asyncio.Task] = {}  # by session id: one at a time

    def read_ahead(self, session: WebSession, downloads: list[files.Listed]) -> None:
        """After the files page: the download folder's newest package (as listed, newest first),
        if the session does not hold it, read in the background with the same turns as a view
        page's (one study read per session and per account at a time). A view page asked for
        meanwhile waits for it and uses what it read, once its own stat says it is still that
        file; nothing is shown, so nothing is recorded until a page shows it. One read-ahead
        per session at a time, none for a closed session, and a file read ahead before (one
        that is not viewable, or a view since dropped) not again."""
        if session.id in self.reading_ahead:
            return
        newest = [one for one in downloads if not one.folder and one.name.lower().endswith(".zip")][:READ_AHEAD]
        tried, session.read_ahead = session.read_ahead, {(one.name, one.size, one.mtime) for one in newest}
        wanted = [one for one in newest if not _holds(session, one) and (one.name, one.size, one.mtime) not in tried]
        if wanted:
            task = asyncio.create_task(self._read_ahead(session, wanted))
            self.reading_ahead[session.id] = task
            task.add_done_callback(lambda done: self._read_ahead_done(session.id, done))

    def _read_ahead_done(self, session_id: str, task: asyncio.Task) -> None:
        self.reading_ahead.pop(session_id, None)
        if not task.cancelled() and task.exception() is not None:  # a fault of ours: said, never silent
            logging.getLogger(__name__).warning("reading ahead failed", exc_info=task.exception())

    async def _read_ahead(self, session: WebSession, wanted: list[files.Listed]) -> None:
        for listed in wanted:
            if not self.sessions.holds(session):  # logged out or ended meanwhile
                return
            if _holds(session, listed):  # a view page read it meanwhile
                continue
            session.views.pop(("download", listed.name), None)  # what it holds under this name is another file's
            try:
                await self._study(session, "download", files.check_name(listed.name), fresh=False)
            except (files.BadName, NotViewable, OSError, asyncssh.Error):
                continue  # the view page, if asked for, reads it again and says why

    async def view(self, request: Request) -> Response:
        session = session_of(request, self.sessions)
        if session is None:
            return self.pages.message(request, status=401, error="session_ended")
        ip, which, asked = client_ip(request), request.path_params["folder"], request.path_params["name"]
        page = {"session": session, "quote": quote, "folder": which, "view": None, "series": None, "why": None,
                "package": False, "inline": {}}  # fmt: skip
        asked_series = request.query_params.get("series")
        try:
            name = files.check_name(asked)
            view, series, inline = await self._shown(session, which, name, asked_series)
        except (files.BadName, KeyError, asyncssh.SFTPError):
            auditlog.record("portal-view-refused", account=session.account, ip=ip, file=asked, reason="no such file")
            return self.pages.message(request, status=404, error="no_such_file")
        except NotViewable as why:
            auditlog.record("portal-view-refused", account=session.account, ip=ip, file=name, reason=str(why))
            return self.pages.page(request, "view.htm.j2", **{**page, "why": str(why)}, name=name)
        except (OSError, asyncssh.Error):  # the SSH session broke
            self.sessions.close(session.id)
            return self.pages.message(request, status=401, error="session_ended")
        if asked_series is not None and series is None:
            return self.pages.message(request, status=404, error="no_such_series")
        number, shown = (series.number, len(series.pictures)) if series else (None, len(view.series))
        auditlog.record(
            "portal-view", account=session.account, ip=ip, agent=session.agent, folder=which, file=name, series=number,
            pictures=shown, patient_ids=seen_patients(view, number), by="page",
        )  # fmt: skip
        view.recorded.add(number)
        shown_page = {
            **page,
            "view": view,
            "series": series,
            "package": isinstance(view, PackageView),
            "inline": inline,
        }
        return self.pages.page(request, "view.htm.j2", **shown_page, name=name)

    async def picture(self, request: Request) -> Response:
        session = session_of(request, self.sessions)
        if session is None:
            return Response(status_code=401)
        ip, which, asked = client_ip(request), request.path_params["folder"], request.path_params["name"]
        number, index = request.path_params["series"], request.path_params["index"]
        try:
            name = files.check_name(asked)
            async with _reads(session):
                for fresh in (False, True):  # once more if what is under this name was replaced
                    view = await self._study(session, which, name, fresh, record={"ip": ip, "series": number})
                    found = await self._picture(session, which, name, view, number, index)
                    if isinstance(found, Response):
                        if found.status_code == 200:
                            self._covered(session, ip, which, name, view, number, index)
                        return found
                    session.views.pop((which, name), None)
        except (files.BadName, KeyError, asyncssh.SFTPError, NotViewable) as why:
            reason = str(why) if isinstance(why, NotViewable) else "no such file"
            auditlog.record("portal-view-refused", account=session.account, ip=ip, file=asked, reason=reason)
            return Response(status_code=404)
        except (OSError, asyncssh.Error):
            self.sessions.close(session.id)
            return Response(status_code=401)
        return Response(status_code=404)  # replaced twice while asked for: no answer to give

    async def _picture(
        self, session: WebSession, which: str, name: str, view: View, number: int, index: int
    ) -> Response | None:
        """The picture's answer, or None when the file under `name` is no longer the one `view` was made of."""
        sftp, path = session.ssh.sftp, self._path(which, name)
        if isinstance(view, PackageView):
            entry = view.picture(number, index)
            if entry is None:
                return Response(status_code=404)
            data = await package_view.read_picture(sftp, path, view, entry)
            return None if data is None else Response(data, media_type="image/jpeg")
        found = view.picture(number, index)
        if found is None:
            return Response(status_code=404)
        file, frame = found
        # The account's turn first: only then is the file opened, and read a piece at a time.
        async with self.renders.turn(session.account), folder_view.opened(sftp, f"{path}/{file.path}", file) as handle:
            if handle is None:
                return None
            chunks = folder_view.chunks(handle, file)
            rendered = await self.renderer.render(chunks, file.size, file.transfer_syntax, frame)
        if isinstance(rendered, str):  # it cannot be shown: the image's place says so by its alt text
            return Response(rendered, status_code=422, media_type="text/plain")
        return Response(rendered, media_type="image/jpeg")

    async def _shown(
        self, session: WebSession, which: str, name: str, asked_series: str | None
    ) -> tuple[View, SeriesStack | None, dict[tuple[int, int], markupsafe.Markup]]:
        """The study's view as it is now under `name`, the series asked for (None: the
        overview, or no such series: nothing more is read) and the picture its page carries. A
        package the session holds is checked by that picture's own read (the file's stat asked
        with it: a round trip less), or by a stat when the page carries none; a file found to be
        another now (also one replaced just after it was read) is read anew."""
        held = isinstance(session.views.get((which, name)), PackageView)
        view, series, inline, same = await self._page(session, which, name, asked_series, fresh=not held)
        if held and same is None:
            same = view.same_file(await session.ssh.sftp.stat(self._path(which, name)))
        if same is False:
            session.views.pop((which, name), None)
            view, series, inline, _ = await self._page(session, which, name, asked_series, fresh=True)
        return view, series, inline

    async def _page(
        self, session: WebSession, which: str, name: str, asked_series: str | None, fresh: bool
    ) -> tuple[View, SeriesStack | None, dict[tuple[int, int], markupsafe.Markup], bool | None]:
        """What _shown shows, once, and whether the file is still the view's (_first_picture)."""
        view = await self._study(session, which, name, fresh)
        number = _number(asked_series)
        series = view.series[number - 1] if number and number <= len(view.series) else None
        if asked_series is not None and series is None:
            return view, None, {}, None  # no such series: no picture to read
        return view, series, *await self._first_picture(session, which, name, view, series)

    async def _first_picture(
        self, session: WebSession, which: str, name: str, view: View, series: SeriesStack | None
    ) -> tuple[dict[tuple[int, int], markupsafe.Markup], bool | None]:
        """The picture a package's page shows first, as a data: URL by (series, index): the
        overview's first preview (the first series with pictures, its middle one), a series'
        first picture; covered by the page's own record. Nothing when it cannot be read now
        (the picture's own URL then says why) and for a folder (rendered only when asked for).
        And whether the file is still the view's: None when nothing was read."""
        shown = [series] if series else [one for one in view.series if one.pictures][:1]
        if not isinstance(view, PackageView) or not shown or not shown[0].pictures:
            return {}, None
        first = (shown[0].number, 1 if series else shown[0].middle)
        entry = view.picture(*first)
        if entry is None or entry.file_size > INLINE_MOST:
            return {}, None
        try:
            async with _reads(session):  # a picture read as the others: in the session's turn
                data = await package_view.read_picture(session.ssh.sftp, self._path(which, name), view, entry)
        except NotViewable:  # the view's file (read_picture checks that first), its picture damaged
            return {}, True
        except (OSError, asyncssh.Error):  # gone, or the session broke: a stat says which
            return {}, None
        if data is None:
            return {}, False
        # Markup: base64 holds no character HTML escapes, and 75 kB need no scan for them on every page.
        encoded = markupsafe.Markup("data:image/jpeg;base64," + base64.b64encode(data).decode("ascii"))
        return {first: encoded}, True

    def _covered(
        self, session: WebSession, ip: str, which: str, name: str, view: View, number: int, index: int
    ) -> None:
        """A picture served that no record covers (neither its series' page nor the overview's
        picture of it) names its series in a record: once per series and kept view."""
        if number in view.recorded or (None in view.recorded and index == view.series[number - 1].middle):
            return
        view.recorded.add(number)
        auditlog.record(
            "portal-view", account=session.account, ip=ip, agent=session.agent, folder=which, file=name, series=number,
            pictures=None, patient_ids=seen_patients(view, number), by="picture",
        )  # fmt: skip

    def _path(self, which: str, name: str) -> str:
        return f"{self.folders[which]}/{name}"  # KeyError: no such folder

    async def _study(self, session: WebSession, which: str, name: str, fresh: bool, record: dict | None = None) -> View:
        """The session's kept view of the study, if it is still the same (fresh: checked by a
        stat; a folder's if read in the last folder_view.KEPT_SECONDS), else read anew (and, when `record` says for whom, recorded)."""
        key, path = (which, name), self._path(which, name)
        kept, attrs = session.views.get(key), None
        if isinstance(kept, FolderView) and fresh:
            kept = kept if kept.recent() else None  # a folder's files change without its own time changing
        elif kept is not None and fresh:
            attrs = await session.ssh.sftp.stat(path)
            kept = kept if kept.same_file(attrs) else None
        if kept is not None:
            session.views[key] = session.views.pop(key)  # the most recently used last
            return kept
        stale = session.views.get(key)
        async with session.study_read:  # one study read per session at a time
            meanwhile = session.views.get(key)
            if meanwhile is not None and meanwhile is not stale:  # read by the request this one waited for
                if fresh and isinstance(meanwhile, PackageView):  # a read-ahead's: not checked since it was read
                    attrs = await session.ssh.sftp.stat(path)
                    meanwhile = meanwhile if meanwhile.same_file(attrs) else None
                if meanwhile is not None:
                    session.views[key] = session.views.pop(key)
                    return meanwhile
            async with self.study_reads.turn(session.account):
                view = await self._read(session, path, name, attrs)
            if record:
                auditlog.record(
                    "portal-view", account=session.account, ip=record["ip"], agent=session.agent, folder=which,
                    file=name, series=record["series"], pictures=None, patient_ids=seen_patients(view, record["series"]),
                    by="picture",
                )  # fmt: skip
                view.recorded.add(record["series"])
            session.views.pop(key, None)
            session.views[key] = view
            while len(session.views) > VIEWS_PER_SESSION:
                session.views.pop(next(iter(session.views)))
        return view

    async def _read(self, session: WebSession, path: str, name: str, attrs: asyncssh.SFTPAttrs | None) -> View:
        attrs = attrs or await session.ssh.sftp.stat(path)
        if attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
            return await folder_view.open_folder(session.ssh.sftp, path, name, self.max_depth)
        if attrs.type == asyncssh.FILEXFER_TYPE_REGULAR:
            return await package_view.open_package(session.ssh.sftp, path, name)
        raise NotViewable("it is neither a file nor a folder")

    async def close(self) -> None:
        reading = list(self.reading_ahead.values())
        for task in reading:
            task.cancel()
        await asyncio.gather(*reading, return_exceptions=True)
        await self.renderer.close()


def _holds(session: WebSession, listed: files.Listed) -> bool:
    kept = session.views.get(("download", listed.name))
    return isinstance(kept, PackageView) and kept.same_file(listed)


def _reads(session: WebSession) -> asyncio.Semaphore:
    if session.picture_reads is None:
        session.picture_reads = asyncio.Semaphore(PICTURE_READS_PER_SESSION)
    return session.picture_reads


def _number(value: str | None) -> int | None:
    return int(value) if value is not None and value.isascii() and value.isdigit() and len(value) < 7 else None
